//! The daemon's HTTP endpoint (`[server] listen`): `/metrics` for Prometheus, `/healthz` for
//! load balancers and systemd-style probes, and a status page a person can open in a browser.
//!
//! The status page ([`status`]) is server-rendered HTML from askama templates shared with the
//! report (no scripts): each job with its latest runs and next runs, times in the job's zone;
//! `/runs/<run_id>` is the run's HTML report, rendered as for the e-mail.
//!
//! With `[server] token` set (SPEC 9.6), every path but `/healthz` and `/metrics` needs
//! `Authorization: Bearer <token>` or the cookie that `?token=<token>` sets
//! ([`require_token`]); the token is read from the current configuration on each request.
//!
//! The handlers never block the runtime: state store reads run on tokio's blocking pool, at
//! most [`Limits::concurrent_store_reads`] at once; every request is answered within
//! [`Limits::request_timeout`]; a client must send its request headers within
//! [`Limits::header_read_timeout`]; and an error body never names a file (the log does).
//!
//! Metrics (OpenMetrics text; labels follow Prometheus' conventions: `job_name` is runbook's job,
//! because Prometheus sets `job` itself on every series it scrapes):
//! - `runbook_build_info{version,commit}`: always 1.
//! - `runbook_config_last_reload_successful`: 1 when the latest load of the configuration (start
//!   or SIGHUP) succeeded, 0 when a reload failed and the daemon kept the previous one.
//! - `runbook_config_last_reload_success_timestamp_seconds`: when it last succeeded.
//! - `runbook_job_runs_total{job_name,status}`: finished runs by status (pass, warn, fail).
//! - `runbook_job_last_run_timestamp_seconds{job_name}`: start of the latest finished run.
//! - `runbook_job_last_success_timestamp_seconds{job_name}`: start of the latest run with status
//!   pass or warn (no item failed).
//! - `runbook_job_duration_seconds{job_name}`: duration of the latest run.
//! - `runbook_item_status{job_name,item}`: the latest status of each item: 0 pass, 1 warn,
//!   2 fail, 3 skipped, 4 manual.
//! - `runbook_job_next_run_timestamp_seconds{job_name}`: the next slot (scheduled jobs only).
//! - `runbook_job_schedule_max_interval_seconds{job_name}`: the longest time between two
//!   consecutive slots of the schedule (a year ahead): how old the latest success may get.
//! - `runbook_outbox_pending`: notifications waiting for (re)delivery.
//!
//! The gauges also follow runs stored by other processes (a manual `run-job` sharing the state
//! folder), read from the store on each scrape; `runbook_job_runs_total` counts the daemon's own.
//!
//! Only jobs and items of the current configuration have series: a reload removes the series of
//! jobs and items it removed (and the next-run series of a job that lost its schedule), so no
//! alert keeps firing for something that no longer exists.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Extension, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
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
    max_interval: Family<Labels, FloatGauge>,
    outbox_pending: Gauge,
    reload_successful: Gauge,
    reload_success_time: FloatGauge,
    /// The jobs (and their items) of the current configuration; `None` until [`Metrics::configure`]
    /// is first called (then every job is accepted). Series are only created for what is in
    /// here, so removing what a reload dropped is a comparison of two of these.
    configured: RwLock<Option<BTreeMap<String, JobSeries>>>,
}

/// What a configured job may have series for.
#[derive(Debug, Clone, PartialEq)]
struct JobSeries {
    scheduled: bool,
    items: BTreeSet<String>,
}

fn job_label(job: &str) -> Labels {
    vec![("job_name".into(), job.into())]
}

fn item_labels(job: &str, item: &str) -> Labels {
    vec![
        ("job_name".into(), job.into()),
        ("item".into(), item.into()),
    ]
}

