//! Locks and outbox claims left by processes that are gone are taken over at once; a live
//! holder is named. The holder is identified by boot id, pid and process start time: a pid alone
//! belongs to another process after a reboot (or in every life of a container's PID 1).

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::Setup;
use support::http::{hanging_server, ok_server};
use support::runbook_std as runbook;

const SINCE: &str = "2026-12-05T10:00:00.000Z";

fn setup(notify: &str) -> (Setup, PathBuf) {
    let s = Setup::builder()
        .hostname("ops-test")
        .body(&format!(
            "{notify}\n\n[jobs.t]\n\n[[jobs.t.items]]\nname = \"ok\"\nkind = \"command\"\nargv = [\"true\"]\nread_only = true\n"
        ))
        .build();
    let config = s.config();
    (s, config)
}

fn state(config: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(config.parent().unwrap().join("state/state.db")).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_string()
}

fn start_ticks(pid: u32) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    rest.split_whitespace().nth(19).unwrap().parse().unwrap()
}

/// A lock of job `t` held by run `held` (a `running` run with trigger `schedule`).
fn plant_lock(config: &Path, pid: i64, boot: Option<&str>, ticks: Option<i64>, since: &str) {
    let c = state(config);
    c.execute("DELETE FROM locks", []).unwrap();
    c.execute("DELETE FROM runs WHERE run_id = 'held'", [])
        .unwrap();
    c.execute(
        "INSERT INTO runs (run_id, job, trigger, started_at, status, pid, host) VALUES ('held', 't', 'schedule', ?1, 'running', ?2, 'ops-other')",
        rusqlite::params![since, pid],
    )
    .unwrap();
    c.execute(
        "INSERT INTO locks (job, run_id, pid, host, acquired_at, boot_id, start_ticks) VALUES ('t', 'held', ?1, 'ops-other', ?2, ?3, ?4)",
        rusqlite::params![pid, since, boot, ticks],
    )
    .unwrap();
}

