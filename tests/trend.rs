//! `runbook trend` (SPEC 9.3) end to end: the real binary, a real state database filled by real
//! `run-job` runs, the series read back. `--target` (one target of an item over several
//! databases, SPEC 9.5) over runs of a real PostgreSQL cluster's databases.

mod support;

use std::path::Path;
use std::process::Output;

use assert_cmd::Command;
use runbook::face::pgcluster::TempCluster;
use serde_json::Value;
use support::{Setup, pg::cluster};

const JOBS: &str = r#"
[runbook]
timezone = "Asia/Kolkata"
state_dir = "state"

[jobs.daily]
schedule = "0 10 * * *"

[[jobs.daily.items]]
name = "Queue depth"
kind = "command"
argv = ["sh", "-c", "exit $(cat depth)"]
# Read-only: it runs under --dry-run too, so a dry run has a number to leave out.
read_only = true

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

fn cmd(dir: &Path) -> Command {
    let mut c = Command::from_std(support::runbook_in(dir));
    c.args(["--config", "jobs.toml"])
        .timeout(support::RUN_TIMEOUT);
    c
}

fn run(dir: &Path, args: &[&str]) -> Output {
    cmd(dir).args(args).output().unwrap()
}

fn json(dir: &Path, args: &[&str]) -> Value {
    let out = run(dir, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Four runs whose "Queue depth" exits 0, 3, 1, 2; returns their run ids, oldest first.
fn four_runs(dir: &Path) -> Vec<String> {
    std::fs::write(dir.join("jobs.toml"), JOBS).unwrap();
    let mut ids = Vec::new();
    for depth in [0, 3, 1, 2] {
        std::fs::write(dir.join("depth"), depth.to_string()).unwrap();
        let out = run(
            dir,
            &["run-job", "daily", "--no-notify", "--format", "json"],
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "run-job printed no report ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        ids.push(report["run_id"].as_str().unwrap().to_string());
    }
    ids
}

#[test]
fn trend_prints_the_series_oldest_first_in_the_contract_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ids = four_runs(dir);
    // A dry run is no measurement of anything: it never shows in a trend.
    std::fs::write(dir.join("depth"), "9").unwrap();
    run(dir, &["run-job", "daily", "--no-notify", "--dry-run"]);

    let v = json(
        dir,
        &[
            "trend",
            "daily",
            "Queue depth",
            "--field",
            "exit_code",
            "--format",
            "json",
        ],
    );
    let obj = v.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["field", "item", "job", "points"], "{v}");
    assert_eq!(v["job"], "daily");
    assert_eq!(v["item"], "Queue depth");
    assert_eq!(v["field"], "exit_code");
    let points = v["points"].as_array().unwrap();
    let values: Vec<f64> = points
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, [0.0, 3.0, 1.0, 2.0], "{v}");
    let run_ids: Vec<&str> = points
        .iter()
        .map(|p| p["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(run_ids, ids);
    for p in points {
        let mut keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["run_id", "started_at", "value"]);
        // In the job's zone (Asia/Kolkata).
        assert!(p["started_at"].as_str().unwrap().ends_with("+05:30"), "{p}");
    }

    // -n keeps the newest N, still oldest first.
    let v = json(
        dir,
        &[
            "trend",
            "daily",
            "Queue depth",
            "--field",
            "exit_code",
            "-n",
            "2",
            "--format",
            "json",
        ],
    );
    let values: Vec<f64> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, [1.0, 2.0], "{v}");

    // The text table ends with the summary and the change since the previous point.
    let out = run(
        dir,
        &["trend", "daily", "Queue depth", "--field", "exit_code"],
    );
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("4 points: min 0, max 3, last 2 (+1 since the previous point)"),
        "{text}"
    );
    assert!(text.contains(&ids[3]), "{text}");
}

