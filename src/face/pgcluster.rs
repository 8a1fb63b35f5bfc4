//! A throwaway PostgreSQL cluster in a temporary folder, for `demo`, the tests and the
//! benchmarks.
//!
//! PostgreSQL refuses to run as root, so when we are root the server runs as the `postgres`
//! user (`runuser -u postgres`), and the folder is handed to that user. The server listens on a
//! free loopback port and a socket in the folder, with `trust` authentication (it is ours and
//! lives only as long as this value). Dropping the value stops the server (`pg_ctl stop -m
//! immediate`) and removes the folder, so nothing leaks even when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// A running throwaway cluster.
pub struct TempCluster {
    /// Holds the temporary folder (removed on drop).
    dir: Option<tempfile::TempDir>,
    /// The data directory.
    pub data: PathBuf,
    pub port: u16,
    /// Folder of the server binaries (initdb, pg_ctl, pg_dump, ...).
    pub bin: PathBuf,
    /// The OS user the server runs as (`postgres` when we are root).
    run_as: Option<String>,
    /// The database superuser name.
    pub superuser: String,
    stopped: bool,
}

pub use crate::base::pgbin::find_bin_dir;

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The OS user a server of ours runs as: `postgres` when we are root (PostgreSQL refuses
/// root), else ourselves (`None`). Errs when we are root and there is no `postgres` user.
pub fn server_user() -> Result<Option<String>> {
    Ok(crate::base::pgbin::server_user()?.map(|u| u.name))
}

/// A new temporary folder (`prefix` + random) that `user` owns, for a server's data directory
/// and log (removed when the value is dropped).
pub fn server_folder(prefix: &str, user: Option<&str>) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("cannot create a temporary folder")?;
    if let Some(user) = user {
        let u = nix::unistd::User::from_name(user)?
            .with_context(|| format!("there is no `{user}` user"))?;
        nix::unistd::chown(dir.path(), Some(u.uid), Some(u.gid))?;
    }
    Ok(dir)
}

/// Path of the tool `name` in the folder `bin`, or just `name` (found on `$PATH`) when the
/// folder has none.
pub fn tool_in(bin: &Path, name: &str) -> PathBuf {
    let p = bin.join(name);
    if p.exists() { p } else { PathBuf::from(name) }
}

/// Runs `program args` as `user` (`runuser -u USER --`; `None`: as ourselves), without a shell,
/// from `/`, stdin closed. Ok is its standard output; Err says how it failed, with its output.
pub fn run_as(user: Option<&str>, program: &Path, args: &[&str]) -> Result<String> {
    let mut cmd = match user {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.arg("-u").arg(user).arg("--").arg(program);
            c
        }
        None => Command::new(program),
    };
    let out = cmd
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} {:?} failed: {}{}",
            program.display(),
            args,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl TempCluster {
    /// initdb + start. Takes a few seconds.
    pub fn start() -> Result<TempCluster> {
        TempCluster::start_with(find_bin_dir()?)
    }

    /// As [`TempCluster::start`], with the server binaries of folder `bin` (another
    /// PostgreSQL version than the machine's). Client tools missing from it (psql, pg_dump)
    /// come from `$PATH`.
    pub fn start_with(bin: PathBuf) -> Result<TempCluster> {
        anyhow::ensure!(
            bin.join("initdb").exists() && bin.join("pg_ctl").exists(),
            "no initdb and pg_ctl in {}",
            bin.display()
        );
        let run_as = server_user()?;
        let dir = server_folder("runbook-pg-", run_as.as_deref())?;
        let data = dir.path().join("data");
        let superuser = "postgres".to_string();
        let port = free_port()?;
        let c = TempCluster {
            dir: Some(dir),
            data,
            port,
            bin,
            run_as,
            superuser,
            stopped: false,
        };
        c.run(
            &c.tool("initdb"),
            &[
                "-D",
                c.data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            ],
        )
        .context("initdb failed")?;
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nfsync = off\nfull_page_writes = off\nsynchronous_commit = off\nmax_connections = 100\nshared_preload_libraries = 'pg_stat_statements'\nlogging_collector = off\n",
            port,
            c.socket_dir().display()
        );
        let conf_path = c.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap_or_default();
        text.push_str(&conf);
        std::fs::write(&conf_path, text).context("cannot write postgresql.conf")?;
        let log = c.dir_path().join("server.log");
        c.run(
            &c.tool("pg_ctl"),
            &[
                "-D",
                c.data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .with_context(|| {
            format!(
                "pg_ctl start failed; server log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
        Ok(c)
    }

    fn dir_path(&self) -> &Path {
        self.dir.as_ref().expect("dir lives until drop").path()
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir_path().to_path_buf()
    }

    /// Path of a server binary (pg_dump, pg_restore, psql, ...).
    pub fn tool(&self, name: &str) -> PathBuf {
        tool_in(&self.bin, name)
    }

    /// Runs `program args` as the server's user ([`run_as`]).
    pub fn run(&self, program: &Path, args: &[&str]) -> Result<String> {
        run_as(self.run_as.as_deref(), program, args)
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{}",
            self.superuser, self.port, db
        )
    }

    /// Runs SQL through psql against `db` (ON_ERROR_STOP), with `-v` variables.
    pub fn psql(&self, db: &str, sql: &str, vars: &[(&str, &str)]) -> Result<String> {
        let mut cmd = Command::new(self.tool("psql"));
        cmd.args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            &self.superuser,
            "-d",
            db,
            "-At",
        ]);
        for (k, v) in vars {
            cmd.arg("-v").arg(format!("{k}={v}"));
        }
        let out = cmd
            .arg("-f")
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run psql")?;
        let mut child = out;
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("piped");
            stdin.write_all(sql.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates a database.
    pub fn create_db(&self, name: &str) -> Result<()> {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")),
            &[],
        )
        .map(|_| ())
    }

    /// Appends `conf` to postgresql.conf (later lines win) and restarts the server.
    pub fn restart_with(&self, conf: &str) -> Result<()> {
        let conf_path = self.data.join("postgresql.conf");
        let mut text =
            std::fs::read_to_string(&conf_path).context("cannot read postgresql.conf")?;
        text.push_str(&format!("\n{conf}\n"));
        std::fs::write(&conf_path, text).context("cannot write postgresql.conf")?;
        let log = self.dir_path().join("server.log");
        self.run(
            &self.tool("pg_ctl"),
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "restart",
            ],
        )
        .map(|_| ())
    }

    /// Stops the server and removes the folder now (also done on drop).
    pub fn stop(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let r = self.run(
            &self.tool("pg_ctl"),
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "-t",
                "30",
                "stop",
            ],
        );
        if let Some(d) = self.dir.take() {
            let _ = d.close();
        }
        r.map(|_| ())
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
