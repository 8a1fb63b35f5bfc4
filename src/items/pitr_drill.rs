//! `restore_drill` with `mode = "pitr"`: a point-in-time restore drill.
//!
//! Takes the newest base backup in `base_backup_dir` (pg_basebackup's tar format, `base.tar`
//! or `base.tar.gz` with `pg_wal.tar[.gz]`, or its plain format), restores it into a scratch
//! data folder under the state folder, starts a throwaway server on it (the backup's major
//! version) with `restore_command` copying from `wal_archive_dir` and the recovery target,
//! waits until recovery has ended and the server is promoted, runs the `checks` against it,
//! then stops it and removes the folder. It reports the time to a queryable server (RTO,
//! `data.value`) and how old the newest replayed transaction is at the drill's start (RPO,
//! `data.rpo_seconds`).
//!
//! Invariants:
//! - The source is only read: the backup is extracted or copied, the archive is read by the
//!   restore_command (`cp`), and the scratch server runs with `archive_mode = off` so nothing it
//!   does after promotion reaches the archive. A plain backup with tablespaces (symlinks to the
//!   source's folders) is refused before anything starts.
//! - The scratch server never outlives the drill: it is stopped (SIGQUIT, then SIGKILL to its
//!   process group) on success, failure, timeout and cancellation (SIGTERM of `run-job`, daemon
//!   shutdown), by a guard even when this future is dropped midway; its pid is recorded in the
//!   scratch folder, so a server left by a crashed runbook is stopped and the folder removed
//!   ([`clean_leftover`]) when the daemon starts and in its daily housekeeping (unless a live run
//!   holds the job's lock), and at the next drill of the item.
//! - The server is started directly (`postgres -D ... -c ...`, no pg_ctl, no shell of ours), with
//!   an empty environment but PATH, as the `postgres` user when runbook runs as root. It listens
//!   on a free loopback port that accepts nobody (its own pg_hba.conf) and on a unix socket in
//!   the scratch folder (0700), where runbook logs in (`trust`).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::restore_drill::{CheckResult, RestoreDrill, fmt_secs, run_check};
use super::{ItemCtx, Outcome, Prepare, Status};
use crate::base::units::Dur;

/// How long the server may take to stop before its process group is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The name of our pid record in the scratch folder.
const PID_FILE: &str = "drill-server.pid";

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq)]
pub enum RecoveryTarget {
    /// All the WAL in the archive.
    Latest,
    /// `now - <duration>`: that long before the drill starts.
    Ago(Duration),
    /// A fixed time.
    At(DateTime<Utc>),
}

/// Why `recovery_target` was refused (the message quotes it as written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRecoveryTarget {
    #[error(
        "recovery_target {0:?}: expected \"latest\", \"now - <duration>\" (e.g. \"now - 5m\") or an RFC 3339 time"
    )]
    Form(String),
    #[error("recovery_target {written:?}: {reason}")]
    Duration { written: String, reason: String },
}

impl RecoveryTarget {
    pub fn parse(s: &str) -> Result<RecoveryTarget, BadRecoveryTarget> {
        let t = s.trim();
        if t == "latest" {
            return Ok(RecoveryTarget::Latest);
        }
        if let Some(rest) = t.strip_prefix("now") {
            let rest = rest.trim_start();
            let Some(d) = rest.strip_prefix('-') else {
                return Err(BadRecoveryTarget::Form(s.to_string()));
            };
            let d: Dur = d
                .trim()
                .parse()
                .map_err(|e: String| BadRecoveryTarget::Duration {
                    written: s.to_string(),
                    reason: e,
                })?;
            return Ok(RecoveryTarget::Ago(d.0));
        }
        DateTime::parse_from_rfc3339(t)
            .map(|d| RecoveryTarget::At(d.with_timezone(&Utc)))
            .map_err(|_| BadRecoveryTarget::Form(s.to_string()))
    }

    /// The time to stop at (None: the end of the archive).
    fn time(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            RecoveryTarget::Latest => None,
            RecoveryTarget::Ago(d) => {
                Some(now - chrono::Duration::from_std(*d).unwrap_or_default())
            }
            RecoveryTarget::At(t) => Some(*t),
        }
    }
}

/// Load-time checks of a `mode = "pitr"` drill.
pub fn prepare(o: &RestoreDrill, p: &mut Prepare) {
    if !o.dir.as_os_str().is_empty() {
        p.error(
            "dir",
            "dir is for mode = \"dump\"; a pitr drill takes base_backup_dir and wal_archive_dir",
        );
    }
    for (set, key) in [
        (o.scratch_database.is_some(), "scratch_database"),
        (o.restore_role.is_some(), "restore_role"),
        (o.restore_password.is_some(), "restore_password"),
        (o.keep_on_failure, "keep_on_failure"),
    ] {
        if set {
            p.error(
                key,
                format!("{key} is for mode = \"dump\" (a pitr drill restores into a throwaway server it removes afterwards)"),
            );
        }
    }
    match &o.base_backup_dir {
        None => p.error(
            "base_backup_dir",
            "mode = \"pitr\" needs base_backup_dir (the folder of pg_basebackup outputs)",
        ),
        Some(d) if !p.path(d).is_dir() => p.warning(format!(
            "base_backup_dir {} does not exist (yet)",
            p.path(d).display()
        )),
        _ => {}
    }
    match &o.wal_archive_dir {
        None => p.error(
            "wal_archive_dir",
            "mode = \"pitr\" needs wal_archive_dir (the folder archive_command copies WAL into)",
        ),
        Some(d) if !p.path(d).is_dir() => p.warning(format!(
            "wal_archive_dir {} does not exist (yet)",
            p.path(d).display()
        )),
        _ => {}
    }
    if let Some(t) = &o.recovery_target
        && let Err(e) = RecoveryTarget::parse(t)
    {
        p.error("recovery_target", e.to_string());
    }
    for (w, f, name) in [
        (o.rto_warn, o.rto_fail, "rto"),
        (o.rpo_warn, o.rpo_fail, "rpo"),
    ] {
        if let (Some(w), Some(f)) = (w, f)
            && w.0 > f.0
        {
            p.error(
                &format!("{name}_warn"),
                format!("{name}_warn {w} is above {name}_fail {f}"),
            );
        }
    }
}

