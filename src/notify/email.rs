//! `type = "email"`: the report as a multipart (text + HTML) message over SMTP.
//!
//! The connection is described by `smtp_url`, in the forms lettre documents, parsed here rather
//! than by `AsyncSmtpTransport::from_url` because we add what that function cannot: an extra CA
//! (`ca_file`, for a relay with a private or self-signed certificate), `tls=none`, and the
//! password as a [`Secret`] instead of inside the URL (where it would be printed with the URL).
//!
//! | `smtp_url` | connection |
//! |---|---|
//! | `smtp://host:587?tls=required` | STARTTLS, refuse to continue without it (default port 587) |
//! | `smtp://host:25?tls=opportunistic` | STARTTLS when the server offers it (default when `tls` is absent) |
//! | `smtp://host:25?tls=none` | plain text |
//! | `smtps://host:465` | TLS from the first byte (default port 465) |
//!
//! Every failure is described in one line that says which step failed (DNS, connection, TLS,
//! authentication, a rejection by the server with its SMTP code), so `notify-test` tells the
//! operator what to fix.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;

use super::On;
use crate::base::secret::{Secret, SecretSource};
use crate::report::Report;

/// How long one SMTP command may take (connect, each reply).
const SMTP_TIMEOUT: Duration = Duration::from_secs(20);

/// Options of `type = "email"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// `smtp://host:587?tls=required` (STARTTLS), `smtp://host:25?tls=opportunistic`,
    /// `smtp://host:25?tls=none`, `smtps://host:465`. A user name may be given in the URL; a
    /// password may not (use `password`, a secret).
    pub smtp_url: String,
    /// User name for SMTP AUTH (PLAIN or LOGIN). Needs `password`.
    pub username: Option<String>,
    /// Password for SMTP AUTH: a secret (`{ env = "VAR" }`, `{ file = "PATH" }`).
    pub password: Option<SecretSource>,
    /// Sender, `Name <address>` or `address`.
    pub from: String,
    /// Recipients (at least one).
    pub to: Vec<String>,
    /// Extra CA certificate(s) (PEM) to trust for the SMTP server, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Send when the run is at least this bad: `always` (default), `warn`, `fail`.
    #[serde(default)]
    pub on: On,
}

/// A built e-mail sender ([`EmailConfig::prepare`]): the parsed endpoint and addresses, the
/// TLS parameters (with `ca_file`'s certificates) and the credentials, all checked at load time.
#[derive(Clone)]
pub struct Mailer {
    endpoint: Endpoint,
    tls: Tls,
    credentials: Option<Credentials>,
    password: Option<Secret>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("endpoint", &self.endpoint)
            .field("from", &self.from)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

/// How to reach the SMTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// User name given in the URL (`smtp://user@host`).
    pub url_username: Option<String>,
    /// Name for EHLO (the URL's path, as lettre does), else the machine's host name.
    pub hello_name: Option<String>,
}

/// Transport security of the SMTP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// STARTTLS, and fail when the server does not offer it.
    Required,
    /// STARTTLS when offered.
    Opportunistic,
    /// Plain text.
    None,
    /// TLS from the start (`smtps://`).
    Wrapper,
}

impl Security {
    fn as_str(self) -> &'static str {
        match self {
            Security::Required => "STARTTLS required",
            Security::Opportunistic => "STARTTLS when offered",
            Security::None => "no TLS",
            Security::Wrapper => "TLS (smtps)",
        }
    }
}

