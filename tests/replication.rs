//! `kind = "replication"` end to end: `runbook run-job --format json` against a real primary
//! with a real streaming standby (`pg_basebackup -R`), the standby stopped, and an inactive
//! physical slot holding WAL.

mod support;

use std::time::Duration;

use runbook::face::pgcluster::TempCluster;
use serde_json::Value;
use support::{Setup, item, pg::wait_until_gives, standby::Standby};

fn primary() -> TempCluster {
    support::pg::cluster()
}

const JOBS: &str = r#"
[jobs.primary]
[[jobs.primary.items]]
name = "replication"
kind = "replication"
target = "db"
expect_standbys = 1

[jobs.standby]
[[jobs.standby.items]]
name = "replication"
kind = "replication"
target = "standby"

[jobs.unprivileged]
[[jobs.unprivileged.items]]
name = "replication"
kind = "replication"
target = "plain"
expect_standbys = 1
"#;

fn setup(pg: &TempCluster, standby_url: &str) -> Setup {
    Setup::with_db(
        &pg.url("postgres"),
        &format!(
            "\n[targets.standby]\nurl = \"{standby_url}\"\nsslmode = \"disable\"\n\n[targets.plain]\nurl = \"postgres://plain@127.0.0.1:{}/postgres\"\nsslmode = \"disable\"\n",
            pg.port
        ),
        JOBS,
    )
}

/// `check-config` on `s`'s jobs.toml, which must refuse it (exit 2): its stderr, and the line
/// number of the first line of jobs.toml starting with a key.
fn refused_config(s: &Setup) -> (String, impl Fn(&str) -> usize) {
    let jobs = s.dir.path().join("jobs.toml");
    let text = std::fs::read_to_string(&jobs).unwrap();
    let out = assert_cmd::Command::cargo_bin("runbook")
        .unwrap()
        .arg("--config")
        .arg(&jobs)
        .arg("check-config")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    let line_of = move |key: &str| {
        text.lines()
            .position(|l| l.starts_with(key))
            .expect("key in jobs.toml")
            + 1
    };
    (err, line_of)
}

#[test]
fn streaming_standby_passes_on_both_sides_and_a_stopped_one_fails() {
    let pg = primary();
    let mut standby = Standby::start(&pg);
    let s = setup(&pg, &standby.url("postgres"));

    // (a) The primary sees its one standby streaming: pass, and the standby is listed.
    let (code, report, out) = s.run_job("primary", &[]);
    let it = item(&report, "replication");
    assert_eq!(it["status"], "pass", "{out}");
    assert_eq!(code, 0, "{out}");
    assert_eq!(it["data"]["role"], "primary", "{it:#}");
    assert_eq!(it["data"]["streaming"], 1, "{it:#}");
    let standbys = it["data"]["standbys"].as_array().expect("standbys");
    assert_eq!(standbys.len(), 1, "{it:#}");
    assert_eq!(standbys[0]["state"], "streaming", "{it:#}");
    assert_eq!(standbys[0]["client_addr"], "127.0.0.1", "{it:#}");
    assert!(it["data"]["value"].as_f64().is_some(), "{it:#}");
    assert!(
        it["summary"]
            .as_str()
            .unwrap()
            .contains("1 of 1 standby(s) streaming"),
        "{it:#}"
    );

    // (d) The item pointed at the standby: streaming, pass, with its replay lag.
    let (code, report, out) = s.run_job("standby", &[]);
    let it = item(&report, "replication");
    assert_eq!(it["status"], "pass", "{out}");
    assert_eq!(code, 0, "{out}");
    assert_eq!(it["data"]["role"], "standby", "{it:#}");
    assert_eq!(it["data"]["streaming"], true, "{it:#}");
    assert_eq!(it["data"]["wal_receiver_status"], "streaming", "{it:#}");
    assert!(it["data"]["value"].as_f64().is_some(), "{it:#}");
    assert!(
        it["summary"].as_str().unwrap().contains("streaming from"),
        "{it:#}"
    );

    // A role without pg_monitor sees the standby but not its state: the failure says why.
    pg.psql("postgres", "CREATE ROLE plain LOGIN", &[])
        .expect("create role");
    let (_, report, out) = s.run_job("unprivileged", &[]);
    let it = item(&report, "replication");
    assert_eq!(it["status"], "fail", "{out}");
    assert!(
        it["summary"].as_str().unwrap().contains(
            "expected 1 standby(s), 0 streaming (1 connected but their state is hidden: grant pg_monitor to the target's role)"
        ),
        "{it:#}"
    );

    // (b) The standby stopped: the primary has none streaming and expected one.
    standby.stop();
    wait_until_gives(&pg, "SELECT count(*) FROM pg_stat_replication", "0");
    let (code, report, out) = s.run_job("primary", &[]);
    let it = item(&report, "replication");
    assert_eq!(it["status"], "fail", "{out}");
    assert_ne!(code, 0, "{out}");
    assert_eq!(it["data"]["streaming"], 0, "{it:#}");
    assert!(
        it["summary"]
            .as_str()
            .unwrap()
            .contains("expected 1 standby(s), 0 streaming"),
        "{it:#}"
    );
}