#[test]
fn trend_defaults_to_data_value_and_follows_dotted_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    four_runs(dir);
    // `system` puts the fullest disk's used % in data.value.
    let v = json(dir, &["trend", "daily", "Disk", "--format", "json"]);
    assert_eq!(v["field"], "value");
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 4, "{v}");
    let nested = json(
        dir,
        &[
            "trend",
            "daily",
            "Disk",
            "--field",
            "disks.0.used_percent",
            "--format",
            "json",
        ],
    );
    assert_eq!(nested["points"].as_array().unwrap().len(), 4, "{nested}");
    for (a, b) in points.iter().zip(nested["points"].as_array().unwrap()) {
        assert_eq!(a["value"], b["value"]);
        let pct = a["value"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&pct), "{a}");
    }
    // A command item has no data.value: no points, exit 0, and the text says why.
    let v = json(dir, &["trend", "daily", "Queue depth", "--format", "json"]);
    assert_eq!(v["points"], serde_json::json!([]));
    let out = run(dir, &["trend", "daily", "Queue depth"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("4 run(s) skipped"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn trend_of_an_unknown_job_or_item_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    four_runs(dir);
    let out = run(dir, &["trend", "daily", "No such item"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown item \"No such item\""), "{err}");
    assert!(out.stdout.is_empty());
    let out = run(dir, &["trend", "weekly", "Disk"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown job \"weekly\""));
    let out = run(dir, &["trend", "daily", "Disk", "--field", "a..b"]);
    assert_eq!(out.status.code(), Some(2));

    // An item removed from the config still has its stored series.
    let text = std::fs::read_to_string(dir.join("jobs.toml")).unwrap();
    let cut = text.find("[[jobs.daily.items]]\nname = \"Disk\"").unwrap();
    std::fs::write(dir.join("jobs.toml"), &text[..cut]).unwrap();
    let v = json(dir, &["trend", "daily", "Disk", "--format", "json"]);
    assert_eq!(v["points"].as_array().unwrap().len(), 4, "{v}");
}

/// `[targets.NAME]` for each of `names`, each its own database of `pg` (created here with a
/// table `t`), followed by job `t` whose item "Rows" counts `t`'s rows on `fleet` (a TOML
/// list of target names), and a single-target item "One" on the first.
fn rows_config(pg: &TempCluster, names: &[&str], fleet: &str) -> String {
    let mut toml = String::new();
    for name in names {
        toml.push_str(&format!(
            "[targets.{name}]\nurl = \"{}\"\nsslmode = \"disable\"\n\n",
            pg.url(&format!("db_{name}"))
        ));
    }
    format!(
        r#"{toml}
[jobs.t]
timeout = "5m"

[[jobs.t.items]]
name = "Rows"
kind = "sql"
target = {fleet}
query = "SELECT count(*) FROM t"

[[jobs.t.items]]
name = "One"
kind = "sql"
target = "{}"
query = "SELECT count(*) FROM t"
"#,
        names[0]
    )
}

/// Creates database `db_NAME` with an empty table `t`.
fn create_db(pg: &TempCluster, name: &str) {
    let db = format!("db_{name}");
    pg.create_db(&db).expect("create db");
    pg.psql(&db, "CREATE TABLE t (id int)", &[])
        .expect("create table");
}

/// Adds `n` rows to `t` in database `db_NAME`.
fn add_rows(pg: &TempCluster, name: &str, n: usize) {
    pg.psql(
        &format!("db_{name}"),
        &format!("INSERT INTO t SELECT generate_series(1, {n})"),
        &[],
    )
    .expect("insert");
}

/// Runs job `t`; its run id (every item must pass).
fn run_t(setup: &Setup) -> String {
    let (code, report, all) = setup.run_job("t", &[]);
    assert_eq!(code, 0, "{all}");
    report["run_id"].as_str().unwrap().to_string()
}

/// `trend t ARGS --format json` (exit 0): its JSON.
fn trend_json(setup: &Setup, args: &[&str]) -> Value {
    let mut all = vec!["--config", "jobs.toml", "trend", "t"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--format", "json"]);
    let (code, v) = setup.json(&all);
    assert_eq!(code, 0, "{args:?}: {v}");
    v
}

fn values(v: &Value) -> Vec<f64> {
    v["points"]
        .as_array()
        .unwrap_or_else(|| panic!("no points in {v}"))
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect()
}

#[test]
fn trend_of_one_target_follows_that_databases_own_value() {
    let pg = cluster();
    for name in ["a", "b"] {
        create_db(&pg, name);
    }
    let setup = Setup::new(&rows_config(&pg, &["a", "b"], r#"["a", "b"]"#));
    // Run 1: a has 3 rows, b 10. Run 2: a 12, b 7. The item's own value is the larger.
    add_rows(&pg, "a", 3);
    add_rows(&pg, "b", 10);
    let first = run_t(&setup);
    add_rows(&pg, "a", 9);
    pg.psql("db_b", "DELETE FROM t WHERE id > 7", &[])
        .expect("delete");
    let second = run_t(&setup);

    let a = trend_json(&setup, &["Rows", "--target", "a"]);
    assert_eq!(values(&a), [3.0, 12.0], "{a}");
    let b = trend_json(&setup, &["Rows", "--target", "b"]);
    assert_eq!(values(&b), [10.0, 7.0], "{b}");
    let run_ids: Vec<&str> = b["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(run_ids, [first.as_str(), second.as_str()]);
    // The JSON names the target, the SPEC 9.3 keys unchanged beside it.
    let mut keys: Vec<&str> = a.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["field", "item", "job", "points", "target"], "{a}");
    assert_eq!(a["target"], "a");
    assert_eq!(a["item"], "Rows");
    assert_eq!(a["field"], "value");

    // Without --target: the item's own data.value, the largest of its targets', as before
    // (and no "target" key).
    let whole = trend_json(&setup, &["Rows"]);
    assert_eq!(values(&whole), [10.0, 12.0], "{whole}");
    assert!(whole.get("target").is_none(), "{whole}");

    // The text form names the target.
    let out = setup
        .runbook(&["trend", "t", "Rows", "--target", "b"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("t / Rows / target b / value\n"), "{text}");
    assert!(
        text.contains("2 points: min 7, max 10, last 7 (-3 since the previous point)"),
        "{text}"
    );
}

#[test]
fn trend_of_a_target_skips_runs_without_it_and_an_unknown_one_is_a_usage_error() {
    let pg = cluster();
    for name in ["a", "b", "c"] {
        create_db(&pg, name);
    }
    add_rows(&pg, "a", 1);
    add_rows(&pg, "b", 2);
    add_rows(&pg, "c", 5);
    let setup = Setup::new(&rows_config(&pg, &["a", "b", "c"], r#"["a", "b"]"#));
    run_t(&setup);
    run_t(&setup);
    // c is added to the item later: its series starts there, the runs before are skipped.
    setup.write_body(&rows_config(&pg, &["a", "b", "c"], r#"["a", "b", "c"]"#));
    let third = run_t(&setup);
    let c = trend_json(&setup, &["Rows", "--target", "c"]);
    assert_eq!(values(&c), [5.0], "{c}");
    assert_eq!(c["points"][0]["run_id"], third.as_str());
    let out = setup
        .runbook(&["trend", "t", "Rows", "--target", "c"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2 run(s) skipped: the item was absent, had no result for target `c`"),
        "{text}"
    );

    // A name that is none of the item's targets, configured or stored: exit 2, said clearly,
    // nothing on stdout.
    let out = setup
        .runbook(&["trend", "t", "Rows", "--target", "d"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"unknown target "d" of item "Rows" in job "t": not one it runs on in "#)
            && err.contains("(a, b, c) and in none of its stored runs"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    // A single-target item has no per-target results: the message says to leave --target out.
    let out = setup
        .runbook(&["trend", "t", "One", "--target", "a"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"unknown target "a" of item "One""#) && err.contains("leave out --target"),
        "{err}"
    );

    // A target removed from the config still has its stored series.
    setup.write_body(&rows_config(&pg, &["a", "b", "c"], r#"["a", "c"]"#));
    let b = trend_json(&setup, &["Rows", "--target", "b"]);
    assert_eq!(values(&b), [2.0, 2.0, 2.0], "{b}");
}
