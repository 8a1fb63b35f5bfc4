//! Delivery of reports: `file`, `email`, `slack`, `heartbeat`.
//!
//! Every delivery goes through the outbox in the state store ([`crate::store::Store`]): the
//! runner first records one outbox row per (run, channel), then tries to deliver it. A delivery
//! that fails stays in the outbox and is retried later (`outbox --flush`, the daemon). Because
//! the row is keyed by (run, channel) and marked `sent` in the same place, a report is never
//! delivered twice for one run and channel. Delivery never changes a run's exit code.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::items::Status;
use crate::report::Report;

pub mod email;
pub mod file;
pub mod heartbeat;
pub mod slack;

/// Send when the run is at least this bad.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum On {
    #[default]
    Always,
    Warn,
    Fail,
}

impl On {
    /// Whether a run with `status` should be sent.
    pub fn wants(self, status: Status) -> bool {
        match self {
            On::Always => true,
            On::Warn => status.severity() >= 1,
            On::Fail => status.severity() >= 2,
        }
    }
}

/// `[notify.NAME]`: one channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NotifierConfig {
    Email(email::EmailConfig),
    Slack(slack::SlackConfig),
    File(file::FileConfig),
    Heartbeat(heartbeat::HeartbeatConfig),
}

impl NotifierConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            NotifierConfig::Email(_) => "email",
            NotifierConfig::Slack(_) => "slack",
            NotifierConfig::File(_) => "file",
            NotifierConfig::Heartbeat(_) => "heartbeat",
        }
    }

    pub fn on(&self) -> On {
        match self {
            NotifierConfig::Email(c) => c.on,
            NotifierConfig::Slack(c) => c.on,
            NotifierConfig::File(c) => c.on,
            // A heartbeat must be pinged after every run: an outside monitor relies on it.
            NotifierConfig::Heartbeat(_) => On::Always,
        }
    }

    /// Load-time checks and secret resolution. Ok holds warnings.
    pub fn prepare(&mut self, name: &str, base: &Path) -> Result<Vec<String>, Vec<String>> {
        match self {
            NotifierConfig::Email(c) => c.prepare(name, base),
            NotifierConfig::Slack(c) => c.prepare(name, base),
            NotifierConfig::File(c) => c.prepare(name, base),
            NotifierConfig::Heartbeat(c) => c.prepare(name, base),
        }
    }

    /// Delivers one report. The error is a one-line reason with no secret in it.
    pub async fn deliver(&self, report: &Report) -> Result<(), String> {
        let fut = async {
            match self {
                NotifierConfig::Email(c) => c.deliver(report).await,
                NotifierConfig::Slack(c) => c.deliver(report).await,
                NotifierConfig::File(c) => c.deliver(report).await,
                NotifierConfig::Heartbeat(c) => c.deliver(report).await,
            }
        };
        match tokio::time::timeout(Duration::from_secs(60), fut).await {
            Ok(r) => r,
            Err(_) => Err("delivery timed out after 60s".into()),
        }
    }
}

/// One line of a report's `notifications` list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NotificationStatus {
    pub channel: String,
    /// `sent`, `queued` (will be retried), `skipped` (below the channel's `on`), `failed`.
    pub status: String,
    pub error: Option<String>,
}

/// Pings that mark the start of a run (heartbeat `/start`). Best effort: never delays the run
/// for more than a few seconds, never changes its outcome.
pub async fn run_started(config: &crate::config::Config, job: &crate::config::Job) {
    for name in &job.notify {
        if let Some(NotifierConfig::Heartbeat(h)) = config.notifiers.get(name) {
            if let Err(e) = tokio::time::timeout(Duration::from_secs(5), h.ping_start())
                .await
                .unwrap_or(Err("timed out".into()))
            {
                tracing::warn!(channel = %name, "heartbeat start ping failed: {e}");
            }
        }
    }
}