#[test]
fn inactive_slot_holding_wal_warns_naming_it() {
    let pg = primary();
    pg.psql(
        "postgres",
        "SELECT pg_create_physical_replication_slot('held', true); \
         CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 20000) g; \
         SELECT pg_switch_wal();",
        &[],
    )
    .expect("slot and WAL");
    let s = Setup::with_db(
        &pg.url("postgres"),
        "",
        r#"
[jobs.slots]
[[jobs.slots.items]]
name = "replication"
kind = "replication"
target = "db"
slot_retained_warn = "1kB"

[jobs.defaults]
[[jobs.defaults.items]]
name = "replication"
kind = "replication"
target = "db"
"#,
    );
    let (_, report, out) = s.run_job("slots", &[]);
    let it = item(&report, "replication");
    assert_eq!(it["status"], "warn", "{out}");
    let summary = it["summary"].as_str().unwrap();
    assert!(summary.contains("slot held is inactive, holding"), "{it:#}");
    assert!(summary.contains("of WAL (warn above 1000B)"), "{it:#}");
    let slots = it["data"]["slots"].as_array().expect("slots");
    assert_eq!(slots.len(), 1, "{it:#}");
    let slot: &Value = &slots[0];
    assert_eq!(slot["slot_name"], "held", "{it:#}");
    assert_eq!(slot["slot_type"], "physical", "{it:#}");
    assert_eq!(slot["active"], false, "{it:#}");
    assert!(
        slot["wal_retained_bytes"].as_i64().unwrap() > 1000,
        "{it:#}"
    );
    assert_eq!(slot["wal_status"], "reserved", "{it:#}");

    // Below the default 5GB threshold, the inactive slot still warns: it holds WAL.
    let (_, report, out) = s.run_job("defaults", &[]);
    let it = item(&report, "replication");
    assert_eq!(it["status"], "warn", "{out}");
    let summary = it["summary"].as_str().unwrap();
    assert!(summary.contains("slot held is inactive, holding"), "{it:#}");
    assert!(!summary.contains("above"), "{it:#}");
}

