//! Connections to PostgreSQL targets (`[targets.NAME]`).
//!
//! Every connection says `application_name = runbook`, has a connect timeout, and sets
//! `idle_in_transaction_session_timeout` so a session of ours can never sit on locks. Sessions
//! that change state also get `lock_timeout` ([`Target::connect_for_maintenance`]): a VACUUM or
//! REINDEX waiting behind the application's locks gives up instead of queueing the
//! application's traffic behind itself.
//!
//! TLS is rustls. `prefer` tries TLS and falls back to plaintext (as libpq does); `require`
//! encrypts without verifying; `verify-full` verifies the chain (system roots, or `ca_file`) and
//! the host name.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_postgres::Client;

use crate::secret::{Secret, SecretSource};
use crate::units::Dur;

/// `sslmode`, as libpq spells it.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyFull,
}

/// `[targets.NAME]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// `postgres://user@host:port/dbname` (no password here: use `password`).
    pub url: String,
    pub password: Option<SecretSource>,
    #[serde(default)]
    pub sslmode: SslMode,
    /// CA certificate(s) for `verify-full` (PEM).
    pub ca_file: Option<PathBuf>,
    /// Applied to every maintenance statement. Default 5s.
    #[serde(default = "default_lock_timeout")]
    pub lock_timeout: Dur,
    /// Applied to our statements (index builds excepted). Default: none.
    pub statement_timeout: Option<Dur>,
    /// Default 10s.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
}

fn default_lock_timeout() -> Dur {
    Dur::from_secs(5)
}
fn default_connect_timeout() -> Dur {
    Dur::from_secs(10)
}

/// A resolved target.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    /// Parsed connection settings (without password).
    pub pg: tokio_postgres::Config,
    /// Where it points, for messages: `user@host:port/db` (never a password).
    pub display: String,
    pub password: Option<Secret>,
    pub sslmode: SslMode,
    pub ca_file: Option<PathBuf>,
    pub lock_timeout: Duration,
    pub statement_timeout: Option<Duration>,
    pub connect_timeout: Duration,
}

impl Target {
    /// Validates a target; returns it with warnings, or the errors.
    pub fn resolve(
        name: &str,
        c: &TargetConfig,
        base: &Path,
    ) -> Result<(Target, Vec<String>), Vec<String>> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let pg: tokio_postgres::Config = match c.url.parse() {
            Ok(p) => p,
            Err(e) => {
                errors.push(format!("url is not a valid PostgreSQL URL: {e}"));
                tokio_postgres::Config::new()
            }
        };
        if pg.get_password().is_some() {
            errors.push("url contains a password: put it in `password` (a secret) instead".into());
        }
        let password = match &c.password {
            None => None,
            Some(src) => match Secret::resolve(src, &format!("targets.{name}.password"), base) {
                Ok(s) => {
                    if s.inline {
                        warnings.push("password is written inline; prefer { env = \"VAR\" } or { file = \"PATH\" }".into());
                    }
                    Some(s)
                }
                Err(m) => {
                    errors.push(m);
                    None
                }
            },
        };
        if c.sslmode == SslMode::VerifyFull {
            if let Some(ca) = &c.ca_file {
                let p = if ca.is_absolute() {
                    ca.clone()
                } else {
                    base.join(ca)
                };
                if !p.exists() {
                    errors.push(format!("ca_file {} does not exist", p.display()));
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let display = describe(&pg);
        Ok((
            Target {
                name: name.to_string(),
                pg,
                display,
                password,
                sslmode: c.sslmode,
                ca_file: c.ca_file.as_ref().map(|p| {
                    if p.is_absolute() {
                        p.clone()
                    } else {
                        base.join(p)
                    }
                }),
                lock_timeout: c.lock_timeout.0,
                statement_timeout: c.statement_timeout.map(|d| d.0),
                connect_timeout: c.connect_timeout.0,
            },
            warnings,
        ))
    }

    /// A target made in code (demo, tests): no TLS, no password.
    pub fn from_url(name: &str, url: &str) -> Result<Target, String> {
        let c = TargetConfig {
            url: url.to_string(),
            password: None,
            sslmode: SslMode::Disable,
            ca_file: None,
            lock_timeout: default_lock_timeout(),
            statement_timeout: None,
            connect_timeout: default_connect_timeout(),
        };
        Target::resolve(name, &c, Path::new("."))
            .map(|(t, _)| t)
            .map_err(|e| e.join("; "))
    }

    /// The database name of the target.
    pub fn dbname(&self) -> &str {
        self.pg.get_dbname().unwrap_or("postgres")
    }

    /// A connection for read-only checks.
    pub async fn connect(&self) -> Result<Client, String> {
        self.connect_to(self.dbname()).await
    }

    /// A connection with `lock_timeout` (and `statement_timeout` when set) for statements that
    /// change state.
    pub async fn connect_for_maintenance(&self) -> Result<Client, String> {
        let client = self.connect().await?;
        let mut set = format!("SET lock_timeout = '{}ms'", self.lock_timeout.as_millis());
        if let Some(st) = self.statement_timeout {
            set.push_str(&format!("; SET statement_timeout = '{}ms'", st.as_millis()));
        }
        client
            .batch_execute(&set)
            .await
            .map_err(|e| format!("target {}: {}", self.name, pg_error(&e)))?;
        Ok(client)
    }

    /// A connection to another database on the same server (e.g. a scratch database).
    pub async fn connect_to(&self, dbname: &str) -> Result<Client, String> {
        let mut cfg = self.pg.clone();
        cfg.dbname(dbname);
        cfg.application_name("runbook");
        cfg.connect_timeout(self.connect_timeout);
        cfg.options("-c idle_in_transaction_session_timeout=60000");
        if let Some(p) = &self.password {
            cfg.password(p.expose());
        }
        let fail = |e: tokio_postgres::Error| {
            format!(
                "cannot connect to target {} ({}): {}",
                self.name,
                self.display,
                pg_error(&e)
            )
        };
        let connect = async {
            match self.sslmode {
                SslMode::Disable => {
                    cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.map_err(fail)?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    Ok(client)
                }
                mode => {
                    cfg.ssl_mode(if mode == SslMode::Prefer {
                        tokio_postgres::config::SslMode::Prefer
                    } else {
                        tokio_postgres::config::SslMode::Require
                    });
                    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.tls_config(mode)?);
                    let (client, conn) = cfg.connect(tls).await.map_err(fail)?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    Ok(client)
                }
            }
        };
        match tokio::time::timeout(self.connect_timeout + Duration::from_secs(1), connect).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "cannot connect to target {} ({}): timed out after {:?}",
                self.name, self.display, self.connect_timeout
            )),
        }
    }

    fn tls_config(&self, mode: SslMode) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        if mode == SslMode::VerifyFull {
            let mut roots = rustls::RootCertStore::empty();
            match &self.ca_file {
                Some(ca) => {
                    let pem = std::fs::read(ca).map_err(|e| {
                        format!(
                            "target {}: cannot read ca_file {}: {e}",
                            self.name,
                            ca.display()
                        )
                    })?;
                    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                        let cert = cert.map_err(|e| {
                            format!(
                                "target {}: bad certificate in {}: {e}",
                                self.name,
                                ca.display()
                            )
                        })?;
                        roots
                            .add(cert)
                            .map_err(|e| format!("target {}: {e}", self.name))?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            Ok(builder.with_root_certificates(roots).with_no_client_auth())
        } else {
            Ok(builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify))
                .with_no_client_auth())
        }
    }
}

