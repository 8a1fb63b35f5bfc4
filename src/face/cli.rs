//! The command line (a contract: SPEC section 1) and the exit codes:
//! 0 ok, 1 the job ran and something failed, 2 configuration or usage error, 3 the job is locked.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use crate::config::Config;
use crate::runner::{RunError, RunOptions};
use crate::store::Store;

mod ack;
mod state_access;

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_LOCKED: u8 = 3;

mod args;
pub use args::{Cli, Command, Format, LogFormat, ReportFormat};

/// Entry point of the binary.
pub fn main() -> ExitCode {
    // The version line names the commit (build.rs); args.rs cannot say so itself, since
    // build.rs compiles it too, without the crate's environment.
    let parsed = Cli::command()
        .version(crate::VERSION)
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logging(&cli);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runbook: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let code = rt.block_on(dispatch(cli));
    // Do not wait for lingering blocking tasks (e.g. a DNS lookup) on the way out.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

fn init_logging(cli: &Cli) {
    use tracing_subscriber::prelude::*;
    let default = if matches!(cli.command, Command::Daemon) {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUNBOOK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let registry = tracing_subscriber::registry().with(filter);
    // Under systemd (JOURNAL_STREAM names our stderr), log to journald with structured fields.
    let under_journald =
        std::env::var_os("JOURNAL_STREAM").is_some() && cli.log_format == LogFormat::Text;
    // Fields as journald names them (`JOB=daily`, not `F_JOB=daily`): `journalctl JOB=daily`.
    if under_journald && let Ok(layer) = tracing_journald::layer() {
        let _ = registry.with(layer.with_field_prefix(None)).try_init();
        return;
    }
    match cli.log_format {
        LogFormat::Json => {
            let _ = registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .with_writer(std::io::stderr),
                )
                .try_init();
        }
        LogFormat::Text => {
            let _ = registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::io::stderr)
                        .with_ansi(colour_on_stderr())
                        .with_target(false),
                )
                .try_init();
        }
    }
}

/// Colour codes only for a person at a terminal: not into files, pipes or the journal, and
/// not when `NO_COLOR` is set (no-color.org).
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn load(cli: &Cli) -> Result<Config, ExitCode> {
    let path = crate::config::resolve_path(cli.config.as_deref());
    Config::load(&path).map_err(|e| {
        eprintln!("{e}");
        eprintln!(
            "runbook: {} configuration error{} in {}; nothing ran",
            e.0.len(),
            if e.0.len() == 1 { "" } else { "s" },
            path.display()
        );
        ExitCode::from(EXIT_USAGE)
    })
}

/// Gets this process ready to open the state folder (switching from root to the folder's owner
/// when they differ); exit 2 with a message saying what to do when it may not.
fn prepare_state(config: &Config) -> Result<(), ExitCode> {
    state_access::prepare(config)
        .map(|_| ())
        .map_err(|e| usage(format!("{e}\n  nothing ran")))
}

fn open_store(config: &Config) -> Result<Store, ExitCode> {
    prepare_state(config)?;
    Store::open(&config.state_dir, &config.hostname).map_err(|e| {
        eprintln!("runbook: {e:#}");
        ExitCode::from(EXIT_FAILED)
    })
}

fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("runbook: {msg}");
    ExitCode::from(EXIT_USAGE)
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
}

/// A manual run's cluster claim and the task renewing its lease.
type ManualClaim = (
    std::sync::Arc<crate::daemon::cluster::Cluster>,
    chrono::DateTime<chrono::Utc>,
    tokio::task::JoinHandle<()>,
);

/// Why a manual run may not start in a cluster (exit 3; nothing ran).
#[derive(Debug, thiserror::Error)]
enum ClaimRefused {
    #[error("job {job:?}: the cluster claim returned no slot; nothing ran")]
    NoSlot { job: String },
    #[error("job {job:?} is already running on cluster node {node}; nothing ran")]
    RunningOn { job: String, node: String },
    #[error(
        "CLUSTER DATABASE UNREACHABLE ({reason}): job {job:?} not run (on_cluster_down = \"skip\")"
    )]
    DatabaseDown { job: String, reason: String },
}

