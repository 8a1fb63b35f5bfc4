//! `webhook` and `pagerduty` delivery end to end: the `runbook` binary posting to an HTTP mock
//! of the receiving APIs (wiremock), which checks what arrives.
//!
//! The PagerDuty shapes are those of PagerDuty's Events API v2 reference, "Send an Event"
//! (https://v2.developer.pagerduty.com/docs/send-an-event-events-api-v2; the same in PagerDuty's
//! OpenAPI file, github.com/PagerDuty/api-schema, reference/events-v2/openapiv3.json): a POST
//! of `{"routing_key", "event_action": "trigger"|"resolve", "dedup_key", "payload": {"summary",
//! "severity", "source", ...}}`; the answers the mock gives are the reference's recorded
//! examples: `202 {"status": "success", "message": "Event processed", "dedup_key": ...}` and
//! `400 {"status": "invalid event", "message": "Event object is invalid", "errors": ["Length of
//! 'routing_key' is incorrect (should be 32 characters)"]}`.

mod support;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use support::Setup;
use support::http::blocking;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The PagerDuty routing key (32 characters, as PagerDuty's are): never to be printed.
const PD_KEY: &str = "R0UT1NGK3YS3CR3TR0UT1NGK3YS3CR3T";
/// The webhook's signing key and the token in its URL: never to be printed.
const HOOK_KEY: &str = "S1GN1NG-K3Y-not-for-logs";
const HOOK_TOKEN: &str = "H00KT0KEN5ecret";

/// The recorded answers of the Events API v2 reference.
fn pd_accepted() -> ResponseTemplate {
    ResponseTemplate::new(202).set_body_json(
        json!({"status": "success", "message": "Event processed", "dedup_key": "samplekeyhere"}),
    )
}
fn pd_invalid() -> ResponseTemplate {
    ResponseTemplate::new(400).set_body_json(json!({
        "status": "invalid event",
        "message": "Event object is invalid",
        "errors": ["Length of 'routing_key' is incorrect (should be 32 characters)"]
    }))
}

/// A config with `notify` and job `daily`: "Replication lag" fails while the file `broken`
/// exists in the setup's folder, "Disk space" always fails, "Vacuum" always passes.
fn setup(notify: &str) -> (Setup, PathBuf) {
    let s = Setup::builder().hostname("ops-test").build();
    let flag = s.path().join("broken");
    std::fs::write(&flag, "x").unwrap();
    s.write_body(&format!(
        r#"{notify}

[jobs.daily]
description = "Morning checklist"

[[jobs.daily.items]]
name = "Replication lag"
kind = "command"
argv = ["sh", "-c", "if [ -e '{flag}' ]; then echo 'lag 42s on standby-1' >&2; exit 3; fi"]
read_only = true

[[jobs.daily.items]]
name = "Disk space"
kind = "command"
argv = ["sh", "-c", "echo '/var/lib/postgresql 97% full' >&2; exit 2"]
read_only = true

[[jobs.daily.items]]
name = "Vacuum"
kind = "command"
argv = ["true"]
read_only = true
"#,
        flag = flag.display()
    ));
    let config = s.config();
    (s, config)
}

/// The CLI with the secrets in its environment and debug logging on, so a leak through a
/// library's log line would show too.
fn runbook(config: &Path, url: &str, args: &[&str]) -> Command {
    let mut c = support::runbook(config);
    c.args(args)
        .env("TEST_HOOK_URL", url)
        .env("TEST_HOOK_KEY", HOOK_KEY)
        .env("TEST_PD_KEY", PD_KEY)
        .env("RUNBOOK_LOG", "debug");
    c
}

/// Runs the CLI on a blocking thread (the mock server answers on the test's runtime); returns
/// (exit code, stdout, stdout + stderr).
async fn run(cmd: Command) -> (i32, String, String) {
    let mut cmd = cmd;
    let out = blocking(move || cmd.output().unwrap()).await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), stdout, all)
}

fn pagerduty(server: &MockServer) -> String {
    format!(
        "[notify.pd]\ntype = \"pagerduty\"\nrouting_key = {{ env = \"TEST_PD_KEY\" }}\nurl = \"{}/v2/enqueue\"",
        server.uri()
    )
}

