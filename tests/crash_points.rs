//! Crash points: the real binary is killed with SIGKILL at the instants where a crash used to
//! lose work (the `failpoints` feature arms them through `FAILPOINTS`, see src/base/failpoints.rs),
//! then started again; the invariants are checked on what a user sees afterwards.
//!
//! - Every stored report is delivered at least once (exactly once here: the `file` notifier
//!   names its files by run id, and a real SMTP server receives one message with the run's
//!   Message-ID).
//! - No log line is skipped: `log_scan` offsets are committed with the report.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_runbook");

/// The crash points exist only in a build with the `failpoints` feature: without it these
/// tests could not crash anything, so they fail and say how to run them.
fn require_failpoints() {
    if !cfg!(feature = "failpoints") {
        panic!(
            "the crash-point tests need the failpoints build: run `cargo nextest run --features failpoints` (as .ci/run does)"
        );
    }
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(items: &str) -> Setup {
        require_failpoints();
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[runbook]\nstate_dir = {state:?}\nshutdown_grace = \"1s\"\n\n\
             [notify.out]\ntype = \"file\"\ndir = {out:?}\n\n\
             [jobs.t]\nnotify = [\"out\"]\n\n{items}\n",
            state = dir.path().join("state"),
            out = dir.path().join("out"),
        );
        std::fs::write(dir.path().join("jobs.toml"), text).unwrap();
        Setup { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("jobs.toml")
    }

    fn cli(&self, args: &[&str], failpoints: Option<&str>) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(self.config()).args(args);
        cmd.env_remove("FAILPOINTS");
        if let Some(f) = failpoints {
            cmd.env("FAILPOINTS", f);
        }
        cmd.stdin(Stdio::null()).output().unwrap()
    }

    /// `run-job t` with the crash point armed: asserts the process died of SIGKILL there.
    fn run_killed_at(&self, point: &str) {
        let out = self.cli(
            &["run-job", "t", "--format", "json"],
            Some(&format!("{point}=return")),
        );
        use std::os::unix::process::ExitStatusExt;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(9),
            "the run should have been killed at {point}; exit {:?}, stderr:\n{stderr}",
            out.status.code()
        );
        assert!(stderr.contains(&format!("failpoint {point}")), "{stderr}");
    }

    /// `run-job t --format json`: the report.
    fn run(&self) -> serde_json::Value {
        let out = self.cli(&["run-job", "t", "--format", "json"], None);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no report ({e}): {}", String::from_utf8_lossy(&out.stderr)))
    }

    fn history(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["history", "--format", "json"], None);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap()
    }

    /// Run ids of the reports the `file` notifier wrote (one `.json` per delivered report).
    fn delivered(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.dir.path().join("out"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.ends_with(".json"))
                    .map(|n| {
                        n.trim_end_matches(".json")
                            .rsplit('-')
                            .next()
                            .unwrap()
                            .into()
                    })
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("gave up waiting: {what}");
}

const MANUAL_ITEM: &str = "[[jobs.t.items]]\nname = \"look\"\nkind = \"manual\"\n";