/// Claims a manual run in the cluster: `Ok(Some(..))` claimed, `Ok(None)` the database is down
/// and `on_cluster_down = "run"`, `Err` why it may not run (exit 3).
async fn manual_claim(
    section: &crate::config::ClusterConfig,
    job: &str,
    opts: &RunOptions,
) -> Result<Option<ManualClaim>, ClaimRefused> {
    use crate::daemon::cluster::{Claim, Cluster};
    let cluster = std::sync::Arc::new(Cluster::new(section));
    let sent = tokio::time::Instant::now();
    match cluster.claim_manual(job).await {
        (Claim::Mine { .. }, Some(slot)) => {
            let lease = cluster.clone().keep_lease(
                job.to_string(),
                slot,
                sent,
                opts.cancel.clone(),
                opts.cancel_reason.clone(),
            );
            Ok(Some((cluster, slot, lease)))
        }
        (Claim::Mine { .. }, None) => Err(ClaimRefused::NoSlot {
            job: job.to_string(),
        }),
        (Claim::Busy(node) | Claim::Elsewhere(node), _) => Err(ClaimRefused::RunningOn {
            job: job.to_string(),
            node,
        }),
        (Claim::Down(e), _) => match cluster.on_cluster_down {
            crate::config::OnClusterDown::Run => {
                eprintln!(
                    "runbook: CLUSTER DATABASE UNREACHABLE ({e}): running anyway (on_cluster_down = \"run\"); a run on another node may overlap"
                );
                Ok(None)
            }
            crate::config::OnClusterDown::Skip => Err(ClaimRefused::DatabaseDown {
                job: job.to_string(),
                reason: e.to_string(),
            }),
        },
    }
}

