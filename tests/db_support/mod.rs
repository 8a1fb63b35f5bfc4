//! Shared by the database tests (`db_items.rs`, `db_targets.rs`, `db_options.rs`): a config folder with a
//! jobs.toml, `runbook run-job --format json` on it, and a throwaway PostgreSQL with an `app`
//! database.
// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use runbook::face::pgcluster::TempCluster;

use serde_json::Value;

mod standby;
// Not every test binary that includes this module uses it.
#[allow(unused_imports)]
pub use standby::Standby;

/// A config folder with a jobs.toml.
pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    /// jobs.toml is `[runbook]` (time zone, state in the folder) followed by `body`.
    pub fn with_body(body: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let text = format!(
            "[runbook]\ntimezone = \"Asia/Kolkata\"\nstate_dir = \"{}\"\n\n{body}",
            state.display()
        );
        std::fs::write(dir.path().join("jobs.toml"), text).expect("write jobs.toml");
        Setup { dir }
    }

    /// With a `[targets.db]` at `url` (no TLS, `lock_timeout` 200 ms) plus `extra` target
    /// options, then `jobs`.
    pub fn new(url: &str, extra: &str, jobs: &str) -> Setup {
        Setup::with_body(&format!(
            "[targets.db]\nurl = \"{url}\"\nsslmode = \"disable\"\nlock_timeout = \"200ms\"\n{extra}\n{jobs}"
        ))
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write file");
        p
    }

    /// Runs `run-job JOB --format json --no-notify` (plus `args`); returns (exit code, report,
    /// stdout+stderr). The report is `null` when stdout is not JSON (nothing ran).
    pub fn run(&self, job: &str, args: &[&str]) -> (i32, Value, String) {
        let out = Command::cargo_bin("runbook")
            .expect("binary")
            .arg("--config")
            .arg(self.dir.path().join("jobs.toml"))
            .args(["run-job", job, "--format", "json", "--no-notify"])
            .args(args)
            .timeout(Duration::from_secs(180))
            .output()
            .expect("runs");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let all = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let report = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        (out.status.code().unwrap_or(-1), report, all)
    }
}

pub fn item<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["items"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == name))
        .unwrap_or_else(|| panic!("no item {name:?} in {report:#}"))
}

/// Runs `sql` in the `app` database with psql; its trimmed output.
pub fn q(pg: &TempCluster, sql: &str) -> String {
    pg.psql("app", sql, &[]).expect("psql").trim().to_string()
}

pub fn cluster_with_app_db() -> TempCluster {
    let pg = TempCluster::start().expect("PostgreSQL server binaries are needed for these tests");
    pg.create_db("app").expect("create db");
    pg
}

/// A psql session that holds a lock (or runs a statement) until dropped.
pub struct Holder(Child);

impl Holder {
    pub fn start(pg: &TempCluster, sql: &str) -> Holder {
        Holder::start_in(pg, "app", sql)
    }

    /// As [`Holder::start`], in database `db`.
    pub fn start_in(pg: &TempCluster, db: &str, sql: &str) -> Holder {
        let mut child = StdCommand::new(pg.tool("psql"))
            .args([
                "-X",
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("psql");
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(sql.as_bytes()).expect("write");
        // Keep stdin open (moved into a thread) so psql waits instead of exiting.
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(120));
            drop(stdin);
        });
        Holder(child)
    }

    /// A session holding ACCESS EXCLUSIVE on `table` (as written in SQL), once it is granted.
    pub fn lock(pg: &TempCluster, table: &str) -> Holder {
        Holder::lock_then(pg, table, "SELECT pg_sleep(120);")
    }

    /// A session that takes ACCESS EXCLUSIVE on `table` in a transaction and then runs `then`
    /// (which may end the transaction); returns once the lock is granted.
    pub fn lock_then(pg: &TempCluster, table: &str, then: &str) -> Holder {
        let h = Holder::start(
            pg,
            &format!("BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; {then}\n"),
        );
        wait_for(
            pg,
            &format!(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE relation = '{table}'::regclass AND mode = 'AccessExclusiveLock' AND granted)"
            ),
        );
        h
    }
}

/// Ends the session holding ACCESS EXCLUSIVE on `table` (dropping a [`Holder`] does not: its
/// backend, asleep, would not notice psql going away); asserts there was exactly one.
pub fn end_lock_holder(pg: &TempCluster, table: &str) {
    assert_eq!(
        q(
            pg,
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'relation' AND relation = '{table}'::regclass AND mode = 'AccessExclusiveLock' AND granted"
            )
        ),
        "1"
    );
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (30 s at most) until `sql` returns `t`.
pub fn wait_for(pg: &TempCluster, sql: &str) {
    let start = Instant::now();
    while q(pg, sql) != "t" {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {sql}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Makes `role` (a superuser) log in over TCP only with `password`, by scram-sha-256: a
/// `host` line for it goes first in pg_hba.conf (the other roles keep `trust`, so the
/// tests' psql still works), then the server reloads. Returns once a connection without the
/// password is refused and one with it accepted: a target that reaches this server as `role`
/// proves runbook sent the password.
pub fn require_password(pg: &TempCluster, role: &str, password: &str) {
    pg.psql(
        "postgres",
        &format!(
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE \"{role}\" LOGIN SUPERUSER PASSWORD :'pw'"
        ),
        &[("pw", password)],
    )
    .expect("create the password role");
    let hba = pg.data.join("pg_hba.conf");
    let text = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let first_host = lines
        .iter()
        .position(|l| l.trim_start().starts_with("host"))
        .unwrap_or(lines.len());
    for (i, cidr) in ["127.0.0.1/32", "::1/128"].iter().enumerate() {
        lines.insert(
            first_host + i,
            format!("host all \"{role}\" {cidr} scram-sha-256"),
        );
    }
    std::fs::write(&hba, lines.join("\n") + "\n").expect("write pg_hba.conf");
    pg.psql("postgres", "SELECT pg_reload_conf()", &[])
        .expect("reload");
    let login = |pw: Option<&str>| {
        let mut cmd = StdCommand::new(pg.tool("psql"));
        cmd.arg(format!(
            "host=127.0.0.1 port={} user={role} dbname=postgres sslmode=disable",
            pg.port
        ))
        .args(["-X", "-w", "-At", "-c", "SELECT 1"])
        .env_remove("PGPASSWORD")
        .env("PGPASSFILE", "/dev/null");
        if let Some(pw) = pw {
            cmd.env("PGPASSWORD", pw);
        }
        cmd.output().expect("psql").status.success()
    };
    let start = Instant::now();
    while login(None) || !login(Some(password)) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the server did not start asking {role} for a password"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
