//! Delivery of reports: `file`, `email`, `slack`, `heartbeat`, `webhook`, `pagerduty` (the
//! "deliver" layer: channels and the outbox).
//!
//! Configuration is validated, then built, then run: `[notify.NAME]` deserializes into
//! [`NotifierConfig`] (the options each channel module defines); [`NotifierConfig::prepare`]
//! checks them, resolves secrets and returns a built [`Notifier`] (an SMTP endpoint with its
//! TLS parameters and credentials, a parsed webhook or ping URL, a folder), so nothing is
//! re-checked at run time. This module knows nothing of `config`: the configuration assembles
//! the built notifiers and the [`RetryPolicy`] and hands them in.
//!
//! Every delivery goes through the outbox in the state store ([`crate::store::Store`]): the
//! runner stores the report and one outbox entry per channel it goes to (per event for
//! `pagerduty`) in one transaction ([`plan_run`]), then delivers them all at once
//! ([`deliver_run`]), each through [`Deliverer::deliver`], the one routine that also serves every retry
//! ([`outbox::flush`]: the daemon at start and every 30 s, `outbox --flush`). A process that dies in between leaves the rows `pending`; a
//! delivery that fails stays in the outbox and is retried later with backoff. The entry is the
//! idempotency record: a sender must claim it first (see [`outbox`]), so a report is never
//! delivered twice for one run and channel. The stored report is never changed: what a user
//! sees in `notifications` is derived from the outbox rows when the report is read. Delivery
//! never changes a run's exit code.
//!
//! Error messages of every channel are one line that says which step failed (DNS, connection
//! refused, TLS, authentication, an HTTP or SMTP status) and never contain a secret: the SMTP
//! password and the webhook and ping URLs (the URL itself is the credential) are kept out.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use serde::{Deserialize, Serialize};

use crate::items::Status;
use crate::report::{DeliveryStatus, NotificationStatus, Report};
use crate::store::{Claim, OutboxKey, Store};

pub mod email;
pub mod file;
pub mod heartbeat;
pub mod outbox;
pub mod pagerduty;
pub mod slack;
pub mod webhook;

pub use outbox::RetryPolicy;

/// Send when the run is at least this bad (`change`: when it differs from the previous
/// comparable run, see `Report::changed`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum On {
    #[default]
    Always,
    Warn,
    Fail,
    Change,
}

impl On {
    /// Whether `report` should be sent.
    pub fn wants(self, report: &Report) -> bool {
        let status = report.status;
        match self {
            On::Always => true,
            On::Warn => status.severity() >= 1,
            On::Fail => status.severity() >= 2,
            On::Change => report.changed(),
        }
    }
}

/// `[notify.NAME]`: one channel's options, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NotifierConfig {
    Email(email::EmailConfig),
    Slack(slack::SlackConfig),
    File(file::FileConfig),
    Heartbeat(heartbeat::HeartbeatConfig),
    Webhook(webhook::WebhookConfig),
    #[serde(rename = "pagerduty")]
    PagerDuty(pagerduty::PagerDutyConfig),
}

impl NotifierConfig {
    /// Load-time checks and secret resolution: the built notifier and warnings, or the errors.
    pub fn prepare(&self, name: &str, base: &Path) -> Result<(Notifier, Vec<String>), Vec<String>> {
        let (sender, on, warnings) = match self {
            NotifierConfig::Email(c) => {
                let (m, w) = c.prepare(name, base)?;
                (Sender::Email(m), c.on, w)
            }
            NotifierConfig::Slack(c) => {
                let (s, w) = c.prepare(name, base)?;
                (Sender::Slack(s), c.on, w)
            }
            NotifierConfig::File(c) => {
                let (f, w) = c.prepare(name, base)?;
                (Sender::File(f), c.on, w)
            }
            // A heartbeat must be pinged after every run: an outside monitor relies on it.
            NotifierConfig::Heartbeat(c) => {
                let (p, w) = c.prepare(name, base)?;
                (Sender::Heartbeat(p), On::Always, w)
            }
            NotifierConfig::Webhook(c) => {
                let (p, w) = c.prepare(name, base)?;
                (Sender::Webhook(p), c.on, w)
            }
            NotifierConfig::PagerDuty(c) => {
                let (e, w) = c.prepare(name, base)?;
                (Sender::PagerDuty(e), c.on, w)
            }
        };
        Ok((Notifier { on, sender }, warnings))
    }
}

