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
use tokio::sync::mpsc;
use tokio_postgres::Client;

use crate::base::secret::{Secret, SecretSource};
use crate::base::units::Dur;

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

/// Why a target could not be used. The message (`Display`) is the one the user reads; the
/// variant says what a caller may do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgError {
    /// No connection: refused, timed out, TLS or authentication failed.
    #[error("{0}")]
    Connect(String),
    /// The server has no connection slot left (`too many clients`, SQLSTATE 53300), after the
    /// brief retries (none for an extra worker).
    #[error("{0}")]
    TooManyClients(String),
    /// The target is a standby (`pg_is_in_recovery()`) where the caller must change state.
    #[error("{0}")]
    NotPrimary(String),
    /// A statement of ours failed (a SET, a catalog query), or its result was not as expected.
    #[error("{0}")]
    Query(String),
    /// The target's settings cannot be used (its URL, its `ca_file`).
    #[error("{0}")]
    Settings(String),
}

impl From<PgError> for String {
    fn from(e: PgError) -> String {
        e.to_string()
    }
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
    /// `statement_timeout` in ms for a check's statements: the time left before `deadline`, or
    /// the target's own `statement_timeout` when that is shorter (0, as in PostgreSQL, is none).
    pub fn check_timeout_ms(&self, deadline: tokio::time::Instant) -> u128 {
        let left = ms_until(deadline);
        self.statement_timeout
            .filter(|st| !st.is_zero())
            .map_or(left, |st| st.as_millis().clamp(1, left))
    }

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
                    errors.push(m.to_string());
                    None
                }
            },
        };
        if c.sslmode == SslMode::VerifyFull
            && let Some(ca) = &c.ca_file
        {
            let p = if ca.is_absolute() {
                ca.clone()
            } else {
                base.join(ca)
            };
            if !p.exists() {
                errors.push(format!("ca_file {} does not exist", p.display()));
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
    pub fn from_url(name: &str, url: &str) -> Result<Target, PgError> {
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
            .map_err(|e| PgError::Settings(e.join("; ")))
    }

    /// The database name of the target.
    pub fn dbname(&self) -> &str {
        self.pg.get_dbname().unwrap_or("postgres")
    }

    /// A connection for read-only checks (under the target's `statement_timeout`, if set).
    pub async fn connect(&self) -> Result<Client, PgError> {
        self.connect_to(self.dbname()).await
    }

    /// A connection with `lock_timeout` (and `statement_timeout` when set) for statements that
    /// change state.
    pub async fn connect_for_maintenance(&self) -> Result<Client, PgError> {
        Ok(self.connect_for_maintenance_with_notices().await?.0)
    }

    /// As [`Target::connect_for_maintenance`], plus the server's notices and warnings (e.g.
    /// `VACUUM (SKIP_LOCKED)`'s "skipping vacuum of ... lock not available"), one per message.
    pub async fn connect_for_maintenance_with_notices(
        &self,
    ) -> Result<(Client, mpsc::UnboundedReceiver<String>), PgError> {
        let (client, notices) = self.connect_with_notices(self.dbname()).await?;
        self.under_lock_timeout(client, notices).await
    }

    /// A connection to another database on the same server (e.g. a scratch database).
    pub async fn connect_to(&self, dbname: &str) -> Result<Client, PgError> {
        Ok(self.connect_with_notices(dbname).await?.0)
    }

    /// Connects to `dbname`; the receiver gets the server's notices (dropping it is fine).
    pub async fn connect_with_notices(
        &self,
        dbname: &str,
    ) -> Result<(Client, mpsc::UnboundedReceiver<String>), PgError> {
        self.open(dbname, true).await
    }

    /// An extra worker's connection for maintenance (`parallel` > 1): as
    /// [`Target::connect_for_maintenance_with_notices`], but a full server ("too many
    /// clients") is not retried. The item does its work on the connections it has and reports
    /// the one it could not get, rather than waiting for a slot.
    pub async fn connect_extra_worker(
        &self,
    ) -> Result<(Client, mpsc::UnboundedReceiver<String>), PgError> {
        let (client, notices) = self.open(self.dbname(), false).await?;
        self.under_lock_timeout(client, notices).await
    }

    /// Puts a fresh connection under the target's `lock_timeout`.
    async fn under_lock_timeout(
        &self,
        client: Client,
        notices: mpsc::UnboundedReceiver<String>,
    ) -> Result<(Client, mpsc::UnboundedReceiver<String>), PgError> {
        let set = format!("SET lock_timeout = '{}ms'", self.lock_timeout.as_millis());
        client
            .batch_execute(&set)
            .await
            .map_err(|e| PgError::Query(format!("target {}: {}", self.name, pg_error(&e))))?;
        Ok((client, notices))
    }

    /// A connection for read-only checks that says when it is gone: the receiver fires once
    /// the server closed the connection after the client was dropped (its backend has left
    /// `pg_stat_activity` by then: PostgreSQL closes the socket after it cleared its entry), or
    /// at most [`LINGER_MAX`] later. A per-cluster connection limit holds its slot until then.
    pub async fn connect_watched(&self) -> Result<(Client, Closed), PgError> {
        let (client, _notices, closed) = self.open_watched(self.dbname(), true, true).await?;
        Ok((client, closed))
    }

    async fn open(
        &self,
        dbname: &str,
        retry_when_full: bool,
    ) -> Result<(Client, mpsc::UnboundedReceiver<String>), PgError> {
        let (client, notices, _) = self.open_watched(dbname, retry_when_full, false).await?;
        Ok((client, notices))
    }

    async fn open_watched(
        &self,
        dbname: &str,
        retry_when_full: bool,
        watch: bool,
    ) -> Result<(Client, mpsc::UnboundedReceiver<String>, Closed), PgError> {
        let mut cfg = self.pg.clone();
        cfg.dbname(dbname);
        cfg.application_name("runbook");
        cfg.connect_timeout(self.connect_timeout);
        // Options given in the URL are kept; ours come after them and win.
        let mut options = cfg
            .get_options()
            .map(|o| format!("{o} "))
            .unwrap_or_default();
        options.push_str("-c idle_in_transaction_session_timeout=60000");
        if let Some(st) = self.statement_timeout {
            options.push_str(&format!(" -c statement_timeout={}", st.as_millis()));
        }
        cfg.options(&options);
        if let Some(p) = &self.password {
            cfg.password(p.expose());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let fail = |e: tokio_postgres::Error| {
            let message = format!(
                "cannot connect to target {} ({}): {}",
                self.name,
                self.display,
                pg_error(&e)
            );
            if e.code() == Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS) {
                PgError::TooManyClients(message)
            } else {
                PgError::Connect(message)
            }
        };
        let tls = match self.sslmode {
            SslMode::Disable => {
                cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
            mode => {
                cfg.ssl_mode(if mode == SslMode::Prefer {
                    tokio_postgres::config::SslMode::Prefer
                } else {
                    tokio_postgres::config::SslMode::Require
                });
                Some(self.tls_config(mode).map_err(PgError::Settings)?)
            }
        };
        // "Too many clients" is retried briefly: right after one of our own connections closed
        // (the previous item on this target), its server process may still be exiting and hold
        // the slot for a few milliseconds. A server that stays full fails after ~0.85 s more.
        // Watching the socket needs our own socket (one host, no host addresses or session
        // attributes to pick among); other targets say "closed" when the client side is done.
        let watch = watch
            && cfg.get_hostaddrs().is_empty()
            && cfg.get_target_session_attrs() == tokio_postgres::config::TargetSessionAttrs::Any;
        let mut backoff = [100u64, 250, 500].into_iter();
        loop {
            let (closed_tx, closed) = tokio::sync::oneshot::channel();
            let attempt = async {
                if watch {
                    let socket = WatchedSocket::connect(&cfg, self.connect_timeout, closed_tx)
                        .await
                        .map_err(|e| ConnectFailure::Socket(e.to_string()))?;
                    return match &tls {
                        None => {
                            let (client, conn) =
                                cfg.connect_raw(socket, tokio_postgres::NoTls).await?;
                            tokio::spawn(drive(conn, tx.clone()));
                            Ok::<_, ConnectFailure>(client)
                        }
                        Some(tls) => {
                            use tokio_postgres::tls::MakeTlsConnect;
                            let mut make =
                                tokio_postgres_rustls::MakeRustlsConnect::new(tls.clone());
                            let host = match cfg.get_hosts().first() {
                                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                                _ => "localhost".to_string(),
                            };
                            let connect =
                                MakeTlsConnect::<WatchedSocket>::make_tls_connect(&mut make, &host)
                                    .map_err(|e| ConnectFailure::Socket(e.to_string()))?;
                            let (client, conn) = cfg.connect_raw(socket, connect).await?;
                            tokio::spawn(drive(conn, tx.clone()));
                            Ok(client)
                        }
                    };
                }
                let client = match &tls {
                    None => {
                        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
                        tokio::spawn(drive_then(conn, tx.clone(), closed_tx));
                        client
                    }
                    Some(tls) => {
                        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls.clone());
                        let (client, conn) = cfg.connect(tls).await?;
                        tokio::spawn(drive_then(conn, tx.clone(), closed_tx));
                        client
                    }
                };
                Ok(client)
            };
            match tokio::time::timeout(self.connect_timeout + Duration::from_secs(1), attempt).await
            {
                Ok(Ok(client)) => return Ok((client, rx, Closed(closed))),
                Ok(Err(ConnectFailure::Socket(e))) => {
                    return Err(PgError::Connect(format!(
                        "cannot connect to target {} ({}): {e}",
                        self.name, self.display
                    )));
                }
                Ok(Err(ConnectFailure::Pg(e))) => {
                    let full =
                        e.code() == Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS);
                    match backoff.next() {
                        Some(ms) if full && retry_when_full => {
                            tokio::time::sleep(Duration::from_millis(ms)).await
                        }
                        _ => return Err(fail(e)),
                    }
                }
                Err(_) => {
                    return Err(PgError::Connect(format!(
                        "cannot connect to target {} ({}): timed out after {:?}",
                        self.name, self.display, self.connect_timeout
                    )));
                }
            }
        }
    }

    /// Asks the server to cancel the statement running on the connection `token` belongs to
    /// (used when a run is cancelled: dropping the client alone lets a VACUUM run on).
    pub async fn cancel(&self, token: &tokio_postgres::CancelToken) {
        let r = match self.sslmode {
            SslMode::Disable => {
                tokio::time::timeout(
                    self.connect_timeout,
                    token.cancel_query(tokio_postgres::NoTls),
                )
                .await
            }
            mode => match self.tls_config(mode) {
                Ok(tls) => {
                    tokio::time::timeout(
                        self.connect_timeout,
                        token.cancel_query(tokio_postgres_rustls::MakeRustlsConnect::new(tls)),
                    )
                    .await
                }
                Err(_) => return,
            },
        };
        if let Ok(Err(e)) = r {
            tracing::warn!(target = %self.name, "cannot cancel a statement: {}", pg_error(&e));
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

/// Column `idx` of a result row, or a one-line error naming it: a NULL or a type the code did not
/// expect (a catalog that changed, a view in the way) fails the item instead of panicking, as
/// `Row::get` would.
pub fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    idx: usize,
) -> Result<T, String> {
    row.try_get(idx).map_err(|e| {
        let name = row.columns().get(idx).map(|c| c.name()).unwrap_or("?");
        format!("unexpected value in column {name:?} of a result: {e}")
    })
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

/// Why opening a connection failed: our socket could not connect, or PostgreSQL said no.
enum ConnectFailure {
    Socket(String),
    Pg(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for ConnectFailure {
    fn from(e: tokio_postgres::Error) -> ConnectFailure {
        ConnectFailure::Pg(e)
    }
}

/// The longest a dropped connection is waited for (a server that never closes the socket, or
/// never answers a statement still in flight).
pub const LINGER_MAX: Duration = Duration::from_secs(5);

/// Fires once a dropped connection is gone on the server's side (see
/// [`Target::connect_watched`]). Also fires when the runtime shuts down.
pub struct Closed(tokio::sync::oneshot::Receiver<()>);

impl Closed {
    /// Waits until the connection is gone, at most [`LINGER_MAX`] (call it once the client is
    /// dropped): a connection whose server stopped answering mid-statement never closes, and
    /// must not hold up whoever waits for it.
    pub async fn wait(self) {
        let _ = tokio::time::timeout(LINGER_MAX, self.0).await;
    }
}

/// The socket under a watched connection: plain TCP or a Unix socket, which on drop (after the
/// client sent `Terminate` and the connection task ended) reads until the server closes its end,
/// then says so.
pub struct WatchedSocket {
    inner: Option<Socket>,
    closed: Option<tokio::sync::oneshot::Sender<()>>,
}

enum Socket {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl WatchedSocket {
    /// Connects to the first host of `cfg` that answers (TCP or a Unix socket folder, as libpq).
    async fn connect(
        cfg: &tokio_postgres::Config,
        timeout: Duration,
        closed: tokio::sync::oneshot::Sender<()>,
    ) -> std::io::Result<WatchedSocket> {
        let ports = cfg.get_ports();
        let mut last = std::io::Error::other("no host to connect to");
        for (i, host) in cfg.get_hosts().iter().enumerate() {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            let attempt = async {
                Ok::<_, std::io::Error>(match host {
                    tokio_postgres::config::Host::Tcp(h) => {
                        let s = tokio::net::TcpStream::connect((h.as_str(), port)).await?;
                        s.set_nodelay(true)?;
                        Socket::Tcp(s)
                    }
                    tokio_postgres::config::Host::Unix(dir) => Socket::Unix(
                        tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}")))
                            .await?,
                    ),
                })
            };
            match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok(inner)) => {
                    return Ok(WatchedSocket {
                        inner: Some(inner),
                        closed: Some(closed),
                    });
                }
                Ok(Err(e)) => last = e,
                Err(_) => {
                    last = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("timed out after {timeout:?}"),
                    )
                }
            }
        }
        Err(last)
    }

    fn socket(&mut self) -> &mut Socket {
        self.inner.as_mut().expect("present until dropped")
    }
}

impl Drop for WatchedSocket {
    fn drop(&mut self) {
        let (Some(mut socket), Some(closed)) = (self.inner.take(), self.closed.take()) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 256];
            let until_eof = async {
                loop {
                    let n = match &mut socket {
                        Socket::Tcp(s) => s.read(&mut buf).await,
                        Socket::Unix(s) => s.read(&mut buf).await,
                    };
                    if !matches!(n, Ok(n) if n > 0) {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER_MAX, until_eof).await;
            let _ = closed.send(());
        });
    }
}

impl tokio::io::AsyncRead for WatchedSocket {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.socket() {
            Socket::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for WatchedSocket {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.socket() {
            Socket::Tcp(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.socket() {
            Socket::Tcp(s) => std::pin::Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.socket() {
            Socket::Tcp(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// [`drive`], then says the connection is closed (the client side: the server's backend may
/// still be exiting).
async fn drive_then<S, T>(
    conn: tokio_postgres::Connection<S, T>,
    tx: mpsc::UnboundedSender<String>,
    closed: tokio::sync::oneshot::Sender<()>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    drive(conn, tx).await;
    let _ = closed.send(());
}

/// Drives a connection, forwarding the server's notices to `tx` ("WARNING: message").
async fn drive<S, T>(mut conn: tokio_postgres::Connection<S, T>, tx: mpsc::UnboundedSender<String>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(tokio_postgres::AsyncMessage::Notice(n))) => {
                let _ = tx.send(format!("{}: {}", n.severity(), n.message()));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return,
        }
    }
}

/// Refuses a standby: state-changing items call this first. `Err` says why, naming the target.
pub async fn ensure_primary(client: &Client, target: &Target) -> Result<(), PgError> {
    let row = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(|e| {
            PgError::Query(format!(
                "target {}: cannot check pg_is_in_recovery(): {}",
                target.name,
                pg_error(&e)
            ))
        })?;
    let in_recovery: bool = col(&row, 0).map_err(PgError::Query)?;
    if in_recovery {
        return Err(PgError::NotPrimary(format!(
            "target {} ({}) is a standby (pg_is_in_recovery() is true): refusing to change anything; point the item at the primary",
            target.name, target.display
        )));
    }
    Ok(())
}

/// The SQLSTATE of a server error, if it is one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

/// `55P03 lock_not_available`: `lock_timeout` expired (or NOWAIT).
pub fn is_lock_timeout(e: &tokio_postgres::Error) -> bool {
    sqlstate(e) == Some("55P03")
}

/// What one of our statements waits for when it waits for a lock on a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockWait {
    /// VACUUM and ANALYZE: SHARE UPDATE EXCLUSIVE on the table.
    Vacuum,
    /// `CREATE INDEX CONCURRENTLY`, `REINDEX ... CONCURRENTLY`: SHARE UPDATE EXCLUSIVE on the
    /// table, and every older transaction of the database must end first.
    ConcurrentBuild,
    /// A plain `REINDEX`: SHARE on the table (and ACCESS EXCLUSIVE on the index).
    Build,
}

/// Who a statement on `relation` (a table or an index, as written in SQL) that waited `waited`
/// for a lock was waiting for: sessions holding a lock on the table that conflicts with
/// `wait`, and for a concurrent build the transactions of this database older than it.
/// At most three, oldest first, without their query texts (those may hold secrets); an
/// autovacuum worker is shown with its own, which PostgreSQL writes (`autovacuum: VACUUM
/// public.t (to prevent wraparound)`), as that decides what the operator does: an ordinary
/// autovacuum gives way by itself after `deadlock_timeout`, one against wraparound does not.
pub async fn lock_blockers(
    client: &Client,
    relation: &str,
    waited: Duration,
    wait: LockWait,
) -> Option<String> {
    let modes: &[&str] = match wait {
        LockWait::Vacuum | LockWait::ConcurrentBuild => &[
            "ShareUpdateExclusiveLock",
            "ShareLock",
            "ShareRowExclusiveLock",
            "ExclusiveLock",
            "AccessExclusiveLock",
        ],
        LockWait::Build => &[
            "RowExclusiveLock",
            "ShareUpdateExclusiveLock",
            "ShareRowExclusiveLock",
            "ExclusiveLock",
            "AccessExclusiveLock",
        ],
    };
    let modes: Vec<String> = modes.iter().map(|m| m.to_string()).collect();
    let snapshots = wait == LockWait::ConcurrentBuild;
    let row = client
        .query_one(
            "WITH rel AS (SELECT coalesce((SELECT indrelid FROM pg_index WHERE indexrelid = to_regclass($1)), to_regclass($1)::oid) AS oid) \
             SELECT string_agg(CASE WHEN a.backend_type = 'autovacuum worker' \
                      THEN format('pid %s (%s, running %s)', a.pid, a.query, date_trunc('second', now() - a.xact_start)) \
                      ELSE format('pid %s (%s, user %s, %s, transaction open %s)', a.pid, \
                      coalesce(nullif(a.application_name, ''), 'no application_name'), a.usename, a.state, \
                      date_trunc('second', now() - a.xact_start)) END, '; ' ORDER BY a.xact_start) \
             FROM (SELECT * FROM pg_stat_activity a WHERE a.pid <> pg_backend_pid() AND a.datname = current_database() \
                     AND a.xact_start IS NOT NULL \
                     AND (a.pid IN (SELECT l.pid FROM pg_locks l, rel WHERE l.relation = rel.oid AND l.granted AND l.mode = ANY($2)) \
                          OR ($3 AND a.xact_start < now() - make_interval(secs => $4) \
                              AND (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL))) \
                   ORDER BY a.xact_start LIMIT 3) a",
            &[&relation, &modes, &snapshots, &waited.as_secs_f64()],
        )
        .await;
    row.ok()
        .and_then(|r| col::<Option<String>>(&r, 0).ok().flatten())
}

/// `pg_error(e)`, and when it is a lock timeout of an index build on `relation` that ran for
/// `waited`, whom it was waiting for ([`lock_blockers`]).
pub async fn explain_build_failure(
    client: &Client,
    e: &tokio_postgres::Error,
    relation: &str,
    waited: Duration,
    concurrently: bool,
) -> String {
    let msg = pg_error(e);
    if !is_lock_timeout(e) {
        return msg;
    }
    let wait = if concurrently {
        LockWait::ConcurrentBuild
    } else {
        LockWait::Build
    };
    match lock_blockers(client, relation, waited, wait).await {
        Some(who) if concurrently => format!(
            "{msg}: waited for {who} (a concurrent build waits for the locks on its table and for every older transaction in the database)"
        ),
        Some(who) => format!("{msg}: waited for {who}"),
        None => msg,
    }
}

/// The server's version as `server_version_num` (e.g. 150004).
pub async fn server_version_num(client: &Client) -> Result<i32, PgError> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| PgError::Query(pg_error(&e)))?;
    col(&row, 0).map_err(PgError::Query)
}

/// The time left before `deadline`, as a `statement_timeout` value in ms (at least 1).
pub fn ms_until(deadline: tokio::time::Instant) -> u128 {
    deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .as_millis()
        .max(1)
}

/// Sizes of relations in bytes, without waiting behind other sessions' locks: the size
/// functions take a lock on the relation, so they run under a short `lock_timeout`, and a
/// relation locked right now falls back to `relpages` (an estimate). With `total`, heap +
/// indexes + TOAST, else the relation alone. Leaves the session's `lock_timeout` at `restore`.
///
/// The total is the sum of the main forks of the table, its TOAST table and its indexes: what
/// `pg_total_relation_size` counts but the free space and visibility maps (a few pages) and the
/// TOAST index. It is measured, not estimated, and costs about half as much (no stat of the
/// map forks): 10 ms instead of 20-25 ms for 200 tables on a new connection.
pub async fn relation_sizes(
    client: &Client,
    oids: &[u32],
    total: bool,
    restore: Duration,
) -> Result<std::collections::HashMap<u32, i64>, String> {
    // `{o}` stands for the relation's oid in each expression.
    let size_of = |o: &str| {
        if total {
            format!(
                "(pg_relation_size({o}) \
                 + coalesce((SELECT pg_relation_size(nullif(c.reltoastrelid, 0)) FROM pg_class c WHERE c.oid = {o}), 0) \
                 + coalesce((SELECT sum(pg_relation_size(i.indexrelid))::bigint FROM pg_index i WHERE i.indrelid = {o}), 0))"
            )
        } else {
            format!("pg_relation_size({o})")
        }
    };
    client
        .batch_execute("SET lock_timeout = '100ms'")
        .await
        .map_err(|e| pg_error(&e))?;
    let bulk = client
        .query(
            &format!("SELECT o, {} FROM unnest($1::oid[]) o", size_of("o")),
            &[&oids],
        )
        .await;
    let mut out = std::collections::HashMap::new();
    match bulk {
        Ok(rows) => {
            for r in rows {
                out.insert(col::<u32>(&r, 0)?, col::<Option<i64>>(&r, 1)?.unwrap_or(0));
            }
        }
        Err(e) if is_lock_timeout(&e) => {
            for &oid in oids {
                let size = match client.query_one(&format!("SELECT {}", size_of("$1::oid")), &[&oid]).await {
                    Ok(r) => col::<Option<i64>>(&r, 0)?.unwrap_or(0),
                    Err(e) if is_lock_timeout(&e) => client
                        .query_one("SELECT (relpages::bigint * current_setting('block_size')::bigint) FROM pg_class WHERE oid = $1", &[&oid])
                        .await
                        .ok()
                        .and_then(|r| col::<i64>(&r, 0).ok())
                        .unwrap_or(0),
                    Err(e) => return Err(pg_error(&e)),
                };
                out.insert(oid, size);
            }
        }
        Err(e) => return Err(pg_error(&e)),
    }
    client
        .batch_execute(&format!("SET lock_timeout = '{}ms'", restore.as_millis()))
        .await
        .map_err(|e| pg_error(&e))?;
    Ok(out)
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

    // The clock is paused: "time left until the deadline" is exact, whatever the machine's load.
    #[tokio::test(start_paused = true)]
    async fn a_checks_timeout_is_the_shorter_of_the_deadline_and_the_targets_own() {
        let target = |st: Option<Duration>| {
            let c = TargetConfig {
                url: "postgres://u@h/db".into(),
                password: None,
                sslmode: SslMode::Disable,
                ca_file: None,
                lock_timeout: default_lock_timeout(),
                statement_timeout: st.map(crate::base::units::Dur),
                connect_timeout: default_connect_timeout(),
            };
            Target::resolve("t", &c, Path::new("."))
                .expect("valid target")
                .0
        };
        let soon = tokio::time::Instant::now() + Duration::from_secs(10);
        let ms = target(Some(Duration::from_millis(300))).check_timeout_ms(soon);
        assert_eq!(ms, 300);
        let near = tokio::time::Instant::now() + Duration::from_millis(100);
        let ms = target(Some(Duration::from_secs(60))).check_timeout_ms(near);
        assert_eq!(ms, 100);
        // None, or 0 (PostgreSQL's "no timeout"): the deadline alone.
        for st in [None, Some(Duration::ZERO)] {
            let ms = target(st).check_timeout_ms(soon);
            assert_eq!(ms, 10_000, "{st:?}");
        }
        // A deadline already passed still gives 1 ms, never 0 (which would mean "no timeout").
        let past = tokio::time::Instant::now();
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(target(None).check_timeout_ms(past), 1);
        assert_eq!(
            target(Some(Duration::from_secs(60))).check_timeout_ms(past),
            1
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
