//! `type = "slack"`: the report as Block Kit ([`crate::report::slack`]) through an incoming
//! webhook.
//!
//! The webhook URL is the credential: anyone who has it can post to the channel. It is never
//! printed; errors name only `https://hooks.slack.com:443`. A `429 Too Many Requests` is
//! honoured: we wait `Retry-After` (at most [`MAX_RETRY_AFTER`]) and post again, up to
//! [`MAX_ATTEMPTS`] times; beyond that the delivery fails and the outbox retries it later.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::On;
use crate::base::secret::{Secret, SecretSource};
use crate::report::Report;

/// The longest `Retry-After` we wait for within one delivery.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(20);

/// Posts per delivery (429 and 5xx answers are retried within the delivery).
pub const MAX_ATTEMPTS: u32 = 3;

/// Options of `type = "slack"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// The incoming webhook's URL. It is itself a secret: `{ env = "SLACK_WEBHOOK_URL" }`.
    pub webhook_url: SecretSource,
    /// Send when the run is at least this bad: `always` (default), `warn`, `fail`.
    #[serde(default)]
    pub on: On,
}

/// A built Slack sender: the resolved webhook URL, checked at load time.
#[derive(Clone)]
pub struct Webhook {
    secret: Secret,
    url: reqwest::Url,
}

/// Shows the origin only: the URL's path is the credential.
impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("origin", &super::public_origin(&self.url))
            .finish_non_exhaustive()
    }
}

impl SlackConfig {
    /// Resolves and checks the webhook URL and builds the sender. Ok holds warnings.
    pub fn prepare(&self, name: &str, base: &Path) -> Result<(Webhook, Vec<String>), Vec<String>> {
        let s = Secret::resolve(
            &self.webhook_url,
            &format!("notify.{name}.webhook_url"),
            base,
        )
        .map_err(|e| vec![e.to_string()])?;
        let url = match reqwest::Url::parse(s.expose()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
            // The value is not quoted: it may be a real webhook with a typo.
            _ => {
                return Err(vec![format!(
                    "notify.{name}.webhook_url ({}) is not an http(s) URL",
                    s.origin
                )]);
            }
        };
        let w = if s.inline {
            vec!["webhook_url is written inline; it is a secret: prefer { env = \"VAR\" }".into()]
        } else {
            vec![]
        };
        Ok((Webhook { secret: s, url }, w))
    }
}

impl Webhook {
    /// The URL, which is the credential (for the report redactor).
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// The parsed URL (for `check-config --connect`).
    pub(crate) fn url(&self) -> &reqwest::Url {
        &self.url
    }

    pub(crate) async fn deliver(&self, report: &Report) -> Result<(), super::DeliveryError> {
        post(
            &self.secret,
            &self.url,
            &crate::report::slack::render(report),
        )
        .await
        .map_err(super::DeliveryError::Failed)
    }
}

/// Posts a JSON payload to a webhook, honouring 429 `Retry-After`.
async fn post(
    webhook: &Secret,
    url: &reqwest::Url,
    payload: &serde_json::Value,
) -> Result<(), String> {
    let origin = super::public_origin(url);
    let client = super::http_client()?;
    let mut attempt = 1;
    loop {
        let resp = client
            .post(url.clone())
            .json(payload)
            .send()
            .await
            .map_err(|e| super::describe_http_error(e, &origin, webhook))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let retryable =
            status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
        if !retryable || attempt >= MAX_ATTEMPTS {
            let mut msg = super::describe_http_status(resp, &origin, webhook).await;
            if retryable {
                msg.push_str(&format!(" (after {attempt} attempts)"));
            }
            return Err(msg);
        }
        let wait = if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let asked = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            match asked {
                Some(secs) if Duration::from_secs(secs) > MAX_RETRY_AFTER => {
                    return Err(format!(
                        "HTTP 429: rate limited by {origin}, which asks to wait {secs}s (longer than {}s; the outbox retries later)",
                        MAX_RETRY_AFTER.as_secs()
                    ));
                }
                Some(secs) => Duration::from_secs(secs),
                None => Duration::from_secs(1),
            }
        } else {
            Duration::from_secs(u64::from(attempt))
        };
        tracing::info!(
            status = status.as_u16(),
            wait_s = wait.as_secs(),
            attempt,
            "slack webhook asked us to retry; waiting"
        );
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}
