//! Email delivery end to end: the `runbook` binary against a real SMTP server in this process
//! (mailin-embedded), with STARTTLS and AUTH against a certificate made by `openssl` for the
//! test, and the outbox (server down → queued → server up → `outbox --flush` → exactly one
//! message). Received messages are parsed by Python's `email` package, an independent MIME
//! parser, so "the message arrives with both parts" is checked by someone else's reading.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use support::smtp::{Smtp, parse_mime};
use support::tls::{make_ca, make_server_cert};
use support::{Setup, free_port};

/// A folder with jobs.toml: job `daily` (one failing command, one passing, one manual) and job
/// `quiet` (all pass), both notifying `mail`.
fn setup(email_section: &str) -> (Setup, PathBuf) {
    let s = Setup::builder()
        .hostname("ops-test")
        .body(&format!(
            r#"[notify.mail]
type = "email"
{email_section}

[jobs.daily]
description = "Morning checklist"

[[jobs.daily.items]]
name = "Replication lag"
kind = "command"
argv = ["false"]
read_only = true

[[jobs.daily.items]]
name = "Disk space"
kind = "command"
argv = ["true"]
read_only = true

[[jobs.daily.items]]
name = "Review Grafana"
kind = "manual"

[jobs.quiet]

[[jobs.quiet.items]]
name = "Always fine"
kind = "command"
argv = ["true"]
read_only = true
"#
        ))
        .build();
    let config = s.config();
    (s, config)
}

fn runbook(config: &Path) -> Command {
    let mut c = support::runbook(config);
    c.env("NO_COLOR", "1");
    c
}

