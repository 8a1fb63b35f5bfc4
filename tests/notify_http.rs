//! Slack and heartbeat delivery end to end: the `runbook` binary posting to an HTTP mock of the
//! third-party APIs (wiremock). The Block Kit JSON Slack receives is kept as an insta snapshot.

mod support;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use support::Setup;
use support::http::blocking;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The secret part of the webhook URL: it must never be printed.
const TOKEN: &str = "B0SECRETTOKENxyz123";

fn setup(notify: &str) -> (Setup, PathBuf) {
    let s = Setup::builder()
        .hostname("ops-test")
        .body(&format!(
            r#"{notify}

[jobs.daily]
description = "Morning checklist"

[[jobs.daily.items]]
name = "Replication lag"
kind = "command"
argv = ["sh", "-c", "echo 'lag 42s on standby-1 <replica>' >&2; exit 3"]
read_only = true

[[jobs.daily.items]]
name = "Disk space"
kind = "command"
argv = ["true"]
read_only = true

[[jobs.daily.items]]
name = "Review Grafana"
kind = "manual"
link = "https://grafana.example/d/trading"

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

/// The CLI with the webhook (or ping) URL in its environment and debug logging on, so a leak
/// through a library's log line would show too.
fn runbook(config: &Path, webhook: &str, args: &[&str]) -> Command {
    let mut c = support::runbook(config);
    c.args(args)
        .env("TEST_WEBHOOK_URL", webhook)
        .env("RUNBOOK_LOG", "debug");
    c
}

const SLACK: &str =
    "[notify.slack]\ntype = \"slack\"\nwebhook_url = { env = \"TEST_WEBHOOK_URL\" }";

/// Runs the CLI on a blocking thread (the mock server answers on the test's runtime).
async fn run(mut cmd: Command) -> std::process::Output {
    blocking(move || cmd.output().unwrap()).await
}

/// Replaces what changes from run to run (ids, times, durations) so the snapshot is stable.
fn normalize(body: &str, run_id: &str) -> serde_json::Value {
    let s = body.replace(run_id, "RUN_ID");
    let s = regex::Regex::new(r"\d{4}-\d\d-\d\d \d\d:\d\d IST")
        .unwrap()
        .replace_all(&s, "DATE TIME IST");
    let s = regex::Regex::new(r"(took|in) \d+(\.\d+)?(ms|s)\b")
        .unwrap()
        .replace_all(&s, "$1 DURATION");
    serde_json::from_str(&s).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn slack_gets_block_kit_snapshot() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/services/T000/{TOKEN}")))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .expect(1)
        .mount(&server)
        .await;
    let (_dir, config) = setup(SLACK);
    let webhook = format!("{}/services/T000/{TOKEN}", server.uri());
    let out = run(runbook(
        &config,
        &webhook,
        &["run-job", "daily", "--format", "json"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["notifications"],
        serde_json::json!([{"channel": "slack", "status": "sent", "error": null}])
    );
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].headers.get("content-type").unwrap(),
        "application/json"
    );
    let body = String::from_utf8(requests[0].body.clone()).unwrap();
    insta::assert_json_snapshot!(
        "slack_daily_fail",
        normalize(&body, report["run_id"].as_str().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slack_429_waits_for_retry_after_then_posts() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "1")
                .set_body_string("rate_limited"),
        )
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .expect(1)
        .mount(&server)
        .await;
    let (_dir, config) = setup(SLACK);
    let out = run(runbook(
        &config,
        &format!("{}/services/T000/{TOKEN}", server.uri()),
        &["run-job", "quiet"],
    ))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("notify slack: sent"), "{stdout}");
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        2,
        "one 429, then one successful post"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_url_never_appears_in_output_or_errors() {
    // Slack rejects the post (410 no_service): queued, and the reason is shown without the URL.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(404).set_body_string("no_service"))
        .mount(&server)
        .await;
    let (_dir, config) = setup(SLACK);
    let webhook = format!("{}/services/T000/{TOKEN}", server.uri());
    let mut seen = String::new();
    let out = run(runbook(&config, &webhook, &["run-job", "daily"])).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "the exit code is the items' (one failed)"
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        stdout.contains("notify slack: queued (HTTP 404 Not Found: rejected by http://127.0.0.1:"),
        "{stdout}"
    );
    assert!(stdout.contains("no_service"), "{stdout}");
    seen += &stdout;
    seen += &String::from_utf8_lossy(&out.stderr);
    for args in [
        &["outbox"][..],
        &["outbox", "--format", "json"],
        &["outbox", "--flush"],
        &["report", "last", "--format", "json"],
        &["notify-test"],
    ] {
        let out = run(runbook(&config, &webhook, args)).await;
        seen += &String::from_utf8_lossy(&out.stdout);
        seen += &String::from_utf8_lossy(&out.stderr);
    }
    assert!(seen.contains("slack (slack): FAILED: HTTP 404"), "{seen}");

    // Connection refused and DNS failures name the host, not the URL.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = run(runbook(
        &config,
        &format!("http://127.0.0.1:{closed}/services/T000/{TOKEN}"),
        &["notify-test", "slack"],
    ))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.contains(&format!(
            "slack (slack): FAILED: connection refused by http://127.0.0.1:{closed}"
        )),
        "{stdout}"
    );
    seen += &stdout;
    let out = run(runbook(
        &config,
        &format!("https://hooks.runbook-test.invalid/services/T000/{TOKEN}"),
        &["notify-test", "slack"],
    ))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains("slack (slack): FAILED: DNS: cannot resolve the host of https://hooks.runbook-test.invalid:443"), "{stdout}");
    seen += &stdout;
    seen += &String::from_utf8_lossy(&out.stderr);

    // The runs logged at debug level (RUNBOOK_LOG), libraries' lines included.
    assert!(seen.contains("DEBUG"), "no debug log lines:\n{seen}");
    assert!(!seen.contains(TOKEN), "the webhook URL leaked:\n{seen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeat_pings_start_then_success_or_fail() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("OK"))
        .mount(&server)
        .await;
    let (_dir, config) =
        setup("[notify.hc]\ntype = \"heartbeat\"\nurl = { env = \"TEST_WEBHOOK_URL\" }");
    let base = format!("{}/ping/{TOKEN}", server.uri());
    let out = run(runbook(&config, &base, &["run-job", "daily"])).await;
    assert_eq!(out.status.code(), Some(1));
    let out = run(runbook(&config, &base, &["run-job", "quiet"])).await;
    assert_eq!(out.status.code(), Some(0));
    // A dry run is not a run the monitor should count; --no-notify sends nothing at all.
    let out = run(runbook(&config, &base, &["run-job", "quiet", "--dry-run"])).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = run(runbook(
        &config,
        &base,
        &["run-job", "quiet", "--no-notify"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let paths: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.url.path().replace(TOKEN, "T"))
        .collect();
    assert_eq!(
        paths,
        vec!["/ping/T/start", "/ping/T/fail", "/ping/T/start", "/ping/T"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn on_fail_skips_passing_runs() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let (_dir, config) = setup(&format!("{SLACK}\non = \"fail\""));
    let webhook = format!("{}/services/T000/{TOKEN}", server.uri());
    let out = run(runbook(
        &config,
        &webhook,
        &["run-job", "quiet", "--format", "json"],
    ))
    .await;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["notifications"][0]["status"], "skipped");
    assert!(server.received_requests().await.unwrap().is_empty());
    let out = run(runbook(
        &config,
        &webhook,
        &["run-job", "daily", "--format", "json"],
    ))
    .await;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["notifications"][0]["status"], "sent");
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}
