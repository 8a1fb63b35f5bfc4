//! Shared by the `ops_*` tests: write a config with one job, run it through the real CLI
//! binary, and read its JSON report.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A folder with a config file and a state folder; runs of its job share the state.
pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    /// A config whose job `t` has the given `[[jobs.t.items]]` tables (TOML text).
    pub fn new(items: &str) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let setup = Setup { dir };
        setup.write_config(items);
        setup
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("jobs.toml")
    }

    /// Replaces the job's items (the state folder is kept).
    pub fn write_config(&self, items: &str) {
        let state = self.dir.path().join("state");
        let text = format!(
            "[runbook]\ntimezone = \"Asia/Kolkata\"\nstate_dir = {state:?}\n\n[jobs.t]\ndescription = \"test\"\ntimeout = \"2m\"\n\n{items}\n"
        );
        std::fs::write(self.config(), text).expect("write config");
    }

    /// `runbook run-job t --format json --no-notify [extra...]`: (exit code, report).
    pub fn run(&self, extra: &[&str]) -> (i32, serde_json::Value) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_runbook"))
            .arg("--config")
            .arg(self.config())
            .args(["run-job", "t", "--format", "json", "--no-notify"])
            .args(extra)
            .output()
            .expect("run the runbook binary");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "no JSON report ({e}); exit {:?}\nstdout: {stdout}\nstderr: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), report)
    }

    /// Runs the job and returns the item called `name`.
    pub fn run_item(&self, name: &str) -> serde_json::Value {
        let (_, report) = self.run(&[]);
        item(&report, name)
    }
}

/// The item called `name` of a report.
pub fn item(report: &serde_json::Value, name: &str) -> serde_json::Value {
    report["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no item {name:?} in {report:#}"))
}

/// All detail lines of an item joined, for `contains` assertions.
pub fn details(item: &serde_json::Value) -> String {
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

/// A fixture file's text.
pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}
