//! `http` and `prometheus` items against an HTTP mock serving payloads recorded from Spring Boot
//! Actuator, Resilience4j and Prometheus (tests/fixtures/README.md says where each is from),
//! driven through the real CLI binary.

mod support;

use support::files::fixture;
use support::http::report_t;
use support::{Setup, details, item};
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn json_response(status: u16, fixture_name: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(fixture(fixture_name), "application/json")
}

#[tokio::test(flavor = "multi_thread")]
async fn circuit_breakers_none_open_passes_when_all_closed_and_names_the_open_one() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/closed/actuator/circuitbreakers"))
        .respond_with(json_response(200, "actuator-circuitbreakers-closed.json"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/open/actuator/circuitbreakers"))
        .respond_with(json_response(200, "actuator-circuitbreakers-open.json"))
        .mount(&server)
        .await;
    let items = format!(
        r#"
[[jobs.t.items]]
name = "closed"
kind = "http"
url = "{0}/closed/actuator/circuitbreakers"
json = [{{ pointer = "/circuitBreakers", none = {{ state = "OPEN" }} }}]

[[jobs.t.items]]
name = "open"
kind = "http"
url = "{0}/open/actuator/circuitbreakers"
json = [{{ pointer = "/circuitBreakers", none = {{ state = "OPEN" }} }}]

[[jobs.t.items]]
name = "all closed"
kind = "http"
url = "{0}/open/actuator/circuitbreakers"
json = [{{ pointer = "/circuitBreakers", all = {{ state = "CLOSED" }} }}]
"#,
        server.uri()
    );
    let (code, report) = report_t(Setup::job_t("", &items)).await;
    assert_eq!(code, 1, "a failed item makes exit code 1");

    let closed = item(&report, "closed");
    assert_eq!(closed["status"], "pass", "{closed:#}");
    assert!(details(closed).contains("3 checked"), "{closed:#}");

    let open = item(&report, "open");
    assert_eq!(open["status"], "fail");
    let summary = open["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("brokerService (state = \"OPEN\")"),
        "the open breaker is named: {summary}"
    );
    assert!(
        !summary.contains("marketDataService"),
        "closed breakers are not blamed: {summary}"
    );

    let all = item(&report, "all closed");
    assert_eq!(all["status"], "fail");
    let summary = all["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("brokerService")
            && summary.contains("paymentGateway (state = \"HALF_OPEN\")"),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_assertions_and_status_show_what_was_received() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/up/actuator/health"))
        .respond_with(json_response(200, "actuator-health-up.json"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/down/actuator/health"))
        .respond_with(json_response(503, "actuator-health-db-down.json"))
        .mount(&server)
        .await;
    let items = format!(
        r#"
[[jobs.t.items]]
name = "up"
kind = "http"
url = "{0}/up/actuator/health"
json = [{{ pointer = "/status", equals = "UP" }}, {{ pointer = "/components", all = {{ status = "UP" }} }}, {{ pointer = "/components/diskSpace/details/threshold", equals = 10485760 }}]

[[jobs.t.items]]
name = "down"
kind = "http"
url = "{0}/down/actuator/health"
json = [{{ pointer = "/status", equals = "UP" }}]

[[jobs.t.items]]
name = "down components"
kind = "http"
url = "{0}/down/actuator/health"
expect_status = 503
json = [{{ pointer = "/components", all = {{ status = "UP" }} }}]
"#,
        server.uri()
    );
    let (_, report) = report_t(Setup::job_t("", &items)).await;
    let up = item(&report, "up");
    assert_eq!(up["status"], "pass", "{up:#}");
    assert_eq!(up["data"]["status"], 200);

    let down = item(&report, "down");
    assert_eq!(down["status"], "fail");
    assert!(
        down["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("status 503 (expected 200)"),
        "{down:#}"
    );
    let d = details(down);
    assert!(
        d.contains("received: {\"status\":\"DOWN\""),
        "the body is shown: {d}"
    );
    assert!(d.contains("/status = \"DOWN\" (expected \"UP\")"), "{d}");

    let comps = item(&report, "down components");
    assert_eq!(comps["status"], "fail");
    assert!(
        comps["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("db (status = \"DOWN\")"),
        "{comps:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn secret_headers_are_sent_but_never_shown_and_redirects_are_followed() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/check"))
        .and(header("authorization", "Bearer s3cr3t-token-value"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(r#"{"ok":true,"count":2.0}"#, "application/json"),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/old"))
        .respond_with(
            ResponseTemplate::new(302).insert_header("location", format!("{}/new", server.uri())),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/new"))
        .respond_with(ResponseTemplate::new(200).set_body_string("moved here"))
        .mount(&server)
        .await;

    let token_file = tempfile::NamedTempFile::new().expect("temp");
    std::fs::write(token_file.path(), "Bearer s3cr3t-token-value\n").expect("write");
    let items = format!(
        r#"
[[jobs.t.items]]
name = "authorised"
kind = "http"
method = "POST"
url = "{0}/api/check"
headers = {{ Authorization = {{ file = {1:?} }} }}
body = "{{}}"
json = [{{ pointer = "/ok", equals = true }}, {{ pointer = "/count", equals = 2 }}]

[[jobs.t.items]]
name = "followed"
kind = "http"
url = "{0}/old"

[[jobs.t.items]]
name = "not followed"
kind = "http"
url = "{0}/old"
redirects = 0
expect_status = 302
"#,
        server.uri(),
        token_file.path()
    );
    let (code, report) = report_t(Setup::job_t("", &items)).await;
    assert_eq!(code, 0, "{report:#}");
    let auth = item(&report, "authorised");
    assert_eq!(auth["status"], "pass", "{auth:#}");
    assert!(
        !report.to_string().contains("s3cr3t"),
        "the secret never appears in the report"
    );
    assert!(
        item(&report, "followed")["data"]["final_url"]
            .as_str()
            .unwrap_or_default()
            .ends_with("/new")
    );
    assert_eq!(item(&report, "not followed")["status"], "pass");
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_series_are_compared_and_errors_reported() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/query"))
        .and(query_param(
            "query",
            "resilience4j_circuitbreaker_failure_rate",
        ))
        .respond_with(json_response(200, "prometheus-query-failure-rate.json"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/query"))
        .and(query_param("query", "p95"))
        .respond_with(json_response(200, "prometheus-query-p95.json"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/query"))
        .and(query_param("query", "absent_metric"))
        .respond_with(json_response(200, "prometheus-query-empty.json"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/query"))
        .and(query_param("query", "bad{"))
        .respond_with(json_response(400, "prometheus-query-error.json"))
        .mount(&server)
        .await;
    let items = format!(
        r#"
[[jobs.t.items]]
name = "failure rate"
kind = "prometheus"
url = "{0}"
query = "resilience4j_circuitbreaker_failure_rate"
warn_above = 20
fail_above = 50

[[jobs.t.items]]
name = "p95"
kind = "prometheus"
url = "{0}/"
query = "p95"
warn_above = 200
fail_above = 1000

[[jobs.t.items]]
name = "empty warns"
kind = "prometheus"
url = "{0}"
query = "absent_metric"
fail_above = 1

[[jobs.t.items]]
name = "empty passes"
kind = "prometheus"
url = "{0}"
query = "absent_metric"
fail_above = 1
no_data = "pass"

[[jobs.t.items]]
name = "bad query"
kind = "prometheus"
url = "{0}"
query = "bad{{"
"#,
        server.uri()
    );
    let (_, report) = report_t(Setup::job_t("", &items)).await;
    let fr = item(&report, "failure rate");
    assert_eq!(fr["status"], "fail", "{fr:#}");
    assert_eq!(fr["summary"], "1 of 3 series outside thresholds");
    let d = details(fr);
    assert!(
        d.contains("resilience4j_circuitbreaker_failure_rate{")
            && d.contains("name=\"brokerService\"} = 62.5 — FAIL (above 50)"),
        "{d}"
    );
    assert_eq!(fr["data"]["series"][0]["labels"]["name"], "brokerService");

    let p95 = item(&report, "p95");
    assert_eq!(p95["status"], "pass", "{p95:#}");
    assert!(
        p95["summary"]
            .as_str()
            .unwrap_or_default()
            .starts_with("value 187.5"),
        "{p95:#}"
    );
    // One series: its value is the item's data.value (SPEC 9.3); three series: none.
    let v = p95["data"]["value"].as_f64();
    assert!(matches!(v, Some(x) if (x - 187.5).abs() < 1e-9), "{p95:#}");
    assert!(fr["data"]["value"].is_null(), "{fr:#}");

    assert_eq!(item(&report, "empty warns")["status"], "warn");
    assert_eq!(item(&report, "empty passes")["status"], "pass");

    let bad = item(&report, "bad query");
    assert_eq!(bad["status"], "fail");
    let s = bad["summary"].as_str().unwrap_or_default();
    assert!(
        s.contains("bad_data") && s.contains("parse error"),
        "Prometheus' own message is shown: {s}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_endpoint_is_a_failed_item_not_an_error() {
    let port = support::free_port();
    let items = format!(
        r#"
[[jobs.t.items]]
name = "down"
kind = "http"
url = "http://127.0.0.1:{port}/actuator/health"

[[jobs.t.items]]
name = "prom down"
kind = "prometheus"
url = "http://127.0.0.1:{port}"
query = "up"
"#
    );
    let (code, report) = report_t(Setup::job_t("", &items)).await;
    assert_eq!(code, 1);
    let down = item(&report, "down");
    assert_eq!(down["status"], "fail");
    assert!(
        down["summary"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
            .contains("connect"),
        "{down:#}"
    );
    assert_eq!(item(&report, "prom down")["status"], "fail");
}

/// A Prometheus vector answer with one unlabelled sample.
fn one_value(v: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(
        format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1764900000,"{v}"]}}]}}}}"#
        ),
        "application/json",
    )
}

/// A query evaluated as of about a week ago (Prometheus' `time` parameter, unix seconds).
fn a_week_ago(req: &wiremock::Request) -> bool {
    req.url.query_pairs().any(|(k, v)| {
        k == "time"
            && v.parse::<i64>().is_ok_and(|t| {
                let ago = chrono::Utc::now().timestamp() - t;
                (7 * 86400 - 3600..7 * 86400 + 3600).contains(&ago)
            })
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn error_trend_compares_with_the_week_before() {
    let server = MockServer::start().await;
    for (query, now, before) in [
        ("errors_grew", "1240", "812"),
        ("errors_steady", "212", "198"),
        ("errors_few", "7", "2"),
        ("errors_tripled", "2600", "600"),
    ] {
        Mock::given(method("GET"))
            .and(path("/api/v1/query"))
            .and(query_param("query", query))
            .and(a_week_ago)
            .respond_with(one_value(before))
            .with_priority(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/api/v1/query"))
            .and(query_param("query", query))
            .respond_with(one_value(now))
            .with_priority(2)
            .mount(&server)
            .await;
    }
    let item_text = |name: &str, query: &str| {
        format!(
            "[[jobs.t.items]]\nname = \"{name}\"\nkind = \"prometheus\"\nurl = \"{}\"\nquery = \"{query}\"\ncompare_with = \"7d\"\nwarn_increase_pct = 50\nfail_increase_pct = 200\nincrease_min = 100\n\n",
            server.uri()
        )
    };
    let items = [
        item_text("grew", "errors_grew"),
        item_text("steady", "errors_steady"),
        item_text("few", "errors_few"),
        item_text("tripled", "errors_tripled"),
    ]
    .concat();
    let (code, report) = report_t(Setup::job_t("", &items)).await;
    assert_eq!(code, 1, "{report:#}");

    let grew = item(&report, "grew");
    assert_eq!(grew["status"], "warn", "{grew:#}");
    assert_eq!(
        grew["summary"],
        "1240 now, 812 7d earlier (+53%): grew more than 50%"
    );
    assert_eq!(grew["data"]["value"], 1240.0);
    assert_eq!(grew["data"]["earlier_value"], 812.0);

    let steady = item(&report, "steady");
    assert_eq!(steady["status"], "pass", "{steady:#}");
    assert_eq!(steady["summary"], "212 now, 198 7d earlier (+7.1%)");

    let few = item(&report, "few");
    assert_eq!(
        few["status"], "pass",
        "below increase_min a tripling is no trend: {few:#}"
    );

    let tripled = item(&report, "tripled");
    assert_eq!(tripled["status"], "fail", "{tripled:#}");
    assert!(
        details(tripled).contains("2600 now, 600 7d earlier (+333%) — FAIL (grew more than 200%)"),
        "{tripled:#}"
    );
}

#[test]
fn an_increase_threshold_without_compare_with_is_a_config_error() {
    let setup = Setup::new(
        "[[jobs.t.items]]\nname = \"p\"\nkind = \"prometheus\"\nurl = \"http://localhost:9090\"\nquery = \"x\"\nwarn_increase_pct = 50\n",
    );
    let out = setup.runbook(&["check-config"]).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("warn_increase_pct needs compare_with"),
        "{text}"
    );
}
