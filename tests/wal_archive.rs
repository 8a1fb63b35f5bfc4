//! `wal_archive` end to end: `runbook run-job --format json` against real throwaway clusters
//! with WAL archiving into a folder, failing archiving (`archive_command = 'false'`), and
//! archiving off, a streaming standby (`archive_mode = always` and `on`), and one item over two
//! clusters (each target's counts since that target's previous result).

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use runbook::face::pgcluster::TempCluster;
use support::{
    Setup, item,
    pg::{cluster_with_app_db, q, wait_for},
    standby::Standby,
};

/// Turns archiving on with `archive_command` (restart).
fn archive_with(pg: &TempCluster, command: &str) {
    pg.restart_with(&format!(
        "archive_mode = on\narchive_command = '{}'",
        command.replace('\'', "''")
    ))
    .expect("restart with archiving");
}

/// The archive folder: next to the data directory, in the cluster's own (postgres-owned)
/// temporary folder, created by the archive_command itself.
fn archive_dir(pg: &TempCluster) -> PathBuf {
    pg.data.parent().expect("data has a parent").join("archive")
}

fn copying(dir: &Path) -> String {
    let d = dir.display();
    format!("mkdir -p \"{d}\" && test ! -f \"{d}/%f\" && cp \"%p\" \"{d}/%f\"")
}

/// Writes a little, switches WAL; returns the name of the segment switched away from.
fn switch(pg: &TempCluster) -> String {
    q(
        pg,
        "CREATE TABLE IF NOT EXISTS w (v text); INSERT INTO w SELECT md5(g::text) FROM generate_series(1, 1000) g",
    );
    q(pg, "SELECT pg_walfile_name(pg_switch_wal())")
}

const JOBS: &str = r#"
[jobs.wal]
[[jobs.wal.items]]
name = "archive"
kind = "wal_archive"
target = "db"
max_age = "1h"

[jobs.old]
[[jobs.old.items]]
name = "archive, tiny max_age"
kind = "wal_archive"
target = "db"
max_age = "1s"

[jobs.optional]
[[jobs.optional.items]]
name = "required"
kind = "wal_archive"
target = "db"
[[jobs.optional.items]]
name = "not required"
kind = "wal_archive"
target = "db"
required = false
"#;