/// The JSON bodies the mock received, in order.
async fn bodies(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

fn hmac_hex(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_posts_the_report_json_with_a_signature_that_verifies() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/hooks/{HOOK_TOKEN}")))
        .respond_with(ResponseTemplate::new(204))
        .expect(2)
        .mount(&server)
        .await;
    let (_s, config) = setup(
        "[notify.hook]\ntype = \"webhook\"\nurl = { env = \"TEST_HOOK_URL\" }\nsecret = { env = \"TEST_HOOK_KEY\" }",
    );
    let url = format!("{}/hooks/{HOOK_TOKEN}", server.uri());
    let (code, stdout, all) = run(runbook(
        &config,
        &url,
        &["run-job", "daily", "--format", "json"],
    ))
    .await;
    assert_eq!(code, 1, "{all}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["notifications"],
        json!([{"channel": "hook", "status": "sent", "error": null}])
    );
    let requests = server.received_requests().await.unwrap();
    let r = &requests[0];
    assert_eq!(r.headers.get("content-type").unwrap(), "application/json");
    // The signature is over the exact bytes received.
    let signature = r
        .headers
        .get("x-runbook-signature")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(signature, format!("sha256={}", hmac_hex(HOOK_KEY, &r.body)));
    assert_ne!(
        signature,
        format!("sha256={}", hmac_hex("another key", &r.body))
    );
    // The body is the report JSON (SPEC 4), with notifications as they stood.
    let sent: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(sent["run_id"], report["run_id"]);
    assert_eq!(sent["job"], "daily");
    assert_eq!(sent["status"], "fail");
    assert_eq!(sent["host"], "ops-test");
    assert_eq!(sent["counts"]["fail"], 2);
    assert_eq!(sent["items"].as_array().unwrap().len(), 3);
    assert!(sent["notifications"].is_array(), "{sent}");
    assert!(
        !all.contains(HOOK_KEY) && !all.contains(HOOK_TOKEN),
        "{all}"
    );

    // notify-test posts the test report, signed the same way.
    let (code, stdout, _) = run(runbook(&config, &url, &["notify-test", "hook"])).await;
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("hook (webhook): delivered"), "{stdout}");
    let requests = server.received_requests().await.unwrap();
    let r = &requests[1];
    assert_eq!(
        r.headers
            .get("x-runbook-signature")
            .unwrap()
            .to_str()
            .unwrap(),
        format!("sha256={}", hmac_hex(HOOK_KEY, &r.body))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_without_secret_has_no_signature_and_a_refusal_is_queued_then_flushed() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_string("down for maintenance"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let (_s, config) =
        setup("[notify.hook]\ntype = \"webhook\"\nurl = { env = \"TEST_HOOK_URL\" }");
    let url = format!("{}/hooks/{HOOK_TOKEN}", server.uri());
    let (code, stdout, all) = run(runbook(&config, &url, &["run-job", "daily"])).await;
    assert_eq!(code, 1, "{all}");
    let origin = server.uri();
    assert!(
        stdout.contains(&format!(
            "notify hook: queued (HTTP 503 Service Unavailable: server error at {origin}"
        )),
        "{stdout}"
    );
    let (code, _, all2) = run(runbook(&config, &url, &["outbox", "--flush"])).await;
    assert_eq!(code, 0, "{all2}");
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    assert!(
        requests
            .iter()
            .all(|r| r.headers.get("x-runbook-signature").is_none())
    );
    let (_, stdout, _) = run(runbook(
        &config,
        &url,
        &["report", "last", "--format", "json"],
    ))
    .await;
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["notifications"][0]["status"], "sent", "{report}");
    assert!(!format!("{all}{all2}").contains(HOOK_TOKEN));
}

#[tokio::test(flavor = "multi_thread")]
async fn pagerduty_triggers_each_failing_item_then_resolves_what_recovered() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/enqueue"))
        .respond_with(pd_accepted())
        .mount(&server)
        .await;
    let (s, config) = setup(&pagerduty(&server));
    let (code, stdout, all) = run(runbook(
        &config,
        "",
        &["run-job", "daily", "--format", "json"],
    ))
    .await;
    assert_eq!(code, 1, "{all}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["notifications"],
        json!([{"channel": "pd", "status": "sent", "error": null}])
    );
    let mut events = bodies(&server).await;
    events.sort_by_key(|e| e["dedup_key"].as_str().unwrap().to_string());
    assert_eq!(events.len(), 2, "one trigger per failing item: {events:?}");
    let run_id = report["run_id"].as_str().unwrap();
    for (e, item, summary) in [
        (&events[0], "Disk space", "exit 2"),
        (&events[1], "Replication lag", "exit 3"),
    ] {
        assert_eq!(e["routing_key"], PD_KEY);
        assert_eq!(e["event_action"], "trigger");
        assert_eq!(e["dedup_key"], format!("runbook/daily/{item}"));
        let p = &e["payload"];
        assert!(
            p["summary"]
                .as_str()
                .unwrap()
                .starts_with(&format!("daily: {item} — {summary}")),
            "{p}"
        );
        assert_eq!(p["severity"], "critical");
        assert_eq!(p["source"], "ops-test");
        assert_eq!(p["custom_details"]["run_id"], run_id);
    }

    // The lag recovers: its alert is resolved; the disk still fails, its trigger is repeated
    // (PagerDuty folds it into the open alert by its dedup_key). Nothing for "Vacuum".
    std::fs::remove_file(s.path().join("broken")).unwrap();
    let (code, _, all) = run(runbook(&config, "", &["run-job", "daily"])).await;
    assert_eq!(code, 1, "{all}");
    let events = bodies(&server).await;
    let mut second: Vec<(String, String)> = events[2..]
        .iter()
        .map(|e| {
            (
                e["event_action"].as_str().unwrap().to_string(),
                e["dedup_key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    second.sort();
    assert_eq!(
        second,
        vec![
            (
                "resolve".to_string(),
                "runbook/daily/Replication lag".to_string()
            ),
            (
                "trigger".to_string(),
                "runbook/daily/Disk space".to_string()
            ),
        ]
    );
    let resolve = events[2..]
        .iter()
        .find(|e| e["event_action"] == "resolve")
        .unwrap();
    assert_eq!(
        resolve,
        &json!({"routing_key": PD_KEY, "event_action": "resolve", "dedup_key": "runbook/daily/Replication lag"})
    );

    // A third run resolves nothing more: the lag was not failing in the run before.
    let (_, _, _) = run(runbook(&config, "", &["run-job", "daily"])).await;
    let events = bodies(&server).await;
    assert_eq!(events.len(), 5, "{events:?}");
    assert_eq!(events[4]["dedup_key"], "runbook/daily/Disk space");
}

#[tokio::test(flavor = "multi_thread")]
async fn pagerduty_outage_queues_each_event_and_outbox_flush_delivers_them() {
    let server = MockServer::start().await;
    // One event meets a 500, the other PagerDuty's rate limit: both are retried later.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_string("internal error"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(pd_accepted())
        .mount(&server)
        .await;
    let (s, config) = setup(&pagerduty(&server));
    let mut seen = String::new();
    let (code, stdout, all) = run(runbook(&config, "", &["run-job", "daily"])).await;
    assert_eq!(code, 1, "{all}");
    seen += &all;
    assert!(
        stdout.contains("notify pd: queued (HTTP 500 Internal Server Error: server error at")
            || stdout.contains("notify pd: queued (HTTP 429 Too Many Requests: rate limited by"),
        "{stdout}"
    );
    // Each event is its own outbox entry, with its event key and the event (without the key).
    let (code, listing, all) = run(runbook(&config, "", &["outbox", "--format", "json"])).await;
    assert_eq!(code, 0, "{all}");
    seen += &all;
    let listing: Value = serde_json::from_str(&listing).unwrap();
    let text = listing.to_string();
    assert!(
        text.contains("HTTP 500 Internal Server Error")
            && text.contains("HTTP 429 Too Many Requests: rate limited by"),
        "{listing:#}"
    );
    assert!(
        text.contains("\"event\":\"trigger/Replication lag\"")
            && text.contains("\"event\":\"trigger/Disk space\""),
        "{listing:#}"
    );
    assert!(text.contains("runbook/daily/Disk space"), "{listing:#}");
    let (code, listing, all) = run(runbook(&config, "", &["outbox"])).await;
    assert_eq!(code, 0, "{all}");
    assert!(
        listing.contains("pd trigger/Disk space") && listing.contains("pd trigger/Replication lag"),
        "{listing}"
    );
    seen += &all;

    let (code, _, all) = run(runbook(&config, "", &["outbox", "--flush"])).await;
    assert_eq!(code, 0, "everything delivered: {all}");
    seen += &all;
    let events = bodies(&server).await;
    assert_eq!(events.len(), 4, "two failed attempts, two deliveries");
    assert!(events.iter().all(|e| e["routing_key"] == PD_KEY));
    let (_, stdout, all) = run(runbook(
        &config,
        "",
        &["report", "last", "--format", "json"],
    ))
    .await;
    seen += &all;
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["notifications"],
        json!([{"channel": "pd", "status": "sent", "error": null}])
    );
    let (_, _, all) = run(runbook(&config, "", &["report", "last"])).await;
    seen += &all;
    assert!(seen.contains("DEBUG"), "no debug log lines:\n{seen}");
    assert!(!seen.contains(PD_KEY), "the routing key leaked:\n{seen}");
    // Nor is it in the state store: the queued events are stored without it.
    for f in std::fs::read_dir(s.path().join("state")).unwrap() {
        let bytes = std::fs::read(f.unwrap().path()).unwrap();
        assert!(
            !bytes.windows(PD_KEY.len()).any(|w| w == PD_KEY.as_bytes()),
            "the routing key is in the state folder"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pagerduty_400_is_failed_with_its_reason_and_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(pd_invalid())
        .mount(&server)
        .await;
    let (_s, config) = setup(&pagerduty(&server));
    let mut seen = String::new();
    let (code, stdout, all) = run(runbook(
        &config,
        "",
        &["run-job", "daily", "--format", "json"],
    ))
    .await;
    assert_eq!(code, 1, "{all}");
    seen += &all;
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let line = &report["notifications"][0];
    assert_eq!(line["status"], "failed", "{report}");
    assert_eq!(
        line["error"],
        format!(
            "HTTP 400 Bad Request: rejected by {}: Event object is invalid: Length of 'routing_key' is incorrect (should be 32 characters)",
            server.uri()
        )
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
    // Not retried: a flush sends nothing, the report stays failed with the reason.
    let (_, _, all) = run(runbook(&config, "", &["outbox", "--flush"])).await;
    seen += &all;
    assert_eq!(server.received_requests().await.unwrap().len(), 2, "{all}");
    let (_, stdout, all) = run(runbook(
        &config,
        "",
        &["report", "last", "--format", "json"],
    ))
    .await;
    seen += &all;
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["notifications"][0]["status"], "failed");
    assert!(
        report["notifications"][0]["error"]
            .as_str()
            .unwrap()
            .contains("Event object is invalid")
    );
    let (_, _, all) = run(runbook(&config, "", &["outbox", "--format", "json"])).await;
    seen += &all;
    assert!(!seen.contains(PD_KEY), "the routing key leaked:\n{seen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pagerduty_notify_test_sends_a_resolve_that_pages_nobody() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(pd_accepted())
        .expect(1)
        .mount(&server)
        .await;
    let (_s, config) = setup(&pagerduty(&server));
    let (code, stdout, all) = run(runbook(&config, "", &["notify-test", "pd"])).await;
    assert_eq!(code, 0, "{all}");
    assert!(stdout.contains("pd (pagerduty): delivered"), "{stdout}");
    assert_eq!(
        bodies(&server).await,
        vec![
            json!({"routing_key": PD_KEY, "event_action": "resolve", "dedup_key": "runbook/notify-test/ops-test"})
        ]
    );
    assert!(!stdout.contains(PD_KEY));
}

#[test]
fn pagerduty_on_must_be_warn_or_fail() {
    let s = Setup::builder()
        .body("[notify.pd]\ntype = \"pagerduty\"\nrouting_key = { env = \"TEST_PD_KEY\" }\non = \"always\"\n")
        .build();
    let out = support::runbook(&s.config())
        .env("TEST_PD_KEY", PD_KEY)
        .arg("check-config")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("jobs.toml:"), "{text}");
    assert!(text.contains("must be \"warn\" or \"fail\""), "{text}");
    assert!(!text.contains(PD_KEY));
}
