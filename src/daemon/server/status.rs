//! The status page (`GET /`): the page a team keeps open. Every job with its description, its
//! schedule in words, its latest runs as status chips (each linking to the run's report) and its
//! next runs; below, the most recent runs of all jobs. Every time is shown in the zone of the
//! job it belongs to (the job's `timezone`), as in the job's reports.
//!
//! It is built from the same askama pieces as the HTML report (`templates/layout.html`,
//! `templates/ui.html`), so the two look alike; askama escapes every value. Reading the store
//! ([`StatusData::read`], blocking) is kept apart from rendering ([`render`], pure), so the
//! server can read on a blocking thread and tests can render what they stored.

use anyhow::Result;
use askama::Template;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::config::Config;
use crate::items::Status;
use crate::report::html::{Tile, colors};
use crate::store::{RunSummary, Store};

/// How many runs of each job are shown as chips.
pub const RUNS_PER_JOB: usize = 8;
/// How many runs the "Recent runs" list shows.
pub const RECENT_RUNS: usize = 20;
/// How many next runs are listed per job.
pub const NEXT_RUNS: usize = 3;

/// What the page shows from the state store.
pub struct StatusData {
    /// The newest runs of each configured job, newest first (by job name).
    pub runs_by_job: Vec<(String, Vec<RunSummary>)>,
    /// The newest runs of all jobs, newest first.
    pub recent: Vec<RunSummary>,
    /// The latest full run's report of each configured job (by job name; neither a dry run nor
    /// limited by `--item`), with its acks: where the open TODOs and unacknowledged failures
    /// come from.
    pub latest: Vec<crate::report::Report>,
}

impl StatusData {
    /// Reads what the page needs (blocking: SQLite).
    pub fn read(config: &Config, store: &Store) -> Result<StatusData> {
        let mut runs_by_job = Vec::with_capacity(config.jobs.len());
        let mut latest = Vec::new();
        for name in config.jobs.keys() {
            runs_by_job.push((name.clone(), store.history(Some(name), RUNS_PER_JOB)?));
            latest.extend(store.last_comparable_report(name)?);
        }
        Ok(StatusData {
            runs_by_job,
            latest,
            recent: store.history(None, RECENT_RUNS)?,
        })
    }
}

/// One run as a chip (and as a line of "Recent runs").
struct RunView {
    tag: &'static str,
    color: &'static str,
    /// `runs/<run_id>` (relative, so the page also works behind a proxy under a prefix); None
    /// for a run without a report (still running, or interrupted).
    href: Option<String>,
    /// Start time in the job's zone.
    when: String,
    /// The chip's hover text: status, time, counts.
    tooltip: String,
    counts: String,
    duration: String,
    trigger: String,
    job: String,
    host: String,
}

/// An open TODO (a `manual` item nobody marked done) or an unacknowledged failure of a job's
/// latest run, with its ack form.
struct TodoView {
    job: String,
    run_id: String,
    item: String,
    summary: String,
    tag: &'static str,
    color: &'static str,
    /// The form's button: "Done" for a TODO, "Take it" for a failure.
    button: &'static str,
    when: String,
}

/// The open TODOs and unacknowledged failures of the jobs' latest runs, failures first.
fn todos(config: &Config, latest: &[crate::report::Report]) -> Vec<TodoView> {
    let mut out = Vec::new();
    for want in [Status::Fail, Status::Manual] {
        for r in latest {
            let tz = config.jobs.get(&r.job).map(|j| j.tz).unwrap_or(Tz::UTC);
            for i in r.items.iter().filter(|i| i.status == want) {
                if r.ack_of(&i.name).is_some() {
                    continue;
                }
                out.push(TodoView {
                    job: r.job.clone(),
                    run_id: r.run_id.clone(),
                    item: i.name.clone(),
                    summary: i.summary.clone(),
                    tag: want.tag(),
                    color: colors(want).0,
                    button: if want == Status::Manual {
                        "Done"
                    } else {
                        "Take it"
                    },
                    when: r
                        .started_at
                        .with_timezone(&tz)
                        .format("%Y-%m-%d %H:%M %Z")
                        .to_string(),
                });
            }
        }
    }
    out
}

