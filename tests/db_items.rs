//! The database item kinds end to end, as users run them: `runbook run-job --format json` on a
//! jobs.toml written into a temporary folder, against a real throwaway PostgreSQL.

mod support;

use std::time::{Duration, Instant};

use support::{
    Setup, item,
    pg::{Holder, cluster_with_app_db, q, require_password, wait_for},
    standby::Standby,
};

const TABLES: &str = "CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a SELECT g, md5(g::text) FROM generate_series(1, 5000) g; \
    CREATE TABLE b (id int PRIMARY KEY, v text); INSERT INTO b SELECT g, md5(g::text) FROM generate_series(1, 100) g; \
    CREATE TABLE \"Weird \"\"Name\"\"\" (id int PRIMARY KEY, \"Odd Col\" text); INSERT INTO \"Weird \"\"Name\"\"\" SELECT g, 'x' FROM generate_series(1, 300) g; \
    CREATE INDEX \"Weird \"\"Ix\"\"\" ON \"Weird \"\"Name\"\"\" (\"Odd Col\"); \
    DELETE FROM a WHERE id % 2 = 0;";

#[test]
fn unreachable_target_fails_its_item_and_the_others_still_run() {
    let pg = cluster_with_app_db();
    // The reachable target logs in as `ops`, whom the server asks for the password: "up"
    // passing proves runbook sends it; the output proves it never prints it.
    require_password(&pg, "ops", "sekrit-pw-4711");
    let jobs = r#"
[targets.wrongpw]
url = "postgres://ops@127.0.0.1:PORT/app"
password = "wrong-pw-0815"
sslmode = "disable"

[targets.down]
url = "postgres://ops@127.0.0.1:1/nowhere"
password = "sekrit-pw-4711"
sslmode = "disable"
connect_timeout = "2s"

[jobs.check]
[[jobs.check.items]]
name = "down"
kind = "sql"
target = "down"
query = "SELECT 1"
[[jobs.check.items]]
name = "down vacuum"
kind = "vacuum"
target = "down"
[[jobs.check.items]]
name = "up"
kind = "sql"
target = "db"
query = "SELECT current_user = 'ops'"
expect = true
[[jobs.check.items]]
name = "wrong password"
kind = "sql"
target = "wrongpw"
query = "SELECT 1"
"#
    .replace("PORT", &pg.port.to_string());
    let s = Setup::with_db(
        &format!("postgres://ops@127.0.0.1:{}/app", pg.port),
        "password = \"sekrit-pw-4711\"",
        &jobs,
    );
    let (code, report, all) = s.run_job("check", &[]);
    assert_eq!(code, 1, "{all}");
    for name in ["down", "down vacuum"] {
        let down = item(&report, name);
        assert_eq!(down["status"], "fail");
        let summary = down["summary"].as_str().unwrap_or_default();
        assert!(summary.contains("target down"), "{summary}");
        assert!(summary.contains("127.0.0.1:1"), "{summary}");
    }
    assert_eq!(item(&report, "up")["status"], "pass", "{all}");
    let wrong = item(&report, "wrong password");
    assert_eq!(wrong["status"], "fail", "{wrong:#}");
    assert!(
        wrong["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("password authentication failed for user \"ops\""),
        "{wrong:#}"
    );
    for pw in ["sekrit-pw-4711", "wrong-pw-0815"] {
        assert!(!all.contains(pw), "password leaked: {all}");
    }
}

#[test]
fn vacuum_reports_a_locked_table_and_finishes_the_rest() {
    let pg = cluster_with_app_db();
    q(&pg, TABLES);
    let jobs = r#"
[jobs.m]
[[jobs.m.items]]
name = "vacuum"
kind = "vacuum"
target = "db"
schemas = ["public"]
retries = 1
[[jobs.m.items]]
name = "vacuum skip locked"
kind = "vacuum"
target = "db"
schemas = ["public"]
skip_locked = true
"#;
    let s = Setup::with_db(&pg.url("app"), "", jobs);
    let _holder = Holder::lock(&pg, "b");

    let (code, report, all) = s.run_job("m", &[]);
    assert_eq!(code, 1, "{all}");
    let v = item(&report, "vacuum");
    assert_eq!(v["status"], "fail", "{v:#}");
    assert_eq!(v["data"]["tables_failed"], 1, "{v:#}");
    assert_eq!(v["data"]["tables_done"], 2, "{v:#}");
    let tables = v["data"]["tables"].as_array().expect("tables");
    let b = tables.iter().find(|t| t["table"] == "b").expect("b listed");
    assert_eq!(b["status"], "failed");
    assert!(v["details"].to_string().contains("public.b"), "{v:#}");
    // The failure names the session holding the lock.
    let holder = q(
        &pg,
        "SELECT pid FROM pg_locks WHERE relation = 'b'::regclass AND mode = 'AccessExclusiveLock' AND granted",
    );
    let note = b["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("lock not available after 2 attempt(s)")
            && note.contains(&format!(
                "waited for pid {holder} (psql, user postgres, active, transaction open "
            )),
        "{b:#}"
    );
    // Largest first by real size: `a` (5000 rows) before the others.
    assert_eq!(tables[0]["table"], "a");
    // Dead tuples were counted before and cleaned.
    let a = &tables[0];
    assert!(
        a["dead_tuples_before"].as_i64().unwrap_or(0) >= 2500,
        "{a:#}"
    );
    assert_eq!(a["dead_tuples_after"], 0, "{a:#}");

    let sl = item(&report, "vacuum skip locked");
    assert_eq!(sl["status"], "warn", "{sl:#}");
    assert_eq!(sl["data"]["tables_skipped"], 1, "{sl:#}");

    assert_eq!(
        q(
            &pg,
            "SELECT count(*) FROM pg_stat_user_tables WHERE last_vacuum IS NOT NULL AND relname IN ('a', 'Weird \"Name\"')"
        ),
        "2"
    );
}