fn runs_labels(job: &str, status: Status) -> Labels {
    vec![
        ("job_name".into(), job.into()),
        ("status".into(), status.as_str().into()),
    ]
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
            max_interval: Family::default(),
            outbox_pending: Gauge::default(),
            reload_successful: Gauge::default(),
            reload_success_time: FloatGauge::default(),
            configured: RwLock::new(None),
        };
        // A gauge, as Prometheus' own `prometheus_build_info`: the text encoder names it as is.
        let build_info = Family::<Labels, Gauge>::default();
        build_info
            .get_or_create(&vec![
                ("version".into(), env!("CARGO_PKG_VERSION").into()),
                ("commit".into(), crate::GIT_COMMIT.into()),
            ])
            .set(1);
        registry.register(
            "runbook_build_info",
            "runbook's version and the git commit it was built from (always 1)",
            build_info,
        );
        registry.register(
            "runbook_config_last_reload_successful",
            "1 when the latest load of the configuration succeeded, 0 when the running one is older than the file",
            m.reload_successful.clone(),
        );
        registry.register(
            "runbook_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully (Unix seconds)",
            m.reload_success_time.clone(),
        );
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
            "runbook_job_schedule_max_interval_seconds",
            "Longest time between two consecutive slots of the job's schedule",
            m.max_interval.clone(),
        );
        registry.register(
            "runbook_outbox_pending",
            "Notifications waiting for (re)delivery",
            m.outbox_pending.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Takes a (re)loaded configuration: from now on only its jobs and items have series, and
    /// the series of jobs and items it no longer has are removed. Publishes each schedule's
    /// longest interval and marks the load successful.
    pub fn configure(&self, config: &Config, now: chrono::DateTime<chrono::Utc>) {
        let new: BTreeMap<String, JobSeries> = config
            .jobs
            .iter()
            .map(|(name, job)| {
                let series = JobSeries {
                    scheduled: job.schedule.is_some(),
                    items: job.config.items.iter().map(|i| i.name.clone()).collect(),
                };
                (name.clone(), series)
            })
            .collect();
        // Up to 10 000 slots per schedule: computed before runs are made to wait for the lock.
        let gaps: Vec<(String, std::time::Duration)> = config
            .jobs
            .iter()
            .filter_map(|(name, job)| {
                let gap = job.schedule.as_ref()?.longest_gap(job.tz, now)?;
                Some((name.clone(), gap))
            })
            .collect();
        let mut configured = self.configured.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = configured.as_ref() {
            for (name, was) in old {
                let now = new.get(name);
                if now.is_none() {
                    let job = job_label(name);
                    self.last_run.remove(&job);
                    self.last_success.remove(&job);
                    self.duration.remove(&job);
                    for status in [Status::Pass, Status::Warn, Status::Fail] {
                        self.runs.remove(&runs_labels(name, status));
                    }
                }
                if now.is_none_or(|j| !j.scheduled) {
                    self.next_run.remove(&job_label(name));
                    self.max_interval.remove(&job_label(name));
                }
                for item in &was.items {
                    if now.is_none_or(|j| !j.items.contains(item)) {
                        self.item_status.remove(&item_labels(name, item));
                    }
                }
            }
        }
        *configured = Some(new);
        drop(configured);
        for (name, gap) in gaps {
            self.max_interval
                .get_or_create(&job_label(&name))
                .set(gap.as_secs_f64());
        }
        self.reload_successful.set(1);
        self.reload_success_time
            .set(now.timestamp_millis() as f64 / 1000.0);
    }

    /// A reload that failed: the daemon keeps the previous configuration.
    pub fn reload_failed(&self) {
        self.reload_successful.set(0);
    }

    /// True when `job` (and `item`, if given) may have series.
    fn accepts(&self, job: &str, item: Option<&str>) -> bool {
        let configured = self.configured.read().unwrap_or_else(|e| e.into_inner());
        match configured.as_ref() {
            None => true,
            Some(jobs) => jobs
                .get(job)
                .is_some_and(|j| item.is_none_or(|i| j.items.contains(i))),
        }
    }

    /// Records a finished run.
    pub fn observe(&self, report: &Report) {
        // A run of a job that a reload removed while it ran leaves no series behind.
        if !self.accepts(&report.job, None) {
            return;
        }
        self.observe_latest(report);
        self.runs
            .get_or_create(&runs_labels(&report.job, report.status))
            .inc();
    }

    /// Sets the gauges from a run (without counting it: used for history at start). A dry run
    /// changed nothing and proves nothing: it is left out.
    fn observe_latest(&self, report: &Report) {
        if report.dry_run {
            return;
        }
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
            if !self.accepts(&report.job, Some(&item.name)) {
                continue;
            }
            self.item_status
                .get_or_create(&item_labels(&report.job, &item.name))
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

    /// Takes runs that another process stored since (a manual `runbook run-job` sharing the
    /// daemon's state): the latest run of each job, when it started after the latest one seen.
    /// So a successful run by hand clears "no success in time". One stored report per job.
    pub fn refresh_from_store(&self, store: &Store) {
        let jobs: Vec<String> = match self
            .configured
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            Some(jobs) => jobs.keys().cloned().collect(),
            None => return,
        };
        for job in jobs {
            let Ok(Some(report)) = store.last_report(&job) else {
                continue;
            };
            let started = report.started_at.timestamp_millis() as f64 / 1000.0;
            let seen = self.last_run.get(&job_label(&job)).map(|g| g.get());
            if seen.is_none_or(|seen| started > seen) {
                self.observe_latest(&report);
            }
        }
    }

    pub fn set_next_run(&self, job: &str, unix: f64) {
        if !self.accepts(job, None) {
            return;
        }
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
/// `token_set`: whether `[server] token` protects the pages (then only `/metrics` and
/// `/healthz` are open, and the traffic is still plain HTTP).
pub fn exposure_warning(addr: SocketAddr, token_set: bool) -> Option<String> {
    (!addr.ip().is_loopback()).then(|| {
        if token_set {
            format!(
                "[server] listen = {addr} is reachable beyond this host over plain HTTP: the \
                 token and the pages cross the network unencrypted, and /metrics and /healthz \
                 are open; put a TLS proxy in front or listen on 127.0.0.1"
            )
        } else {
            format!(
                "[server] listen = {addr} is reachable beyond this host, unauthenticated: the \
                 status page, run reports and /metrics have no authentication; set [server] \
                 token, listen on 127.0.0.1 or put an authenticating proxy in front"
            )
        }
    })
}

/// The cookie `?token=` sets. Its value is a digest of the token, not the token itself: it
/// carries no characters a cookie cannot, and the configured secret never leaves in a response.
pub const TOKEN_COOKIE: &str = "runbook_token";

/// SHA-256 of `text` with a purpose prefix, so comparisons are of equal-length values.
fn digest(purpose: &str, text: &str) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(purpose.as_bytes());
    h.update([0]);
    h.update(text.as_bytes());
    h.finalize().into()
}

/// Equality of two digests in time independent of where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// True when `offered` is the token (compared in constant time, via digests).
fn token_matches(token: &crate::base::secret::Secret, offered: &str) -> bool {
    same(
        &digest("bearer", token.expose()),
        &digest("bearer", offered),
    )
}

/// The cookie value for `token` (hex of a digest).
fn cookie_value(token: &crate::base::secret::Secret) -> String {
    digest("cookie", token.expose())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Lets a request through when no `[server] token` is set, for `/healthz` and `/metrics`, with
/// `Authorization: Bearer <token>`, or with the cookie; turns `?token=<token>` into the cookie
/// and a redirect to the same page without the token in its address; answers 401 otherwise.
/// The token is read from the current configuration, so a reload that changes it applies to
/// the next request.
async fn require_token(
    State(s): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path().to_string();
    if path == "/healthz" || path == "/metrics" {
        return next.run(request).await;
    }
    let token = s
        .config
        .borrow()
        .server
        .as_ref()
        .and_then(|sv| sv.token().cloned());
    let Some(token) = token else {
        return next.run(request).await;
    };
    let headers = request.headers();
    // `?token=`: the browser's way in, once. Checked first, so the token leaves the address
    // even when the browser already has the cookie.
    let query = request.uri().query().unwrap_or("");
    let pairs: Vec<(String, String)> = reqwest::Url::parse(&format!("http://x/?{query}"))
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default();
    if let Some((_, offered)) = pairs.iter().find(|(k, _)| k == "token")
        && token_matches(&token, offered)
    {
        return token_redirect(&path, &pairs, &token, headers);
    }
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            v.split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim())
        })
        .any(|t| token_matches(&token, t));
    let expected_cookie = digest("cookie-check", &cookie_value(&token));
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(name, _)| *name == TOKEN_COOKIE)
        .any(|(_, value)| same(&expected_cookie, &digest("cookie-check", value)));
    if bearer || cookie {
        return next.run(request).await;
    }
    let offered = pairs.iter().find(|(k, _)| k == "token");
    if offered.is_some() {
        tracing::warn!(path, "HTTP request with a wrong ?token= refused");
    } else {
        tracing::warn!(
            path,
            "HTTP request without a valid [server] token refused (401)"
        );
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "this server needs its [server] token: send the header `Authorization: Bearer <token>`, \
         or in a browser open the page once with ?token=<token> appended (a cookie then keeps \
         you signed in)\n",
    )
        .into_response()
}

