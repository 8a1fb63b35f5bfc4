//! Benchmark (bench/render-charts.sh): the HTML report of a 15-item run rendered with and
//! without 30-point charts (29 earlier values per item, as `Store::fill_history` hands them);
//! prints the time per render of each and the difference. Usage: `render_charts [ROUNDS]`.

use std::hint::black_box;
use std::time::Instant;

use runbook::report::Report;

fn report(items: usize) -> Report {
    let items: Vec<serde_json::Value> = (0..items)
        .map(|i| {
            serde_json::json!({
                "name": format!("Check number {i} (with a realistic, longish name)"),
                "kind": "sql", "status": if i % 5 == 0 { "warn" } else { "pass" },
                "summary": format!("value {} (warn > 80, fail > 90)", 40 + i),
                "details": ["first detail line", "second detail line"],
                "data": {"value": 40.0 + i as f64}, "duration_ms": 12, "change": "same"
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "run_id": "01JBENCH00000000000000000", "job": "daily", "trigger": "schedule",
        "scheduled_for": "2026-11-24T10:00:00+05:30", "started_at": "2026-11-24T10:00:00+05:30",
        "finished_at": "2026-11-24T10:00:03+05:30", "duration_ms": 3200, "host": "ops-1",
        "timezone": "Asia/Kolkata", "status": "warn",
        "counts": {"pass": 12, "warn": 3, "fail": 0, "skipped": 0, "manual": 0},
        "items": items, "notifications": []
    }))
    .expect("a report")
}

/// Mean time per render over `rounds`, in microseconds (after a warm-up).
fn time(r: &Report, rounds: u32) -> (f64, usize) {
    let len = runbook::report::html::render(r).len();
    for _ in 0..rounds / 10 {
        black_box(runbook::report::html::render(black_box(r)));
    }
    let start = Instant::now();
    for _ in 0..rounds {
        black_box(runbook::report::html::render(black_box(r)));
    }
    (start.elapsed().as_secs_f64() * 1e6 / f64::from(rounds), len)
}

fn main() {
    let rounds: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let plain = report(15);
    let mut charted = plain.clone();
    for (i, item) in charted.items.iter().enumerate() {
        let values = (0..runbook::report::CHART_POINTS - 1)
            .map(|k| 30.0 + i as f64 + (k % 7) as f64 * 1.5)
            .collect();
        charted.history.insert(item.name.clone(), values);
    }
    let (a, la) = time(&plain, rounds);
    let (b, lb) = time(&charted, rounds);
    println!("15 items, {rounds} renders each");
    println!("without charts: {a:8.1} µs per render, {la} bytes");
    println!("with charts:    {b:8.1} µs per render, {lb} bytes (30 points each)");
    println!(
        "charts add:     {:8.1} µs ({:.3} ms) per report, {} bytes",
        b - a,
        (b - a) / 1000.0,
        lb - la
    );
}
