//! Shared machinery of `backup` and `restore_drill`: finding the newest *complete* backup in a
//! folder, recognising its format, and reading it end to end without holding it in memory.
//!
//! Why a module of its own: both kinds must agree on which file is "the newest backup" (a drill
//! that restores a different file than the one the daily check verified would prove nothing),
//! and both run PostgreSQL's client tools the same careful way: no shell, their own process
//! group, a deadline, and killed when the run is cancelled.
//!
//! Everything here streams with fixed-size buffers: memory stays constant whatever the size of
//! the backup (a 2 GB dump is checked in a few MB).

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, BufReader};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::base::units::human_bytes;

/// Read buffer for hashing and decompressing: large reads keep the per-call overhead negligible.
pub const READ_BUF: usize = 1 << 20;

/// The completion marker pg_dump writes at the end of a plain SQL dump.
pub const PLAIN_MARKER: &str = "-- PostgreSQL database dump complete";

/// How many bytes at the end of a plain dump are searched for [`PLAIN_MARKER`]. pg_dump writes
/// only a few short lines after it (`--`, and `\unrestrict KEY` since 15.14/17.6).
const TAIL_BYTES: usize = 4096;

/// One file or folder in the backup folder that matches the pattern.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub path: PathBuf,
    pub is_dir: bool,
    /// Bytes (a folder: the sum of its files).
    pub size: u64,
    /// Last modification (a folder: the newest of its files).
    pub mtime: SystemTime,
}

impl Entry {
    /// Seconds since the last modification (0 for a time in the future).
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.mtime).unwrap_or_default()
    }

    /// A JSON object for the report's `data`.
    pub fn json(&self, now: SystemTime) -> serde_json::Value {
        let mtime: chrono::DateTime<chrono::Utc> = self.mtime.into();
        serde_json::json!({
            "name": self.name,
            "path": self.path,
            "dir": self.is_dir,
            "size": self.size,
            "size_human": human_bytes(self.size),
            "modified": mtime.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "age_s": self.age(now).as_secs(),
        })
    }

    /// One line of the newest-5 listing, like `ls -lh`: size, time, name, age.
    pub fn listing_line(&self, now: SystemTime, tz: chrono_tz::Tz, note: &str) -> String {
        let mtime: chrono::DateTime<chrono::Utc> = self.mtime.into();
        let local = mtime.with_timezone(&tz);
        format!(
            "{:>6}  {}  {}{}  ({} ago){}",
            human_bytes(self.size),
            local.format("%Y-%m-%d %H:%M %Z"),
            self.name,
            if self.is_dir { "/" } else { "" },
            human_age(self.age(now)),
            if note.is_empty() {
                String::new()
            } else {
                format!("  [{note}]")
            }
        )
    }
}

/// `3d 4h`, `2h 13m`, `5m 10s`, `42s`: an age a person reads at a glance.
pub fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86400, (s % 86400) / 3600, (s % 3600) / 60, s % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {mins}m")
    } else if mins > 0 {
        format!("{mins}m {secs}s")
    } else {
        format!("{secs}s")
    }
}

/// Names that are never backups themselves: checksum sidecars and in-progress markers.
fn is_sidecar(name: &str) -> bool {
    [".sha256", ".sha256sum", ".md5", ".partial", ".tmp", ".lock"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// The files and folders of `dir` whose names match `pattern`, newest first.
pub fn list_backups(dir: &Path, pattern: &globset::GlobMatcher) -> Result<Vec<Entry>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("backup folder {} does not exist", dir.display()),
        std::io::ErrorKind::PermissionDenied => format!(
            "backup folder {} is not readable by this user: {e}",
            dir.display()
        ),
        _ => format!("cannot read backup folder {}: {e}", dir.display()),
    })?;
    let mut out = Vec::new();
    for de in rd {
        let de = de.map_err(|e| format!("cannot read backup folder {}: {e}", dir.display()))?;
        let name = de.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || is_sidecar(&name) || !pattern.is_match(&name) {
            continue;
        }
        let path = de.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let entry = if meta.is_dir() {
            let (size, mtime) =
                dir_size_and_mtime(&path, meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
            Entry {
                name,
                path,
                is_dir: true,
                size,
                mtime,
            }
        } else if meta.is_file() {
            Entry {
                name,
                path,
                is_dir: false,
                size: meta.len(),
                mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            }
        } else {
            continue;
        };
        out.push(entry);
    }
    out.sort_by(|a, b| b.mtime.cmp(&a.mtime).then_with(|| b.name.cmp(&a.name)));
    Ok(out)
}

/// Total size and newest modification time of a folder's files (recursively).
fn dir_size_and_mtime(dir: &Path, own: SystemTime) -> (u64, SystemTime) {
    let mut size = 0;
    let mut newest = own;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for de in rd.flatten() {
            let Ok(meta) = de.metadata() else { continue };
            if let Ok(m) = meta.modified() {
                newest = newest.max(m);
            }
            if meta.is_dir() {
                stack.push(de.path());
            } else {
                size += meta.len();
            }
        }
    }
    (size, newest)
}

/// Stats one entry again (to see whether it is still growing).
pub fn restat(e: &Entry) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(&e.path).ok()?;
    if meta.is_dir() {
        Some(dir_size_and_mtime(&e.path, meta.modified().ok()?))
    } else {
        Some((meta.len(), meta.modified().ok()?))
    }
}

