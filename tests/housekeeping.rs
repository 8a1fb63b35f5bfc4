//! Retention as an operator sees it: a real daemon prunes runs and `file` notifier reports older
//! than `keep_runs` at start, says so in its log, and `history` no longer lists them. The old
//! entries are real ones, backdated in the real state database (no sleeping).

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::Setup;
use support::daemon::history;

/// `runbook --config CONFIG` that finds its state only through the config.
fn runbook(config: &Path) -> Command {
    let mut c = support::runbook_std(config, &[]);
    c.env_remove("RUNBOOK_STATE_DIR")
        .env_remove("STATE_DIRECTORY");
    c
}

#[test]
fn daemon_prunes_runs_and_report_files_older_than_keep_runs_and_logs_it() {
    let dir = Setup::builder().runbook("shutdown_grace = \"1s\"").build();
    let state = dir.path().join("state");
    let sent = dir.path().join("sent");
    let config = dir.write_body(&format!(
        "[notify.archive]\ntype = \"file\"\ndir = {:?}\n\n[jobs.daily]\n[[jobs.daily.items]]\nname = \"Look at the dashboards\"\nkind = \"manual\"\n",
        sent.display().to_string()
    ));
    for _ in 0..3 {
        let out = runbook(&config)
            .args(["run-job", "daily"])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let runs = history(&config);
    assert_eq!(runs.len(), 3);
    let oldest = runs[2]["run_id"].as_str().unwrap().to_string();

    // Backdate the oldest run to 2024 (older than the default keep_runs of 400d), its report
    // files too, the way they would be named had it run then.
    let db = rusqlite::Connection::open(state.join("state.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        db.execute(
            "UPDATE runs SET started_at = '2024-01-01T04:30:00.000Z' WHERE run_id = ?1",
            [&oldest]
        )
        .unwrap(),
        1
    );
    drop(db);
    let mut moved = 0;
    for entry in std::fs::read_dir(&sent).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.contains(&oldest) {
            let ext = name.rsplit('.').next().unwrap();
            std::fs::rename(
                sent.join(&name),
                sent.join(format!("daily-20240101T043000Z-{oldest}.{ext}")),
            )
            .unwrap();
            moved += 1;
        }
    }
    assert_eq!(moved, 4, "txt, html, json, eml");
    std::fs::write(sent.join("notes-2023.txt"), "someone else's file").unwrap();

    let log = dir.path().join("daemon.log");
    let mut daemon = runbook(&config)
        .arg("daemon")
        .env("RUNBOOK_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    while !read_log().contains("housekeeping: pruned") {
        if Instant::now() > deadline || daemon.try_wait().unwrap().is_some() {
            let _ = daemon.kill();
            panic!("no housekeeping line; log:\n{}", read_log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(daemon.wait().unwrap().code(), Some(0));

    let text = read_log();
    assert!(
        text.contains("housekeeping: pruned 1 run older than 400d (started before ")
            && text.contains(&format!("), 4 files in {}", sent.display())),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "no colour codes in a log file: {text:?}"
    );
    let left: Vec<String> = history(&config)
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left.len(), 2);
    assert!(!left.contains(&oldest));
    let files: Vec<String> = std::fs::read_dir(&sent)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files.len(), 2 * 4 + 1, "{files:?}");
    assert!(files.iter().all(|f| !f.contains(&oldest)), "{files:?}");
    assert!(files.contains(&"notes-2023.txt".to_string()));
}
