//! `capacity` (the "Capacity planning review" companion) against a real state database holding
//! stored runs of the job it reads, run through the real CLI.

mod support;

use chrono::{DateTime, Duration, Utc};
use runbook::store::Store;
use serde_json::{Value, json};
use support::{Setup, runs};

/// Stores a finished run of job `daily` started at `at` whose item "System" has
/// `disks = [{used_percent: disk}]` and item "Connections" `value = conns`.
fn store_daily(store: &Store, n: usize, at: DateTime<Utc>, disk: f64, conns: f64, dry_run: bool) {
    let r = runs::report(
        "daily",
        &format!("01DAILY{n:04}"),
        "schedule",
        at,
        &[
            (
                "System",
                "system",
                json!({"value": disk, "disks": [{"path": "/", "used_percent": disk}]}),
            ),
            ("Connections", "sql", json!({"value": conns})),
        ],
        dry_run,
    );
    runs::store_run(store, &r, !dry_run);
}

const JOBS: &str = r#"
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

fn run_monthly(s: &Setup) -> (i32, Value) {
    let (code, report) = s.json(&[
        "--config",
        "jobs.toml",
        "run-job",
        "monthly",
        "--no-notify",
        "--format",
        "json",
    ]);
    (code, report["items"][0].clone())
}

#[test]
fn capacity_forecasts_each_series_from_the_last_30_days_of_stored_runs() {
    let s = Setup::new(JOBS);
    let store = Store::open(&s.path().join("state"), "ops-1").unwrap();
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

    let (code, item) = run_monthly(&s);
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
    let s = Setup::new(JOBS);
    let store = Store::open(&s.path().join("state"), "ops-1").unwrap();
    let now = Utc::now();
    let (code, item) = {
        drop(store);
        run_monthly(&s)
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

    let store = Store::open(&s.path().join("state"), "ops-1").unwrap();
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
    let (code, item) = run_monthly(&s);
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