/// `runbook daemon`: the scheduler's loop on the real clock, until SIGTERM or SIGINT; SIGHUP
/// reloads the configuration. Exit 0 after a clean stop.
async fn daemon(config: Config) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    if let Err(code) = prepare_state(&config) {
        return code;
    }
    let installed = (|| {
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::hangup())?,
        ))
    })();
    let (mut sigterm, mut sigint, mut sighup) = match installed {
        Ok(s) => s,
        Err(e) => {
            eprintln!("runbook: cannot install the signal handlers: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM: stopping"),
            _ = sigint.recv() => tracing::info!("SIGINT: stopping"),
        }
    };
    // One pending reload is enough: it reads the file as it is when the loop gets to it.
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while sighup.recv().await.is_some() {
            if let Err(tokio::sync::mpsc::error::TrySendError::Closed(())) = reload_tx.try_send(())
            {
                return;
            }
        }
    });
    let clock = crate::daemon::scheduler::SystemClock;
    match crate::daemon::scheduler::run(config, clock, shutdown, reload_rx).await {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => {
            eprintln!("runbook: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Runs one command; each has its function below.
async fn dispatch(cli: Cli) -> ExitCode {
    match &cli.command {
        Command::Demo { keep } => return crate::face::demo::run(*keep).await,
        Command::CheckConfig { connect, format } => {
            return check_config(&cli, *connect, *format).await;
        }
        _ => {}
    }
    let config = match load(&cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli.command {
        Command::Demo { .. } | Command::CheckConfig { .. } => unreachable!("handled above"),
        Command::Daemon => daemon(config).await,
        Command::RunJob {
            job,
            items,
            dry_run,
            no_notify,
            format,
            strict,
        } => {
            let flags = RunJobFlags {
                items,
                dry_run,
                no_notify,
                format,
                strict,
            };
            run_job(&config, &job, flags).await
        }
        Command::List { format } => list(&config, format),
        Command::Next {
            job,
            n,
            after,
            format,
        } => next(&config, job.as_deref(), n, after.as_deref(), format),
        Command::History { job, n, format } => history(&config, job.as_deref(), n, format),
        Command::Trend {
            job,
            item,
            field,
            target,
            n,
            format,
        } => trend(
            &config,
            &TrendQuery {
                job: &job,
                item: &item,
                target: target.as_deref(),
                field: &field,
            },
            n,
            format,
        ),
        Command::Report { run, job, format } => report(&config, &run, job.as_deref(), format),
        Command::Ack {
            run,
            job,
            item,
            by,
            note,
            format,
        } => ack::run(&config, &run, &job, &item, &by, note.as_deref(), format),
        Command::NotifyTest { channel, format } => {
            notify_test(&config, channel.as_deref(), format).await
        }
        Command::Outbox { flush, format } => outbox(&config, flush, format).await,
    }
}

/// `run-job`'s options besides the job's name.
struct RunJobFlags {
    /// `--item`: only these items (all when empty).
    items: Vec<String>,
    dry_run: bool,
    no_notify: bool,
    format: Format,
    /// `--strict`: a warning exits 1 too.
    strict: bool,
}

/// `runbook run-job JOB`: one manual run, its report printed; exit 1 when it failed (or, with
/// `--strict`, warned), 3 when the job is running elsewhere.
async fn run_job(config: &Config, job: &str, flags: RunJobFlags) -> ExitCode {
    let RunJobFlags {
        items,
        dry_run,
        no_notify,
        format,
        strict,
    } = flags;
    let Ok(job) = config.job(job).map_err(|e| eprintln!("runbook: {e}")) else {
        return ExitCode::from(EXIT_USAGE);
    };
    let store = match open_store(config) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let opts = RunOptions {
        only_items: items,
        dry_run,
        notify: !no_notify,
        ..RunOptions::manual()
    };
    // Ctrl-C or SIGTERM (systemd, a terminal closing, `kill`) during a manual run: cancel
    // the items (children are killed, scratch databases dropped) and still print and
    // store the report.
    let cancel = opts.cancel.clone();
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        eprintln!("runbook: interrupted; stopping the items and writing the report");
        cancel.cancel();
    });
    // With `[cluster]`, a manual run takes a claim like a scheduled slot: it cannot
    // overlap a run of the job on another node (exit 3), and it is fenced the same way.
    let mut claimed = None;
    if let Some(section) = config.cluster.as_ref().filter(|_| !dry_run) {
        match manual_claim(section, &job.name, &opts).await {
            Ok(c) => claimed = c,
            Err(message) => {
                eprintln!("runbook: {message}");
                return ExitCode::from(EXIT_LOCKED);
            }
        }
    }
    let result = crate::runner::run_job(config, &store, job, opts).await;
    if let Some((cluster, slot, lease)) = claimed {
        crate::failpoint!("cluster-before-finish");
        for _ in 0..3 {
            match cluster.finish(&job.name, slot).await {
                Ok(()) => break,
                Err(e) => {
                    eprintln!(
                        "runbook: cannot mark the manual run done in the cluster database: {e}"
                    );
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
        lease.abort();
    }
    match result {
        Ok(report) => {
            match format {
                Format::Json => println!("{}", crate::report::json::render(&report)),
                Format::Text => print!("{}", crate::report::text::render(&report)),
            }
            let bad = match report.status {
                crate::items::Status::Fail => true,
                crate::items::Status::Warn => strict,
                _ => false,
            };
            ExitCode::from(if bad { EXIT_FAILED } else { EXIT_OK })
        }
        Err(e @ RunError::Locked { .. }) => {
            eprintln!("runbook: {e}");
            ExitCode::from(EXIT_LOCKED)
        }
        Err(RunError::Usage(e)) => usage(e),
        Err(RunError::Infra(e)) => {
            eprintln!("runbook: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// `runbook history [JOB]`: the newest runs.
fn history(config: &Config, job: Option<&str>, n: usize, format: Format) -> ExitCode {
    if let Some(j) = job
        && let Err(e) = config.job(j)
    {
        return usage(e);
    }
    let store = match open_store(config) {
        Ok(s) => s,
        Err(c) => return c,
    };
    match store.history(job, n) {
        Ok(rows) => {
            match format {
                Format::Json => print_json(&rows),
                Format::Text => {
                    if rows.is_empty() {
                        println!("no runs recorded yet in {}", store.dir.display());
                    }
                    for r in rows {
                        let counts = r
                            .counts
                            .map(|c| {
                                format!(
                                    "{} pass, {} warn, {} fail, {} todo, {} skipped",
                                    c.pass, c.warn, c.fail, c.manual, c.skipped
                                )
                            })
                            .unwrap_or_default();
                        let dur = r
                            .duration_ms
                            .map(crate::report::human_ms)
                            .unwrap_or_default();
                        println!(
                            "{}  {:<12} {:<11} {:<9} {:>8}  {}  {}",
                            r.started_at,
                            r.job,
                            r.status.to_uppercase(),
                            r.trigger,
                            dur,
                            counts,
                            r.run_id
                        );
                    }
                }
            }
            ExitCode::from(EXIT_OK)
        }
        Err(e) => {
            eprintln!("runbook: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// `runbook report RUN|last [--job JOB]`: a stored report.
fn report(config: &Config, run: &str, job: Option<&str>, format: ReportFormat) -> ExitCode {
    let store = match open_store(config) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let found = if run == "last" {
        match job {
            Some(j) => {
                if let Err(e) = config.job(j) {
                    return usage(e);
                }
                store.last_report(j)
            }
            None => store
                .history(None, 50)
                .map(|h| h.into_iter().find(|r| r.finished_at.is_some()))
                .and_then(|r| match r {
                    Some(r) => store.report(&r.run_id),
                    None => Ok(None),
                }),
        }
    } else {
        store.report(run)
    };
    match found {
        Ok(Some(r)) => {
            match format {
                ReportFormat::Text => print!("{}", crate::report::text::render(&r)),
                ReportFormat::Html => {
                    // The charts as when the report was sent: the values before it.
                    let mut r = r;
                    if let Err(e) = store.fill_history(&mut r) {
                        tracing::warn!("cannot read earlier values for the charts: {e:#}");
                    }
                    print!("{}", crate::report::html::render(&r))
                }
                ReportFormat::Json => println!("{}", crate::report::json::render(&r)),
            }
            ExitCode::from(EXIT_OK)
        }
        Ok(None) => usage(format!(
            "no stored report for {run:?}{}",
            job.map(|j| format!(" of job {j:?}")).unwrap_or_default()
        )),
        Err(e) => usage(format!("{e:#}")),
    }
}

/// `runbook notify-test [CHANNEL]`: a test message through each notifier.
async fn notify_test(config: &Config, channel: Option<&str>, format: Format) -> ExitCode {
    // As root, send as the daemon's user: a file notifier's folder it creates (often
    // inside the state folder) must stay writable for the daemon.
    if let Err(e) = state_access::become_owner_if_root(config) {
        return usage(e);
    }
    let tests = match crate::notify::notify_test(
        &config.notifiers,
        channel,
        &config.hostname,
        &config.runbook.timezone,
    )
    .await
    {
        Ok(t) => t,
        Err(e @ crate::notify::NotifyTestError::NoNotifiers) => {
            return usage(format!("{e} in {}", config.path.display()));
        }
        Err(e) => return usage(e.to_string()),
    };
    match format {
        Format::Json => print_json(&serde_json::json!({ "channels": tests })),
        Format::Text => {
            for t in &tests {
                match &t.error {
                    None => println!("{} ({}): delivered", t.channel, t.kind),
                    Some(e) => println!("{} ({}): FAILED: {e}", t.channel, t.kind),
                }
            }
        }
    }
    let ok = tests.iter().all(|t| t.error.is_none());
    ExitCode::from(if ok { EXIT_OK } else { EXIT_FAILED })
}

/// `runbook outbox [--flush]`: undelivered notifications (retried first with `--flush`).
async fn outbox(config: &Config, flush: bool, format: Format) -> ExitCode {
    let store = match open_store(config) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let mut code = EXIT_OK;
    let mut flushed = None;
    if flush {
        match crate::notify::outbox::flush(&config.notifiers, &config.retry_policy(), &store, false)
            .await
        {
            Ok(r) => {
                if r.left_undelivered() {
                    code = EXIT_FAILED;
                }
                flushed = Some(r);
            }
            Err(e) => {
                eprintln!("runbook: {e:#}");
                return ExitCode::from(EXIT_FAILED);
            }
        }
    }
    let entries = match store.outbox(None) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("runbook: {e:#}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match format {
        Format::Json => print_json(&serde_json::json!({ "flushed": flushed, "entries": entries })),
        Format::Text => {
            if let Some(f) = &flushed {
                println!(
                    "flushed: {} delivered, {} delivered by another process, {} failed, {} dropped, {} still being sent by another process",
                    f.delivered, f.delivered_elsewhere, f.failed, f.dropped, f.busy
                );
            }
            if entries.is_empty() {
                println!("outbox is empty: every report was delivered");
            }
            for e in &entries {
                // A per-item channel's entries (pagerduty) differ by their event.
                let channel = match e.key.event.as_str() {
                    "" => e.key.channel.clone(),
                    event => format!("{} {event}", e.key.channel),
                };
                println!(
                    "{:<8} {:<16} job {:<12} run {}  attempts {}  queued {}  next {}  {}",
                    e.state,
                    channel,
                    e.job.as_deref().unwrap_or("?"),
                    e.key.run_id,
                    e.attempts,
                    e.created_at,
                    e.next_attempt_at.as_deref().unwrap_or("-"),
                    e.last_error.as_deref().unwrap_or("")
                );
            }
        }
    }
    ExitCode::from(code)
}

fn list(config: &Config, format: Format) -> ExitCode {
    let now = chrono::Utc::now();
    let jobs: Vec<serde_json::Value> = config
        .jobs
        .values()
        .map(|j| {
            let next = j.schedule.as_ref().and_then(|s| s.next_after(j.tz, now));
            serde_json::json!({
                "job": j.name,
                "description": j.config.description,
                "schedule": j.schedule.as_ref().map(|s| s.expr.clone()),
                "schedule_description": j.schedule.as_ref().map(|s| s.describe()),
                "timezone": j.tz.name(),
                "next_run": next.map(|n| n.to_rfc3339()),
                "next_run_utc": next.map(|n| n.with_timezone(&chrono::Utc).to_rfc3339()),
                "catch_up": j.config.catch_up,
                "timeout": j.config.timeout.to_string(),
                "notify": j.notify,
                "items": j.config.items.iter().map(|i| serde_json::json!({"name": i.name, "kind": i.spec.kind()})).collect::<Vec<_>>(),
            })
        })
        .collect();
    match format {
        Format::Json => print_json(&serde_json::json!({ "config": config.path, "jobs": jobs })),
        Format::Text => {
            for j in config.jobs.values() {
                let next = j.schedule.as_ref().and_then(|s| s.next_after(j.tz, now));
                println!(
                    "{}  — {}",
                    j.name,
                    if j.config.description.is_empty() {
                        "(no description)"
                    } else {
                        &j.config.description
                    }
                );
                match &j.schedule {
                    Some(s) => println!(
                        "  schedule: {}  ({}, {})",
                        s.expr,
                        s.describe(),
                        j.tz.name()
                    ),
                    None => println!(
                        "  schedule: none (runs only by hand: runbook run-job {})",
                        j.name
                    ),
                }
                if let Some(n) = next {
                    println!(
                        "  next run: {}  ({} UTC)",
                        n.format("%a %Y-%m-%d %H:%M %Z"),
                        n.with_timezone(&chrono::Utc).format("%Y-%m-%d %H:%M")
                    );
                }
                println!("  items ({}):", j.config.items.len());
                for i in &j.config.items {
                    println!("    - {} [{}]", i.name, i.spec.kind());
                }
                println!();
            }
        }
    }
    ExitCode::from(EXIT_OK)
}

fn next(
    config: &Config,
    job: Option<&str>,
    n: usize,
    after: Option<&str>,
    format: Format,
) -> ExitCode {
    let after = match after {
        None => chrono::Utc::now(),
        Some(a) => match chrono::DateTime::parse_from_rfc3339(a) {
            Ok(t) => t.with_timezone(&chrono::Utc),
            Err(e) => {
                return usage(format!(
                    "--after {a:?} is not an RFC3339 time (e.g. 2026-11-24T10:00:00+05:30): {e}"
                ));
            }
        },
    };
    let jobs: Vec<&crate::config::Job> = match job {
        Some(name) => match config.job(name) {
            Ok(j) => vec![j],
            Err(e) => return usage(e),
        },
        None => config.jobs.values().collect(),
    };
    let mut out = Vec::new();
    for j in jobs {
        let times = j
            .schedule
            .as_ref()
            .map(|s| s.next_n(j.tz, after, n))
            .unwrap_or_default();
        match format {
            Format::Text => {
                match &j.schedule {
                    Some(s) => println!("{} — {} ({}, {})", j.name, s.expr, s.describe(), j.tz.name()),
                    None => println!("{} — no schedule (runs only by hand)", j.name),
                }
                for t in &times {
                    println!("  {}   {} UTC", t.format("%a %Y-%m-%d %H:%M:%S %Z (%:z)"), t.with_timezone(&chrono::Utc).format("%Y-%m-%d %H:%M:%S"));
                }
            }
            Format::Json => out.push(serde_json::json!({
                "job": j.name,
                "schedule": j.schedule.as_ref().map(|s| s.expr.clone()),
                "description": j.schedule.as_ref().map(|s| s.describe()),
                "timezone": j.tz.name(),
                "next": times.iter().map(|t| serde_json::json!({"local": t.to_rfc3339(), "utc": t.with_timezone(&chrono::Utc).to_rfc3339()})).collect::<Vec<_>>(),
            })),
        }
    }
    if format == Format::Json {
        print_json(&serde_json::json!({ "after": after.to_rfc3339(), "jobs": out }));
    }
    ExitCode::from(EXIT_OK)
}

/// `check-config [--connect] [--format text|json]`. Exit 0 when the file is valid (and, with
/// `--connect`, everything answered), 1 when something did not answer, 2 when the file has
/// mistakes. The JSON form is one document whatever happened (see docs/configuration.md).
async fn check_config(cli: &Cli, connect: bool, format: Format) -> ExitCode {
    let config = match format {
        Format::Text => match load(cli) {
            Ok(c) => c,
            Err(code) => return code,
        },
        Format::Json => {
            let path = crate::config::resolve_path(cli.config.as_deref());
            match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    print_json(&serde_json::json!({
                        "ok": false,
                        "config": path,
                        "errors": e.0.iter().map(config_error_json).collect::<Vec<_>>(),
                        "warnings": [],
                        "state_dir": null,
                        "state_dir_origin": null,
                        "jobs": [],
                        "targets": [],
                        "notifiers": [],
                        "connect": null,
                    }));
                    return ExitCode::from(EXIT_USAGE);
                }
            }
        }
    };
    let now = chrono::Utc::now();
    if format == Format::Text {
        print_config_summary(&config, now);
    }
    let reached = if connect {
        let reached = reach_all(&config).await;
        if format == Format::Text {
            for r in &reached.targets {
                println!("  target {}: {}", r.name, r.message);
            }
            for r in &reached.notifiers {
                println!("  notifier {}: {}", r.name, r.message);
            }
        }
        Some(reached)
    } else {
        None
    };
    let ok = reached
        .as_ref()
        .is_none_or(|r| r.targets.iter().chain(&r.notifiers).all(|r| r.ok));
    if format == Format::Json {
        print_json(&check_config_json(&config, ok, reached.as_ref(), now));
    }
    ExitCode::from(if ok { EXIT_OK } else { EXIT_FAILED })
}

/// `check-config`'s text: the counts, the state folder and each job's next run.
fn print_config_summary(config: &Config, now: chrono::DateTime<chrono::Utc>) {
    let items: usize = config.jobs.values().map(|j| j.config.items.len()).sum();
    for w in &config.warnings {
        println!("warning: {w}");
    }
    println!(
        "{}: OK — {} job{}, {} item{}, {} target{}, {} notifier{}",
        config.path.display(),
        config.jobs.len(),
        if config.jobs.len() == 1 { "" } else { "s" },
        items,
        if items == 1 { "" } else { "s" },
        config.targets.len(),
        if config.targets.len() == 1 { "" } else { "s" },
        config.notifiers.len(),
        if config.notifiers.len() == 1 { "" } else { "s" },
    );
    println!(
        "  state: {} ({})",
        config.state_dir.display(),
        config.state_dir_origin
    );
    for j in config.jobs.values() {
        let next = j.schedule.as_ref().and_then(|s| s.next_after(j.tz, now));
        println!(
            "  {:<14} {:>2} items  {}",
            j.name,
            j.config.items.len(),
            match next {
                Some(n) => format!(
                    "next {} ({})",
                    n.format("%Y-%m-%d %H:%M %Z"),
                    j.schedule
                        .as_ref()
                        .map(|s| s.describe())
                        .unwrap_or_default()
                ),
                None => "no schedule: runs only by hand".into(),
            }
        );
        for item in j.config.items.iter().filter(|i| !i.fleet.is_empty()) {
            if let Some(sel) = &item.target_selector {
                println!(
                    "    item {:?}: target {sel} → {} target{}: {}",
                    item.name,
                    item.fleet.len(),
                    if item.fleet.len() == 1 { "" } else { "s" },
                    item.fleet.join(", ")
                );
            }
        }
    }
}

/// What `check-config --connect` found.
struct ReachedAll {
    targets: Vec<Reached>,
    notifiers: Vec<Reached>,
}

/// Connects to every target and asks every notifier whether it is reachable.
async fn reach_all(config: &Config) -> ReachedAll {
    let mut targets = Vec::new();
    for (name, t) in config.targets.iter() {
        targets.push(match t.connect().await {
            Ok(client) => {
                let standby: bool = client
                    .query_one("SELECT pg_is_in_recovery()", &[])
                    .await
                    .ok()
                    .and_then(|r| crate::base::pg::col(&r, 0).ok())
                    .unwrap_or(false);
                Reached {
                    name: name.clone(),
                    ok: true,
                    message: format!(
                        "reachable ({}){}",
                        t.display,
                        if standby {
                            ", a standby (state-changing items will refuse it)"
                        } else {
                            ""
                        }
                    ),
                    standby: Some(standby),
                }
            }
            Err(e) => Reached {
                name: name.clone(),
                ok: false,
                message: format!("UNREACHABLE: {e}"),
                standby: None,
            },
        });
    }
    let mut notifiers = Vec::new();
    for (name, n) in &config.notifiers {
        notifiers.push(match n.check_reachable().await {
            Ok(msg) => Reached {
                name: name.clone(),
                ok: true,
                message: msg,
                standby: None,
            },
            Err(e) => Reached {
                name: name.clone(),
                ok: false,
                message: format!("UNREACHABLE: {e}"),
                standby: None,
            },
        });
    }
    ReachedAll { targets, notifiers }
}

/// `check-config --format json` for a valid file (SPEC; docs/configuration.md).
fn check_config_json(
    config: &Config,
    ok: bool,
    reached: Option<&ReachedAll>,
    now: chrono::DateTime<chrono::Utc>,
) -> serde_json::Value {
    let jobs: Vec<serde_json::Value> = config
        .jobs
        .values()
        .map(|j| {
            let next = j.schedule.as_ref().and_then(|s| s.next_after(j.tz, now));
            serde_json::json!({
                "job": j.name,
                "items": j.config.items.len(),
                "schedule": j.schedule.as_ref().map(|s| s.expr.clone()),
                "schedule_description": j.schedule.as_ref().map(|s| s.describe()),
                "timezone": j.tz.name(),
                "next_run": next.map(|n| n.to_rfc3339()),
                "fleet_items": j
                    .config
                    .items
                    .iter()
                    .filter(|i| !i.fleet.is_empty())
                    .map(|i| serde_json::json!({
                        "item": i.name,
                        "target": i.target_selector.as_ref().map(|s| s.to_string()),
                        "targets": i.fleet,
                    }))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    let reached_json = |list: &[Reached], key: &str| -> Vec<serde_json::Value> {
        list.iter()
            .map(|r| {
                let mut v = serde_json::json!({ key: r.name, "reachable": r.ok });
                v[if r.ok { "detail" } else { "error" }] = serde_json::Value::String(
                    r.message.trim_start_matches("UNREACHABLE: ").to_string(),
                );
                if let Some(s) = r.standby {
                    v["standby"] = serde_json::Value::Bool(s);
                }
                v
            })
            .collect()
    };
    serde_json::json!({
        "ok": ok,
        "config": config.path,
        "errors": [],
        "warnings": config.warnings,
        "state_dir": config.state_dir,
        "state_dir_origin": config.state_dir_origin,
        "jobs": jobs,
        "targets": config.targets.keys().collect::<Vec<_>>(),
        "notifiers": config.notifiers.keys().collect::<Vec<_>>(),
        "connect": reached.map(|r| serde_json::json!({
            "targets": reached_json(&r.targets, "target"),
            "notifiers": reached_json(&r.notifiers, "notifier"),
        })),
    })
}

/// One target or notifier as `check-config --connect` found it.
struct Reached {
    name: String,
    ok: bool,
    /// `reachable (...)` or `UNREACHABLE: why` (never a secret).
    message: String,
    /// Targets only: whether it is a standby.
    standby: Option<bool>,
}

/// A configuration mistake in `check-config --format json`.
fn config_error_json(e: &crate::config::ConfigError) -> serde_json::Value {
    serde_json::json!({
        "file": e.file,
        "line": e.line,
        "column": e.column,
        "job": e.job,
        "item": e.item,
        "context": e.context,
        "message": e.message,
    })
}

/// What `runbook trend` reads: a job's item, or one target of it, and the field.
struct TrendQuery<'a> {
    job: &'a str,
    item: &'a str,
    /// `--target`: one target's entry of the item's `targets[]` (SPEC 9.5) instead of the item.
    target: Option<&'a str>,
    field: &'a str,
}

/// `runbook trend` (SPEC 9.3).
fn trend(config: &Config, q: &TrendQuery, n: usize, format: Format) -> ExitCode {
    if let Err(e) = crate::store::trend_field_path(q.field) {
        return usage(e);
    }
    let store = match open_store(config) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let known = trend_known(config, &store, q.job, q.item).and_then(|k| match (k, q.target) {
        (Ok(()), Some(target)) => trend_target_known(config, &store, q.job, q.item, target),
        (k, _) => Ok(k),
    });
    match known {
        Ok(Ok(())) => {}
        Ok(Err(msg)) => return usage(msg),
        Err(e) => {
            eprintln!("runbook: {e:#}");
            return ExitCode::from(EXIT_FAILED);
        }
    }
    let (points, skipped) = match store.trend_on(q.job, q.item, q.target, q.field, n) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("runbook: {e:#}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match format {
        Format::Json => {
            /// SPEC 9.3, in the contract's order; `target` only with `--target`.
            #[derive(serde::Serialize)]
            struct Trend<'a> {
                job: &'a str,
                item: &'a str,
                #[serde(skip_serializing_if = "Option::is_none")]
                target: Option<&'a str>,
                field: &'a str,
                points: &'a [crate::store::TrendPoint],
            }
            print_json(&Trend {
                job: q.job,
                item: q.item,
                target: q.target,
                field: q.field,
                points: &points,
            })
        }
        Format::Text => print!("{}", trend_text(q, &points, skipped)),
    }
    ExitCode::from(EXIT_OK)
}

fn trend_text(q: &TrendQuery, points: &[crate::store::TrendPoint], skipped: usize) -> String {
    use std::fmt::Write;
    let num = |v: f64| {
        if v.fract() == 0.0 && v.abs() < 1e15 {
            format!("{v:.0}")
        } else {
            format!("{:.3}", v).trim_end_matches('0').to_string()
        }
    };
    let (job, item, field) = (q.job, q.item, q.field);
    let mut out = match q.target {
        None => format!("{job} / {item} / {field}\n"),
        Some(target) => format!("{job} / {item} / target {target} / {field}\n"),
    };
    if points.is_empty() {
        out.push_str("no points yet\n");
    } else {
        let _ = writeln!(out, "{:<25}  {:>14}  run", "started_at", "value");
        for p in points {
            let when = chrono::DateTime::parse_from_rfc3339(&p.started_at)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S %:z").to_string())
                .unwrap_or_else(|_| p.started_at.clone());
            let _ = writeln!(out, "{when:<25}  {:>14}  {}", num(p.value), p.run_id);
        }
        let min = points.iter().map(|p| p.value).fold(f64::INFINITY, f64::min);
        let max = points
            .iter()
            .map(|p| p.value)
            .fold(f64::NEG_INFINITY, f64::max);
        let last = points[points.len() - 1].value;
        let change = match points.len() {
            1 => "no previous point".to_string(),
            k => {
                let d = last - points[k - 2].value;
                format!(
                    "{}{} since the previous point",
                    if d >= 0.0 { "+" } else { "" },
                    num(d)
                )
            }
        };
        let _ = writeln!(
            out,
            "{} points: min {}, max {}, last {} ({change})",
            points.len(),
            num(min),
            num(max),
            num(last)
        );
    }
    if skipped > 0 {
        let _ = match q.target {
            None => writeln!(
                out,
                "{skipped} run(s) skipped: the item was absent or its `{field}` was missing or not a number"
            ),
            Some(target) => writeln!(
                out,
                "{skipped} run(s) skipped: the item was absent, had no result for target `{target}`, or its `{field}` there was missing or not a number"
            ),
        };
    }
    out
}

/// A `trend` of a job, item or target that is neither configured nor in any stored run (exit 2).
#[derive(Debug, thiserror::Error)]
enum UnknownTrend {
    #[error(transparent)]
    Job(#[from] crate::config::UnknownJob),
    #[error(
        "unknown item {item:?} in job {job:?} (not in {} and in no stored run; items: {})",
        file.display(),
        items.join(", ")
    )]
    ConfiguredJob {
        job: String,
        item: String,
        file: std::path::PathBuf,
        items: Vec<String>,
    },
    #[error("unknown item {item:?}: no stored run of job {job:?} has it")]
    StoredJob { job: String, item: String },
    #[error("unknown target {target:?} of item {item:?} in job {job:?}: {why}")]
    Target {
        job: String,
        item: String,
        target: String,
        /// What the item runs on instead, and that no stored run has the target.
        why: String,
    },
}

/// Ok(Err(..)) when the job or the item is unknown: not in the config and in no stored run.
fn trend_known(
    config: &Config,
    store: &Store,
    job: &str,
    item: &str,
) -> anyhow::Result<Result<(), UnknownTrend>> {
    let configured = config.job(job);
    if let Err(e) = &configured
        && !store.job_ever_stored(job)?
    {
        return Ok(Err(e.clone().into()));
    }
    if let Ok(j) = &configured
        && j.config.items.iter().any(|i| i.name == item)
    {
        return Ok(Ok(()));
    }
    if store.item_ever_stored(job, item)? {
        return Ok(Ok(()));
    }
    let (job, item) = (job.to_string(), item.to_string());
    Ok(Err(match configured {
        Ok(j) => UnknownTrend::ConfiguredJob {
            job,
            item,
            file: config.path.clone(),
            items: j.config.items.iter().map(|i| i.name.clone()).collect(),
        },
        Err(_) => UnknownTrend::StoredJob { job, item },
    }))
}

/// Ok(Err(..)) when `--target` names no target of the item: neither one it runs on in the
/// config (SPEC 9.5) nor one in the `targets[]` of its stored runs (a target since removed from
/// the config still has its history). A target it runs on but has no result for yet is known:
/// its trend has no points, as a new item's.
fn trend_target_known(
    config: &Config,
    store: &Store,
    job: &str,
    item: &str,
    target: &str,
) -> anyhow::Result<Result<(), UnknownTrend>> {
    /// Targets named in the message, at most (a glob may match hundreds).
    const LISTED: usize = 10;
    let configured = config
        .job(job)
        .ok()
        .and_then(|j| j.config.items.iter().find(|i| i.name == item));
    if configured.is_some_and(|i| i.fleet.iter().any(|t| t == target)) {
        return Ok(Ok(()));
    }
    if store.item_target_ever_stored(job, item, target)? {
        return Ok(Ok(()));
    }
    let why = match configured.map(|i| &i.fleet) {
        Some(fleet) if fleet.is_empty() => format!(
            "the item runs on one target or none in {} (no per-target results: leave out --target) and none of its stored runs has this target",
            config.path.display()
        ),
        Some(fleet) => {
            let mut names = fleet[..fleet.len().min(LISTED)].join(", ");
            if fleet.len() > LISTED {
                names.push_str(&format!(", … ({} targets)", fleet.len()));
            }
            format!(
                "not one it runs on in {} ({names}) and in none of its stored runs",
                config.path.display()
            )
        }
        None => "none of its stored runs has it".to_string(),
    };
    Ok(Err(UnknownTrend::Target {
        job: job.to_string(),
        item: item.to_string(),
        target: target.to_string(),
        why,
    }))
}