/// Compiles a config glob (validated at load).
pub fn matcher(pattern: &str) -> Result<globset::GlobMatcher, String> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("invalid glob {pattern:?}: {e}"))
}

/// What a backup is, by its content (never trusting the name alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `pg_dump -Fc` (starts with `PGDMP`).
    Custom,
    /// `pg_dump -Fd`: a folder with `toc.dat`.
    Directory,
    /// A gzip stream (maybe several members, as pigz writes).
    Gzip,
    /// A plain SQL dump (`pg_dump -Fp`).
    PlainSql,
    /// A `pg_basebackup` folder with a `backup_manifest`.
    BaseBackup,
    /// A folder or file we cannot read further; only size, age and checksum are checked.
    Unknown,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Custom => "custom dump",
            Format::Directory => "directory dump",
            Format::Gzip => "gzip",
            Format::PlainSql => "plain SQL dump",
            Format::BaseBackup => "base backup",
            Format::Unknown => "unknown format",
        }
    }
}

/// Recognises the format of `e` from its first bytes (files) or its files (folders).
pub fn detect(e: &Entry) -> Format {
    if e.is_dir {
        if e.path.join("toc.dat").is_file() {
            return Format::Directory;
        }
        if e.path.join("backup_manifest").is_file() {
            return Format::BaseBackup;
        }
        return Format::Unknown;
    }
    let mut head = [0u8; 5];
    let n = std::fs::File::open(&e.path)
        .and_then(|mut f| read_up_to(&mut f, &mut head))
        .unwrap_or(0);
    let head = &head[..n];
    if head.starts_with(b"PGDMP") {
        Format::Custom
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Format::Gzip
    } else if head.starts_with(b"--") || head.starts_with(b"\\") || e.name.ends_with(".sql") {
        Format::PlainSql
    } else {
        Format::Unknown
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The `<file>.sha256` sidecar of a backup file, if there is one.
pub fn sidecar(e: &Entry) -> Option<PathBuf> {
    if e.is_dir {
        return None;
    }
    let mut p = e.path.clone().into_os_string();
    p.push(".sha256");
    let p = PathBuf::from(p);
    p.is_file().then_some(p)
}

/// Reads the expected digest from a `sha256sum`-format sidecar (`HEX  NAME` or `HEX *NAME`).
pub fn read_sidecar(path: &Path) -> Result<String, String> {
    let cannot = |e: std::io::Error| format!("cannot read checksum file {}: {e}", path.display());
    // Line by line, each cut at 64 KiB: a sidecar is one short line, whatever the file holds.
    let mut r = std::io::BufReader::new(std::fs::File::open(path).map_err(cannot)?);
    let mut line = Vec::new();
    let mut first = String::new();
    while crate::base::bounded::read_line_capped(&mut r, &mut line, crate::base::bounded::LINE_CAP)
        .map_err(cannot)?
        .is_some()
    {
        if !line.trim_ascii().is_empty() {
            first = String::from_utf8_lossy(&line).into_owned();
            break;
        }
    }
    let hex = first.split_whitespace().next().unwrap_or("");
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "checksum file {} is not in sha256sum format (\"<64 hex digits>  <file>\")",
            path.display()
        ));
    }
    Ok(hex.to_ascii_lowercase())
}

/// Hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens a file for one sequential read (and tells the kernel so: larger readahead).
fn open_sequential(path: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::File::open(path)?;
    let _ = nix::fcntl::posix_fadvise(
        &f,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
    );
    Ok(f)
}

/// Why a streaming read stopped early.
#[derive(Debug)]
pub enum StreamError {
    Cancelled,
    Io(String),
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::Cancelled => f.write_str("interrupted"),
            StreamError::Io(m) => f.write_str(m),
        }
    }
}