/// A built channel's sender.
#[derive(Debug, Clone)]
pub enum Sender {
    Email(email::Mailer),
    Slack(slack::Webhook),
    File(file::Folder),
    Heartbeat(heartbeat::Pinger),
    Webhook(webhook::Poster),
    PagerDuty(pagerduty::Events),
}

/// One built channel: when it wants a report, and how it sends it.
#[derive(Debug, Clone)]
pub struct Notifier {
    pub on: On,
    pub sender: Sender,
}

/// The built channels by name (`[notify.NAME]`).
pub type Notifiers = BTreeMap<String, Notifier>;

/// Why a delivery failed: one line that names the failed step, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The whole delivery took longer than [`DELIVERY_TIMEOUT`] (or a check's limit).
    #[error("timeout: {0}")]
    Timeout(String),
    /// The channel said no, or could not be reached.
    #[error("{0}")]
    Failed(String),
    /// The channel refused this delivery for good (PagerDuty's 4xx: a bad routing key, an
    /// invalid event): sending it again cannot succeed, so it is not retried.
    #[error("{0}")]
    Rejected(String),
}

impl From<HttpClientError> for DeliveryError {
    fn from(e: HttpClientError) -> Self {
        DeliveryError::Failed(e.to_string())
    }
}

impl From<String> for DeliveryError {
    fn from(s: String) -> Self {
        DeliveryError::Failed(s)
    }
}

impl Notifier {
    pub fn kind(&self) -> &'static str {
        match self.sender {
            Sender::Email(_) => "email",
            Sender::Slack(_) => "slack",
            Sender::File(_) => "file",
            Sender::Heartbeat(_) => "heartbeat",
            Sender::Webhook(_) => "webhook",
            Sender::PagerDuty(_) => "pagerduty",
        }
    }

    /// The secrets this channel was given (for the report redactor).
    pub fn secrets(&self) -> Vec<&crate::base::secret::Secret> {
        match &self.sender {
            Sender::Email(m) => m.secret().into_iter().collect(),
            Sender::Slack(w) => vec![w.secret()],
            Sender::File(_) => vec![],
            Sender::Heartbeat(p) => vec![p.secret()],
            Sender::Webhook(p) => p.secrets(),
            Sender::PagerDuty(e) => vec![e.secret()],
        }
    }

    /// The folder of a `file` notifier.
    pub fn file_dir(&self) -> Option<&Path> {
        match &self.sender {
            Sender::File(f) => Some(&f.dir),
            _ => None,
        }
    }

    /// Whether this channel gets `report`: its `on` wants the report's status, and a dry run
    /// never pings a heartbeat (it is not a run the outside monitor should count).
    pub fn wants(&self, report: &Report) -> bool {
        !(report.dry_run && matches!(self.sender, Sender::Heartbeat(_))) && self.on.wants(report)
    }

    /// Sends one report, under [`DELIVERY_TIMEOUT`]. A `pagerduty` channel sends events, not
    /// reports: its outbox entries carry them ([`plan_run`], [`Notifier::send_entry`]).
    pub async fn send(&self, report: &Report) -> Result<(), DeliveryError> {
        self.send_entry(report, None).await
    }

    /// `notify-test`: sends the test `report`; a `pagerduty` channel sends its harmless test
    /// event instead (a `resolve` that pages nobody, see [`pagerduty::Events::send_test`]).
    pub async fn send_test(&self, report: &Report) -> Result<(), DeliveryError> {
        match &self.sender {
            Sender::PagerDuty(e) => {
                match tokio::time::timeout(DELIVERY_TIMEOUT, e.send_test(&report.host)).await {
                    Ok(r) => r,
                    Err(_) => Err(DeliveryError::Timeout(format!(
                        "delivery took longer than {}s",
                        DELIVERY_TIMEOUT.as_secs()
                    ))),
                }
            }
            _ => self.send(report).await,
        }
    }

    /// Sends one outbox entry, under [`DELIVERY_TIMEOUT`]: the report, or the entry's own
    /// `event` payload (a `pagerduty` event).
    pub async fn send_entry(
        &self,
        report: &Report,
        event: Option<&str>,
    ) -> Result<(), DeliveryError> {
        let fut = async {
            match &self.sender {
                Sender::Email(m) => m.deliver(report).await,
                Sender::Slack(w) => w.deliver(report).await,
                Sender::File(f) => f.deliver(report).await,
                Sender::Heartbeat(p) => p.deliver(report).await,
                Sender::Webhook(p) => p.deliver(report).await,
                Sender::PagerDuty(e) => match event {
                    Some(event) => e.send_event(event).await,
                    None => Err(DeliveryError::Rejected(
                        "a pagerduty channel sends one event per item, not a report; this entry has no event".into(),
                    )),
                },
            }
        };
        match tokio::time::timeout(DELIVERY_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(DeliveryError::Timeout(format!(
                "delivery took longer than {}s",
                DELIVERY_TIMEOUT.as_secs()
            ))),
        }
    }

    /// `check-config --connect`: can the channel be reached (without sending a report)?
    pub async fn check_reachable(&self) -> Result<String, DeliveryError> {
        let fut = async {
            match &self.sender {
                Sender::File(f) => {
                    std::fs::create_dir_all(&f.dir)
                        .map_err(|e| format!("cannot create {}: {e}", f.dir.display()))?;
                    let probe = f.dir.join(".runbook-write-test");
                    std::fs::write(&probe, b"ok")
                        .map_err(|e| format!("cannot write into {}: {e}", f.dir.display()))?;
                    let _ = std::fs::remove_file(&probe);
                    Ok(format!("folder {} is writable", f.dir.display()))
                }
                Sender::Email(m) => m.check_reachable().await.map_err(|e| e.to_string()),
                // Posting or pinging would send something; connecting (DNS, TCP, TLS) is what
                // can be checked without side effects.
                Sender::Slack(w) => probe_https(w.url()).await,
                Sender::Heartbeat(p) => probe_https(p.url()).await,
                Sender::Webhook(p) => probe_https(p.url()).await,
                Sender::PagerDuty(e) => probe_https(e.url()).await,
            }
        };
        match tokio::time::timeout(Duration::from_secs(30), fut).await {
            Ok(r) => r.map_err(DeliveryError::Failed),
            Err(_) => Err(DeliveryError::Timeout("no answer within 30s".into())),
        }
    }
}