/// Load-time check of a dump drill: the pitr options do not apply to it.
pub fn refuse_pitr_options(o: &RestoreDrill, p: &mut Prepare) {
    for (set, key) in [
        (o.base_backup_dir.is_some(), "base_backup_dir"),
        (o.wal_archive_dir.is_some(), "wal_archive_dir"),
        (o.recovery_target.is_some(), "recovery_target"),
        (o.database.is_some(), "database"),
        (o.scratch_dir.is_some(), "scratch_dir"),
        (o.rto_warn.is_some(), "rto_warn"),
        (o.rto_fail.is_some(), "rto_fail"),
        (o.rpo_warn.is_some(), "rpo_warn"),
        (o.rpo_fail.is_some(), "rpo_fail"),
    ] {
        if set {
            p.error(
                key,
                format!("{key} is for mode = \"pitr\" (set mode = \"pitr\", or leave it out)"),
            );
        }
    }
}

/// One pg_basebackup output.
#[derive(Debug, Clone)]
struct BaseBackup {
    path: PathBuf,
    name: String,
    format: BackupFormat,
    modified: SystemTime,
}

#[derive(Debug, Clone, PartialEq)]
enum BackupFormat {
    /// `base.tar[.gz]` and, with `-X stream`, `pg_wal.tar[.gz]`.
    Tar {
        base: PathBuf,
        wal: Option<PathBuf>,
    },
    Plain,
}

impl BackupFormat {
    fn as_str(&self) -> &'static str {
        match self {
            BackupFormat::Tar { base, .. } if is_gz(base) => "tar.gz",
            BackupFormat::Tar { .. } => "tar",
            BackupFormat::Plain => "plain",
        }
    }
}

fn is_gz(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "gz")
}

/// The backup in folder `d`, if it holds one.
fn backup_in(d: &Path) -> Option<Result<BaseBackup, String>> {
    let name = d
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| d.display().to_string());
    let first = |names: &[&str]| names.iter().map(|n| d.join(n)).find(|p| p.is_file());
    let (format, main) = if let Some(base) = first(&["base.tar", "base.tar.gz"]) {
        let wal = first(&["pg_wal.tar", "pg_wal.tar.gz"]);
        (
            BackupFormat::Tar {
                base: base.clone(),
                wal,
            },
            base,
        )
    } else if d.join("backup_label").is_file() && d.join("PG_VERSION").is_file() {
        (BackupFormat::Plain, d.join("backup_label"))
    } else if let Some(other) = ["base.tar.lz4", "base.tar.zst", "base.tar.bz2"]
        .iter()
        .map(|n| d.join(n))
        .find(|p| p.is_file())
    {
        return Some(Err(format!(
            "{}: only uncompressed and gzip'd tar base backups are supported (pg_basebackup -Ft [-z])",
            other.display()
        )));
    } else {
        return None;
    };
    let modified = std::fs::metadata(&main)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Some(Ok(BaseBackup {
        path: d.to_path_buf(),
        name,
        format,
        modified,
    }))
}

/// The newest base backup in `dir` (a sub-folder per backup, or `dir` itself) that was
/// finished (its main file written) by `before`, the recovery target: recovery can only go
/// forward from a backup.
fn newest_backup(dir: &Path, before: Option<DateTime<Utc>>) -> Result<BaseBackup, String> {
    let all = all_backups(dir)?;
    let n = all.len();
    let usable: Vec<&BaseBackup> = all
        .iter()
        .filter(|b| before.is_none_or(|t| DateTime::<Utc>::from(b.modified) <= t))
        .collect();
    match (usable.last(), before) {
        (Some(b), _) => Ok((*b).clone()),
        (None, Some(t)) => Err(format!(
            "no base backup in {} was finished before the recovery target {} ({n} newer): recovery only goes forward from a backup",
            dir.display(),
            t.format("%Y-%m-%d %H:%M:%S UTC")
        )),
        (None, None) => Err(format!("no base backup in {}", dir.display())),
    }
}

/// Every base backup in `dir`, oldest first (at least one).
fn all_backups(dir: &Path) -> Result<Vec<BaseBackup>, String> {
    if !dir.is_dir() {
        return Err(format!(
            "base backup folder {} does not exist",
            dir.display()
        ));
    }
    if let Some(b) = backup_in(dir) {
        return b.map(|b| vec![b]);
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read base backup folder {}: {e}", dir.display()))?;
    let mut found: Vec<BaseBackup> = Vec::new();
    let mut refused = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        if !p.is_dir() {
            continue;
        }
        match backup_in(&p) {
            Some(Ok(b)) => found.push(b),
            Some(Err(e)) => refused.push(e),
            None => {}
        }
    }
    found.sort_by(|a, b| (a.modified, &a.name).cmp(&(b.modified, &b.name)));
    match found.last() {
        Some(_) => Ok(found),
        None if !refused.is_empty() => Err(refused.join("; ")),
        None => Err(format!(
            "no base backup in {} (expected sub-folders written by pg_basebackup -D: base.tar[.gz] or a plain data folder with backup_label)",
            dir.display()
        )),
    }
}