/// SHA-256 of a file, streamed (`sha2` uses the CPU's SHA extensions when present).
pub fn sha256_file(path: &Path, cancel: &CancellationToken) -> Result<String, StreamError> {
    let mut f = open_sequential(path)
        .map_err(|e| StreamError::Io(format!("cannot read {}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_BUF];
    loop {
        if cancel.is_cancelled() {
            return Err(StreamError::Cancelled);
        }
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(StreamError::Io(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// A reader that hashes what passes through it (one pass for checksum and decompression).
struct HashingReader<R> {
    inner: R,
    hasher: Option<Sha256>,
    cancel: CancellationToken,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "cancelled",
            ));
        }
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// What reading a gzip or plain SQL stream to its end found.
#[derive(Debug, Default)]
pub struct StreamReport {
    /// Bytes after decompression.
    pub content_bytes: u64,
    /// SHA-256 of the file as stored (when asked for).
    pub sha256: Option<String>,
    /// The content starts with `PGDMP`: a custom dump inside gzip.
    pub inner_custom: bool,
    /// The content looks like SQL (starts with `--` or a psql meta-command).
    pub inner_sql: bool,
    /// The plain-dump completion marker is in the last few KB.
    pub marker_found: bool,
    /// Tables created by `CREATE TABLE` lines (plain dumps, when asked for).
    pub tables: Vec<String>,
}

/// Reads a gzip (all members) or plain file to its end: hashes it on the way when `hash`, keeps
/// the tail to find the completion marker, and collects `CREATE TABLE` names when `tables`.
pub fn read_stream(
    path: &Path,
    gzip: bool,
    hash: bool,
    tables: bool,
    cancel: &CancellationToken,
) -> Result<StreamReport, StreamError> {
    let f = open_sequential(path)
        .map_err(|e| StreamError::Io(format!("cannot read {}: {e}", path.display())))?;
    let hashing = HashingReader {
        inner: f,
        hasher: hash.then(Sha256::new),
        cancel: cancel.clone(),
    };
    let mut report = StreamReport::default();
    let mut scanner = SqlScanner::new(tables);
    let mut buf = vec![0u8; READ_BUF];
    let mut first = true;
    let map_err = |e: std::io::Error, cancel: &CancellationToken| {
        if cancel.is_cancelled() {
            StreamError::Cancelled
        } else if gzip {
            StreamError::Io(format!("gzip stream is corrupt: {e}"))
        } else {
            StreamError::Io(format!("cannot read {}: {e}", path.display()))
        }
    };
    let mut hashing = if gzip {
        let mut dec = flate2::bufread::MultiGzDecoder::new(std::io::BufReader::with_capacity(
            READ_BUF, hashing,
        ));
        loop {
            let n = match dec.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => return Err(map_err(e, cancel)),
            };
            if first {
                report.inner_custom = buf[..n].starts_with(b"PGDMP");
                report.inner_sql = buf[..n].starts_with(b"--") || buf[..n].starts_with(b"\\");
                first = false;
            }
            report.content_bytes += n as u64;
            scanner.feed(&buf[..n]);
        }
        dec.into_inner().into_inner()
    } else {
        let mut r = hashing;
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted && !cancel.is_cancelled() => {
                    continue;
                }
                Err(e) => return Err(map_err(e, cancel)),
            };
            if first {
                report.inner_sql = true;
                first = false;
            }
            report.content_bytes += n as u64;
            scanner.feed(&buf[..n]);
        }
        r
    };
    if let Some(h) = hashing.hasher.take() {
        report.sha256 = Some(hex(&h.finalize()));
    }
    report.marker_found = scanner.marker_found();
    report.tables = scanner.tables;
    Ok(report)
}

/// Follows a plain SQL stream chunk by chunk: the last [`TAIL_BYTES`], and `CREATE TABLE` names.
struct SqlScanner {
    tail: Vec<u8>,
    want_tables: bool,
    /// The unfinished last line of the previous chunk (only while it may still be a CREATE TABLE).
    partial: Vec<u8>,
    partial_overflow: bool,
    tables: Vec<String>,
}

impl SqlScanner {
    fn new(want_tables: bool) -> SqlScanner {
        SqlScanner {
            tail: Vec::with_capacity(2 * TAIL_BYTES),
            want_tables,
            partial: Vec::new(),
            partial_overflow: false,
            tables: Vec::new(),
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        if chunk.len() >= TAIL_BYTES {
            self.tail.clear();
            self.tail
                .extend_from_slice(&chunk[chunk.len() - TAIL_BYTES..]);
        } else {
            self.tail.extend_from_slice(chunk);
            if self.tail.len() > TAIL_BYTES {
                let cut = self.tail.len() - TAIL_BYTES;
                self.tail.drain(..cut);
            }
        }
        if !self.want_tables {
            return;
        }
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(pos);
            if self.partial.is_empty() && !self.partial_overflow {
                self.line(line);
            } else {
                if !self.partial_overflow {
                    self.partial.extend_from_slice(line);
                    let whole = std::mem::take(&mut self.partial);
                    self.line(&whole);
                }
                self.partial.clear();
                self.partial_overflow = false;
            }
            rest = &after[1..];
        }
        if !rest.is_empty() && !self.partial_overflow {
            self.partial.extend_from_slice(rest);
            // A CREATE TABLE line is short; a longer unfinished line is data and is not kept.
            if self.partial.len() > 4096 {
                self.partial.clear();
                self.partial_overflow = true;
            }
        }
    }

    fn line(&mut self, line: &[u8]) {
        const P: &[u8] = b"CREATE TABLE ";
        if !line.starts_with(P) {
            return;
        }
        let rest = String::from_utf8_lossy(&line[P.len()..]);
        let rest = rest.strip_prefix("IF NOT EXISTS ").unwrap_or(&rest);
        let name = rest.split([' ', '(']).next().unwrap_or("").trim();
        if !name.is_empty() {
            self.tables.push(name.to_string());
        }
    }

    fn marker_found(&self) -> bool {
        self.tail
            .windows(PLAIN_MARKER.len())
            .any(|w| w == PLAIN_MARKER.as_bytes())
    }
}

/// Whether a required table (`orders` or `public.orders`) is among the found tables (`schema.name`
/// from a plain dump's `CREATE TABLE`, maybe quoted, or (schema, name) pairs from a TOC).
pub fn has_table(found: &[(String, String)], wanted: &str) -> bool {
    let unq = |s: &str| s.trim_matches('"').to_string();
    let (ws, wn) = match wanted.split_once('.') {
        Some((s, n)) => (Some(unq(s)), unq(n)),
        None => (None, unq(wanted)),
    };
    found
        .iter()
        .any(|(s, n)| *n == wn && ws.as_ref().is_none_or(|ws| ws == s))
}

/// `public.orders` / `"Weird"."Name"` / `orders` → (schema, name).
pub fn split_sql_name(q: &str) -> (String, String) {
    let unq = |s: &str| s.trim_matches('"').replace("\"\"", "\"");
    match q.split_once('.') {
        Some((s, n)) => (unq(s), unq(n)),
        None => ("public".to_string(), unq(q)),
    }
}

/// Table (schema, name) pairs from `pg_restore --list` lines:
/// `215; 1259 16386 TABLE public orders owner`.
pub fn toc_tables(lines: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for l in lines {
        if l.starts_with(';') {
            continue;
        }
        let parts: Vec<&str> = l.split_whitespace().collect();
        if parts.len() >= 7 && parts[3] == "TABLE" && parts[4] != "DATA" {
            out.push((parts[4].to_string(), parts[5].to_string()));
        } else if parts.len() >= 8 && parts[3] == "TABLE" && parts[4] == "DATA" {
            out.push((parts[5].to_string(), parts[6].to_string()));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Path of a PostgreSQL client tool: the newest server installation's bin folder, else `$PATH`.
pub fn pg_tool(name: &str) -> PathBuf {
    if let Ok(dir) = crate::face::pgcluster::find_bin_dir() {
        let p = dir.join(name);
        if p.exists() {
            return p;
        }
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(name)
}

/// How a child process ended.
#[derive(Debug)]
pub enum ToolEnd {
    Exited(std::process::ExitStatus),
    TimedOut,
    Cancelled,
    SpawnFailed(String),
}

/// The result of [`run_tool`].
#[derive(Debug)]
pub struct ToolRun {
    pub end: ToolEnd,
    /// The last lines of stderr.
    pub stderr_tail: Vec<String>,
    /// Stdout lines, when asked for.
    pub stdout: Vec<String>,
}

impl ToolRun {
    pub fn ok(&self) -> bool {
        matches!(&self.end, ToolEnd::Exited(s) if s.success())
    }

    /// One line saying why it failed (the last stderr lines included).
    pub fn failure(&self, what: &str) -> String {
        let why = match &self.end {
            ToolEnd::Exited(s) => match s.code() {
                Some(c) => format!("exited with code {c}"),
                None => "was killed by a signal".into(),
            },
            ToolEnd::TimedOut => "timed out".into(),
            ToolEnd::Cancelled => "was interrupted".into(),
            ToolEnd::SpawnFailed(e) => return format!("cannot run {what}: {e}"),
        };
        let last = self
            .stderr_tail
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .cloned()
            .unwrap_or_default();
        if last.is_empty() {
            format!("{what} {why}")
        } else {
            format!("{what} {why}: {last}")
        }
    }
}

/// Kills a process group when dropped (if the future running the tool is dropped midway).
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pg) = self.0.take() {
            let _ = killpg(pg, Signal::SIGKILL);
        }
    }
}

/// Runs a prepared command (no shell) in its own process group until it exits, `deadline`
/// passes or `cancel` fires (then the group gets SIGTERM, and SIGKILL 3 s later). Keeps the last
/// `tail` stderr lines, and all stdout lines when `keep_stdout`.
pub async fn run_tool(
    cmd: tokio::process::Command,
    deadline: Instant,
    cancel: &CancellationToken,
    keep_stdout: bool,
) -> ToolRun {
    run_tool_with_input(cmd, deadline, cancel, keep_stdout, None).await
}

/// [`run_tool`], with `input` chunks written to the tool's stdin (closed when the sender is done).
pub async fn run_tool_with_input(
    mut cmd: tokio::process::Command,
    deadline: Instant,
    cancel: &CancellationToken,
    keep_stdout: bool,
    input: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
) -> ToolRun {
    // A clean environment: the caller's own PG* variables stay, the daemon's secrets do not.
    super::child_env::clean(cmd.as_std_mut(), super::child_env::Child::PgTool);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(if keep_stdout {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stderr(Stdio::piped())
    .process_group(0)
    .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let prog = cmd.as_std().get_program().to_string_lossy().into_owned();
            return ToolRun {
                end: ToolEnd::SpawnFailed(format!("{prog}: {e}")),
                stderr_tail: vec![],
                stdout: vec![],
            };
        }
    };
    let pgid = child.id().map(|p| Pid::from_raw(p as i32));
    let mut guard = GroupGuard(pgid);
    let writer = match (input, child.stdin.take()) {
        (Some(mut rx), Some(mut stdin)) => Some(tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Some(chunk) = rx.recv().await {
                if stdin.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            let _ = stdin.shutdown().await;
        })),
        _ => None,
    };
    let stderr = tokio::spawn(collect_lines(child.stderr.take(), Some(20)));
    let stdout = tokio::spawn(collect_lines(child.stdout.take(), None));
    let end = tokio::select! {
        biased;
        r = child.wait() => match r {
            Ok(s) => ToolEnd::Exited(s),
            Err(e) => ToolEnd::SpawnFailed(e.to_string()),
        },
        _ = tokio::time::sleep_until(deadline) => ToolEnd::TimedOut,
        _ = cancel.cancelled() => ToolEnd::Cancelled,
    };
    if matches!(end, ToolEnd::TimedOut | ToolEnd::Cancelled) {
        if let Some(pg) = pgid {
            let _ = killpg(pg, Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(3), child.wait())
            .await
            .is_err()
        {
            if let Some(pg) = pgid {
                let _ = killpg(pg, Signal::SIGKILL);
            }
            let _ = child.wait().await;
        }
    }
    if let Some(w) = writer {
        w.abort();
    }
    // Whatever the tool left running in its group (pg_restore -j workers) goes with it.
    if let Some(pg) = guard.0.take() {
        let _ = killpg(pg, Signal::SIGKILL);
    }
    let stderr_tail = tokio::time::timeout(Duration::from_secs(2), stderr)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    let stdout = tokio::time::timeout(Duration::from_secs(2), stdout)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    ToolRun {
        end,
        stderr_tail,
        stdout: if keep_stdout { stdout } else { vec![] },
    }
}

/// Stderr/stdout lines of a tool (the last `keep_last`, or all), each cut at 64 KiB while
/// reading and marked when cut. The last lines (stderr, shown in reports) are shortened to 500
/// characters; all lines (stdout, parsed) are kept as read.
async fn collect_lines(r: Option<impl AsyncRead + Unpin>, keep_last: Option<usize>) -> Vec<String> {
    let Some(r) = r else { return vec![] };
    let (lines, _) = crate::base::bounded::tail_lines(BufReader::new(r), keep_last).await;
    if keep_last.is_none() {
        return lines;
    }
    lines
        .iter()
        .map(|l| crate::base::bounded::shorten(l, 500))
        .collect()
}

/// What [`PlainGuard::check`] decided for one line of a plain dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineVerdict {
    /// Send it to psql.
    Pass,
    /// Leave it out: an ownership or privilege statement (`ALTER ... OWNER TO`, `GRANT`,
    /// `REVOKE`, `SET SESSION AUTHORIZATION`), which the drill's unprivileged role could not run
    /// and which `pg_restore --no-owner --no-privileges` leaves out too; or pg_dump's own
    /// `\restrict KEY` / `\unrestrict KEY` (psql is already restricted, with runbook's key).
    Skip,
}

/// Where the lexer of [`PlainGuard`] is inside the SQL text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Quote {
    None,
    /// `'...'`; `backslash` when a backslash escapes the next character (`E'...'`, or
    /// `standard_conforming_strings = off`).
    Single {
        backslash: bool,
    },
    /// `"..."`.
    Double,
    /// `$tag$ ... $tag$` (the tag with its dollars).
    Dollar(Vec<u8>),
    /// `/* ... */`, nested to this depth.
    Block(u32),
}

/// Reads a plain SQL dump the way psql's lexer does (quotes, dollar quotes, comments,
/// parentheses, `COPY ... FROM stdin` data) and refuses what a drill must not run, with the
/// reason and the line: any psql meta-command outside string literals and COPY data (`\!`,
/// `\set x \`cmd\``, `\connect`, mid-line ones included), statements that create, change or drop
/// a database, and `COPY ... PROGRAM`. Statements are recognised by their words, not by line
/// starts, so `copy ... from program` and `SELECT 1; DROP DATABASE x;` are caught too.
///
/// This is the first of three walls, there for a clear reason in the report: psql itself runs
/// in `\restrict` mode with a key only runbook knows (no meta-command can run, whatever this
/// lexer misses), and the server side runs as a role that is not a superuser and owns only the
/// scratch database (`restore_drill`).
pub struct PlainGuard {
    /// Inside the data of a `COPY ... FROM stdin` (until a line `\.`).
    in_copy: bool,
    quote: Quote,
    /// Parenthesis depth at the top level (a `;` inside parentheses ends nothing, as in psql).
    paren: u32,
    /// Words of the current statement at parenthesis depth 0, upper-cased (the first 64).
    words: Vec<String>,
    /// True while the current statement has nothing but blanks and comments so far.
    at_start: bool,
    /// `standard_conforming_strings` as the dump set it (on unless it says otherwise).
    standard_strings: bool,
    /// The line number of the line being checked (1-based).
    line_no: u64,
    /// True when the statement that ended last was an ownership or privilege statement.
    last_was_ownership: bool,
    /// Ownership and privilege statements left out.
    pub skipped: u64,
}

impl Default for PlainGuard {
    fn default() -> Self {
        Self::new()
    }
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

impl PlainGuard {
    pub fn new() -> PlainGuard {
        PlainGuard {
            in_copy: false,
            quote: Quote::None,
            paren: 0,
            words: Vec::new(),
            at_start: true,
            standard_strings: true,
            line_no: 0,
            last_was_ownership: false,
            skipped: 0,
        }
    }

    /// `Err(reason)` for a line that must not run; otherwise whether to send it.
    pub fn check(&mut self, line: &[u8]) -> Result<LineVerdict, String> {
        self.line_no += 1;
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if self.in_copy {
            if body == b"\\." {
                self.in_copy = false;
            }
            return Ok(LineVerdict::Pass);
        }
        let starts_statement = self.quote == Quote::None && self.paren == 0 && self.at_start;
        if starts_statement {
            let t = String::from_utf8_lossy(body);
            let t = t.trim();
            if let Some(meta) = t.strip_prefix('\\') {
                let mut parts = meta.split_whitespace();
                let cmd = parts.next().unwrap_or("");
                let arg = parts.next().unwrap_or("");
                // pg_dump 17.6/16.10/15.14 and later open and close a plain dump with these; psql
                // is already restricted with runbook's own key, so they are left out.
                if matches!(cmd, "restrict" | "unrestrict")
                    && !arg.is_empty()
                    && arg.bytes().all(|b| b.is_ascii_alphanumeric())
                    && parts.next().is_none()
                {
                    return Ok(LineVerdict::Skip);
                }
            }
        }
        let mut statements = 0u32;
        let mut i = 0;
        while i < body.len() {
            let b = body[i];
            match &mut self.quote {
                Quote::Single { backslash } => {
                    if b == b'\\' && *backslash {
                        i += 1;
                    } else if b == b'\'' {
                        if body.get(i + 1) == Some(&b'\'') {
                            i += 1;
                        } else {
                            self.quote = Quote::None;
                        }
                    }
                    i += 1;
                    continue;
                }
                Quote::Double => {
                    if b == b'"' {
                        if body.get(i + 1) == Some(&b'"') {
                            i += 1;
                        } else {
                            self.quote = Quote::None;
                        }
                    }
                    i += 1;
                    continue;
                }
                Quote::Dollar(tag) => {
                    if body[i..].starts_with(tag) {
                        i += tag.len();
                        self.quote = Quote::None;
                    } else {
                        i += 1;
                    }
                    continue;
                }
                Quote::Block(depth) => {
                    if body[i..].starts_with(b"*/") {
                        *depth -= 1;
                        if *depth == 0 {
                            self.quote = Quote::None;
                        }
                        i += 2;
                    } else if body[i..].starts_with(b"/*") {
                        *depth += 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                    continue;
                }
                Quote::None => {}
            }
            let prev_ident = i > 0 && is_ident_byte(body[i - 1]);
            match b {
                b'-' if body.get(i + 1) == Some(&b'-') => break,
                b'/' if body.get(i + 1) == Some(&b'*') => {
                    self.quote = Quote::Block(1);
                    i += 2;
                    continue;
                }
                b' ' | b'\t' | b'\x0c' => {}
                b'\\' => {
                    let rest = String::from_utf8_lossy(&body[i + 1..]);
                    let cmd: String = rest
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '\\')
                        .take(20)
                        .collect();
                    return Err(format!(
                        "line {}: the dump contains the psql meta-command \\{cmd}; a drill runs no psql commands (they could run programs or connect elsewhere)",
                        self.line_no
                    ));
                }
                b'\'' => {
                    let e_string = prev_ident
                        && matches!(body[i - 1], b'E' | b'e')
                        && (i < 2 || !is_ident_byte(body[i - 2]));
                    self.quote = Quote::Single {
                        backslash: e_string || !self.standard_strings,
                    };
                    self.at_start = false;
                }
                b'"' => {
                    self.quote = Quote::Double;
                    self.at_start = false;
                }
                b'$' if !prev_ident => {
                    let tag_len = body[i + 1..]
                        .iter()
                        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_' || **c >= 0x80)
                        .count();
                    let first_ok = body.get(i + 1).is_some_and(|c| !c.is_ascii_digit());
                    if body.get(i + 1 + tag_len) == Some(&b'$') && (tag_len == 0 || first_ok) {
                        let tag = body[i..i + tag_len + 2].to_vec();
                        i += tag.len();
                        self.quote = Quote::Dollar(tag);
                        self.at_start = false;
                        continue;
                    }
                    self.at_start = false;
                }
                b'(' => {
                    self.paren += 1;
                    self.at_start = false;
                }
                b')' => {
                    self.paren = self.paren.saturating_sub(1);
                    self.at_start = false;
                }
                b';' if self.paren == 0 => {
                    statements += 1;
                    self.end_statement()?;
                }
                c if is_ident_byte(c) && !prev_ident => {
                    let len = body[i..].iter().take_while(|c| is_ident_byte(**c)).count();
                    if self.paren == 0 && self.words.len() < 64 {
                        let w = String::from_utf8_lossy(&body[i..i + len]).to_ascii_uppercase();
                        self.words.push(w);
                    }
                    self.at_start = false;
                    i += len;
                    continue;
                }
                _ => self.at_start = false,
            }
            i += 1;
        }
        // A line that is exactly one ownership or privilege statement (as pg_dump writes them)
        // is left out; anything else around it on the line, and it is sent as it is.
        if starts_statement
            && statements == 1
            && self.last_was_ownership
            && self.at_start
            && self.quote == Quote::None
        {
            self.skipped += 1;
            return Ok(LineVerdict::Skip);
        }
        Ok(LineVerdict::Pass)
    }

    /// A statement ended (a `;` at depth 0): judge it by its words.
    fn end_statement(&mut self) -> Result<(), String> {
        let words = std::mem::take(&mut self.words);
        self.at_start = true;
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        let line = self.line_no;
        self.last_was_ownership = Self::is_ownership(&w);
        match w.as_slice() {
            ["CREATE" | "ALTER" | "DROP", "DATABASE", ..] => {
                return Err(format!(
                    "line {line}: the dump creates, changes or drops a database ({} DATABASE; made with pg_dump --create?); a drill restores only into its scratch database",
                    w[0]
                ));
            }
            ["COPY", ..] => {
                if w.contains(&"PROGRAM") {
                    return Err(format!(
                        "line {line}: the dump runs a program (COPY ... PROGRAM)"
                    ));
                }
                if w.windows(2).any(|p| p == ["FROM", "STDIN"]) {
                    self.in_copy = true;
                }
            }
            ["SET", "STANDARD_CONFORMING_STRINGS", .., value] => {
                self.standard_strings = !matches!(*value, "OFF" | "FALSE" | "NO" | "0");
            }
            _ => {}
        }
        Ok(())
    }

    /// An ownership or privilege statement, by its words.
    fn is_ownership(words: &[&str]) -> bool {
        matches!(
            words,
            ["GRANT" | "REVOKE", ..]
                | ["SET" | "RESET", "SESSION", "AUTHORIZATION", ..]
                | ["ALTER", "DEFAULT", "PRIVILEGES", ..]
                | ["ALTER", .., "OWNER", "TO", _]
        )
    }
}

/// Reads a plain dump (gzip'd or not) line by line through [`PlainGuard`] and sends it in chunks
/// to `tx`; stops at the first refused line. Runs on a blocking thread. Returns how many
/// ownership and privilege statements were left out.
pub fn feed_plain(
    path: &Path,
    gzip: bool,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    cancel: CancellationToken,
) -> Result<u64, String> {
    let f = open_sequential(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let inner: Box<dyn Read> = if gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(
            std::io::BufReader::with_capacity(READ_BUF, f),
        ))
    } else {
        Box::new(f)
    };
    let mut r = std::io::BufReader::with_capacity(READ_BUF, inner);
    let mut guard = PlainGuard::new();
    let mut chunk = Vec::with_capacity(256 * 1024);
    let mut line = Vec::new();
    loop {
        if cancel.is_cancelled() {
            return Err("interrupted".into());
        }
        line.clear();
        let n = r
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        if guard.check(&line)? == LineVerdict::Skip {
            continue;
        }
        chunk.extend_from_slice(&line);
        if chunk.len() >= 256 * 1024 {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(256 * 1024));
            if tx.blocking_send(full).is_err() {
                return Err("psql stopped reading".into());
            }
        }
    }
    if !chunk.is_empty() && tx.blocking_send(chunk).is_err() {
        return Err("psql stopped reading".into());
    }
    Ok(guard.skipped)
}