#[test]
fn archiving_into_a_folder_passes_counts_since_the_last_run_and_fails_past_max_age() {
    let pg = cluster_with_app_db();
    let dir = archive_dir(&pg);
    archive_with(&pg, &copying(&dir));
    let wal = switch(&pg);
    wait_for(
        &pg,
        &format!("SELECT last_archived_wal = '{wal}' FROM pg_stat_archiver"),
    );
    assert!(dir.join(&wal).is_file(), "the archive_command copied {wal}");
    let s = Setup::with_db(&pg.url("app"), "", JOBS);

    let (code, report, all) = s.run_job("wal", &[]);
    assert_eq!(code, 0, "{all}");
    let it = item(&report, "archive");
    assert_eq!(it["status"], "pass", "{all}");
    assert_eq!(it["kind"], "wal_archive");
    let summary = it["summary"].as_str().unwrap();
    assert!(
        summary.contains(&format!("last WAL {wal} archived")),
        "{summary}"
    );
    assert!(summary.contains("0 failure(s)"), "{summary}");
    let data = &it["data"];
    assert_eq!(data["last_archived_wal"], wal.as_str(), "{data}");
    assert_eq!(data["archive_mode"], "on");
    assert_eq!(data["archive_command_set"], true);
    assert_eq!(data["failed_count"], 0);
    assert!(data["archived_count"].as_i64().unwrap() >= 1, "{data}");
    assert!(data["value"].is_number(), "{data}");
    assert_eq!(data["value"], data["last_archived_age_seconds"]);
    // The command itself is never reported (it may hold a credential).
    assert!(!report.to_string().contains("cp \\\"%p"), "{report}");

    // Nothing switched since: nothing archived since the last run.
    let (code, report, all) = s.run_job("wal", &[]);
    assert_eq!(code, 0, "{all}");
    let data = &item(&report, "archive")["data"];
    assert_eq!(data["counted_since"], "last run", "{data}");
    assert_eq!(data["archived_count"], 0, "{data}");

    // One more segment: one archived since the last run.
    let wal2 = switch(&pg);
    wait_for(
        &pg,
        &format!("SELECT last_archived_wal = '{wal2}' FROM pg_stat_archiver"),
    );
    let (code, report, all) = s.run_job("wal", &[]);
    assert_eq!(code, 0, "{all}");
    let it = item(&report, "archive");
    assert_eq!(it["data"]["archived_count"], 1, "{all}");
    assert_eq!(it["data"]["last_archived_wal"], wal2.as_str());
    assert!(
        it["summary"]
            .as_str()
            .unwrap()
            .contains("1 archived since last run"),
        "{it}"
    );

    // Read-only: --dry-run runs it.
    let (code, report, all) = s.run_job("wal", &["--dry-run"]);
    assert_eq!(code, 0, "{all}");
    assert_eq!(item(&report, "archive")["status"], "pass", "{all}");

    // The newest archived segment is older than max_age.
    std::thread::sleep(Duration::from_millis(2100));
    let (code, report, all) = s.run_job("old", &[]);
    assert_eq!(code, 1, "{all}");
    let it = item(&report, "archive, tiny max_age");
    assert_eq!(it["status"], "fail", "{all}");
    let summary = it["summary"].as_str().unwrap();
    assert!(summary.contains(&wal2), "{summary}");
    assert!(summary.contains("older than max_age 1s"), "{summary}");
}

#[test]
fn a_failing_archive_command_fails_naming_the_segment_and_the_time() {
    let pg = cluster_with_app_db();
    archive_with(&pg, "false");
    let wal = switch(&pg);
    wait_for(
        &pg,
        &format!("SELECT failed_count > 0 AND last_failed_wal = '{wal}' FROM pg_stat_archiver"),
    );
    let failed_at = q(
        &pg,
        "SELECT to_char(last_failed_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI') FROM pg_stat_archiver",
    );
    let s = Setup::with_db(&pg.url("app"), "", JOBS);
    let (code, report, all) = s.run_job("wal", &[]);
    assert_eq!(code, 1, "{all}");
    let it = item(&report, "archive");
    assert_eq!(it["status"], "fail", "{all}");
    let summary = it["summary"].as_str().unwrap();
    assert!(summary.contains("archiving is failing"), "{summary}");
    assert!(
        summary.contains(&format!("WAL {wal} failed at {failed_at}")),
        "{summary}"
    );
    assert!(summary.contains("no WAL archived yet"), "{summary}");
    let data = &it["data"];
    assert_eq!(data["failing"], true, "{data}");
    assert_eq!(data["last_failed_wal"], wal.as_str());
    assert!(data["failed_count"].as_i64().unwrap() >= 1, "{data}");
    assert_eq!(data["archived_count"], 0);
    assert!(data["value"].is_null(), "{data}");
}

#[test]
fn archiving_off_warns_unless_not_required() {
    let pg = cluster_with_app_db();
    let s = Setup::with_db(&pg.url("app"), "", JOBS);
    let (code, report, all) = s.run_job("optional", &[]);
    assert_eq!(code, 0, "{all}");
    let it = item(&report, "required");
    assert_eq!(it["status"], "warn", "{all}");
    assert!(
        it["summary"]
            .as_str()
            .unwrap()
            .contains("WAL archiving is off (archive_mode = off)"),
        "{it}"
    );
    assert_eq!(it["data"]["archive_mode"], "off");
    let it = item(&report, "not required");
    assert_eq!(it["status"], "pass", "{all}");
    assert!(
        it["summary"].as_str().unwrap().contains("not required"),
        "{it}"
    );
    assert_eq!(report["status"], "warn", "{all}");
}

