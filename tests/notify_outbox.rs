//! The stored report is immutable: deliveries and retries change outbox rows only, and what a
//! user is shown (`report`, its JSON) derives `notifications` from those rows (issue 18).
//!
//! Real binary, real state database, real files: a `file` notifier whose folder cannot be
//! created (its parent is a regular file, which stops root too) until the test removes the
//! obstacle.

mod support;

use std::path::Path;

use support::Setup;

/// jobs.toml with job `quiet` (one passing command) notifying `archive` (a file notifier into
/// `blocked/reports`) and `alerts` (a file notifier that only wants failures).
fn setup() -> Setup {
    Setup::builder()
        .hostname("ops-test")
        .body(
            r#"[notify.archive]
type = "file"
dir = "blocked/reports"

[notify.alerts]
type = "file"
dir = "alerts"
on = "fail"

[jobs.quiet]

[[jobs.quiet.items]]
name = "Always fine"
kind = "command"
argv = ["true"]
read_only = true
"#,
        )
        .build()
}

/// A run's stored report, exactly as `state.db` holds it.
fn stored_report(dir: &Path, run_id: &str) -> String {
    let db = rusqlite::Connection::open(dir.join("state").join("state.db")).unwrap();
    db.query_row("SELECT report FROM runs WHERE run_id = ?1", [run_id], |r| {
        r.get(0)
    })
    .unwrap()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn line<'a>(report: &'a serde_json::Value, channel: &str) -> &'a serde_json::Value {
    report["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["channel"] == channel)
        .unwrap_or_else(|| panic!("no notifications line for {channel}: {report}"))
}

#[test]
fn deliveries_change_outbox_rows_only_and_the_shown_report_follows_them() {
    let s = setup();
    let dir = &s.dir;
    // `blocked` is a file: the folder `blocked/reports` cannot be created, even by root.
    std::fs::write(dir.path().join("blocked"), "in the way").unwrap();

    let out = s
        .runbook(&[])
        .args(["run-job", "quiet", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let run = json(&out);
    let run_id = run["run_id"].as_str().unwrap().to_string();
    assert_eq!(line(&run, "archive")["status"], "queued", "{run}");
    assert!(
        line(&run, "archive")["error"]
            .as_str()
            .unwrap()
            .contains("cannot create"),
        "{run}"
    );
    assert_eq!(line(&run, "alerts")["status"], "skipped", "{run}");

    let stored = stored_report(dir.path(), &run_id);

    // A retry that fails again: the row counts the attempt, the stored report stays.
    let out = s.runbook(&["outbox", "--flush"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        stored_report(dir.path(), &run_id),
        stored,
        "a failed retry rewrote the stored report"
    );
    let shown = json(
        &s.runbook(&["report", &run_id, "--format", "json"])
            .output()
            .unwrap(),
    );
    assert_eq!(line(&shown, "archive")["status"], "queued", "{shown}");
    assert!(
        line(&shown, "archive")["error"]
            .as_str()
            .unwrap()
            .contains("cannot create"),
        "{shown}"
    );

    // The obstacle goes: the retry delivers.
    std::fs::remove_file(dir.path().join("blocked")).unwrap();
    let out = s.runbook(&["outbox", "--flush"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let written: Vec<_> = std::fs::read_dir(dir.path().join("blocked/reports"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(&run_id) && n.ends_with(".json"))
        .collect();
    assert_eq!(written.len(), 1, "{written:?}");

    assert_eq!(
        stored_report(dir.path(), &run_id),
        stored,
        "the delivery rewrote the stored report: delivery state belongs in the outbox rows"
    );

    // What users see follows the outbox: by run id, as `last`, in JSON and in text.
    for args in [
        vec!["report", run_id.as_str(), "--format", "json"],
        vec!["report", "last", "--job", "quiet", "--format", "json"],
    ] {
        let shown = json(&s.runbook(&[]).args(&args).output().unwrap());
        assert_eq!(
            line(&shown, "archive")["status"],
            "sent",
            "{args:?}: {shown}"
        );
        assert_eq!(line(&shown, "archive")["error"], serde_json::Value::Null);
        assert_eq!(line(&shown, "alerts")["status"], "skipped", "{shown}");
    }
    let out = s.runbook(&["report", &run_id]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("notify archive: sent"), "{text}");
    assert!(text.contains("notify alerts: skipped"), "{text}");
}
