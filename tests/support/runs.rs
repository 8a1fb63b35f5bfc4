//! Finished runs written straight into a test's state database, for what reads earlier runs
//! (the `capacity` item, the HTML report's charts).

use chrono::{DateTime, Utc};
use runbook::report::Report;
use runbook::store::Store;
use serde_json::{Value, json};

/// A finished, passing report of `job` (host `ops-1`, time zone Asia/Kolkata) started and
/// finished at `at`, with one passing item per `(name, kind, data)`. `trigger` is `manual` or
/// `schedule` (then scheduled for `at`).
pub fn report(
    job: &str,
    run_id: &str,
    trigger: &str,
    at: DateTime<Utc>,
    items: &[(&str, &str, Value)],
    dry_run: bool,
) -> Report {
    let t = at.with_timezone(&chrono_tz::Asia::Kolkata).to_rfc3339();
    let scheduled_for = (trigger == "schedule").then(|| t.clone());
    let items: Vec<Value> = items
        .iter()
        .map(|(name, kind, data)| {
            json!({"name": name, "kind": kind, "status": "pass", "summary": "ok",
                   "details": [], "data": data, "duration_ms": 1, "change": "same"})
        })
        .collect();
    serde_json::from_value(json!({
        "run_id": run_id, "job": job, "trigger": trigger, "scheduled_for": scheduled_for,
        "started_at": t, "finished_at": t, "duration_ms": 5, "host": "ops-1",
        "timezone": "Asia/Kolkata", "status": "pass", "dry_run": dry_run,
        "counts": {"pass": items.len(), "warn": 0, "fail": 0, "skipped": 0, "manual": 0},
        "items": items,
        "notifications": []
    }))
    .expect("a report")
}

/// Stores `r` as a finished run; `comparable`: part of its job's series (not a dry run, not
/// limited by `--item`).
pub fn store_run(store: &Store, r: &Report, comparable: bool) {
    let scheduled = r.scheduled_for.map(|t| t.to_rfc3339());
    store
        .insert_run(
            &r.run_id,
            &r.job,
            r.trigger.as_str(),
            scheduled.as_deref(),
            &r.started_at.with_timezone(&Utc),
            comparable,
        )
        .expect("insert the run");
    store.finish_run(r, &[], &[]).expect("finish the run");
}
