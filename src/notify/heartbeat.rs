//! `type = "heartbeat"`: healthchecks.io-style pings, so an outside monitor notices when runs
//! stop happening at all (a dead daemon sends no failure report).
//!
//! `GET url/start` when a run starts (best effort, never queued), `GET url` when it ends with
//! `pass` or `warn`, `GET url/fail` when it ends with `fail`. Works with healthchecks.io,
//! Healthchecks self-hosted, Uptime Kuma's push monitors with a path and Cronitor-style URLs
//! that accept these suffixes. The URL is a secret (anyone with it can ping): errors name only
//! the scheme, host and port.

use std::path::Path;

use serde::Deserialize;

use crate::base::secret::{Secret, SecretSource};
use crate::items::Status;
use crate::report::Report;

/// Options of `type = "heartbeat"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// The check's ping URL, e.g. `https://hc-ping.com/<uuid>` (a secret: anyone with it can
    /// ping).
    pub url: SecretSource,
}

/// Which ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ping {
    Start,
    Success,
    Fail,
}

impl Ping {
    /// The ping for a finished run: `fail` only when an item failed (a warning is a run that
    /// happened and needs a look, not a missing or broken run).
    pub fn for_status(status: Status) -> Ping {
        if status == Status::Fail {
            Ping::Fail
        } else {
            Ping::Success
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Ping::Start => "/start",
            Ping::Success => "",
            Ping::Fail => "/fail",
        }
    }
}

/// A built heartbeat sender: the resolved ping URL, checked at load time.
#[derive(Clone)]
pub struct Pinger {
    secret: Secret,
    url: reqwest::Url,
}

/// Shows the origin only: the URL's path is the credential.
impl std::fmt::Debug for Pinger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pinger")
            .field("origin", &super::public_origin(&self.url))
            .finish_non_exhaustive()
    }
}

impl HeartbeatConfig {
    /// Resolves and checks the ping URL and builds the sender. Ok holds warnings.
    pub fn prepare(&self, name: &str, base: &Path) -> Result<(Pinger, Vec<String>), Vec<String>> {
        let s = Secret::resolve(&self.url, &format!("notify.{name}.url"), base)
            .map_err(|e| vec![e.to_string()])?;
        let url = match reqwest::Url::parse(s.expose()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
            _ => {
                return Err(vec![format!(
                    "notify.{name}.url ({}) is not an http(s) URL",
                    s.origin
                )]);
            }
        };
        let w = if s.inline {
            vec!["url is written inline; anyone with it can ping: prefer { env = \"VAR\" }".into()]
        } else {
            vec![]
        };
        Ok((Pinger { secret: s, url }, w))
    }
}

impl Pinger {
    /// The ping URL, which is the credential (for the report redactor).
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// The parsed URL (for `check-config --connect`).
    pub(crate) fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// The URL of one ping: the base URL (query kept) with `/start` or `/fail` appended to its path.
    pub fn ping_url(base: &reqwest::Url, ping: Ping) -> reqwest::Url {
        let mut url = base.clone();
        let path = format!("{}{}", url.path().trim_end_matches('/'), ping.suffix());
        url.set_path(if path.is_empty() { "/" } else { &path });
        url
    }

    pub(crate) async fn ping(&self, ping: Ping) -> Result<(), super::DeliveryError> {
        let secret = &self.secret;
        let url = Self::ping_url(&self.url, ping);
        let origin = super::public_origin(&url);
        let client = super::http_client()?;
        let resp = client
            .get(url)
            .send()
            .await
            .map_err(|e| super::describe_http_error(e, &origin, secret))?;
        if resp.status().is_success() {
            return Ok(());
        }
        Err(super::describe_http_status(resp, &origin, secret)
            .await
            .into())
    }

    pub(crate) async fn ping_start(&self) -> Result<(), super::DeliveryError> {
        self.ping(Ping::Start).await
    }

    pub(crate) async fn deliver(&self, report: &Report) -> Result<(), super::DeliveryError> {
        self.ping(Ping::for_status(report.status)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_urls() {
        let u = |b: &str, p| Pinger::ping_url(&reqwest::Url::parse(b).unwrap(), p).to_string();
        assert_eq!(
            u("https://hc-ping.com/abc", Ping::Start),
            "https://hc-ping.com/abc/start"
        );
        assert_eq!(
            u("https://hc-ping.com/abc/", Ping::Fail),
            "https://hc-ping.com/abc/fail"
        );
        assert_eq!(
            u("https://hc-ping.com/abc", Ping::Success),
            "https://hc-ping.com/abc"
        );
        assert_eq!(
            u("http://127.0.0.1:8000/ping/k?rid=1", Ping::Fail),
            "http://127.0.0.1:8000/ping/k/fail?rid=1"
        );
        assert_eq!(Ping::for_status(Status::Warn), Ping::Success);
        assert_eq!(Ping::for_status(Status::Fail), Ping::Fail);
    }
}
