//! The options of the database item kinds and targets that the other database tests leave out,
//! end to end as users run them: `runbook run-job --format json` on a jobs.toml written into a
//! temporary folder, against a real throwaway PostgreSQL. Each test checks what happened in the
//! database (statistics counters, index oids and relfilenodes, rows) as well as the report.
//!
//! - `vacuum`: `tables`, `exclude_tables`, `schemas`, `analyze = false`, the default selection
//!   (catalogs in, other sessions' temporary tables out), `retries` after a lock is released,
//!   and a non-superuser's run (only what it may vacuum).
//! - `reindex`: `tables`, `schemas`, `concurrently = false`, what is skipped (exclusion
//!   constraints, partitioned parents), and a failing rebuild that must leave no invalid index.
//! - `create_indexes`: names already taken, `search_path` resolution, `CONCURRENTLY` added.
//! - `sql`: every assertion form and parameter type, and read-only-ness against many kinds of
//!   writes.
//! - `slow_queries`: `top`, `fail_mean`, this database only, idle-in-transaction sessions and
//!   other databases for `max_running`, maintenance statements left out (`include_maintenance`).
//! - targets: `statement_timeout` (index builds excepted), the item's deadline for `sql`,
//!   `connect_timeout`, and the session settings every connection has.

mod support;

use std::time::{Duration, Instant};

use runbook::face::pgcluster::TempCluster;
use serde_json::Value;
use support::{
    Setup, item,
    pg::{Holder, cluster_with_app_db, end_lock_holder, q, wait_for},
};

/// Manual VACUUM and ANALYZE counts of the tables in `public` and `trading`:
/// `schema.table:vacuums:analyzes,...`.
const COUNTS: &str = "SELECT string_agg(schemaname || '.' || relname || ':' || vacuum_count || ':' || analyze_count, ',' ORDER BY schemaname, relname) \
    FROM pg_stat_user_tables WHERE schemaname IN ('public', 'trading')";

/// `oid:relfilenode` of a relation (as written in SQL).
fn ident(pg: &TempCluster, rel: &str) -> String {
    q(
        pg,
        &format!("SELECT oid || ':' || relfilenode FROM pg_class WHERE oid = to_regclass('{rel}')"),
    )
}

/// `schema.table` of each entry of a vacuum item's `data.tables`, in report order.
fn vacuumed(it: &Value) -> Vec<String> {
    it["data"]["tables"]
        .as_array()
        .unwrap_or_else(|| panic!("data.tables: {it:#}"))
        .iter()
        .map(|t| {
            format!(
                "{}.{}",
                t["schema"].as_str().unwrap(),
                t["table"].as_str().unwrap()
            )
        })
        .collect()
}