#[test]
fn a_report_stored_just_before_a_crash_is_delivered_by_the_restarted_daemon() {
    let setup = Setup::new(MANUAL_ITEM);
    setup.run_killed_at("report-stored");
    let runs = setup.history();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["status"], "pass", "the report was stored: {runs:?}");
    assert!(
        setup.delivered().is_empty(),
        "nothing was sent before the kill"
    );

    // The daemon delivers what the dead process left queued, as soon as it starts.
    let log = std::fs::File::create(setup.dir.path().join("daemon.log")).unwrap();
    let mut daemon = Command::new(BIN)
        .arg("--config")
        .arg(setup.config())
        .arg("daemon")
        .env_remove("FAILPOINTS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let run_id = runs[0]["run_id"].as_str().unwrap().to_string();
    wait_until("the stored report delivered", || {
        setup.delivered() == [run_id.clone()]
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
    assert_eq!(setup.delivered(), [run_id], "delivered exactly once");
    let out = setup.cli(&["outbox"], None);
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&runs[0]["run_id"].as_str().unwrap()[..10]),
        "nothing left in the outbox: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_report_stored_just_before_a_crash_is_delivered_by_outbox_flush() {
    let setup = Setup::new(MANUAL_ITEM);
    setup.run_killed_at("report-stored");
    let runs = setup.history();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let out = setup.cli(&["outbox", "--flush"], None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(setup.delivered(), [runs[0]["run_id"].as_str().unwrap()]);
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[test]
fn a_crash_after_a_log_scan_read_skips_no_line() {
    let setup = Setup::new(
        "[[jobs.t.items]]\nname = \"errors\"\nkind = \"log_scan\"\nfiles = [\"app.log\"]\nwarn_count = 0\n",
    );
    let log = setup.dir.path().join("app.log");
    append(&log, "ERROR one\nINFO fine\nERROR two\nERROR three\n");
    // Killed after reading the file, before the report (and so the offset) was stored.
    setup.run_killed_at("log-scan-after-read");
    let matches = |r: &serde_json::Value| r["items"][0]["data"]["matches"].as_u64().unwrap();
    let report = setup.run();
    assert_eq!(
        matches(&report),
        3,
        "the next run counts the lines the killed run read: {report:#}"
    );
    // And the offset of that run was committed with its report: only new lines now.
    append(&log, "ERROR four\n");
    assert_eq!(matches(&setup.run()), 1);
    // The interrupted run was recorded as such; both finished runs were delivered.
    let runs = setup.history();
    let statuses: Vec<&str> = runs.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["pass", "pass", "interrupted"], "{runs:?}");
    assert_eq!(setup.delivered().len(), 2);
}

/// A real SMTP server (mailin-embedded) that keeps every message it accepts.
#[derive(Clone, Default)]
struct Inbox {
    messages: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    current: Vec<u8>,
}

impl mailin_embedded::Handler for Inbox {
    fn data_start(&mut self, _: &str, _: &str, _: bool, _: &[String]) -> mailin_embedded::Response {
        self.current.clear();
        mailin_embedded::response::OK
    }
    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current.extend_from_slice(buf);
        Ok(())
    }
    fn data_end(&mut self) -> mailin_embedded::Response {
        self.messages
            .lock()
            .unwrap()
            .push(std::mem::take(&mut self.current));
        mailin_embedded::response::OK
    }
}

impl Inbox {
    /// The Message-ID header of every message received.
    fn message_ids(&self) -> Vec<String> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter_map(|m| {
                String::from_utf8_lossy(m)
                    .lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
                    .map(|l| l[11..].trim().to_string())
            })
            .collect()
    }
}

#[test]
fn a_report_stored_just_before_a_crash_reaches_a_real_smtp_server_once() {
    require_failpoints();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let inbox = Inbox::default();
    let mut server = mailin_embedded::Server::new(inbox.clone());
    server.with_name("test.smtp").with_tcp_listener(listener);
    std::thread::spawn(move || {
        let _ = server.serve();
    });

    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[runbook]\nstate_dir = {state:?}\n\n\
         [notify.mail]\ntype = \"email\"\nsmtp_url = \"smtp://127.0.0.1:{port}?tls=none\"\n\
         from = \"runbook@example.com\"\nto = [\"oncall@example.com\"]\n\n\
         [jobs.t]\nnotify = [\"mail\"]\n\n{MANUAL_ITEM}",
        state = dir.path().join("state"),
    );
    std::fs::write(dir.path().join("jobs.toml"), text).unwrap();
    let setup = Setup { dir };
    setup.run_killed_at("report-stored");
    let runs = setup.history();
    let run_id = runs[0]["run_id"].as_str().unwrap().to_string();
    assert!(inbox.message_ids().is_empty());

    for _ in 0..2 {
        let out = setup.cli(&["outbox", "--flush"], None);
        assert!(out.status.success(), "{out:?}");
    }
    let ids = inbox.message_ids();
    assert_eq!(ids.len(), 1, "delivered exactly once: {ids:?}");
    assert!(ids[0].contains(&run_id), "{ids:?}");
}
