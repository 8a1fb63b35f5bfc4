//! `runbook demo`: the zero-setup tour (SPEC section 8).
//!
//! It needs only PostgreSQL's server binaries. It starts a throwaway cluster in a temporary
//! folder (as the `postgres` user when run as root), loads a small trading database, writes a
//! real `pg_dump` backup with its `.sha256`, and then runs **the shipped `jobs.toml`** (compiled
//! into the binary) against it: the same jobs and items, with only the addresses rewritten:
//! the database target points at the throwaway cluster, backup and log paths at the temporary
//! folder, and the HTTP endpoints of the trading service and its monitoring stack (actuator,
//! Prometheus, Alertmanager, Grafana) at a small stand-in server that answers with responses
//! shaped like the real ones. E-mail and Slack are replaced by the `file` notifier, so every
//! report is also written as HTML. Everything is stopped and removed at the end, and on Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::config::Config;
use crate::face::pgcluster::TempCluster;
use crate::runner::RunOptions;
use crate::store::Store;

/// The shipped configuration, as in the repository.
pub const SHIPPED_JOBS: &str = include_str!("../../jobs.toml");
const FIXTURE: &str = include_str!("../../demo/fixture.sql");
const INDEXES: &str = include_str!("../../sql/indexes.sql");

pub async fn run(keep: bool) -> ExitCode {
    tokio::select! {
        r = tour(keep) => match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("runbook demo: {e:#}");
                ExitCode::from(1)
            }
        },
        _ = tokio::signal::ctrl_c() => {
            // Dropping the tour future drops the cluster, which stops the server and removes
            // the folder.
            eprintln!("\nrunbook demo: interrupted; stopping the throwaway cluster and cleaning up");
            ExitCode::from(130)
        }
    }
}

fn say(msg: impl AsRef<str>) {
    eprintln!("==> {}", msg.as_ref());
}

async fn tour(keep: bool) -> Result<()> {
    say("starting a throwaway PostgreSQL cluster (initdb + pg_ctl in a temporary folder)");
    let cluster = tokio::task::spawn_blocking(TempCluster::start).await??;
    let work = tempfile::Builder::new().prefix("runbook-demo-").tempdir()?;
    let root = work.path().to_path_buf();
    say(format!(
        "cluster listening on 127.0.0.1:{}, data in {} (binaries from {})",
        cluster.port,
        cluster.data.display(),
        cluster.bin.display()
    ));

    say(
        "loading the trading database (orders, positions, transactions, 20 reference tables, with churn)",
    );
    cluster.create_db("trademaster_trading")?;
    cluster.psql("trademaster_trading", FIXTURE, &[])?;

    let backups = root.join("backups/full");
    std::fs::create_dir_all(&backups)?;
    let dump = backups.join(format!(
        "trademaster_trading-{}.dump",
        chrono::Utc::now().format("%Y%m%d-%H%M")
    ));
    say(format!(
        "writing a real backup with pg_dump -Fc: {}",
        dump.display()
    ));
    let out = std::process::Command::new(cluster.tool("pg_dump"))
        .args([
            "-Fc",
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "trademaster_trading",
            "-f",
        ])
        .arg(&dump)
        .output()
        .context("cannot run pg_dump")?;
    anyhow::ensure!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    write_sha256_sidecar(&dump)?;
    // The backup was "finished" a few minutes ago: older than the backup item's settle time.
    let past = std::time::SystemTime::now() - std::time::Duration::from_secs(300);
    for f in [
        dump.clone(),
        PathBuf::from(format!("{}.sha256", dump.display())),
    ] {
        std::fs::File::options()
            .write(true)
            .open(&f)?
            .set_modified(past)?;
    }

    let logs = root.join("logs");
    std::fs::create_dir_all(&logs)?;
    std::fs::write(
        logs.join("trading-service.log"),
        "2026-11-24 09:58:01 INFO  OrderService - order 1842 placed\n\
         2026-11-24 09:58:02 ERROR BrokerClient - timeout calling Zerodha after 3000 ms (order 1843)\n\
         2026-11-24 09:58:05 ERROR BrokerClient - timeout calling Zerodha after 3000 ms (order 1851)\n\
         2026-11-24 09:59:00 INFO  OrderService - order 1852 filled\n",
    )?;
    std::fs::write(
        logs.join("postgresql-15-main.log"),
        "2026-11-24 04:00:00 UTC [311] LOG:  checkpoint complete\n",
    )?;
    let scripts = root.join("scripts/disaster-recovery");
    std::fs::create_dir_all(&scripts)?;
    let dr = scripts.join("test-application-rollback.sh");
    std::fs::write(
        &dr,
        "#!/bin/sh\necho \"rollback test: mode=$1 $2\"\necho \"blue/green switch back: planned, not executed (dry run)\"\necho \"health check of the previous release: OK\"\n",
    )?;
    std::fs::set_permissions(&dr, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::create_dir_all(root.join("sql"))?;
    std::fs::write(root.join("sql/indexes.sql"), INDEXES)?;

    let stub = stand_in::start().await?;
    say(format!(
        "stand-in for the trading service, Prometheus, Alertmanager and Grafana on {stub}"
    ));

    let config_path = root.join("jobs.toml");
    let text = demo_config(&cluster, &root, &stub)?;
    std::fs::write(&config_path, text)?;
    let config = Config::load(&config_path)
        .map_err(|e| anyhow::anyhow!("the demo configuration is invalid:\n{e}"))?;
    let store = Store::open(&config.state_dir, &config.hostname)?;

    let mut reports = Vec::new();
    for job in ["daily", "weekly", "monthly", "monthly-dr"] {
        let Some(job) = config.jobs.get(job) else {
            continue;
        };
        say(format!(
            "runbook run-job {}   ({} items)",
            job.name,
            job.config.items.len()
        ));
        let report = crate::runner::run_job(&config, &store, job, RunOptions::manual())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("{}", crate::report::text::render(&report));
        reports.push(report);
    }

    let sent = root.join("sent");
    say("summary");
    for r in &reports {
        println!(
            "  {:<11} {:<5} {}",
            r.job,
            r.status.as_str().to_uppercase(),
            r.counts_phrase()
        );
    }
    let html_dir = if keep {
        sent.clone()
    } else {
        std::env::temp_dir().join(format!(
            "runbook-demo-reports-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S")
        ))
    };
    if !keep {
        std::fs::create_dir_all(&html_dir)?;
        for e in std::fs::read_dir(&sent)?.flatten() {
            if e.path().extension().is_some_and(|x| x == "html") {
                std::fs::copy(e.path(), html_dir.join(e.file_name()))?;
            }
        }
    }
    println!("\nHTML reports (as e-mailed): {}", html_dir.display());
    println!(
        "Some items fail or warn on purpose: that is what a report looks like when something needs a person."
    );
    println!("Try next: read README.md, then `runbook check-config` on your own jobs.toml.");
    drop(store);
    drop(cluster);
    if keep {
        let kept = work.keep();
        say(format!("kept {} (cluster stopped)", kept.display()));
    } else {
        say("stopped the cluster and removed the temporary folder");
    }
    Ok(())
}