/// The newest complete backup and what was skipped on the way.
pub struct Selection {
    /// Every matching entry, newest first.
    pub all: Vec<Entry>,
    /// Index in `all` of the newest complete entry.
    pub newest: Option<usize>,
    /// Indexes in `all` of entries still being written (with why).
    pub in_progress: Vec<(usize, String)>,
}

/// Picks the newest entry that is not being written: modified longer than `settle` ago, and
/// unchanged on a re-stat `restat_after` later.
/// `restat_after` zero skips the re-stat (the caller re-stats after its verification instead);
/// entries in `exclude` were found growing by such a caller and count as being written.
pub async fn select_newest(
    dir: &Path,
    pattern: &globset::GlobMatcher,
    settle: Duration,
    restat_after: Duration,
    exclude: &[(PathBuf, String)],
) -> Result<Selection, String> {
    let (dir2, pattern2) = (dir.to_path_buf(), pattern.clone());
    let all = tokio::task::spawn_blocking(move || list_backups(&dir2, &pattern2))
        .await
        .map_err(|e| format!("internal error: {e}"))??;
    let now = SystemTime::now();
    let mut in_progress = Vec::new();
    let mut newest = None;
    for (i, e) in all.iter().enumerate() {
        if e.age(now) < settle || e.mtime > now {
            in_progress.push((
                i,
                format!(
                    "still being written: modified {} ago, within settle ({})",
                    human_age(e.age(now)),
                    crate::base::units::Dur(settle)
                ),
            ));
            continue;
        }
        if let Some((_, why)) = exclude.iter().find(|(p, _)| *p == e.path) {
            in_progress.push((i, why.clone()));
            continue;
        }
        if restat_after.is_zero() {
            newest = Some(i);
            break;
        }
        tokio::time::sleep(restat_after).await;
        let e2 = e.clone();
        let again = tokio::task::spawn_blocking(move || restat(&e2))
            .await
            .ok()
            .flatten();
        match again {
            Some((size, mtime)) if size == e.size && mtime == e.mtime => {
                newest = Some(i);
                break;
            }
            Some((size, _)) => {
                in_progress.push((
                    i,
                    format!(
                        "still being written: its size changed from {} to {} while we looked",
                        e.size, size
                    ),
                ));
            }
            None => in_progress.push((i, "disappeared while we looked".into())),
        }
    }
    Ok(Selection {
        all,
        newest,
        in_progress,
    })
}