/// Delivers a finished, stored report to the job's channels, through the outbox, and records
/// the outcome in the report's `notifications` (and in the store).
pub async fn dispatch(
    config: &crate::config::Config,
    store: &crate::store::Store,
    job: &crate::config::Job,
    report: &mut Report,
) {
    let mut statuses = Vec::new();
    for name in &job.notify {
        let Some(notifier) = config.notifiers.get(name) else {
            continue;
        };
        if report.dry_run && notifier.kind() == "heartbeat" {
            statuses.push(NotificationStatus {
                channel: name.clone(),
                status: "skipped".into(),
                error: None,
            });
            continue;
        }
        if !notifier.on().wants(report.status) {
            statuses.push(NotificationStatus {
                channel: name.clone(),
                status: "skipped".into(),
                error: None,
            });
            continue;
        }
        if let Err(e) = store.outbox_enqueue(&report.run_id, name) {
            tracing::error!(channel = %name, "cannot record the delivery in the outbox: {e:#}");
        }
        let status = match notifier.deliver(report).await {
            Ok(()) => {
                let _ = store.outbox_mark_sent(&report.run_id, name);
                NotificationStatus {
                    channel: name.clone(),
                    status: "sent".into(),
                    error: None,
                }
            }
            Err(e) => {
                tracing::warn!(channel = %name, run_id = %report.run_id, "delivery failed, queued for retry: {e}");
                let next = outbox::next_attempt(1);
                let _ = store.outbox_mark_failed(&report.run_id, name, &e, &next);
                NotificationStatus {
                    channel: name.clone(),
                    status: "queued".into(),
                    error: Some(e),
                }
            }
        };
        statuses.push(status);
    }
    report.notifications = statuses;
    if let Err(e) = store.update_report(report) {
        tracing::error!(run_id = %report.run_id, "cannot store notification results: {e:#}");
    }
}

pub mod outbox;

impl NotifierConfig {
    /// `check-config --connect`: can the channel be reached (without sending a report)?
    pub async fn check_reachable(&self) -> Result<String, String> {
        match self {
            NotifierConfig::File(c) => {
                std::fs::create_dir_all(&c.dir)
                    .map_err(|e| format!("cannot create {}: {e}", c.dir.display()))?;
                let probe = c.dir.join(".runbook-write-test");
                std::fs::write(&probe, b"ok")
                    .map_err(|e| format!("cannot write into {}: {e}", c.dir.display()))?;
                let _ = std::fs::remove_file(&probe);
                Ok(format!("folder {} is writable", c.dir.display()))
            }
            _ => Ok("not checked (use notify-test to send a test message)".into()),
        }
    }
}

/// `notify-test [CHANNEL]`: sends a small test report through each (or one) channel.
pub async fn notify_test(
    config: &crate::config::Config,
    channel: Option<&str>,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let names: Vec<&String> = match channel {
        Some(c) => match config.notifiers.get_key_value(c) {
            Some((k, _)) => vec![k],
            None => {
                let known: Vec<&str> = config.notifiers.keys().map(String::as_str).collect();
                eprintln!(
                    "runbook: unknown notifier {c:?} (defined: {})",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                );
                return ExitCode::from(crate::cli::EXIT_USAGE);
            }
        },
        None => config.notifiers.keys().collect(),
    };
    if names.is_empty() {
        eprintln!(
            "runbook: no notifiers are configured in {}",
            config.path.display()
        );
        return ExitCode::from(crate::cli::EXIT_USAGE);
    }
    let report = test_report(config);
    let mut ok = true;
    for name in names {
        let n = &config.notifiers[name];
        match n.deliver(&report).await {
            Ok(()) => println!("{name} ({}): delivered", n.kind()),
            Err(e) => {
                ok = false;
                println!("{name} ({}): FAILED: {e}", n.kind());
            }
        }
    }
    ExitCode::from(if ok { 0 } else { 1 })
}

/// The report sent by `notify-test`.
pub fn test_report(config: &crate::config::Config) -> Report {
    let now = chrono::Utc::now().fixed_offset();
    let mut r = Report {
        run_id: ulid::Ulid::new().to_string(),
        job: "notify-test".into(),
        description: "Test message from runbook notify-test".into(),
        trigger: crate::items::Trigger::Manual,
        scheduled_for: None,
        started_at: now,
        finished_at: now,
        duration_ms: 0,
        host: config.hostname.clone(),
        timezone: config.runbook.timezone.clone(),
        status: Status::Pass,
        counts: Default::default(),
        dry_run: false,
        items: vec![crate::report::ItemReport {
            name: "Test message".into(),
            kind: "manual".into(),
            status: Status::Pass,
            summary: "If you can read this, runbook can reach this channel.".into(),
            details: vec![],
            data: serde_json::json!({}),
            duration_ms: 0,
            change: crate::report::Change::Same,
        }],
        missed: vec![],
        notifications: vec![],
    };
    r.finish_status();
    r
}