#[test]
fn standby_lag_counts_only_wal_waiting_to_be_replayed() {
    let pg = primary();
    let standby = Standby::start(&pg);
    let s = Setup::with_db(
        &pg.url("postgres"),
        &format!(
            "\n[targets.standby]\nurl = \"{}\"\nsslmode = \"disable\"\n",
            standby.url("postgres")
        ),
        r#"
[jobs.standby]
[[jobs.standby.items]]
name = "replication"
kind = "replication"
target = "standby"
lag_warn = "1s"
lag_fail = "1h"
"#,
    );
    pg.psql(
        "postgres",
        "CREATE TABLE t (v int); INSERT INTO t VALUES (1);",
        &[],
    )
    .expect("write on the primary");
    standby.wait_until("SELECT to_regclass('public.t') IS NOT NULL", "t");
    standby.wait_until("SELECT count(*) FROM t", "1");
    // A quiet primary: the last transaction gets older, but nothing is waiting to be replayed.
    std::thread::sleep(Duration::from_millis(2500));
    let (_, report, out) = s.run_job("standby", &[]);
    let it = item(&report, "replication");
    assert_eq!(it["status"], "pass", "{out}");
    assert!(
        it["data"]["seconds_since_last_replay"].as_f64().unwrap() > 1.0,
        "{it:#}"
    );
    assert_eq!(it["data"]["replay_lag_seconds"], 0.0, "{it:#}");
    assert_eq!(it["data"]["value"], 0.0, "{it:#}");

    // Replay held back for an hour: the next commit is received but waits, so the standby
    // lags by the age of the last transaction it replayed.
    standby.psql("ALTER SYSTEM SET recovery_min_apply_delay = '1h'");
    standby.psql("SELECT pg_reload_conf()");
    standby.wait_until("SHOW recovery_min_apply_delay", "1h");
    pg.psql("postgres", "INSERT INTO t VALUES (2);", &[])
        .expect("write on the primary");
    standby.wait_until(
        "SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) > 0",
        "t",
    );
    let (_, report, out) = s.run_job("standby", &[]);
    let it = item(&report, "replication");
    assert_eq!(it["status"], "warn", "{out}");
    assert!(
        it["data"]["replay_lag_seconds"].as_f64().unwrap() > 1.0,
        "{it:#}"
    );
    assert!(
        it["data"]["receive_replay_distance_bytes"]
            .as_i64()
            .unwrap()
            > 0,
        "{it:#}"
    );
    let summary = it["summary"].as_str().unwrap();
    assert!(summary.contains("(warn above 1s)"), "{it:#}");
    assert!(summary.contains("streaming from"), "{it:#}");
}

#[test]
fn bad_thresholds_are_config_errors_with_their_position() {
    let s = Setup::with_db(
        "postgres://postgres@127.0.0.1:1/postgres",
        "",
        r#"
[jobs.j]
[[jobs.j.items]]
name = "r"
kind = "replication"
target = "db"
lag_warn = "10m"
lag_fail = "5m"
slot_retained_warn = "30GB"
slot_retained_fail = "10GB"
"#,
    );
    let (err, line_of) = refused_config(&s);
    assert!(
        err.contains(&format!(
            "jobs.toml:{}:1: job \"j\", item \"r\": lag_fail (5m) is below lag_warn (10m)",
            line_of("lag_fail")
        )),
        "{err}"
    );
    let at = format!(
        "jobs.toml:{}:1: job \"j\", item \"r\": slot_retained_fail (",
        line_of("slot_retained_fail")
    );
    assert!(
        err.lines()
            .any(|l| l.contains(&at) && l.contains("is below slot_retained_warn (")),
        "{err}"
    );

    // A size that does not parse names its value and the item.
    let jobs = s.dir.path().join("jobs.toml");
    let text = std::fs::read_to_string(&jobs).unwrap();
    std::fs::write(&jobs, text.replace("\"30GB\"", "\"5 gigs\"")).unwrap();
    let (err, _) = refused_config(&s);
    assert!(
        err.contains(&format!(
            "jobs.toml:{}:1: job \"j\", item \"r\": invalid size \"5 gigs\"",
            line_of("slot_retained_warn")
        )),
        "{err}"
    );
}

/// `system_identifier` of the cluster behind `pg` (`pg_control_system()`).
fn system_identifier(pg: &TempCluster) -> String {
    pg.psql(
        "postgres",
        "SELECT system_identifier FROM pg_control_system()",
        &[],
    )
    .expect("system identifier")
    .trim()
    .to_string()
}