#[test]
fn report_arrives_multipart_with_contract_subject_and_all_recipients() {
    let smtp = Smtp::start(None, None);
    let (_dir, config) = setup(&format!(
        "smtp_url = \"smtp://127.0.0.1:{}?tls=none\"\nfrom = \"TradeMaster runbook <runbook@trademaster.example>\"\nto = [\"oncall@trademaster.example\", \"dba@trademaster.example\"]",
        smtp.port
    ));
    let out = runbook(&config)
        .args(["run-job", "daily"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed item exits 1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("notify mail: sent"), "{stdout}");
    smtp.wait_for(1);
    let msgs = smtp.messages();
    assert_eq!(msgs.len(), 1);
    let mut to = msgs[0].to.clone();
    to.sort();
    assert_eq!(
        to,
        vec!["dba@trademaster.example", "oncall@trademaster.example"],
        "envelope recipients"
    );
    assert_eq!(msgs[0].from, "runbook@trademaster.example");
    let m = parse_mime(&msgs[0].data);
    assert_eq!(
        m["subject"],
        "[runbook] daily FAIL — 1 passed, 0 warnings, 1 failed"
    );
    assert_eq!(m["type"], "multipart/alternative");
    assert!(
        m["to"]
            .as_str()
            .unwrap()
            .contains("oncall@trademaster.example")
            && m["to"]
                .as_str()
                .unwrap()
                .contains("dba@trademaster.example")
    );
    assert!(
        m["message_id"]
            .as_str()
            .unwrap()
            .starts_with("<runbook.daily."),
        "{}",
        m["message_id"]
    );
    assert!(
        m["message_id"]
            .as_str()
            .unwrap()
            .ends_with("@trademaster.example>")
    );
    assert!(!m["date"].as_str().unwrap().is_empty() && m["date"] != "None");
    let parts = m["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[0]["type"], "text/plain");
    assert_eq!(parts[1]["type"], "text/html");
    let text = parts[0]["body"].as_str().unwrap();
    assert!(
        text.starts_with("daily FAIL — 1 passed, 0 warnings, 1 failed, 1 to do"),
        "{text}"
    );
    assert!(text.contains("FAIL  Replication lag"));
    assert!(text.contains(" IST"), "times in the job's zone: {text}");
    let html = parts[1]["body"].as_str().unwrap();
    let fail = html.find("Replication lag").unwrap();
    let pass = html.find("Disk space").unwrap();
    assert!(fail < pass, "worst items first in the HTML");
    assert!(
        !html.contains("<script") && !html.contains("<img"),
        "no scripts, no remote images"
    );
}

/// A CA and a server certificate for `localhost` / 127.0.0.1: (ca.pem, server.crt, server.key).
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca = make_ca(dir, "ca");
    let (cert, key) = make_server_cert(dir, "ca", "localhost", "DNS:localhost,IP:127.0.0.1");
    (ca, cert, key)
}

#[test]
fn starttls_and_auth_with_a_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(certs.path());
    let smtp = Smtp::start(Some((&cert, &key)), Some(("runbook", "s3cret-smtp-pw")));
    let section = |password_file: &str, ca_line: &str| {
        format!(
            "smtp_url = \"smtp://localhost:{}?tls=required\"\nusername = \"runbook\"\npassword = {{ file = \"{password_file}\" }}\n{ca_line}\nfrom = \"runbook@trademaster.example\"\nto = [\"oncall@trademaster.example\"]",
            smtp.port
        )
    };
    let (dir, config) = setup(&section(
        "smtp-password",
        &format!("ca_file = \"{}\"", ca.display()),
    ));
    std::fs::write(dir.path().join("smtp-password"), "s3cret-smtp-pw\n").unwrap();

    let out = runbook(&config)
        .args(["notify-test", "mail"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("mail (email): delivered"), "{stdout}");
    smtp.wait_for(1);
    let msgs = smtp.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        msgs[0].user.as_deref(),
        Some("runbook"),
        "the message was sent after AUTH"
    );
    assert_eq!(
        parse_mime(&msgs[0].data)["subject"],
        "[runbook] notify-test PASS — 1 passed, 0 warnings, 0 failed"
    );

    // `check-config --connect` logs in without sending.
    let out = runbook(&config)
        .args(["check-config", "--connect"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("notifier mail: SMTP server localhost:") && stdout.contains("logged in"),
        "{stdout}"
    );
    assert_eq!(smtp.count(), 1, "check-config sends nothing");

    // A wrong password: notify-test says it is authentication, and never prints the password.
    std::fs::write(dir.path().join("smtp-password"), "wrong-password-xyz\n").unwrap();
    let out = runbook(&config)
        .args(["notify-test", "mail"])
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("mail (email): FAILED: authentication failed at localhost:"),
        "{all}"
    );
    assert!(!all.contains("wrong-password-xyz"), "{all}");

    // Without the CA the server's certificate is not trusted: notify-test says TLS.
    let (dir2, config2) = setup(&section("smtp-password", ""));
    std::fs::write(dir2.path().join("smtp-password"), "s3cret-smtp-pw\n").unwrap();
    let out = runbook(&config2)
        .args(["notify-test", "mail"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("mail (email): FAILED: TLS with localhost:"),
        "{stdout}"
    );
    assert_eq!(smtp.count(), 1, "nothing more was delivered");
}

#[test]
fn server_down_queues_then_flush_delivers_exactly_once() {
    let port = free_port();
    let (_dir, config) = setup(&format!(
        "smtp_url = \"smtp://127.0.0.1:{port}?tls=none\"\nfrom = \"runbook@trademaster.example\"\nto = [\"oncall@trademaster.example\"]"
    ));

    // The delivery fails: the run's exit code is what its items say (0), the report is queued.
    let out = runbook(&config)
        .args(["run-job", "quiet"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "an undeliverable report does not change the exit code: {stdout}"
    );
    assert!(
        stdout.contains("notify mail: queued (connection refused by 127.0.0.1:"),
        "{stdout}"
    );
    let out = runbook(&config)
        .args(["run-job", "daily", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["notifications"][0]["channel"], "mail");
    assert_eq!(report["notifications"][0]["status"], "queued");

    // `outbox` lists both, in JSON too.
    let out = runbook(&config)
        .args(["outbox", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = listing["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{listing}");
    assert!(
        entries
            .iter()
            .all(|e| e["state"] == "pending" && e["attempts"] == 1 && e["channel"] == "mail"),
        "{listing}"
    );
    assert!(
        entries[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("connection refused")
    );
    let out = runbook(&config).args(["outbox"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("pending") && text.contains("job quiet") && text.contains("job daily"),
        "{text}"
    );

    // Still down: --flush exits 1 and keeps them.
    let out = runbook(&config)
        .args(["outbox", "--flush"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Server up: two flushers at once (a daemon and an operator) deliver each report once.
    let smtp = Smtp::start_on(TcpListener::bind(("127.0.0.1", port)).unwrap(), None, None);
    let flusher = || {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("runbook"))
            .arg("--config")
            .arg(&config)
            .args(["outbox", "--flush"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut one, mut two) = (flusher(), flusher());
    let (a, b) = (one.wait().unwrap(), two.wait().unwrap());
    assert!(
        a.success() && b.success(),
        "both flushers report that nothing is left undelivered"
    );
    smtp.wait_for(2);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(smtp.count(), 2, "each queued report arrived exactly once");
    let subjects: Vec<String> = smtp
        .messages()
        .iter()
        .map(|m| parse_mime(&m.data)["subject"].as_str().unwrap().to_string())
        .collect();
    assert!(
        subjects.contains(&"[runbook] quiet PASS — 1 passed, 0 warnings, 0 failed".to_string()),
        "{subjects:?}"
    );
    assert!(
        subjects.contains(&"[runbook] daily FAIL — 1 passed, 0 warnings, 1 failed".to_string()),
        "{subjects:?}"
    );

    // Nothing left; flushing again sends nothing and exits 0.
    let out = runbook(&config)
        .args(["outbox", "--flush"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("outbox is empty"), "{text}");
    assert_eq!(smtp.count(), 2);

    // The stored report now says the notification was sent.
    let out = runbook(&config)
        .args(["report", "last", "--job", "daily", "--format", "json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["notifications"][0]["status"], "sent",
        "{}",
        report["notifications"]
    );
}
