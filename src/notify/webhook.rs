//! `type = "webhook"`: POSTs the report JSON (SPEC section 4) to any HTTP endpoint, as
//! `application/json`. With `secret`, the request carries
//! `X-Runbook-Signature: sha256=<hex HMAC-SHA256 of the body>`, computed over the exact bytes
//! sent, so the receiver can check that the report came from us and was not changed.
//!
//! Any 2xx answer is a delivery; anything else (a 4xx included: the receiver may be
//! misconfigured for a while) fails the attempt and the outbox retries it with backoff. The URL
//! may be a secret (a token in its path or query): it is never printed, errors name only the
//! origin (`https://hooks.example:443`), as Slack's do.

use std::path::Path;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::On;
use crate::base::secret::{Secret, SecretSource};
use crate::report::Report;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Runbook-Signature";

/// Options of `type = "webhook"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST the report. May be a secret: `{ env = "REPORT_WEBHOOK_URL" }`.
    pub url: SecretSource,
    /// The HMAC-SHA256 key of the signature header (a secret). No header without it.
    #[serde(default)]
    pub secret: Option<SecretSource>,
    /// Send when the run is at least this bad: `always` (default), `warn`, `fail`, `change`.
    #[serde(default)]
    pub on: On,
}

/// A built webhook sender: the resolved URL and signing key, checked at load time.
#[derive(Clone)]
pub struct Poster {
    url_secret: Secret,
    url: reqwest::Url,
    key: Option<Secret>,
}

/// Shows the origin only: the URL's path or query may be the credential.
impl std::fmt::Debug for Poster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poster")
            .field("origin", &super::public_origin(&self.url))
            .field("signed", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

impl WebhookConfig {
    /// Resolves and checks the URL and the signing key and builds the sender. Ok holds
    /// warnings.
    pub fn prepare(&self, name: &str, base: &Path) -> Result<(Poster, Vec<String>), Vec<String>> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let url_secret = Secret::resolve(&self.url, &format!("notify.{name}.url"), base);
        let key = self
            .secret
            .as_ref()
            .map(|s| Secret::resolve(s, &format!("notify.{name}.secret"), base))
            .transpose();
        let key = match key {
            Ok(Some(k)) if k.expose().is_empty() => {
                errors.push(format!(
                    "notify.{name}.secret ({}) is empty: a signature with an empty key proves nothing",
                    k.origin
                ));
                None
            }
            Ok(k) => k,
            Err(e) => {
                errors.push(e.to_string());
                None
            }
        };
        if key.as_ref().is_some_and(|k| k.inline) {
            warnings.push(
                "secret is written inline; it is a secret: prefer { env = \"VAR\" }".to_string(),
            );
        }
        let built = match url_secret {
            Ok(s) => match reqwest::Url::parse(s.expose()) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                    Some((s, u))
                }
                // The value is not quoted: it may carry a token.
                _ => {
                    errors.push(format!(
                        "notify.{name}.url ({}) is not an http(s) URL",
                        s.origin
                    ));
                    None
                }
            },
            Err(e) => {
                errors.push(e.to_string());
                None
            }
        };
        match built {
            Some((url_secret, url)) if errors.is_empty() => Ok((
                Poster {
                    url_secret,
                    url,
                    key,
                },
                warnings,
            )),
            _ => Err(errors),
        }
    }
}

/// `sha256=<hex>`: the signature header's value for `body` under `key`.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

impl Poster {
    /// The secrets of this channel (the URL, the signing key), for the report redactor.
    pub fn secrets(&self) -> Vec<&Secret> {
        std::iter::once(&self.url_secret)
            .chain(self.key.as_ref())
            .collect()
    }

    /// The parsed URL (for `check-config --connect`).
    pub(crate) fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// POSTs the report JSON (as `report --format json` prints it), signed when a key is set.
    pub(crate) async fn deliver(&self, report: &Report) -> Result<(), super::DeliveryError> {
        let body = crate::report::json::render(report).into_bytes();
        let origin = super::public_origin(&self.url);
        let client = super::http_client()?;
        let mut request = client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(key) = &self.key {
            request = request.header(SIGNATURE_HEADER, signature(key.expose().as_bytes(), &body));
        }
        let resp =
            request.body(body).send().await.map_err(|e| {
                self.redacted(super::describe_http_error(e, &origin, &self.url_secret))
            })?;
        if resp.status().is_success() {
            return Ok(());
        }
        let msg = super::describe_http_status(resp, &origin, &self.url_secret).await;
        Err(self.redacted(msg).into())
    }

    /// The signing key is kept out of messages too (an endpoint might echo a header).
    fn redacted(&self, msg: String) -> String {
        match &self.key {
            Some(k) => crate::base::secret::redact(&msg, &[k]),
            None => msg,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231, test case 2: HMAC-SHA256 with key "Jefe".
    #[test]
    fn signature_is_the_hex_hmac_sha256_of_the_body() {
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
