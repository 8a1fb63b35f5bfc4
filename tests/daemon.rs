//! The daemon as users run it: a real `runbook daemon` process with 2-second schedules, driven
//! by signals, observed through `history`, `report`, `/metrics` and (for high availability) the
//! shared PostgreSQL. No timing assertions: every wait is generous and only counts and states
//! are asserted.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use runbook::face::pgcluster::TempCluster;
use serde_json::Value;
use support::daemon::{Daemon, history, report};
use support::{free_port, wait_until, wait_until_or};

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn finished(config: &Path) -> Vec<Value> {
    history(config)
        .into_iter()
        .filter(|r| r["status"] != "running")
        .collect()
}

/// A plain HTTP/1.0 GET; returns (status code, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    let (code, _, body) = support::http::get(port, path, &[]).expect("the daemon answers");
    (code, body)
}

fn tick_config(dir: &Path, extra: &str) -> String {
    format!(
        "[runbook]\nstate_dir = \"{state}\"\nshutdown_grace = \"1s\"\n{extra}\n\
         [jobs.tick]\ndescription = \"every two seconds\"\nschedule = \"*/2 * * * * *\"\n\
         [[jobs.tick.items]]\nname = \"Look at the dashboards\"\nkind = \"manual\"\n",
        state = dir.join("state").display()
    )
}

#[test]
fn scheduled_runs_happen_and_metrics_parse() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(
        dir.path(),
        "jobs.toml",
        &tick_config(
            dir.path(),
            &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"),
        ),
    );
    let mut daemon = Daemon::start(&config);

    wait_until("three scheduled runs", || finished(&config).len() >= 3);
    for run in finished(&config) {
        assert_eq!(run["trigger"], "schedule", "{run}");
        assert_eq!(run["status"], "pass", "{run}");
        assert!(
            run["scheduled_for"].is_string(),
            "a scheduled run says which slot it ran: {run}"
        );
    }

    let (code, body) = http_get(port, "/metrics");
    assert_eq!(code, 200);
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("metrics parse as Prometheus text");
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert!(
        value(
            "runbook_job_runs_total",
            &[("job_name", "tick"), ("status", "pass")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{body}"
    );
    assert!(
        value(
            "runbook_job_last_run_timestamp_seconds",
            &[("job_name", "tick")]
        )
        .unwrap_or(0.0)
            > 1.6e9,
        "{body}"
    );
    assert!(
        value(
            "runbook_job_last_success_timestamp_seconds",
            &[("job_name", "tick")]
        )
        .unwrap_or(0.0)
            > 1.6e9,
        "{body}"
    );
    assert!(
        value(
            "runbook_job_next_run_timestamp_seconds",
            &[("job_name", "tick")]
        )
        .unwrap_or(0.0)
            > 1.6e9,
        "{body}"
    );
    assert!(
        value("runbook_job_duration_seconds", &[("job_name", "tick")]).is_some(),
        "{body}"
    );
    assert_eq!(
        value(
            "runbook_item_status",
            &[("job_name", "tick"), ("item", "Look at the dashboards")]
        ),
        Some(4.0),
        "manual = 4: {body}"
    );
    assert_eq!(value("runbook_outbox_pending", &[]), Some(0.0), "{body}");

    assert_eq!(http_get(port, "/healthz").0, 200);
    let (code, page) = http_get(port, "/");
    assert_eq!(code, 200);
    assert!(
        page.contains("tick")
            && page.contains("every two seconds")
            && page.contains("href=\"runs/"),
        "{page}"
    );
    let run_id = finished(&config)[0]["run_id"].as_str().unwrap().to_string();
    let (code, html) = http_get(port, &format!("/runs/{run_id}"));
    assert_eq!(code, 200);
    assert!(html.contains("Look at the dashboards"));

    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(), Some(0), "log:\n{}", daemon.log());
}

