//! The database items against every PostgreSQL major version they claim to support besides the
//! machine's own 15 (which every other database test uses): 13, 14, 16, 17 and 18. The catalog
//! and statistics queries differ between versions (pg_stat_statements' column names, the
//! MAINTAIN privilege of 17, the insert-driven autovacuum threshold of 13, ...), so each version
//! gets the same end-to-end run: `runbook run-job` on a real server of that version.
//!
//! The servers come from `scripts/fetch-pg-versions` (pinned, checksummed relocatable builds;
//! `.ci/run` fetches them; see [`versions_dir`]). A version
//! that is not there fails its test with the command to fetch it; it is never skipped.

mod support;

use std::path::PathBuf;

use runbook::face::pgcluster::TempCluster;
use support::{
    Setup, item,
    pg::{Holder, q, wait_for},
};

/// Where scripts/fetch-pg-versions puts them: `$RUNBOOK_PG_VERSIONS_DIR`, else
/// /var/cache/runbook/pg-versions for root, else `${XDG_CACHE_HOME:-~/.cache}/runbook/pg-versions`.
fn versions_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("RUNBOOK_PG_VERSIONS_DIR") {
        return PathBuf::from(d);
    }
    if nix::unistd::Uid::effective().is_root() {
        return PathBuf::from("/var/cache/runbook/pg-versions");
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
    cache.join("runbook/pg-versions")
}

fn cluster(major: u32) -> TempCluster {
    let root = versions_dir();
    let bin = root.join(major.to_string()).join("bin");
    assert!(
        bin.join("postgres").exists(),
        "PostgreSQL {major} server binaries are not in {}: run scripts/fetch-pg-versions (.ci/run does)",
        bin.display()
    );
    let pg = TempCluster::start_with(bin).expect("start the server");
    let version = pg
        .psql("postgres", "SHOW server_version_num", &[])
        .expect("psql");
    assert_eq!(
        version.trim().parse::<u32>().expect("a number") / 10000,
        major,
        "the server started is PostgreSQL {major}"
    );
    pg.create_db("app").expect("create db");
    pg
}

const SCHEMA: &str = "CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a SELECT g, md5(g::text) FROM generate_series(1, 5000) g; \
    CREATE TABLE b (id int PRIMARY KEY, v text); INSERT INTO b SELECT g, md5(g::text) FROM generate_series(1, 100) g; \
    CREATE TABLE \"Weird \"\"Name\"\"\" (id int PRIMARY KEY, \"Odd Col\" text); INSERT INTO \"Weird \"\"Name\"\"\" SELECT g, 'x' FROM generate_series(1, 300) g; \
    CREATE INDEX \"Weird \"\"Ix\"\"\" ON \"Weird \"\"Name\"\"\" (\"Odd Col\"); \
    CREATE TABLE tuned (id int PRIMARY KEY, v text) WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 0); \
    INSERT INTO tuned SELECT g, md5(g::text) FROM generate_series(1, 1000) g; \
    CREATE TABLE m (k int, v text) PARTITION BY RANGE (k); \
    CREATE TABLE m1 PARTITION OF m FOR VALUES FROM (0) TO (1000); \
    CREATE TABLE m2 PARTITION OF m FOR VALUES FROM (1000) TO (2000); \
    INSERT INTO m SELECT g, md5(g::text) FROM generate_series(0, 1999) g; \
    CREATE TABLE dup (v int); INSERT INTO dup VALUES (1), (1);";

/// Asserts that `sql` returns `expected`, waiting up to 10 s for it: before PostgreSQL 15 the
/// statistics reach the views through the collector, up to half a second late.
fn settle(pg: &TempCluster, sql: &str, expected: &str, major: u32) {
    let start = std::time::Instant::now();
    let mut got = q(pg, sql);
    while got != expected && start.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(100));
        got = q(pg, sql);
    }
    assert_eq!(got, expected, "PostgreSQL {major}: {sql}");
}

/// The shipped jobs.toml's `sql` checks (connections in use, wraparound ages, ...) as items of
/// job `monthly` against target `db`, and their names.
fn shipped_sql_checks() -> (String, Vec<String>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("jobs.toml");
    let config: toml::Table =
        toml::from_str(&std::fs::read_to_string(path).expect("jobs.toml")).expect("valid TOML");
    let mut text = String::new();
    let mut names = Vec::new();
    for job in config["jobs"].as_table().expect("[jobs]").values() {
        for it in job["items"].as_array().expect("items") {
            if it["kind"].as_str() != Some("sql") {
                continue;
            }
            let mut it = it.as_table().expect("item").clone();
            it.insert("target".into(), "db".into());
            names.push(it["name"].as_str().expect("name").to_string());
            text.push_str(&format!(
                "[[jobs.monthly.items]]\n{}",
                toml::to_string(&it).expect("TOML")
            ));
        }
    }
    assert!(
        names.len() >= 3,
        "the shipped sql checks (connections, wraparound ages): {names:?}"
    );
    (text, names)
}

