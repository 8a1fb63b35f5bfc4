//! The metrics and alert rules with the real Prometheus (Debian's `prometheus` package):
//! `promtool` checks `systemd/alerts.yml` and runs its unit tests, and a Prometheus server
//! scrapes a running daemon, loads the rules, and is asked through its HTTP API what it stored.
//! No timing assertions: every wait is generous.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_runbook");
/// How long any condition may take to become true before the test fails.
const PATIENCE: Duration = Duration::from_secs(90);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The path of `tool`, or a failure that says how to install it.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed: apt-get install prometheus (it provides promtool and the server)")
        })
}

/// A child process killed (and reaped) when dropped, so a failing test leaks nothing.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn start(cmd: &mut Command, log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Process { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTP/1.0 GET; returns (status code, body), or None when nothing listens yet.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let (code, _, body) = support::http::get(port, path, &[]).ok()?;
    Some((code, body))
}

/// `GET /api/v1/<endpoint>?<param>=<value>` of the Prometheus server: its `data`.
fn api(port: u16, endpoint: &str, param: &str, value: &str) -> Value {
    let path = format!("/api/v1/{endpoint}?{param}={}", encode(value));
    let Some((200, body)) = http_get(port, &path) else {
        return Value::Null;
    };
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if v["status"] != "success" {
        return Value::Null;
    }
    v["data"].clone()
}

fn wait_for<T>(what: &str, logs: &[&Process], mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if let Some(v) = probe() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let logs: Vec<String> = logs.iter().map(|p| p.log()).collect();
    panic!("gave up waiting: {what}; logs:\n{}", logs.join("\n----\n"));
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new(tool("promtool"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn alert_rules_are_valid_and_their_unit_tests_pass() {
    let (ok, out) = promtool(&["check", "rules", "systemd/alerts.yml"]);
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = promtool(&["test", "rules", "systemd/alerts.test.yml"]);
    assert!(ok, "promtool test rules:\n{out}");
    // Every alert of the file has unit tests and a runbook_url into the docs.
    let rules = std::fs::read_to_string(repo().join("systemd/alerts.yml")).expect("alerts.yml");
    let tests =
        std::fs::read_to_string(repo().join("systemd/alerts.test.yml")).expect("alerts.test.yml");
    let docs = std::fs::read_to_string(repo().join("docs/daemon.md")).expect("daemon.md");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 3, "{rules}");
    for alert in alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} has no unit test"
        );
        let anchor = alert.to_lowercase();
        assert!(
            rules.contains(&format!("daemon.md#{anchor}\"")),
            "{alert} has no runbook_url"
        );
        assert!(
            docs.contains(&format!("\n### {alert}\n")),
            "docs/daemon.md has no section {alert}"
        );
    }
    assert!(
        !rules.contains("{job=\"daily\"") && !rules.contains("$labels.job }}"),
        "runbook's job is the label job_name"
    );
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

#[test]
fn prometheus_scrapes_the_daemon_with_job_name_beside_its_own_job() {
    let prometheus = tool("prometheus");
    let dir = tempfile::tempdir().expect("temp dir");
    let daemon_port = free_port();
    let config = dir.path().join("jobs.toml");
    write(
        &config,
        &format!(
            "[runbook]\nstate_dir = {state:?}\nshutdown_grace = \"1s\"\n\
             [server]\nlisten = \"127.0.0.1:{daemon_port}\"\n\
             [jobs.tick]\ndescription = \"every two seconds\"\nschedule = \"*/2 * * * * *\"\n\
             [[jobs.tick.items]]\nname = \"Look at the dashboards\"\nkind = \"manual\"\n",
            state = dir.path().join("state")
        ),
    );
    let daemon = Process::start(
        Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .arg("daemon")
            .env("RUNBOOK_LOG", "info"),
        dir.path().join("daemon.log"),
    );

    let prom_port = free_port();
    let prom_config = dir.path().join("prometheus.yml");
    write(
        &prom_config,
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules:?}\n\
             scrape_configs:\n  - job_name: runbook\n    static_configs:\n      - targets: [\"127.0.0.1:{daemon_port}\"]\n",
            rules = repo().join("systemd/alerts.yml")
        ),
    );
    let server = Process::start(
        Command::new(prometheus)
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}")),
        dir.path().join("prometheus.log"),
    );
    let logs = [&daemon, &server];

    wait_for("Prometheus ready", &logs, || {
        matches!(http_get(prom_port, "/-/ready"), Some((200, _))).then_some(())
    });
    wait_for("a successful scrape of the daemon", &logs, || {
        let data = api(prom_port, "query", "query", "up{job=\"runbook\"}");
        (data["result"][0]["value"][1] == "1").then_some(())
    });

    // A series of runbook's job `tick` carries both labels: `job_name` (ours) and `job` (the
    // scrape's), and nothing was renamed to `exported_job`.
    let series = wait_for("a finished run of tick in Prometheus", &logs, || {
        let data = api(
            prom_port,
            "series",
            "match[]",
            "runbook_job_last_run_timestamp_seconds",
        );
        data.as_array().filter(|s| !s.is_empty()).cloned()
    });
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0]["job_name"], "tick", "{series:?}");
    assert_eq!(series[0]["job"], "runbook", "{series:?}");
    assert_eq!(
        series[0]["instance"],
        format!("127.0.0.1:{daemon_port}"),
        "{series:?}"
    );
    let all = api(prom_port, "series", "match[]", "{__name__=~\"runbook_.+\"}");
    let all = all.as_array().cloned().unwrap_or_default();
    assert!(all.len() >= 8, "{all:?}");
    for s in &all {
        assert!(
            s.get("exported_job").is_none() && s["job"] == "runbook",
            "a runbook series whose job label clashed: {s}"
        );
    }
    let item = all
        .iter()
        .find(|s| s["__name__"] == "runbook_item_status")
        .unwrap_or_else(|| panic!("no runbook_item_status in {all:?}"));
    assert_eq!(item["job_name"], "tick", "{item}");
    assert_eq!(item["item"], "Look at the dashboards", "{item}");

    let build = api(prom_port, "query", "query", "runbook_build_info");
    let build = &build["result"][0];
    assert_eq!(
        build["metric"]["version"],
        env!("CARGO_PKG_VERSION"),
        "{build}"
    );
    assert_eq!(build["metric"]["commit"], runbook::GIT_COMMIT, "{build}");
    assert!(
        !runbook::GIT_COMMIT.is_empty() && build["value"][1] == "1",
        "{build}"
    );
    let reload = api(
        prom_port,
        "query",
        "query",
        "runbook_config_last_reload_successful",
    );
    assert_eq!(reload["result"][0]["value"][1], "1", "{reload}");

    // The server loaded the shipped rules and evaluates every one of them without error.
    let rules = wait_for("the rules evaluated", &logs, || {
        let data = api(prom_port, "rules", "type", "alert");
        let rules: Vec<Value> = data["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        (!rules.is_empty() && rules.iter().all(|r| r["health"] != "unknown")).then_some(rules)
    });
    for r in &rules {
        assert_eq!(r["health"], "ok", "{r}");
    }
    // A healthy daemon that just ran: nothing fires.
    let firing: Vec<&Value> = rules.iter().filter(|r| r["state"] == "firing").collect();
    assert!(firing.is_empty(), "{firing:?}");
}