/// The longest one delivery may take (SMTP conversation, webhook post with its 429 waits).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one HTTP request (webhook, ping) may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

/// The HTTP client for webhooks and pings: rustls, timeouts, no redirects to follow blindly
/// with a secret URL (a redirect is reported as an error).
pub(crate) fn http_client() -> Result<reqwest::Client, HttpClientError> {
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("runbook/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| HttpClientError(error_chain(&e.without_url())))
}

/// The HTTP client could not be built (no TLS roots, say): no HTTP notifier can deliver.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot set up the HTTP client: {0}")]
pub(crate) struct HttpClientError(String);

impl From<HttpClientError> for String {
    fn from(e: HttpClientError) -> String {
        e.to_string()
    }
}

/// `Display` of an error and its sources, joined with ": " (a source already quoted by its
/// parent is not repeated).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The part of a secret URL that may be shown: `https://hooks.slack.com:443` (scheme, host,
/// port; never the path or query, which carry the credential).
pub fn public_origin(url: &reqwest::Url) -> String {
    format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or("?"),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// One line that says which step of an HTTP request failed, without the URL.
pub(crate) fn describe_http_error(
    e: reqwest::Error,
    origin: &str,
    secret: &crate::base::secret::Secret,
) -> String {
    let e = e.without_url();
    let chain = crate::base::secret::redact(&error_chain(&e), &[secret]);
    let lower = chain.to_lowercase();
    if e.is_timeout() || lower.contains("timed out") {
        return format!(
            "timeout: {origin} did not answer within {}s",
            HTTP_TIMEOUT.as_secs()
        );
    }
    if lower.contains("dns error")
        || lower.contains("failed to lookup address")
        || lower.contains("name or service not known")
    {
        return format!("DNS: cannot resolve the host of {origin}: {chain}");
    }
    if lower.contains("connection refused") {
        return format!("connection refused by {origin}");
    }
    if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
        return format!("TLS with {origin} failed: {chain}");
    }
    if e.is_connect() {
        return format!("cannot connect to {origin}: {chain}");
    }
    format!("request to {origin} failed: {chain}")
}

/// Describes a non-success HTTP answer: status and the first line of the body (Slack explains
/// itself there: `invalid_payload`, `no_service`), redacted.
pub(crate) async fn describe_http_status(
    resp: reqwest::Response,
    origin: &str,
    secret: &crate::base::secret::Secret,
) -> String {
    let status = resp.status();
    // Only the first line is shown: a misbehaving endpoint's huge answer is not read to its end.
    let body = crate::base::bounded::read_body(resp, crate::base::bounded::NOTIFY_BODY_CAP)
        .await
        .map(|b| b.text())
        .unwrap_or_default();
    let first: String = body
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    let first = crate::base::secret::redact(&first, &[secret]);
    let class = if status.is_client_error() {
        "rejected by"
    } else {
        "server error at"
    };
    if first.is_empty() {
        format!("HTTP {status}: {class} {origin}")
    } else {
        format!("HTTP {status}: {class} {origin}: {first}")
    }
}

/// Connects to a secret URL's host (DNS, TCP, TLS for https) without sending a request.
async fn probe_https(parsed: &reqwest::Url) -> Result<String, String> {
    let origin = public_origin(parsed);
    let host = parsed.host_str().unwrap_or("").to_string();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let mut addrs = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("DNS: cannot resolve {host}: {e}"))?;
    let addr = addrs
        .next()
        .ok_or_else(|| format!("DNS: {host} has no address"))?;
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| format!("timeout: connecting to {origin} took longer than 10s"))?
    .map_err(|e| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            format!("connection refused by {origin}")
        } else {
            format!("cannot connect to {origin}: {e}")
        }
    })?;
    Ok(format!(
        "{origin} accepts connections (nothing was sent; use notify-test to post)"
    ))
}

