//! `tls_cert` against real TLS servers on loopback (tokio-rustls) presenting certificates made
//! by the `openssl` CLI in the test: a private CA, leaves that expired, expire in 5, 20 and 400
//! days, and one for the wrong host; and a PEM file with a chain.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use support::http::report_t;
use support::tls::openssl;
use support::{Setup, details, item};

/// A private CA in `dir`: ca.pem, ca.key, and what `openssl ca` needs to sign with chosen dates.
fn make_ca(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "3650",
            "-subj",
            "/CN=Runbook Test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    std::fs::create_dir_all(dir.join("issued")).expect("mkdir");
    std::fs::write(dir.join("index.txt"), "").expect("index");
    std::fs::write(dir.join("serial"), "1000\n").expect("serial");
    let cnf = format!(
        "[ca]\ndefault_ca = test\n[test]\ndir = {d}\ndatabase = {d}/index.txt\nnew_certs_dir = {d}/issued\nserial = {d}/serial\n\
         certificate = {d}/ca.pem\nprivate_key = {d}/ca.key\ndefault_md = sha256\npolicy = any\nunique_subject = no\ncopy_extensions = none\n\
         [any]\ncommonName = supplied\n",
        d = dir.display()
    );
    std::fs::write(dir.join("ca.cnf"), cnf).expect("ca.cnf");
}

/// Signs a leaf for `host` valid until now + `days_left` days (+1h so whole days are stable);
/// returns (cert path, key path).
fn make_leaf(dir: &Path, name: &str, host: &str, days_left: i64) -> (PathBuf, PathBuf) {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let cert = format!("{name}.pem");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={host}"),
        ],
    );
    std::fs::write(dir.join(format!("{name}.ext")), format!("subjectAltName = DNS:{host}\nbasicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n")).expect("ext");
    let now = chrono::Utc::now();
    let start = (now - chrono::Duration::days(800))
        .format("%Y%m%d%H%M%SZ")
        .to_string();
    let end = (now + chrono::Duration::days(days_left) + chrono::Duration::hours(1))
        .format("%Y%m%d%H%M%SZ")
        .to_string();
    openssl(
        dir,
        &[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-in",
            &csr,
            "-out",
            &cert,
            "-startdate",
            &start,
            "-enddate",
            &end,
            "-extfile",
            &format!("{name}.ext"),
            "-notext",
        ],
    );
    (dir.join(cert), dir.join(key))
}

/// Serves TLS with this certificate on a loopback port until the runtime ends.
async fn serve(cert: &Path, key: &Path) -> u16 {
    let certs: Vec<_> = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).expect("cert"),
    ))
    .collect::<Result<_, _>>()
    .expect("certs");
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).expect("key"),
    ))
    .expect("key")
    .expect("a key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    use tokio::io::AsyncReadExt;
                    let mut buf = [0u8; 64];
                    let _ =
                        tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut buf))
                            .await;
                }
            });
        }
    });
    port
}