/// `restore_command` copying from `archive`: run by PostgreSQL through `sh -c`, so the path is
/// single-quoted for the shell and its `%` doubled for PostgreSQL's own `%f`/`%p` expansion.
pub fn restore_command(archive: &Path) -> String {
    let path = archive.to_string_lossy().replace('%', "%%");
    let quoted = format!("'{}'", path.replace('\'', r"'\''"));
    format!("cp {quoted}/%f %p")
}

/// A file-name-safe form of `s`.
fn slug(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    // Distinct names with the same slug stay apart.
    let h = s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    out.push_str(&format!("-{:08x}", h as u32));
    out
}

/// Refuses a scratch folder the server's user cannot reach (a 0700 folder above it).
fn check_reachable(dir: &Path, user: &nix::unistd::User) -> Result<(), String> {
    for a in dir.ancestors().skip(1) {
        let Ok(m) = std::fs::metadata(a) else {
            continue;
        };
        let mode = m.permissions().mode();
        let ok = mode & 0o001 != 0
            || (m.uid() == user.uid.as_raw() && mode & 0o100 != 0)
            || (m.gid() == user.gid.as_raw() && mode & 0o010 != 0);
        if !ok {
            return Err(format!(
                "the scratch server runs as `postgres` (PostgreSQL refuses root), which cannot reach {} (mode {:o}): allow it through (chmod o+x {}) or set scratch_dir to a folder it can reach",
                a.display(),
                mode & 0o7777,
                a.display()
            ));
        }
    }
    Ok(())
}