#[test]
fn standby_of_its_named_primary_passes_and_an_unreachable_primary_warns() {
    let pg = primary();
    let standby = Standby::start(&pg);
    let id = system_identifier(&pg);
    let s = Setup::with_db(
        &pg.url("postgres"),
        &format!(
            "\n[targets.standby]\nurl = \"{url}\"\nsslmode = \"disable\"\n\n\
             [targets.standby_again]\nurl = \"{url}\"\nsslmode = \"disable\"\n\n\
             [targets.gone]\nurl = \"postgres://postgres@127.0.0.1:1/postgres\"\nsslmode = \"disable\"\npassword = \"gone-pw-4471\"\nconnect_timeout = \"2s\"\n",
            url = standby.url("postgres")
        ),
        r#"
[jobs.follows]
[[jobs.follows.items]]
name = "replication"
kind = "replication"
target = "standby"
primary = "db"

[jobs.unreachable]
[[jobs.unreachable.items]]
name = "replication"
kind = "replication"
target = "standby"
primary = "gone"

[jobs.cascade]
[[jobs.cascade.items]]
name = "replication"
kind = "replication"
target = "standby"
primary = "standby_again"
"#,
    );

    // The standby of the named primary: same system identifier, pass, said in the details.
    let (code, report, out) = s.run_job("follows", &[]);
    let it = item(&report, "replication");
    assert_eq!(it["status"], "pass", "{out}");
    assert_eq!(code, 0, "{out}");
    assert_eq!(it["data"]["role"], "standby", "{it:#}");
    assert_eq!(it["data"]["system_identifier"], id.as_str(), "{it:#}");
    assert_eq!(it["data"]["primary"]["target"], "db", "{it:#}");
    assert_eq!(
        it["data"]["primary"]["system_identifier"],
        id.as_str(),
        "{it:#}"
    );
    assert_eq!(it["data"]["primary"]["same_cluster"], true, "{it:#}");
    assert_eq!(it["data"]["primary"]["in_recovery"], false, "{it:#}");
    assert!(
        support::details(it).contains(&format!(
            "a standby of db's cluster (system identifier {id})"
        )),
        "{it:#}"
    );

    // The primary cannot be reached: warn with the reason, the standby's own checks still
    // reported, and the primary's password nowhere.
    let (code, report, out) = s.run_job("unreachable", &[]);
    let it = item(&report, "replication");
    assert_eq!(it["status"], "warn", "{out}");
    assert_eq!(code, 0, "{out}");
    let summary = it["summary"].as_str().unwrap();
    assert!(
        summary.starts_with(
            "primary gone cannot be checked, so whether this is its standby is unknown: "
        ),
        "{it:#}"
    );
    assert!(summary.contains("cannot connect to target gone"), "{it:#}");
    assert!(summary.contains("standby: streaming from"), "{it:#}");
    assert_eq!(it["data"]["streaming"], true, "{it:#}");
    assert!(it["data"]["primary"]["error"].is_string(), "{it:#}");
    assert!(!out.contains("gone-pw-4471"), "{out}");

    // The target set as primary is in recovery itself: warn, the details say so.
    let (_, report, out) = s.run_job("cascade", &[]);
    let it = item(&report, "replication");
    assert_eq!(it["status"], "warn", "{out}");
    assert!(
        it["summary"]
            .as_str()
            .unwrap()
            .starts_with("primary standby_again is itself a standby (in recovery); "),
        "{it:#}"
    );
    assert!(
        support::details(it)
            .contains("target standby_again, set as this standby's primary, is in recovery too"),
        "{it:#}"
    );
    assert_eq!(it["data"]["primary"]["in_recovery"], true, "{it:#}");
}

