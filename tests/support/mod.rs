//! Set-up shared by every integration test. A test file starts with `mod support;` and takes
//! what it needs:
//!
//! - [`Setup`]: a temporary folder with a jobs.toml and its state folder, and the real
//!   `runbook` binary run on it (clean environment, a timeout), with the report read back.
//! - [`pg`]: throwaway PostgreSQL clusters (`runbook::face::pgcluster`, as `postgres` when we
//!   are root), SQL helpers, lock holders, dumps; [`standby`]: a streaming standby.
//! - [`smtp`]: a real SMTP server in the test process; [`http`]: helpers around the HTTP mock
//!   server (wiremock) for the third-party web APIs; [`tls`]: certificates made by `openssl`.
//! - [`files`]: backup files aged, checksummed, fixtures.
//!
//! Every test binary compiles the whole module but uses only its own part of it, so unused
//! items are not warnings here (the usual practice for `tests/common`-style modules).
#![allow(dead_code)]

pub mod daemon;
pub mod files;
pub mod http;
pub mod pg;
pub mod runs;
pub mod smtp;
pub mod standby;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a `runbook` process may run before the test kills it (a safety net, not a
/// timing assertion).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// How long [`wait_until`] polls before giving up.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// The `[runbook]` section every generated jobs.toml starts with: state in `state/` beside
/// the file (a relative `state_dir` is relative to the config's folder).
const RUNBOOK_SECTION: &str = "[runbook]\ntimezone = \"Asia/Kolkata\"\nstate_dir = \"state\"\n";

/// A temporary folder with a jobs.toml, and the `runbook` binary run on it.
pub struct Setup {
    pub dir: tempfile::TempDir,
    /// The `[runbook]` section (with the builder's extra lines), for rewriting the file.
    head: String,
    env: Vec<(String, String)>,
    timeout: Duration,
}

/// Builds a [`Setup`]: `Setup::builder().hostname("ops-test").body(JOBS).env(K, V).build()`.
#[derive(Default)]
pub struct SetupBuilder {
    runbook: Vec<String>,
    body: String,
    raw: Option<String>,
    env: Vec<(String, String)>,
    timeout: Option<Duration>,
}

impl SetupBuilder {
    /// `hostname = "NAME"` in `[runbook]` (reports and subjects name it).
    pub fn hostname(self, name: &str) -> Self {
        self.runbook(&format!("hostname = {name:?}"))
    }

    /// Another line (TOML `key = value`) in `[runbook]`.
    pub fn runbook(mut self, line: &str) -> Self {
        self.runbook.push(line.to_string());
        self
    }

    /// Appends `text` (TOML: targets, notifiers, jobs) after the `[runbook]` section.
    pub fn body(mut self, text: &str) -> Self {
        self.body.push_str(text);
        self
    }

    /// Appends job `t` (description "test", timeout 5m) with `items` (`[[jobs.t.items]]`
    /// tables, TOML text).
    pub fn job_t(self, items: &str) -> Self {
        let text = job_t(items);
        self.body(&text)
    }

    /// jobs.toml is exactly `text` (no `[runbook]` section added; the state still goes to
    /// `state/` in the folder, through `RUNBOOK_STATE_DIR`).
    pub fn raw(mut self, text: &str) -> Self {
        self.raw = Some(text.to_string());
        self
    }

    /// An environment variable for every `runbook` process of this setup.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// A longer or shorter safety timeout than [`RUN_TIMEOUT`].
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    pub fn build(self) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut head = RUNBOOK_SECTION.to_string();
        for line in &self.runbook {
            head.push_str(line);
            head.push('\n');
        }
        head.push('\n');
        let s = Setup {
            dir,
            head,
            env: self.env,
            timeout: self.timeout.unwrap_or(RUN_TIMEOUT),
        };
        match self.raw {
            Some(text) => s.write("jobs.toml", &text),
            None => s.write_body(&self.body),
        };
        s
    }
}

/// Job `t` (description "test", timeout 5m) with `items`.
fn job_t(items: &str) -> String {
    format!("[jobs.t]\ndescription = \"test\"\ntimeout = \"5m\"\n\n{items}\n")
}

impl Setup {
    pub fn builder() -> SetupBuilder {
        SetupBuilder::default()
    }

    /// jobs.toml is the `[runbook]` section (time zone Asia/Kolkata, state in the folder)
    /// followed by `body`.
    pub fn new(body: &str) -> Setup {
        Setup::builder().body(body).build()
    }

    /// jobs.toml is exactly `text`.
    pub fn raw(text: &str) -> Setup {
        Setup::builder().raw(text).build()
    }

    /// With `targets` (TOML, may be empty) and job `t` holding `items`.
    pub fn job_t(targets: &str, items: &str) -> Setup {
        Setup::builder()
            .body(targets)
            .body("\n\n")
            .job_t(items)
            .build()
    }

    /// With a `[targets.db]` at `url` (no TLS, `lock_timeout` 200 ms) plus `extra` target
    /// options, then `jobs`.
    pub fn with_db(url: &str, extra: &str, jobs: &str) -> Setup {
        Setup::new(&format!(
            "[targets.db]\nurl = \"{url}\"\nsslmode = \"disable\"\nlock_timeout = \"200ms\"\n{extra}\n{jobs}"
        ))
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("jobs.toml")
    }

    /// Writes `text` to `name` in the folder; its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    /// Rewrites jobs.toml as the `[runbook]` section and `body` (the state folder is kept).
    pub fn write_body(&self, body: &str) -> PathBuf {
        self.write("jobs.toml", &format!("{}{body}", self.head))
    }

