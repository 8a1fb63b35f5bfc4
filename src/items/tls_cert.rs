//! `tls_cert`: days until TLS certificates expire, from endpoints and PEM files.
//!
//! The runbook's monthly "Update TLS certificates" becomes a check that says which certificate
//! expires when, early enough to act. For an endpoint (`host:port`, SNI = host) we do the TLS
//! handshake ourselves (tokio-rustls) with a verifier that *records* the verification result
//! instead of aborting, so an expired, self-signed or wrong-host certificate is still read and
//! reported (notAfter, days left, subject, issuer) along with why it does not verify. The chain
//! is verified against the Mozilla roots (webpki-roots) plus `ca_file`; the host name is checked
//! separately so the report can say "chain ok, name wrong". For PEM `files`, every certificate
//! in the file is checked (a fullchain's intermediate can expire too).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::Deserialize;
use serde_json::json;

use super::{ItemCtx, Outcome, Prepare, Status};
use crate::base::units::Dur;

/// Options of `kind = "tls_cert"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCert {
    /// `host:port` endpoints (SNI is the host; `[::1]:443` for IPv6).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// PEM files (every certificate in each is checked), relative to the config's folder.
    #[serde(default)]
    pub files: Vec<std::path::PathBuf>,
    /// Warn when a certificate expires within this. Default 30d.
    #[serde(default = "default_warn")]
    pub warn_within: Dur,
    /// Fail when a certificate expires within this. Default 7d.
    #[serde(default = "default_fail")]
    pub fail_within: Dur,
    /// Extra CA certificates (PEM) to verify endpoint chains against, besides the Mozilla roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Fail an endpoint whose chain does not verify or whose certificate does not match the host
    /// name. Default true; false checks expiry only (e.g. self-signed internal endpoints).
    #[serde(default = "default_verify")]
    pub verify: bool,
    /// The name to ask for (SNI) and to match the certificate against, for every endpoint,
    /// instead of the endpoint's host: connect to `localhost:443` or `10.0.4.7:443` and verify
    /// `trading.trademaster.example`, the name the certificate carries. Default: the host.
    pub server_name: Option<String>,
}

fn default_warn() -> Dur {
    Dur::from_secs(30 * 86400)
}
fn default_fail() -> Dur {
    Dur::from_secs(7 * 86400)
}
fn default_verify() -> bool {
    true
}

/// What we learnt about one certificate.
struct CertInfo {
    subject: String,
    issuer: String,
    not_after: DateTime<Utc>,
    /// DNS names and IPs of the subjectAltName extension.
    names: Vec<String>,
}

/// What the recording verifier saw during a handshake.
#[derive(Default)]
struct Seen {
    leaf: Option<Vec<u8>>,
    /// `Ok` or why the chain does not verify.
    chain: Option<Result<(), String>>,
    /// `Ok` or why the name does not match.
    name: Option<Result<(), String>>,
}

/// A verifier that runs the real WebPKI verification, records its verdict, and lets the
/// handshake go on so the certificate can be read. Handshake signatures are still verified
/// (the peer must hold the certificate's key).
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    seen: Arc<Mutex<SeenBox>>,
}