#[test]
fn standby_of_another_cluster_fails_naming_both_identifiers_and_the_job_goes_on() {
    let pg = primary();
    let standby = Standby::start(&pg);
    // A second, independent cluster (its own initdb): another system identifier.
    let other = primary();
    let (id_a, id_b) = (system_identifier(&pg), system_identifier(&other));
    assert_ne!(id_a, id_b);
    let s = Setup::with_db(
        &pg.url("postgres"),
        &format!(
            "\n[targets.standby]\nurl = \"{}\"\nsslmode = \"disable\"\n\n[targets.b]\nurl = \"{}\"\nsslmode = \"disable\"\n",
            standby.url("postgres"),
            other.url("postgres")
        ),
        r#"
[jobs.estate]
[[jobs.estate.items]]
name = "standby of b"
kind = "replication"
target = "standby"
primary = "b"

[[jobs.estate.items]]
name = "primary a"
kind = "replication"
target = "db"
expect_standbys = 1
"#,
    );
    let (code, report, out) = s.run_job("estate", &[]);
    let it = item(&report, "standby of b");
    assert_eq!(it["status"], "fail", "{out}");
    assert_ne!(code, 0, "{out}");
    assert!(
        it["summary"].as_str().unwrap().starts_with(&format!(
            "standby of another cluster: system identifier {id_a}, primary b has {id_b}; "
        )),
        "{it:#}"
    );
    // Where its WAL comes from instead: the receiver's sender, cluster A.
    assert!(
        support::details(it).contains(&format!(
            "its WAL receiver streams from 127.0.0.1:{}",
            pg.port
        )),
        "{it:#}"
    );
    assert_eq!(it["data"]["primary"]["same_cluster"], false, "{it:#}");
    assert_eq!(
        it["data"]["primary"]["system_identifier"],
        id_b.as_str(),
        "{it:#}"
    );

    // The other item of the job still ran, and passed.
    let it = item(&report, "primary a");
    assert_eq!(it["status"], "pass", "{out}");
    assert_eq!(it["data"]["streaming"], 1, "{it:#}");
}

#[test]
fn primary_option_on_a_primary_fails_as_a_promoted_node() {
    let pg = primary();
    let s = Setup::with_db(
        &pg.url("postgres"),
        "\n[targets.old]\nurl = \"postgres://postgres@127.0.0.1:1/postgres\"\nsslmode = \"disable\"\n",
        r#"
[jobs.j]
[[jobs.j.items]]
name = "replication"
kind = "replication"
target = "db"
primary = "old"
"#,
    );
    let (code, report, out) = s.run_job("j", &[]);
    let it = item(&report, "replication");
    assert_eq!(it["status"], "fail", "{out}");
    assert_ne!(code, 0, "{out}");
    assert!(
        it["summary"].as_str().unwrap().starts_with(
            "expected a standby of old, but db is a primary (not in recovery); primary: "
        ),
        "{it:#}"
    );
    assert_eq!(it["data"]["role"], "primary", "{it:#}");
    assert_eq!(it["data"]["primary"]["target"], "old", "{it:#}");
}

#[test]
fn unknown_primary_is_a_config_error_with_its_position() {
    let s = Setup::with_db(
        "postgres://postgres@127.0.0.1:1/postgres",
        "",
        r#"
[jobs.j]
[[jobs.j.items]]
name = "r"
kind = "replication"
target = "db"
primary = "nope"

[[jobs.j.items]]
name = "self"
kind = "replication"
target = "db"
primary = "db"
"#,
    );
    let (err, line_of) = refused_config(&s);
    assert!(
        err.contains(&format!(
            "jobs.toml:{}:1: job \"j\", item \"r\": unknown target \"nope\" in primary (defined: db)",
            line_of("primary = \"nope\"")
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "jobs.toml:{}:1: job \"j\", item \"self\": primary \"db\" is also the item's target: a target cannot be a standby of itself",
            line_of("primary = \"db\"")
        )),
        "{err}"
    );
}