/// 303 to the same page without `token` in the query, setting the cookie. The Location is
/// relative (the last path segment, or `./`), so it works behind a proxy that adds a prefix, as
/// the status page's links do. `Secure` is added only when a proxy says the request came over
/// TLS (`X-Forwarded-Proto: https`): the server itself speaks plain HTTP.
fn token_redirect(
    path: &str,
    pairs: &[(String, String)],
    token: &crate::base::secret::Secret,
    headers: &axum::http::HeaderMap,
) -> Response {
    let last = path.rsplit('/').next().unwrap_or("");
    let mut location = if last.is_empty() {
        "./".to_string()
    } else {
        last.to_string()
    };
    let rest: Vec<&(String, String)> = pairs.iter().filter(|(k, _)| k != "token").collect();
    if !rest.is_empty() {
        let mut u = reqwest::Url::parse("http://x/").expect("a valid URL");
        u.query_pairs_mut().extend_pairs(rest);
        location.push('?');
        location.push_str(u.query().unwrap_or(""));
    }
    let tls = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    let cookie = format!(
        "{TOKEN_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/{}",
        cookie_value(token),
        if tls { "; Secure" } else { "" }
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, location),
            (header::SET_COOKIE, cookie),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        "signed in; continue to the page without the token in its address\n",
    )
        .into_response()
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
    let token_set = state
        .config
        .borrow()
        .server
        .as_ref()
        .is_some_and(|sv| sv.token().is_some());
    if let Some(warning) = listener
        .local_addr()
        .ok()
        .and_then(|a| exposure_warning(a, token_set))
    {
        tracing::warn!("{warning}");
    }
    let app = axum::Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/runs/{run_id}", get(run_report))
        .route("/runs/{run_id}/ack", post(ack_run))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
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

