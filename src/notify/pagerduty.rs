//! `type = "pagerduty"`: PagerDuty Events API v2, one event per item (SPEC 9.1).
//!
//! For each item at least as bad as `on` (default `fail`) a `trigger` with
//! `dedup_key = "runbook/<job>/<item>"` (so PagerDuty folds the runs of one outage into one
//! alert), `payload.summary = "<job>: <item> — <summary>"`, `payload.severity` `critical`
//! (fail) or `warning` (warn) and `payload.source` = the host; for each item that was at least
//! that bad in the previous comparable run and now passes, a `resolve` with the same
//! `dedup_key`. Each event is its own outbox entry (event key `trigger/<item>` or
//! `resolve/<item>`, the event as its payload), so a PagerDuty outage queues and retries each.
//!
//! The routing key is a secret: it is not in the stored payload (it is added when the event is
//! sent), and never in a message. Answers: 2xx (PagerDuty says 202) is sent; 429 and 5xx (and
//! timeouts) fail the attempt and the outbox retries it; any other 4xx (a bad routing key, an
//! invalid event) is final: the entry is `failed` with PagerDuty's reason and not retried,
//! because sending the same event again cannot succeed.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{DeliveryError, On};
use crate::base::secret::{Secret, SecretSource};
use crate::items::Status;
use crate::report::Report;

/// PagerDuty's Events API v2 endpoint.
pub const DEFAULT_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// PagerDuty cuts `payload.summary` at 1024 characters; we do it ourselves, on a character
/// boundary.
const SUMMARY_MAX: usize = 1024;
/// The longest `dedup_key` PagerDuty accepts.
const DEDUP_KEY_MAX: usize = 255;
/// Detail lines of an item sent in `custom_details`.
const DETAILS_MAX: usize = 20;

fn default_on() -> On {
    On::Fail
}

/// Options of `type = "pagerduty"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyConfig {
    /// The Events API v2 integration key of the service (a secret).
    pub routing_key: SecretSource,
    /// The Events API endpoint (default: PagerDuty's; the EU service has its own).
    #[serde(default)]
    pub url: Option<String>,
    /// Trigger for items at least this bad: `fail` (default) or `warn`.
    #[serde(default = "default_on")]
    pub on: On,
}

/// A built PagerDuty sender: the routing key and the endpoint, checked at load time.
#[derive(Clone)]
pub struct Events {
    routing_key: Secret,
    url: reqwest::Url,
    /// `warn` or `fail`.
    pub on: On,
}

/// Never shows the routing key.
impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("url", &super::public_origin(&self.url))
            .field("on", &self.on)
            .finish_non_exhaustive()
    }
}

impl PagerDutyConfig {
    /// Resolves the routing key, checks the URL and `on`, builds the sender. Ok holds warnings.
    pub fn prepare(&self, name: &str, base: &Path) -> Result<(Events, Vec<String>), Vec<String>> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        if !matches!(self.on, On::Warn | On::Fail) {
            errors.push(format!(
                "notify.{name}.on: a pagerduty notifier triggers for items at least as bad as `on`, which must be \"warn\" or \"fail\" (default \"fail\")"
            ));
        }
        let key = match Secret::resolve(
            &self.routing_key,
            &format!("notify.{name}.routing_key"),
            base,
        ) {
            Ok(k) if k.expose().trim().is_empty() => {
                errors.push(format!("notify.{name}.routing_key ({}) is empty", k.origin));
                None
            }
            Ok(k) => {
                if k.inline {
                    warnings.push(
                        "routing_key is written inline; it is a secret: prefer { env = \"VAR\" }"
                            .to_string(),
                    );
                }
                let len = k.expose().chars().count();
                if len != 32 {
                    warnings.push(format!(
                        "routing_key ({}) has {len} characters; PagerDuty's Events API v2 integration keys have 32",
                        k.origin
                    ));
                }
                Some(k)
            }
            Err(e) => {
                errors.push(e.to_string());
                None
            }
        };
        let url = match reqwest::Url::parse(self.url.as_deref().unwrap_or(DEFAULT_URL)) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Some(u),
            _ => {
                errors.push(format!(
                    "notify.{name}.url {:?} is not an http(s) URL",
                    self.url.as_deref().unwrap_or_default()
                ));
                None
            }
        };
        match (key, url) {
            (Some(routing_key), Some(url)) if errors.is_empty() => Ok((
                Events {
                    routing_key,
                    url,
                    on: self.on,
                },
                warnings,
            )),
            _ => Err(errors),
        }
    }
}