/// Pings that mark the start of a run (heartbeat `/start`) on the channels `names`, all at
/// once. Best effort: never delays the run for more than a few seconds, never changes its
/// outcome, never queued (a late start ping means nothing).
pub async fn run_started(notifiers: &Notifiers, names: &[String]) {
    let mut pings = JoinSet::new();
    for name in names {
        if let Some(Notifier {
            sender: Sender::Heartbeat(h),
            ..
        }) = notifiers.get(name)
        {
            let h = h.clone();
            let name = name.clone();
            pings.spawn(async move {
                let r = tokio::time::timeout(Duration::from_secs(5), h.ping_start())
                    .await
                    .unwrap_or_else(|_| Err(DeliveryError::Timeout("no answer within 5s".into())));
                if let Err(e) = r {
                    tracing::warn!(channel = %name, "heartbeat start ping failed: {e}");
                }
            });
        }
    }
    while pings.join_next().await.is_some() {}
}

/// Where `report` goes among the channels `names` (a job's `notify`), in their order: each
/// `queued` (it gets an outbox entry, written with the report) or `skipped` (below its `on`;
/// a dry run for a heartbeat). This is the report's stored `notifications`.
pub fn plan(notifiers: &Notifiers, names: &[String], report: &Report) -> Vec<NotificationStatus> {
    names
        .iter()
        .filter_map(|name| {
            let n = notifiers.get(name)?;
            Some(NotificationStatus {
                channel: name.clone(),
                status: if n.wants(report) {
                    DeliveryStatus::Queued
                } else {
                    DeliveryStatus::Skipped
                },
                error: None,
            })
        })
        .collect()
}

/// The outbox entries of a planned report: one per `queued` channel.
pub fn outbox_keys(report: &Report) -> Vec<OutboxKey> {
    report
        .notifications
        .iter()
        .filter(|n| n.status == DeliveryStatus::Queued)
        .map(|n| OutboxKey::report(&report.run_id, &n.channel))
        .collect()
}

/// One outbox entry to write with a report: its key and, for an event, its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub key: OutboxKey,
    /// The event (JSON) for a per-item channel (`pagerduty`); None: the entry sends the report.
    pub payload: Option<String>,
}