/// One job's row.
struct JobView {
    name: String,
    description: String,
    /// The zone its times are shown in.
    zone: String,
    /// The cron expression; None for a job run only by hand.
    schedule: Option<String>,
    /// croner's words for it ("At 10:00 AM").
    schedule_words: String,
    /// The next slots, in the job's zone.
    next: Vec<String>,
    /// "in 3 h 20 min" for the first of them.
    next_in: String,
    latest: Option<RunView>,
    /// Up to [`RUNS_PER_JOB`] runs, newest first (the latest included).
    runs: Vec<RunView>,
    /// Row colours: the latest run's status.
    color: &'static str,
    bg: &'static str,
}

#[derive(Template)]
#[template(path = "status.html")]
struct Page {
    title: String,
    banner_color: &'static str,
    tiles: Vec<Tile>,
    status_word: String,
    verdict: String,
    host: String,
    updated: String,
    version: &'static str,
    jobs: Vec<JobView>,
    recent: Vec<RunView>,
    todos: Vec<TodoView>,
}

/// The status of a stored run (`pass`, `warn`, `fail`, `interrupted`, `running`), for display.
fn run_status(status: &str) -> (&'static str, &'static str, Option<Status>) {
    match status {
        "pass" => ("PASS", colors(Status::Pass).0, Some(Status::Pass)),
        "warn" => ("WARN", colors(Status::Warn).0, Some(Status::Warn)),
        "fail" => ("FAIL", colors(Status::Fail).0, Some(Status::Fail)),
        "interrupted" => ("INT", colors(Status::Fail).0, None),
        "running" => ("RUN", colors(Status::Manual).0, None),
        _ => ("?", colors(Status::Skipped).0, None),
    }
}

/// A stored RFC 3339 time in `tz`: `2026-11-24 10:00 IST`.
fn local(rfc3339: &str, tz: Tz) -> String {
    match DateTime::parse_from_rfc3339(rfc3339) {
        Ok(t) => t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string(),
        Err(_) => rfc3339.to_string(),
    }
}

fn counts_phrase(r: &RunSummary) -> String {
    match (&r.counts, r.status.as_str()) {
        (Some(c), _) => {
            let mut parts = Vec::new();
            for (n, word) in [
                (c.pass, "passed"),
                (c.warn, if c.warn == 1 { "warning" } else { "warnings" }),
                (c.fail, "failed"),
                (c.manual, "to do"),
                (c.skipped, "skipped"),
            ] {
                if n > 0 {
                    parts.push(format!("{n} {word}"));
                }
            }
            if parts.is_empty() {
                "no items".into()
            } else {
                parts.join(", ")
            }
        }
        (None, "running") => "running now".into(),
        (None, "interrupted") => "interrupted: no report".into(),
        (None, _) => String::new(),
    }
}

fn run_view(r: &RunSummary, tz: Tz) -> RunView {
    let (tag, color, _) = run_status(&r.status);
    let when = local(&r.started_at, tz);
    let counts = counts_phrase(r);
    let has_report = r.counts.is_some();
    RunView {
        tag,
        color,
        href: has_report.then(|| format!("runs/{}", r.run_id)),
        tooltip: format!("{tag} {when} · {counts}"),
        when,
        counts,
        duration: r
            .duration_ms
            .map(crate::report::human_ms)
            .unwrap_or_default(),
        trigger: r.trigger.clone(),
        job: r.job.clone(),
        host: r.host.clone(),
    }
}

/// "in 3 h 20 min", "in 45 s", "in 2 d 4 h".
fn time_until(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let s = (to - from).num_seconds().max(0);
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    if d > 0 {
        format!("in {d} d {h} h")
    } else if h > 0 {
        format!("in {h} h {m} min")
    } else if m > 0 {
        format!("in {m} min")
    } else {
        format!("in {s} s")
    }
}

