//! The HTML report's charts (SPEC 9.3): each item's `data.value` over the job's comparable
//! runs, with the change since the previous one. Against a real state database with stored
//! runs, and end to end through `run-job` and the file notifier.

mod support;

use chrono::{DateTime, Duration, Utc};
use runbook::report::Report;
use runbook::store::Store;
use serde_json::json;
use support::{
    Setup,
    runs::{self, store_run},
};

/// A stored-report-shaped value for job `daily` started at `at`, one item "Disk" with
/// `data.value = value` (None: no number) and one item "Notes" without a number.
fn report(run_id: &str, at: DateTime<Utc>, value: Option<f64>, dry_run: bool) -> Report {
    let data = match value {
        Some(v) => json!({ "value": v }),
        None => json!({}),
    };
    runs::report(
        "daily",
        run_id,
        "manual",
        at,
        &[
            ("Disk", "system", data),
            ("Notes", "command", json!({"exit_code": 0})),
        ],
        dry_run,
    )
}

#[test]
fn html_report_charts_each_items_values_over_the_comparable_runs_before_it() {
    let s = Setup::new("");
    let store = Store::open(s.path(), "ops-1").unwrap();
    let t0 = Utc::now() - Duration::days(10);
    let day = |n: i64| t0 + Duration::days(n);
    store_run(&store, &report("R0", day(0), Some(50.0), false), true);
    store_run(&store, &report("R1", day(1), Some(55.0), false), true);
    // A run where the check measured nothing gives no bar.
    store_run(&store, &report("R2", day(2), None, false), true);
    // Neither a dry run nor a run limited by --item is part of the series (SPEC 9.1).
    store_run(&store, &report("R3", day(3), Some(99.0), true), true);
    store_run(&store, &report("R4", day(4), Some(98.0), false), false);
    store_run(&store, &report("R5", day(5), Some(60.0), false), true);
    store_run(&store, &report("R6", day(6), Some(66.0), false), true);
    // A later run: not "before" the report shown, so it is not in its chart.
    store_run(&store, &report("R8", day(8), Some(10.0), false), true);

    let mut now = report("R7", day(7), Some(72.6), false);
    store_run(&store, &now, true);
    store.fill_history(&mut now).unwrap();
    assert_eq!(now.history.get("Disk"), Some(&vec![50.0, 55.0, 60.0, 66.0]));
    assert!(
        !now.history.contains_key("Notes"),
        "only items with a data.value have a chart"
    );

    let html = runbook::report::html::render(&now);
    assert!(
        html.contains("72.6 \u{b7} +10% since previous (66) \u{b7} 5 runs, min 50, max 72.6"),
        "the caption: this value, the change since the previous comparable run, the range:\n{html}"
    );
    assert_eq!(
        html.matches("<td width=\"4\" bgcolor=").count(),
        5,
        "one bar per value"
    );
    assert!(
        html.contains("title=\"72.6\""),
        "the newest bar is this run's"
    );
    for banned in ["<svg", "<img", "<script", "data:image", "<style"] {
        assert!(!html.contains(banned), "mail-client safe: no {banned}");
    }
}

#[test]
fn first_run_has_no_chart_and_thirty_points_at_most() {
    let s = Setup::new("");
    let store = Store::open(s.path(), "ops-1").unwrap();
    let t0 = Utc::now() - Duration::days(60);
    let mut first = report("A00", t0, Some(1.0), false);
    store_run(&store, &first, true);
    store.fill_history(&mut first).unwrap();
    assert!(first.history.is_empty());
    assert!(!runbook::report::html::render(&first).contains("since previous"));

    for n in 1..40 {
        store_run(
            &store,
            &report(
                &format!("A{n:02}"),
                t0 + Duration::days(n),
                Some(n as f64),
                false,
            ),
            true,
        );
    }
    let mut last = report("A40", t0 + Duration::days(40), Some(40.0), false);
    store.fill_history(&mut last).unwrap();
    let earlier = &last.history["Disk"];
    assert_eq!(
        earlier.len(),
        29,
        "29 earlier values and this run's make 30"
    );
    assert_eq!(earlier.first(), Some(&11.0));
    assert_eq!(earlier.last(), Some(&39.0));
    let html = runbook::report::html::render(&last);
    assert!(
        html.contains("+2.6% since previous (39) \u{b7} 30 runs"),
        "{html}"
    );
}

const JOBS: &str = r#"
[notify.archive]
type = "file"
dir = "sent"

[jobs.daily]
schedule = "0 10 * * *"
notify = ["archive"]

[[jobs.daily.items]]
name = "Disk"
kind = "system"
paths = ["."]
disk_warn = "100%"
disk_fail = "100%"
memory_warn = "100%"
memory_fail = "100%"
load_warn_per_core = 1000.0
"#;

fn run_job(s: &Setup) {
    s.runbook(&["run-job", "daily"]).assert().code(0);
}

fn sent_html(s: &Setup) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(s.path().join("sent"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "html"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

#[test]
fn the_sent_report_charts_the_values_of_earlier_runs() {
    let s = Setup::new(JOBS);
    run_job(&s);
    run_job(&s);
    run_job(&s);
    let sent = sent_html(&s);
    assert_eq!(sent.len(), 3);
    assert!(
        !sent[0].contains("since previous"),
        "a first run has nothing to compare"
    );
    assert!(sent[1].contains("since previous") && sent[1].contains("2 runs, min"));
    assert!(sent[2].contains("3 runs, min"), "{}", sent[2]);
}