fn write_sha256_sidecar(file: &Path) -> Result<()> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut f = std::fs::File::open(file)?;
    std::io::copy(&mut f, &mut hasher)?;
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    std::fs::write(
        format!("{}.sha256", file.display()),
        format!("{:x}  {name}\n", hasher.finalize()),
    )?;
    Ok(())
}

/// The shipped jobs.toml with addresses rewritten for the demo.
fn demo_config(cluster: &TempCluster, root: &Path, stub: &str) -> Result<String> {
    let text = SHIPPED_JOBS
        .replace("http://localhost:8080", stub)
        .replace("http://localhost:9090", stub)
        .replace("http://localhost:9093", stub)
        .replace("http://localhost:3000", stub)
        .replace(
            "/var/backups/postgresql/full",
            &root.join("backups/full").display().to_string(),
        )
        .replace(
            "/var/log/trademaster/trading-service.log",
            &root.join("logs/trading-service.log").display().to_string(),
        )
        .replace(
            "/var/log/postgresql/postgresql-15-main.log",
            &root
                .join("logs/postgresql-15-main.log")
                .display()
                .to_string(),
        )
        .replace(
            "/var/lib/runbook/sent",
            &root.join("sent").display().to_string(),
        );
    let mut doc: toml::Table = text
        .parse()
        .context("the shipped jobs.toml does not parse")?;
    let runbook = doc
        .entry("runbook")
        .or_insert(toml::Value::Table(Default::default()));
    if let Some(t) = runbook.as_table_mut() {
        t.insert(
            "state_dir".into(),
            toml::Value::String(root.join("state").display().to_string()),
        );
        t.insert("hostname".into(), toml::Value::String("demo".into()));
    }
    if let Some(t) = doc
        .get_mut("targets")
        .and_then(|t| t.get_mut("trading"))
        .and_then(|t| t.as_table_mut())
    {
        t.insert(
            "url".into(),
            toml::Value::String(cluster.url("trademaster_trading")),
        );
        t.remove("password");
        t.insert("sslmode".into(), toml::Value::String("disable".into()));
    }
    // No mail server or Slack workspace here: keep only the file archive.
    if let Some(n) = doc.get_mut("notify").and_then(|n| n.as_table_mut()) {
        n.retain(|_, v| v.get("type").and_then(|t| t.as_str()) == Some("file"));
    }
    if let Some(jobs) = doc.get_mut("jobs").and_then(|j| j.as_table_mut()) {
        for (_, job) in jobs.iter_mut() {
            let Some(job) = job.as_table_mut() else {
                continue;
            };
            job.remove("notify");
            let Some(items) = job.get_mut("items").and_then(|i| i.as_array_mut()) else {
                continue;
            };
            for item in items.iter_mut().filter_map(|i| i.as_table_mut()) {
                match item.get("kind").and_then(|k| k.as_str()) {
                    Some("system") => {
                        item.insert(
                            "paths".into(),
                            toml::Value::Array(vec![toml::Value::String("/".into())]),
                        );
                    }
                    Some("tls_cert") => {
                        // The stand-in speaks plain HTTP; check the demo's own certificate file.
                        item.insert("endpoints".into(), toml::Value::Array(vec![]));
                        let pem = root.join("tls/fullchain.pem");
                        if make_demo_certificate(&pem).is_ok() {
                            item.insert(
                                "files".into(),
                                toml::Value::Array(vec![toml::Value::String(
                                    pem.display().to_string(),
                                )]),
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(toml::to_string(&doc)?)
}

/// A self-signed certificate valid for 20 days (so the TLS item has something to say), made
/// with the `openssl` command when it is installed.
fn make_demo_certificate(pem: &Path) -> Result<()> {
    std::fs::create_dir_all(pem.parent().expect("has a parent"))?;
    let key = pem.with_file_name("key.pem");
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "20",
            "-subj",
            "/CN=trading.trademaster.example",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(pem)
        .output()?;
    anyhow::ensure!(out.status.success(), "openssl failed");
    Ok(())
}

/// A stand-in for the trading service and its monitoring stack, answering the paths the shipped
/// jobs ask for with responses shaped like the real APIs (Spring Boot actuator, Resilience4j,
/// Prometheus HTTP API, Alertmanager API v2, Grafana). One alert fires and the p95 latency is
/// a little high, so the demo shows what a warning and a failure look like.
mod stand_in {
    use axum::Router;
    use axum::extract::Query;
    use axum::routing::get;
    use serde_json::json;
    use std::collections::HashMap;

    pub async fn start() -> anyhow::Result<String> {
        let app = Router::new()
            .route(
                "/actuator/health",
                get(|| async {
                    axum::Json(json!({"status": "UP", "components": {
                        "db": {"status": "UP", "details": {"database": "PostgreSQL", "validationQuery": "isValid()"}},
                        "redis": {"status": "UP", "details": {"version": "7.2.4"}},
                        "brokerService": {"status": "UP"},
                        "diskSpace": {"status": "UP", "details": {"total": 107374182400u64, "free": 53687091200u64, "threshold": 10485760}}
                    }}))
                }),
            )
            .route(
                "/actuator/circuitbreakers",
                get(|| async {
                    axum::Json(json!({"circuitBreakers": {
                        "brokerService": {"failureRate": "2.5%", "slowCallRate": "0.0%", "failureRateThreshold": "50.0%", "bufferedCalls": 40, "failedCalls": 1, "slowCalls": 0, "notPermittedCalls": 0, "state": "CLOSED"},
                        "marketDataService": {"failureRate": "-1.0%", "slowCallRate": "-1.0%", "failureRateThreshold": "50.0%", "bufferedCalls": 3, "failedCalls": 0, "slowCalls": 0, "notPermittedCalls": 0, "state": "CLOSED"}
                    }}))
                }),
            )
            .route("/-/healthy", get(|| async { "OK" }))
            .route("/api/health", get(|| async { axum::Json(json!({"commit": "03f502a94d", "database": "ok", "version": "10.4.2"})) }))
            .route(
                "/api/v2/alerts",
                get(|| async {
                    axum::Json(json!([{
                        "annotations": {"summary": "p95 latency above 500ms for 10 minutes", "runbook_url": "https://wiki/runbooks/HighAPILatencyP95"},
                        "endsAt": "2026-11-24T10:15:00.000Z", "fingerprint": "5f2b7c1e9a0d4b3c",
                        "receivers": [{"name": "trademaster-warnings"}],
                        "startsAt": "2026-11-24T03:55:00.000Z",
                        "status": {"inhibitedBy": [], "silencedBy": [], "state": "active"},
                        "updatedAt": "2026-11-24T04:10:00.000Z",
                        "generatorURL": "http://prometheus:9090/graph?g0.expr=...",
                        "labels": {"alertname": "HighAPILatencyP95", "severity": "warning", "service": "trademaster-trading-service"}
                    }]))
                }),
            )
            .route(
                "/api/v1/query",
                get(|Query(q): Query<HashMap<String, String>>| async move {
                    let query = q.get("query").cloned().unwrap_or_default();
                    let now = chrono::Utc::now().timestamp() as f64;
                    let (metric, value) = if query.contains("histogram_quantile(0.99") {
                        (json!({}), "468.0")
                    } else if query.contains("orders_failed_total") {
                        (json!({"reason": "broker_timeout"}), "0.0067")
                    } else if query.contains("histogram_quantile") {
                        (json!({}), "312.5")
                    } else if query.contains("hikaricp") {
                        (json!({"pool": "HikariPool-1"}), "35")
                    } else if query.contains("resilience4j") {
                        (json!({"name": "brokerService", "state": "closed"}), "2.5")
                    } else if query.contains("increase") {
                        // The week before (`time` set, compare_with): a few more errors now.
                        (json!({}), if q.contains_key("time") { "198" } else { "212" })
                    } else {
                        (json!({}), "0.0004")
                    };
                    axum::Json(json!({"status": "success", "data": {"resultType": "vector", "result": [{"metric": metric, "value": [now, value]}]}}))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(format!("http://{addr}"))
    }
}