/// The page, from the configuration and what was read from the store (pure).
pub fn render(config: &Config, data: &StatusData, now: DateTime<Utc>) -> String {
    let mut jobs = Vec::with_capacity(config.jobs.len());
    // Jobs by their latest status, for the banner and the tiles.
    let (mut failing, mut warning, mut passing, mut never) = (Vec::new(), 0, 0, 0);
    for (name, job) in &config.jobs {
        let runs: &[RunSummary] = data
            .runs_by_job
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r.as_slice())
            .unwrap_or_default();
        let views: Vec<RunView> = runs.iter().map(|r| run_view(r, job.tz)).collect();
        // The latest finished run decides the job's colour (a run in progress says nothing yet).
        let decisive = runs.iter().find_map(|r| run_status(&r.status).2);
        match decisive {
            Some(Status::Fail) => failing.push(name.as_str()),
            Some(Status::Warn) => warning += 1,
            Some(_) => passing += 1,
            None => never += 1,
        }
        let (color, bg) = match decisive {
            Some(Status::Pass) => (colors(Status::Pass).0, "#ffffff"),
            Some(s) => colors(s),
            None => ("#d0d5dd", "#ffffff"),
        };
        let next = job
            .schedule
            .as_ref()
            .map(|s| s.next_n(job.tz, now, NEXT_RUNS))
            .unwrap_or_default();
        jobs.push(JobView {
            name: name.clone(),
            description: job.config.description.clone(),
            zone: job.tz.name().to_string(),
            schedule: job.schedule.as_ref().map(|s| s.expr.clone()),
            schedule_words: job
                .schedule
                .as_ref()
                .map(|s| s.describe())
                .unwrap_or_default(),
            next_in: next
                .first()
                .map(|t| time_until(now, t.with_timezone(&Utc)))
                .unwrap_or_default(),
            next: next
                .iter()
                .map(|t| t.format("%a %Y-%m-%d %H:%M %Z").to_string())
                .collect(),
            latest: runs.first().map(|r| run_view(r, job.tz)),
            runs: views,
            color,
            bg,
        });
    }
    let recent = data
        .recent
        .iter()
        .map(|r| {
            // A run of a job no longer configured is shown in the default zone.
            let tz = config.jobs.get(&r.job).map(|j| j.tz).unwrap_or_else(|| {
                config
                    .runbook
                    .timezone
                    .parse()
                    .unwrap_or(chrono_tz::Tz::UTC)
            });
            run_view(r, tz)
        })
        .collect();
    let (status, verdict) = if !failing.is_empty() {
        (
            Status::Fail,
            format!(
                "{} failing: {}",
                plural_jobs(failing.len()),
                failing.join(", ")
            ),
        )
    } else if warning > 0 {
        (
            Status::Warn,
            format!("{} with warnings", plural_jobs(warning)),
        )
    } else if passing > 0 {
        (Status::Pass, "every job's latest run passed".to_string())
    } else {
        (Status::Skipped, "no job has run yet".to_string())
    };
    let mut tiles = vec![
        Tile::new(failing.len(), "jobs failing", Status::Fail),
        Tile::new(warning, "with warnings", Status::Warn),
        Tile::new(passing, "passing", Status::Pass),
    ];
    if never > 0 {
        tiles.push(Tile::new(never, "not run yet", Status::Skipped));
    }
    let default_tz: Tz = config.runbook.timezone.parse().unwrap_or(Tz::UTC);
    let status_word = status.as_str().to_uppercase();
    let page = Page {
        title: format!("[runbook] {} {status_word} — {verdict}", config.hostname),
        banner_color: colors(status).0,
        tiles,
        status_word: if status == Status::Skipped {
            "WAITING".into()
        } else {
            status_word
        },
        verdict,
        host: config.hostname.clone(),
        updated: now
            .with_timezone(&default_tz)
            .format("%Y-%m-%d %H:%M %Z")
            .to_string(),
        version: env!("CARGO_PKG_VERSION"),
        jobs,
        recent,
        todos: todos(config, &data.latest),
    };
    page.render().expect("the status template renders")
}

fn plural_jobs(n: usize) -> String {
    format!("{n} job{}", if n == 1 { "" } else { "s" })
}

/// Reads the store and renders the page (blocking; for tests and tools).
pub fn render_from_store(config: &Config, store: &Store, now: DateTime<Utc>) -> Result<String> {
    Ok(render(config, &StatusData::read(config, store)?, now))
}
