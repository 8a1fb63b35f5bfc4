//! The daemon's HTTP endpoint (`[server] listen`): `/metrics` for Prometheus, `/healthz` for
//! load balancers and systemd-style probes, and a status page a person can open in a browser.
//!
//! The status page ([`status`]) is server-rendered HTML from askama templates shared with the
//! report (no scripts): each job with its latest runs and next runs, times in the job's zone;
//! `/runs/<run_id>` is the run's HTML report, rendered as for the e-mail.
//!
//! The handlers never block the runtime: state store reads run on tokio's blocking pool, at
//! most [`Limits::concurrent_store_reads`] at once; every request is answered within
//! [`Limits::request_timeout`]; a client must send its request headers within
//! [`Limits::header_read_timeout`]; and an error body never names a file (the log does).
//!
//! Metrics (Prometheus text format):
//! - `runbook_job_runs_total{job,status}`: finished runs by status (pass, warn, fail).
//! - `runbook_job_last_run_timestamp_seconds{job}`: start of the latest finished run.
//! - `runbook_job_last_success_timestamp_seconds{job}`: start of the latest run with status
//!   pass or warn (no item failed).
//! - `runbook_job_duration_seconds{job}`: duration of the latest run.
//! - `runbook_item_status{job,item}`: the latest status of each item: 0 pass, 1 warn, 2 fail,
//!   3 skipped, 4 manual.
//! - `runbook_job_next_run_timestamp_seconds{job}`: the next slot.
//! - `runbook_outbox_pending`: notifications waiting for (re)delivery.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::extract::{Extension, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub mod status;

use crate::config::Config;
use crate::items::Status;
use crate::report::Report;
use crate::store::Store;

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// The daemon's metrics; updated by the loop and the runs, read by `/metrics`.
pub struct Metrics {
    registry: Registry,
    runs: Family<Labels, Counter>,
    last_run: Family<Labels, FloatGauge>,
    last_success: Family<Labels, FloatGauge>,
    duration: Family<Labels, FloatGauge>,
    item_status: Family<Labels, Gauge>,
    next_run: Family<Labels, FloatGauge>,
    outbox_pending: Gauge,
}

fn job_label(job: &str) -> Labels {
    vec![("job".into(), job.into())]
}

/// The value of `runbook_item_status`.
pub fn status_value(s: Status) -> i64 {
    match s {
        Status::Pass => 0,
        Status::Warn => 1,
        Status::Fail => 2,
        Status::Skipped => 3,
        Status::Manual => 4,
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            runs: Family::default(),
            last_run: Family::default(),
            last_success: Family::default(),
            duration: Family::default(),
            item_status: Family::default(),
            next_run: Family::default(),
            outbox_pending: Gauge::default(),
        };
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "runbook_job_runs",
            "Finished runs by job and status",
            m.runs.clone(),
        );
        registry.register(
            "runbook_job_last_run_timestamp_seconds",
            "Start time of the latest finished run (Unix seconds)",
            m.last_run.clone(),
        );
        registry.register(
            "runbook_job_last_success_timestamp_seconds",
            "Start time of the latest run in which no item failed (Unix seconds)",
            m.last_success.clone(),
        );
        registry.register(
            "runbook_job_duration_seconds",
            "Duration of the latest run",
            m.duration.clone(),
        );
        registry.register(
            "runbook_item_status",
            "Latest status of each item: 0 pass, 1 warn, 2 fail, 3 skipped, 4 manual",
            m.item_status.clone(),
        );
        registry.register(
            "runbook_job_next_run_timestamp_seconds",
            "Next scheduled slot (Unix seconds)",
            m.next_run.clone(),
        );
        registry.register(
            "runbook_outbox_pending",
            "Notifications waiting for (re)delivery",
            m.outbox_pending.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Records a finished run.
    pub fn observe(&self, report: &Report) {
        self.observe_latest(report);
        self.runs
            .get_or_create(&vec![
                ("job".into(), report.job.clone()),
                ("status".into(), report.status.as_str().into()),
            ])
            .inc();
    }

    /// Sets the gauges from a run (without counting it: used for history at start).
    fn observe_latest(&self, report: &Report) {
        let job = job_label(&report.job);
        let started = report.started_at.timestamp_millis() as f64 / 1000.0;
        self.last_run.get_or_create(&job).set(started);
        if report.status != Status::Fail {
            self.last_success.get_or_create(&job).set(started);
        }
        self.duration
            .get_or_create(&job)
            .set(report.duration_ms as f64 / 1000.0);
        for item in &report.items {
            self.item_status
                .get_or_create(&vec![
                    ("job".into(), report.job.clone()),
                    ("item".into(), item.name.clone()),
                ])
                .set(status_value(item.status));
        }
    }

    /// Sets the gauges from the stored history, so a restart does not look like "never ran".
    pub fn load_history(&self, config: &Config, store: &Store) {
        for name in config.jobs.keys() {
            let Ok(runs) = store.history(Some(name), 200) else {
                continue;
            };
            if let Some(success) = runs
                .iter()
                .find(|r| r.status == "pass" || r.status == "warn")
                && let Ok(t) = chrono::DateTime::parse_from_rfc3339(&success.started_at)
            {
                self.last_success
                    .get_or_create(&job_label(name))
                    .set(t.timestamp_millis() as f64 / 1000.0);
            }
            if let Ok(Some(last)) = store.last_report(name) {
                let success = self
                    .last_success
                    .get_or_create_owned(&job_label(name))
                    .get();
                self.observe_latest(&last);
                // `observe_latest` sets last_success only for a non-failing run: keep history's.
                if last.status == Status::Fail && success > 0.0 {
                    self.last_success
                        .get_or_create(&job_label(name))
                        .set(success);
                }
            }
        }
    }

    pub fn set_next_run(&self, job: &str, unix: f64) {
        self.next_run.get_or_create(&job_label(job)).set(unix);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self, outbox_pending: i64) -> String {
        self.outbox_pending.set(outbox_pending);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("cannot encode metrics: {e}");
        }
        out
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub store: Store,
    /// The current configuration (replaced on SIGHUP).
    pub config: watch::Receiver<Arc<Config>>,
}

