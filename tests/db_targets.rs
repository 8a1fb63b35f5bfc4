//! Target options end to end, as users run them: `runbook run-job --format json` on a jobs.toml
//! written into a temporary folder, against a real throwaway PostgreSQL.
//!
//! - TLS: a server with `ssl = on` and a pg_hba.conf that rejects plaintext TCP, with
//!   certificates made by the `openssl` CLI (a private CA, a second unrelated CA, server
//!   certificates for `localhost`/127.0.0.1 or for another name). Each `sslmode` does what
//!   docs/database.md says, failures name the target and never show its password. Plus
//!   `prefer`'s fallback to plaintext on a server without TLS.
//! - `reindex` with `min_bloat`: with `pgstattuple` only the bloated B-tree index is rebuilt;
//!   without it every index is, with the documented note.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;
use std::time::{Duration, Instant};

use runbook::face::pgcluster::TempCluster;
use serde_json::Value;
use support::tls::{make_ca, make_server_cert};
use support::{
    Setup, item,
    pg::{cluster_with_app_db, q, require_password},
};

/// The password every target here is given: it must never appear in runbook's output.
const PASSWORD: &str = "s3cret-pw-XYZ";

/// The role the targets log in as: the servers ask it for [`PASSWORD`] (scram-sha-256), so a
/// target that connects proves runbook sent the password, and the output proves it never
/// printed it.
const ROLE: &str = "pw_user";

/// Proves the session is encrypted: `expect = true` on the server's own view of it.
const TLS_QUERY: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

// ---------------------------------------------------------------------------------------------
// TLS targets
// ---------------------------------------------------------------------------------------------

/// A running server that speaks TLS with a certificate signed by ca.pem and refuses plaintext
/// TCP.
struct TlsServer {
    pg: TempCluster,
    /// Holds the certificates (ca.pem: signed the server's certificate; other-ca.pem: did not).
    certs: tempfile::TempDir,
}

impl TlsServer {
    fn ca(&self) -> PathBuf {
        self.certs.path().join("ca.pem")
    }

    fn other_ca(&self) -> PathBuf {
        self.certs.path().join("other-ca.pem")
    }

    /// `postgres://pw_user@HOST:PORT/app` (no password: that is the target's `password`).
    fn url(&self, host: &str) -> String {
        format!("postgres://{ROLE}@{host}:{}/app", self.pg.port)
    }