fn cert_of<'a>(it: &'a serde_json::Value, endpoint: &str) -> &'a serde_json::Value {
    it["data"]["certificates"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["endpoint"] == endpoint))
        .unwrap_or_else(|| panic!("no certificate for {endpoint} in {it:#}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_are_judged_by_expiry_chain_and_host_name() {
    let pki = tempfile::tempdir().expect("temp");
    let dir = pki.path();
    make_ca(dir);
    let mut ports = std::collections::BTreeMap::new();
    for (name, host, days) in [
        ("expired", "localhost", -3),
        ("five", "localhost", 5),
        ("twenty", "localhost", 20),
        ("long", "localhost", 400),
        ("wronghost", "other.example", 400),
    ] {
        let (cert, key) = make_leaf(dir, name, host, days);
        ports.insert(name, serve(&cert, &key).await);
    }
    let ep = |n: &str| format!("localhost:{}", ports[n]);
    let unreachable = format!("localhost:{}", support::free_port());
    let items = format!(
        r#"
[[jobs.t.items]]
name = "each"
kind = "tls_cert"
endpoints = [{:?}, {:?}, {:?}, {:?}, {:?}, {:?}]
ca_file = {:?}

[[jobs.t.items]]
name = "long only"
kind = "tls_cert"
endpoints = [{:?}]
ca_file = {:?}

[[jobs.t.items]]
name = "untrusted"
kind = "tls_cert"
endpoints = [{:?}]
"#,
        ep("expired"),
        ep("five"),
        ep("twenty"),
        ep("long"),
        ep("wronghost"),
        unreachable,
        dir.join("ca.pem"),
        ep("long"),
        dir.join("ca.pem"),
        ep("long"),
    );
    let setup = Setup::job_t("", &items);
    let (code, report) = report_t(setup).await;
    assert_eq!(code, 1);
    let each = item(&report, "each");
    assert_eq!(each["status"], "fail");

    let expired = cert_of(each, &ep("expired"));
    assert_eq!(expired["status"], "fail");
    assert_eq!(expired["days_left"], -3, "{expired:#}");
    assert_eq!(expired["subject"], "CN=localhost");
    assert_eq!(expired["issuer"], "CN=Runbook Test CA");

    let five = cert_of(each, &ep("five"));
    assert_eq!(
        (five["status"].as_str(), five["days_left"].as_i64()),
        (Some("fail"), Some(5)),
        "{five:#}"
    );
    assert_eq!(five["chain_verified"], true);

    let twenty = cert_of(each, &ep("twenty"));
    assert_eq!(
        (twenty["status"].as_str(), twenty["days_left"].as_i64()),
        (Some("warn"), Some(20)),
        "{twenty:#}"
    );

    let long = cert_of(each, &ep("long"));
    assert_eq!(
        (long["status"].as_str(), long["days_left"].as_i64()),
        (Some("pass"), Some(400)),
        "{long:#}"
    );
    assert_eq!(
        (
            long["chain_verified"].as_bool(),
            long["name_matches"].as_bool()
        ),
        (Some(true), Some(true))
    );

    let wrong = cert_of(each, &ep("wronghost"));
    assert_eq!(wrong["status"], "fail", "{wrong:#}");
    assert_eq!(
        (
            wrong["chain_verified"].as_bool(),
            wrong["name_matches"].as_bool()
        ),
        (Some(true), Some(false))
    );
    assert_eq!(wrong["subject"], "CN=other.example");

    let gone = cert_of(each, &unreachable);
    assert_eq!(gone["status"], "fail");
    assert!(
        details(each).contains(&format!("{unreachable}: unreachable")),
        "{each:#}"
    );

    let d = details(each);
    assert!(d.contains("EXPIRED 3 days ago"), "{d}");
    assert!(d.contains("name does not match"), "{d}");

    assert_eq!(item(&report, "long only")["status"], "pass");
    assert!(
        item(&report, "long only")["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("expires in 400 days")
    );

    // Without the private CA the chain does not verify: the certificate is still read and its
    // expiry reported, and the item fails saying why.
    let untrusted = item(&report, "untrusted");
    assert_eq!(untrusted["status"], "fail");
    let c = cert_of(untrusted, &ep("long"));
    assert_eq!(
        (c["chain_verified"].as_bool(), c["days_left"].as_i64()),
        (Some(false), Some(400)),
        "{c:#}"
    );
    assert!(
        untrusted["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("chain does not verify"),
        "{untrusted:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_certificate_of_a_pem_file_is_checked() {
    let pki = tempfile::tempdir().expect("temp");
    let dir = pki.path();
    make_ca(dir);
    let (leaf, _) = make_leaf(dir, "leaf", "trademaster.example", 20);
    let chain = format!(
        "{}{}",
        std::fs::read_to_string(&leaf).expect("leaf"),
        std::fs::read_to_string(dir.join("ca.pem")).expect("ca")
    );
    std::fs::write(dir.join("fullchain.pem"), chain).expect("write");
    std::fs::write(dir.join("garbage.pem"), "not a certificate\n").expect("write");
    let items = format!(
        "[[jobs.t.items]]\nname = \"files\"\nkind = \"tls_cert\"\nfiles = [{:?}]\n\n[[jobs.t.items]]\nname = \"garbage\"\nkind = \"tls_cert\"\nfiles = [{:?}]\n",
        dir.join("fullchain.pem"),
        dir.join("garbage.pem")
    );
    let setup = Setup::job_t("", &items);
    let (_, report) = report_t(setup).await;
    let files = item(&report, "files");
    assert_eq!(
        files["status"], "warn",
        "the leaf expires in 20 days: {files:#}"
    );
    let certs = files["data"]["certificates"].as_array().expect("list");
    assert_eq!(certs.len(), 2, "leaf and CA are both checked");
    assert!(
        certs
            .iter()
            .any(|c| c["subject"] == "CN=trademaster.example" && c["days_left"] == 20)
    );
    assert!(
        certs
            .iter()
            .any(|c| c["subject"] == "CN=Runbook Test CA" && c["status"] == "pass")
    );
    assert_eq!(item(&report, "garbage")["status"], "fail");
}

/// Serves TLS only to clients asking (SNI) for `host`, with this certificate: like a
/// production front end that hosts several names on one address.
async fn serve_by_sni(host: &str, cert: &Path, key: &Path) -> u16 {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<_> = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).expect("cert"),
    ))
    .collect::<Result<_, _>>()
    .expect("certs");
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).expect("key"),
    ))
    .expect("key")
    .expect("a key");
    let signing = provider
        .key_provider
        .load_private_key(key)
        .expect("signing key");
    let mut by_name = rustls::server::ResolvesServerCertUsingSni::new();
    by_name
        .add(host, rustls::sign::CertifiedKey::new(certs, signing))
        .expect("add the certificate");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(by_name));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    use tokio::io::AsyncReadExt;
                    let mut buf = [0u8; 64];
                    let _ =
                        tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut buf))
                            .await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn server_name_connects_to_the_address_and_verifies_the_production_name() {
    let pki = tempfile::tempdir().expect("temp");
    let dir = pki.path();
    make_ca(dir);
    let name = "trading.trademaster.example";
    let (cert, key) = make_leaf(dir, "prod", name, 400);
    let port = serve_by_sni(name, &cert, &key).await;
    let endpoint = format!("127.0.0.1:{port}");
    let items = format!(
        r#"
[[jobs.t.items]]
name = "by address"
kind = "tls_cert"
endpoints = [{endpoint:?}]
ca_file = {ca:?}

[[jobs.t.items]]
name = "as the production name"
kind = "tls_cert"
endpoints = [{endpoint:?}]
server_name = {name:?}
ca_file = {ca:?}
"#,
        ca = dir.join("ca.pem"),
    );
    let setup = Setup::job_t("", &items);
    let (_, report) = report_t(setup).await;
    // Asking for the address gets no certificate at all from a server that picks by name.
    let plain = item(&report, "by address");
    assert_eq!(plain["status"], "fail", "{plain:#}");

    let named = item(&report, "as the production name");
    assert_eq!(named["status"], "pass", "{named:#}");
    let c = cert_of(named, &endpoint);
    assert_eq!(
        (
            c["chain_verified"].as_bool(),
            c["name_matches"].as_bool(),
            c["server_name"].as_str(),
            c["days_left"].as_i64()
        ),
        (Some(true), Some(true), Some(name), Some(400)),
        "{c:#}"
    );
    assert!(
        details(named).contains(&format!("{endpoint} (as {name}): CN={name}")),
        "{named:#}"
    );
}

#[test]
fn a_server_name_that_is_no_name_is_a_config_error() {
    let setup = Setup::job_t(
        "",
        "[[jobs.t.items]]\nname = \"bad\"\nkind = \"tls_cert\"\nendpoints = [\"localhost:443\"]\nserver_name = \"not a name!\"\n",
    );
    let out = setup.runbook(&["check-config"]).output().unwrap();
    let out = (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    );
    assert_eq!(out.0, 2, "{}", out.1);
    assert!(
        out.1.contains("server_name") && out.1.contains("item \"bad\""),
        "{}",
        out.1
    );
}