/// Where a finished `report` goes among the channels `names` (a job's `notify`) and the outbox
/// entries to write with it. Like [`plan`], with the per-item channels: a `pagerduty` channel
/// queues one entry per event ([`pagerduty::events`]: against `previous`, the job's previous
/// comparable run) and is `skipped` when there is none.
pub fn plan_run(
    notifiers: &Notifiers,
    names: &[String],
    report: &Report,
    previous: Option<&Report>,
) -> (Vec<NotificationStatus>, Vec<Planned>) {
    let mut lines = plan(notifiers, names, report);
    let mut entries = Vec::new();
    for line in &mut lines {
        let Some(n) = notifiers.get(&line.channel) else {
            continue;
        };
        match &n.sender {
            Sender::PagerDuty(e) => {
                let events = pagerduty::events(report, previous, e.on);
                line.status = if events.is_empty() {
                    DeliveryStatus::Skipped
                } else {
                    DeliveryStatus::Queued
                };
                entries.extend(events.into_iter().map(|(event, payload)| Planned {
                    key: OutboxKey {
                        run_id: report.run_id.clone(),
                        channel: line.channel.clone(),
                        event,
                    },
                    payload: Some(payload.to_string()),
                }));
            }
            _ if line.status == DeliveryStatus::Queued => entries.push(Planned {
                key: OutboxKey::report(&report.run_id, &line.channel),
                payload: None,
            }),
            _ => {}
        }
    }
    (lines, entries)
}

/// The outbox entries of escalation step `step` (counted from 0) of `report` to `channel`:
/// the report itself (event `escalate-<step>`), or for a `pagerduty` channel one `trigger` per
/// failing item nobody acknowledged (event `escalate-<step>/trigger/<item>`; the same
/// `dedup_key` as the run's own events, so PagerDuty folds them into the open incident).
pub fn plan_escalation(
    notifiers: &Notifiers,
    channel: &str,
    report: &Report,
    step: usize,
) -> Vec<Planned> {
    let key = |event: String| OutboxKey {
        run_id: report.run_id.clone(),
        channel: channel.to_string(),
        event,
    };
    match notifiers.get(channel).map(|n| &n.sender) {
        Some(Sender::PagerDuty(_)) => pagerduty::events(report, None, On::Fail)
            .into_iter()
            .filter(|(event, _)| {
                event
                    .strip_prefix("trigger/")
                    .is_some_and(|item| report.ack_of(item).is_none())
            })
            .map(|(event, payload)| Planned {
                key: key(format!("escalate-{step}/{event}")),
                payload: Some(payload.to_string()),
            })
            .collect(),
        _ => vec![Planned {
            key: key(format!("escalate-{step}")),
            payload: None,
        }],
    }
}

/// The report as a channel sends it: its content, without the delivery state (which changes
/// as it is delivered and is shown where the report is read). A webhook gets the report JSON
/// as `report --format json` shows it: with `notifications` as they stand.
fn as_sent(report: &Report, notifier: &Notifier) -> Report {
    match notifier.sender {
        Sender::Webhook(_) => report.clone(),
        _ => Report {
            notifications: vec![],
            ..report.clone()
        },
    }
}

/// What every delivery attempt shares: the configured channels, the store that records each
/// attempt's outcome on its outbox entry, and the retry policy. Cheap to clone (a run's
/// deliveries each take one into their own task).
#[derive(Clone)]
pub struct Deliverer {
    pub notifiers: Arc<Notifiers>,
    pub store: Store,
    pub policy: RetryPolicy,
}

/// One delivery attempt of one outbox entry, as [`Deliverer::deliver`] makes it: the first
/// attempt and every retry are described the same way.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub key: OutboxKey,
    /// The entry's own payload (an event), sent instead of the report.
    pub payload: Option<String>,
    /// The claim on the entry (None: the report could not be stored, so there is no entry; the
    /// attempt is made once and not queued).
    pub claim: Option<Claim>,
    /// Counts this attempt (1 for the first).
    pub attempts: u32,
    /// The stored report the entry belongs to.
    pub report: Arc<Report>,
}

impl Deliverer {
    pub fn new(notifiers: &Notifiers, store: &Store, policy: &RetryPolicy) -> Deliverer {
        Deliverer {
            notifiers: Arc::new(notifiers.clone()),
            store: store.clone(),
            policy: policy.clone(),
        }
    }