/// The folder of the server binaries of major version `major`: `/usr/lib/postgresql/<major>/bin`,
/// else `$PG_BIN`, else `$PATH`, each only when its `postgres` is that major version.
fn server_bin(major: &str) -> Result<PathBuf, String> {
    let mut candidates = vec![PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"))];
    if let Some(p) = std::env::var_os("PG_BIN") {
        candidates.push(PathBuf::from(p));
    }
    candidates.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    for dir in candidates {
        let postgres = dir.join("postgres");
        if !postgres.is_file() {
            continue;
        }
        let Ok(out) = std::process::Command::new(&postgres)
            .arg("--version")
            .env_clear()
            .output()
        else {
            continue;
        };
        // "postgres (PostgreSQL) 15.8 (Debian 15.8-1)"
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text.split_whitespace().nth(2).unwrap_or("");
        if version.split('.').next() == Some(major) {
            return Ok(dir);
        }
    }
    Err(format!(
        "PostgreSQL {major} server binaries (postgres) not found: the base backup is of version {major}; install them (Debian: apt-get install postgresql-{major}) or set PG_BIN"
    ))
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// True when process `pid` runs (not a zombie) with `needle` in its command line.
fn process_matches(pid: i32, needle: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
    alive(pid) && (cmdline.contains(needle) || cwd == Path::new(needle))
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

/// Stops the server `pid` (leader of its own process group): SIGQUIT (immediate shutdown: it
/// stops its backends), then SIGKILL to the group after [`STOP_GRACE`]. Blocking.
fn stop_server(pid: i32) {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    let p = Pid::from_raw(pid);
    let _ = kill(p, Signal::SIGQUIT);
    let start = std::time::Instant::now();
    while alive(pid) && start.elapsed() < STOP_GRACE {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Whatever is left of the group (backends of a killed postmaster) goes too.
    let _ = killpg(p, Signal::SIGKILL);
    let start = std::time::Instant::now();
    while alive(pid) && start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What [`clean_leftover`] did with a scratch folder a crashed drill left.
#[derive(Debug)]
pub struct Leftover {
    /// The folder (removed unless `error` says why not).
    pub scratch: PathBuf,
    /// The servers it stopped: pids that still ran on that folder's data.
    pub stopped: Vec<i32>,
    /// Why the folder could not be removed.
    pub error: Option<String>,
}

impl std::fmt::Display for Leftover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(e) = &self.error {
            return write!(f, "could not remove {}: {e}", self.scratch.display());
        }
        write!(
            f,
            "a scratch folder left by an earlier drill ({}) was removed",
            self.scratch.display()
        )?;
        if !self.stopped.is_empty() {
            let pids: Vec<String> = self.stopped.iter().map(|p| p.to_string()).collect();
            write!(f, " after stopping its server (pid {})", pids.join(", "))?;
        }
        Ok(())
    }
}

/// Removes what a crashed drill left in `scratch`: stops its server (pid from our record or the
/// server's own `postmaster.pid`, only when that process still runs on this folder) and removes
/// the folder. None when there is no such folder. Blocking (stopping a server may take
/// [`STOP_GRACE`]).
///
/// The caller makes sure no drill is using the folder: the drill itself calls it before it
/// starts (under its job's lock), the daemon's sweep while it holds the job's lock.
pub fn clean_leftover(scratch: &Path) -> Option<Leftover> {
    if !scratch.exists() {
        return None;
    }
    let data = scratch.join("data");
    let needle = data.display().to_string();
    let mut stopped = Vec::new();
    for f in [scratch.join(PID_FILE), data.join("postmaster.pid")] {
        let Some(pid) = std::fs::read_to_string(&f)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        else {
            continue;
        };
        if pid > 1 && !stopped.contains(&pid) && process_matches(pid, &needle) {
            stop_server(pid);
            stopped.push(pid);
        }
    }
    let error = std::fs::remove_dir_all(scratch)
        .err()
        .map(|e| e.to_string());
    Some(Leftover {
        scratch: scratch.to_path_buf(),
        stopped,
        error,
    })
}

/// Stops the scratch server and removes the scratch folder when dropped armed: the backstop
/// for every way out of the drill (the runner dropping this future included).
struct ScratchServer {
    scratch: PathBuf,
    pid: Option<i32>,
    armed: bool,
}

impl ScratchServer {
    /// Stops and removes now; true when the folder is gone.
    fn finish(&mut self) -> bool {
        if let Some(pid) = self.pid.take() {
            stop_server(pid);
        }
        self.armed = false;
        let _ = std::fs::remove_dir_all(&self.scratch);
        !self.scratch.exists()
    }
}

impl Drop for ScratchServer {
    fn drop(&mut self) {
        if self.armed {
            self.finish();
        }
    }
}

/// A child process run to completion, killed when cancelled or past the deadline.
async fn run_child(
    mut cmd: tokio::process::Command,
    what: &str,
    ctx: &ItemCtx,
) -> Result<(), String> {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| format!("cannot run {what}: {e}"))?;
    let out = tokio::select! {
        biased;
        _ = ctx.cancel.cancelled() => return Err("interrupted".into()),
        _ = tokio::time::sleep_until(ctx.deadline) => return Err("timed out".into()),
        o = child.wait_with_output() => o.map_err(|e| format!("{what}: {e}"))?,
    };
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(4).collect();
        Err(format!(
            "{what} failed ({}): {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ))
    }
}

/// Restores `b` into `data` (which exists, empty).
async fn restore_files(b: &BaseBackup, data: &Path, ctx: &ItemCtx) -> Result<(), String> {
    match &b.format {
        BackupFormat::Tar { base, wal } => {
            let extract = |file: &Path, into: &Path| {
                let mut cmd = tokio::process::Command::new("tar");
                cmd.arg("-x")
                    .arg("--no-same-owner")
                    .arg("-C")
                    .arg(into)
                    .arg("-f")
                    .arg(file);
                if is_gz(file) {
                    cmd.arg("-z");
                }
                cmd
            };
            run_child(
                extract(base, data),
                &format!("tar -x {}", base.display()),
                ctx,
            )
            .await?;
            if let Some(wal) = wal {
                let pg_wal = data.join("pg_wal");
                std::fs::create_dir_all(&pg_wal)
                    .map_err(|e| format!("cannot create {}: {e}", pg_wal.display()))?;
                run_child(
                    extract(wal, &pg_wal),
                    &format!("tar -x {}", wal.display()),
                    ctx,
                )
                .await?;
            }
            // Written (empty) by pg_basebackup -Ft; lines name the source's tablespaces.
            if std::fs::read_to_string(data.join("tablespace_map"))
                .is_ok_and(|t| !t.trim().is_empty())
            {
                return Err(format!(
                    "{} has tablespaces (tablespace_map): the drill restores backups without tablespaces only",
                    b.name
                ));
            }
        }
        BackupFormat::Plain => {
            // Symlinks in pg_tblspc would point the scratch server at the source's tablespaces.
            if std::fs::read_dir(b.path.join("pg_tblspc"))
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
            {
                return Err(format!(
                    "{} has tablespaces (pg_tblspc): the drill restores backups without tablespaces only (it never lets a scratch server near the source's folders)",
                    b.name
                ));
            }
            let mut cmd = tokio::process::Command::new("cp");
            cmd.arg("-R")
                .arg("--preserve=mode,timestamps")
                .arg("--no-dereference")
                .arg("--")
                .arg(b.path.join("."))
                .arg(data);
            run_child(cmd, &format!("cp -R {}", b.path.display()), ctx).await?;
        }
    }
    Ok(())
}

/// Hands `dir` and everything under it to `user` (files extracted by root).
fn chown_tree(dir: &Path, user: &nix::unistd::User) -> std::io::Result<()> {
    let (uid, gid) = (Some(user.uid.as_raw()), Some(user.gid.as_raw()));
    std::os::unix::fs::lchown(dir, uid, gid)?;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            std::os::unix::fs::lchown(&p, uid, gid)?;
            if e.file_type()?.is_dir() {
                stack.push(p);
            }
        }
    }
    Ok(())
}

/// The last lines of the scratch server's log (redacted), for a reason.
fn log_tail(log: &Path, ctx: &ItemCtx, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| ctx.redactor.redact(l).into_owned())
        .collect()
}

/// The most telling line of a server log: the last PANIC, else the last FATAL that is not
/// about our own connection attempts, else its last three lines.
fn log_reason(tail: &[String]) -> String {
    let ours = |l: &&String| {
        l.contains("the database system is starting up")
            || l.contains("the database system is not yet accepting connections")
            || l.contains("the database system is shutting down")
    };
    if let Some(l) = tail.iter().rev().find(|l| l.contains("PANIC:")) {
        return l.clone();
    }
    if let Some(l) = tail
        .iter()
        .rev()
        .filter(|l| !ours(l))
        .find(|l| l.contains("FATAL:"))
    {
        return l.clone();
    }
    let lines: Vec<&str> = tail
        .iter()
        .filter(|l| !ours(l))
        .map(String::as_str)
        .collect();
    if lines.is_empty() {
        return "(the server log is empty)".into();
    }
    lines[lines.len().saturating_sub(3)..].join(" ")
}

enum Ready {
    Up(tokio_postgres::Client, Duration),
    Failed(String),
    Exited(String),
    Interrupted,
    TimedOut,
}