    /// Rewrites jobs.toml with job `t` holding `items` (the state folder is kept).
    pub fn write_job_t(&self, items: &str) -> PathBuf {
        self.write_body(&job_t(items))
    }

    /// The `runbook` binary, run from the folder with a clean environment (no
    /// `RUNBOOK_CONFIG`, `RUNBOOK_LOG`, `RUST_LOG`; `RUNBOOK_STATE_DIR` the folder's `state/`)
    /// plus the builder's variables. No arguments yet.
    pub fn std_command(&self) -> std::process::Command {
        let mut c = runbook_in(self.path());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// [`Setup::std_command`] with the safety timeout.
    pub fn cmd(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::from_std(self.std_command());
        c.timeout(self.timeout);
        c
    }

    /// `runbook --config jobs.toml ARGS` ([`Setup::cmd`]).
    pub fn runbook(&self, args: &[&str]) -> assert_cmd::Command {
        let mut c = self.cmd();
        c.arg("--config").arg(self.config()).args(args);
        c
    }

    /// Runs `runbook ARGS` (no `--config` added); its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd()
            .args(args)
            .output()
            .expect("run the runbook binary")
    }

    /// Runs `runbook ARGS`: (exit code, stdout as JSON); panics when stdout is not one JSON
    /// document.
    pub fn json(&self, args: &[&str]) -> (i32, Value) {
        let out = self.run(args);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}); exit {:?}\nstdout: {}\nstderr: {}",
                out.status.code(),
                text(&out.stdout),
                text(&out.stderr)
            )
        });
        (code(&out), v)
    }

    /// Runs `run-job JOB --format json --no-notify` (plus `args`): (exit code, report,
    /// stdout+stderr). The report is `null` when stdout is not JSON (nothing ran).
    pub fn run_job(&self, job: &str, args: &[&str]) -> (i32, Value, String) {
        let out = self
            .runbook(&["run-job", job, "--format", "json", "--no-notify"])
            .args(args)
            .output()
            .expect("run the runbook binary");
        let stdout = text(&out.stdout);
        let all = format!("{stdout}\n{}", text(&out.stderr));
        let report = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        (code(&out), report, all)
    }

    /// `runbook --config jobs.toml run-job t --no-notify --format json ARGS`, unstarted.
    pub fn job_t_command(&self, args: &[&str]) -> std::process::Command {
        let mut c = self.std_command();
        c.arg("--config")
            .arg(self.config())
            .args(["run-job", "t", "--no-notify", "--format", "json"])
            .args(args);
        c
    }

    /// Runs job `t` (`--no-notify --format json` plus `args`): (exit code, report); panics
    /// when there is no JSON report.
    pub fn report_t(&self, args: &[&str]) -> (i32, Value) {
        let (code, report, all) = self.run_job("t", args);
        assert!(!report.is_null(), "no JSON report; exit {code}\n{all}");
        (code, report)
    }

    /// Runs job `t`: (exit code, its first item).
    pub fn first_item_t(&self, args: &[&str]) -> (i32, Value) {
        let (code, report) = self.report_t(args);
        (code, report["items"][0].clone())
    }

    /// Runs job `t` and returns its item called `name`.
    pub fn item_t(&self, name: &str) -> Value {
        let (_, report) = self.report_t(&[]);
        item(&report, name).clone()
    }
}

/// The `runbook` binary with no `RUNBOOK_CONFIG`, `RUNBOOK_LOG` or `RUST_LOG` from the
/// test's environment.
pub fn clean_command() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_runbook"));
    c.env_remove("RUNBOOK_CONFIG")
        .env_remove("RUNBOOK_LOG")
        .env_remove("RUST_LOG");
    c
}

/// The `runbook` binary run from `dir` with a clean environment and `RUNBOOK_STATE_DIR` its
/// `state/`, unstarted; no arguments yet. A config that names no `state_dir` keeps its state
/// there too, whether or not this machine has the daemon's /var/lib/runbook.
pub fn runbook_in(dir: &Path) -> std::process::Command {
    let mut c = clean_command();
    c.current_dir(dir)
        .env("RUNBOOK_STATE_DIR", dir.join("state"));
    c
}

/// `runbook --config CONFIG ARGS` with a clean environment, unstarted: for tests that keep
/// only a config path, or spawn the process.
pub fn runbook_std(config: &Path, args: &[&str]) -> std::process::Command {
    let mut c = clean_command();
    c.arg("--config").arg(config).args(args);
    c
}

/// `runbook --config CONFIG` with a clean environment and the safety timeout.
pub fn runbook(config: &Path) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::from_std(runbook_std(config, &[]));
    c.timeout(RUN_TIMEOUT);
    c
}

/// The item called `name` of a report.
pub fn item<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["name"] == name))
        .unwrap_or_else(|| panic!("no item {name:?} in {report:#}"))
}

/// All detail lines of an item joined, for `contains` assertions.
pub fn details(item: &Value) -> String {
    item["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|l| l.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// Bytes as (lossy) UTF-8 text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A process's exit code (-1 when a signal ended it).
pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Polls `cond` until it holds; panics naming `what` after [`PATIENCE`].
pub fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_until_or(what, cond, String::new)
}

/// Like [`wait_until`], with `log()` (a daemon's log, say) in the failure message.
pub fn wait_until_or(what: &str, mut cond: impl FnMut() -> bool, log: impl Fn() -> String) {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("gave up waiting: {what}\n{}", log());
}