    /// Makes one delivery attempt: sends the report (or the entry's own `payload`) through the
    /// entry's channel and records the outcome on the entry, under its claim. The answer is the
    /// entry's line of the report's `notifications` after this attempt. A failed attempt is
    /// retried later; one the channel refused for good ([`DeliveryError::Rejected`]) is
    /// `failed` at once, with the channel's reason.
    pub async fn deliver(&self, attempt: &Attempt) -> NotificationStatus {
        deliver(self, attempt).await
    }
}

async fn deliver(ctx: &Deliverer, attempt: &Attempt) -> NotificationStatus {
    let Deliverer {
        notifiers,
        store,
        policy,
    } = ctx;
    let Attempt {
        key,
        payload,
        claim,
        attempts,
        report,
    } = attempt;
    let (attempts, payload) = (*attempts, payload.as_deref());
    let notifier = notifiers.get(&key.channel);
    let line = |status, error| NotificationStatus {
        channel: key.channel.clone(),
        status,
        error,
    };
    let result = match notifier {
        Some(n) => n.send_entry(&as_sent(report, n), payload).await,
        None => Err(DeliveryError::Failed(
            "channel is no longer in the configuration".into(),
        )),
    };
    let Some(claim) = claim.as_ref() else {
        return match result {
            Ok(()) => line(DeliveryStatus::Sent, None),
            Err(e) => {
                tracing::error!(run_id = %key.run_id, channel = %key.channel, "delivery failed and cannot be queued: {e}");
                line(DeliveryStatus::Failed, Some(e.to_string()))
            }
        };
    };
    match result {
        Ok(()) => {
            match store.outbox_mark_sent(key, claim) {
                Ok(true) if attempts > 1 => {
                    tracing::info!(run_id = %key.run_id, channel = %key.channel, attempts, "queued notification delivered")
                }
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(run_id = %key.run_id, channel = %key.channel, "delivered, but another process had taken the delivery over")
                }
                Err(e) => {
                    tracing::error!(run_id = %key.run_id, channel = %key.channel, "delivered, but cannot record it in the outbox: {e:#}")
                }
            }
            line(DeliveryStatus::Sent, None)
        }
        Err(DeliveryError::Rejected(e)) => {
            tracing::error!(run_id = %key.run_id, channel = %key.channel, event = %key.event, attempts, "delivery refused, not retried: {e}");
            if let Err(db) = store.outbox_mark_rejected(key, claim, &e) {
                tracing::error!(run_id = %key.run_id, channel = %key.channel, "cannot record the refused delivery in the outbox: {db:#}");
            }
            line(DeliveryStatus::Failed, Some(e))
        }
        Err(e) => {
            let e = e.to_string();
            let next = policy.next_attempt(attempts);
            if attempts > 1 {
                tracing::warn!(run_id = %key.run_id, channel = %key.channel, attempts, next_attempt = %next.to_rfc3339(), "delivery failed again: {e}");
            } else {
                tracing::warn!(run_id = %key.run_id, channel = %key.channel, next_attempt = %next.to_rfc3339(), "delivery failed, queued for retry: {e}");
            }
            if let Err(db) = store.outbox_mark_failed(key, claim, &e, &next) {
                tracing::error!(run_id = %key.run_id, channel = %key.channel, "cannot record the failed delivery in the outbox: {db:#}");
            }
            line(DeliveryStatus::Queued, Some(e))
        }
    }
}

