//! Fixtures shared by `tests/backup.rs` and `tests/restore_drill.rs`: a throwaway cluster with a
//! small trading database, real `pg_dump` output, files aged past `settle`, and running
//! `runbook run-job` end to end (a jobs.toml in a temporary folder, `--format json`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use runbook::face::pgcluster::TempCluster;

/// Starts a cluster and loads `trading` with orders, positions and transactions.
pub fn trading_cluster() -> TempCluster {
    let c = TempCluster::start()
        .expect("a throwaway PostgreSQL (initdb/pg_ctl) is needed for this test");
    c.create_db("trading").unwrap();
    c.psql(
        "trading",
        "CREATE TABLE orders (id bigserial PRIMARY KEY, symbol text NOT NULL, qty int NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE positions (account int, symbol text, qty int, PRIMARY KEY (account, symbol));
         CREATE TABLE transactions (id bigserial PRIMARY KEY, order_id bigint REFERENCES orders(id), amount numeric(18,2));
         INSERT INTO orders (symbol, qty) SELECT 'SYM' || (g % 50), g % 100 FROM generate_series(1, 20000) g;
         INSERT INTO positions SELECT g, 'SYM' || g, g FROM generate_series(1, 500) g;
         INSERT INTO transactions (order_id, amount) SELECT g, g * 1.5 FROM generate_series(1, 20000) g;",
        &[],
    )
    .unwrap();
    c
}

/// `pg_dump` of `db` in `format` (`c`, `d`, `p`) to `out`.
pub fn pg_dump(c: &TempCluster, db: &str, format: &str, out: &Path, extra: &[&str]) {
    let st = Command::new(c.tool("pg_dump"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &c.port.to_string(),
            "-U",
            &c.superuser,
            "-F",
            format,
            "-f",
        ])
        .arg(out)
        .args(extra)
        .arg(db)
        .status()
        .expect("pg_dump runs");
    assert!(st.success(), "pg_dump failed");
}

/// Sets the modification time of a file (or, recursively, of every file and folder of a
/// folder) to `ago`.
pub fn age(path: &Path, ago: Duration) {
    let t = SystemTime::now() - ago;
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            age(&e.unwrap().path(), ago);
        }
        std::fs::File::open(path).unwrap().set_modified(t).unwrap();
    } else {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
}

/// Writes a `sha256sum`-format sidecar for `file`.
pub fn write_sidecar(file: &Path) {
    let out = Command::new("sha256sum")
        .arg(file.file_name().unwrap())
        .current_dir(file.parent().unwrap())
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut side = file.as_os_str().to_owned();
    side.push(".sha256");
    std::fs::write(PathBuf::from(side), out.stdout).unwrap();
}

/// A folder with a jobs.toml and a state folder.
pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    /// `items` is TOML for `[[jobs.t.items]]` tables (and any `[targets.x]` sections before them).
    pub fn new(targets: &str, items: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            "[runbook]\ntimezone = \"Asia/Kolkata\"\nstate_dir = \"{}\"\nhostname = \"test\"\n\n{targets}\n\n[jobs.t]\ndescription = \"test\"\ntimeout = \"5m\"\n\n{items}\n",
            dir.path().join("state").display()
        );
        std::fs::write(dir.path().join("jobs.toml"), toml).unwrap();
        Setup { dir }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("jobs.toml")
    }

    pub fn command(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_runbook"));
        cmd.arg("--config")
            .arg(self.config())
            .args(["run-job", "t", "--no-notify", "--format", "json"])
            .args(extra);
        cmd
    }

    /// Runs the job; returns the exit code and the first item of the JSON report.
    pub fn run(&self, extra: &[&str]) -> (i32, serde_json::Value) {
        let out = self.command(extra).output().unwrap();
        let code = out.status.code().unwrap_or(-1);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "no JSON report ({e}); exit {code}\nstdout: {stdout}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (code, report["items"][0].clone())
    }
}

/// TOML string literal of a path.
pub fn q(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// The scratch databases left on a cluster.
pub fn drill_databases(c: &TempCluster) -> Vec<String> {
    c.psql(
        "postgres",
        "SELECT datname FROM pg_database WHERE datname LIKE 'runbook\\_drill\\_%'",
        &[],
    )
    .unwrap()
    .lines()
    .map(str::to_string)
    .filter(|l| !l.is_empty())
    .collect()
}