async fn metrics(State(s): State<AppState>, Extension(reads): Extension<StoreReads>) -> Response {
    // The refresh and the outbox count read SQLite: off the runtime, like every store read.
    let metrics = s.metrics.clone();
    let pending = read_store(&reads, &s.store, move |st| {
        metrics.refresh_from_store(st);
        Ok(st
            .outbox(Some(crate::store::OutboxState::Pending))
            .map(|o| o.len() as i64)
            .unwrap_or(-1))
    })
    .await
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
    match read_store(&reads, &s.store, |st| {
        st.outbox(Some(crate::store::OutboxState::Pending))
    })
    .await
    {
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
    let found = read_store(&reads, &s.store, move |st| {
        let mut found = st.report(&id)?;
        if let Some(r) = found.as_mut() {
            // The charts as when the report was sent: the values before it.
            if let Err(e) = st.fill_history(r) {
                tracing::warn!("cannot read earlier values for the charts: {e:#}");
            }
        }
        Ok(found)
    })
    .await;
    match found {
        Ok(Some(r)) => Html(crate::report::html::render(&r)).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such run\n").into_response(),
        // The store's own refusals ("still running", "ambiguous prefix") name only the id;
        // an SQLite or decoding failure may name the database file.
        Err(e) if is_store_fault(&e) => store_unavailable(&format!("GET /runs/{run_id}"), &e),
        Err(e) => (StatusCode::NOT_FOUND, format!("{e:#}\n")).into_response(),
    }
}

/// `POST /runs/<RUN_ID>/ack` (SPEC 9.6): `runbook ack` from a form (fields `item`, `by`,
/// `note`, and `back = status` to return to the status page instead of the run's page).
/// 303 back to the page when recorded; 404 for a run that does not exist, 400 for a missing
/// field or an item the run does not have, each with the reason in plain text; nothing is
/// recorded then. Behind the token like every page (`require_token`); the cookie is
/// `SameSite=Strict`, so another site's form cannot post here with it.
async fn ack_run(
    State(s): State<AppState>,
    Extension(reads): Extension<StoreReads>,
    Path(run_id): Path<String>,
    body: String,
) -> Response {
    if run_id.is_empty() || !run_id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return (StatusCode::NOT_FOUND, "no such run; nothing was recorded\n").into_response();
    }
    let fields: Vec<(String, String)> = reqwest::Url::parse("http://x/")
        .map(|mut u| {
            u.set_query(Some(&body));
            u.query_pairs().into_owned().collect()
        })
        .unwrap_or_default();
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let (Some(item), Some(by)) = (field("item"), field("by")) else {
        return (
            StatusCode::BAD_REQUEST,
            "an ack needs the form fields `item` and `by` (and optionally `note`); nothing was recorded\n",
        )
            .into_response();
    };
    let note = field("note");
    let back_to_status = field("back").as_deref() == Some("status");
    let id = run_id.clone();
    let done = read_store(&reads, &s.store, move |st| {
        Ok(st.ack(&id, None, &item, &by, note.as_deref()))
    })
    .await;
    match done {
        Ok(Ok((report, ack))) => {
            tracing::info!(run_id = %report.run_id, job = %report.job, item = %ack.item, by = %ack.by, "acknowledged");
            let location = if back_to_status {
                "../../".to_string()
            } else {
                format!("../{}", report.run_id)
            };
            (
                StatusCode::SEE_OTHER,
                [(header::LOCATION, location)],
                "recorded\n",
            )
                .into_response()
        }
        Ok(Err(e @ crate::store::AckError::NotFound(_))) => {
            (StatusCode::NOT_FOUND, format!("{e}\n")).into_response()
        }
        Ok(Err(e @ crate::store::AckError::BadInput(_))) => {
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
        Ok(Err(crate::store::AckError::Store(e))) | Err(e) => {
            store_unavailable(&format!("POST /runs/{run_id}/ack"), &e)
        }
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
            "runbook_job_runs_total{job_name=\"daily\",status=\"fail\"} 1",
            "runbook_job_last_run_timestamp_seconds{job_name=\"daily\"}",
            "runbook_job_duration_seconds{job_name=\"daily\"}",
            "runbook_item_status{job_name=\"daily\",item=\"Disk\"} 1",
            "runbook_job_next_run_timestamp_seconds{job_name=\"daily\"} 1800000000",
            "runbook_outbox_pending 2",
            "runbook_config_last_reload_successful ",
            "runbook_config_last_reload_success_timestamp_seconds ",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
        let build = format!(
            "runbook_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            crate::GIT_COMMIT
        );
        assert!(text.contains(&build), "{build} missing in:\n{text}");
        // Prometheus sets `job` on every scraped series: ours would become `exported_job`.
        assert!(!text.contains("{job="), "{text}");
    }

    fn config(text: &str) -> Config {
        let dir = tempfile::tempdir().expect("temp");
        let path = dir.path().join("jobs.toml");
        let text = format!(
            "[runbook]\ntimezone = \"UTC\"\nstate_dir = {:?}\n{text}",
            dir.path().join("state")
        );
        Config::from_text(&path, &text).expect("valid config")
    }

    /// `daily` with the sample report's items, `weekly` with one item.
    const TWO_JOBS: &str = r#"
[jobs.daily]
schedule = "0 8 * * *"
[[jobs.daily.items]]
name = "Disk"
kind = "manual"
[[jobs.daily.items]]
name = "Review Grafana"
kind = "manual"
[jobs.weekly]
schedule = "0 8 * * MON"
[[jobs.weekly.items]]
name = "Disk"
kind = "manual"
"#;

    #[test]
    fn the_server_token_is_a_secret_like_the_others() {
        let c = config("[server]\nlisten = \"127.0.0.1:0\"\ntoken = \"tok-3141-inline\"\n");
        let token = c.server.as_ref().and_then(|s| s.token()).expect("token");
        assert_eq!(token.expose(), "tok-3141-inline");
        assert!(c.secrets().iter().any(|s| s.expose() == "tok-3141-inline"));
        assert_eq!(
            c.redactor.redact("printed tok-3141-inline"),
            "printed [redacted]"
        );
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("server.token is written inline")),
            "{:?}",
            c.warnings
        );
        assert!(!format!("{c:?}").contains("tok-3141-inline"));

        let dir = tempfile::tempdir().expect("temp");
        let path = dir.path().join("jobs.toml");
        for (token, says) in [
            (
                "{ env = \"RUNBOOK_NO_SUCH_TOKEN_VAR\" }",
                "server.token: environment variable RUNBOOK_NO_SUCH_TOKEN_VAR is not set",
            ),
            ("\"  \"", "server.token is empty"),
        ] {
            let text = format!("[runbook]\n[server]\nlisten = \"127.0.0.1:0\"\ntoken = {token}\n");
            let e = Config::from_text(&path, &text)
                .expect_err(token)
                .to_string();
            assert!(e.contains(says) && e.contains("jobs.toml:4:"), "{e}");
        }
    }

    #[test]
    fn tokens_compare_by_value() {
        let t = crate::base::secret::Secret::literal("abc-123");
        assert!(token_matches(&t, "abc-123"));
        for other in ["", "abc-12", "abc-1234", "ABC-123"] {
            assert!(!token_matches(&t, other), "{other:?}");
        }
    }

    #[test]
    fn a_reload_removes_the_series_of_removed_jobs_and_items() {
        let m = Metrics::new();
        m.configure(&config(TWO_JOBS), chrono::Utc::now());
        let text = m.encode(0);
        for line in [
            "runbook_job_schedule_max_interval_seconds{job_name=\"daily\"} 86400",
            "runbook_job_schedule_max_interval_seconds{job_name=\"weekly\"} 604800",
        ] {
            assert!(text.contains(line), "{line} missing in:\n{text}");
        }
        for job in ["daily", "weekly"] {
            let mut r = crate::report::tests::sample();
            r.job = job.into();
            m.observe(&r);
            m.set_next_run(job, 1.8e9);
        }
        let before = m.encode(0);
        assert!(before.contains("job_name=\"weekly\""), "{before}");
        assert!(
            before.contains("{job_name=\"daily\",item=\"Review Grafana\"} 4"),
            "{before}"
        );
        // Items of a report that are not in the configuration get no series.
        assert!(!before.contains("Backups completed"), "{before}");

        // `weekly` is gone, `daily` lost an item and its schedule.
        let reloaded = config(
            r#"
[jobs.daily]
[[jobs.daily.items]]
name = "Disk"
kind = "manual"
"#,
        );
        m.reload_failed();
        assert!(
            m.encode(0)
                .contains("runbook_config_last_reload_successful 0")
        );
        m.configure(&reloaded, chrono::Utc::now());
        let after = m.encode(0);
        assert!(!after.contains("weekly"), "{after}");
        assert!(!after.contains("Review Grafana"), "{after}");
        for gone in [
            "runbook_job_next_run_timestamp_seconds{",
            "runbook_job_schedule_max_interval_seconds{",
        ] {
            assert!(!after.contains(gone), "a job without schedule: {after}");
        }
        assert!(
            after.contains("runbook_item_status{job_name=\"daily\",item=\"Disk\"} 1"),
            "{after}"
        );
        assert!(
            after.contains("runbook_job_runs_total{job_name=\"daily\",status=\"fail\"} 1"),
            "counters of kept jobs survive a reload: {after}"
        );
        assert!(
            after.contains("runbook_config_last_reload_successful 1"),
            "{after}"
        );

        // A run of the removed job that finishes after the reload leaves nothing behind.
        let mut late = crate::report::tests::sample();
        late.job = "weekly".into();
        m.observe(&late);
        m.set_next_run("weekly", 1.8e9);
        assert!(!m.encode(0).contains("weekly"));
    }
}