/// Connects over the scratch socket until the server is out of recovery (promoting it when it
/// paused at the target); returns the connection and the time it took since `t0`.
async fn wait_ready(
    cfg: &tokio_postgres::Config,
    child: &mut tokio::process::Child,
    ctx: &ItemCtx,
    t0: Instant,
) -> Ready {
    let mut last = String::new();
    loop {
        if ctx.cancel.is_cancelled() {
            return Ready::Interrupted;
        }
        if Instant::now() >= ctx.deadline {
            return Ready::TimedOut;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Ready::Exited(format!("the scratch server stopped ({status})"));
        }
        match cfg.connect(tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                match client
                    .query_one(
                        "SELECT pg_is_in_recovery(), pg_is_in_recovery() AND pg_is_wal_replay_paused()",
                        &[],
                    )
                    .await
                {
                    Ok(row) => {
                        let in_recovery: bool = row.get(0);
                        let paused: bool = row.get(1);
                        if !in_recovery {
                            return Ready::Up(client, t0.elapsed());
                        }
                        if paused {
                            // Paused at the target: end recovery there.
                            let _ = client.execute("SELECT pg_promote(true, 60)", &[]).await;
                        }
                    }
                    Err(e) => last = crate::base::pg::pg_error(&e),
                }
            }
            Err(e) => {
                if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) {
                    return Ready::Failed(format!(
                        "the restored server is up but has no database {:?} (set database)",
                        cfg.get_dbname().unwrap_or("?")
                    ));
                }
                last = crate::base::pg::pg_error(&e);
            }
        }
        let _ = last;
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return Ready::Interrupted,
            _ = tokio::time::sleep_until(ctx.deadline) => return Ready::TimedOut,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// The scratch folder of the drill `item` of job `job` on `target`: under the item's
/// `scratch_dir` (relative to `config_dir`), else `<state_dir>/pitr-drill`, a folder per job,
/// item and target (an item over several targets drills them side by side). The drill makes
/// its server there; the daemon's sweep looks there for one a crashed run left.
pub fn scratch_folder(
    o: &RestoreDrill,
    config_dir: &Path,
    state_dir: &Path,
    job: &str,
    item: &str,
    target: &str,
) -> PathBuf {
    let root = match &o.scratch_dir {
        Some(d) => config_dir.join(d),
        None => state_dir.join("pitr-drill"),
    };
    root.join(slug(&format!("{job}.{item}.{target}")))
}