/// How long the server waits for clients and for itself.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A client that has not sent a request's headers within this time is disconnected (a
    /// client that trickles bytes cannot hold a connection open). Also the idle time allowed
    /// between requests on a kept-alive connection.
    pub header_read_timeout: Duration,
    /// A request not answered within this time gets 503 (a state database locked by another
    /// process, a slow disk).
    pub request_timeout: Duration,
    /// At most this many state store reads for HTTP requests at once: while the store is stuck,
    /// requests that keep coming wait for a permit (and time out) instead of each holding a
    /// blocking thread.
    pub concurrent_store_reads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(15),
            concurrent_store_reads: 4,
        }
    }
}

/// The log line for a listen address beyond loopback, or None for a loopback one.
pub fn exposure_warning(addr: SocketAddr) -> Option<String> {
    (!addr.ip().is_loopback()).then(|| {
        format!(
            "[server] listen = {addr} is reachable beyond this host, and the status page, run \
             reports and /metrics have no authentication: listen on 127.0.0.1 or put an \
             authenticating proxy in front"
        )
    })
}

/// Serves until `stop` is cancelled, with the default [`Limits`].
pub async fn serve(listener: tokio::net::TcpListener, state: AppState, stop: CancellationToken) {
    serve_with(listener, state, stop, Limits::default()).await
}

/// Serves until `stop` is cancelled; then lets requests in progress finish (at most
/// `request_timeout`) and returns.
///
/// The accept loop is ours rather than `axum::serve`, which offers no header read timeout:
/// hyper's HTTP/1 connection gets one (and a timer to enforce it) here.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: AppState,
    stop: CancellationToken,
    limits: Limits,
) {
    if let Some(warning) = listener.local_addr().ok().and_then(exposure_warning) {
        tracing::warn!("{warning}");
    }
    let app = axum::Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/runs/{run_id}", get(run_report))
        .layer(axum::middleware::from_fn_with_state(
            limits.request_timeout,
            time_limit,
        ))
        .layer(axum::Extension(StoreReads(Arc::new(
            tokio::sync::Semaphore::new(limits.concurrent_store_reads.max(1)),
        ))))
        .with_state(state);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!("HTTP server cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(limits.request_timeout, conn)
                        .await
                        .unwrap_or(Ok(()))
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, "HTTP connection ended: {e}");
            }
        });
    }
    while connections.join_next().await.is_some() {}
}