/// Delivers a finished report's outbox `entries` ([`plan_run`]), all at once (a slow channel
/// does not hold up the others), each through [`Deliverer::deliver`]. With `stored`, the report and its
/// outbox entries are in the store: each entry is claimed first. Without (the store could not
/// be written), each entry is tried once, not queued. Returns the report's `notifications`
/// after these attempts (the stored report is not changed); a channel with several entries
/// shows its worst (failed, then queued, then sent), as when the report is read again.
pub async fn deliver_run(
    notifiers: &Notifiers,
    store: &Store,
    policy: &RetryPolicy,
    report: &Report,
    entries: &[Planned],
    stored: bool,
) -> Vec<NotificationStatus> {
    let mut lines = report.notifications.clone();
    let shared = Arc::new(report.clone());
    let ctx = Deliverer::new(notifiers, store, policy);
    let mut sends = JoinSet::new();
    let mut outcomes: Vec<(usize, NotificationStatus)> = Vec::new();
    for Planned { key, payload } in entries.iter().cloned() {
        let Some(slot) = lines.iter().position(|n| n.channel == key.channel) else {
            continue;
        };
        let claim = if stored {
            match store.outbox_claim(&key, outbox::CLAIM_LEASE) {
                Ok(Some(c)) => Some(c),
                Ok(None) => {
                    // Already sent or being sent (cannot happen for a fresh run id, but the
                    // outbox entry is the record that decides): the store says how it stands.
                    if let Ok(Some(e)) = store.outbox_entry(&key) {
                        outcomes.push((
                            slot,
                            NotificationStatus {
                                channel: key.channel.clone(),
                                status: e.state.delivery_status(),
                                error: e.last_error,
                            },
                        ));
                    }
                    continue;
                }
                Err(e) => {
                    // Without a claim a failed delivery could not be retried: say so loudly,
                    // but still try once.
                    tracing::error!(channel = %key.channel, "cannot claim the delivery in the outbox: {e:#}");
                    None
                }
            }
        } else {
            None
        };
        let attempt = Attempt {
            key,
            payload,
            claim,
            attempts: 1,
            report: shared.clone(),
        };
        let ctx = ctx.clone();
        sends.spawn(async move { (slot, ctx.deliver(&attempt).await) });
    }
    while let Some(joined) = sends.join_next().await {
        match joined {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => tracing::error!("a delivery task failed: {e}"),
        }
    }
    // Entries of one channel sum up as its worst, in entry order (deterministic).
    outcomes.sort_by_key(|(slot, _)| *slot);
    let rank = |s: DeliveryStatus| match s {
        DeliveryStatus::Sent | DeliveryStatus::Skipped => 0,
        DeliveryStatus::Queued => 1,
        DeliveryStatus::Failed => 2,
    };
    let mut seen = std::collections::HashSet::new();
    for (slot, line) in outcomes {
        if seen.insert(slot) || rank(line.status) > rank(lines[slot].status) {
            lines[slot] = line;
        }
    }
    lines
}

/// The outcome of `notify-test` for one notifier.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelTest {
    /// The notifier's name (`[notify.NAME]`).
    pub channel: String,
    /// Its type: `email`, `slack`, `file`, ...
    pub kind: &'static str,
    /// `delivered` or `failed`.
    pub status: &'static str,
    /// Why it failed (never a secret), or None.
    pub error: Option<String>,
}

/// A `notify-test` usage mistake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyTestError {
    #[error("unknown notifier {name:?} (defined: {})", if .known.is_empty() { "none".to_string() } else { .known.join(", ") })]
    UnknownChannel { name: String, known: Vec<String> },
    #[error("no notifiers are configured")]
    NoNotifiers,
}

/// `notify-test [CHANNEL]`: sends a small test report (from `host`, in `timezone`) through
/// each (or one) channel, at once, and says for each what failed, in the order of the config.
/// Not queued: the point is to see the failure now.
pub async fn notify_test(
    notifiers: &Notifiers,
    channel: Option<&str>,
    host: &str,
    timezone: &str,
) -> Result<Vec<ChannelTest>, NotifyTestError> {
    let names: Vec<&String> = match channel {
        Some(c) => match notifiers.get_key_value(c) {
            Some((k, _)) => vec![k],
            None => {
                return Err(NotifyTestError::UnknownChannel {
                    name: c.to_string(),
                    known: notifiers.keys().cloned().collect(),
                });
            }
        },
        None => notifiers.keys().collect(),
    };
    if names.is_empty() {
        return Err(NotifyTestError::NoNotifiers);
    }
    let report = Arc::new(test_report(host, timezone));
    let mut tests = JoinSet::new();
    for (i, name) in names.iter().enumerate() {
        let n = notifiers[*name].clone();
        let report = report.clone();
        tests.spawn(async move { (i, n.send_test(&report).await) });
    }
    let mut results: Vec<Option<Result<(), DeliveryError>>> = vec![None; names.len()];
    while let Some(joined) = tests.join_next().await {
        if let Ok((i, r)) = joined {
            results[i] = Some(r);
        }
    }
    Ok(names
        .iter()
        .zip(results)
        .map(|(name, r)| {
            let kind = notifiers[*name].kind();
            let r = r.unwrap_or_else(|| {
                Err(DeliveryError::Failed(
                    "internal error: the test task failed".into(),
                ))
            });
            ChannelTest {
                channel: (*name).clone(),
                kind,
                status: if r.is_ok() { "delivered" } else { "failed" },
                error: r.err().map(|e| e.to_string()),
            }
        })
        .collect())
}