    /// Starts a cluster, installs a server certificate for `cn`/`san` signed by a private CA,
    /// turns `ssl` on, makes pg_hba.conf accept TCP only over TLS, reloads, and checks with
    /// psql that TLS works and plaintext is refused.
    fn start(cn: &str, san: &str) -> TlsServer {
        let certs = tempfile::tempdir().expect("tempdir");
        make_ca(certs.path(), "ca");
        make_ca(certs.path(), "other-ca");
        let (crt, key) = make_server_cert(certs.path(), "ca", cn, san);

        let pg = cluster_with_app_db();
        // The server runs as `postgres` when we are root, and refuses a key that is readable by
        // others or owned by someone else.
        let owner = nix::unistd::Uid::effective().is_root().then(|| {
            nix::unistd::User::from_name("postgres")
                .expect("user lookup")
                .expect("we are root, so the server runs as `postgres`: that user must exist")
        });
        for (from, to, mode) in [(&crt, "server.crt", 0o644), (&key, "server.key", 0o600)] {
            let dest = pg.data.join(to);
            std::fs::copy(from, &dest).expect("copy into the data directory");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode)).expect("chmod");
            if let Some(u) = &owner {
                nix::unistd::chown(&dest, Some(u.uid), Some(u.gid)).expect("chown");
            }
        }
        let conf = pg.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).expect("write postgresql.conf");
        // The `local` lines stay; TCP only over TLS, and pw_user only with its password.
        // (`TempCluster::psql` goes over TCP as postgres and keeps working: libpq's default
        // sslmode is `prefer`.)
        pg.psql(
            "postgres",
            &format!(
                "SET password_encryption = 'scram-sha-256'; CREATE ROLE {ROLE} LOGIN PASSWORD :'pw'"
            ),
            &[("pw", PASSWORD)],
        )
        .expect("create the password role");
        let hba = pg.data.join("pg_hba.conf");
        let mut text: String = std::fs::read_to_string(&hba)
            .expect("read pg_hba.conf")
            .lines()
            .filter(|l| !l.trim_start().starts_with("host"))
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str(&format!(
            "hostssl all {ROLE} 127.0.0.1/32 scram-sha-256\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n"
        ));
        std::fs::write(&hba, text).expect("write pg_hba.conf");
        assert_eq!(q(&pg, "SELECT pg_reload_conf()"), "t");

        // The reload is asynchronous: wait until the server behaves as configured.
        let server = TlsServer { pg, certs };
        let start = Instant::now();
        loop {
            let tls = server.psql_with_sslmode("require", TLS_QUERY);
            let plain = server.psql_with_sslmode("disable", "SELECT 1");
            let no_pw = server.login_as_role(None);
            let with_pw = server.login_as_role(Some(PASSWORD));
            if tls.as_deref() == Ok("t")
                && plain.as_ref().is_err_and(|e| e.contains("no encryption"))
                && no_pw.is_err()
                && with_pw.as_deref() == Ok("t")
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "the server did not switch to TLS-only with a password for {ROLE}: require -> {tls:?}, disable -> {plain:?}, {ROLE} without password -> {no_pw:?}, with it -> {with_pw:?}\nserver log:\n{}",
                std::fs::read_to_string(server.pg.data.parent().unwrap().join("server.log"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// Connects as the password role over TLS (with `password`, or none at all) and asks
    /// whether the session is encrypted; Ok(output) or Err(stderr).
    fn login_as_role(&self, password: Option<&str>) -> Result<String, String> {
        let mut cmd = StdCommand::new(self.pg.tool("psql"));
        cmd.arg(format!(
            "host=127.0.0.1 port={} user={ROLE} dbname=app sslmode=require",
            self.pg.port
        ))
        .args(["-X", "-w", "-At", "-c", TLS_QUERY])
        .env_remove("PGPASSWORD")
        .env("PGPASSFILE", "/dev/null");
        if let Some(pw) = password {
            cmd.env("PGPASSWORD", pw);
        }
        let out = cmd.output().expect("psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs `sql` with psql (libpq) over TCP with `sslmode`; Ok(output) or Err(stderr).
    fn psql_with_sslmode(&self, sslmode: &str, sql: &str) -> Result<String, String> {
        let out = StdCommand::new(self.pg.tool("psql"))
            .arg(format!(
                "host=127.0.0.1 port={} user=postgres dbname=app sslmode={sslmode}",
                self.pg.port
            ))
            .args(["-X", "-At", "-c", sql])
            .output()
            .expect("psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// `[targets.NAME]` with the test password and `sslmode` (and `ca_file` when given).
fn target(name: &str, url: &str, sslmode: &str, ca_file: Option<&Path>) -> String {
    let ca = ca_file
        .map(|p| format!("ca_file = \"{}\"\n", p.display()))
        .unwrap_or_default();
    format!(
        "[targets.{name}]\nurl = \"{url}\"\npassword = \"{PASSWORD}\"\nsslmode = \"{sslmode}\"\n{ca}connect_timeout = \"5s\"\n\n"
    )
}

/// `[jobs.NAME]` with one `sql` item "tls" on `target` that passes only on an encrypted session.
fn tls_job(name: &str, target: &str) -> String {
    format!(
        "[jobs.{name}]\n[[jobs.{name}.items]]\nname = \"tls\"\nkind = \"sql\"\ntarget = \"{target}\"\nquery = \"{TLS_QUERY}\"\nexpect = true\n\n"
    )
}

/// Runs `job` and returns its "tls" item, asserting the password shows up nowhere.
fn run_tls_job(s: &Setup, job: &str) -> (i32, Value, String) {
    let (code, report, all) = s.run_job(job, &[]);
    assert!(
        !all.contains(PASSWORD),
        "the target's password appears in the output of {job}: {all}"
    );
    let it = item(&report, "tls").clone();
    (code, it, all)
}

/// Asserts `it` failed to connect with a summary naming target `name` and where it points.
fn assert_connect_failure(it: &Value, name: &str, display: &str) -> String {
    assert_eq!(it["status"], "fail", "{it:#}");
    let summary = it["summary"].as_str().unwrap_or_default().to_string();
    assert!(
        summary.contains(&format!("cannot connect to target {name} ({display})")),
        "the failure names the target and where it points: {summary}"
    );
    summary
}

#[test]
fn verify_full_require_and_prefer_connect_over_tls() {
    let srv = TlsServer::start("localhost", "DNS:localhost,IP:127.0.0.1");
    let mut body = String::new();
    body += &target(
        "verified",
        &srv.url("127.0.0.1"),
        "verify-full",
        Some(&srv.ca()),
    );
    body += &target(
        "verified_by_name",
        &srv.url("localhost"),
        "verify-full",
        Some(&srv.ca()),
    );
    body += &target("required", &srv.url("127.0.0.1"), "require", None);
    body += &target("preferred", &srv.url("127.0.0.1"), "prefer", None);
    for t in ["verified", "verified_by_name", "required", "preferred"] {
        body += &tls_job(t, t);
    }
    let s = Setup::new(&body);
    for t in ["verified", "verified_by_name", "required", "preferred"] {
        let (code, it, all) = run_tls_job(&s, t);
        assert_eq!(code, 0, "sslmode of target {t}: {all}");
        // `expect = true` on pg_stat_ssl.ssl: the server saw an encrypted session.
        assert_eq!(it["status"], "pass", "target {t} is not on TLS: {it:#}");
    }
}

#[test]
fn verify_full_refuses_a_server_certificate_from_another_ca() {
    let srv = TlsServer::start("localhost", "DNS:localhost,IP:127.0.0.1");
    let mut body = String::new();
    body += &target(
        "wrongca",
        &srv.url("127.0.0.1"),
        "verify-full",
        Some(&srv.other_ca()),
    );
    // No ca_file: the webpki roots, which do not know our private CA either.
    body += &target("noca", &srv.url("127.0.0.1"), "verify-full", None);
    body += &tls_job("wrongca", "wrongca");
    body += &tls_job("noca", "noca");
    let s = Setup::new(&body);
    let display = format!("{ROLE}@127.0.0.1:{}/app", srv.pg.port);
    for t in ["wrongca", "noca"] {
        let (code, it, all) = run_tls_job(&s, t);
        assert_eq!(code, 1, "{all}");
        let summary = assert_connect_failure(&it, t, &display);
        assert!(
            summary.contains("invalid peer certificate") && summary.contains("UnknownIssuer"),
            "the failure says the certificate's issuer is not trusted: {summary}"
        );
    }
}

#[test]
fn verify_full_refuses_a_certificate_for_another_host_name_and_require_does_not_check_it() {
    // Signed by the trusted CA, but only for db.example.internal; the URL says 127.0.0.1.
    let srv = TlsServer::start("db.example.internal", "DNS:db.example.internal");
    let mut body = String::new();
    body += &target(
        "mismatch",
        &srv.url("127.0.0.1"),
        "verify-full",
        Some(&srv.ca()),
    );
    body += &target("unverified", &srv.url("127.0.0.1"), "require", None);
    body += &tls_job("mismatch", "mismatch");
    body += &tls_job("unverified", "unverified");
    let s = Setup::new(&body);

    let (code, it, all) = run_tls_job(&s, "mismatch");
    assert_eq!(code, 1, "{all}");
    let display = format!("{ROLE}@127.0.0.1:{}/app", srv.pg.port);
    let summary = assert_connect_failure(&it, "mismatch", &display);
    assert!(
        summary.contains("invalid peer certificate")
            && summary.contains("not valid for name \"127.0.0.1\""),
        "the failure says the certificate is for another name: {summary}"
    );

    // `require` encrypts without verifying (libpq's meaning): the same server is fine.
    let (code, it, all) = run_tls_job(&s, "unverified");
    assert_eq!(code, 0, "{all}");
    assert_eq!(it["status"], "pass", "{it:#}");
}

#[test]
fn disable_against_a_tls_only_server_fails_naming_the_target() {
    let srv = TlsServer::start("localhost", "DNS:localhost,IP:127.0.0.1");
    let body = target("plain", &srv.url("127.0.0.1"), "disable", None) + &tls_job("plain", "plain");
    let s = Setup::new(&body);
    let (code, it, all) = run_tls_job(&s, "plain");
    assert_eq!(code, 1, "{all}");
    let display = format!("{ROLE}@127.0.0.1:{}/app", srv.pg.port);
    let summary = assert_connect_failure(&it, "plain", &display);
    assert!(
        summary.contains("pg_hba.conf rejects connection") && summary.contains("no encryption"),
        "the failure gives the server's reason: {summary}"
    );
}

#[test]
fn prefer_falls_back_to_plaintext_on_a_server_without_tls() {
    // The plain TempCluster: ssl = off; pw_user must give its password over plaintext TCP.
    let pg = cluster_with_app_db();
    require_password(&pg, ROLE, PASSWORD);
    let url = format!("postgres://{ROLE}@127.0.0.1:{}/app", pg.port);
    let body = target("preferred", &url, "prefer", None)
        + &target("required", &url, "require", None)
        + "[jobs.preferred]\n[[jobs.preferred.items]]\nname = \"tls\"\nkind = \"sql\"\ntarget = \"preferred\"\n"
        + &format!("query = \"{TLS_QUERY}\"\nexpect = false\n\n")
        + &tls_job("required", "required");
    let s = Setup::new(&body);
    let (code, it, all) = run_tls_job(&s, "preferred");
    assert_eq!(code, 0, "{all}");
    assert_eq!(it["status"], "pass", "prefer connects without TLS: {it:#}");
    // `require` does not fall back.
    let (code, it, all) = run_tls_job(&s, "required");
    assert_eq!(code, 1, "{all}");
    let summary = assert_connect_failure(
        &it,
        "required",
        &format!("{ROLE}@127.0.0.1:{}/app", pg.port),
    );
    assert!(summary.contains("server does not support TLS"), "{summary}");
}

// ---------------------------------------------------------------------------------------------
// reindex min_bloat
// ---------------------------------------------------------------------------------------------

/// Table `t` with a bloated primary key `t_pkey` (50k rows inserted, 90% deleted across the
/// whole key range, vacuumed: every leaf page keeps about a tenth of its entries) and a compact
/// index `t_k` built after the delete.
const BLOATED: &str = "CREATE TABLE t (id int PRIMARY KEY, k int NOT NULL, v text); \
    INSERT INTO t SELECT g, g, md5(g::text) FROM generate_series(1, 50000) g; \
    DELETE FROM t WHERE id % 10 <> 0; \
    VACUUM t; \
    CREATE INDEX t_k ON t (k);";

/// Bloat as docs/database.md defines it: 1 - leaf density / fill factor (default 90).
fn bloat(pg: &TempCluster, index: &str) -> f64 {
    q(
        pg,
        &format!("SELECT 100 - 100 * avg_leaf_density / 90 FROM pgstatindex('{index}')"),
    )
    .parse()
    .expect("a number")
}

fn relfilenode(pg: &TempCluster, index: &str) -> String {
    q(
        pg,
        &format!("SELECT relfilenode FROM pg_class WHERE relname = '{index}'"),
    )
}

const REINDEX_JOB: &str = r#"
[targets.db]
url = "URL"
sslmode = "disable"

[jobs.m]
[[jobs.m.items]]
name = "reindex"
kind = "reindex"
target = "db"
min_bloat = "30%"
"#;

const NO_PGSTATTUPLE_NOTE: &str = "min_bloat needs the pgstattuple extension (CREATE EXTENSION pgstattuple): every index is rebuilt";

#[test]
fn reindex_min_bloat_rebuilds_only_the_bloated_index() {
    let pg = cluster_with_app_db();
    q(&pg, "CREATE EXTENSION pgstattuple;");
    q(&pg, BLOATED);
    // The data really is on both sides of the threshold.
    let (bloated, compact) = (bloat(&pg, "t_pkey"), bloat(&pg, "t_k"));
    assert!(bloated > 60.0, "t_pkey should be bloated: {bloated}%");
    assert!(compact < 15.0, "t_k should be compact: {compact}%");
    let (pkey_before, k_before) = (relfilenode(&pg, "t_pkey"), relfilenode(&pg, "t_k"));

    let s = Setup::new(&REINDEX_JOB.replace("URL", &pg.url("app")));
    let (code, report, all) = s.run_job("m", &[]);
    assert_eq!(code, 0, "{all}");
    let r = item(&report, "reindex");
    assert_eq!(r["status"], "pass", "{r:#}");
    assert_eq!(r["data"]["indexes_total"], 1, "{r:#}");
    assert_eq!(r["data"]["indexes_done"], 1, "{r:#}");
    let indexes = r["data"]["indexes"].as_array().expect("data.indexes");
    assert_eq!(indexes.len(), 1, "{r:#}");
    assert_eq!(indexes[0]["index"], "public.t_pkey", "{r:#}");
    assert_eq!(indexes[0]["ok"], true, "{r:#}");
    assert!(
        r["summary"]
            .as_str()
            .unwrap_or_default()
            .starts_with("1 of 1 index(es) rebuilt on db"),
        "{r:#}"
    );
    assert!(
        !r["details"].to_string().contains("pgstattuple"),
        "no missing-extension note with the extension: {r:#}"
    );

    assert_ne!(
        relfilenode(&pg, "t_pkey"),
        pkey_before,
        "t_pkey was rebuilt"
    );
    assert_eq!(relfilenode(&pg, "t_k"), k_before, "t_k was left alone");
    let after = bloat(&pg, "t_pkey");
    assert!(after < 15.0, "the rebuild removed the bloat: {after}%");
    assert_eq!(
        q(&pg, "SELECT count(*) FROM pg_index WHERE NOT indisvalid"),
        "0"
    );
}

#[test]
fn reindex_min_bloat_without_pgstattuple_rebuilds_every_index_and_says_why() {
    let pg = cluster_with_app_db();
    q(&pg, "CREATE EXTENSION pgstattuple;");
    q(&pg, BLOATED);
    assert!(bloat(&pg, "t_k") < 15.0, "t_k is compact");
    q(&pg, "DROP EXTENSION pgstattuple;");
    let (pkey_before, k_before) = (relfilenode(&pg, "t_pkey"), relfilenode(&pg, "t_k"));

    let s = Setup::new(&REINDEX_JOB.replace("URL", &pg.url("app")));
    let (code, report, all) = s.run_job("m", &[]);
    assert_eq!(code, 0, "{all}");
    let r = item(&report, "reindex");
    assert_eq!(r["status"], "pass", "{r:#}");
    let details: Vec<&str> = r["details"]
        .as_array()
        .expect("details")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(details.contains(&NO_PGSTATTUPLE_NOTE), "{r:#}");
    assert_eq!(r["data"]["indexes_total"], 2, "{r:#}");
    assert_eq!(r["data"]["indexes_done"], 2, "{r:#}");
    assert_ne!(
        relfilenode(&pg, "t_pkey"),
        pkey_before,
        "t_pkey was rebuilt"
    );
    assert_ne!(relfilenode(&pg, "t_k"), k_before, "t_k was rebuilt too");
}
