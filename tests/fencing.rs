//! High availability under faults: real daemons (and a manual `run-job`) sharing one real
//! PostgreSQL, with a small TCP proxy between a node and the cluster database that the test can
//! cut (a black hole: connections stay open, nothing gets through, as in a network partition).
//!
//! The invariant: one slot never runs on two nodes at the same time. The job's `command` item
//! appends its start and end instants (and its node) to a file; intervals of different nodes
//! must not overlap. Short leases (3 s) keep each test to seconds.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use runbook::face::pgcluster::TempCluster;
use support::daemon::{Daemon, history, report};
use support::wait_until_or;

/// A TCP proxy to `target` on 127.0.0.1; `cut()` makes it a black hole for every connection,
/// open or new.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    _runtime: tokio::runtime::Runtime,
}

impl Proxy {
    fn start(target: u16) -> Proxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let pump = |mut from: tokio::net::tcp::OwnedReadHalf,
                    mut to: tokio::net::tcp::OwnedWriteHalf,
                    cut: Arc<AtomicBool>| async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if cut.load(Ordering::SeqCst) {
                    // Swallow everything from now on, keep both sockets open.
                    let _keep = (from, to);
                    std::future::pending::<()>().await;
                    return;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        };
        let flag = cut.clone();
        runtime.spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let cut = flag.clone();
                tokio::spawn(async move {
                    if cut.load(Ordering::SeqCst) {
                        let _keep = inbound;
                        std::future::pending::<()>().await;
                        return;
                    }
                    let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let (ir, iw) = inbound.into_split();
                    let (or, ow) = outbound.into_split();
                    tokio::spawn(pump(ir, ow, cut.clone()));
                    tokio::spawn(pump(or, iw, cut));
                });
            }
        });
        Proxy {
            port,
            cut,
            _runtime: runtime,
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

/// The `command` item: appends `start NODE T PID SLOT` and, when it ends or is stopped,
/// `end NODE T`.
fn interval_item(file: &Path, node: &str, seconds: u32) -> String {
    let script = format!(
        "trap 'echo \"end {node} $(date +%s.%N)\" >> \"$0\"; exit 1' TERM; \
         echo \"start {node} $(date +%s.%N) $$ $RUNBOOK_SCHEDULED_FOR\" >> \"$0\"; \
         sleep {seconds} & wait; echo \"end {node} $(date +%s.%N)\" >> \"$0\""
    );
    format!(
        "[[jobs.work.items]]\nname = \"work\"\nkind = \"command\"\nargv = [\"sh\", \"-c\", {script:?}, {file:?}]\n"
    )
}

fn node_config(dir: &Path, node: &str, db_port: u16, schedule: &str, items: &str) -> PathBuf {
    let text = format!(
        "[runbook]\nstate_dir = {state:?}\nshutdown_grace = \"1s\"\n\n\
         [cluster]\nurl = \"postgres://postgres@127.0.0.1:{db_port}/postgres\"\nnode = \"{node}\"\n\
         lease = \"3s\"\non_cluster_down = \"skip\"\n\n\
         [notify.out]\ntype = \"file\"\ndir = {out:?}\n\n\
         [jobs.work]\nschedule = \"{schedule}\"\nnotify = [\"out\"]\n\n{items}",
        state = dir.join(format!("state-{node}")),
        out = dir.join(format!("out-{node}")),
    );
    let path = dir.join(format!("{node}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// (node, start, end) per run from the intervals file; a run without an end line ends `None`.
fn intervals(file: &Path) -> Vec<(String, f64, Option<f64>)> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut open: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let t: f64 = f[2].parse().unwrap();
        match f[0] {
            "start" => {
                open.insert(f[1].to_string(), out.len());
                out.push((f[1].to_string(), t, None));
            }
            _ => {
                if let Some(i) = open.remove(f[1]) {
                    out[i].2 = Some(t);
                }
            }
        }
    }
    out
}

/// Asserts no two runs on different nodes overlap (a run with no end yet is open-ended).
fn assert_no_overlap(runs: &[(String, f64, Option<f64>)]) {
    for (i, a) in runs.iter().enumerate() {
        for b in &runs[i + 1..] {
            if a.0 == b.0 {
                continue;
            }
            let (a_end, b_end) = (a.2.unwrap_or(f64::MAX), b.2.unwrap_or(f64::MAX));
            assert!(
                a_end <= b.1 || b_end <= a.1,
                "runs on two nodes at the same time: {a:?} and {b:?} (all: {runs:?})"
            );
        }
    }
}

fn sql(pg: &TempCluster, q: &str) -> String {
    pg.psql("postgres", q, &[])
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn a_node_cut_off_from_the_cluster_database_stops_its_run_before_another_takes_over() {
    let pg = support::pg::cluster();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("intervals");
    let proxies = BTreeMap::from([
        ("node-a", Proxy::start(pg.port)),
        ("node-b", Proxy::start(pg.port)),
    ]);
    let configs: BTreeMap<&str, PathBuf> = proxies
        .iter()
        .map(|(node, p)| {
            let item = interval_item(&file, node, 6);
            (
                *node,
                node_config(dir.path(), node, p.port, "*/2 * * * * *", &item),
            )
        })
        .collect();
    let daemons: BTreeMap<&str, Daemon> = configs
        .iter()
        .map(|(n, c)| (*n, Daemon::start(c)))
        .collect();
    let logs = || {
        daemons
            .iter()
            .map(|(n, d)| format!("--- {n}:\n{}", d.log()))
            .collect::<String>()
    };

    // Wait until one node runs the job, then cut that node off the cluster database.
    wait_until_or("a run started", || !intervals(&file).is_empty(), logs);
    let victim = intervals(&file)[0].0.clone();
    let survivor = if victim == "node-a" {
        "node-b"
    } else {
        "node-a"
    };
    proxies[victim.as_str()].cut();

    // The survivor runs the job (takes the slot over, or claims a later one) ...
    wait_until_or(
        "the survivor runs the job",
        || intervals(&file).iter().any(|r| r.0 == survivor),
        logs,
    );
    // ... only after the victim stopped its run.
    let runs = intervals(&file);
    assert_no_overlap(&runs);
    assert!(
        runs[0].2.is_some(),
        "the cut-off node stopped its run: {runs:?}"
    );
    let victim_config = &configs[victim.as_str()];
    wait_until_or(
        "the cut-off node stored its report",
        || {
            history(victim_config)
                .iter()
                .any(|r| r["status"] != "running")
        },
        logs,
    );
    let run = history(victim_config)
        .into_iter()
        .find(|r| r["status"] != "running")
        .unwrap();
    let report = report(victim_config, run["run_id"].as_str().unwrap());
    let summary = report["items"][0]["summary"].as_str().unwrap();
    assert_eq!(report["items"][0]["status"], "fail");
    assert!(
        summary.starts_with("interrupted (lost the cluster lease)"),
        "{summary}"
    );
    assert!(logs().contains("LOST THE CLUSTER LEASE"), "{}", logs());
    // Every slot row of the job is held by at most one node: the survivor's claim is newer
    // than anything the victim holds.
    let victim_running = sql(
        &pg,
        &format!(
            "SELECT count(*) FROM runbook_claims WHERE node = '{victim}' AND state = 'running' AND lease_until > now()"
        ),
    );
    assert_eq!(victim_running, "0", "the cut-off node holds no live lease");
}

#[test]
fn a_manual_run_job_cannot_overlap_a_scheduled_run_on_another_node() {
    let pg = support::pg::cluster();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("intervals");
    let a = node_config(
        dir.path(),
        "node-a",
        pg.port,
        "*/2 * * * * *",
        &interval_item(&file, "node-a", 20),
    );
    let b = node_config(
        dir.path(),
        "node-b",
        pg.port,
        "0 0 1 1 *",
        &interval_item(&file, "node-b", 1),
    );
    let daemon = Daemon::start(&a);
    wait_until_or(
        "a run started",
        || !intervals(&file).is_empty(),
        || daemon.log(),
    );

    let out = support::runbook_std(&b, &["run-job", "work"])
        .env_remove("FAILPOINTS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("already running on cluster node node-a"),
        "{stderr}"
    );
    assert!(
        intervals(&file).iter().all(|r| r.0 == "node-a"),
        "nothing ran on node-b"
    );
}

#[test]
fn a_node_killed_before_marking_its_slot_done_marks_it_after_restart_and_never_reruns_it() {
    let pg = support::pg::cluster();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("intervals");
    let a = node_config(
        dir.path(),
        "node-a",
        pg.port,
        "*/2 * * * * *",
        &interval_item(&file, "node-a", 0),
    );
    let mut first = Daemon::with_failpoints(&a, "cluster-before-finish=return");
    let log = first.log.clone();
    let log = move || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until_or(
        "the daemon killed itself before finish()",
        || first.exited(),
        &log,
    );
    assert!(
        first.log().contains("failpoint cluster-before-finish"),
        "{}",
        first.log()
    );
    let slot = sql(
        &pg,
        "SELECT slot FROM runbook_claims WHERE state = 'running'",
    );
    assert!(!slot.is_empty(), "the claim was left running");

    let second = Daemon::start(&a);
    wait_until_or(
        "the left-over claim marked done",
        || {
            sql(
                &pg,
                &format!("SELECT state FROM runbook_claims WHERE slot = '{slot}'"),
            ) == "done"
        },
        || second.log(),
    );
    // Long enough for a takeover (lease 3 s + margin) if the claim had been left running.
    std::thread::sleep(Duration::from_secs(5));
    let starts: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("start"))
        .map(|l| l.split_whitespace().nth(4).unwrap_or("").to_string())
        .collect();
    let mut sorted = starts.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), starts.len(), "a slot ran twice: {starts:?}");
    // The report of the killed run's slot was stored and is delivered.
    let delivered = std::fs::read_dir(dir.path().join("out-node-a"))
        .map(|rd| rd.count())
        .unwrap_or(0);
    assert!(delivered > 0, "{}", second.log());
}