#[test]
fn vacuum_blocked_by_an_autovacuum_worker_says_which_autovacuum() {
    let pg = cluster_with_app_db();
    // A table that autovacuum picks up at once (thresholds 0, naptime 1 s) and vacuums slowly
    // (cost limit 1, 100 ms sleeps): it holds the table for many seconds.
    q(
        &pg,
        "CREATE TABLE crawl (id int PRIMARY KEY, v text) WITH (autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0, \
         autovacuum_analyze_threshold = 1000000000, autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1); \
         INSERT INTO crawl SELECT g, md5(g::text) FROM generate_series(1, 20000) g; DELETE FROM crawl WHERE id % 2 = 0;",
    );
    pg.psql(
        "postgres",
        "ALTER SYSTEM SET autovacuum_naptime = 1; SELECT pg_reload_conf();",
        &[],
    )
    .expect("psql");
    wait_for(
        &pg,
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' AND query LIKE 'autovacuum: VACUUM public.crawl%')",
    );
    // lock_timeout 200 ms, below deadlock_timeout (1 s), after which an ordinary autovacuum
    // would give way by itself.
    let jobs = r#"
[jobs.m]
[[jobs.m.items]]
name = "vacuum"
kind = "vacuum"
target = "db"
tables = ["crawl"]
retries = 0
"#;
    let s = Setup::with_db(&pg.url("app"), "", jobs);
    let (code, report, all) = s.run_job("m", &[]);
    assert_eq!(code, 1, "{all}");
    let v = item(&report, "vacuum");
    let crawl = &v["data"]["tables"][0];
    assert_eq!(crawl["status"], "failed", "{v:#}");
    let note = crawl["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("waited for pid ")
            && note.contains("(autovacuum: VACUUM public.crawl, running "),
        "{v:#}"
    );
}

/// Restarts `pg` with three connection slots and takes two with idle sessions (held until the
/// values are dropped): one slot is left.
fn leave_one_connection_slot(pg: &runbook::face::pgcluster::TempCluster) -> [Holder; 2] {
    pg.restart_with("max_connections = 3\nsuperuser_reserved_connections = 0")
        .expect("restart");
    let idle = [
        Holder::start(pg, "SELECT 1;\n"),
        Holder::start(pg, "SELECT 2;\n"),
    ];
    wait_for(
        pg,
        "SELECT count(*) = 2 FROM pg_stat_activity WHERE application_name = 'psql' AND pid <> pg_backend_pid()",
    );
    idle
}

#[test]
fn vacuum_and_reindex_with_a_worker_that_cannot_connect_do_everything_on_the_others_and_say_so() {
    let pg = cluster_with_app_db();
    q(&pg, TABLES);
    // Three connection slots, two of them taken: runbook's first connection gets the last one,
    // its second worker's is refused ("too many clients").
    let _idle = leave_one_connection_slot(&pg);
    let jobs = r#"
[jobs.m]
[[jobs.m.items]]
name = "vacuum"
kind = "vacuum"
target = "db"
schemas = ["public"]
parallel = 2
[[jobs.m.items]]
name = "reindex"
kind = "reindex"
target = "db"
schemas = ["public"]
parallel = 2
"#;
    let s = Setup::with_db(&pg.url("app"), "", jobs);
    let (code, report, all) = s.run_job("m", &[]);
    assert_eq!(code, 0, "{all}");
    let said = "1 of 2 worker connection(s) failed, so fewer tables ran at once";

    let v = item(&report, "vacuum");
    assert_eq!(v["status"], "pass", "{v:#}");
    assert_eq!(v["data"]["tables_done"], 3, "{v:#}");
    assert_eq!(v["data"]["workers_failed"], 1, "{v:#}");
    let details = v["details"].to_string();
    assert!(
        details.contains(said) && details.contains("too many clients"),
        "{v:#}"
    );
    assert_eq!(
        q(
            &pg,
            "SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = 'public' AND vacuum_count = 1"
        ),
        "3"
    );

    // The reindex plans on its first connection and rebuilds on it; the checks afterwards
    // run on it too, so nothing else needs a slot.
    let r = item(&report, "reindex");
    assert_eq!(r["status"], "pass", "{r:#}");
    assert_eq!(r["data"]["indexes_done"], 4, "{r:#}");
    assert_eq!(r["data"]["indexes_total"], 4, "{r:#}");
    let details = r["details"].to_string();
    assert!(
        details.contains(said) && details.contains("too many clients"),
        "{r:#}"
    );
}