/// Answers 503 when a handler takes longer than the request timeout.
async fn time_limit(
    State(limit): State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path().to_string();
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(path, "HTTP request not answered within {limit:?}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the request took too long (is the state database locked?); the daemon's log says more\n",
            )
                .into_response()
        }
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    let pending = s
        .store
        .outbox(Some("pending"))
        .map(|o| o.len() as i64)
        .unwrap_or(-1);
    let body = s.metrics.encode(pending);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The permits for state store reads of HTTP requests ([`Limits::concurrent_store_reads`]).
#[derive(Clone)]
struct StoreReads(Arc<tokio::sync::Semaphore>);

/// Runs a state store read on tokio's blocking pool: SQLite calls block (on the disk, on
/// another process's lock for up to the busy timeout), and the store's mutex is a std one.
/// The permit is held until the read ends, even if the request has timed out meanwhile.
async fn read_store<T: Send + 'static>(
    reads: &StoreReads,
    store: &Store,
    read: impl FnOnce(&Store) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let permit = reads
        .0
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| ReadAborted(e.to_string()))?;
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        read(&store)
    })
    .await
    .map_err(|e| ReadAborted(e.to_string()))?
}

/// A store read that panicked or was cancelled.
#[derive(Debug, thiserror::Error)]
#[error("state store read did not finish: {0}")]
struct ReadAborted(String);

/// The body of a 503 for a store failure. The error (which names the state database's path)
/// goes to the log, not to the client: the page has no authentication.
fn store_unavailable(what: &str, e: &anyhow::Error) -> Response {
    tracing::error!("{what}: state store unavailable: {e:#}");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "state store unavailable; the daemon's log says why\n",
    )
        .into_response()
}

/// 200 when the state store answers; 503 otherwise.
async fn healthz(State(s): State<AppState>, Extension(reads): Extension<StoreReads>) -> Response {
    match read_store(&reads, &s.store, |st| st.outbox(Some("pending"))).await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => store_unavailable("GET /healthz", &e),
    }
}

/// A run's page: its HTML report, as e-mailed.
async fn run_report(
    State(s): State<AppState>,
    Extension(reads): Extension<StoreReads>,
    Path(run_id): Path<String>,
) -> Response {
    if run_id.is_empty() || !run_id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return (StatusCode::NOT_FOUND, "no such run\n").into_response();
    }
    let id = run_id.clone();
    match read_store(&reads, &s.store, move |st| st.report(&id)).await {
        Ok(Some(r)) => Html(crate::report::html::render(&r)).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such run\n").into_response(),
        // The store's own refusals ("still running", "ambiguous prefix") name only the id;
        // an SQLite or decoding failure may name the database file.
        Err(e) if is_store_fault(&e) => store_unavailable(&format!("GET /runs/{run_id}"), &e),
        Err(e) => (StatusCode::NOT_FOUND, format!("{e:#}\n")).into_response(),
    }
}

/// True for a failure of the database itself, as opposed to the store's answer about the run
/// (a one-line refusal naming only the id): SQLite's errors come wrapped in a context that
/// names the database file.
fn is_store_fault(e: &anyhow::Error) -> bool {
    e.chain().count() > 1
        || e.chain().any(|c| {
            c.is::<rusqlite::Error>() || c.is::<serde_json::Error>() || c.is::<ReadAborted>()
        })
}

async fn status_page(
    State(s): State<AppState>,
    Extension(reads): Extension<StoreReads>,
) -> Response {
    let config = s.config.borrow().clone();
    let read_config = config.clone();
    match read_store(&reads, &s.store, move |st| {
        status::StatusData::read(&read_config, st)
    })
    .await
    {
        Ok(data) => Html(status::render(&config, &data, chrono::Utc::now())).into_response(),
        Err(e) => store_unavailable("GET /", &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_have_the_documented_names() {
        let m = Metrics::new();
        let mut r = crate::report::tests::sample();
        r.job = "daily".into();
        m.observe(&r);
        m.set_next_run("daily", 1.8e9);
        let text = m.encode(2);
        for name in [
            "runbook_job_runs_total{",
            "runbook_job_last_run_timestamp_seconds{job=\"daily\"}",
            "runbook_job_duration_seconds{job=\"daily\"}",
            "runbook_item_status{",
            "runbook_job_next_run_timestamp_seconds{job=\"daily\"} 1800000000",
            "runbook_outbox_pending 2",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
    }
}
