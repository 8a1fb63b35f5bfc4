//! Small conventions of a mature CLI, checked on the built binary: `--version` names the commit,
//! `--format json` on `check-config` and `notify-test` is one document, no colour codes when
//! stderr is not a terminal, journald fields without a prefix.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use support::text;

fn runbook(dir: &Path) -> Command {
    let mut c = support::runbook_in(dir);
    c.env_remove("JOURNAL_STREAM").env_remove("NO_COLOR");
    c
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

fn write(dir: &Path, config: &str) {
    std::fs::write(
        dir.join("jobs.toml"),
        format!(
            "[runbook]\nstate_dir = {:?}\n{config}",
            dir.join("state").display().to_string()
        ),
    )
    .unwrap();
}

#[test]
fn version_names_the_release_and_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let out = runbook(dir.path()).arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v = text(&out.stdout);
    assert_eq!(
        v.trim(),
        format!(
            "runbook {} ({})",
            env!("CARGO_PKG_VERSION"),
            runbook::GIT_COMMIT
        )
    );
    assert!(!runbook::GIT_COMMIT.is_empty());
}

#[test]
fn check_config_json_is_one_document_with_located_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Two semantic mistakes: a bad cron in job "daily", an unknown target in its item.
    std::fs::write(
        dir.path().join("jobs.toml"),
        "[jobs.daily]\nschedule = \"0 25 * * *\"\n\n[[jobs.daily.items]]\nname = \"Connections\"\nkind = \"sql\"\ntarget = \"nope\"\nquery = \"SELECT 1\"\n",
    )
    .unwrap();
    let out = runbook(dir.path())
        .args(["check-config", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let v = json(&out);
    assert_eq!(v["ok"], false);
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{v}");
    assert_eq!(errors[0]["file"], "jobs.toml");
    assert_eq!(
        (errors[0]["line"].as_u64(), errors[0]["column"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(errors[0]["job"], "daily");
    assert_eq!(errors[0]["item"], Value::Null);
    assert_eq!(errors[1]["line"], 7);
    assert_eq!(errors[1]["job"], "daily");
    assert_eq!(errors[1]["item"], "Connections");
    assert!(
        errors[1]["message"]
            .as_str()
            .unwrap()
            .contains("unknown target \"nope\""),
        "{v}"
    );

    // A good file: ok, its jobs, its warnings (an inline secret, never its value).
    write(
        dir.path(),
        "[notify.slack]\ntype = \"slack\"\nwebhook_url = \"https://hooks.example/very-secret-token\"\n\n[jobs.daily]\nschedule = \"0 10 * * *\"\ntimezone = \"Asia/Kolkata\"\n[[jobs.daily.items]]\nname = \"Review Grafana\"\nkind = \"manual\"\n",
    );
    let out = runbook(dir.path())
        .args(["check-config", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v = json(&out);
    assert_eq!(v["ok"], true);
    assert_eq!(v["errors"], serde_json::json!([]));
    assert_eq!(v["jobs"][0]["job"], "daily");
    assert_eq!(v["jobs"][0]["items"], 1);
    assert!(
        v["jobs"][0]["next_run"]
            .as_str()
            .unwrap()
            .ends_with("+05:30")
    );
    assert_eq!(v["notifiers"], serde_json::json!(["slack"]));
    assert_eq!(v["state_dir_origin"], "config");
    assert_eq!(v["connect"], Value::Null);
    let warnings = v["warnings"].to_string();
    assert!(warnings.contains("inline"), "{warnings}");
    assert!(!text(&out.stdout).contains("very-secret-token"));
}

#[test]
fn notify_test_json_says_how_each_channel_went() {
    let dir = tempfile::tempdir().unwrap();
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    write(
        dir.path(),
        "[notify.archive]\ntype = \"file\"\ndir = \"sent\"\n\n[notify.slack]\ntype = \"slack\"\nwebhook_url = { env = \"TEST_WEBHOOK\" }\n",
    );
    let out = runbook(dir.path())
        .args(["notify-test", "--format", "json"])
        .env(
            "TEST_WEBHOOK",
            format!("http://127.0.0.1:{dead_port}/services/T0/B0/very-secret-token"),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let v = json(&out);
    let channels = v["channels"].as_array().unwrap();
    assert_eq!(channels.len(), 2, "{v}");
    assert_eq!(channels[0]["channel"], "archive");
    assert_eq!(channels[0]["kind"], "file");
    assert_eq!(channels[0]["status"], "delivered");
    assert_eq!(channels[0]["error"], Value::Null);
    assert_eq!(channels[1]["channel"], "slack");
    assert_eq!(channels[1]["status"], "failed");
    assert!(channels[1]["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(
        !(text(&out.stdout) + &text(&out.stderr)).contains("very-secret-token"),
        "{v}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("sent")).unwrap().count(),
        4
    );

    // Unknown channel: a usage error, nothing on stdout.
    let out = runbook(dir.path())
        .args(["notify-test", "pager", "--format", "json"])
        .env("TEST_WEBHOOK", "http://127.0.0.1:1/x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("unknown notifier \"pager\""));
}

const ONE_JOB: &str = "\n[jobs.j]\n[[jobs.j.items]]\nname = \"m\"\nkind = \"manual\"\n";

#[test]
fn logs_have_no_colour_codes_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), ONE_JOB);
    let out = runbook(dir.path())
        .args(["run-job", "j"])
        .env("RUNBOOK_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(err.contains("run started"), "the log is there: {err}");
    assert!(!err.contains('\u{1b}'), "no escape codes: {err:?}");
}

/// Under systemd (`JOURNAL_STREAM` set) logs go to journald's native socket. A private mount
/// namespace puts our own socket at `/run/systemd/journal/socket`, so the test reads exactly
/// the datagrams journald would get, on any machine, without touching the real journal.
#[test]
fn journald_fields_have_no_prefix() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), ONE_JOB);
    let journal = dir.path().join("journal");
    std::fs::create_dir(&journal).unwrap();
    let socket = UnixDatagram::bind(journal.join("socket")).unwrap();
    socket.set_nonblocking(true).unwrap();
    let script = "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal \
                  && mount --bind \"$1\" /run/systemd/journal && shift && exec \"$@\"";
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&journal)
        .arg(env!("CARGO_BIN_EXE_runbook"))
        .args(["--config", "jobs.toml", "run-job", "j"])
        .current_dir(dir.path())
        .env("JOURNAL_STREAM", "8:12345")
        .env("RUNBOOK_LOG", "info")
        .env_remove("RUNBOOK_CONFIG")
        .output()
        .expect("unshare (util-linux) is needed: apt-get install util-linux");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let mut entries = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = socket.recv(&mut buf) {
        entries.push(fields(&buf[..n]));
    }
    let started = entries
        .iter()
        .find(|e| e.iter().any(|(k, v)| k == "MESSAGE" && v == "run started"))
        .unwrap_or_else(|| panic!("no 'run started' entry in {entries:?}"));
    let get = |key: &str| {
        started
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("JOB"), Some("j"), "{started:?}");
    assert_eq!(get("TRIGGER"), Some("manual"), "{started:?}");
    assert!(get("RUN_ID").is_some(), "{started:?}");
    assert!(
        started.iter().all(|(k, _)| !k.starts_with("F_")),
        "fields without a prefix: {started:?}"
    );
}

/// The fields of one datagram of journald's native protocol: `KEY=value\n`, or `KEY\n`, a
/// little-endian u64 length, the value and `\n`.
fn fields(mut d: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Some(nl) = d.iter().position(|&b| b == b'\n') {
        let line = &d[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            out.push((text(&line[..eq]), text(&line[eq + 1..])));
            d = &d[nl + 1..];
        } else {
            let rest = &d[nl + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            out.push((text(line), text(&rest[8..8 + len])));
            d = &rest[(8 + len + 1).min(rest.len())..];
        }
    }
    out
}
