//! Many databases per item (SPEC 9.5), as users run them: `runbook run-job --format json` on a
//! jobs.toml whose items name a list or a glob of targets, one target per database of a real
//! throwaway PostgreSQL cluster.
//!
//! - a list and a glob run once per database; a target whose database does not exist fails
//!   alone, the item's status is the worst and its summary counts them;
//! - `max_parallel_targets` bounds the connections a run holds to one cluster, sampled from
//!   `pg_stat_activity` while two items over three databases each run (and one over all six);
//! - the checks on one database share one connection, and what one leaves on the session (a
//!   lock, an error, a timeout) does not reach the next; a slow check does not hold up the checks
//!   after it on its database for longer than 5 s; targets over a Unix socket (URL and key=value)
//!   share theirs too;
//! - two vacuum items on one database (one of them over a glob) never run on it at once;
//! - a glob that matches nothing, or an unknown name in a list, is a located config error
//!   (exit 2), and `check-config` says what each glob matched.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use runbook::face::pgcluster::TempCluster;
use serde_json::Value;
use support::{Setup, item, pg::cluster};

/// `[targets.shard-N]` for databases `shard_1`..`shard_N` of `pg` (created here), plus
/// `extra` TOML.
fn shards(pg: &TempCluster, n: usize) -> String {
    let mut toml = String::new();
    for i in 1..=n {
        pg.create_db(&format!("shard_{i}")).expect("create db");
        toml.push_str(&format!(
            "[targets.shard-{i}]\nurl = \"{}\"\nsslmode = \"disable\"\nlock_timeout = \"10s\"\n\n",
            pg.url(&format!("shard_{i}"))
        ));
    }
    toml
}

/// The `target` of each entry of an item's `targets`, in order.
fn names(item: &Value) -> Vec<String> {
    item["targets"]
        .as_array()
        .unwrap_or_else(|| panic!("no targets in {item:#}"))
        .iter()
        .map(|t| t["target"].as_str().unwrap().to_string())
        .collect()
}

fn on<'a>(item: &'a Value, target: &str) -> &'a Value {
    item["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["target"] == target))
        .unwrap_or_else(|| panic!("no target {target:?} in {item:#}"))
}

/// Samples `sql` (one number) on `pg`'s `postgres` database every few milliseconds until
/// stopped; the largest value seen.
struct Sampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicI64>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Sampler {
    fn start(pg: &TempCluster, sql: &str) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicI64::new(0));
        let (url, sql) = (pg.url("postgres"), sql.to_string());
        let (s, m) = (stop.clone(), max.clone());
        let thread = std::thread::spawn(move || {
            let mut client = postgres_client(&url);
            let mut samples = 0;
            while !s.load(Ordering::SeqCst) {
                let n: i64 = client.query_one(sql.as_str(), &[]).expect("sample").get(0);
                m.fetch_max(n, Ordering::SeqCst);
                samples += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            samples
        });
        Sampler {
            stop,
            max,
            thread: Some(thread),
        }
    }

    /// Stops sampling: (largest value, number of samples).
    fn finish(mut self) -> (i64, usize) {
        self.stop.store(true, Ordering::SeqCst);
        let samples = self.thread.take().unwrap().join().expect("sampler");
        (self.max.load(Ordering::SeqCst), samples)
    }
}

/// A blocking client on its own current-thread runtime (the sampler's thread).
fn postgres_client(url: &str) -> BlockingClient {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect the sampler");
        tokio::spawn(conn);
        client
    });
    BlockingClient { rt, client }
}

struct BlockingClient {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl BlockingClient {
    fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
        self.rt.block_on(self.client.query_one(sql, params))
    }
}