/// The report sent by `notify-test`.
pub fn test_report(host: &str, timezone: &str) -> Report {
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
        host: host.to_string(),
        timezone: timezone.to_string(),
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
            targets: vec![],
        }],
        missed: vec![],
        notifications: vec![],
        acks: vec![],
        previous_status: None,
        history: Default::default(),
    };
    r.finish_status();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pagerduty channel queues one entry per event, the event (without the routing key) as
    /// its payload, and is `skipped` for a run that has no event; a report channel queues one
    /// entry with the empty event and no payload.
    #[test]
    fn plan_run_queues_one_entry_per_pagerduty_event_and_skips_a_quiet_run() {
        let build = |text: &str| {
            let options: NotifierConfig = toml::from_str(text).unwrap();
            options.prepare("n", Path::new(".")).unwrap().0
        };
        let notifiers: Notifiers = [
            (
                "pd".to_string(),
                build("type = \"pagerduty\"\nrouting_key = \"K3YK3YK3YK3YK3YK3YK3YK3YK3YK3YK3\""),
            ),
            (
                "hook".to_string(),
                build("type = \"webhook\"\nurl = \"http://127.0.0.1:9/in\""),
            ),
        ]
        .into();
        let names = vec!["pd".to_string(), "hook".to_string()];
        let quiet = test_report("db-1", "UTC");
        let (lines, entries) = plan_run(&notifiers, &names, &quiet, None);
        assert_eq!(lines[0].status, DeliveryStatus::Skipped, "{lines:?}");
        assert_eq!(lines[1].status, DeliveryStatus::Queued, "{lines:?}");
        assert_eq!(
            entries,
            vec![Planned {
                key: OutboxKey::report(&quiet.run_id, "hook"),
                payload: None
            }]
        );

        let mut bad = quiet.clone();
        bad.items[0].status = Status::Fail;
        bad.finish_status();
        let (lines, entries) = plan_run(&notifiers, &names, &bad, None);
        assert_eq!(lines[0].status, DeliveryStatus::Queued, "{lines:?}");
        assert_eq!(entries[0].key.event, "trigger/Test message");
        let payload = entries[0].payload.as_deref().unwrap();
        assert!(
            payload.contains("\"dedup_key\":\"runbook/notify-test/Test message\""),
            "{payload}"
        );
        assert!(!payload.contains("K3YK3Y"), "{payload}");
    }

    /// Built senders hold their secret URLs parsed; printing one (a `Config` with `{:?}`, a
    /// panic message) must still show only the origin.
    #[test]
    fn built_notifiers_never_print_their_secret_urls_or_password() {
        for text in [
            "type = \"slack\"\nwebhook_url = \"https://hooks.example/services/T0/B0/TOPSECRET\"",
            "type = \"heartbeat\"\nurl = \"https://hc.example/ping/TOPSECRET\"",
            "type = \"webhook\"\nurl = \"https://hooks.example/in/TOPSECRET\"",
            "type = \"pagerduty\"\nrouting_key = \"TOPSECRETTOPSECRETTOPSECRET12345\"",
            "type = \"email\"\nsmtp_url = \"smtp://u@127.0.0.1:25?tls=none\"\npassword = \"TOPSECRET\"\nfrom = \"a@x.example\"\nto = [\"b@x.example\"]",
        ] {
            let options: NotifierConfig = toml::from_str(text).unwrap();
            let (built, _warnings) = options.prepare("n", Path::new(".")).unwrap();
            let shown = format!("{built:?}");
            assert!(!shown.contains("TOPSECRET"), "{shown}");
            assert_eq!(built.secrets().len(), 1, "{text}");
        }
    }
}
