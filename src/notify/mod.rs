//! Delivery of reports: `file`, `email`, `slack`, `heartbeat`.
//!
//! Every delivery goes through the outbox in the state store ([`crate::store::Store`]): the
//! runner stores the report and one outbox row per (run, channel) in one transaction
//! ([`channels_for`]); then [`dispatch`] claims each row and tries to deliver it (all channels
//! at once, each under [`DELIVERY_TIMEOUT`]). A process that dies in between leaves the rows
//! `pending`: the daemon (at start and every 30 s) or `outbox --flush` delivers them. A delivery that fails stays in the outbox and is retried later with
//! backoff ([`outbox::flush`]: the daemon, `outbox --flush`). The row keyed by (run, channel)
//! is the idempotency record: a sender must claim it first (see [`outbox`]), so a report is
//! never delivered twice for one run and channel. Delivery never changes a run's exit code.
//!
//! Error messages of every channel are one line that says which step failed (DNS, connection
//! refused, TLS, authentication, an HTTP or SMTP status) and never contain a secret: the SMTP
//! password and the webhook and ping URLs (the URL itself is the credential) are kept out.

use std::path::Path;
use std::time::Duration;

use tokio::task::JoinSet;

use serde::{Deserialize, Serialize};

use crate::items::Status;
use crate::report::Report;

pub mod email;
pub mod file;
pub mod heartbeat;
pub mod slack;

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

/// `[notify.NAME]`: one channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
// A config holds a handful of notifiers, loaded once: the size of the email variant is no cost.
#[allow(clippy::large_enum_variant)]
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

    /// The secrets this channel was given (for the report redactor).
    pub fn secrets(&self) -> Vec<&crate::base::secret::Secret> {
        match self {
            NotifierConfig::Email(c) => c.password_resolved.iter().collect(),
            NotifierConfig::Slack(c) => c.webhook_resolved.iter().collect(),
            NotifierConfig::File(_) => vec![],
            NotifierConfig::Heartbeat(c) => c.url_resolved.iter().collect(),
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
        match tokio::time::timeout(DELIVERY_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "timeout: delivery took longer than {}s",
                DELIVERY_TIMEOUT.as_secs()
            )),
        }
    }

    /// `check-config --connect`: can the channel be reached (without sending a report)?
    pub async fn check_reachable(&self) -> Result<String, String> {
        let fut = async {
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
                NotifierConfig::Email(c) => c.check_reachable().await,
                // Posting or pinging would send something; connecting (DNS, TCP, TLS) is what
                // can be checked without side effects.
                NotifierConfig::Slack(c) => probe_https(c.webhook()?).await,
                NotifierConfig::Heartbeat(c) => probe_https(c.url()?).await,
            }
        };
        match tokio::time::timeout(Duration::from_secs(30), fut).await {
            Ok(r) => r,
            Err(_) => Err("timeout: no answer within 30s".into()),
        }
    }
}

/// The longest one delivery may take (SMTP conversation, webhook post with its 429 waits).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one HTTP request (webhook, ping) may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

/// The HTTP client for webhooks and pings: rustls, timeouts, no redirects to follow blindly
/// with a secret URL (a redirect is reported as an error).
pub(crate) fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("runbook/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            format!(
                "cannot set up the HTTP client: {}",
                error_chain(&e.without_url())
            )
        })
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
async fn probe_https(url: &crate::base::secret::Secret) -> Result<String, String> {
    let parsed =
        reqwest::Url::parse(url.expose()).map_err(|_| "the URL is not valid".to_string())?;
    let origin = public_origin(&parsed);
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

/// One line of a report's `notifications` list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NotificationStatus {
    pub channel: String,
    /// `sent`, `queued` (will be retried), `skipped` (below the channel's `on`, or a dry run for
    /// a heartbeat), `failed` (not queued: the outbox could not be written, or it was dropped).
    pub status: String,
    pub error: Option<String>,
}

/// Pings that mark the start of a run (heartbeat `/start`), all at once. Best effort: never
/// delays the run for more than a few seconds, never changes its outcome, never queued (a late
/// start ping means nothing).
pub async fn run_started(config: &crate::config::Config, job: &crate::config::Job) {
    let mut pings = JoinSet::new();
    for name in &job.notify {
        if let Some(NotifierConfig::Heartbeat(h)) = config.notifiers.get(name) {
            let h = h.clone();
            let name = name.clone();
            pings.spawn(async move {
                let r = tokio::time::timeout(Duration::from_secs(5), h.ping_start())
                    .await
                    .unwrap_or_else(|_| Err("timeout: no answer within 5s".into()));
                if let Err(e) = r {
                    tracing::warn!(channel = %name, "heartbeat start ping failed: {e}");
                }
            });
        }
    }
    while pings.join_next().await.is_some() {}
}

/// Whether `notifier` gets `report`: the channel's `on` wants its status, and a dry run never
/// pings a heartbeat (it is not a run the outside monitor should count).
fn wants(notifier: &NotifierConfig, report: &Report) -> bool {
    !(report.dry_run && notifier.kind() == "heartbeat") && notifier.on().wants(report)
}

/// The channels of `job` that `report` goes to: the outbox rows the runner writes in the same
/// transaction as the report.
pub fn channels_for(
    config: &crate::config::Config,
    job: &crate::config::Job,
    report: &Report,
) -> Vec<String> {
    job.notify
        .iter()
        .filter(|name| {
            config
                .notifiers
                .get(*name)
                .is_some_and(|n| wants(n, report))
        })
        .cloned()
        .collect()
}