#[test]
fn a_bad_max_age_is_a_config_error_with_its_position() {
    let s = Setup::new(
        "[targets.db]\nurl = \"postgres://127.0.0.1:1/x\"\n\n[jobs.w]\n[[jobs.w.items]]\nname = \"archive\"\nkind = \"wal_archive\"\ntarget = \"db\"\nmax_age = \"soon\"\n",
    );
    let (code, _, all) = s.run_job("w", &[]);
    assert_eq!(code, 2, "{all}");
    assert!(all.contains("jobs.toml:13:"), "{all}");
    assert!(all.contains("item \"archive\""), "{all}");
    assert!(all.contains("invalid duration \"soon\""), "{all}");
}

/// A streaming standby of `pg` (pg_basebackup -R) with `conf` appended, stopped on drop.

#[test]
fn on_a_standby_archive_mode_always_is_checked_and_on_does_not_archive_there() {
    let pg = cluster_with_app_db();
    archive_with(&pg, &copying(&archive_dir(&pg)));
    // The standby archives into its own folder, in its own (postgres-owned) temporary folder.
    let mut standby = Standby::start(&pg);
    let standby_archive = standby.dir().join("archive");
    let conf = standby.dir().join("data").join("postgresql.conf");
    let text = std::fs::read_to_string(&conf).expect("conf");
    std::fs::write(
        &conf,
        format!(
            "{text}\narchive_mode = always\narchive_command = '{}'\n",
            copying(&standby_archive)
        ),
    )
    .expect("conf");
    standby.restart();
    let wal = switch(&pg);
    let s = Setup::with_db(&standby.url("app"), "", JOBS);
    // Wait until the standby has archived the segment it received.
    let start = std::time::Instant::now();
    let report = loop {
        let (_, report, all) = s.run_job("wal", &[]);
        if item(&report, "archive")["data"]["last_archived_wal"] == wal.as_str() {
            break report;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the standby never archived {wal}: {all}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let it = item(&report, "archive");
    assert_eq!(it["status"], "pass", "{it}");
    assert_eq!(it["data"]["in_recovery"], true, "{it}");
    assert_eq!(it["data"]["archive_mode"], "always", "{it}");
    assert!(standby_archive.join(&wal).is_file());

    // archive_mode = on: the standby does not archive (its primary does).
    let text = std::fs::read_to_string(&conf).expect("conf");
    std::fs::write(&conf, format!("{text}\narchive_mode = on\n")).expect("conf");
    standby.restart();
    let (code, report, all) = s.run_job("optional", &[]);
    assert_eq!(code, 0, "{all}");
    let it = item(&report, "required");
    assert_eq!(it["status"], "warn", "{all}");
    assert!(
        it["summary"]
            .as_str()
            .unwrap()
            .contains("this standby does not archive WAL"),
        "{it}"
    );
    assert_eq!(item(&report, "not required")["status"], "pass", "{all}");
}

/// Switches WAL `n` times on `pg` and waits until the last segment is archived.
fn archive_segments(pg: &TempCluster, n: usize) {
    for _ in 0..n {
        let wal = switch(pg);
        wait_for(
            pg,
            &format!("SELECT last_archived_wal = '{wal}' FROM pg_stat_archiver"),
        );
    }
}

/// The result on `target` of an item over several targets.
fn on<'a>(item: &'a serde_json::Value, target: &str) -> &'a serde_json::Value {
    item["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["target"] == target))
        .unwrap_or_else(|| panic!("no target {target:?} in {item:#}"))
}

/// An item over two targets on two clusters (two archivers with different totals) counts, per
/// target, what that target's archiver did since that target's result in the job's previous
/// run; a single-target item of the same name in another job keeps its own count.
#[test]
fn over_two_clusters_each_target_counts_its_own_archiver_since_the_last_run() {
    let (a, b) = (cluster_with_app_db(), cluster_with_app_db());
    for pg in [&a, &b] {
        archive_with(pg, &copying(&archive_dir(pg)));
    }
    let s = Setup::new(&format!(
        r#"
[targets.wal-a]
url = "{}"
sslmode = "disable"

[targets.wal-b]
url = "{}"
sslmode = "disable"

[jobs.fleet]
[[jobs.fleet.items]]
name = "archive"
kind = "wal_archive"
target = "wal-*"
max_age = "1h"

[jobs.single]
[[jobs.single.items]]
name = "archive"
kind = "wal_archive"
target = "wal-a"
max_age = "1h"
"#,
        a.url("app"),
        b.url("app")
    ));
    let archived = |report: &serde_json::Value, target: &str| {
        let data = &on(item(report, "archive"), target)["data"];
        assert_eq!(data["target"], target, "{data}");
        (
            data["archived_count"].as_i64().unwrap(),
            data["counted_since"].as_str().unwrap().to_string(),
            data["archived_total"].as_i64().unwrap(),
        )
    };

    // Different totals on the two archivers, and the single-target job's first run on A.
    archive_segments(&a, 1);
    archive_segments(&b, 4);
    let (code, report, all) = s.run_job("single", &[]);
    assert_eq!(code, 0, "{all}");
    let single_total = item(&report, "archive")["data"]["archived_total"]
        .as_i64()
        .unwrap();
    archive_segments(&a, 1);

    let (code, first, all) = s.run_job("fleet", &[]);
    assert_eq!(code, 0, "{all}");
    let (_, since_a, total_a) = archived(&first, "wal-a");
    let (_, since_b, total_b) = archived(&first, "wal-b");
    assert_eq!(since_a, "statistics reset", "{all}");
    assert_eq!(since_b, "statistics reset", "{all}");
    assert_eq!(total_a, single_total + 1, "{all}");
    assert_ne!(total_a, total_b, "the archivers' totals differ: {all}");

    // N = 3 on A, M = 1 on B.
    archive_segments(&a, 3);
    archive_segments(&b, 1);
    let (code, second, all) = s.run_job("fleet", &[]);
    assert_eq!(code, 0, "{all}");
    assert_eq!(
        archived(&second, "wal-a"),
        (3, "last run".to_string(), total_a + 3),
        "{all}"
    );
    assert_eq!(
        archived(&second, "wal-b"),
        (1, "last run".to_string(), total_b + 1),
        "{all}"
    );
    let summary = |target: &str| {
        on(item(&second, "archive"), target)["summary"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        summary("wal-a").contains("3 archived since last run"),
        "{all}"
    );
    assert!(
        summary("wal-b").contains("1 archived since last run"),
        "{all}"
    );

    // The single-target job counts on A since its own previous run (not the fleet job's).
    let (code, report, all) = s.run_job("single", &[]);
    assert_eq!(code, 0, "{all}");
    let data = &item(&report, "archive")["data"];
    assert_eq!(data["counted_since"], "last run", "{data}");
    assert_eq!(data["archived_count"], total_a + 3 - single_total, "{data}");

    // The item's value (what `runbook trend` and the charts read) is the worst target's: the
    // oldest last archived segment.
    let values: Vec<f64> = ["wal-a", "wal-b"]
        .iter()
        .map(|t| {
            on(item(&second, "archive"), t)["data"]["value"]
                .as_f64()
                .unwrap()
        })
        .collect();
    let value = item(&second, "archive")["data"]["value"].as_f64().unwrap();
    assert_eq!(value, values[0].max(values[1]), "{all}");
    let (code, trend) = s.json(&[
        "--config",
        s.config().to_str().unwrap(),
        "trend",
        "fleet",
        "archive",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{trend}");
    let points = trend["points"].as_array().unwrap();
    assert_eq!(points.len(), 2, "{trend}");
    assert_eq!(points[1]["run_id"], second["run_id"], "{trend}");
    assert_eq!(points[1]["value"].as_f64(), Some(value), "{trend}");
}