#[test]
fn a_table_still_locked_when_the_window_ends_is_reported_not_done_and_the_rest_finish() {
    let pg = cluster_with_app_db();
    q(&pg, TABLES);
    // One worker; `a` (the largest, so first) is locked: its first try times out after 200 ms
    // and it is queued again for 1 s later, past the 600 ms window. The others run meanwhile.
    let jobs = r#"
[jobs.m]
[[jobs.m.items]]
name = "vacuum"
kind = "vacuum"
target = "db"
schemas = ["public"]
parallel = 1
window = "600ms"
"#;
    let s = Setup::with_db(&pg.url("app"), "", jobs);
    let _holder = Holder::lock(&pg, "a");
    let started = Instant::now();
    let (code, report, all) = s.run_job("m", &[]);
    // The run does not wait for the lock past the window (nor for the retries' back-off).
    assert!(started.elapsed() < Duration::from_secs(60), "{all}");
    assert_eq!(code, 0, "a warn is exit 0: {all}");
    let v = item(&report, "vacuum");
    assert_eq!(v["status"], "warn", "{v:#}");
    assert_eq!(v["data"]["tables_done"], 2, "{v:#}");
    assert_eq!(v["data"]["tables_skipped"], 1, "{v:#}");
    let tables = v["data"]["tables"].as_array().expect("tables");
    let a = tables.iter().find(|t| t["table"] == "a").expect("a listed");
    assert_eq!(a["status"], "not_done", "{a:#}");
    assert_eq!(a["note"], "not done: the window ended", "{a:#}");
    assert!(
        v["details"]
            .to_string()
            .contains("public.a not done: the window ended"),
        "{v:#}"
    );
    assert_eq!(
        q(
            &pg,
            "SELECT string_agg(relname || ':' || (last_vacuum IS NOT NULL), ',' ORDER BY relname) FROM pg_stat_user_tables"
        ),
        "Weird \"Name\":true,a:false,b:true"
    );
}

