//! A streaming standby of a test's [`TempCluster`] (`pg_basebackup -R`), on its own free port,
//! for the tests of items that must refuse a standby or check one (`db_items`, `wal_archive`,
//! `replication`). Dropping it stops the server (also when a test fails) and removes its folder.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use runbook::face::pgcluster::{self, TempCluster};

use super::free_port;
use super::pg::wait_until_gives;

pub struct Standby {
    /// Its temporary folder (owned by `postgres` when we are root): `data/`, the log, and
    /// whatever a test puts beside them.
    dir: Option<tempfile::TempDir>,
    data: PathBuf,
    pub port: u16,
    bin: PathBuf,
    /// `postgres` when we are root (PostgreSQL refuses root).
    run_as: Option<String>,
    running: bool,
}

fn tool(bin: &Path, name: &str) -> PathBuf {
    pgcluster::tool_in(bin, name)
}

/// Runs `program args` as `user`; panics with its output when it fails.
fn run_as(user: &Option<String>, program: &Path, args: &[&str]) -> String {
    pgcluster::run_as(user.as_deref(), program, args).unwrap_or_else(|e| panic!("{e:#}"))
}

impl Standby {
    /// A standby of `primary` (whose pg_hba.conf from `initdb -A trust` allows replication from
    /// 127.0.0.1; wal_level replica and max_wal_senders are the defaults); returns once the
    /// primary sees it streaming.
    pub fn start(primary: &TempCluster) -> Standby {
        Standby::start_with(primary, "")
    }

    /// As [`Standby::start`], with `conf` appended to the standby's postgresql.conf.
    pub fn start_with(primary: &TempCluster, conf: &str) -> Standby {
        let user = pgcluster::server_user().unwrap_or_else(|e| panic!("{e:#}"));
        let dir = pgcluster::server_folder("runbook-standby-", user.as_deref())
            .unwrap_or_else(|e| panic!("{e:#}"));
        let data = dir.path().join("data");
        let bin = primary.bin.clone();
        let port = free_port();
        run_as(
            &user,
            &tool(&bin, "pg_basebackup"),
            &[
                "-R",
                "-X",
                "stream",
                "-D",
                data.to_str().unwrap(),
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-c",
                "fast",
                "--no-sync",
            ],
        );
        let path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).expect("read postgresql.conf");
        text.push_str(&format!(
            "\nport = {port}\nunix_socket_directories = '{}'\nhot_standby = on\n{conf}\n",
            dir.path().display()
        ));
        std::fs::write(&path, text).expect("write postgresql.conf");
        let mut s = Standby {
            dir: Some(dir),
            data,
            port,
            bin,
            run_as: user,
            running: false,
        };
        s.pg_ctl("start");
        s.running = true;
        wait_until_gives(
            primary,
            "SELECT count(*) > 0 FROM pg_stat_replication WHERE state = 'streaming'",
            "t",
        );
        s
    }

    /// Its folder (the data directory is `data/` in it).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("standby folder").path()
    }

    /// A URL for database `db` on the standby.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs `sql` on the standby's `postgres` database with psql; its trimmed output.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(tool(&self.bin, "psql"))
            .args([
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
            ])
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", "postgres", "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql on the standby: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Polls `sql` on the standby until it prints `want` (60 s at most).
    pub fn wait_until(&self, sql: &str, want: &str) {
        let start = Instant::now();
        loop {
            let got = self.psql(sql);
            if got == want {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{sql} on the standby still gives {got:?}, not {want:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Restarts the server (after a change to its postgresql.conf).
    pub fn restart(&mut self) {
        self.pg_ctl("restart");
        self.running = true;
    }

    /// Stops the server (`-m fast`), keeping the folder.
    pub fn stop(&mut self) {
        if self.running {
            self.running = false;
            self.pg_ctl("stop");
        }
    }

    /// `pg_ctl ACTION` with its log in the folder, a fast shutdown, waiting up to 60 s.
    fn pg_ctl(&self, action: &str) {
        let log = self.dir().join("standby.log");
        let log = log.to_str().unwrap();
        self.pg_ctl_args(&["-l", log, "-m", "fast", "-w", "-t", "60", action]);
    }

    /// `pg_ctl -D DATA ARGS` as the server's user.
    fn pg_ctl_args(&self, args: &[&str]) -> String {
        let mut all = vec!["-D", self.data.to_str().unwrap()];
        all.extend(args);
        run_as(&self.run_as, &tool(&self.bin, "pg_ctl"), &all)
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        if self.running {
            self.running = false;
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.pg_ctl_args(&["-m", "immediate", "-w", "-t", "30", "stop"])
            }));
        }
        if let Some(d) = self.dir.take() {
            let _ = d.close();
        }
    }
}
