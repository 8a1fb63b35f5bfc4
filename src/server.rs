//! The daemon's HTTP endpoint (`[server] listen`): `/metrics` for Prometheus, `/healthz` for
//! load balancers and systemd-style probes, and a status page a person can open in a browser.
//!
//! The status page is plain server-rendered HTML (no scripts): jobs with their schedule and
//! next runs, the latest report of each (`/runs/<run_id>` renders any stored report with the
//! same HTML as the e-mail), and recent history. Every value is escaped.
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
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

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
    s.metrics.refresh_from_store(&s.store);
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

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