#[test]
fn a_null_where_a_value_was_expected_is_an_error_naming_the_column_not_a_panic() {
    let pg = support::pg::cluster();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                pg.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let row = client
            .query_one("SELECT NULL::bigint AS dead_tuples, 'x'::text AS name", &[])
            .await
            .unwrap();
        let null = runbook::base::pg::col::<i64>(&row, 0).unwrap_err();
        assert!(null.contains("\"dead_tuples\""), "{null}");
        let mismatch = runbook::base::pg::col::<i64>(&row, 1).unwrap_err();
        assert!(mismatch.contains("\"name\""), "{mismatch}");
        assert_eq!(runbook::base::pg::col::<Option<i64>>(&row, 0), Ok(None));
    });
}

/// Seconds since the epoch, as `date +%s.%N` writes them.
fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Starts node-a with `failpoints` and, once its run has started, node-b; returns both and the
/// intervals file.
fn victim_then_survivor(
    pg: &TempCluster,
    dir: &Path,
    failpoints: &str,
    seconds: u32,
) -> (Daemon, Daemon, PathBuf, PathBuf) {
    let file = dir.join("intervals");
    let a = node_config(
        dir,
        "node-a",
        pg.port,
        "*/2 * * * * *",
        &interval_item(&file, "node-a", seconds),
    );
    let b = node_config(
        dir,
        "node-b",
        pg.port,
        "*/2 * * * * *",
        &interval_item(&file, "node-b", seconds),
    );
    let victim = Daemon::with_failpoints(&a, failpoints);
    wait_until_or(
        "node-a runs the job",
        || !intervals(&file).is_empty(),
        || victim.log(),
    );
    let survivor = Daemon::start(&b);
    (victim, survivor, file, a)
}