fn run_job(config: &Path) -> (i32, String) {
    let out = runbook(config, &["run-job", "t", "--no-notify"])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A child process, killed when dropped (a failing test leaves none behind).
struct Sleeper(Child);

impl Sleeper {
    fn new() -> Sleeper {
        Sleeper(Command::new("sleep").arg("300").spawn().unwrap())
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_lock_of_a_dead_reused_or_earlier_boot_process_is_taken_over_and_a_live_one_is_named() {
    let (_dir, config) = setup("");
    // The first run creates the state database.
    assert_eq!(run_job(&config).0, 0);
    let boot = boot_id();
    let live = Sleeper::new();
    let pid = live.pid() as i64;
    let ticks = start_ticks(live.pid());

    // A real running process with the recorded start time on this boot holds it: exit 3, and
    // the message names the holder: host, pid, since when, trigger. (Another host name does
    // not make it live or dead: the boot id and start time do.)
    plant_lock(&config, pid, Some(&boot), Some(ticks), SINCE);
    let (code, err) = run_job(&config);
    assert_eq!(code, 3, "{err}");
    for part in [
        format!("process {pid} on ops-other"),
        format!("since {SINCE}"),
        "trigger schedule".into(),
        "run held".into(),
    ] {
        assert!(err.contains(&part), "{part:?} missing from: {err}");
    }

    // The same pid, but the process started at another time: the pid was reused.
    plant_lock(&config, pid, Some(&boot), Some(ticks - 1), SINCE);
    let (code, err) = run_job(&config);
    assert_eq!(code, 0, "a reused pid kept the lock: {err}");

    // Written under another boot (the host rebooted; its pid now belongs to anybody).
    plant_lock(
        &config,
        pid,
        Some("00000000-0000-4000-8000-000000000000"),
        Some(ticks),
        SINCE,
    );
    let (code, err) = run_job(&config);
    assert_eq!(code, 0, "a lock of an earlier boot kept the job: {err}");
    let status: String = state(&config)
        .query_row("SELECT status FROM runs WHERE run_id = 'held'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        status, "interrupted",
        "the holder's run is recorded interrupted"
    );

    // A dead process.
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id() as i64;
    gone.wait().unwrap();
    plant_lock(&config, gone_pid, Some(&boot), Some(1), SINCE);
    let (code, err) = run_job(&config);
    assert_eq!(code, 0, "{err}");

    // PID 1 (a container's daemon, or init): alive, but not the process that took the lock.
    plant_lock(&config, 1, Some(&boot), Some(start_ticks(1) + 1), SINCE);
    let (code, err) = run_job(&config);
    assert_eq!(code, 0, "{err}");

    // Rows written before boot ids were recorded: a process with that pid that started after
    // the lock was taken is another process; one that started before may be the holder.
    plant_lock(&config, pid, None, None, "2020-01-01T00:00:00.000Z");
    let (code, err) = run_job(&config);
    assert_eq!(code, 0, "{err}");
    plant_lock(&config, pid, None, None, "2999-01-01T00:00:00.000Z");
    let (code, err) = run_job(&config);
    assert_eq!(code, 3, "{err}");
}

const HOOK: &str = "[notify.hook]\ntype = \"slack\"\nwebhook_url = { env = \"TEST_HOOK_URL\" }\n";

/// Queues the report of a run of `t` (its receiver is down), then starts an `outbox --flush`
/// that claims it and hangs on a receiver that never answers; returns once the row is claimed.
fn queue_and_claim(config: &Path) -> Sleeper {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = runbook(config, &["run-job", "t"])
        .env("TEST_HOOK_URL", format!("http://127.0.0.1:{closed}/hook"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let hang = hanging_server();
    let flush = Sleeper(
        runbook(config, &["outbox", "--flush"])
            .env("TEST_HOOK_URL", format!("http://127.0.0.1:{hang}/hook"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    loop {
        let sending: i64 = state(config)
            .query_row(
                "SELECT count(*) FROM outbox WHERE state = 'sending'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        if sending == 1 {
            return flush;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the flush never claimed the row"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_delivered(
    config: &Path,
    out: &std::process::Output,
    received: &std::sync::atomic::AtomicUsize,
) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(received.load(std::sync::atomic::Ordering::SeqCst), 1);
    let left: i64 = state(config)
        .query_row(
            "SELECT count(*) FROM outbox WHERE state != 'sent'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0);
}

#[test]
fn a_killed_flush_leaves_a_claim_the_next_flush_takes_over_at_once() {
    let (_dir, config) = setup(HOOK);
    let mut flush = queue_and_claim(&config);
    flush.0.kill().unwrap();
    flush.0.wait().unwrap();

    // The next flush delivers it: the claimer is gone, its claim is not waited for.
    let (ok, received) = ok_server();
    let out = runbook(&config, &["outbox", "--flush"])
        .env("TEST_HOOK_URL", format!("http://127.0.0.1:{ok}/hook"))
        .output()
        .unwrap();
    assert_delivered(&config, &out, &received);
}

#[test]
fn a_flush_waiting_for_another_sender_delivers_itself_when_that_sender_is_killed() {
    let (_dir, config) = setup(HOOK);
    let mut first = queue_and_claim(&config);

    // A second flush finds the row being sent by a live process and waits for it...
    let (ok, received) = ok_server();
    let mut second = runbook(&config, &["outbox", "--flush"])
        .env("TEST_HOOK_URL", format!("http://127.0.0.1:{ok}/hook"))
        .env("RUNBOOK_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(second.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(n > 0, "the second flush ended without waiting: {seen}");
        seen.push_str(&line);
        if line.contains("being sent by another process") {
            break;
        }
    }
    // ... and that sender dies (kill -9): the waiting flush takes the delivery over.
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let drain = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        rest
    });
    let mut out = second.wait_with_output().unwrap();
    out.stderr = drain.join().unwrap().into_bytes();
    assert_delivered(&config, &out, &received);
}

#[test]
fn a_run_killed_while_delivering_its_report_leaves_a_claim_the_next_flush_takes_over() {
    let (_dir, config) = setup(HOOK);
    // The run's own delivery claims the row and hangs; the run is killed (-9) meanwhile, as a
    // daemon would be.
    let hang = hanging_server();
    let mut run = Sleeper(
        runbook(&config, &["run-job", "t"])
            .env("TEST_HOOK_URL", format!("http://127.0.0.1:{hang}/hook"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while !config.parent().unwrap().join("state/state.db").exists()
        || state(&config)
            .query_row(
                "SELECT count(*) FROM outbox WHERE state = 'sending'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap_or(0)
            == 0
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the run never claimed its delivery"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    run.0.kill().unwrap();
    run.0.wait().unwrap();

    let (ok, received) = ok_server();
    let out = runbook(&config, &["outbox", "--flush"])
        .env("TEST_HOOK_URL", format!("http://127.0.0.1:{ok}/hook"))
        .output()
        .unwrap();
    assert_delivered(&config, &out, &received);
}