/// Delivers a finished, stored report to the job's channels, through the outbox, and records
/// the outcome in the report's `notifications` (and in the store). Channels are delivered
/// concurrently, so a slow one does not hold up the others.
pub async fn dispatch(
    config: &crate::config::Config,
    store: &crate::store::Store,
    job: &crate::config::Job,
    report: &mut Report,
) {
    let mut statuses: Vec<Option<NotificationStatus>> = Vec::new();
    let mut sends = JoinSet::new();
    let shared = std::sync::Arc::new(report.clone());
    for name in &job.notify {
        let Some(notifier) = config.notifiers.get(name) else {
            continue;
        };
        let skipped = NotificationStatus {
            channel: name.clone(),
            status: "skipped".into(),
            error: None,
        };
        if !wants(notifier, report) {
            statuses.push(Some(skipped));
            continue;
        }
        let slot = statuses.len();
        statuses.push(None);
        // The runner wrote the row with the report; enqueueing again is a no-op then, and
        // queues the delivery when the report could not be stored.
        let claim = store
            .outbox_enqueue(&report.run_id, name)
            .and_then(|()| store.outbox_claim(&report.run_id, name, outbox::CLAIM_LEASE));
        let claim = match claim {
            Ok(Some(c)) => c,
            Ok(None) => {
                // Already sent or being sent for this run (cannot happen for a fresh run id,
                // but the outbox row is the record that decides).
                statuses[slot] = Some(NotificationStatus {
                    channel: name.clone(),
                    status: "sent".into(),
                    error: None,
                });
                continue;
            }
            Err(e) => {
                // Without an outbox row a failed delivery could not be retried: say so loudly,
                // but still try once.
                tracing::error!(channel = %name, "cannot record the delivery in the outbox: {e:#}");
                String::new()
            }
        };
        let notifier = notifier.clone();
        let store = store.clone();
        let name = name.clone();
        let report = shared.clone();
        sends.spawn(async move {
            let status = match notifier.deliver(&report).await {
                Ok(()) => {
                    if !claim.is_empty()
                        && let Err(e) = store.outbox_mark_sent(&report.run_id, &name, &claim) {
                            tracing::error!(channel = %name, "delivered, but cannot record it in the outbox: {e:#}");
                        }
                    NotificationStatus { channel: name.clone(), status: "sent".into(), error: None }
                }
                Err(e) if claim.is_empty() => {
                    tracing::error!(channel = %name, run_id = %report.run_id, "delivery failed and cannot be queued: {e}");
                    NotificationStatus { channel: name.clone(), status: "failed".into(), error: Some(e) }
                }
                Err(e) => {
                    let next = outbox::next_attempt(1);
                    tracing::warn!(channel = %name, run_id = %report.run_id, next_attempt = %next.to_rfc3339(), "delivery failed, queued for retry: {e}");
                    if let Err(db) = store.outbox_mark_failed(&report.run_id, &name, &claim, &e, &next) {
                        tracing::error!(channel = %name, "cannot record the failed delivery in the outbox: {db:#}");
                    }
                    NotificationStatus { channel: name.clone(), status: "queued".into(), error: Some(e) }
                }
            };
            (slot, status)
        });
    }
    while let Some(joined) = sends.join_next().await {
        match joined {
            Ok((slot, status)) => statuses[slot] = Some(status),
            Err(e) => tracing::error!("a delivery task failed: {e}"),
        }
    }
    report.notifications = statuses.into_iter().flatten().collect();
    if let Err(e) = store.update_report(report) {
        tracing::error!(run_id = %report.run_id, "cannot store notification results: {e:#}");
    }
}

pub mod outbox;

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

/// `notify-test [CHANNEL]`: sends a small test report through each (or one) channel, at once,
/// and says for each what failed, in the order of the config. Not queued: the point is to see
/// the failure now. `Err` is a usage mistake (unknown channel, no notifiers), with its message.
pub async fn notify_test(
    config: &crate::config::Config,
    channel: Option<&str>,
) -> Result<Vec<ChannelTest>, String> {
    let names: Vec<&String> = match channel {
        Some(c) => match config.notifiers.get_key_value(c) {
            Some((k, _)) => vec![k],
            None => {
                let known: Vec<&str> = config.notifiers.keys().map(String::as_str).collect();
                return Err(format!(
                    "unknown notifier {c:?} (defined: {})",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ));
            }
        },
        None => config.notifiers.keys().collect(),
    };
    if names.is_empty() {
        return Err(format!(
            "no notifiers are configured in {}",
            config.path.display()
        ));
    }
    let report = std::sync::Arc::new(test_report(config));
    let mut tests = JoinSet::new();
    for (i, name) in names.iter().enumerate() {
        let n = config.notifiers[*name].clone();
        let report = report.clone();
        tests.spawn(async move { (i, n.deliver(&report).await) });
    }
    let mut results: Vec<Option<Result<(), String>>> = vec![None; names.len()];
    while let Some(joined) = tests.join_next().await {
        if let Ok((i, r)) = joined {
            results[i] = Some(r);
        }
    }
    Ok(names
        .iter()
        .zip(results)
        .map(|(name, r)| {
            let kind = config.notifiers[*name].kind();
            let r = r.unwrap_or_else(|| Err("internal error: the test task failed".into()));
            ChannelTest {
                channel: (*name).clone(),
                kind,
                status: if r.is_ok() { "delivered" } else { "failed" },
                error: r.err(),
            }
        })
        .collect())
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
        previous_status: None,
        history: Default::default(),
    };
    r.finish_status();
    r
}