/// Whether an item with `status` is at least as bad as `on` (`warn` or `fail`).
fn at_least(status: Status, on: On) -> bool {
    match on {
        On::Warn => matches!(status, Status::Warn | Status::Fail),
        _ => status == Status::Fail,
    }
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max - 1).collect();
        out.push('…');
        out
    }
}

/// `runbook/<job>/<item>`: the alert a job's item opens and closes.
pub fn dedup_key(job: &str, item: &str) -> String {
    cut(&format!("runbook/{job}/{item}"), DEDUP_KEY_MAX)
}

/// The events of a finished run, each with its outbox event key (`trigger/<item>`,
/// `resolve/<item>`) and the event without the routing key: a `trigger` for every item at
/// least as bad as `on`, a `resolve` for every item that was at least that bad in `previous`
/// (the previous comparable run) and now passes. A dry run sends none: it opens no incident.
pub fn events(report: &Report, previous: Option<&Report>, on: On) -> Vec<(String, Value)> {
    if report.dry_run {
        return vec![];
    }
    let mut out = Vec::new();
    for item in &report.items {
        let dedup = dedup_key(&report.job, &item.name);
        if at_least(item.status, on) {
            let severity = if item.status == Status::Fail {
                "critical"
            } else {
                "warning"
            };
            let details: Vec<&String> = item.details.iter().take(DETAILS_MAX).collect();
            out.push((
                format!("trigger/{}", item.name),
                json!({
                    "event_action": "trigger",
                    "dedup_key": dedup,
                    "payload": {
                        "summary": cut(&format!("{}: {} — {}", report.job, item.name, item.summary), SUMMARY_MAX),
                        "severity": severity,
                        "source": report.host,
                        "timestamp": report.finished_at.to_rfc3339(),
                        "component": item.name,
                        "group": report.job,
                        "class": item.kind,
                        "custom_details": {
                            "run_id": report.run_id,
                            "status": item.status.as_str(),
                            "details": details,
                        },
                    },
                    "client": "runbook",
                }),
            ));
        } else if item.status == Status::Pass {
            let was_bad = previous
                .and_then(|p| p.items.iter().find(|i| i.name == item.name))
                .is_some_and(|i| at_least(i.status, on));
            if was_bad {
                out.push((
                    format!("resolve/{}", item.name),
                    json!({"event_action": "resolve", "dedup_key": dedup}),
                ));
            }
        }
    }
    out
}

impl Events {
    /// The routing key, for the report redactor.
    pub fn secret(&self) -> &Secret {
        &self.routing_key
    }

    /// The parsed URL (for `check-config --connect`).
    pub(crate) fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// Sends one stored event (the outbox entry's payload), with the routing key added.
    pub(crate) async fn send_event(&self, stored: &str) -> Result<(), DeliveryError> {
        let mut event: serde_json::Map<String, Value> =
            serde_json::from_str(stored).map_err(|e| {
                DeliveryError::Rejected(format!("the queued event is not a JSON object: {e}"))
            })?;
        event.insert(
            "routing_key".into(),
            Value::String(self.routing_key.expose().to_string()),
        );
        self.post(&Value::Object(event)).await
    }

    /// `notify-test`: a `resolve` for `runbook/notify-test/<host>`, which no trigger ever
    /// opened. PagerDuty checks the event and the routing key and answers as it would for a
    /// real one, but a resolve of an unknown alert changes nothing: nobody is paged.
    pub(crate) async fn send_test(&self, host: &str) -> Result<(), DeliveryError> {
        let event = json!({
            "routing_key": self.routing_key.expose(),
            "event_action": "resolve",
            "dedup_key": dedup_key("notify-test", host),
        });
        self.post(&event).await
    }