/// Runs a `mode = "pitr"` drill.
pub async fn run(o: &RestoreDrill, ctx: &ItemCtx) -> Outcome {
    let t0 = Instant::now();
    let started = Utc::now();
    let target = match ctx.target(&o.target) {
        Ok(t) => t.clone(),
        Err(e) => return Outcome::fail(e.to_string()),
    };
    let recovery_target =
        match RecoveryTarget::parse(o.recovery_target.as_deref().unwrap_or("latest")) {
            Ok(t) => t,
            Err(e) => return Outcome::fail(e.to_string()),
        };
    let (Some(base_dir), Some(archive)) = (&o.base_backup_dir, &o.wal_archive_dir) else {
        return Outcome::fail("mode = \"pitr\" needs base_backup_dir and wal_archive_dir");
    };
    let (base_dir, archive) = (ctx.path(base_dir), ctx.path(archive));
    let mut data = serde_json::json!({
        "mode": "pitr",
        "target": target.name,
        "wal_archive_dir": archive.display().to_string(),
        "recovery_target": o.recovery_target.as_deref().unwrap_or("latest"),
    });
    if !archive.is_dir() {
        return Outcome::fail(format!(
            "WAL archive folder {} does not exist: nothing to replay",
            archive.display()
        ))
        .with_data(data);
    }
    let stop_at = recovery_target.time(started);
    let backup = match newest_backup(&base_dir, stop_at) {
        Ok(b) => b,
        Err(e) => return Outcome::fail(e).with_data(data),
    };
    data["base_backup"] = serde_json::json!({
        "name": backup.name,
        "path": backup.path.display().to_string(),
        "format": backup.format.as_str(),
        "modified": DateTime::<Utc>::from(backup.modified).to_rfc3339(),
    });
    let user = target.pg.get_user().unwrap_or("postgres").to_string();
    let database = o
        .database
        .clone()
        .or_else(|| target.pg.get_dbname().map(str::to_string))
        .unwrap_or_else(|| "postgres".into());
    let scratch = scratch_folder(
        o,
        &ctx.config_dir,
        &ctx.state_dir,
        &ctx.job,
        &ctx.item,
        &o.target,
    );
    let restore_cmd = restore_command(&archive);
    data["restore_command"] = restore_cmd.clone().into();

    if ctx.dry_run {
        let mut out = Outcome::skipped(format!(
            "dry run: would restore base backup {} ({}) and replay {} up to {}",
            backup.name,
            backup.format.as_str(),
            archive.display(),
            match stop_at {
                Some(t) => t.to_rfc3339(),
                None => "the end of the archive".into(),
            }
        ))
        .detail(format!("scratch server in {}", scratch.display()))
        .detail(format!("restore_command = {restore_cmd}"));
        for c in &o.checks {
            out.details.push(format!("check {:?}: {}", c.name, c.query));
        }
        data["planned"] = true.into();
        return out.with_data(data);
    }

    let mut details = Vec::new();
    if let Some(text) = tokio::task::spawn_blocking({
        let s = scratch.clone();
        move || clean_leftover(&s)
    })
    .await
    .unwrap_or(None)
    {
        details.push(text.to_string());
    }
    let mut guard = ScratchServer {
        scratch: scratch.clone(),
        pid: None,
        armed: true,
    };
    let outcome = drill(
        o,
        ctx,
        &backup,
        &scratch,
        &archive,
        stop_at,
        &user,
        &database,
        t0,
        started,
        &mut guard,
        &mut details,
        &mut data,
    )
    .await;
    let removed = tokio::task::spawn_blocking(move || guard.finish())
        .await
        .unwrap_or(false);
    let mut outcome = outcome;
    data["scratch_removed"] = removed.into();
    if removed {
        details.push(format!(
            "scratch server stopped, {} removed",
            scratch.display()
        ));
    } else {
        outcome.escalate(Status::Fail);
        details.push(format!("could not remove {}", scratch.display()));
    }
    outcome.details.splice(0..0, details);
    let extra = std::mem::take(&mut outcome.data);
    if let (Some(d), serde_json::Value::Object(e)) = (data.as_object_mut(), extra) {
        d.extend(e);
    }
    outcome.data = data;
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn drill(
    o: &RestoreDrill,
    ctx: &ItemCtx,
    backup: &BaseBackup,
    scratch: &Path,
    archive: &Path,
    stop_at: Option<DateTime<Utc>>,
    user: &str,
    database: &str,
    t0: Instant,
    started: DateTime<Utc>,
    guard: &mut ScratchServer,
    details: &mut Vec<String>,
    data: &mut serde_json::Value,
) -> Outcome {
    let run_as = match crate::base::pgbin::server_user() {
        Ok(u) => u,
        Err(e) => return Outcome::fail(e.to_string()),
    };
    let data_dir = scratch.join("data");
    if let Err(e) = std::fs::create_dir_all(&data_dir)
        .and_then(|_| std::fs::set_permissions(scratch, std::fs::Permissions::from_mode(0o700)))
        .and_then(|_| std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700)))
    {
        return Outcome::fail(format!("cannot create {}: {e}", data_dir.display()));
    }
    if let Some(u) = &run_as
        && let Err(e) = check_reachable(scratch, u)
    {
        return Outcome::fail(e);
    }
    details.push(format!(
        "restoring base backup {} ({}) into {}",
        backup.name,
        backup.format.as_str(),
        data_dir.display()
    ));
    if let Err(e) = restore_files(backup, &data_dir, ctx).await {
        return Outcome::fail(match e.as_str() {
            "interrupted" => "interrupted (shutting down) during the point-in-time drill".into(),
            "timed out" => "timed out restoring the base backup".into(),
            _ => format!("cannot restore base backup {}: {e}", backup.name),
        });
    }
    let backup_started = std::fs::read_to_string(data_dir.join("backup_label"))
        .ok()
        .and_then(|t| backup_start_time(&t));
    let major = match std::fs::read_to_string(data_dir.join("PG_VERSION")) {
        Ok(v) => v.trim().to_string(),
        Err(_) => {
            return Outcome::fail(format!(
                "base backup {} has no PG_VERSION: not a pg_basebackup output",
                backup.name
            ));
        }
    };
    data["server_version"] = major.clone().into();
    let bin = match server_bin(&major) {
        Ok(b) => b,
        Err(e) => return Outcome::fail(e),
    };
    // The data folder as recovery wants it: no leftovers of the source's server, no standby
    // (-R) settings, our own access rules, recovery.signal.
    for f in ["postmaster.pid", "postmaster.opts", "standby.signal"] {
        let _ = std::fs::remove_file(data_dir.join(f));
    }
    let hba = scratch.join("pg_hba.conf");
    let ident = scratch.join("pg_ident.conf");
    let write = || -> std::io::Result<()> {
        std::fs::write(
            &hba,
            "# runbook pitr drill: the unix socket in this folder only\nlocal all all trust\n",
        )?;
        std::fs::write(&ident, "")?;
        std::fs::write(data_dir.join("recovery.signal"), "")?;
        let conf = data_dir.join("postgresql.conf");
        if !conf.exists() {
            // Debian keeps it in /etc: the backup has none.
            std::fs::write(&conf, "")?;
        }
        Ok(())
    };
    if let Err(e) = write() {
        return Outcome::fail(format!("cannot prepare {}: {e}", data_dir.display()));
    }
    if let Some(u) = &run_as {
        let (s, u2) = (scratch.to_path_buf(), u.clone());
        match tokio::task::spawn_blocking(move || chown_tree(&s, &u2)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Outcome::fail(format!(
                    "cannot hand {} to the postgres user: {e}",
                    scratch.display()
                ));
            }
            Err(e) => return Outcome::fail(format!("chown: {e}")),
        }
    }
    let restored_in = t0.elapsed();
    data["restore_files_ms"] = (restored_in.as_millis() as u64).into();
    let port = match free_port() {
        Ok(p) => p,
        Err(e) => return Outcome::fail(e),
    };
    let log_path = scratch.join("server.log");
    let log = match std::fs::File::create(&log_path) {
        Ok(f) => f,
        Err(e) => return Outcome::fail(format!("cannot create {}: {e}", log_path.display())),
    };
    let mut settings: Vec<(String, String)> = vec![
        // Wins over a data_directory in the backup's postgresql.conf (the source's folder).
        ("data_directory".into(), data_dir.display().to_string()),
        ("external_pid_file".into(), String::new()),
        ("port".into(), port.to_string()),
        ("listen_addresses".into(), "127.0.0.1".into()),
        (
            "unix_socket_directories".into(),
            scratch.display().to_string(),
        ),
        ("hba_file".into(), hba.display().to_string()),
        ("ident_file".into(), ident.display().to_string()),
        ("restore_command".into(), restore_command(archive)),
        ("recovery_target_timeline".into(), "latest".into()),
        ("recovery_target_action".into(), "promote".into()),
        // Nothing the scratch server does reaches the source's archive or a primary.
        ("archive_mode".into(), "off".into()),
        ("archive_command".into(), String::new()),
        ("archive_cleanup_command".into(), String::new()),
        ("recovery_end_command".into(), String::new()),
        ("primary_conninfo".into(), String::new()),
        ("primary_slot_name".into(), String::new()),
        ("hot_standby".into(), "on".into()),
        ("ssl".into(), "off".into()),
        ("logging_collector".into(), "off".into()),
        ("log_destination".into(), "stderr".into()),
        ("shared_preload_libraries".into(), String::new()),
        ("session_preload_libraries".into(), String::new()),
        ("local_preload_libraries".into(), String::new()),
        // A throwaway copy: no need to make it crash-safe.
        ("fsync".into(), "off".into()),
        ("synchronous_commit".into(), "off".into()),
        ("cluster_name".into(), "runbook-pitr-drill".into()),
    ];
    if let Some(t) = stop_at {
        settings.push((
            "recovery_target_time".into(),
            t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
        ));
    }
    let mut cmd = tokio::process::Command::new(bin.join("postgres"));
    cmd.arg("-D").arg(&data_dir);
    for (k, v) in &settings {
        cmd.arg("-c").arg(format!("{k}={v}"));
    }
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LC_ALL", "C")
        .current_dir(scratch)
        .stdin(std::process::Stdio::null())
        .stdout(match log.try_clone() {
            Ok(f) => std::process::Stdio::from(f),
            Err(_) => std::process::Stdio::null(),
        })
        .stderr(std::process::Stdio::from(log))
        .process_group(0);
    if let Some(u) = &run_as {
        cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::fail(format!("cannot start the scratch server: {e}")),
    };
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    guard.pid = Some(pid);
    let _ = std::fs::write(
        scratch.join(PID_FILE),
        format!("{pid}\n{}\n", data_dir.display()),
    );
    details.push(format!(
        "scratch server (PostgreSQL {major}, pid {pid}) on 127.0.0.1:{port}, replaying {} {}",
        archive.display(),
        match stop_at {
            Some(t) => format!("up to {}", t.to_rfc3339()),
            None => "to its end (latest)".into(),
        }
    ));

    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path(scratch)
        .port(port)
        .user(user)
        .dbname(database)
        .application_name("runbook-pitr-drill")
        .connect_timeout(Duration::from_secs(5));
    let (client, rto) = match wait_ready(&cfg, &mut child, ctx, t0).await {
        Ready::Up(c, rto) => (c, rto),
        Ready::Interrupted => {
            return Outcome::fail("interrupted (shutting down) during the point-in-time drill");
        }
        Ready::TimedOut => {
            let tail = log_tail(&log_path, ctx, 12);
            return Outcome::fail(format!(
                "timed out waiting for recovery to end; server log: {}",
                log_reason(&tail)
            ))
            .with_details(
                tail.into_iter()
                    .map(|l| format!("server log: {l}"))
                    .collect(),
            );
        }
        Ready::Exited(why) | Ready::Failed(why) => {
            let tail = log_tail(&log_path, ctx, 12);
            let reason = log_reason(&tail);
            let hint = if tail.iter().any(|l| {
                l.contains("could not locate required checkpoint record")
                    || l.contains("WAL ends before end of online backup")
                    || l.contains("WAL ends before consistent recovery point")
                    || l.contains("requested WAL segment")
            }) {
                " (the base backup needs WAL that is neither in it nor in the archive)"
            } else if tail
                .iter()
                .any(|l| l.contains("recovery ended before configured recovery target was reached"))
            {
                " (the archive has no transaction after the recovery target)"
            } else {
                ""
            };
            return Outcome::fail(format!("{why}{hint}: {reason}")).with_details(
                tail.into_iter()
                    .map(|l| format!("server log: {l}"))
                    .collect(),
            );
        }
    };
    let rto_s = rto.as_secs_f64();
    data["value"] = round1(rto_s).into();
    data["rto_seconds"] = round1(rto_s).into();
    data["rto_ms"] = (rto.as_millis() as u64).into();

    // RPO: the newest transaction replayed, against the drill's start.
    let replayed: Option<DateTime<Utc>> = client
        .query_one("SELECT pg_last_xact_replay_timestamp()", &[])
        .await
        .ok()
        .and_then(|r| r.try_get::<_, Option<DateTime<Utc>>>(0).ok().flatten());
    data["replayed_until"] = replayed.map(|t| t.to_rfc3339()).into();
    // No transaction after the base backup: what it holds is as of its start.
    let newest = replayed.or(backup_started);
    let rpo = newest.map(|t| (started - t).to_std().unwrap_or_default());
    data["rpo_seconds"] = rpo.map(|d| round1(d.as_secs_f64())).into();

    let run_checks = async {
        let mut checks: Vec<CheckResult> = Vec::new();
        for c in &o.checks {
            checks.push(run_check(&client, c).await);
        }
        checks
    };
    let checks = tokio::select! {
        biased;
        _ = ctx.cancel.cancelled() => {
            return Outcome::fail("interrupted (shutting down) during the point-in-time drill's checks");
        }
        _ = tokio::time::sleep_until(ctx.deadline) => {
            return Outcome::fail("timed out during the point-in-time drill's checks");
        }
        c = run_checks => c,
    };
    drop(client);
    data["checks"] = serde_json::Value::Array(
        checks
            .iter()
            .map(|c| serde_json::json!({ "name": c.name, "ok": c.ok, "value": c.value, "message": c.message }))
            .collect(),
    );
    if ctx.cancel.is_cancelled() {
        return Outcome::fail("interrupted (shutting down) during the point-in-time drill");
    }

    let rpo_text = match (replayed, backup_started, rpo) {
        (Some(t), _, Some(d)) => format!(
            "RPO {} (newest transaction replayed {})",
            fmt_secs(d),
            t.format("%Y-%m-%d %H:%M:%S UTC")
        ),
        (None, Some(t), Some(d)) => format!(
            "RPO {} (no transaction after the base backup of {})",
            fmt_secs(d),
            t.format("%Y-%m-%d %H:%M:%S UTC")
        ),
        _ => "RPO unknown (no transaction replayed after the base backup)".into(),
    };
    details.push(format!(
        "time to a queryable server (RTO): {} ({} restoring the base backup's files, {} starting and replaying WAL)",
        fmt_secs(rto),
        fmt_secs(restored_in),
        fmt_secs(rto.saturating_sub(restored_in))
    ));
    details.push(rpo_text.clone());
    let mut outcome_details = Vec::new();
    for c in &checks {
        outcome_details.push(format!(
            "{} check {:?}: {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            c.message
        ));
    }
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{:?} ({})", c.name, c.message))
        .collect();
    let head = format!(
        "restored to a point in time in {} (RTO), {rpo_text}",
        fmt_secs(rto)
    );
    if !failed.is_empty() {
        return Outcome::fail(format!(
            "{head}, but {} check{} failed: {}",
            failed.len(),
            if failed.len() == 1 { "" } else { "s" },
            failed.join("; ")
        ))
        .with_details(outcome_details);
    }
    let mut status = Status::Pass;
    let mut over = Vec::new();
    let rto_warn = o.rto_warn.or(o.max_duration);
    for (value, warn, fail, name) in [
        (Some(rto), rto_warn, o.rto_fail, "RTO"),
        (rpo, o.rpo_warn, o.rpo_fail, "RPO"),
    ] {
        let Some(v) = value else {
            if name == "RPO" && (warn.is_some() || fail.is_some()) {
                status = status.max_sev(Status::Warn);
                over.push("RPO unknown".to_string());
            }
            continue;
        };
        if let Some(f) = fail
            && v > f.0
        {
            status = status.max_sev(Status::Fail);
            over.push(format!(
                "{name} {} above {}_fail {f}",
                fmt_secs(v),
                name.to_lowercase()
            ));
        } else if let Some(w) = warn
            && v > w.0
        {
            status = status.max_sev(Status::Warn);
            over.push(format!(
                "{name} {} above {}_warn {w}",
                fmt_secs(v),
                name.to_lowercase()
            ));
        }
    }
    let summary = format!(
        "{head}, {} check{} passed",
        checks.len(),
        if checks.len() == 1 { "" } else { "s" }
    );
    let summary = if over.is_empty() {
        summary
    } else {
        format!("{}: {summary}", over.join(", "))
    };
    Outcome::new(status, summary).with_details(outcome_details)
}