#[test]
fn a_node_whose_lease_renewal_hangs_stops_its_run_before_another_takes_over() {
    let pg = support::pg::cluster();
    let dir = tempfile::tempdir().unwrap();
    let (victim, survivor, file, a) =
        victim_then_survivor(&pg, dir.path(), "cluster-renew=return(hang)", 6);
    let logs = || format!("--- a:\n{}\n--- b:\n{}", victim.log(), survivor.log());
    wait_until_or(
        "node-b runs the job",
        || intervals(&file).iter().any(|r| r.0 == "node-b"),
        logs,
    );
    let runs = intervals(&file);
    assert_no_overlap(&runs);
    assert!(runs[0].2.is_some(), "node-a stopped its run: {runs:?}");
    wait_until_or(
        "node-a stored its report",
        || history(&a).iter().any(|r| r["status"] != "running"),
        logs,
    );
    let run = history(&a)
        .into_iter()
        .find(|r| r["status"] != "running")
        .unwrap();
    let report = report(&a, run["run_id"].as_str().unwrap());
    let summary = report["items"][0]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("interrupted (lost the cluster lease)"),
        "{summary}"
    );
}

#[test]
fn a_node_killed_during_a_lease_renewal_is_taken_over_and_its_command_dies_with_it() {
    let pg = support::pg::cluster();
    let dir = tempfile::tempdir().unwrap();
    let (mut victim, survivor, file, _) =
        victim_then_survivor(&pg, dir.path(), "cluster-renew=return", 10);
    let log = victim.log.clone();
    let victim_log = move || std::fs::read_to_string(&log).unwrap_or_default();
    let mut died_at = 0.0;
    wait_until_or(
        "node-a killed at its lease renewal",
        || {
            died_at = now_secs();
            victim.exited()
        },
        &victim_log,
    );
    assert!(
        victim_log().contains("failpoint cluster-renew"),
        "{}",
        victim_log()
    );
    wait_until_or(
        "node-b runs the job",
        || intervals(&file).iter().any(|r| r.0 == "node-b"),
        || format!("{}\n--- b:\n{}", victim_log(), survivor.log()),
    );
    // node-a's command (the shell) did not outlive its daemon.
    let text = std::fs::read_to_string(&file).unwrap();
    let pid = text
        .lines()
        .find(|l| l.starts_with("start node-a"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap()
        .to_string();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit(") ").next().unwrap_or("").chars().next();
    assert!(
        stat.is_empty() || state == Some('Z'),
        "node-a's command outlived the daemon killed with SIGKILL: {stat}"
    );
    let mut runs = intervals(&file);
    assert_eq!(
        runs[0].2, None,
        "node-a's command died with the daemon (no end line): {runs:?}"
    );
    runs[0].2 = Some(died_at);
    assert_no_overlap(&runs);
}