/// `Seen` behind a `Debug` the trait requires.
#[derive(Default)]
struct SeenBox(Seen);
impl std::fmt::Debug for SeenBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SeenBox")
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let full = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        let name = rustls::server::ParsedCertificate::try_from(end_entity)
            .and_then(|parsed| rustls::client::verify_server_name(&parsed, server_name))
            .map_err(|e| e.to_string());
        // webpki checks the chain first and the name last: a name error means the chain is fine.
        let chain = match full {
            Ok(_) => Ok(()),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        if let Ok(mut s) = self.seen.lock() {
            s.0.leaf = Some(end_entity.to_vec());
            s.0.chain = Some(chain);
            s.0.name = Some(name);
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

impl TlsCert {
    pub fn prepare(&mut self, p: &mut Prepare) {
        if self.endpoints.is_empty() && self.files.is_empty() {
            p.error("endpoints", "tls_cert needs `endpoints` or `files`");
        }
        for e in &self.endpoints {
            if let Err(m) = split_endpoint(e) {
                p.error("endpoints", m);
            }
        }
        if let Some(name) = &self.server_name
            && ServerName::try_from(name.clone()).is_err()
        {
            p.error(
                "server_name",
                format!("server_name {name:?} is not a DNS name or an IP address"),
            );
        }
        p.within_order(self.warn_within, self.fail_within);
        if let Some(ca) = &self.ca_file
            && let Err(e) = read_pem_certs(&p.path(ca))
        {
            p.error("ca_file", e);
        }
    }

    pub async fn run(&self, ctx: &ItemCtx) -> Outcome {
        let now = ctx.started_at;
        let mut rows: Vec<(Status, String, serde_json::Value, String)> = Vec::new();

        if !self.endpoints.is_empty() {
            let roots = match self.roots(ctx) {
                Ok(r) => r,
                Err(e) => return Outcome::fail(e),
            };
            for endpoint in &self.endpoints {
                let budget = super::support::http::remaining(ctx).min(Duration::from_secs(15));
                let result = tokio::select! {
                    r = tokio::time::timeout(budget, handshake(endpoint, self.server_name.as_deref(), roots.clone())) => r
                        .unwrap_or_else(|_| Err(format!("no TLS handshake within {}s", budget.as_secs()))),
                    _ = ctx.cancel.cancelled() => Err("interrupted".into()),
                };
                rows.push(self.judge_endpoint(endpoint, result, now));
            }
        }

        for file in &self.files {
            let path = ctx.path(file);
            match read_pem_certs(&path) {
                Err(e) => rows.push((
                    Status::Fail,
                    format!("{}: {e}", path.display()),
                    json!({"file": path, "error": e, "status": "fail"}),
                    e,
                )),
                Ok(certs) => {
                    for (i, der) in certs.iter().enumerate() {
                        let label = format!("{} #{}", path.display(), i + 1);
                        match parse_cert(der) {
                            Err(e) => rows.push((
                                Status::Fail,
                                format!("{label}: {e}"),
                                json!({"file": path, "index": i, "error": e, "status": "fail"}),
                                e,
                            )),
                            Ok(info) => {
                                let (status, when) = self.expiry(&info, now);
                                let line = format!(
                                    "{label}: {} — {when} ({}), issuer {}",
                                    info.subject,
                                    info.not_after.format("%Y-%m-%d"),
                                    info.issuer
                                );
                                let data = json!({"file": path, "index": i, "subject": info.subject, "issuer": info.issuer,
                                    "not_after": info.not_after.to_rfc3339(), "days_left": days_left(&info, now), "status": status.as_str()});
                                rows.push((status, line, data, format!("{label} {when}")));
                            }
                        }
                    }
                }
            }
        }

        let worst = rows
            .iter()
            .map(|r| r.0)
            .max_by_key(|s| s.severity())
            .unwrap_or(Status::Pass);
        let bad: Vec<&str> = rows
            .iter()
            .filter(|r| r.0 != Status::Pass)
            .map(|r| r.3.as_str())
            .collect();
        let soonest = rows
            .iter()
            .filter_map(|r| r.2.get("days_left").and_then(|d| d.as_i64()))
            .min();
        let summary = if !bad.is_empty() {
            // The worst first; a long list belongs in the details, not the one-line summary.
            let mut ordered: Vec<&(Status, String, serde_json::Value, String)> =
                rows.iter().filter(|r| r.0 != Status::Pass).collect();
            ordered.sort_by_key(|r| {
                (
                    std::cmp::Reverse(r.0.severity()),
                    r.2.get("days_left")
                        .and_then(|d| d.as_i64())
                        .unwrap_or(i64::MIN),
                )
            });
            let shown: Vec<&str> = ordered.iter().take(3).map(|r| r.3.as_str()).collect();
            let more = if bad.len() > 3 {
                format!("; and {} more", bad.len() - 3)
            } else {
                String::new()
            };
            format!("{}{more}", shown.join("; "))
        } else {
            match soonest {
                Some(d) => format!(
                    "{} certificate{} fine, the first expires in {d} days",
                    rows.len(),
                    if rows.len() == 1 { "" } else { "s" }
                ),
                None => "no certificates checked".into(),
            }
        };
        // The worst rows first: the reader acts on those.
        rows.sort_by_key(|r| {
            (
                std::cmp::Reverse(r.0.severity()),
                r.2.get("days_left")
                    .and_then(|d| d.as_i64())
                    .unwrap_or(i64::MIN),
            )
        });
        Outcome::new(worst, summary)
            .with_details(
                rows.iter()
                    .map(|r| format!("{} {}", r.0.tag(), r.1))
                    .collect(),
            )
            .with_data({
                let certificates: Vec<serde_json::Value> =
                    rows.iter().map(|r| r.2.clone()).collect();
                // The trend (SPEC 9.3): the fewest days any certificate has left.
                let value = certificates
                    .iter()
                    .filter_map(|c| c["days_left"].as_i64())
                    .min();
                json!({"certificates": certificates, "value": value})
            })
    }

    fn roots(&self, ctx: &ItemCtx) -> Result<Arc<rustls::RootCertStore>, String> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(ca) = &self.ca_file {
            for der in read_pem_certs(&ctx.path(ca))? {
                roots
                    .add(CertificateDer::from(der))
                    .map_err(|e| format!("ca_file: {e}"))?;
            }
        }
        Ok(Arc::new(roots))
    }

    /// (status, expiry phrase) of one certificate.
    fn expiry(&self, info: &CertInfo, now: DateTime<Utc>) -> (Status, String) {
        let left = info.not_after - now;
        let days = days_left(info, now);
        if left <= chrono::Duration::zero() {
            return (
                Status::Fail,
                format!(
                    "EXPIRED {} day{} ago",
                    -days,
                    if days == -1 { "" } else { "s" }
                ),
            );
        }
        let phrase = format!("expires in {days} day{}", if days == 1 { "" } else { "s" });
        let within = |d: Dur| chrono::Duration::from_std(d.get()).is_ok_and(|d| left <= d);
        if within(self.fail_within) {
            (
                Status::Fail,
                format!("{phrase} (fail_within {})", days_text(self.fail_within)),
            )
        } else if within(self.warn_within) {
            (
                Status::Warn,
                format!("{phrase} (warn_within {})", days_text(self.warn_within)),
            )
        } else {
            (Status::Pass, phrase)
        }
    }

    fn judge_endpoint(
        &self,
        endpoint: &str,
        result: Result<Handshake, String>,
        now: DateTime<Utc>,
    ) -> (Status, String, serde_json::Value, String) {
        let hs = match result {
            Ok(h) => h,
            Err(e) => {
                let data = json!({"endpoint": endpoint, "error": e, "status": "fail"});
                return (
                    Status::Fail,
                    format!("{endpoint}: unreachable: {e}"),
                    data,
                    format!("{endpoint} unreachable"),
                );
            }
        };
        let info = match parse_cert(&hs.leaf) {
            Ok(i) => i,
            Err(e) => {
                return (
                    Status::Fail,
                    format!("{endpoint}: {e}"),
                    json!({"endpoint": endpoint, "error": e, "status": "fail"}),
                    e,
                );
            }
        };
        let (mut status, when) = self.expiry(&info, now);
        // "localhost:443 (as trading.example)": the address connected to and the name checked.
        let shown = match &self.server_name {
            Some(name) => format!("{endpoint} (as {name})"),
            None => endpoint.to_string(),
        };
        let mut short = format!("{shown} {when}");
        let mut problems = Vec::new();
        if let Err(e) = &hs.chain {
            problems.push(format!("chain does not verify: {e}"));
        }
        if let Err(e) = &hs.name {
            problems.push(format!("name does not match: {e}"));
        }
        if self.verify && !problems.is_empty() && status != Status::Fail {
            status = Status::Fail;
            short = format!("{shown}: {}", problems.join(", "));
        }
        let verified = match (&hs.chain, &hs.name) {
            (Ok(()), Ok(())) => "chain verifies, name matches".to_string(),
            _ => problems.join("; "),
        };
        let line = format!(
            "{shown}: {} — {when} ({}), issuer {}; {verified}; names: {}",
            info.subject,
            info.not_after.format("%Y-%m-%d"),
            info.issuer,
            if info.names.is_empty() {
                "(none)".to_string()
            } else {
                info.names.join(", ")
            }
        );
        let data = json!({
            "endpoint": endpoint, "server_name": self.server_name, "subject": info.subject, "issuer": info.issuer, "names": info.names,
            "not_after": info.not_after.to_rfc3339(), "days_left": days_left(&info, now),
            "chain_verified": hs.chain.is_ok(), "chain_error": hs.chain.err(),
            "name_matches": hs.name.is_ok(), "name_error": hs.name.err(),
            "protocol": hs.protocol, "status": status.as_str(),
        });
        (status, line, data, short)
    }
}

/// A threshold in days as people write it (`30d`); humantime would say `1month 6h`.
fn days_text(d: Dur) -> String {
    let secs = d.get().as_secs();
    if secs.is_multiple_of(86400) {
        format!("{}d", secs / 86400)
    } else {
        d.to_string()
    }
}

/// Whole days left (negative when expired), rounded toward "less time left".
fn days_left(info: &CertInfo, now: DateTime<Utc>) -> i64 {
    (info.not_after - now).num_seconds().div_euclid(86400)
}

/// What a handshake gave us.
struct Handshake {
    leaf: Vec<u8>,
    chain: Result<(), String>,
    name: Result<(), String>,
    protocol: Option<String>,
}

async fn handshake(
    endpoint: &str,
    name: Option<&str>,
    roots: Arc<rustls::RootCertStore>,
) -> Result<Handshake, String> {
    let (host, port) = split_endpoint(endpoint)?;
    let name = name.map(str::to_string).unwrap_or_else(|| host.clone());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| format!("cannot build the verifier: {e}"))?;
    let seen = Arc::new(Mutex::new(SeenBox::default()));
    let verifier = Arc::new(RecordingVerifier {
        inner,
        seen: seen.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let server_name = ServerName::try_from(name.clone())
        .map_err(|e| format!("{name:?} is not a valid server name: {e}"))?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls = connector.connect(server_name, tcp).await;
    let protocol = tls
        .as_ref()
        .ok()
        .and_then(|s| s.get_ref().1.protocol_version())
        .map(|v| format!("{v:?}"));
    let seen = seen
        .lock()
        .map_err(|_| "internal error: verifier state poisoned".to_string())?;
    let seen = &seen.0;
    match (&seen.leaf, tls) {
        (Some(leaf), _) => Ok(Handshake {
            leaf: leaf.clone(),
            chain: seen.chain.clone().unwrap_or(Ok(())),
            name: seen.name.clone().unwrap_or(Ok(())),
            protocol,
        }),
        (None, Err(e)) => Err(format!("TLS handshake failed: {e}")),
        (None, Ok(_)) => Err("the server sent no certificate".into()),
    }
}

/// `host:port` or `[v6]:port` → (host, port). The port is required: TLS services are not all
/// on 443 and a silent default would check the wrong one.
fn split_endpoint(e: &str) -> Result<(String, u16), String> {
    let bad = || format!("endpoint {e:?} is not \"host:port\" (e.g. \"trademaster.example:443\")");
    let (host, port) = if let Some(rest) = e.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
        (h.to_string(), p)
    } else {
        let (h, p) = e.rsplit_once(':').ok_or_else(bad)?;
        (h.to_string(), p)
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host, port))
}

/// Every CERTIFICATE block of a PEM file, as DER.
fn read_pem_certs(path: &std::path::Path) -> Result<Vec<Vec<u8>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut reader = std::io::BufReader::new(&data[..]);
    let certs: Vec<Vec<u8>> = rustls_pemfile::certs(&mut reader)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn parse_cert(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let not_after = DateTime::<Utc>::from_timestamp(cert.validity().not_after.timestamp(), 0)
        .ok_or("notAfter is out of range")?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                    4 => {
                        names.push(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string())
                    }
                    16 => {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(ip);
                        names.push(std::net::Ipv6Addr::from(b).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_after,
        names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_need_a_port() {
        assert_eq!(
            split_endpoint("example.com:443"),
            Ok(("example.com".into(), 443))
        );
        assert_eq!(split_endpoint("[::1]:8443"), Ok(("::1".into(), 8443)));
        assert!(split_endpoint("example.com").is_err());
        assert!(split_endpoint("example.com:https").is_err());
    }
}
