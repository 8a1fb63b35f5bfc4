//! HTTP for the kinds that call web APIs (`http`, `alertmanager`, `prometheus`, and
//! `tls_cert`'s time budget): a rustls client whose every request ends before the item's
//! deadline, extra CA certificates, URL checks at load, a capped read of a monitoring API's
//! answer, and errors and bodies made into one report line.

use std::time::Duration;

use crate::base::bounded::{API_BODY_CAP, read_body, size_text};
use crate::items::ItemCtx;

/// The standard reason phrase of `status` ("Not Found"), empty when it has none.
pub fn reason(status: reqwest::StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("")
}

/// The first `max` characters of `s` on one line, with "…" and the full length when cut.
pub fn trim_for_report(s: &str, max: usize) -> String {
    let one_line: String = s
        .chars()
        .map(|c| {
            if c == '\n' || c == '\r' || c == '\t' {
                ' '
            } else {
                c
            }
        })
        .collect();
    let one_line = one_line.trim();
    let total = one_line.chars().count();
    if total <= max {
        return one_line.to_string();
    }
    let cut: String = one_line.chars().take(max).collect();
    format!("{cut}… ({total} characters)")
}

/// Time left until the item's deadline (at least one second, so a request is still tried).
pub fn remaining(ctx: &ItemCtx) -> Duration {
    ctx.deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .max(Duration::from_secs(1))
}

/// Why a monitoring API gave no answer to read.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The HTTP client could not be built (TLS set-up).
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// No answer (refused, timed out, TLS failure).
    #[error("{service} at {base} unreachable: {reason}")]
    Unreachable {
        service: String,
        base: String,
        reason: String,
    },
    /// The answer broke off.
    #[error("{service} at {base}: reading the answer: {reason}")]
    Read {
        service: String,
        base: String,
        reason: String,
    },
    /// The answer is larger than the cap: a JSON answer cut short cannot be read.
    #[error(
        "{service} at {base}: the answer ({status}) is larger than {cap}; only its first {cap} were read, and a JSON answer cut short cannot be read"
    )]
    TooLarge {
        service: String,
        base: String,
        status: String,
        cap: String,
    },
}

/// Why a `ca_file` gives no certificate.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read ca_file {}: {source}", .path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("ca_file {}: {reason}", .path.display())]
    Invalid {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("ca_file {} holds no PEM certificate", .0.display())]
    Empty(std::path::PathBuf),
}

/// A reqwest client (rustls) whose every request ends before the item's deadline.
pub fn client(
    ctx: &ItemCtx,
    extra_ca: &[reqwest::Certificate],
    redirect: reqwest::redirect::Policy,
) -> Result<reqwest::Client, ApiError> {
    let total = remaining(ctx);
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(total)
        .connect_timeout(total.min(Duration::from_secs(10)))
        .redirect(redirect)
        .user_agent(concat!("runbook/", env!("CARGO_PKG_VERSION")));
    for c in extra_ca {
        b = b.add_root_certificate(c.clone());
    }
    b.build().map_err(|e| ApiError::Client(e.to_string()))
}

/// Reads every certificate of a PEM file.
pub fn load_ca(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, CaError> {
    let pem = std::fs::read(path).map_err(|source| CaError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| CaError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(CaError::Empty(path.to_path_buf()));
    }
    Ok(certs)
}

/// GET `url` of a monitoring API (`service` names it in messages, `base` is the configured
/// URL) and read the whole answer, up to 8 MiB: (status, body), or the reason as a one-line
/// failure (a longer answer is one).
pub async fn get_text(
    ctx: &ItemCtx,
    service: &str,
    base: &str,
    url: reqwest::Url,
) -> Result<(reqwest::StatusCode, String), ApiError> {
    let client = client(ctx, &[], reqwest::redirect::Policy::limited(5))?;
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| ApiError::Unreachable {
            service: service.to_string(),
            base: base.to_string(),
            reason: describe_error(&e),
        })?;
    let status = resp.status();
    let body = read_body(resp, API_BODY_CAP)
        .await
        .map_err(|e| ApiError::Read {
            service: service.to_string(),
            base: base.to_string(),
            reason: describe_error(&e),
        })?;
    if body.cut {
        return Err(ApiError::TooLarge {
            service: service.to_string(),
            base: base.to_string(),
            status: format!("{} {}", status.as_u16(), reason(status)),
            cap: size_text(API_BODY_CAP),
        });
    }
    Ok((status, body.text()))
}

/// A reqwest error as one line, with its causes (reqwest's own Display hides the cause, e.g.
/// "connection refused" or the certificate problem).
pub fn describe_error(e: &reqwest::Error) -> String {
    let mut msg = if e.is_timeout() {
        "timed out".to_string()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// An `http`/`https` URL option (`http`'s `url`, the base URL of `alertmanager` and
/// `prometheus`), checked when the config is read: `run` never parses it again.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct HttpUrl {
    /// As written (named in messages).
    text: String,
    url: reqwest::Url,
}

/// A URL option that is not an `http`/`https` URL.
#[derive(Debug, thiserror::Error)]
pub enum InvalidUrl {
    #[error("invalid URL {url:?}: {reason}")]
    Parse { url: String, reason: String },
    #[error("unsupported URL scheme {0:?} (http or https)")]
    Scheme(String),
}

impl TryFrom<String> for HttpUrl {
    type Error = InvalidUrl;
    fn try_from(text: String) -> Result<HttpUrl, InvalidUrl> {
        let url = reqwest::Url::parse(&text).map_err(|e| InvalidUrl::Parse {
            url: text.clone(),
            reason: e.to_string(),
        })?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(InvalidUrl::Scheme(url.scheme().to_string()));
        }
        Ok(HttpUrl { text, url })
    }
}

impl serde::Serialize for HttpUrl {
    /// As written (a report's `data` shows the URL the config names).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl std::fmt::Display for HttpUrl {
    /// As written.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl HttpUrl {
    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The URL, parsed.
    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// The API endpoint `path` (`/api/v2/alerts`) below this base, without a query.
    pub fn endpoint(&self, path: &str) -> reqwest::Url {
        let mut url = self.url.clone();
        let joined = format!("{}{path}", url.path().trim_end_matches('/'));
        url.set_path(&joined);
        url.set_query(None);
        url
    }
}