/// `START TIME: 2026-12-05 15:39:00 UTC` of a backup_label (UTC/GMT or a numeric offset).
fn backup_start_time(label: &str) -> Option<DateTime<Utc>> {
    let line = label
        .lines()
        .find_map(|l| l.strip_prefix("START TIME:"))?
        .trim();
    let (stamp, zone) = line.rsplit_once(' ')?;
    let naive = chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S").ok()?;
    if zone == "UTC" || zone == "GMT" {
        return Some(naive.and_utc());
    }
    let zone = if zone.len() == 3 {
        format!("{zone}00")
    } else {
        zone.replace(':', "")
    };
    let offset =
        DateTime::parse_from_str(&format!("{stamp} {zone}"), "%Y-%m-%d %H:%M:%S %z").ok()?;
    Some(offset.with_timezone(&Utc))
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

trait MaxSev {
    fn max_sev(self, other: Status) -> Status;
}

impl MaxSev for Status {
    fn max_sev(self, other: Status) -> Status {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_targets_parse() {
        assert_eq!(RecoveryTarget::parse("latest"), Ok(RecoveryTarget::Latest));
        assert_eq!(
            RecoveryTarget::parse("now - 5m"),
            Ok(RecoveryTarget::Ago(Duration::from_secs(300)))
        );
        assert_eq!(
            RecoveryTarget::parse("now-90s"),
            Ok(RecoveryTarget::Ago(Duration::from_secs(90)))
        );
        assert!(matches!(
            RecoveryTarget::parse("2026-12-05T10:00:00Z"),
            Ok(RecoveryTarget::At(_))
        ));
        assert!(RecoveryTarget::parse("yesterday").is_err());
        assert!(RecoveryTarget::parse("now + 5m").is_err());
    }

    #[test]
    fn restore_command_quotes_the_archive_path_for_the_shell_and_postgresql() {
        assert_eq!(
            restore_command(Path::new("/srv/wal archive")),
            "cp '/srv/wal archive'/%f %p"
        );
        assert_eq!(
            restore_command(Path::new("/srv/it's 100%")),
            r"cp '/srv/it'\''s 100%%'/%f %p"
        );
    }

    #[test]
    fn backup_label_start_times_parse() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIME: 2026-12-05 15:39:00 UTC\nLABEL: x\n";
        assert_eq!(
            backup_start_time(label).map(|t| t.to_rfc3339()),
            Some("2026-12-05T15:39:00+00:00".into())
        );
        assert_eq!(
            backup_start_time("START TIME: 2026-12-05 21:09:00 +0530\n").map(|t| t.to_rfc3339()),
            Some("2026-12-05T15:39:00+00:00".into())
        );
        assert_eq!(
            backup_start_time("START TIME: 2026-12-05 21:09:00 IST\n"),
            None
        );
    }

    #[test]
    fn slugs_are_file_names_and_distinct() {
        let a = slug("nightly.pitr drill");
        assert!(!a.contains(' ') && !a.contains('/'));
        assert_ne!(slug("a/b"), slug("a_b"));
    }
}