#[test]
fn a_table_dropped_while_waiting_for_its_lock_is_skipped_and_the_rest_finish() {
    let pg = cluster_with_app_db();
    q(&pg, TABLES);
    // Another session locks `a`, and drops it a second later. runbook's first try of `a` times
    // out (200 ms), its retries come 1 s and 3 s later: by then `a` is gone.
    let _dropper = Holder::lock_then(&pg, "a", "SELECT pg_sleep(1); DROP TABLE a; COMMIT;");
    let jobs = r#"
[jobs.m]
[[jobs.m.items]]
name = "vacuum"
kind = "vacuum"
target = "db"
schemas = ["public"]
"#;
    let s = Setup::with_db(&pg.url("app"), "", jobs);
    let (code, report, all) = s.run_job("m", &[]);
    assert_eq!(code, 0, "a warn is exit 0: {all}");
    let v = item(&report, "vacuum");
    assert_eq!(v["status"], "warn", "{v:#}");
    assert_eq!(v["data"]["tables_done"], 2, "{v:#}");
    assert_eq!(v["data"]["tables_skipped"], 1, "{v:#}");
    assert_eq!(v["data"]["tables_failed"], 0, "{v:#}");
    let tables = v["data"]["tables"].as_array().expect("tables");
    let a = tables.iter().find(|t| t["table"] == "a").expect("a listed");
    assert_eq!(a["status"], "skipped", "{a:#}");
    // Dropped before the retry (the statement fails: 42P01) or while it waited for the lock
    // (the server skips it with a warning): either way skipped, and said so.
    let note = a["note"].as_str().unwrap_or_default();
    assert!(
        note == "table was dropped meanwhile" || note.contains("no longer exists"),
        "{a:#}"
    );
    assert_eq!(q(&pg, "SELECT to_regclass('a') IS NULL"), "t");
    assert_eq!(
        q(
            &pg,
            "SELECT count(*) FROM pg_stat_user_tables WHERE last_vacuum IS NOT NULL AND relname IN ('b', 'Weird \"Name\"')"
        ),
        "2"
    );
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let pg = cluster_with_app_db();
    q(&pg, TABLES);
    q(
        &pg,
        "CREATE UNIQUE INDEX bad_ix ON b (id); DROP INDEX bad_ix; CREATE TABLE dup (v int); INSERT INTO dup VALUES (1), (1);",
    );
    // An invalid leftover, as a failed concurrent build leaves it.
    let _ = pg.psql(
        "app",
        "CREATE UNIQUE INDEX CONCURRENTLY dup_v ON dup (v);",
        &[],
    );
    let jobs = r#"
[jobs.m]
[[jobs.m.items]]
name = "vacuum"
kind = "vacuum"
target = "db"
schemas = ["public"]
[[jobs.m.items]]
name = "reindex"
kind = "reindex"
target = "db"
[[jobs.m.items]]
name = "indexes"
kind = "create_indexes"
target = "db"
file = "indexes.sql"
"#;
    let s = Setup::with_db(&pg.url("app"), "", jobs);
    s.write("indexes.sql", "CREATE INDEX CONCURRENTLY a_v ON a (v);\n");
    let index_snapshot = "SELECT string_agg(indexrelid::regclass::text || ':' || indexrelid::int || ':' || indisvalid, ',' ORDER BY indexrelid) FROM pg_index WHERE indrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace)";
    let before = q(&pg, index_snapshot);
    assert!(
        before.contains("dup_v") && before.contains(":false"),
        "{before}"
    );

    let (code, report, all) = s.run_job("m", &["--dry-run"]);
    assert_eq!(code, 0, "{all}");
    for name in ["vacuum", "reindex", "indexes"] {
        assert_eq!(item(&report, name)["status"], "skipped", "{all}");
    }
    let plan = item(&report, "vacuum")["details"].to_string();
    assert!(plan.contains("VACUUM (ANALYZE) public.a"), "{plan}");
    assert!(plan.contains(r#"public.\"Weird \"\"Name\"\"\""#), "{plan}");
    let plan = item(&report, "reindex")["details"].to_string();
    assert!(
        plan.contains("DROP INDEX CONCURRENTLY public.dup_v"),
        "{plan}"
    );
    assert!(
        plan.contains("REINDEX INDEX CONCURRENTLY public.a_pkey"),
        "{plan}"
    );
    let plan = item(&report, "indexes")["details"].to_string();
    assert!(plan.contains("would run"), "{plan}");

    assert_eq!(
        q(
            &pg,
            "SELECT count(*) FROM pg_stat_user_tables WHERE last_vacuum IS NOT NULL OR last_analyze IS NOT NULL"
        ),
        "0"
    );
    assert_eq!(q(&pg, index_snapshot), before);
}

#[test]
fn a_build_stopped_by_lock_timeout_names_the_transaction_it_waited_for() {
    let pg = cluster_with_app_db();
    q(&pg, TABLES);
    // An open REPEATABLE READ transaction that read another table: it holds a snapshot, which
    // every concurrent build in the database must wait out (here: past the 200 ms lock_timeout).
    let _old = Holder::start(
        &pg,
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM b;\n",
    );
    wait_for(
        &pg,
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = 'psql' AND state = 'idle in transaction' AND backend_xmin IS NOT NULL)",
    );
    let pid = q(
        &pg,
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'psql' AND state = 'idle in transaction'",
    );
    let jobs = r#"
[jobs.m]
[[jobs.m.items]]
name = "reindex"
kind = "reindex"
target = "db"
tables = ["a"]
[[jobs.m.items]]
name = "indexes"
kind = "create_indexes"
target = "db"
file = "indexes.sql"
"#;
    let s = Setup::with_db(&pg.url("app"), "", jobs);
    s.write("indexes.sql", "CREATE INDEX CONCURRENTLY a_v ON a (v);\n");
    let (code, report, all) = s.run_job("m", &[]);
    assert_eq!(code, 1, "{all}");
    let waited = format!(
        "waited for pid {pid} (psql, user postgres, idle in transaction, transaction open "
    );
    for name in ["reindex", "indexes"] {
        let it = item(&report, name);
        assert_eq!(it["status"], "fail", "{it:#}");
        let text = it.to_string();
        assert!(text.contains("lock timeout"), "{name}: {it:#}");
        assert!(
            text.contains(&waited),
            "{name} names the transaction: {it:#}"
        );
        assert!(
            text.contains("every older transaction in the database"),
            "{name} says why: {it:#}"
        );
    }
}

#[test]
fn reindex_drops_leftovers_rebuilds_every_index_and_quotes_names() {
    let pg = cluster_with_app_db();
    q(&pg, TABLES);
    q(
        &pg,
        "CREATE TABLE dup (v int); INSERT INTO dup VALUES (1), (1);",
    );
    let _ = pg.psql(
        "app",
        "CREATE UNIQUE INDEX CONCURRENTLY dup_v ON dup (v);",
        &[],
    );
    assert_eq!(
        q(&pg, "SELECT count(*) FROM pg_index WHERE NOT indisvalid"),
        "1"
    );
    let jobs = r#"
[jobs.m]
[[jobs.m.items]]
name = "reindex"
kind = "reindex"
target = "db"
schemas = ["public"]
"#;
    let s = Setup::with_db(&pg.url("app"), "", jobs);
    let oids_before = q(
        &pg,
        "SELECT string_agg(indexrelid::text, ',') FROM pg_index WHERE indrelid = 'a'::regclass OR indrelid = '\"Weird \"\"Name\"\"\"'::regclass",
    );
    let (code, report, all) = s.run_job("m", &[]);
    assert_eq!(code, 0, "{all}");
    let r = item(&report, "reindex");
    assert_eq!(r["status"], "warn", "{r:#}");
    assert_eq!(r["data"]["leftovers_dropped"][0], "public.dup_v", "{r:#}");
    assert_eq!(
        r["data"]["indexes_done"], r["data"]["indexes_total"],
        "{r:#}"
    );
    assert_eq!(
        q(&pg, "SELECT count(*) FROM pg_index WHERE NOT indisvalid"),
        "0"
    );
    // Rebuilt concurrently: the indexes have new relfilenodes/oids, names unchanged.
    let oids_after = q(
        &pg,
        "SELECT string_agg(indexrelid::text, ',') FROM pg_index WHERE indrelid = 'a'::regclass OR indrelid = '\"Weird \"\"Name\"\"\"'::regclass",
    );
    assert_ne!(oids_before, oids_after);
    assert_eq!(
        q(
            &pg,
            "SELECT to_regclass('public.\"Weird \"\"Ix\"\"\"') IS NOT NULL"
        ),
        "t"
    );
}

#[test]
fn create_indexes_builds_keeps_present_rebuilds_invalid_and_leaves_nothing_invalid() {
    let pg = cluster_with_app_db();
    q(&pg, TABLES);
    q(
        &pg,
        "CREATE SCHEMA trading; CREATE TABLE trading.orders (id int, user_id int); CREATE TABLE dup (v int); INSERT INTO dup VALUES (1), (1), (2);",
    );
    // An invalid index of the same name as one in the file (the IF NOT EXISTS trap).
    let _ = pg.psql(
        "app",
        "CREATE UNIQUE INDEX CONCURRENTLY dup_v ON dup (v);",
        &[],
    );
    q(
        &pg,
        "DELETE FROM dup WHERE ctid = (SELECT min(ctid) FROM dup WHERE v = 1); CREATE INDEX a_present ON a (v);",
    );
    q(
        &pg,
        "CREATE TABLE dup2 (v int); INSERT INTO dup2 VALUES (7), (7);",
    );
    let jobs = r#"
[jobs.m]
[[jobs.m.items]]
name = "indexes"
kind = "create_indexes"
target = "db"
file = "sql/indexes.sql"
"#;
    let s = Setup::with_db(&pg.url("app"), "", jobs);
    std::fs::create_dir(s.dir.path().join("sql")).expect("mkdir");
    s.write(
        "sql/indexes.sql",
        "-- present\nCREATE INDEX CONCURRENTLY a_present ON a (v);\n\
         CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS dup_v ON dup (v);\n\
         CREATE INDEX \"Weird \"\"New\"\"\" ON \"Weird \"\"Name\"\"\" (\"Odd Col\", id);\n\
         CREATE INDEX CONCURRENTLY orders_user ON trading.orders (user_id);\n\
         CREATE UNIQUE INDEX CONCURRENTLY dup2_v ON dup2 (v);\n",
    );
    let (code, report, all) = s.run_job("m", &[]);
    assert_eq!(code, 1, "{all}");
    let it = item(&report, "indexes");
    assert_eq!(it["status"], "fail", "{it:#}");
    let results: Vec<(String, String)> = it["data"]["statements"]
        .as_array()
        .expect("statements")
        .iter()
        .map(|s| {
            (
                s["index"].as_str().unwrap_or_default().to_string(),
                s["result"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        results,
        vec![
            ("a_present".into(), "present".into()),
            ("dup_v".into(), "rebuilt".into()),
            ("Weird \"New\"".into(), "built".into()),
            ("orders_user".into(), "built".into()),
            ("dup2_v".into(), "failed".into()),
        ],
        "{it:#}"
    );
    assert!(
        it["details"].to_string().contains("leftover was dropped"),
        "{it:#}"
    );
    assert_eq!(
        q(&pg, "SELECT count(*) FROM pg_index WHERE NOT indisvalid"),
        "0"
    );
    assert_eq!(q(&pg, "SELECT to_regclass('dup2_v') IS NULL"), "t");
    assert_eq!(
        q(
            &pg,
            "SELECT to_regclass('trading.orders_user') IS NOT NULL AND to_regclass('public.\"Weird \"\"New\"\"\"') IS NOT NULL"
        ),
        "t"
    );
}

#[test]
fn create_indexes_refuses_a_file_with_other_statements_before_running_anything() {
    let pg = cluster_with_app_db();
    q(&pg, TABLES);
    let jobs = r#"
[jobs.m]
[[jobs.m.items]]
name = "indexes"
kind = "create_indexes"
target = "db"
file = "indexes.sql"
"#;
    let s = Setup::with_db(&pg.url("app"), "", jobs);
    s.write(
        "indexes.sql",
        "CREATE INDEX CONCURRENTLY a_v ON a (v);\nDROP TABLE b;\n",
    );
    let (code, _report, all) = s.run_job("m", &[]);
    assert_eq!(code, 2, "{all}");
    assert!(
        all.contains("line 2: not a CREATE INDEX statement"),
        "{all}"
    );
    assert_eq!(
        q(
            &pg,
            "SELECT to_regclass('a_v') IS NULL AND to_regclass('b') IS NOT NULL"
        ),
        "t"
    );
}

#[test]
fn sql_asserts_on_the_first_row_with_bound_parameters() {
    let pg = cluster_with_app_db();
    q(&pg, TABLES);
    let jobs = r#"
[jobs.c]
[[jobs.c.items]]
name = "rows"
kind = "sql"
target = "db"
query = "SELECT id FROM a WHERE id < $1 AND v <> $2"
params = [10, "'; DROP TABLE a; --"]
expect_rows = 5
[[jobs.c.items]]
name = "max"
kind = "sql"
target = "db"
query = "SELECT count(*) FROM a"
max = 100
[[jobs.c.items]]
name = "warn"
kind = "sql"
target = "db"
query = "SELECT round(count(*) * 1.5, 2) FROM a"
warn_max = 3000
max = 5000
[[jobs.c.items]]
name = "expect"
kind = "sql"
target = "db"
query = "SELECT count(*) > 0 FROM b WHERE id = $1"
params = [3]
expect = true
[[jobs.c.items]]
name = "read only"
kind = "sql"
target = "db"
query = "DELETE FROM b RETURNING id"
"#;
    let s = Setup::with_db(&pg.url("app"), "", jobs);
    let (code, report, all) = s.run_job("c", &[]);
    assert_eq!(code, 1, "{all}");
    assert_eq!(item(&report, "rows")["status"], "pass", "{all}");
    let max = item(&report, "max");
    assert_eq!(max["status"], "fail");
    assert!(
        max["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("2500 is above max 100"),
        "{max:#}"
    );
    let warn = item(&report, "warn");
    assert_eq!(warn["status"], "warn", "{warn:#}");
    assert_eq!(warn["data"]["value"], 3750.0);
    assert_eq!(item(&report, "expect")["status"], "pass", "{all}");
    let ro = item(&report, "read only");
    assert_eq!(ro["status"], "fail");
    assert!(
        ro["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("read-only"),
        "{ro:#}"
    );
    assert_eq!(q(&pg, "SELECT count(*) FROM b"), "100");
}

#[test]
fn slow_queries_lists_slow_and_long_running_statements_and_explains_a_missing_extension() {
    let pg = cluster_with_app_db();
    pg.create_db("noext").expect("create db");
    q(
        &pg,
        "CREATE EXTENSION pg_stat_statements; SELECT pg_sleep(0.3); SELECT pg_sleep(0.3);",
    );
    let jobs = format!(
        r#"
[targets.noext]
url = "{}"
sslmode = "disable"

[jobs.quiet]
[[jobs.quiet.items]]
name = "long running only"
kind = "slow_queries"
target = "noext"
top = 0
max_running = "1s"

[jobs.w]
[[jobs.w.items]]
name = "slow"
kind = "slow_queries"
target = "db"
warn_mean = "100ms"
max_running = "1h"
[[jobs.w.items]]
name = "missing"
kind = "slow_queries"
target = "noext"
max_running = "1h"
[[jobs.w.items]]
name = "running"
kind = "slow_queries"
target = "db"
top = 0
max_running = "1s"
"#,
        pg.url("noext")
    );
    let s = Setup::with_db(&pg.url("app"), "", "");
    let text = std::fs::read_to_string(s.dir.path().join("jobs.toml")).expect("read") + &jobs;
    s.write("jobs.toml", &text);

    let (code, report, all) = s.run_job("quiet", &[]);
    assert_eq!(code, 0, "{all}");
    assert_eq!(
        item(&report, "long running only")["status"],
        "pass",
        "{all}"
    );

    let _sleeper = Holder::start(&pg, "SELECT pg_sleep(120);\n");
    wait_for(
        &pg,
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(120)%' AND now() - query_start > interval '1.5s')",
    );
    let (code, report, all) = s.run_job("w", &[]);
    assert_eq!(code, 0, "{all}");
    let slow = item(&report, "slow");
    assert_eq!(slow["status"], "warn", "{slow:#}");
    assert!(slow["details"].to_string().contains("pg_sleep"), "{slow:#}");
    let missing = item(&report, "missing");
    assert_eq!(missing["status"], "warn", "{missing:#}");
    assert!(
        missing["details"]
            .to_string()
            .contains("shared_preload_libraries"),
        "{missing:#}"
    );
    assert!(
        missing["details"]
            .to_string()
            .contains("CREATE EXTENSION pg_stat_statements"),
        "{missing:#}"
    );
    let running = item(&report, "running");
    assert_eq!(running["status"], "warn", "{running:#}");
    assert!(
        running["details"].to_string().contains("pg_sleep($1)"),
        "{running:#}"
    );
}

#[test]
fn a_real_standby_is_refused_by_state_changing_items() {
    let pg = cluster_with_app_db();
    q(&pg, TABLES);
    let standby = Standby::start(&pg);
    let url = format!("postgres://postgres@127.0.0.1:{}/app", standby.port);
    let jobs = r#"
[jobs.m]
[[jobs.m.items]]
name = "vacuum"
kind = "vacuum"
target = "db"
[[jobs.m.items]]
name = "reindex"
kind = "reindex"
target = "db"
[[jobs.m.items]]
name = "indexes"
kind = "create_indexes"
target = "db"
file = "indexes.sql"
[[jobs.m.items]]
name = "read-only check"
kind = "sql"
target = "db"
query = "SELECT pg_is_in_recovery()"
expect = true
"#;
    let s = Setup::with_db(&url, "", jobs);
    s.write("indexes.sql", "CREATE INDEX CONCURRENTLY a_v ON a (v);\n");
    let (code, report, all) = s.run_job("m", &[]);
    assert_eq!(code, 1, "{all}");
    for name in ["vacuum", "reindex", "indexes"] {
        let it = item(&report, name);
        assert_eq!(it["status"], "fail", "{it:#}");
        assert!(
            it["summary"]
                .as_str()
                .unwrap_or_default()
                .contains("is a standby"),
            "{it:#}"
        );
    }
    assert_eq!(item(&report, "read-only check")["status"], "pass", "{all}");
}

#[test]
fn only_needed_honours_a_tables_own_autovacuum_settings_as_autovacuum_does() {
    let pg = cluster_with_app_db();
    // Two tables with the same churn (50 of 1000 rows deleted): below the server's vacuum
    // threshold (50 + 20%), past `tuned`'s own (0 + 1%).
    q(
        &pg,
        "CREATE TABLE tuned (id int PRIMARY KEY, v text) WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 0); \
         CREATE TABLE plain (id int PRIMARY KEY, v text); \
         INSERT INTO tuned SELECT g, md5(g::text) FROM generate_series(1, 1000) g; \
         INSERT INTO plain SELECT g, md5(g::text) FROM generate_series(1, 1000) g;",
    );
    wait_for(
        &pg,
        "SELECT sum(n_mod_since_analyze) = 2000 FROM pg_stat_user_tables",
    );
    q(&pg, "VACUUM ANALYZE tuned, plain;");
    q(
        &pg,
        "DELETE FROM tuned WHERE id <= 50; DELETE FROM plain WHERE id <= 50;",
    );
    wait_for(&pg, "SELECT sum(n_dead_tup) = 100 FROM pg_stat_user_tables");
    let jobs = r#"
[jobs.m]
[[jobs.m.items]]
name = "vacuum"
kind = "vacuum"
target = "db"
schemas = ["public"]
only_needed = true
"#;
    let s = Setup::with_db(&pg.url("app"), "", jobs);
    let (code, report, all) = s.run_job("m", &[]);
    assert_eq!(code, 0, "{all}");
    let v = item(&report, "vacuum");
    assert_eq!(v["data"]["tables_done"], 1, "{v:#}");
    assert_eq!(v["data"]["tables_not_needed"], 1, "{v:#}");
    let details = v["details"].to_string();
    assert!(
        details.contains("chose public.tuned: 50 dead tuples > 10, with the table's own autovacuum_vacuum_scale_factor=0.01, autovacuum_vacuum_threshold=0"),
        "{details}"
    );
    assert_eq!(
        q(
            &pg,
            "SELECT string_agg(relname || ':' || vacuum_count, ',' ORDER BY relname) FROM pg_stat_user_tables"
        ),
        "plain:1,tuned:2"
    );
}

#[test]
fn only_needed_vacuums_past_the_thresholds_analyzes_past_the_analyze_threshold_and_leaves_the_rest()
{
    let pg = cluster_with_app_db();
    q(
        &pg,
        "CREATE TABLE dirty (id int PRIMARY KEY, v text); CREATE TABLE churned (id int PRIMARY KEY, v text); \
         CREATE TABLE clean (id int PRIMARY KEY, v text); \
         INSERT INTO dirty SELECT g, md5(g::text) FROM generate_series(1, 1000) g; \
         INSERT INTO churned SELECT g, md5(g::text) FROM generate_series(1, 1000) g; \
         INSERT INTO clean SELECT g, md5(g::text) FROM generate_series(1, 1000) g;",
    );
    // A session of its own, so that the inserts are counted before ANALYZE resets the counts.
    wait_for(
        &pg,
        "SELECT sum(n_mod_since_analyze) = 3000 FROM pg_stat_user_tables",
    );
    q(&pg, "VACUUM ANALYZE dirty, churned, clean;");
    // dirty: 400 dead tuples > 50 + 20% of 1000 (vacuum). churned: 200 modified > 50 + 10% of
    // 1000 (analyze) but 200 dead < 250 (no vacuum). clean: nothing.
    q(
        &pg,
        "DELETE FROM dirty WHERE id <= 400; UPDATE churned SET v = 'x' WHERE id <= 200;",
    );
    wait_for(
        &pg,
        "SELECT sum(n_dead_tup) = 600 FROM pg_stat_user_tables WHERE relname IN ('dirty', 'churned')",
    );
    let counts = "SELECT string_agg(relname || ':' || vacuum_count || ':' || analyze_count, ',' ORDER BY relname) FROM pg_stat_user_tables";
    assert_eq!(q(&pg, counts), "churned:1:1,clean:1:1,dirty:1:1", "set-up");
    let jobs = r#"
[jobs.m]
[[jobs.m.items]]
name = "vacuum"
kind = "vacuum"
target = "db"
schemas = ["public"]
only_needed = true
"#;
    let s = Setup::with_db(&pg.url("app"), "", jobs);
    let (code, report, all) = s.run_job("m", &[]);
    assert_eq!(code, 0, "{all}");
    let v = item(&report, "vacuum");
    assert_eq!(v["status"], "pass", "{all}");
    assert_eq!(v["data"]["tables_not_needed"], 1, "{all}");
    assert_eq!(v["data"]["tables_analyze_only"], 1, "{all}");
    let details = v["details"].to_string();
    assert!(
        details.contains("chose public.dirty: 400 dead tuples > 250"),
        "{details}"
    );
    assert!(
        details.contains("chose public.churned: 200 modified since analyze > 150, ANALYZE only"),
        "{details}"
    );
    // The dead-tuple sums are over the VACUUMed table: ANALYZE removed none of churned's 200.
    assert_eq!(v["data"]["dead_tuples_before"], 400, "{all}");
    assert_eq!(v["data"]["dead_tuples_after"], 0, "{all}");
    assert!(
        details.contains("dead tuples: 400 before, 0 after (the 1 VACUUMed table(s))"),
        "{details}"
    );
    // dirty was vacuumed and analyzed, churned only analyzed, clean left alone.
    assert_eq!(q(&pg, counts), "churned:1:2,clean:1:1,dirty:2:2");
}

/// Callers tell why a target could not be used by the error's variant (not its wording), and
/// the message still names the target: a standby where a change was asked, a server that is
/// down, a server with no connection slot left.
#[test]
fn a_targets_failures_are_told_apart_by_variant_with_their_messages() {
    use runbook::base::pg::{PgError, Target, ensure_primary};
    let pg = cluster_with_app_db();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let primary = Target::from_url("main", &pg.url("app")).expect("url");
    {
        let standby = Standby::start(&pg);
        let url = format!("postgres://postgres@127.0.0.1:{}/app", standby.port);
        let replica = Target::from_url("replica", &url).expect("url");
        rt.block_on(async {
            let client = replica.connect().await.expect("connect to the standby");
            match ensure_primary(&client, &replica).await.err() {
                Some(PgError::NotPrimary(m)) => {
                    assert!(
                        m.contains("target replica") && m.contains("is a standby"),
                        "{m}"
                    )
                }
                other => panic!("{other:?}"),
            }
            let client = primary.connect().await.expect("connect to the primary");
            ensure_primary(&client, &primary)
                .await
                .expect("the primary is one");
        });
    }
    let down = Target::from_url("down", "postgres://postgres@127.0.0.1:1/app").expect("url");
    match rt.block_on(down.connect()).err() {
        Some(PgError::Connect(m)) => assert!(m.starts_with("cannot connect to target down"), "{m}"),
        other => panic!("{other:?}"),
    }
    // One slot left, taken by our first connection: no connection for an extra worker (which,
    // unlike the first, does not wait for a slot).
    let _idle = leave_one_connection_slot(&pg);
    let _first = rt.block_on(primary.connect()).expect("the last slot");
    match rt.block_on(primary.connect_extra_worker()).err() {
        Some(PgError::TooManyClients(m)) => assert!(
            m.starts_with("cannot connect to target main") && m.contains("too many clients"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
}