#[test]
fn a_list_and_a_glob_run_once_per_database_and_a_broken_target_fails_alone() {
    let pg = cluster();
    let mut targets = shards(&pg, 4);
    // A fifth shard whose database was never created.
    targets.push_str(&format!(
        "[targets.shard-5]\nurl = \"{}\"\nsslmode = \"disable\"\n\n",
        pg.url("no_such_db")
    ));
    targets.push_str(&format!(
        "[targets.single]\nurl = \"{}\"\nsslmode = \"disable\"\n\n",
        pg.url("shard_1")
    ));
    let setup = Setup::job_t(
        &targets,
        r#"
[[jobs.t.items]]
name = "Every shard"
kind = "sql"
target = "shard-*"
query = "SELECT current_database() <> ''"
expect = true

[[jobs.t.items]]
name = "Two shards"
kind = "sql"
target = ["shard-3", "shard-1"]
query = "SELECT 1"

[[jobs.t.items]]
name = "One database"
kind = "sql"
target = "single"
query = "SELECT 1"
"#,
    );
    let (code, report, all) = setup.run_job("t", &[]);
    assert_eq!(code, 1, "a failing target fails the run: {all}");

    let every = item(&report, "Every shard");
    assert_eq!(
        names(every),
        ["shard-1", "shard-2", "shard-3", "shard-4", "shard-5"]
    );
    assert_eq!(every["status"], "fail", "{every:#}");
    assert_eq!(every["summary"], "5 targets: 4 pass, 1 fail");
    for t in ["shard-1", "shard-2", "shard-3", "shard-4"] {
        assert_eq!(on(every, t)["status"], "pass", "{every:#}");
    }
    let broken = on(every, "shard-5");
    assert_eq!(broken["status"], "fail");
    assert!(
        broken["summary"].as_str().unwrap().contains("no_such_db"),
        "the failing target says why: {broken:#}"
    );
    // The details are grouped by target, the failing one first.
    let details: Vec<&str> = every["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(details[0].starts_with("shard-5: FAIL — "), "{details:?}");
    assert!(
        details.contains(&"shard-1: PASS — SELECT current_database() <> '' = true")
            || details.iter().any(|d| d.starts_with("shard-1: PASS — ")),
        "{details:?}"
    );
    assert_eq!(every["data"]["targets"], 5);
    assert_eq!(every["data"]["fail"], 1);

    let two = item(&report, "Two shards");
    assert_eq!(names(two), ["shard-3", "shard-1"], "a list keeps its order");
    assert_eq!(two["status"], "pass");
    assert_eq!(two["summary"], "2 targets: 2 pass");

    // A single-target item's JSON is as before: no `targets`.
    let one = item(&report, "One database");
    assert_eq!(one["status"], "pass");
    assert!(one.get("targets").is_none(), "{one:#}");

    // The text report groups by target too.
    let out = setup
        .runbook(&["run-job", "t", "--no-notify"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Every shard — 5 targets: 4 pass, 1 fail"),
        "{text}"
    );
    assert!(text.contains("shard-5: FAIL — "), "{text}");
}

#[test]
fn max_parallel_targets_bounds_the_connections_a_run_holds_to_one_cluster() {
    let pg = cluster();
    let targets = shards(&pg, 6);
    // Two items over three databases each, each query holding its connection a while: with
    // four items allowed at once and two targets per item, only the per-cluster bound keeps the
    // run at two connections.
    let setup = Setup::builder()
        .runbook("max_parallel_items = 4")
        .runbook("max_parallel_targets = 2")
        .body(&targets)
        .job_t(
            r#"
[[jobs.t.items]]
name = "Low shards"
kind = "sql"
target = ["shard-1", "shard-2", "shard-3"]
query = "SELECT pg_sleep(0.4) IS NULL"

[[jobs.t.items]]
name = "High shards"
kind = "sql"
target = ["shard-4", "shard-5", "shard-6"]
query = "SELECT pg_sleep(0.4) IS NULL"

[[jobs.t.items]]
name = "Quick, everywhere"
kind = "sql"
target = "shard-*"
query = "SELECT 1"
"#,
        )
        .build();
    let sampler = Sampler::start(
        &pg,
        "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE 'shard\\_%'",
    );
    let (code, report, all) = setup.run_job("t", &[]);
    let (peak, samples) = sampler.finish();
    assert_eq!(code, 0, "{all}");
    assert_eq!(item(&report, "Low shards")["summary"], "3 targets: 3 pass");
    assert_eq!(item(&report, "High shards")["summary"], "3 targets: 3 pass");
    assert_eq!(
        item(&report, "Quick, everywhere")["summary"],
        "6 targets: 6 pass"
    );
    assert!(samples > 10, "the sampler ran ({samples} samples)");
    assert_eq!(
        peak, 2,
        "at most max_parallel_targets connections to the cluster, and the targets did run side by side"
    );
}

#[test]
fn checks_on_one_database_share_one_connection_and_leave_nothing_on_it() {
    let pg = cluster();
    let targets = shards(&pg, 2);
    // Each check reports the server process it ran on (`data.value`). The first takes a
    // session-level advisory lock, which a rollback does not release; the third must not find
    // it. A check that fails mid-query (division by zero) and one that runs past its timeout
    // must not spoil the connection for the checks after them (a check stopped at its timeout
    // may give its connection up: the next one then opens another).
    let setup = Setup::builder()
        .runbook("max_parallel_targets = 2")
        .body(&targets)
        .job_t(
            r#"
[[jobs.t.items]]
name = "Takes a lock"
kind = "sql"
target = "shard-*"
query = "SELECT pg_backend_pid() FROM (SELECT pg_advisory_lock(42)) AS l"

[[jobs.t.items]]
name = "Breaks"
kind = "sql"
target = "shard-*"
query = "SELECT 1 / 0"

[[jobs.t.items]]
name = "Same process"
kind = "sql"
target = "shard-*"
query = "SELECT pg_backend_pid()"

[[jobs.t.items]]
name = "Runs past its timeout"
kind = "sql"
target = "shard-1"
timeout = "1s"
query = "SELECT pg_sleep(3) IS NULL"

[[jobs.t.items]]
name = "No lock left"
kind = "sql"
target = "shard-*"
query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
max = 0
"#,
        )
        .build();
    let (code, report, all) = setup.run_job("t", &[]);
    assert_eq!(code, 1, "two checks fail: {all}");
    let pid = |name: &str, target: &str| {
        on(item(&report, name), target)["data"]["value"]
            .as_f64()
            .unwrap_or_else(|| panic!("{name} on {target}: no pid in {all}"))
    };
    for t in ["shard-1", "shard-2"] {
        assert_eq!(
            pid("Takes a lock", t),
            pid("Same process", t),
            "the checks on {t} ran on one connection: {all}"
        );
        assert_eq!(on(item(&report, "Breaks"), t)["status"], "fail", "{all}");
        assert_eq!(
            on(item(&report, "No lock left"), t)["status"],
            "pass",
            "{all}"
        );
    }
    assert_ne!(
        pid("Same process", "shard-1"),
        pid("Same process", "shard-2")
    );
    let late = item(&report, "Runs past its timeout");
    assert_eq!(late["status"], "fail", "{all}");
    assert_eq!(
        item(&report, "Same process")["summary"],
        "2 targets: 2 pass",
        "{all}"
    );
}

#[test]
fn checks_over_a_unix_socket_share_their_connection_too() {
    let pg = cluster();
    let socket_dir = pg
        .data
        .parent()
        .expect("the cluster's folder holds its socket");
    // Both forms a local ops host uses: a URL with the socket folder as host, and key=value.
    let targets = format!(
        "[targets.url]\nurl = \"postgresql://postgres@{}:{}/postgres\"\nsslmode = \"prefer\"\n\n\
         [targets.kv]\nurl = \"host={} port={} user=postgres dbname=postgres\"\nsslmode = \"disable\"\n\n",
        socket_dir.display().to_string().replace('/', "%2F"),
        pg.port,
        socket_dir.display(),
        pg.port
    );
    let setup = Setup::builder()
        .body(&targets)
        .job_t(
            r#"
[[jobs.t.items]]
name = "Over the socket"
kind = "sql"
target = ["url", "kv"]
query = "SELECT client_addr IS NULL FROM pg_stat_activity WHERE pid = pg_backend_pid()"
expect = true

[[jobs.t.items]]
name = "First"
kind = "sql"
target = ["url", "kv"]
query = "SELECT pg_backend_pid()"

[[jobs.t.items]]
name = "Second"
kind = "sql"
target = ["url", "kv"]
query = "SELECT pg_backend_pid()"
"#,
        )
        .build();
    let (code, report, all) = setup.run_job("t", &[]);
    assert_eq!(code, 0, "{all}");
    assert_eq!(
        item(&report, "Over the socket")["summary"],
        "2 targets: 2 pass",
        "{all}"
    );
    for t in ["url", "kv"] {
        assert_eq!(
            on(item(&report, "First"), t)["data"]["value"],
            on(item(&report, "Second"), t)["data"]["value"],
            "{t}: one connection: {all}"
        );
    }
}

#[test]
fn a_slow_check_keeps_its_connection_and_the_checks_after_it_go_on_with_another() {
    let pg = cluster();
    let targets = shards(&pg, 1);
    // "Slow" holds the shared connection for 8 s, longer than a check may hold it before the
    // next ones go on without it (5 s): "While slow is running" must find it still running
    // (on another server process), and the check after that shares the new connection.
    let setup = Setup::builder()
        .body(&targets)
        .job_t(
            r#"
[[jobs.t.items]]
name = "First"
kind = "sql"
target = "shard-1"
query = "SELECT pg_backend_pid()"

[[jobs.t.items]]
name = "Slow"
kind = "sql"
target = "shard-1"
query = "SELECT pg_sleep(8) IS NULL"

[[jobs.t.items]]
name = "While slow is running"
kind = "sql"
target = "shard-1"
query = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = 'SELECT pg_sleep(8) IS NULL' AND pid <> pg_backend_pid()"
min = 1

[[jobs.t.items]]
name = "Last"
kind = "sql"
target = "shard-1"
query = "SELECT pg_backend_pid()"
"#,
        )
        .build();
    let (code, report, all) = setup.run_job("t", &[]);
    assert_eq!(code, 0, "{all}");
    for name in ["First", "Slow", "While slow is running", "Last"] {
        assert_eq!(item(&report, name)["status"], "pass", "{name}: {all}");
    }
    assert_ne!(
        item(&report, "First")["data"]["value"],
        item(&report, "Last")["data"]["value"],
        "the checks after the slow one ran on another connection: {all}"
    );
}

#[test]
fn two_vacuum_items_never_run_on_one_database_at_once() {
    let pg = cluster();
    let targets = shards(&pg, 3);
    for i in 1..=3 {
        pg.psql(
            &format!("shard_{i}"),
            "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g",
            &[],
        )
        .expect("create table");
    }
    let setup = Setup::job_t(
        &targets,
        r#"
[[jobs.t.items]]
name = "Vacuum every shard"
kind = "vacuum"
target = "shard-*"
tables = ["t"]
parallel = 1

[[jobs.t.items]]
name = "Vacuum shard 2"
kind = "vacuum"
target = "shard-2"
tables = ["t"]
parallel = 1
"#,
    );
    // A session holds shard_2's table for a while: a vacuum there waits for it, and a second
    // one started beside it would be seen waiting too.
    let holder = support::pg::Holder::start_in(
        &pg,
        "shard_2",
        "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(2); COMMIT;\n",
    );
    let mut granted = false;
    for _ in 0..200 {
        let n = pg
            .psql(
                "shard_2",
                "SELECT count(*) FROM pg_locks WHERE relation = 't'::regclass AND granted",
                &[],
            )
            .unwrap();
        if n.trim() == "1" {
            granted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(granted, "the holder took the lock");
    let sampler = Sampler::start(
        &pg,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'shard_2' AND query ILIKE 'VACUUM%' AND state = 'active'",
    );
    let (code, report, all) = setup.run_job("t", &[]);
    let (peak, _) = sampler.finish();
    drop(holder);
    assert_eq!(code, 0, "{all}");
    assert_eq!(
        item(&report, "Vacuum every shard")["summary"],
        "3 targets: 3 pass"
    );
    assert_eq!(item(&report, "Vacuum shard 2")["status"], "pass");
    assert_eq!(
        peak, 1,
        "one VACUUM at a time on shard_2 (and it was seen waiting)"
    );
}

#[test]
fn a_glob_matching_nothing_or_an_unknown_name_is_a_located_config_error() {
    let targets = "[targets.shard-1]\nurl = \"postgres://u@127.0.0.1:1/a\"\n\n[targets.shard-2]\nurl = \"postgres://u@127.0.0.1:1/b\"\n\n";
    let setup = Setup::raw(&format!(
        "{targets}[jobs.t]\n\n[[jobs.t.items]]\nname = \"glob\"\nkind = \"sql\"\ntarget = \"db-*\"\nquery = \"SELECT 1\"\n\n[[jobs.t.items]]\nname = \"list\"\nkind = \"sql\"\ntarget = [\"shard-1\", \"nope\"]\nquery = \"SELECT 1\"\n"
    ));
    let out = setup.runbook(&["check-config"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("jobs.toml:12:1"), "{err}");
    assert!(
        err.contains(
            "item \"glob\": target glob \"db-*\" matches no target (defined: shard-1, shard-2)"
        ),
        "{err}"
    );
    assert!(err.contains("jobs.toml:18:1"), "{err}");
    assert!(
        err.contains("item \"list\": unknown target \"nope\""),
        "{err}"
    );

    // Fixed, check-config says what each glob and list matched.
    setup.write(
        "jobs.toml",
        &format!(
            "{targets}[jobs.t]\n\n[[jobs.t.items]]\nname = \"glob\"\nkind = \"sql\"\ntarget = \"shard-*\"\nquery = \"SELECT 1\"\n"
        ),
    );
    let out = setup.runbook(&["check-config"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("item \"glob\": target \"shard-*\" → 2 targets: shard-1, shard-2"),
        "{text}"
    );
}