/// The `index` of each entry of a reindex item's `data.indexes`, sorted.
fn rebuilt(it: &Value) -> Vec<String> {
    let mut v: Vec<String> = it["data"]["indexes"]
        .as_array()
        .unwrap_or_else(|| panic!("data.indexes: {it:#}"))
        .iter()
        .map(|i| i["index"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn summary(it: &Value) -> &str {
    it["summary"].as_str().unwrap_or_default()
}

/// Runs `job` and asserts it ran to a report (exit 0 or 1, not a config error).
fn run_ok(s: &Setup, job: &str, args: &[&str]) -> Value {
    let (code, report, all) = s.run_job(job, args);
    assert!(code == 0 || code == 1, "run-job {job} exited {code}: {all}");
    assert!(!report.is_null(), "no report from {job}: {all}");
    report
}

// ---------------------------------------------------------------------------------------------
// vacuum
// ---------------------------------------------------------------------------------------------

const VACUUM_TABLES: &str = "CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a SELECT g, md5(g::text) FROM generate_series(1, 2000) g; \
    CREATE TABLE b (id int PRIMARY KEY, v text); INSERT INTO b SELECT g, md5(g::text) FROM generate_series(1, 200) g; \
    CREATE TABLE c (id int PRIMARY KEY); INSERT INTO c SELECT generate_series(1, 20); \
    CREATE SCHEMA trading; \
    CREATE TABLE trading.orders (id int PRIMARY KEY, qty int); INSERT INTO trading.orders SELECT g, g FROM generate_series(1, 500) g; \
    CREATE TABLE trading.audit (id int PRIMARY KEY); INSERT INTO trading.audit SELECT generate_series(1, 10);";

#[test]
fn vacuum_tables_exclude_tables_schemas_and_analyze_false_choose_exactly_what_they_say() {
    let pg = cluster_with_app_db();
    q(&pg, VACUUM_TABLES);
    // Another session's temporary table: never planned.
    let _temp = Holder::start(
        &pg,
        "CREATE TEMP TABLE scratch (x int); INSERT INTO scratch VALUES (1); SELECT pg_sleep(120);\n",
    );
    wait_for(
        &pg,
        "SELECT EXISTS (SELECT 1 FROM pg_class WHERE relname = 'scratch' AND relpersistence = 't')",
    );
    let jobs = r#"
[jobs.some]
[[jobs.some.items]]
name = "vacuum"
kind = "vacuum"
target = "db"
tables = ["a", "trading.orders"]

[jobs.trading]
[[jobs.trading.items]]
name = "vacuum"
kind = "vacuum"
target = "db"
schemas = ["trading"]
exclude_tables = ["audit"]

[jobs.public_no_analyze]
[[jobs.public_no_analyze.items]]
name = "vacuum"
kind = "vacuum"
target = "db"
schemas = ["public"]
exclude_tables = ["public.a", "b"]
analyze = false

[jobs.all]
[[jobs.all.items]]
name = "vacuum"
kind = "vacuum"
target = "db"
"#;
    let s = Setup::with_db(&pg.url("app"), "", jobs);
    assert_eq!(
        q(&pg, COUNTS),
        "public.a:0:0,public.b:0:0,public.c:0:0,trading.audit:0:0,trading.orders:0:0"
    );

    // `tables`: a bare name and a schema.table.
    let v = item(&run_ok(&s, "some", &[]), "vacuum").clone();
    assert_eq!(v["status"], "pass", "{v:#}");
    assert_eq!(vacuumed(&v), ["public.a", "trading.orders"], "{v:#}");
    assert_eq!(v["data"]["tables_done"], 2, "{v:#}");
    assert_eq!(
        q(&pg, COUNTS),
        "public.a:1:1,public.b:0:0,public.c:0:0,trading.audit:0:0,trading.orders:1:1"
    );

    // `schemas` with an unqualified exclusion.
    let v = item(&run_ok(&s, "trading", &[]), "vacuum").clone();
    assert_eq!(v["status"], "pass", "{v:#}");
    assert_eq!(vacuumed(&v), ["trading.orders"], "{v:#}");
    assert_eq!(
        q(&pg, COUNTS),
        "public.a:1:1,public.b:0:0,public.c:0:0,trading.audit:0:0,trading.orders:2:2"
    );

    // `analyze = false`: the plan says VACUUM without ANALYZE, and no ANALYZE happens.
    let v = item(&run_ok(&s, "public_no_analyze", &["--dry-run"]), "vacuum").clone();
    assert_eq!(v["status"], "skipped", "{v:#}");
    assert_eq!(
        v["data"]["planned"],
        serde_json::json!(["public.c"]),
        "{v:#}"
    );
    assert!(
        v["details"].as_array().expect("details").iter().any(|d| d
            .as_str()
            .unwrap_or_default()
            .starts_with("VACUUM public.c; -- ")),
        "{v:#}"
    );
    let v = item(&run_ok(&s, "public_no_analyze", &[]), "vacuum").clone();
    assert_eq!(v["status"], "pass", "{v:#}");
    assert_eq!(vacuumed(&v), ["public.c"], "{v:#}");
    assert_eq!(
        q(&pg, COUNTS),
        "public.a:1:1,public.b:0:0,public.c:1:0,trading.audit:0:0,trading.orders:2:2"
    );
    assert_eq!(
        q(
            &pg,
            "SELECT (last_vacuum IS NOT NULL) || ':' || (last_analyze IS NULL) FROM pg_stat_user_tables WHERE relname = 'c'"
        ),
        "true:true"
    );

    // The default: every schema, the catalogs included, but neither TOAST nor temporary tables.
    let v = item(&run_ok(&s, "all", &[]), "vacuum").clone();
    assert_eq!(v["status"], "pass", "{v:#}");
    assert_eq!(v["data"]["tables_failed"], 0, "{v:#}");
    assert_eq!(v["data"]["tables_done"], v["data"]["tables_total"], "{v:#}");
    let all = vacuumed(&v);
    for t in [
        "public.a",
        "public.b",
        "public.c",
        "trading.orders",
        "trading.audit",
        "pg_catalog.pg_class",
        "pg_catalog.pg_attribute",
    ] {
        assert!(all.contains(&t.to_string()), "{t} not vacuumed: {all:?}");
    }
    assert!(
        !all.iter().any(|t| t.starts_with("pg_toast")
            || t.starts_with("pg_temp")
            || t.ends_with(".scratch")),
        "{all:?}"
    );
    assert_eq!(
        q(&pg, COUNTS),
        "public.a:2:2,public.b:1:1,public.c:2:1,trading.audit:1:1,trading.orders:3:3"
    );
    assert_eq!(
        q(
            &pg,
            "SELECT vacuum_count > 0 AND analyze_count > 0 FROM pg_stat_all_tables WHERE relid = 'pg_catalog.pg_class'::regclass"
        ),
        "t"
    );
}

/// Calls of `SET maintenance_io_concurrency ...` recorded by pg_stat_statements (utility
/// statements are tracked by default), as "text:calls" lines.
fn io_concurrency_sets(pg: &TempCluster) -> String {
    q(
        pg,
        "SELECT coalesce(string_agg(query || ':' || calls, ',' ORDER BY query), '') FROM pg_stat_statements WHERE query LIKE 'SET maintenance_io_concurrency%'",
    )
}

#[test]
fn vacuum_analyzes_a_partitioned_table_as_a_whole_once_its_partitions_are_vacuumed() {
    let pg = cluster_with_app_db();
    // m: two levels of partitions (m1 is itself partitioned), and a plain table t.
    q(
        &pg,
        "CREATE TABLE m (id int, v text) PARTITION BY RANGE (id); \
         CREATE TABLE m1 PARTITION OF m FOR VALUES FROM (0) TO (1000) PARTITION BY RANGE (id); \
         CREATE TABLE m1a PARTITION OF m1 FOR VALUES FROM (0) TO (500); \
         CREATE TABLE m1b PARTITION OF m1 FOR VALUES FROM (500) TO (1000); \
         CREATE TABLE m2 PARTITION OF m FOR VALUES FROM (1000) TO (2000); \
         INSERT INTO m SELECT g, md5(g::text) FROM generate_series(0, 1999) g; \
         CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100);",
    );
    let jobs = r#"
[jobs.m]
[[jobs.m.items]]
name = "vacuum"
kind = "vacuum"
target = "db"
schemas = ["public"]
"#;
    let s = Setup::with_db(&pg.url("app"), "", jobs);
    let (code, report, all) = s.run_job("m", &["--dry-run"]);
    assert_eq!(code, 0, "{all}");
    let d = item(&report, "vacuum");
    let details = d["details"].as_array().expect("details");
    let statements: Vec<&str> = details
        .iter()
        .filter_map(|l| l.as_str())
        .filter_map(|l| l.split_once(';').map(|(st, _)| st))
        .collect();
    // Partitions: VACUUM alone (their partitioned table's ANALYZE analyzes them); the
    // partitioned table last; m1 is part of m's hierarchy.
    for p in ["m1a", "m1b", "m2"] {
        assert!(
            statements.contains(&format!("VACUUM public.{p}").as_str()),
            "{d:#}"
        );
    }
    assert!(statements.contains(&"VACUUM (ANALYZE) public.t"), "{d:#}");
    assert_eq!(statements.last(), Some(&"ANALYZE public.m"), "{d:#}");
    assert_eq!(statements.len(), 5, "{d:#}");

    let v = item(&run_ok(&s, "m", &[]), "vacuum").clone();
    assert_eq!(v["status"], "pass", "{v:#}");
    assert_eq!(v["data"]["tables_done"], 5, "{v:#}");
    // Every table vacuumed once and analyzed once, the partitions by m's ANALYZE (m and m1,
    // partitioned, have no rows to vacuum).
    assert_eq!(
        q(
            &pg,
            "SELECT string_agg(relname || ':' || vacuum_count || ':' || analyze_count, ',' ORDER BY relname) FROM pg_stat_user_tables"
        ),
        "m:0:1,m1:0:1,m1a:1:1,m1b:1:1,m2:1:1,t:1:1"
    );
    // The statistics of the whole hierarchy, which autovacuum never gathers, at both levels.
    assert_eq!(
        q(
            &pg,
            "SELECT string_agg(DISTINCT tablename, ',' ORDER BY tablename) FROM pg_stats WHERE schemaname = 'public' AND inherited"
        ),
        "m,m1"
    );
}

#[test]
fn vacuum_deepens_read_ahead_only_where_nobody_configured_it_and_io_concurrency_overrides() {
    let pg = cluster_with_app_db();
    q(&pg, VACUUM_TABLES);
    q(&pg, "CREATE EXTENSION pg_stat_statements");
    let jobs = r#"
[jobs.auto]
[[jobs.auto.items]]
name = "vacuum"
kind = "vacuum"
target = "db"
schemas = ["public"]
parallel = 2

[jobs.explicit]
[[jobs.explicit.items]]
name = "vacuum"
kind = "vacuum"
target = "db"
schemas = ["public"]
parallel = 2
io_concurrency = 0
"#;
    let s = Setup::with_db(&pg.url("app"), "", jobs);

    // The server runs with PostgreSQL's built-in 10: each of the two workers' sessions uses 128.
    q(&pg, "SELECT pg_stat_statements_reset()");
    let v = item(&run_ok(&s, "auto", &[]), "vacuum").clone();
    assert_eq!(v["data"]["tables_done"], 3, "{v:#}");
    assert_eq!(
        io_concurrency_sets(&pg),
        "SET maintenance_io_concurrency = 128:2"
    );
    assert_eq!(v["data"]["io_concurrency"], 128, "{v:#}");
    assert!(
        v["details"].to_string().contains(
            "read-ahead: maintenance_io_concurrency = 128 in our sessions (the server's is PostgreSQL's built-in 10)"
        ),
        "{v:#}"
    );

    // A DBA's value (here for the database) is kept: no SET at all.
    q(
        &pg,
        "ALTER DATABASE app SET maintenance_io_concurrency = 7; SELECT pg_stat_statements_reset()",
    );
    let v = item(&run_ok(&s, "auto", &[]), "vacuum").clone();
    assert_eq!(v["data"]["tables_done"], 3, "{v:#}");
    assert_eq!(io_concurrency_sets(&pg), "");
    assert_eq!(v["data"]["io_concurrency"], Value::Null, "{v:#}");
    assert!(!v["details"].to_string().contains("read-ahead"), "{v:#}");

    // io_concurrency given in the item wins over everything.
    q(&pg, "SELECT pg_stat_statements_reset()");
    let v = item(&run_ok(&s, "explicit", &[]), "vacuum").clone();
    assert_eq!(v["data"]["tables_done"], 3, "{v:#}");
    assert_eq!(
        io_concurrency_sets(&pg),
        "SET maintenance_io_concurrency = 0:2"
    );

    // Out of PostgreSQL's range: a config error naming the item and the key, nothing runs.
    let bad = Setup::with_db(
        &pg.url("app"),
        "",
        "[jobs.bad]\n[[jobs.bad.items]]\nname = \"vacuum\"\nkind = \"vacuum\"\ntarget = \"db\"\nio_concurrency = 5000\n",
    );
    let (code, report, all) = bad.run_job("bad", &[]);
    assert_eq!(code, 2, "{all}");
    assert_eq!(report, Value::Null, "{all}");
    assert!(all.contains("jobs.toml:"), "{all}");
    assert!(
        all.contains("item \"vacuum\"")
            && all.contains("io_concurrency = 5000: PostgreSQL accepts 0 to 1000"),
        "{all}"
    );
}

#[test]
fn vacuum_parallel_two_goes_on_with_other_tables_while_one_waits_and_parallel_one_does_not() {
    let pg = cluster_with_app_db();
    q(&pg, VACUUM_TABLES);
    // lock_timeout 10 s: time enough, even on a loaded machine, to look while a worker waits
    // for `a` (the largest table, so the first one taken). Analyzed, so that its size is known
    // while it is locked (a locked table is sized from relpages).
    q(&pg, "ANALYZE a");
    let body = format!(
        "[targets.db]\nurl = \"{}\"\nsslmode = \"disable\"\nlock_timeout = \"10s\"\n\n\
         [jobs.one]\n[[jobs.one.items]]\nname = \"vacuum\"\nkind = \"vacuum\"\ntarget = \"db\"\nschemas = [\"public\"]\nparallel = 1\n\n\
         [jobs.two]\n[[jobs.two.items]]\nname = \"vacuum\"\nkind = \"vacuum\"\ntarget = \"db\"\nschemas = [\"public\"]\nparallel = 2\n",
        pg.url("app")
    );
    let s = Setup::new(&body);
    let waiting_for_a = "EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = 'runbook' AND wait_event_type = 'Lock' AND query LIKE 'VACUUM%public.a')";
    let vacuums_of_b_and_c =
        "SELECT sum(vacuum_count) FROM pg_stat_user_tables WHERE relname IN ('b', 'c')";

    // parallel = 1: while the one worker waits for `a`, nothing else is vacuumed.
    let _holder = Holder::lock(&pg, "a");
    let (code, report, all) = std::thread::scope(|scope| {
        let run = scope.spawn(|| s.run_job("one", &[]));
        wait_for(&pg, &format!("SELECT {waiting_for_a}"));
        assert_eq!(q(&pg, vacuums_of_b_and_c), "0");
        assert_eq!(
            q(
                &pg,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'runbook'"
            ),
            "1"
        );
        end_lock_holder(&pg, "a");
        run.join().expect("run thread")
    });
    assert_eq!(code, 0, "{all}");
    assert_eq!(
        item(&report, "vacuum")["data"]["tables_done"],
        3,
        "{report:#}"
    );
    assert_eq!(q(&pg, vacuums_of_b_and_c), "2");

    // parallel = 2: while one worker waits for `a`, the other vacuums `b` and `c`, on a
    // second connection.
    let _holder = Holder::lock(&pg, "a");
    let (code, report, all) = std::thread::scope(|scope| {
        let run = scope.spawn(|| s.run_job("two", &[]));
        wait_for(
            &pg,
            &format!("SELECT {waiting_for_a} AND ({vacuums_of_b_and_c}) = 4"),
        );
        assert_eq!(
            q(
                &pg,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'runbook'"
            ),
            "2"
        );
        assert_eq!(
            q(
                &pg,
                "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'a'"
            ),
            "1"
        );
        end_lock_holder(&pg, "a");
        run.join().expect("run thread")
    });
    assert_eq!(code, 0, "{all}");
    let v = item(&report, "vacuum");
    assert_eq!(v["status"], "pass", "{v:#}");
    assert_eq!(v["data"]["tables_done"], 3, "{v:#}");
    assert_eq!(
        q(
            &pg,
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'a'"
        ),
        "2"
    );
}

#[test]
fn vacuum_retries_a_table_whose_lock_is_released_and_vacuums_it() {
    let pg = cluster_with_app_db();
    q(&pg, VACUUM_TABLES);
    // lock_timeout 1 s (long enough to see the first attempt wait), retries = 2 (the default).
    let body = format!(
        "[targets.db]\nurl = \"{}\"\nsslmode = \"disable\"\nlock_timeout = \"1s\"\n\n\
         [jobs.m]\n[[jobs.m.items]]\nname = \"vacuum\"\nkind = \"vacuum\"\ntarget = \"db\"\nschemas = [\"public\"]\n",
        pg.url("app")
    );
    let s = Setup::new(&body);
    let _holder = Holder::lock(&pg, "b");
    let started = Instant::now();
    let (code, report, all) = std::thread::scope(|scope| {
        let run = scope.spawn(|| s.run_job("m", &[]));
        // The first attempt waits for the lock (and gives up after lock_timeout) ...
        wait_for(
            &pg,
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = 'runbook' AND wait_event_type = 'Lock' AND query LIKE 'VACUUM%public.b')",
        );
        std::thread::sleep(Duration::from_millis(1200));
        // ... then the other session ends, before the retry (1 s after the failed attempt).
        end_lock_holder(&pg, "b");
        run.join().expect("run thread")
    });
    assert_eq!(code, 0, "{all}");
    assert!(started.elapsed() < Duration::from_secs(30), "{all}");
    let v = item(&report, "vacuum");
    assert_eq!(v["status"], "pass", "{v:#}");
    assert_eq!(v["data"]["tables_failed"], 0, "{v:#}");
    assert_eq!(v["data"]["tables_done"], 3, "{v:#}");
    let tables = v["data"]["tables"].as_array().expect("tables");
    let b = tables.iter().find(|t| t["table"] == "b").expect("b listed");
    assert_eq!(b["status"], "done", "{b:#}");
    assert_eq!(b["note"], "after 2 attempts (lock)", "{b:#}");
    assert_eq!(
        q(
            &pg,
            "SELECT vacuum_count || ':' || analyze_count FROM pg_stat_user_tables WHERE relname = 'b'"
        ),
        "1:1"
    );
}

#[test]
fn vacuum_and_reindex_as_a_non_superuser_touch_only_what_it_owns() {
    let pg = cluster_with_app_db();
    q(
        &pg,
        "CREATE ROLE ops LOGIN; \
         CREATE TABLE theirs (id int PRIMARY KEY); INSERT INTO theirs SELECT generate_series(1, 100); \
         CREATE TABLE mine (id int PRIMARY KEY); INSERT INTO mine SELECT generate_series(1, 100); \
         ALTER TABLE mine OWNER TO ops;",
    );
    let url = format!("postgres://ops@127.0.0.1:{}/app", pg.port);
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
"#;
    let s = Setup::with_db(&url, "", jobs);
    let (mine_before, theirs_before) = (ident(&pg, "mine_pkey"), ident(&pg, "theirs_pkey"));
    let (code, report, all) = s.run_job("m", &[]);
    assert_eq!(code, 0, "{all}");

    // Neither the other owner's table nor the catalogs: no failures, no warnings.
    let v = item(&report, "vacuum");
    assert_eq!(v["status"], "pass", "{v:#}");
    assert_eq!(vacuumed(v), ["public.mine"], "{v:#}");
    assert_eq!(
        q(&pg, COUNTS),
        "public.mine:1:1,public.theirs:0:0",
        "only the owned table was vacuumed"
    );

    let r = item(&report, "reindex");
    assert_eq!(r["status"], "pass", "{r:#}");
    assert_eq!(rebuilt(r), ["public.mine_pkey"], "{r:#}");
    assert_ne!(
        ident(&pg, "mine_pkey"),
        mine_before,
        "mine_pkey was rebuilt"
    );
    assert_eq!(
        ident(&pg, "theirs_pkey"),
        theirs_before,
        "theirs_pkey was not"
    );
}

// ---------------------------------------------------------------------------------------------
// reindex
// ---------------------------------------------------------------------------------------------

#[test]
fn reindex_tables_schemas_and_concurrently_false_rebuild_exactly_what_they_say() {
    let pg = cluster_with_app_db();
    q(
        &pg,
        "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE INDEX a_v ON a (v); \
         INSERT INTO a SELECT g, md5(g::text) FROM generate_series(1, 2000) g; \
         CREATE TABLE b (id int PRIMARY KEY); INSERT INTO b SELECT generate_series(1, 100); \
         CREATE SCHEMA trading; CREATE TABLE trading.orders (id int PRIMARY KEY); \
         CREATE TABLE slots (id int PRIMARY KEY, during int4range, EXCLUDE USING gist (during WITH &&)); \
         INSERT INTO slots VALUES (1, '[1,5)'), (2, '[5,9)'); \
         CREATE TABLE events (id int, at date) PARTITION BY RANGE (at); \
         CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01'); \
         CREATE INDEX events_at ON events (at); INSERT INTO events VALUES (1, '2026-03-01');",
    );
    let jobs = r#"
[jobs.one_table]
[[jobs.one_table.items]]
name = "reindex"
kind = "reindex"
target = "db"
tables = ["a"]

[jobs.one_schema]
[[jobs.one_schema.items]]
name = "reindex"
kind = "reindex"
target = "db"
schemas = ["trading"]

[jobs.blocking]
[[jobs.blocking.items]]
name = "reindex"
kind = "reindex"
target = "db"
tables = ["public.b"]
concurrently = false

[jobs.all]
[[jobs.all.items]]
name = "reindex"
kind = "reindex"
target = "db"
"#;
    let s = Setup::with_db(&pg.url("app"), "", jobs);
    let snapshot =
        |names: &[&str]| -> Vec<String> { names.iter().map(|n| ident(&pg, n)).collect() };
    let names = ["a_pkey", "a_v", "b_pkey", "trading.orders_pkey"];

    // `tables`: the two indexes of `a`, nothing else.
    let before = snapshot(&names);
    let r = item(&run_ok(&s, "one_table", &[]), "reindex").clone();
    assert_eq!(r["status"], "pass", "{r:#}");
    assert_eq!(rebuilt(&r), ["public.a_pkey", "public.a_v"], "{r:#}");
    let after = snapshot(&names);
    assert_ne!(after[0], before[0], "a_pkey rebuilt");
    assert_ne!(after[1], before[1], "a_v rebuilt");
    assert_eq!(after[2..], before[2..], "b and trading.orders untouched");

    // `schemas`.
    let before = after;
    let r = item(&run_ok(&s, "one_schema", &[]), "reindex").clone();
    assert_eq!(r["status"], "pass", "{r:#}");
    assert_eq!(rebuilt(&r), ["trading.orders_pkey"], "{r:#}");
    let after = snapshot(&names);
    assert_eq!(after[..3], before[..3], "public untouched");
    assert_ne!(after[3], before[3], "trading.orders_pkey rebuilt");

    // `concurrently = false`: REINDEX INDEX in place, so the oid stays and the file is new (a
    // concurrent rebuild swaps in a new index with a new oid).
    let b_before = ident(&pg, "b_pkey");
    let r = item(&run_ok(&s, "blocking", &["--dry-run"]), "reindex").clone();
    assert!(
        r["details"]
            .to_string()
            .contains("REINDEX INDEX public.b_pkey; -- on public.b"),
        "{r:#}"
    );
    let r = item(&run_ok(&s, "blocking", &[]), "reindex").clone();
    assert_eq!(r["status"], "pass", "{r:#}");
    assert_eq!(rebuilt(&r), ["public.b_pkey"], "{r:#}");
    let b_after = ident(&pg, "b_pkey");
    let (oid_before, file_before) = b_before.split_once(':').expect("oid:relfilenode");
    let (oid_after, file_after) = b_after.split_once(':').expect("oid:relfilenode");
    assert_eq!(oid_after, oid_before, "rebuilt in place");
    assert_ne!(file_after, file_before, "rebuilt");

    // The default: every user index, but not the exclusion constraint's index (it cannot be
    // rebuilt concurrently) nor the partitioned parent's (its partition's index is rebuilt).
    let excl = q(
        &pg,
        "SELECT conindid::regclass::text FROM pg_constraint WHERE contype = 'x' AND conrelid = 'slots'::regclass",
    );
    let partition_ix = q(
        &pg,
        "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'events_2026'::regclass",
    );
    let r = item(&run_ok(&s, "all", &[]), "reindex").clone();
    assert_eq!(r["status"], "pass", "{r:#}");
    assert_eq!(
        r["data"]["indexes_done"], r["data"]["indexes_total"],
        "{r:#}"
    );
    assert_eq!(
        rebuilt(&r),
        [
            "public.a_pkey".to_string(),
            "public.a_v".to_string(),
            "public.b_pkey".to_string(),
            format!("public.{partition_ix}"),
            "public.slots_pkey".to_string(),
            "trading.orders_pkey".to_string(),
        ],
        "skipped {excl} and public.events_at: {r:#}"
    );
    assert_eq!(
        q(&pg, "SELECT count(*) FROM pg_index WHERE NOT indisvalid"),
        "0"
    );
}

#[test]
fn reindex_leaves_alone_the_unfinished_index_of_a_rebuild_another_session_has_in_progress() {
    let pg = cluster_with_app_db();
    q(
        &pg,
        "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 1000) g; \
         CREATE INDEX t_v ON t (v); CREATE TABLE other (id int PRIMARY KEY); INSERT INTO other VALUES (1);",
    );
    // An open transaction holding a snapshot: another session's REINDEX CONCURRENTLY of t_v
    // builds t_v_ccnew and then waits for it, with t_v_ccnew not valid yet.
    let old_snapshot = Holder::start(
        &pg,
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1; SELECT pg_sleep(120);\n",
    );
    wait_for(
        &pg,
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query LIKE '%pg_sleep(120)%' AND backend_xmin IS NOT NULL)",
    );
    let _rebuild = Holder::start(&pg, "REINDEX INDEX CONCURRENTLY t_v;\n");
    let unfinished = "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 't_v_ccnew' AND NOT i.indisvalid";
    wait_for(
        &pg,
        &format!(
            "SELECT ({unfinished}) = 1 AND EXISTS (SELECT 1 FROM pg_stat_activity WHERE query LIKE 'REINDEX INDEX CONCURRENTLY t_v%' AND wait_event_type = 'Lock')"
        ),
    );

    // Our reindex of that table and another (plain REINDEX, which does not wait for
    // snapshots).
    let jobs = r#"
[jobs.m]
[[jobs.m.items]]
name = "reindex"
kind = "reindex"
target = "db"
tables = ["t", "other"]
concurrently = false
"#;
    let s = Setup::with_db(&pg.url("app"), "", jobs);
    let (code, report, all) = s.run_job("m", &["--dry-run"]);
    assert_eq!(code, 0, "{all}");
    let r = item(&report, "reindex");
    assert_eq!(r["data"]["leftovers"], serde_json::json!([]), "{r:#}");
    assert_eq!(
        r["data"]["planned"],
        serde_json::json!(["public.t_pkey", "public.t_v", "public.other_pkey"]),
        "{r:#}"
    );

    // t_v_ccnew is not dropped; t's own rebuilds cannot have the table while the other
    // session rebuilds it (reported), the other table's is done.
    let r = item(&run_ok(&s, "m", &[]), "reindex").clone();
    assert_eq!(r["status"], "fail", "{r:#}");
    assert_eq!(
        r["data"]["leftovers_dropped"],
        serde_json::json!([]),
        "{r:#}"
    );
    let by_index = |name: &str| {
        r["data"]["indexes"]
            .as_array()
            .expect("indexes")
            .iter()
            .find(|i| i["index"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {r:#}"))
            .clone()
    };
    assert_eq!(by_index("public.other_pkey")["ok"], true, "{r:#}");
    for ix in ["public.t_pkey", "public.t_v"] {
        let e = by_index(ix);
        assert_eq!(e["ok"], false, "{r:#}");
        assert!(
            e["error"]
                .as_str()
                .unwrap_or_default()
                .contains("lock timeout"),
            "{r:#}"
        );
    }
    assert_eq!(q(&pg, unfinished), "1");

    // Once the old transaction ends, the other session's rebuild completes on its own.
    assert_eq!(
        q(
            &pg,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(120)%' AND pid <> pg_backend_pid()"
        ),
        "1"
    );
    drop(old_snapshot);
    wait_for(
        &pg,
        "SELECT count(*) = 1 AND bool_and(i.indisvalid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname LIKE 't\\_v%'",
    );
    assert_eq!(
        q(
            &pg,
            "SELECT string_agg(c.relname, ',') FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 't'::regclass AND c.relname LIKE 't\\_v%'"
        ),
        "t_v"
    );
}

#[test]
fn reindex_a_failing_rebuild_costs_one_index_and_leaves_no_invalid_index_behind() {
    let pg = cluster_with_app_db();
    // t_f's function starts failing after the index was built: rebuilding t_f fails (a concurrent
    // rebuild then leaves an invalid `t_f_ccnew` behind unless it is dropped).
    q(
        &pg,
        "CREATE FUNCTION f(i int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$BEGIN RETURN i; END$$; \
         CREATE TABLE t (id int PRIMARY KEY, k int); INSERT INTO t SELECT g, g FROM generate_series(1, 100) g; \
         CREATE INDEX t_f ON t (f(k)); \
         CREATE TABLE b (id int PRIMARY KEY); INSERT INTO b SELECT generate_series(1, 100); \
         CREATE TABLE c (id int PRIMARY KEY); INSERT INTO c SELECT generate_series(1, 100); \
         CREATE OR REPLACE FUNCTION f(i int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'f is broken'; END$$;",
    );
    let jobs = r#"
[jobs.concurrent]
[[jobs.concurrent.items]]
name = "reindex"
kind = "reindex"
target = "db"

[jobs.blocking]
[[jobs.blocking.items]]
name = "reindex"
kind = "reindex"
target = "db"
concurrently = false
"#;
    let s = Setup::with_db(&pg.url("app"), "", jobs);
    let names = ["t_pkey", "t_f", "b_pkey", "c_pkey"];
    let snapshot = || -> Vec<String> { names.iter().map(|n| ident(&pg, n)).collect() };
    let find = |r: &Value, name: &str| -> Value {
        r["data"]["indexes"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["index"] == name))
            .unwrap_or_else(|| panic!("{name} not in {r:#}"))
            .clone()
    };
    let no_invalid = "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
        WHERE NOT i.indisvalid OR c.relname LIKE '%ccnew%' OR c.relname LIKE '%ccold%'";

    let before = snapshot();
    let (code, report, all) = s.run_job("concurrent", &[]);
    assert_eq!(code, 1, "{all}");
    let r = item(&report, "reindex");
    assert_eq!(r["status"], "fail", "{r:#}");
    assert_eq!(r["data"]["indexes_total"], 4, "{r:#}");
    assert_eq!(r["data"]["indexes_done"], 3, "{r:#}");
    let t_f = find(r, "public.t_f");
    assert_eq!(t_f["ok"], false, "{r:#}");
    assert!(t_f["error"].to_string().contains("f is broken"), "{r:#}");
    assert!(
        r["details"].to_string().contains("public.t_f: f is broken"),
        "{r:#}"
    );
    // The failed build's `t_f_ccnew` was dropped at once: nothing invalid is left ...
    assert_eq!(q(&pg, no_invalid), "0");
    // ... and the other index of the same table, and the other tables, were still rebuilt.
    let after = snapshot();
    assert_ne!(after[0], before[0], "t_pkey rebuilt");
    assert_eq!(after[1], before[1], "t_f is the old, valid index");
    assert_ne!(after[2], before[2], "b_pkey rebuilt");
    assert_ne!(after[3], before[3], "c_pkey rebuilt");

    // Not concurrently, under the target's lock_timeout (200 ms): a table locked by someone
    // else costs its indexes, the rest are rebuilt.
    let before = after;
    let _holder = Holder::lock(&pg, "b");
    let started = Instant::now();
    let (code, report, all) = s.run_job("blocking", &[]);
    assert!(started.elapsed() < Duration::from_secs(30), "{all}");
    assert_eq!(code, 1, "{all}");
    let r = item(&report, "reindex");
    assert_eq!(r["status"], "fail", "{r:#}");
    assert_eq!(r["data"]["indexes_done"], 2, "{r:#}");
    let b_pkey = find(r, "public.b_pkey");
    assert_eq!(b_pkey["ok"], false, "{r:#}");
    assert!(
        b_pkey["error"]
            .to_string()
            .contains("canceling statement due to lock timeout"),
        "{r:#}"
    );
    assert_eq!(find(r, "public.t_f")["ok"], false, "{r:#}");
    assert_eq!(find(r, "public.t_pkey")["ok"], true, "{r:#}");
    assert_eq!(find(r, "public.c_pkey")["ok"], true, "{r:#}");
    assert_eq!(q(&pg, no_invalid), "0");
    let after = snapshot();
    // In place: same oids, new files for the two that were rebuilt.
    let file = |x: &String| x.split_once(':').expect("oid:relfilenode").1.to_string();
    let oid = |x: &String| x.split_once(':').expect("oid:relfilenode").0.to_string();
    assert_eq!(
        after.iter().map(oid).collect::<Vec<_>>(),
        before.iter().map(oid).collect::<Vec<_>>()
    );
    assert_ne!(file(&after[0]), file(&before[0]), "t_pkey rebuilt");
    assert_eq!(after[1], before[1], "t_f unchanged");
    assert_eq!(after[2], before[2], "b_pkey unchanged");
    assert_ne!(file(&after[3]), file(&before[3]), "c_pkey rebuilt");
}

// ---------------------------------------------------------------------------------------------
// create_indexes
// ---------------------------------------------------------------------------------------------

#[test]
fn create_indexes_leaves_names_taken_elsewhere_alone_and_resolves_tables_like_psql() {
    let pg = cluster_with_app_db();
    q(
        &pg,
        "CREATE TABLE a (id int PRIMARY KEY, v text); \
         CREATE TABLE b (id int PRIMARY KEY, v text); CREATE INDEX shared_name ON b (v); \
         CREATE TABLE taken (x int); \
         CREATE SCHEMA trading; CREATE TABLE trading.orders (id int PRIMARY KEY, user_id int); \
         ALTER DATABASE app SET search_path = trading, public;",
    );
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
        "CREATE INDEX shared_name ON a (v);\n\
         CREATE INDEX taken ON a (id);\n\
         CREATE INDEX orders_user ON orders (user_id);\n\
         CREATE INDEX a_v ON a (v);\n",
    );
    let (shared_before, taken_before) =
        (ident(&pg, "public.shared_name"), ident(&pg, "public.taken"));
    let (code, report, all) = s.run_job("m", &[]);
    assert_eq!(code, 1, "{all}");
    let it = item(&report, "indexes");
    assert_eq!(it["status"], "fail", "{it:#}");
    let st = it["data"]["statements"].as_array().expect("statements");
    let results: Vec<(&str, &str)> = st
        .iter()
        .map(|s| (s["index"].as_str().unwrap(), s["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        results,
        [
            ("shared_name", "failed"),
            ("taken", "failed"),
            ("orders_user", "built"),
            ("a_v", "built"),
        ],
        "{it:#}"
    );
    assert_eq!(
        st[0]["note"], "an index named public.shared_name already exists on another table",
        "{it:#}"
    );
    assert_eq!(
        st[1]["note"], "the name public.taken is already taken by a relation that is not an index",
        "{it:#}"
    );
    // CONCURRENTLY was added (the file has none).
    for s in st {
        assert!(
            s["statement"]
                .as_str()
                .unwrap_or_default()
                .starts_with("CREATE INDEX CONCURRENTLY "),
            "{s:#}"
        );
    }
    // Nothing of the other owners of those names was touched.
    assert_eq!(ident(&pg, "public.shared_name"), shared_before);
    assert_eq!(
        q(
            &pg,
            "SELECT indrelid::regclass::text FROM pg_index WHERE indexrelid = 'public.shared_name'::regclass"
        ),
        "b"
    );
    assert_eq!(ident(&pg, "public.taken"), taken_before);
    assert_eq!(
        q(
            &pg,
            "SELECT relkind FROM pg_class WHERE oid = 'public.taken'::regclass"
        ),
        "r"
    );
    // Unqualified table names went through the search_path; each index is in its table's schema.
    assert_eq!(
        q(
            &pg,
            "SELECT string_agg(indexrelid::regclass::text || ' on ' || indrelid::regclass::text || ' ' || indisvalid, ', ' ORDER BY indexrelid::regclass::text) \
             FROM pg_index WHERE indexrelid IN (to_regclass('trading.orders_user'), to_regclass('public.a_v'))"
        ),
        "a_v on a true, orders_user on orders true"
    );
    assert_eq!(
        q(
            &pg,
            "SELECT to_regclass('trading.orders_user') IS NOT NULL AND to_regclass('public.a_v') IS NOT NULL \
             AND (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = 'trading.orders_user'::regclass) = 'trading' \
             AND (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = 'public.a_v'::regclass) = 'public'"
        ),
        "t"
    );
    assert_eq!(
        q(
            &pg,
            "SELECT count(*) FROM pg_index WHERE indrelid = 'public.a'::regclass"
        ),
        "2",
        "a has its primary key and a_v, nothing else"
    );
}

// ---------------------------------------------------------------------------------------------
// sql
// ---------------------------------------------------------------------------------------------

#[test]
fn sql_assertion_forms_and_parameter_types_judge_as_documented() {
    let pg = cluster_with_app_db();
    q(
        &pg,
        "CREATE TABLE b (id int PRIMARY KEY, v text); INSERT INTO b SELECT g, md5(g::text) FROM generate_series(1, 100) g;",
    );
    // (name, options, status, summary fragment)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "min fails",
            "query = \"SELECT count(*) FROM b\"\nmin = 1000",
            "fail",
            "100 is below min 1000",
        ),
        (
            "warn_min warns",
            "query = \"SELECT count(*) FROM b\"\nmin = 10\nwarn_min = 500",
            "warn",
            "100 is below warn_min 500",
        ),
        (
            "in range",
            "query = \"SELECT count(*) FROM b\"\nmin = 10\nwarn_min = 50\nwarn_max = 500\nmax = 1000",
            "pass",
            "100 (1 row(s))",
        ),
        (
            "float warn",
            "query = \"SELECT 0.25::float8 * count(*) FROM b\"\nwarn_max = 20\nmax = 30",
            "warn",
            "25 is above warn_max 20",
        ),
        (
            "rows wrong",
            "query = \"SELECT id FROM b WHERE id <= 3\"\nexpect_rows = 2",
            "fail",
            "3 row(s), expected 2",
        ),
        (
            "zero rows",
            "query = \"SELECT id FROM b WHERE id < 0\"\nexpect_rows = 0",
            "pass",
            "no rows",
        ),
        (
            "expect false",
            "query = \"SELECT count(*) = 0 FROM b\"\nexpect = false",
            "pass",
            "false (1 row(s))",
        ),
        (
            "expect mismatch",
            "query = \"SELECT count(*) = 0 FROM b\"\nexpect = true",
            "fail",
            "first column is false, expected true",
        ),
        (
            "expect null",
            "query = \"SELECT NULL::bool\"\nexpect = true",
            "fail",
            "first column is NULL, expected true",
        ),
        (
            "expect not bool",
            "query = \"SELECT 1\"\nexpect = true",
            "fail",
            "not a boolean",
        ),
        (
            "no rows",
            "query = \"SELECT id FROM b WHERE id < 0\"\nmax = 1",
            "fail",
            "the query returned no rows",
        ),
        (
            "null number",
            "query = \"SELECT max(id) FROM b WHERE id < 0\"\nmax = 1",
            "fail",
            "first column is NULL, expected a number",
        ),
        (
            "not a number",
            "query = \"SELECT 'x'::text\"\nmax = 1",
            "fail",
            "not a number (cast it",
        ),
        (
            "no assertion",
            "query = \"SELECT 'hello'::text, 42\"",
            "pass",
            "hello | 42 (1 row(s))",
        ),
        (
            "typed params",
            "query = \"SELECT $1::bool AND $2::float8 > 1.5 AND $3::date = DATE '2026-01-01' AND $4::timestamptz = TIMESTAMPTZ '2026-01-01 04:30:00+00' AND ($5::jsonb ->> 'state') = 'UP' AND $6::int = 3 AND $7::text = 'it''s'\"\n\
             params = [true, 2.5, 2026-01-01, 2026-01-01T10:00:00+05:30, { state = \"UP\" }, 3, \"it's\"]\nexpect = true",
            "pass",
            "true (1 row(s))",
        ),
        (
            "numeric param",
            "query = \"SELECT id FROM b WHERE id::numeric > $1\"\nparams = [97.5]\nexpect_rows = 3",
            "pass",
            "(3 row(s))",
        ),
        (
            "param needs a cast",
            "query = \"SELECT $1::uuid\"\nparams = [\"not-a-uuid\"]",
            "fail",
            "params[0] ($1): cannot bind string as uuid; add a cast",
        ),
        (
            "param too big",
            "query = \"SELECT $1::int\"\nparams = [10000000000]",
            "fail",
            "10000000000 does not fit in integer",
        ),
        (
            "param missing",
            "query = \"SELECT $1::int\"",
            "fail",
            "the query has 1 placeholder(s) but params has 0 value(s)",
        ),
    ];
    let mut jobs = String::from("[jobs.c]\n");
    for (name, opts, _, _) in cases {
        jobs += &format!(
            "[[jobs.c.items]]\nname = \"{name}\"\nkind = \"sql\"\ntarget = \"db\"\n{opts}\n"
        );
    }
    let s = Setup::with_db(&pg.url("app"), "", &jobs);
    let (code, report, all) = s.run_job("c", &[]);
    assert_eq!(code, 1, "{all}");
    for (name, _, status, fragment) in cases {
        let it = item(&report, name);
        assert_eq!(it["status"], *status, "{name}: {it:#}");
        assert!(
            summary(it).contains(fragment),
            "{name}: {fragment:?} not in {it:#}"
        );
    }
    assert_eq!(item(&report, "in range")["data"]["value"], 100.0);
    assert_eq!(item(&report, "float warn")["data"]["value"], 25.0);
    assert_eq!(
        item(&report, "no assertion")["data"]["first_row"],
        "hello | 42"
    );
    // data.value (SPEC 9.3, `runbook trend`): a numeric first column, asserted on or not; none
    // when the first column is text.
    let v = item(&report, "numeric param")["data"]["value"].as_f64();
    assert!(matches!(v, Some(x) if (98.0..=100.0).contains(&x)), "{v:?}");
    assert!(item(&report, "no assertion")["data"]["value"].is_null());
}

#[test]
fn sql_cannot_change_the_database_whatever_the_query_tries() {
    let pg = cluster_with_app_db();
    q(
        &pg,
        "CREATE TABLE b (id int PRIMARY KEY, v text); INSERT INTO b SELECT g, 'v' FROM generate_series(1, 100) g; \
         CREATE SEQUENCE s; \
         CREATE FUNCTION add_row() RETURNS int VOLATILE LANGUAGE plpgsql AS $$BEGIN INSERT INTO b VALUES (1000, 'new'); RETURN 1; END$$;",
    );
    // (name, query, the server's refusal)
    let writes: &[(&str, &str, &str)] = &[
        (
            "cte delete",
            "WITH d AS (DELETE FROM b RETURNING id) SELECT count(*) FROM d",
            "cannot execute SELECT in a read-only transaction",
        ),
        (
            "update",
            "UPDATE b SET v = 'changed' RETURNING id",
            "cannot execute UPDATE in a read-only transaction",
        ),
        (
            "insert",
            "INSERT INTO b VALUES (2000, 'new')",
            "cannot execute INSERT in a read-only transaction",
        ),
        (
            "function",
            "SELECT add_row()",
            "cannot execute INSERT in a read-only transaction",
        ),
        (
            "sequence",
            "SELECT nextval('s')",
            "cannot execute nextval() in a read-only transaction",
        ),
        (
            "ddl",
            "CREATE TABLE intruder (x int)",
            "cannot execute CREATE TABLE in a read-only transaction",
        ),
        (
            "truncate",
            "TRUNCATE b",
            "cannot execute TRUNCATE TABLE in a read-only transaction",
        ),
        (
            "two statements",
            "SELECT 1; DELETE FROM b",
            "cannot insert multiple commands into a prepared statement",
        ),
        (
            "commit first",
            "COMMIT; DELETE FROM b",
            "cannot insert multiple commands into a prepared statement",
        ),
        (
            "read write inside",
            "DO $$BEGIN SET TRANSACTION READ WRITE; DELETE FROM b; END$$",
            "transaction read-write mode must be set before any query",
        ),
    ];
    let mut jobs = String::from("[jobs.c]\n");
    for (name, query, _) in writes {
        jobs += &format!(
            "[[jobs.c.items]]\nname = \"{name}\"\nkind = \"sql\"\ntarget = \"db\"\nquery = '''{query}'''\n"
        );
    }
    let s = Setup::with_db(&pg.url("app"), "", &jobs);
    let (code, report, all) = s.run_job("c", &[]);
    assert_eq!(code, 1, "{all}");
    for (name, _, refusal) in writes {
        let it = item(&report, name);
        assert_eq!(it["status"], "fail", "{name}: {it:#}");
        assert!(
            summary(it).starts_with("query failed: ") && summary(it).contains(refusal),
            "{name}: {refusal:?} not in {it:#}"
        );
    }
    assert_eq!(
        q(
            &pg,
            "SELECT count(*) || ':' || count(*) FILTER (WHERE v = 'v') || ':' || max(id) FROM b"
        ),
        "100:100:100"
    );
    assert_eq!(
        q(&pg, "SELECT last_value || ':' || is_called FROM s"),
        "1:false"
    );
    assert_eq!(q(&pg, "SELECT to_regclass('intruder') IS NULL"), "t");
}

// ---------------------------------------------------------------------------------------------
// slow_queries
// ---------------------------------------------------------------------------------------------

#[test]
fn slow_queries_top_fail_mean_this_database_only_and_idle_transactions_on_any_database() {
    let pg = cluster_with_app_db();
    pg.create_db("other").expect("create db");
    q(
        &pg,
        "CREATE EXTENSION pg_stat_statements; SELECT pg_stat_statements_reset();",
    );
    // In this database: one statement of 300 ms mean, one of 150 ms, and a dozen fast ones
    // (distinct shapes, so that each is its own entry).
    let mut fast = String::new();
    for n in 1..=12 {
        fast += &format!("SELECT 1 WHERE true{};\n", " AND true".repeat(n));
    }
    q(
        &pg,
        &format!(
            "SELECT pg_sleep(0.3); SELECT pg_sleep(0.3); SELECT 1 FROM pg_sleep(0.15);\n{fast}"
        ),
    );
    // In another database: a slower one, which is not this database's business.
    pg.psql("other", "SELECT 'other db', pg_sleep(0.6);", &[])
        .expect("psql");
    let jobs = r#"
[jobs.w]
[[jobs.w.items]]
name = "top 1"
kind = "slow_queries"
target = "db"
top = 1
warn_mean = "100ms"
fail_mean = "250ms"
max_running = "1h"
[[jobs.w.items]]
name = "default top"
kind = "slow_queries"
target = "db"
max_running = "1h"
[[jobs.w.items]]
name = "warn only"
kind = "slow_queries"
target = "db"
top = 5
warn_mean = "100ms"
fail_mean = "1s"
max_running = "1h"

[jobs.running]
[[jobs.running.items]]
name = "running"
kind = "slow_queries"
target = "db"
top = 0
max_running = "1s"
"#;
    let s = Setup::with_db(&pg.url("app"), "", jobs);
    let (code, report, all) = s.run_job("w", &[]);
    assert_eq!(code, 1, "{all}");

    let top1 = item(&report, "top 1");
    assert_eq!(top1["status"], "fail", "{top1:#}");
    assert!(
        summary(top1).contains("1 statement(s) above fail_mean 250ms"),
        "{top1:#}"
    );
    let statements = top1["data"]["statements"].as_array().expect("statements");
    assert_eq!(statements.len(), 1, "{top1:#}");
    assert!(
        statements[0]["query"]
            .as_str()
            .unwrap_or_default()
            .contains("pg_sleep"),
        "{top1:#}"
    );
    let mean = statements[0]["mean_ms"].as_f64().expect("mean_ms");
    // The trend's number (SPEC 9.3): the slowest statement's mean.
    assert_eq!(top1["data"]["value"].as_f64(), Some(mean), "{top1:#}");
    assert!(
        (300.0..550.0).contains(&mean),
        "the slowest of this database (300 ms), not the other database's 600 ms: {top1:#}"
    );
    assert!(
        top1["details"][0]
            .as_str()
            .unwrap_or_default()
            .starts_with("FAIL "),
        "{top1:#}"
    );

    let default_top = item(&report, "default top");
    assert_eq!(
        default_top["data"]["statements"].as_array().map(Vec::len),
        Some(10),
        "{default_top:#}"
    );
    // Default warn_mean 500 ms: nothing here is that slow.
    assert_eq!(default_top["status"], "pass", "{default_top:#}");

    let warn = item(&report, "warn only");
    assert_eq!(warn["status"], "warn", "{warn:#}");
    assert!(
        summary(warn).contains("statement(s) above warn_mean 100ms"),
        "{warn:#}"
    );
    assert!(!summary(warn).contains("fail_mean"), "{warn:#}");
    let queries = warn["data"]["statements"].to_string();
    assert!(
        !queries.contains("other db") && !queries.contains("$1, pg_sleep"),
        "{warn:#}"
    );

    // Long-running: an idle transaction here and an active statement in another database count;
    // an idle session does not.
    let _idle_tx = Holder::start(&pg, "BEGIN; SELECT 'idle tx';\n");
    let _idle = Holder::start(&pg, "SELECT 'just idle';\n");
    let _busy = Holder::start_in(&pg, "other", "SELECT pg_sleep(120);\n");
    wait_for(
        &pg,
        "SELECT count(*) = 2 FROM pg_stat_activity WHERE ((state = 'idle in transaction' AND query LIKE '%idle tx%' AND xact_start < now() - interval '1.5s') \
         OR (state = 'active' AND datname = 'other' AND query LIKE 'SELECT pg_sleep(120)%' AND query_start < now() - interval '1.5s'))",
    );
    wait_for(
        &pg,
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE state = 'idle' AND query LIKE '%just idle%' AND state_change < now() - interval '1.5s')",
    );
    let (code, report, all) = s.run_job("running", &[]);
    assert_eq!(code, 0, "{all}");
    let running = item(&report, "running");
    assert_eq!(running["status"], "warn", "{running:#}");
    assert!(
        summary(running).contains("2 statement(s) running longer than 1s"),
        "{running:#}"
    );
    let mut found: Vec<(String, String)> = running["data"]["long_running"]
        .as_array()
        .expect("long_running")
        .iter()
        .map(|r| {
            (
                r["database"].as_str().unwrap_or_default().to_string(),
                r["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("app".to_string(), "idle in transaction".to_string()),
            ("other".to_string(), "active".to_string()),
        ],
        "{running:#}"
    );
    assert!(
        !running["details"].to_string().contains("just idle"),
        "{running:#}"
    );
}

// ---------------------------------------------------------------------------------------------
// targets
// ---------------------------------------------------------------------------------------------

#[test]
fn slow_queries_with_the_extension_created_but_not_preloaded_warns_with_the_fix_and_still_checks_running()
 {
    let pg = cluster_with_app_db();
    q(&pg, "CREATE EXTENSION pg_stat_statements");
    pg.restart_with("shared_preload_libraries = ''")
        .expect("restart without pg_stat_statements");
    let jobs = r#"
[jobs.w]
[[jobs.w.items]]
name = "slow"
kind = "slow_queries"
target = "db"
max_running = "1s"
"#;
    let s = Setup::with_db(&pg.url("app"), "", jobs);
    let _sleeper = Holder::start(&pg, "SELECT pg_sleep(120);\n");
    wait_for(
        &pg,
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(120)%' AND now() - query_start > interval '1.5s')",
    );
    let (code, report, all) = s.run_job("w", &[]);
    assert_eq!(code, 0, "{all}");
    let slow = item(&report, "slow");
    assert_eq!(slow["status"], "warn", "{slow:#}");
    assert_eq!(slow["data"]["pg_stat_statements"], "missing", "{slow:#}");
    assert!(
        summary(slow).contains("pg_stat_statements is installed but not loaded"),
        "{slow:#}"
    );
    let details = slow["details"].to_string();
    assert!(
        details.contains("add pg_stat_statements to shared_preload_libraries in postgresql.conf and restart PostgreSQL (the extension is already created"),
        "{slow:#}"
    );
    // The long-running check does not need the extension.
    assert!(
        summary(slow).contains("1 statement(s) running longer than 1s"),
        "{slow:#}"
    );
    assert!(details.contains("pg_sleep($1)"), "{slow:#}");
}

#[test]
fn target_statement_timeout_cuts_checks_but_never_index_builds_and_sql_ends_at_its_deadline() {
    let pg = cluster_with_app_db();
    // An expression index that takes at least 1 s to build (5 rows x 200 ms).
    q(
        &pg,
        "CREATE FUNCTION slow(i int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$BEGIN PERFORM pg_sleep(0.2); RETURN i; END$$; \
         CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 5);",
    );
    let jobs = format!(
        r#"
[targets.plain]
url = "{}"
sslmode = "disable"

[jobs.m]
[[jobs.m.items]]
name = "indexes"
kind = "create_indexes"
target = "db"
file = "indexes.sql"
[[jobs.m.items]]
name = "reindex"
kind = "reindex"
target = "db"
tables = ["t"]

# Its own job: an open transaction would make the concurrent builds wait (under lock_timeout).
[jobs.capped]
[[jobs.capped.items]]
name = "capped check"
kind = "sql"
target = "db"
query = "SELECT pg_sleep(5)"

[jobs.hang]
[[jobs.hang.items]]
name = "hanging check"
kind = "sql"
target = "plain"
timeout = "2s"
query = "SELECT 'hanging check', pg_sleep(3600)"
"#,
        pg.url("app")
    );
    let s = Setup::with_db(&pg.url("app"), "statement_timeout = \"300ms\"", &jobs);
    s.write("indexes.sql", "CREATE INDEX t_slow ON t (slow(id));\n");

    let (code, report, all) = s.run_job("capped", &[]);
    assert_eq!(code, 1, "{all}");
    let capped = item(&report, "capped check");
    assert_eq!(capped["status"], "fail", "{capped:#}");
    // The server's own message for statement_timeout (not the item's deadline, not a cancel).
    assert!(
        summary(capped).contains("canceling statement due to statement timeout"),
        "{capped:#}"
    );

    let (code, report, all) = s.run_job("m", &[]);
    assert_eq!(code, 0, "{all}");
    // The index builds ran longer than statement_timeout and finished.
    let ix = item(&report, "indexes");
    assert_eq!(ix["status"], "pass", "{ix:#}");
    assert_eq!(ix["data"]["statements"][0]["result"], "built", "{ix:#}");
    assert!(ix["duration_ms"].as_u64().unwrap_or(0) >= 1000, "{ix:#}");
    let r = item(&report, "reindex");
    assert_eq!(r["status"], "pass", "{r:#}");
    assert_eq!(rebuilt(r), ["public.t_pkey", "public.t_slow"], "{r:#}");
    let slow = r["data"]["indexes"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["index"] == "public.t_slow"))
        .expect("t_slow rebuilt");
    assert!(slow["seconds"].as_f64().unwrap_or(0.0) >= 0.9, "{r:#}");
    assert_eq!(
        q(
            &pg,
            "SELECT count(*) FROM pg_index WHERE indrelid = 't'::regclass AND indisvalid"
        ),
        "2"
    );

    // Without statement_timeout, the item's own timeout ends the statement on the server too:
    // the run ends (the statement would sleep an hour) and the statement is gone from the
    // server, cancelled, not merely abandoned by its client.
    let (code, report, all) = s.run_job("hang", &[]);
    assert_eq!(code, 1, "{all}");
    let hang = item(&report, "hanging check");
    assert_eq!(hang["status"], "fail", "{hang:#}");
    assert!(
        summary(hang).contains("canceling statement due to statement timeout"),
        "{hang:#}"
    );
    wait_for(
        &pg,
        "SELECT count(*) = 0 FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%''hanging check'', pg_sleep(3600)%' AND pid <> pg_backend_pid()",
    );
}

#[test]
fn target_connect_timeout_gives_up_on_a_server_that_never_answers_and_sessions_identify_themselves()
{
    let pg = cluster_with_app_db();
    // Accepts TCP connections (the kernel's backlog) but never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let jobs = format!(
        r#"
[targets.silent]
url = "postgres://postgres@127.0.0.1:{port}/app"
sslmode = "disable"
connect_timeout = "1s"

[jobs.m]
[[jobs.m.items]]
name = "silent check"
kind = "sql"
target = "silent"
query = "SELECT 1"
[[jobs.m.items]]
name = "silent vacuum"
kind = "vacuum"
target = "silent"
[[jobs.m.items]]
name = "session"
kind = "sql"
target = "db"
query = "SELECT current_setting('application_name') = 'runbook' AND current_setting('idle_in_transaction_session_timeout') = '1min'"
expect = true
"#
    );
    let s = Setup::with_db(&pg.url("app"), "", &jobs);
    let (code, report, all) = s.run_job("m", &[]);
    assert_eq!(code, 1, "{all}");
    for name in ["silent check", "silent vacuum"] {
        let it = item(&report, name);
        assert_eq!(it["status"], "fail", "{it:#}");
        assert!(
            summary(it).contains(&format!(
                "cannot connect to target silent (postgres@127.0.0.1:{port}/app)"
            )),
            "{it:#}"
        );
        // The configured connect_timeout gave up, not the default 10 s.
        assert!(summary(it).contains("timed out after 1s"), "{it:#}");
    }
    assert_eq!(item(&report, "session")["status"], "pass", "{all}");
    drop(silent);
}

#[test]
fn slow_queries_leaves_maintenance_statements_out_and_says_so_unless_include_maintenance() {
    let pg = cluster_with_app_db();
    q(
        &pg,
        "CREATE EXTENSION pg_stat_statements; \
         CREATE TABLE big (id int PRIMARY KEY, v text); \
         INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 200000) g;",
    );
    // Maintenance, each well above 1 ms: what runbook's monthly job and a nightly pg_dump leave
    // in pg_stat_statements. And one application statement above it too.
    q(
        &pg,
        "VACUUM (ANALYZE) big; CREATE INDEX CONCURRENTLY big_v ON big (v); REINDEX INDEX big_v; \
         ANALYZE big; SELECT pg_sleep(0.05);",
    );
    q(&pg, "COPY public.big (id, v) TO stdout;");
    let jobs = r#"
[jobs.w]
[[jobs.w.items]]
name = "default"
kind = "slow_queries"
target = "db"
top = 1000
warn_mean = "1ms"
[[jobs.w.items]]
name = "everything"
kind = "slow_queries"
target = "db"
top = 1000
warn_mean = "1ms"
include_maintenance = true
"#;
    let s = Setup::with_db(&pg.url("app"), "", jobs);
    let (code, report, all) = s.run_job("w", &[]);
    assert_eq!(code, 0, "{all}");
    let queries = |it: &Value| -> Vec<String> {
        it["data"]["statements"]
            .as_array()
            .expect("statements")
            .iter()
            .map(|s| s["query"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let maintenance = |q: &str| {
        let u = q.trim_start().to_uppercase();
        ["VACUUM", "ANALYZE", "REINDEX", "CREATE INDEX"]
            .iter()
            .any(|m| u.starts_with(m))
            || (u.starts_with("COPY") && u.contains("TO STDOUT"))
    };

    let d = item(&report, "default");
    let listed = queries(d);
    assert!(
        listed.iter().any(|q| q.contains("pg_sleep")),
        "the application's slow statement is listed: {d:#}"
    );
    assert!(
        !listed.iter().any(|q| maintenance(q)),
        "no maintenance statement is listed: {listed:#?}"
    );
    // VACUUM, CREATE INDEX, REINDEX, ANALYZE, COPY ... TO stdout.
    assert_eq!(d["data"]["maintenance_left_out"], 5, "{d:#}");
    assert!(
        d["details"].to_string().contains(
            "left out: 5 maintenance statement(s) above warn_mean 1ms (VACUUM, ANALYZE, REINDEX, CREATE INDEX, CLUSTER, CHECKPOINT, pg_dump's COPY ... TO stdout); include_maintenance = true lists them"
        ),
        "{d:#}"
    );

    let e = item(&report, "everything");
    let listed = queries(e);
    assert_eq!(
        listed.iter().filter(|q| maintenance(q)).count(),
        5,
        "{listed:#?}"
    );
    assert!(e["data"]["maintenance_left_out"].is_null(), "{e:#}");
}