/// Parses `smtp_url`. The error names what is wrong, never a password.
fn parse_smtp_url(text: &str) -> Result<Endpoint, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("smtp_url is not a URL: {e}"))?;
    if url.password().is_some() {
        return Err("smtp_url must not contain a password: set `password = { env = \"VAR\" }` (or { file = ... }) instead".into());
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("smtp_url has no host")?
        .trim_matches(['[', ']'])
        .to_string();
    let tls = url
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.to_string());
    if let Some((k, _)) = url.query_pairs().find(|(k, _)| k != "tls") {
        return Err(format!(
            "smtp_url: unknown query parameter {k:?} (only `tls` is known)"
        ));
    }
    let (security, default_port) = match (url.scheme(), tls.as_deref()) {
        ("smtp", None | Some("opportunistic")) => (Security::Opportunistic, 25),
        ("smtp", Some("required")) => (Security::Required, 587),
        ("smtp", Some("none")) => (Security::None, 25),
        ("smtp", Some(other)) => {
            return Err(format!(
                "smtp_url: tls={other:?} is not one of required, opportunistic, none"
            ));
        }
        ("smtps", None) => (Security::Wrapper, 465),
        ("smtps", Some(_)) => {
            return Err("smtp_url: smtps:// always uses TLS; drop the `tls` parameter".into());
        }
        (scheme, _) => {
            return Err(format!(
                "smtp_url: scheme {scheme:?} is not smtp:// or smtps://"
            ));
        }
    };
    let url_username = Some(url.username()).filter(|u| !u.is_empty()).map(|u| {
        // Percent-decoding a user name: `%40` is `@`.
        let bytes = u.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%'
                && i + 2 < bytes.len()
                && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let path = url.path().trim_matches('/');
    Ok(Endpoint {
        host,
        port: url.port().unwrap_or(default_port),
        security,
        url_username,
        hello_name: Some(path.to_string()).filter(|p| !p.is_empty()),
    })
}

fn is_local(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

impl EmailConfig {
    /// Checks the options and builds the sender. Ok holds warnings.
    pub fn prepare(&self, name: &str, base: &Path) -> Result<(Mailer, Vec<String>), Vec<String>> {
        let mut warnings = vec![];
        let mut errors = vec![];
        let mut password = None;
        if let Some(src) = &self.password {
            match Secret::resolve(src, &format!("notify.{name}.password"), base) {
                Ok(s) => {
                    if s.inline {
                        warnings.push("password is written inline; prefer { env = \"VAR\" } or { file = \"PATH\" }".into());
                    }
                    password = Some(s);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        let endpoint = match parse_smtp_url(&self.smtp_url) {
            Ok(ep) => {
                let has_user = self.username.is_some() || ep.url_username.is_some();
                if has_user && self.password.is_none() {
                    errors.push("a user name is set but `password` is missing".into());
                }
                if self.password.is_some() && !has_user {
                    errors.push("`password` is set but `username` is missing".into());
                }
                if self.password.is_some()
                    && matches!(ep.security, Security::None | Security::Opportunistic)
                    && !is_local(&ep.host)
                {
                    warnings.push(format!(
                        "the password may travel unencrypted ({}); use `?tls=required` or smtps://",
                        ep.security.as_str()
                    ));
                }
                if self.ca_file.is_some() && ep.security == Security::None {
                    warnings.push("ca_file is ignored with tls=none".into());
                }
                Some(ep)
            }
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let mut ca = None;
        if let Some(ca_file) = &self.ca_file {
            let path = if ca_file.is_relative() {
                base.join(ca_file)
            } else {
                ca_file.clone()
            };
            match std::fs::read(&path) {
                Ok(pem) => match Certificate::from_pem(&pem) {
                    Ok(cert) if pem.windows(11).any(|w| w == b"-----BEGIN ") => ca = Some(cert),
                    _ => errors.push(format!(
                        "ca_file {} holds no PEM certificate",
                        path.display()
                    )),
                },
                Err(e) => errors.push(format!("cannot read ca_file {}: {e}", path.display())),
            }
        }
        let from = match self.from.parse::<Mailbox>() {
            Ok(m) => Some(m),
            Err(e) => {
                errors.push(format!("from {:?} is not an address: {e}", self.from));
                None
            }
        };
        if self.to.is_empty() {
            errors.push("`to` needs at least one address".into());
        }
        let mut to = vec![];
        for t in &self.to {
            match t.parse::<Mailbox>() {
                Ok(m) => to.push(m),
                Err(e) => errors.push(format!("to {t:?} is not an address: {e}")),
            }
        }
        let tls = match &endpoint {
            Some(ep) if errors.is_empty() => match tls(ep, ca) {
                Ok(t) => Some(t),
                Err(e) => {
                    errors.push(e);
                    None
                }
            },
            _ => None,
        };
        match (endpoint, tls, from) {
            (Some(endpoint), Some(tls), Some(from)) if errors.is_empty() => {
                let user = self
                    .username
                    .clone()
                    .or_else(|| endpoint.url_username.clone());
                let credentials = match (user, &password) {
                    (Some(user), Some(pw)) => Some(Credentials::new(user, pw.expose().to_owned())),
                    _ => None,
                };
                Ok((
                    Mailer {
                        endpoint,
                        tls,
                        credentials,
                        password,
                        from,
                        to,
                    },
                    warnings,
                ))
            }
            _ => Err(errors),
        }
    }
}

/// The transport security of an endpoint, with the extra CA of `ca_file`.
fn tls(ep: &Endpoint, ca: Option<Certificate>) -> Result<Tls, String> {
    let params = || -> Result<TlsParameters, String> {
        let mut b = TlsParameters::builder(ep.host.clone());
        if let Some(cert) = ca.clone() {
            b = b.add_root_certificate(cert);
        }
        b.build_rustls()
            .map_err(|e| format!("TLS setup failed: {e}"))
    };
    Ok(match ep.security {
        Security::None => Tls::None,
        Security::Opportunistic => Tls::Opportunistic(params()?),
        Security::Required => Tls::Required(params()?),
        Security::Wrapper => Tls::Wrapper(params()?),
    })
}

impl Mailer {
    /// The SMTP password (for the report redactor).
    pub fn secret(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// The transport for one delivery. No connection pool kept between deliveries: a notifier
    /// sends a handful of messages a day, and a pooled connection would only linger (and a
    /// pool needs a running runtime, which loading the configuration does not have).
    fn transport(&self) -> AsyncSmtpTransport<Tokio1Executor> {
        let ep = &self.endpoint;
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(ep.host.clone())
            .port(ep.port)
            .tls(self.tls.clone())
            .timeout(Some(SMTP_TIMEOUT))
            .pool_config(
                lettre::transport::smtp::PoolConfig::new()
                    .max_size(1)
                    .idle_timeout(Duration::from_secs(1)),
            );
        if let Some(name) = &ep.hello_name {
            b = b.hello_name(ClientId::Domain(name.clone()));
        }
        if let Some(c) = &self.credentials {
            b = b.credentials(c.clone());
        }
        b.build()
    }

    /// The message for a report: multipart/alternative (text, HTML), the contract subject, a
    /// Date, and a Message-ID derived from the run id, so a mail client would fold a duplicate.
    fn message(&self, report: &Report) -> Result<Message, String> {
        let domain = self.from.email.domain().to_string();
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(report.subject())
            .date_now()
            .message_id(Some(format!(
                "<runbook.{}.{}@{}>",
                report.job, report.run_id, domain
            )))
            .user_agent(format!("runbook/{}", env!("CARGO_PKG_VERSION")));
        for to in &self.to {
            b = b.to(to.clone());
        }
        b.multipart(MultiPart::alternative_plain_html(
            crate::report::text::render(report),
            crate::report::html::render(report),
        ))
        .map_err(|e| format!("cannot build the message: {e}"))
    }

    pub(crate) async fn deliver(&self, report: &Report) -> Result<(), super::DeliveryError> {
        let ep = &self.endpoint;
        let message = self.message(report)?;
        resolve(ep).await?;
        let result = self.transport().send(message).await;
        let secrets: Vec<&Secret> = self.password.iter().collect();
        result
            .map(|_| ())
            .map_err(|e| crate::base::secret::redact(&describe_smtp_error(&e, ep), &secrets).into())
    }

    /// `check-config --connect`: connect, EHLO, STARTTLS and AUTH, without sending anything.
    pub(crate) async fn check_reachable(&self) -> Result<String, super::DeliveryError> {
        let ep = &self.endpoint;
        resolve(ep).await?;
        let secrets: Vec<&Secret> = self.password.iter().collect();
        match self.transport().test_connection().await {
            Ok(true) => Ok(format!(
                "SMTP server {}:{} accepts us ({}{})",
                ep.host,
                ep.port,
                ep.security.as_str(),
                if self.password.is_some() {
                    ", logged in"
                } else {
                    ""
                }
            )),
            Ok(false) => {
                Err(format!("SMTP server {}:{} did not answer NOOP", ep.host, ep.port).into())
            }
            Err(e) => {
                Err(crate::base::secret::redact(&describe_smtp_error(&e, ep), &secrets).into())
            }
        }
    }
}

/// Resolves the host first, so a DNS failure is reported as one (lettre folds it into a
/// generic connection error).
async fn resolve(ep: &Endpoint) -> Result<(), String> {
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::lookup_host((ep.host.as_str(), ep.port)),
    )
    .await
    {
        Ok(Ok(mut addrs)) => match addrs.next() {
            Some(_) => Ok(()),
            None => Err(format!("DNS: {} has no address", ep.host)),
        },
        Ok(Err(e)) => Err(format!("DNS: cannot resolve {}: {e}", ep.host)),
        Err(_) => Err(format!("DNS: resolving {} timed out after 10s", ep.host)),
    }
}

/// One line saying which step failed.
fn describe_smtp_error(e: &lettre::transport::smtp::Error, ep: &Endpoint) -> String {
    let chain = super::error_chain(e);
    let server = format!("{}:{}", ep.host, ep.port);
    if e.is_timeout() || chain.contains("timed out") {
        return format!(
            "timeout: SMTP server {server} did not answer within {}s ({chain})",
            SMTP_TIMEOUT.as_secs()
        );
    }
    if chain.contains("Connection refused") {
        return format!(
            "connection refused by {server} (is the SMTP server running, is the port right?)"
        );
    }
    if e.is_tls() || chain.contains("certificate") || chain.contains("tls") || chain.contains("TLS")
    {
        return format!(
            "TLS with {server} failed ({}): {chain}",
            ep.security.as_str()
        );
    }
    if let Some(code) = e.status() {
        let code_text = code.to_string();
        if code_text == "535" || code_text == "534" || code_text == "530" {
            return format!("authentication failed at {server}: the server answered {chain}");
        }
        let kind = if e.is_permanent() {
            "rejected"
        } else {
            "temporarily refused"
        };
        return format!("SMTP server {server} {kind} the message: {chain}");
    }
    if chain.contains("STARTTLS") || chain.contains("starttls") {
        return format!("TLS: {server} does not offer STARTTLS but tls=required: {chain}");
    }
    if chain.contains("No compatible authentication mechanism") || chain.contains("authentication")
    {
        return format!("authentication failed at {server}: {chain}");
    }
    if e.is_client() {
        return format!("SMTP client error with {server}: {chain}");
    }
    format!("SMTP delivery to {server} failed: {chain}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailer(to: &[&str]) -> Mailer {
        let cfg = EmailConfig {
            smtp_url: "smtp://localhost".into(),
            username: None,
            password: None,
            from: "Runbook <runbook@trademaster.example>".into(),
            to: to.iter().map(|t| t.to_string()).collect(),
            ca_file: None,
            on: On::Always,
        };
        cfg.prepare("mail", Path::new(".")).unwrap().0
    }

    #[test]
    fn url_forms() {
        let e = parse_smtp_url("smtp://mail.internal:587?tls=required").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.security),
            ("mail.internal", 587, Security::Required)
        );
        assert_eq!(
            parse_smtp_url("smtp://mail.internal?tls=required")
                .unwrap()
                .port,
            587
        );
        assert_eq!(
            parse_smtp_url("smtp://mail.internal").unwrap().security,
            Security::Opportunistic
        );
        assert_eq!(parse_smtp_url("smtp://mail.internal").unwrap().port, 25);
        assert_eq!(
            parse_smtp_url("smtp://127.0.0.1:2525?tls=none")
                .unwrap()
                .security,
            Security::None
        );
        let s = parse_smtp_url("smtps://runbook%40x@mail.example/ops-1").unwrap();
        assert_eq!((s.port, s.security), (465, Security::Wrapper));
        assert_eq!(s.url_username.as_deref(), Some("runbook@x"));
        assert_eq!(s.hello_name.as_deref(), Some("ops-1"));
        assert!(
            parse_smtp_url("smtp://u:hunter2@mail")
                .unwrap_err()
                .contains("must not contain a password")
        );
        assert!(
            !parse_smtp_url("smtp://u:hunter2@mail")
                .unwrap_err()
                .contains("hunter2")
        );
        assert!(
            parse_smtp_url("smtp://mail?tls=maybe")
                .unwrap_err()
                .contains("tls=\"maybe\"")
        );
        assert!(parse_smtp_url("http://mail").is_err());
    }

    #[test]
    fn message_has_subject_parts_id_and_date() {
        let cfg = mailer(&["a@x.example", "b@x.example"]);
        let m = cfg.message(&crate::report::tests::sample()).unwrap();
        let raw = String::from_utf8(m.formatted()).unwrap();
        assert!(
            raw.contains(
                "Message-ID: <runbook.daily.01JTESTRUN0000000000000000@trademaster.example>"
            ),
            "{raw}"
        );
        assert!(raw.contains("\r\nDate: "));
        assert!(raw.contains("multipart/alternative"));
        assert!(raw.contains("text/plain") && raw.contains("text/html"));
        assert_eq!(m.envelope().to().len(), 2);
        assert_eq!(
            m.headers().get_raw("Subject"),
            Some("[runbook] daily FAIL — 1 passed, 1 warning, 1 failed")
        );
    }

    #[test]
    fn a_dry_run_says_so_in_the_subject_and_the_html_header() {
        let cfg = mailer(&["a@x.example"]);
        let mut r = crate::report::tests::sample();
        r.dry_run = true;
        let m = cfg.message(&r).unwrap();
        assert_eq!(
            m.headers().get_raw("Subject"),
            Some("[runbook] daily FAIL (dry run) — 1 passed, 1 warning, 1 failed")
        );
        let html = crate::report::html::render(&r);
        let headline = html
            .lines()
            .find(|l| l.contains("font-size:28px"))
            .expect("the header's headline");
        assert!(headline.contains("(dry run)"), "{headline}");
        assert!(
            html.contains("<title>[runbook] daily FAIL (dry run) — "),
            "{html}"
        );
    }
}
