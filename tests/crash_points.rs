//! Crash points: the real binary is killed with SIGKILL at the instants where a crash used to
//! lose work (the `failpoints` feature arms them through `FAILPOINTS`, see src/base/failpoints.rs),
//! then started again; the invariants are checked on what a user sees afterwards.
//!
//! - Every stored report is delivered at least once (exactly once here: the `file` notifier
//!   names its files by run id, and a real SMTP server receives one message with the run's
//!   Message-ID).
//! - No log line is skipped: `log_scan` offsets are committed with the report.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use support::smtp::Smtp;
use support::wait_until;

/// The crash points exist only in a build with the `failpoints` feature: without it these
/// tests could not crash anything, so they fail and say how to run them.
fn require_failpoints() {
    if !cfg!(feature = "failpoints") {
        panic!(
            "the crash-point tests need the failpoints build: run `cargo nextest run --features failpoints` (as .ci/run does)"
        );
    }
}

/// Job `t` notifying a channel, with a short shutdown grace.
struct Setup(support::Setup);

impl Setup {
    /// Job `t` with `items`, notifying `out`: a `file` channel writing to `out/`.
    fn new(items: &str) -> Setup {
        Setup::notifying("out", "type = \"file\"\ndir = \"out\"", items)
    }

    /// Job `t` with `items`, notifying channel `name` (`[notify.NAME]` holding `channel`).
    fn notifying(name: &str, channel: &str, items: &str) -> Setup {
        require_failpoints();
        Setup(
            support::Setup::builder()
                .runbook("shutdown_grace = \"1s\"")
                .body(&format!(
                    "[notify.{name}]\n{channel}\n\n[jobs.t]\nnotify = [{name:?}]\n\n{items}\n"
                ))
                .build(),
        )
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn config(&self) -> PathBuf {
        self.0.config()
    }

    fn cli(&self, args: &[&str], failpoints: Option<&str>) -> Output {
        let mut cmd = self.0.std_command();
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
        support::daemon::history(&self.config())
    }

    /// Run ids of the reports the `file` notifier wrote (one `.json` per delivered report).
    fn delivered(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.path().join("out"))
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
    let log = std::fs::File::create(setup.path().join("daemon.log")).unwrap();
    let mut daemon = support::runbook_std(&setup.config(), &["daemon"])
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
    let log = setup.path().join("app.log");
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

#[test]
fn a_report_stored_just_before_a_crash_reaches_a_real_smtp_server_once() {
    require_failpoints();
    let inbox = Smtp::start(None, None);
    let setup = Setup::notifying(
        "mail",
        &format!(
            "type = \"email\"\nsmtp_url = \"smtp://127.0.0.1:{}?tls=none\"\n\
             from = \"runbook@example.com\"\nto = [\"oncall@example.com\"]",
            inbox.port
        ),
        MANUAL_ITEM,
    );
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