fn exercise(major: u32) {
    let pg = cluster(major);
    q(&pg, SCHEMA);
    // A leftover of a failed concurrent build, for reindex to find and drop.
    let _ = pg.psql(
        "app",
        "CREATE UNIQUE INDEX CONCURRENTLY dup_v ON dup (v);",
        &[],
    );
    assert_eq!(
        q(&pg, "SELECT count(*) FROM pg_index WHERE NOT indisvalid"),
        "1"
    );
    q(
        &pg,
        "CREATE EXTENSION pg_stat_statements; SELECT pg_sleep(0.2); SELECT pg_sleep(0.2);",
    );
    let jobs = r#"
[jobs.steady]
[[jobs.steady.items]]
name = "vacuum only needed"
kind = "vacuum"
target = "db"
schemas = ["public"]
only_needed = true

[jobs.locked]
[[jobs.locked.items]]
name = "vacuum with b locked"
kind = "vacuum"
target = "db"
schemas = ["public"]
retries = 0

[jobs.checks]
[[jobs.checks.items]]
name = "slow queries"
kind = "slow_queries"
target = "db"
top = 5
warn_mean = "100ms"
max_running = "1s"

[jobs.monthly]
[[jobs.monthly.items]]
name = "VACUUM ANALYZE"
kind = "vacuum"
target = "db"
schemas = ["public"]
parallel = 2
[[jobs.monthly.items]]
name = "REINDEX"
kind = "reindex"
target = "db"
schemas = ["public"]
parallel = 2
[[jobs.monthly.items]]
name = "indexes"
kind = "create_indexes"
target = "db"
file = "indexes.sql"
"#;
    let (shipped_sql, shipped_names) = shipped_sql_checks();
    let s = Setup::with_db(&pg.url("app"), "", &format!("{jobs}{shipped_sql}"));
    s.write(
        "indexes.sql",
        "CREATE INDEX CONCURRENTLY a_v ON a (v);\nCREATE INDEX CONCURRENTLY \"Weird \"\"Ix\"\"\" ON \"Weird \"\"Name\"\"\" (\"Odd Col\");\n",
    );

    // only_needed: the statistics functions and reloptions of this version. Everything analyzed,
    // then 50 of tuned's 1000 rows deleted: past its own threshold (0 + 1%), not the server's.
    wait_for(
        &pg,
        "SELECT sum(n_mod_since_analyze) = 8402 FROM pg_stat_user_tables WHERE relname <> 'm'",
    );
    q(&pg, "VACUUM ANALYZE; DELETE FROM tuned WHERE id <= 50;");
    wait_for(
        &pg,
        "SELECT n_dead_tup = 50 FROM pg_stat_user_tables WHERE relname = 'tuned'",
    );
    let (code, report, all) = s.run_job("steady", &[]);
    assert_eq!(code, 0, "PostgreSQL {major}: {all}");
    let v = item(&report, "vacuum only needed");
    assert_eq!(v["status"], "pass", "PostgreSQL {major}: {v:#}");
    assert_eq!(v["data"]["tables_done"], 1, "PostgreSQL {major}: {v:#}");
    assert!(
        v["details"].to_string().contains("chose public.tuned: 50 dead tuples > 10, with the table's own autovacuum_vacuum_scale_factor=0.01, autovacuum_vacuum_threshold=0"),
        "PostgreSQL {major}: {v:#}"
    );

    // A table held by another session: reported with the session that holds it, the rest done.
    {
        let _holder = Holder::lock(&pg, "b");
        let (code, report, all) = s.run_job("locked", &[]);
        assert_eq!(code, 1, "PostgreSQL {major}: {all}");
        let v = item(&report, "vacuum with b locked");
        assert_eq!(v["status"], "fail", "PostgreSQL {major}: {v:#}");
        assert_eq!(v["data"]["tables_failed"], 1, "PostgreSQL {major}: {v:#}");
        let tables = v["data"]["tables"].as_array().expect("tables");
        let b = tables.iter().find(|t| t["table"] == "b").expect("b listed");
        let note = b["note"].as_str().unwrap_or_default();
        assert!(
            note.contains("(psql, user postgres, active, transaction open "),
            "PostgreSQL {major}: {b:#}"
        );
        // Largest first by real size.
        assert_eq!(tables[0]["table"], "a", "PostgreSQL {major}: {v:#}");
        support::pg::end_lock_holder(&pg, "b");
    }

    let oids_before = q(
        &pg,
        "SELECT string_agg(indexrelid::text, ',' ORDER BY indexrelid) FROM pg_index WHERE indrelid = 'a'::regclass",
    );
    let sleeper = Holder::start(&pg, "SELECT pg_sleep(120);\n");
    wait_for(
        &pg,
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(120)%' AND now() - query_start > interval '1.5s')",
    );
    let (code, report, all) = s.run_job("checks", &[]);
    assert_eq!(code, 0, "PostgreSQL {major}: {all}");
    let sq = item(&report, "slow queries");
    assert_eq!(sq["status"], "warn", "PostgreSQL {major}: {sq:#}");
    let details = sq["details"].to_string();
    assert!(
        details.contains("SELECT pg_sleep($1)"),
        "PostgreSQL {major}: {sq:#}"
    );
    assert!(
        details.contains("pg_sleep($1)"),
        "PostgreSQL {major}: the long-running statement is listed: {sq:#}"
    );

    // It would hold up every concurrent index build below (they wait for older transactions).
    assert_eq!(
        q(
            &pg,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(120)%'"
        ),
        "1"
    );
    drop(sleeper);
    wait_for(
        &pg,
        "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(120)%')",
    );

    // The database-wide VACUUM ANALYZE above gave m statistics of the whole hierarchy; remove
    // them, so that what is there afterwards comes from our vacuum.
    q(
        &pg,
        "DELETE FROM pg_statistic WHERE starelid = 'm'::regclass",
    );
    assert_eq!(
        q(&pg, "SELECT count(*) FROM pg_stats WHERE tablename = 'm'"),
        "0"
    );
    let (code, report, all) = s.run_job("monthly", &[]);
    assert_eq!(code, 0, "PostgreSQL {major}: {all}");

    let v = item(&report, "VACUUM ANALYZE");
    assert_eq!(v["status"], "pass", "PostgreSQL {major}: {v:#}");
    assert_eq!(v["data"]["tables_failed"], 0, "PostgreSQL {major}: {v:#}");
    // Every table vacuumed, the partitioned one analyzed as a whole.
    settle(
        &pg,
        "SELECT string_agg(relname || ':' || vacuum_count, ',' ORDER BY relname) FROM pg_stat_user_tables WHERE relname <> 'm'",
        "Weird \"Name\":3,a:3,b:2,dup:3,m1:3,m2:3,tuned:4",
        major,
    );
    assert_eq!(
        q(
            &pg,
            "SELECT count(*) FROM pg_stats WHERE tablename = 'm' AND attname = 'k' AND inherited"
        ),
        "1",
        "PostgreSQL {major}"
    );

    let r = item(&report, "REINDEX");
    assert_eq!(r["status"], "warn", "PostgreSQL {major}: {r:#}");
    assert_eq!(
        r["data"]["leftovers_dropped"][0], "public.dup_v",
        "PostgreSQL {major}: {r:#}"
    );
    assert_eq!(
        r["data"]["indexes_done"], r["data"]["indexes_total"],
        "PostgreSQL {major}: {r:#}"
    );
    let oids_after = q(
        &pg,
        "SELECT string_agg(indexrelid::text, ',' ORDER BY indexrelid) FROM pg_index WHERE indrelid = 'a'::regclass",
    );
    assert_ne!(oids_before, oids_after, "PostgreSQL {major}: rebuilt");

    let ix = item(&report, "indexes");
    assert_eq!(ix["status"], "pass", "PostgreSQL {major}: {ix:#}");
    let results: Vec<String> = ix["data"]["statements"]
        .as_array()
        .expect("statements")
        .iter()
        .map(|s| {
            format!(
                "{}={}",
                s["index"].as_str().unwrap_or(""),
                s["result"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        results,
        ["a_v=built", "Weird \"Ix\"=present"],
        "PostgreSQL {major}: {ix:#}"
    );
    assert_eq!(
        q(&pg, "SELECT count(*) FROM pg_index WHERE NOT indisvalid"),
        "0",
        "PostgreSQL {major}"
    );

    for name in &shipped_names {
        let it = item(&report, name);
        assert_eq!(it["status"], "pass", "PostgreSQL {major}: {it:#}");
    }
    // Only client sessions count against max_connections (100): runbook's own, one per check
    // running at that moment (2-3 seen). The server's own processes
    // listed in pg_stat_activity (checkpointer, background writer, WAL writer, autovacuum and
    // logical replication launchers) are five more, so counting them gives 6% or more.
    let used = item(&report, "Database connections in use");
    let pct = used["data"]["value"].as_f64().expect("a number");
    assert!((1.0..6.0).contains(&pct), "PostgreSQL {major}: {used:#}");
}

#[test]
fn postgresql_13() {
    exercise(13);
}

#[test]
fn postgresql_14() {
    exercise(14);
}

#[test]
fn postgresql_16() {
    exercise(16);
}

#[test]
fn postgresql_17() {
    exercise(17);
}

#[test]
fn postgresql_18() {
    exercise(18);
}