/// A run by hand (`runbook run-job` with the daemon's config, so its state) shows in the
/// daemon's `/metrics`: its success clears "no success in time". A dry run does not count.
#[test]
fn a_manual_run_shows_in_the_daemons_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = format!(
        "[runbook]\nstate_dir = \"{state}\"\nshutdown_grace = \"1s\"\n\
         [server]\nlisten = \"127.0.0.1:{port}\"\n\
         [jobs.byhand]\ndescription = \"run by hand only\"\n\
         [[jobs.byhand.items]]\nname = \"Look at the dashboards\"\nkind = \"manual\"\n",
        state = dir.path().join("state").display()
    );
    let config = write_config(dir.path(), "jobs.toml", &text);
    let mut daemon = Daemon::start(&config);
    let series = "runbook_job_last_success_timestamp_seconds{job_name=\"byhand\"}";
    wait_until_or(
        "the daemon serves /metrics",
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        || daemon.log(),
    );
    let run = |extra: &[&str]| {
        let out = support::runbook_std(&config, &["run-job", "byhand", "--no-notify"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
    };
    run(&["--dry-run"]);
    let body = http_get(port, "/metrics").1;
    assert!(!body.contains(series), "a dry run is no success: {body}");

    run(&[]);
    let body = http_get(port, "/metrics").1;
    assert!(body.contains(series), "{body}");
    assert!(
        body.contains("runbook_item_status{job_name=\"byhand\",item=\"Look at the dashboards\"} 4"),
        "{body}"
    );

    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(), Some(0), "log:\n{}", daemon.log());
}

#[test]
fn sigterm_mid_run_interrupts_items_kills_children_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let text = format!(
        "[runbook]\nstate_dir = \"{state}\"\nshutdown_grace = \"1s\"\n\
         [jobs.slow]\nschedule = \"*/2 * * * * *\"\n\
         [[jobs.slow.items]]\nname = \"long command\"\nkind = \"command\"\nargv = [\"sh\", \"-c\", \"echo $$ > {pid}; exec sleep 30\"]\n",
        state = dir.path().join("state").display(),
        pid = pidfile.display()
    );
    let config = write_config(dir.path(), "jobs.toml", &text);
    let mut daemon = Daemon::start(&config);
    wait_until("a run in progress with its child started", || {
        history(&config).iter().any(|r| r["status"] == "running")
            && std::fs::read_to_string(&pidfile).is_ok_and(|p| !p.trim().is_empty())
    });
    let child: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(), Some(0), "log:\n{}", daemon.log());

    let runs = history(&config);
    assert_eq!(
        runs.len(),
        1,
        "one run (the later slots were skipped, not run twice): {runs:?}"
    );
    assert_eq!(runs[0]["status"], "fail");
    let r = report(&config, runs[0]["run_id"].as_str().unwrap());
    let item = &r["items"][0];
    assert_eq!(item["status"], "fail");
    assert!(
        item["summary"].as_str().unwrap().contains("interrupted"),
        "{item}"
    );
    // The child process was killed with its process group.
    assert_eq!(
        kill(Pid::from_raw(child), None),
        Err(nix::errno::Errno::ESRCH),
        "sleep {child} still runs"
    );
}

#[test]
fn sighup_with_a_broken_config_keeps_the_old_one_and_a_good_one_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = format!("[server]\nlisten = \"127.0.0.1:{port}\"\n");
    let config = write_config(dir.path(), "jobs.toml", &tick_config(dir.path(), &server));
    // `history` reads the same state through a config that stays valid.
    let view = write_config(dir.path(), "view.toml", &tick_config(dir.path(), ""));
    let mut daemon = Daemon::start(&config);
    wait_until_or(
        "a first run",
        || !finished(&view).is_empty(),
        || daemon.log(),
    );

    std::fs::write(&config, "[jobs.tick]\nschedule = \"not a cron\"\n").unwrap();
    daemon.signal(Signal::SIGHUP);
    wait_until("the reload error in the log", || {
        daemon.log().contains("keeping the old one")
    });
    let before = finished(&view).len();
    wait_until("runs continue with the old configuration", || {
        finished(&view).len() >= before + 2
    });
    assert!(daemon.alive());
    let metrics = || http_get(port, "/metrics").1;
    let body = metrics();
    assert!(
        body.contains("runbook_config_last_reload_successful 0"),
        "a failed reload shows in the metrics: {body}"
    );
    assert!(
        body.contains("runbook_job_last_run_timestamp_seconds{job_name=\"tick\"}"),
        "{body}"
    );

    let good = tick_config(dir.path(), &server)
        .replace("[jobs.tick]", "[jobs.tock]")
        .replace("jobs.tick.items", "jobs.tock.items");
    std::fs::write(&config, good).unwrap();
    daemon.signal(Signal::SIGHUP);
    wait_until("runs of the new job", || {
        finished(&view).iter().any(|r| r["job"] == "tock")
    });
    let body = metrics();
    assert!(
        body.contains("runbook_config_last_reload_successful 1"),
        "{body}"
    );
    assert!(
        body.contains("runbook_job_last_run_timestamp_seconds{job_name=\"tock\"}"),
        "{body}"
    );
    // The removed job's series are gone, so its alerts stop.
    assert!(
        !body.contains("\"tick\""),
        "series of the removed job remain: {body}"
    );

    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(), Some(0));
}