    async fn post(&self, event: &Value) -> Result<(), DeliveryError> {
        let origin = super::public_origin(&self.url);
        let client = super::http_client().map_err(String::from)?;
        let resp = client
            .post(self.url.clone())
            .json(event)
            .send()
            .await
            .map_err(|e| {
                DeliveryError::Failed(super::describe_http_error(e, &origin, &self.routing_key))
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = crate::base::bounded::read_body(resp, crate::base::bounded::NOTIFY_BODY_CAP)
            .await
            .map(|b| b.text())
            .unwrap_or_default();
        let reason = crate::base::secret::redact(&explain(&body), &[&self.routing_key]);
        let class = if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            "rate limited by"
        } else if status.is_client_error() {
            "rejected by"
        } else {
            "server error at"
        };
        let msg = if reason.is_empty() {
            format!("HTTP {status}: {class} {origin}")
        } else {
            format!("HTTP {status}: {class} {origin}: {reason}")
        };
        if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS {
            // A bad routing key or an invalid event: the same request will never succeed.
            Err(DeliveryError::Rejected(msg))
        } else {
            Err(DeliveryError::Failed(msg))
        }
    }
}

/// PagerDuty's reason from an error answer: `message: error; error` of its JSON
/// (`{"status": "invalid event", "message": "Event object is invalid", "errors": [...]}`), or
/// the first line of any other body; at most 300 characters.
fn explain(body: &str) -> String {
    let text = match serde_json::from_str::<Value>(body) {
        Ok(v) if v.get("message").is_some() => {
            let mut s = v["message"].as_str().unwrap_or_default().to_string();
            let errors: Vec<&str> = v["errors"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if !errors.is_empty() {
                s.push_str(": ");
                s.push_str(&errors.join("; "));
            }
            s
        }
        _ => body.lines().next().unwrap_or("").to_string(),
    };
    cut(text.trim(), 300)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ItemReport;

    fn item(name: &str, status: Status) -> ItemReport {
        ItemReport {
            name: name.into(),
            kind: "sql".into(),
            status,
            summary: format!("{name} is {}", status.as_str()),
            details: vec![],
            data: json!({}),
            duration_ms: 1,
            change: crate::report::Change::Same,
            targets: vec![],
        }
    }

    fn run(items: Vec<ItemReport>) -> Report {
        let mut r = crate::notify::test_report("db-1", "UTC");
        r.job = "daily".into();
        r.items = items;
        r.finish_status();
        r
    }

    #[test]
    fn triggers_at_least_as_bad_as_on_and_resolves_what_was() {
        let before = run(vec![
            item("a", Status::Fail),
            item("b", Status::Warn),
            item("c", Status::Pass),
        ]);
        let now = run(vec![
            item("a", Status::Pass),
            item("b", Status::Pass),
            item("c", Status::Warn),
        ]);
        let keys = |on| {
            events(&now, Some(&before), on)
                .into_iter()
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        };
        // `fail`: the warning is not paged, and b was never triggered, so nothing resolves it.
        assert_eq!(keys(On::Fail), vec!["resolve/a"]);
        assert_eq!(keys(On::Warn), vec!["resolve/a", "resolve/b", "trigger/c"]);
        let (_, c) = events(&now, Some(&before), On::Warn).pop().unwrap();
        assert_eq!(c["payload"]["severity"], "warning");
        assert_eq!(c["dedup_key"], "runbook/daily/c");
        assert_eq!(c["payload"]["summary"], "daily: c — c is warn");
        assert!(c.get("routing_key").is_none());
        let mut dry = now.clone();
        dry.dry_run = true;
        assert!(events(&dry, Some(&before), On::Warn).is_empty());
    }

    #[test]
    fn pagerduty_reasons_are_read_from_its_json() {
        // The 400 answer of PagerDuty's Events API v2 reference (see tests/notify_webhook.rs).
        let body = r#"{"status":"invalid event","message":"Event object is invalid","errors":["Length of 'routing_key' is incorrect (should be 32 characters)"]}"#;
        assert_eq!(
            explain(body),
            "Event object is invalid: Length of 'routing_key' is incorrect (should be 32 characters)"
        );
    }
}
