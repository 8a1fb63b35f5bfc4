//! The daemon's HTTP endpoint (`[server] listen`): `/metrics` for Prometheus, `/healthz` for
//! load balancers and systemd-style probes, and a status page a person can open in a browser.
//!
//! The status page is plain server-rendered HTML (no scripts): jobs with their schedule and
//! next runs, the latest report of each (`/runs/<run_id>` renders any stored report with the
//! same HTML as the e-mail), and recent history. Every value is escaped.
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

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

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

/// Serves until `stop` is cancelled.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState, stop: CancellationToken) {
    let app = axum::Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/runs/{run_id}", get(run_report))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        tracing::error!("HTTP server stopped: {e}");
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

/// 200 when the state store answers; 503 otherwise.
async fn healthz(State(s): State<AppState>) -> Response {
    match s.store.outbox(Some("pending")) {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("state store unavailable: {e:#}\n"),
        )
            .into_response(),
    }
}

async fn run_report(State(s): State<AppState>, Path(run_id): Path<String>) -> Response {
    let id = if run_id.chars().all(|c| c.is_ascii_alphanumeric()) {
        run_id
    } else {
        String::new()
    };
    match s.store.report(&id) {
        Ok(Some(r)) if !id.is_empty() => Html(crate::report::html::render(&r)).into_response(),
        Ok(_) => (StatusCode::NOT_FOUND, "no such run\n").into_response(),
        Err(e) => (StatusCode::NOT_FOUND, format!("{e:#}\n")).into_response(),
    }
}

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn status_color(s: &str) -> &'static str {
    match s {
        "pass" => "#067647",
        "warn" => "#b54708",
        "fail" | "interrupted" => "#b42318",
        _ => "#475467",
    }
}

async fn status_page(State(s): State<AppState>) -> Html<String> {
    let config = s.config.borrow().clone();
    Html(render_status(&config, &s.store, chrono::Utc::now()))
}

/// The status page (pure apart from reading the store).
pub fn render_status(config: &Config, store: &Store, now: chrono::DateTime<chrono::Utc>) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>runbook on {host}</title></head>\
         <body style=\"font-family:sans-serif;margin:2em;color:#101828\"><h1>runbook on {host}</h1>\
         <p>Configuration {path}; {n} jobs. Times are in each job's zone.</p>\
         <h2>Jobs</h2><table cellpadding=\"6\" style=\"border-collapse:collapse\" border=\"1\">\
         <tr><th>Job</th><th>Schedule</th><th>Next runs</th><th>Latest run</th></tr>",
        host = esc(&config.hostname),
        path = esc(&config.path.display().to_string()),
        n = config.jobs.len()
    );
    for (name, job) in &config.jobs {
        let schedule = match &job.schedule {
            Some(sc) => format!(
                "<code>{}</code><br>{} ({})",
                esc(&sc.expr),
                esc(&sc.describe()),
                esc(job.tz.name())
            ),
            None => "by hand only".into(),
        };
        let next = match &job.schedule {
            Some(sc) => sc
                .next_n(job.tz, now, 3)
                .iter()
                .map(|t| esc(&t.format("%Y-%m-%d %H:%M:%S %Z").to_string()))
                .collect::<Vec<_>>()
                .join("<br>"),
            None => String::new(),
        };
        let latest = match store.last_report(name) {
            Ok(Some(r)) => format!(
                "<a href=\"/runs/{id}\" style=\"color:{c};font-weight:bold\">{st}</a> {when}<br>{counts}",
                id = esc(&r.run_id),
                c = status_color(r.status.as_str()),
                st = esc(&r.status.as_str().to_uppercase()),
                when = esc(&r.started_local()),
                counts = esc(&r.counts_phrase())
            ),
            Ok(None) => "never ran".into(),
            Err(e) => esc(&format!("{e:#}")),
        };
        let _ = write!(
            h,
            "<tr><td><b>{}</b><br>{}</td><td>{schedule}</td><td>{next}</td><td>{latest}</td></tr>",
            esc(name),
            esc(&job.config.description)
        );
    }
    h.push_str("</table><h2>Recent runs</h2><table cellpadding=\"6\" style=\"border-collapse:collapse\" border=\"1\"><tr><th>Started</th><th>Job</th><th>Trigger</th><th>Status</th><th>Duration</th><th>Host</th></tr>");
    for r in store.history(None, 50).unwrap_or_default() {
        let link = if r.finished_at.is_some() && r.status != "interrupted" {
            format!(
                "<a href=\"/runs/{}\">{}</a>",
                esc(&r.run_id),
                esc(&r.started_at)
            )
        } else {
            esc(&r.started_at)
        };
        let _ = write!(
            h,
            "<tr><td>{link}</td><td>{}</td><td>{}</td><td style=\"color:{}\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.job),
            esc(&r.trigger),
            status_color(&r.status),
            esc(&r.status),
            r.duration_ms
                .map(crate::report::human_ms)
                .unwrap_or_default(),
            esc(&r.host)
        );
    }
    h.push_str("</table><p><a href=\"/metrics\">metrics</a> · <a href=\"/healthz\">health</a></p></body></html>");
    h
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

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