#[test]
fn missed_slot_within_window_runs_once_after_restart_and_skip_only_records() {
    use chrono::{Timelike, Utc};
    let dir = tempfile::tempdir().unwrap();
    // A daily slot five minutes ago (UTC), and the daemon "down" for the last three days.
    let slot = (Utc::now() - chrono::TimeDelta::minutes(5))
        .with_nanosecond(0)
        .unwrap();
    let cron = format!("{} {} {} * * *", slot.second(), slot.minute(), slot.hour());
    let text = format!(
        "[runbook]\nstate_dir = \"{state}\"\n\
         [jobs.daily]\nschedule = \"{cron}\"\ncatch_up = \"once\"\ncatch_up_within = \"1h\"\n\
         [[jobs.daily.items]]\nname = \"check\"\nkind = \"manual\"\n\
         [jobs.lazy]\nschedule = \"{cron}\"\ncatch_up = \"skip\"\n\
         [[jobs.lazy.items]]\nname = \"check\"\nkind = \"manual\"\n",
        state = dir.path().join("state").display()
    );
    let config = write_config(dir.path(), "jobs.toml", &text);
    let store = runbook::store::Store::open(&dir.path().join("state"), "test").unwrap();
    for job in ["daily", "lazy"] {
        store
            .record_slot(job, &(slot - chrono::TimeDelta::days(3)), "done", None)
            .unwrap();
    }
    drop(store);

    let mut daemon = Daemon::start(&config);
    wait_until("the catch-up run", || !finished(&config).is_empty());
    wait_until("the skip job's slots recorded", || {
        let store = runbook::store::Store::open(&dir.path().join("state"), "test").unwrap();
        store
            .slots_in_state_since("lazy", "missed", None)
            .unwrap()
            .len()
            == 3
    });
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(), Some(0));

    let runs = finished(&config);
    assert_eq!(
        runs.len(),
        1,
        "only the newest missed slot of `daily` runs: {runs:?}"
    );
    assert_eq!(runs[0]["job"], "daily");
    assert_eq!(runs[0]["trigger"], "catch_up");
    let r = report(&config, runs[0]["run_id"].as_str().unwrap());
    assert_eq!(
        r["missed"].as_array().unwrap().len(),
        3,
        "all three missed slots are listed: {r}"
    );

    // A restart does not run it again.
    let mut daemon = Daemon::start(&config);
    wait_until("the daemon to start", || {
        daemon.log().contains("daemon started")
    });
    std::thread::sleep(Duration::from_secs(2));
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(), Some(0));
    assert_eq!(finished(&config).len(), 1);
}

fn cluster_config(dir: &Path, pg: &TempCluster, node: &str, lease: &str, item: &str) -> PathBuf {
    let text = format!(
        "[runbook]\nstate_dir = \"{state}\"\nshutdown_grace = \"1s\"\n\
         [cluster]\nurl = \"{url}\"\nnode = \"{node}\"\nlease = \"{lease}\"\n\
         [jobs.tick]\nschedule = \"*/2 * * * * *\"\n\
         [[jobs.tick.items]]\n{item}\n",
        state = dir.join(format!("state-{node}")).display(),
        url = pg.url("postgres"),
    );
    write_config(dir, &format!("{node}.toml"), &text)
}

