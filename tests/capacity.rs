//! `capacity` (the "Capacity planning review" companion) against a real state database holding
//! stored runs of the job it reads, run through the real CLI.

use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use runbook::report::Report;
use runbook::store::Store;
use serde_json::{Value, json};

/// Stores a finished run of job `daily` started at `at` whose item "System" has
/// `disks = [{used_percent: disk}]` and item "Connections" `value = conns`.
fn store_daily(store: &Store, n: usize, at: DateTime<Utc>, disk: f64, conns: f64, dry_run: bool) {
    let t = at.with_timezone(&chrono_tz::Asia::Kolkata).to_rfc3339();
    let run_id = format!("01DAILY{n:04}");
    let r: Report = serde_json::from_value(json!({
        "run_id": run_id, "job": "daily", "trigger": "schedule", "scheduled_for": t,
        "started_at": t, "finished_at": t, "duration_ms": 5, "host": "ops-1",
        "timezone": "Asia/Kolkata", "status": "pass", "dry_run": dry_run,
        "counts": {"pass": 2, "warn": 0, "fail": 0, "skipped": 0, "manual": 0},
        "items": [
            {"name": "System", "kind": "system", "status": "pass", "summary": "ok", "details": [],
             "data": {"value": disk, "disks": [{"path": "/", "used_percent": disk}]},
             "duration_ms": 1, "change": "same"},
            {"name": "Connections", "kind": "sql", "status": "pass", "summary": "ok", "details": [],
             "data": {"value": conns}, "duration_ms": 1, "change": "same"}
        ],
        "notifications": []
    }))
    .unwrap();
    store
        .insert_run(&run_id, "daily", "schedule", Some(&t), &at, !dry_run)
        .unwrap();
    store.finish_run(&r, &[], &[]).unwrap();
}

const JOBS: &str = r#"
[runbook]
timezone = "Asia/Kolkata"
state_dir = "state"

[jobs.daily]
schedule = "0 10 * * *"

[[jobs.daily.items]]
name = "System"
kind = "manual"

[[jobs.daily.items]]
name = "Connections"
kind = "manual"

[jobs.monthly]
schedule = "0 2 1-7 * MON"

[[jobs.monthly.items]]
name = "Capacity forecast"
kind = "capacity"
job = "daily"
warn_within = "90d"
fail_within = "14d"
series = [
  { item = "System", field = "disks.0.used_percent", limit = 100, unit = "%", label = "disk /" },
  { item = "Connections", limit = 100, unit = "%", label = "connections" },
  { item = "Never measured", limit = 10 },
]
"#;

fn run_monthly(dir: &Path) -> (i32, Value) {
    std::fs::write(dir.join("jobs.toml"), JOBS).unwrap();
    let out = assert_cmd::Command::cargo_bin("runbook")
        .unwrap()
        .current_dir(dir)
        .env_remove("RUNBOOK_CONFIG")
        .env_remove("RUNBOOK_STATE_DIR")
        .args([
            "--config",
            "jobs.toml",
            "run-job",
            "monthly",
            "--no-notify",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no report ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), report["items"][0].clone())
}

#[test]
fn capacity_forecasts_each_series_from_the_last_30_days_of_stored_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let store = Store::open(&dir.join("state"), "ops-1").unwrap();
    let now = Utc::now();
    // 40 days ago the disk was nearly empty and shrinking: outside the 30-day window, it must
    // not flatten the rate.
    store_daily(&store, 0, now - Duration::days(40), 5.0, 80.0, false);
    store_daily(&store, 1, now - Duration::days(39), 4.0, 90.0, false);
    // The last 30 days: the disk grows 0.5 points a day up to 60%: 40 points left, ~80 days.
    // Connections go down.
    for d in 0..30 {
        let at = now - Duration::days(30 - d) + Duration::hours(1);
        store_daily(
            &store,
            2 + d as usize,
            at,
            45.5 + 0.5 * d as f64,
            40.0 - 0.2 * d as f64,
            false,
        );
    }
    // A dry run's numbers are no measurement.
    store_daily(&store, 99, now - Duration::hours(2), 99.0, 99.0, true);
    drop(store);

    let (code, item) = run_monthly(dir);
    assert_eq!(item["status"], "warn", "{item:#}");
    assert_eq!(code, 0, "a warning exits 0");
    assert_eq!(
        item["summary"], "disk / reaches 100% in ~80 days at the 30-day rate",
        "{item:#}"
    );
    let series = item["data"]["series"].as_array().unwrap();
    let disk = series.iter().find(|s| s["label"] == "disk /").unwrap();
    assert_eq!(disk["points"], 30, "{disk:#}");
    assert!(
        (disk["per_day"].as_f64().unwrap() - 0.5).abs() < 1e-6,
        "{disk:#}"
    );
    assert_eq!(disk["latest"], 60.0);
    let conns = series.iter().find(|s| s["label"] == "connections").unwrap();
    assert_eq!(conns["status"], "pass");
    assert!(conns["days_left"].is_null(), "not growing: {conns:#}");
    let details = item["details"].as_array().unwrap();
    assert!(
        details.iter().any(|d| d
            .as_str()
            .unwrap()
            .starts_with("PASS Never measured: not enough history")),
        "{item:#}"
    );
    assert_eq!(item["data"]["value"], 80.0, "days to the nearest limit");
}

#[test]
fn a_limit_within_fail_within_fails_and_a_short_history_is_said() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let store = Store::open(&dir.join("state"), "ops-1").unwrap();
    let now = Utc::now();
    let (code, item) = {
        drop(store);
        run_monthly(dir)
    };
    assert_eq!(
        (code, item["status"].as_str()),
        (0, Some("pass")),
        "{item:#}"
    );
    assert_eq!(
        item["summary"],
        "not enough history for a forecast yet (3 series)"
    );

    let store = Store::open(&dir.join("state"), "ops-1").unwrap();
    // Two points a day apart are no rate; then 2 points a day toward 100%: 10 days left.
    for d in 0..10 {
        store_daily(
            &store,
            d,
            now - Duration::days(10 - d as i64),
            62.0 + 2.0 * d as f64,
            10.0,
            false,
        );
    }
    drop(store);
    let (code, item) = run_monthly(dir);
    assert_eq!(item["status"], "fail", "{item:#}");
    assert_eq!(code, 1);
    assert!(
        item["summary"]
            .as_str()
            .unwrap()
            .starts_with("disk / reaches 100% in ~10 days"),
        "{item:#}"
    );
}