impl Selection {
    /// The complete entry written before the newest one (for the size comparison).
    pub fn previous(&self) -> Option<&Entry> {
        let n = self.newest?;
        self.all[n + 1..].first()
    }

    /// The newest-5 listing, oldest last like `ls -lt | head`.
    pub fn listing(&self, now: SystemTime, tz: chrono_tz::Tz) -> Vec<String> {
        self.all
            .iter()
            .enumerate()
            .take(5)
            .map(|(i, e)| {
                let note = if Some(i) == self.newest {
                    "newest complete".to_string()
                } else {
                    self.in_progress
                        .iter()
                        .find(|(j, _)| *j == i)
                        .map(|(_, why)| why.clone())
                        .unwrap_or_default()
                };
                e.listing_line(now, tz, &note)
            })
            .collect()
    }

    pub fn listing_json(&self, now: SystemTime) -> Vec<serde_json::Value> {
        self.all.iter().take(5).map(|e| e.json(now)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_finds_tables_across_chunks_and_the_marker() {
        let sql = "--\n-- PostgreSQL database dump\n--\nCREATE TABLE public.orders (\n id int\n);\nCOPY public.orders (id) FROM stdin;\n1\n\\.\nCREATE TABLE \"Odd\".\"Pos\" (x int);\n--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc\n";
        for split in [1usize, 7, 30, 64] {
            let mut s = SqlScanner::new(true);
            for c in sql.as_bytes().chunks(split) {
                s.feed(c);
            }
            assert!(s.marker_found());
            let found: Vec<_> = s.tables.iter().map(|t| split_sql_name(t)).collect();
            assert!(has_table(&found, "orders"), "{found:?}");
            assert!(has_table(&found, "public.orders"));
            assert!(has_table(&found, "Odd.Pos"));
            assert!(!has_table(&found, "positions"));
        }
    }

    #[test]
    fn toc_lines_give_tables() {
        let lines: Vec<String> = [
            ";\n; Archive created at",
            "215; 1259 16386 TABLE public orders postgres",
            "3350; 0 16386 TABLE DATA public positions postgres",
            "216; 1259 16390 SEQUENCE public orders_id_seq postgres",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let t = toc_tables(&lines);
        assert!(has_table(&t, "orders"));
        assert!(has_table(&t, "public.positions"));
        assert!(!has_table(&t, "orders_id_seq"));
    }

    fn guard_all(lines: &[&str]) -> Result<Vec<LineVerdict>, String> {
        let mut g = PlainGuard::new();
        lines
            .iter()
            .map(|l| g.check(format!("{l}\n").as_bytes()))
            .collect()
    }

    #[test]
    fn plain_guard_refuses_leaving_the_scratch_database() {
        let mut g = PlainGuard::new();
        assert!(g.check(b"CREATE TABLE t (x int);\n").is_ok());
        assert!(g.check(b"COPY public.t (x) FROM stdin;\n").is_ok());
        assert!(
            g.check(b"\\connect other\n").is_ok(),
            "COPY data passes untouched"
        );
        assert!(g.check(b"\\.\n").is_ok());
        assert!(g.check(b"\\connect other\n").is_err());
        assert!(g.check(b"\\! rm -rf /\n").is_err());
        assert!(g.check(b"CREATE DATABASE prod;\n").is_err());
        assert_eq!(g.check(b"\\restrict abc\n"), Ok(LineVerdict::Skip));
    }

    #[test]
    fn plain_guard_reads_statements_not_line_starts() {
        for hostile in [
            "\\set x `touch /tmp/x`",
            "SELECT 1; \\! touch /tmp/x",
            "SELECT 1; \\c other",
            "copy t from program 'touch /tmp/x';",
            "SELECT 1; DROP DATABASE other;",
            "select 1;\n  drop\n database other;",
            "/* c */ Create Database x;",
            "\\restrict abc def",
        ] {
            let lines: Vec<&str> = hostile.split('\n').collect();
            assert!(guard_all(&lines).is_err(), "{hostile:?} passed");
        }
        // Backslashes inside literals, E-strings, dollar quotes, comments and COPY data are data.
        let ok = [
            "SELECT 'a\\b', E'it\\'s \\! x', $$ \\! $$, $f$ ; \\c $f$; -- \\!",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$",
            "SELECT 1; \\! not a command here",
            "$$;",
            "/* multi-line",
            "\\! in a comment */ SELECT \"a\\b\";",
            "COPY t (program, a) FROM stdin;",
            "x\\!\tDROP DATABASE y;",
            "\\.",
            "SELECT 2;",
        ];
        assert!(guard_all(&ok).is_ok(), "{:?}", guard_all(&ok));
    }

    #[test]
    fn plain_guard_leaves_out_ownership_and_privilege_lines_only() {
        let v = guard_all(&[
            "ALTER TABLE public.orders OWNER TO postgres;",
            "GRANT ALL ON SCHEMA public TO PUBLIC;",
            "REVOKE ALL ON TABLE public.t FROM bob;",
            "SET SESSION AUTHORIZATION 'postgres';",
            "ALTER TABLE public.orders ADD COLUMN owner text;",
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$",
            "BEGIN",
            "GRANT SELECT ON t TO bob;",
            "END $$;",
            "SELECT 1; GRANT ALL ON t TO bob;",
        ])
        .unwrap();
        use LineVerdict::*;
        assert_eq!(
            v,
            vec![Skip, Skip, Skip, Skip, Pass, Pass, Pass, Pass, Pass, Pass]
        );
    }

    #[test]
    fn sidecar_format() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.sha256");
        std::fs::write(&p, format!("{}  x\n", "AB".repeat(32))).unwrap();
        assert_eq!(read_sidecar(&p).unwrap(), "ab".repeat(32));
        std::fs::write(&p, "nope\n").unwrap();
        assert!(read_sidecar(&p).is_err());
    }
}