/// `sslmode = require`/`prefer`: encrypt, do not verify (libpq's meaning).
#[derive(Debug)]
struct NoVerify;

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn describe(pg: &tokio_postgres::Config) -> String {
    let user = pg.get_user().unwrap_or("");
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let db = pg.get_dbname().unwrap_or(user);
    if user.is_empty() {
        format!("{host}:{port}/{db}")
    } else {
        format!("{user}@{host}:{port}/{db}")
    }
}

/// A PostgreSQL error as one line: the server's message (with SQLSTATE) when there is one.
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

/// `quote_ident`: quotes an identifier the way PostgreSQL's `quote_ident` does when needed.
pub fn quote_ident(ident: &str) -> String {
    let plain = !ident.is_empty()
        && ident
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && ident
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain && !is_keyword(ident) {
        ident.to_string()
    } else {
        format!("\"{}\"", ident.replace('"', "\"\""))
    }
}

fn is_keyword(s: &str) -> bool {
    // Reserved words that would break an unquoted identifier; quoting more is harmless.
    const KW: &[&str] = &[
        "all",
        "analyse",
        "analyze",
        "and",
        "any",
        "array",
        "as",
        "asc",
        "asymmetric",
        "both",
        "case",
        "cast",
        "check",
        "collate",
        "column",
        "constraint",
        "create",
        "current_catalog",
        "current_date",
        "current_role",
        "current_time",
        "current_timestamp",
        "current_user",
        "default",
        "deferrable",
        "desc",
        "distinct",
        "do",
        "else",
        "end",
        "except",
        "false",
        "fetch",
        "for",
        "foreign",
        "from",
        "grant",
        "group",
        "having",
        "in",
        "initially",
        "intersect",
        "into",
        "lateral",
        "leading",
        "limit",
        "localtime",
        "localtimestamp",
        "not",
        "null",
        "offset",
        "on",
        "only",
        "or",
        "order",
        "placing",
        "primary",
        "references",
        "returning",
        "select",
        "session_user",
        "some",
        "symmetric",
        "table",
        "then",
        "to",
        "trailing",
        "true",
        "union",
        "unique",
        "user",
        "using",
        "variadic",
        "when",
        "where",
        "window",
        "with",
    ];
    KW.contains(&s)
}

/// `schema.name`, each part quoted as needed.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_ident_follows_postgres_rules() {
        assert_eq!(quote_ident("orders"), "orders");
        assert_eq!(quote_ident("Orders"), "\"Orders\"");
        assert_eq!(quote_ident("Weird \"Name\""), "\"Weird \"\"Name\"\"\"");
        assert_eq!(quote_ident("user"), "\"user\"");
        assert_eq!(quote_ident("1abc"), "\"1abc\"");
        assert_eq!(
            qualified("trading", "order items"),
            "trading.\"order items\""
        );
    }

    #[test]
    fn password_in_url_is_refused_without_echoing_it() {
        let c = TargetConfig {
            url: "postgres://u:sekrit-pw@h/db".into(),
            password: None,
            sslmode: SslMode::Disable,
            ca_file: None,
            lock_timeout: default_lock_timeout(),
            statement_timeout: None,
            connect_timeout: default_connect_timeout(),
        };
        let e = Target::resolve("t", &c, Path::new("."))
            .unwrap_err()
            .join(" ");
        assert!(e.contains("url contains a password"));
        assert!(!e.contains("sekrit"));
    }
}
