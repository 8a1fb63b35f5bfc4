//! Bounded reads, through the real CLI binary: a command printing a line of many megabytes, a
//! log file with a 5 MB line, and HTTP answers of 50 MB (an HTTP mock for the third-party APIs)
//! are read up to their caps (64 KiB a line, 8 MiB a body); the item completes and its report
//! says what was cut. Two tests also read the peak memory of the runbook process
//! (`getrusage(RUSAGE_CHILDREN)`, the largest child waited for): a generous fixed bound, far
//! below what reading the whole input would take.

mod support;

use support::http::{report_t, stream_server};
use support::{Setup, details, item};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The peak resident memory, in MiB, of the largest child process this test has waited for.
fn peak_child_rss_mib() -> u64 {
    let mut usage = std::mem::MaybeUninit::<nix::libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_CHILDREN is a valid `who`.
    let rc = unsafe { nix::libc::getrusage(nix::libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage failed");
    // SAFETY: initialised by the successful call above (and zeroed before it).
    let usage = unsafe { usage.assume_init() };
    // Linux reports ru_maxrss in KiB.
    (usage.ru_maxrss as u64) / 1024
}

fn summary(it: &serde_json::Value) -> String {
    it["summary"].as_str().unwrap_or_default().to_string()
}

/// A 50 MB body: a JSON array whose first element never ends within the cap.
fn big_json_body() -> Vec<u8> {
    let mut body = b"[{\"labels\": {\"alertname\": \"".to_vec();
    body.resize(50 * 1024 * 1024, b'x');
    body.extend_from_slice(b"\"}}]");
    body
}

#[test]
fn a_command_printing_a_10_mb_line_completes_and_reports_the_cut() {
    let setup = Setup::job_t(
        "",
        r#"
[[jobs.t.items]]
name = "long line"
kind = "command"
argv = ["sh", "-c", "echo before; head -c 10000000 /dev/zero | tr '\\0' x; echo; echo after"]
read_only = true
"#,
    );
    let (code, report) = setup.report_t(&[]);
    let it = item(&report, "long line");
    assert_eq!(code, 0, "{it:#}");
    assert_eq!(it["status"], "pass", "{it:#}");
    assert_eq!(it["data"]["lines_cut"], 1, "{it:#}");
    assert!(
        details(it).contains("output: 1 line cut at 64 KiB"),
        "{it:#}"
    );
    let output: Vec<&str> = it["data"]["output"]
        .as_array()
        .expect("output")
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    assert_eq!(
        output.len(),
        3,
        "the lines around the long one are kept: {output:?}"
    );
    assert_eq!((output[0], output[2]), ("before", "after"));
    assert!(output[1].starts_with("xxxx"), "{output:?}");
    assert!(
        summary(it).ends_with(": after"),
        "the last line is still the summary's: {}",
        summary(it)
    );
}

#[test]
fn a_command_printing_a_300_mb_line_stays_within_bounded_memory() {
    let setup = Setup::job_t(
        "",
        r#"
[[jobs.t.items]]
name = "huge line"
kind = "command"
argv = ["sh", "-c", "head -c 300000000 /dev/zero | tr '\\0' x; echo"]
read_only = true
"#,
    );
    let (_, report) = setup.report_t(&[]);
    let peak = peak_child_rss_mib();
    eprintln!("peak RSS of the runbook process: {peak} MiB");
    assert!(
        peak < 150,
        "runbook held {peak} MiB at its peak for a 300 MB line (a line is read up to 64 KiB)"
    );
    let it = item(&report, "huge line");
    assert_eq!(it["status"], "pass", "{it:#}");
    assert_eq!(it["data"]["lines_cut"], 1, "{it:#}");
}

#[test]
fn a_log_line_of_5_mb_is_cut_counted_and_matched_on_its_first_64_kib() {
    let setup = Setup::job_t(
        "",
        r#"
[[jobs.t.items]]
name = "app errors"
kind = "log_scan"
files = ["app.log"]
"#,
    );
    let mut log = b"2026-01-05 10:00:00 ERROR short one\n".to_vec();
    // A 5 MB line with ERROR at its start: counted, cut.
    log.extend_from_slice(b"2026-01-05 10:00:01 ERROR payload dump ");
    log.extend(std::iter::repeat_n(b'p', 5 * 1024 * 1024));
    log.push(b'\n');
    // A 5 MB line with ERROR only at its end, beyond 64 KiB: not seen.
    log.extend(std::iter::repeat_n(b'q', 5 * 1024 * 1024));
    log.extend_from_slice(b" ERROR hidden\n2026-01-05 10:00:02 INFO fine\n");
    std::fs::write(setup.path().join("app.log"), &log).expect("write log");

    let (code, report) = setup.report_t(&[]);
    let it = item(&report, "app errors");
    assert_eq!(code, 0, "two matches warn: {it:#}");
    assert_eq!(it["data"]["matches"], 2, "{it:#}");
    assert_eq!(it["data"]["lines_cut"], 2, "{it:#}");
    assert!(details(it).contains("2 lines cut at 64 KiB"), "{it:#}");
    assert_eq!(
        it["data"]["files"][0]["offset"],
        log.len(),
        "the offset moves past the long lines: {it:#}"
    );
    let examples = it["data"]["top"].to_string();
    assert!(examples.contains("ERROR payload dump ppp"), "{examples}");
    assert!(
        examples.len() < 10_000,
        "examples are short, not the whole line: {} bytes",
        examples.len()
    );

    // The next run starts after them.
    let (_, report) = setup.report_t(&[]);
    assert_eq!(item(&report, "app errors")["data"]["matches"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_of_50_mb_are_cut_at_8_mib_and_the_report_says_so() {
    let server = MockServer::start().await;
    let body = big_json_body();
    for p in ["/api/v2/alerts", "/api/v1/query", "/health"] {
        Mock::given(method("GET"))
            .and(path(p))
            .respond_with(ResponseTemplate::new(200).set_body_raw(body.clone(), "application/json"))
            .mount(&server)
            .await;
    }
    let items = format!(
        r#"
[[jobs.t.items]]
name = "alerts"
kind = "alertmanager"
url = "{0}"

[[jobs.t.items]]
name = "query"
kind = "prometheus"
url = "{0}"
query = "up"

[[jobs.t.items]]
name = "health json"
kind = "http"
url = "{0}/health"
json = [{{ pointer = "/0/labels/alertname", equals = "x" }}]

[[jobs.t.items]]
name = "health status"
kind = "http"
url = "{0}/health"
"#,
        server.uri()
    );
    let (code, report) = report_t(Setup::job_t("", &items)).await;
    assert_eq!(code, 1, "{report:#}");

    for name in ["alerts", "query"] {
        let it = item(&report, name);
        assert_eq!(it["status"], "fail", "{it:#}");
        assert!(
            summary(it).contains("is larger than 8 MiB; only its first 8 MiB were read"),
            "{it:#}"
        );
    }

    let json = item(&report, "health json");
    assert_eq!(json["status"], "fail", "{json:#}");
    assert!(
        summary(json).contains("the body is larger than 8 MiB: only its first 8 MiB were read, so the JSON assertions cannot be checked"),
        "{json:#}"
    );
    assert_eq!(json["data"]["body_cut"], true);

    // Without assertions the status is what counts; the report still says the body was cut.
    let status = item(&report, "health status");
    assert_eq!(status["status"], "pass", "{status:#}");
    assert_eq!(status["data"]["body_cut"], true);
    assert_eq!(status["data"]["body_bytes_read"], 8 * 1024 * 1024);
    assert!(
        details(status).contains("only its first 8 MiB were read"),
        "{status:#}"
    );
}

#[test]
fn an_answer_of_300_mb_to_alertmanager_stays_within_bounded_memory() {
    let url = stream_server("200 OK", "[", 300 * 1024 * 1024);
    let setup = Setup::job_t(
        "",
        &format!("[[jobs.t.items]]\nname = \"alerts\"\nkind = \"alertmanager\"\nurl = \"{url}\"\n"),
    );
    let (_, report) = setup.report_t(&[]);
    let peak = peak_child_rss_mib();
    eprintln!("peak RSS of the runbook process: {peak} MiB");
    assert!(
        peak < 150,
        "runbook held {peak} MiB at its peak for a 300 MB answer (a body is read up to 8 MiB)"
    );
    let it = item(&report, "alerts");
    assert_eq!(it["status"], "fail", "{it:#}");
    assert!(summary(it).contains("larger than 8 MiB"), "{it:#}");
}

#[test]
fn a_300_mb_error_answer_to_a_heartbeat_ping_stays_within_bounded_memory() {
    let url = stream_server("404 Not Found", "no such check\n", 300 * 1024 * 1024);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("jobs.toml");
    std::fs::write(
        &config,
        format!(
            "[runbook]\nstate_dir = {:?}\n\n[notify.hc]\ntype = \"heartbeat\"\nurl = {{ env = \"TEST_PING_URL\" }}\n\n[jobs.t]\n\n[[jobs.t.items]]\nname = \"fine\"\nkind = \"command\"\nargv = [\"true\"]\nread_only = true\n",
            dir.path().join("state")
        ),
    )
    .expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runbook"))
        .arg("--config")
        .arg(&config)
        .args(["run-job", "t"])
        .env("TEST_PING_URL", format!("{url}/ping/check"))
        .output()
        .expect("run the runbook binary");
    let peak = peak_child_rss_mib();
    eprintln!("peak RSS of the runbook process: {peak} MiB");
    assert!(
        peak < 150,
        "runbook held {peak} MiB at its peak for a 300 MB error answer (read up to 64 KiB)"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("HTTP 404 Not Found: rejected by") && stderr.contains("no such check"),
        "the failed ping is reported with the answer's first line: {stderr}"
    );
}

/// The backup tools (pg_dump, pg_restore, psql, pg_verifybackup) run through `run_tool`; a real
/// process stands in for one that fails with a 5 MB error line.
#[tokio::test]
async fn a_backup_tool_failing_with_a_5_mb_line_reports_it_cut_and_short() {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.args([
        "-c",
        "echo 'pg_restore: connecting' >&2; printf 'pg_restore: error: ' >&2; head -c 5000000 /dev/zero | tr '\\0' x >&2; echo >&2; exit 1",
    ]);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let cancel = tokio_util::sync::CancellationToken::new();
    let run = runbook::items::support::pg_tools::run_tool(cmd, deadline, &cancel, false).await;
    assert!(!run.ok());
    let why = run.failure("pg_restore");
    assert!(
        why.starts_with("pg_restore exited with code 1: pg_restore: error: xxxx"),
        "{why}"
    );
    assert!(why.ends_with("… [line cut at 64 KiB]"), "{why}");
    assert!(
        why.len() < 1000,
        "shortened for the report: {} bytes",
        why.len()
    );
    assert_eq!(
        run.stderr_tail.first().map(String::as_str),
        Some("pg_restore: connecting")
    );
}