fn claims(pg: &TempCluster, sql: &str) -> String {
    pg.psql("postgres", sql, &[])
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn two_daemons_sharing_a_cluster_run_every_slot_exactly_once() {
    let pg = support::pg::cluster();
    let dir = tempfile::tempdir().unwrap();
    let item = "name = \"check\"\nkind = \"manual\"";
    let a = cluster_config(dir.path(), &pg, "node-a", "10s", item);
    let b = cluster_config(dir.path(), &pg, "node-b", "10s", item);
    let mut da = Daemon::start(&a);
    let mut db = Daemon::start(&b);
    wait_until("eight runs across both nodes", || {
        finished(&a).len() + finished(&b).len() >= 8
    });
    da.signal(Signal::SIGTERM);
    db.signal(Signal::SIGTERM);
    assert_eq!(da.wait_exit(), Some(0), "{}", da.log());
    assert_eq!(db.wait_exit(), Some(0), "{}", db.log());

    let mut per_slot: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (node, cfg) in [("node-a", &a), ("node-b", &b)] {
        for run in finished(cfg) {
            per_slot
                .entry(run["scheduled_for"].as_str().unwrap().to_string())
                .or_default()
                .push(node.to_string());
        }
    }
    let twice: Vec<_> = per_slot
        .iter()
        .filter(|(_, nodes)| nodes.len() > 1)
        .collect();
    assert!(twice.is_empty(), "slots run more than once: {twice:?}");
    // Every slot run is claimed by exactly the node that ran it, and marked done.
    let done: usize = claims(
        &pg,
        "SELECT count(*) FROM runbook_claims WHERE job = 'tick' AND state = 'done'",
    )
    .parse()
    .unwrap();
    assert_eq!(done, per_slot.len());
    // No slot between the first and the last was left out.
    let slots: Vec<chrono::DateTime<chrono::FixedOffset>> = per_slot
        .keys()
        .map(|s| chrono::DateTime::parse_from_rfc3339(s).unwrap())
        .collect();
    let span = (*slots.last().unwrap() - slots[0]).num_seconds();
    assert_eq!(
        span / 2 + 1,
        slots.len() as i64,
        "every slot between the first and the last ran: {slots:?}"
    );
}

#[test]
fn when_a_node_is_killed_mid_run_the_other_takes_over_the_next_slots() {
    let pg = support::pg::cluster();
    let dir = tempfile::tempdir().unwrap();
    let item = "name = \"work\"\nkind = \"command\"\nargv = [\"sleep\", \"3\"]";
    let a = cluster_config(dir.path(), &pg, "node-a", "3s", item);
    let b = cluster_config(dir.path(), &pg, "node-b", "3s", item);
    let mut daemons =
        BTreeMap::from([("node-a", Daemon::start(&a)), ("node-b", Daemon::start(&b))]);

    let mut victim = String::new();
    wait_until("a slot running on one node", || {
        victim = claims(
            &pg,
            "SELECT node FROM runbook_claims WHERE state = 'running' ORDER BY slot DESC LIMIT 1",
        );
        !victim.is_empty()
    });
    let survivor = if victim == "node-a" {
        "node-b"
    } else {
        "node-a"
    };
    daemons
        .get(victim.as_str())
        .unwrap()
        .signal(Signal::SIGKILL);
    let killed_at = claims(&pg, "SELECT now()");
    let done_after = |node: &str| -> usize {
        claims(&pg, &format!("SELECT count(*) FROM runbook_claims WHERE node = '{node}' AND state = 'done' AND claimed_at > '{killed_at}'"))
            .parse()
            .unwrap_or(0)
    };
    wait_until("two slots run by the survivor after the kill", || {
        done_after(survivor) >= 2
    });
    assert_eq!(
        claims(
            &pg,
            &format!(
                "SELECT count(*) FROM runbook_claims WHERE node = '{victim}' AND claimed_at > '{killed_at}'"
            )
        ),
        "0",
        "the dead node claimed nothing after it was killed"
    );
    let mut s = daemons.remove(survivor).unwrap();
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(), Some(0), "{}", s.log());
}
