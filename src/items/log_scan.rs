//! `log_scan`: lines matching a pattern in log files since the previous run.
//!
//! The runbook's "Review application logs for errors" becomes: how many `ERROR` lines were
//! written since yesterday's run, and which distinct messages they are (numbers, hex ids and
//! UUIDs normalised, so "order 81723 rejected" and "order 81724 rejected" are one message).
//!
//! Where the previous run stopped is remembered per file as (inode, offset) in the state store
//! (`scan_offsets`). On the next run:
//! - same inode, file at least as long: read from the offset;
//! - same inode, file shorter than the offset: it was truncated (or `copytruncate`d): the rest
//!   of the old content is read from the newest rotated sibling changed since the previous run,
//!   if there is one, then the file from 0;
//! - another inode: the file was rotated (`app.log` → `app.log.1`, later `app.log.2.gz`): the
//!   rotated sibling with the old inode (or, once compressed, the oldest sibling changed since the
//!   previous run) is read from the old offset, siblings rotated after it in full, then the new
//!   file from 0.
//!
//! The offset only ever moves past complete lines, so a line being written is read next time.
//! Reading streams line by line (`.gz` through `MultiGzDecoder`); the table of distinct messages
//! is capped, so memory stays bounded whatever the log size.
//!
//! `--dry-run` scans as usual but does not move the offsets (a dry run changes nothing, and the
//! real run after it must still see these lines).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::SystemTime;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use regex::Regex;
use serde::Deserialize;
use serde_json::json;

use super::{ItemCtx, Outcome, Prepare, Status};
use crate::units::Dur;

/// Options of `kind = "log_scan"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogScan {
    /// Paths or globs (`*`, `?`, `[...]` in the file name part), relative to the config's
    /// folder; plain or `.gz`. Rotated siblings (`app.log.1`, `app.log.2.gz`,
    /// `app.log-20260105`) are followed automatically; do not list them.
    pub files: Vec<String>,
    /// A regex matched against each line. Default `ERROR`.
    #[serde(default = "default_pattern")]
    pub pattern: String,
    /// On the first run (no remembered offset), only lines newer than this; lines without a
    /// parseable leading timestamp are counted. Default: the whole file.
    pub since: Option<Dur>,
    /// Warn when at least this many lines match (0: never warn). Default 1.
    #[serde(default = "default_warn_count")]
    pub warn_count: u64,
    /// Fail when at least this many lines match. Default: never.
    pub fail_count: Option<u64>,
    /// How many distinct messages to show. Default 10.
    #[serde(default = "default_top")]
    pub top: usize,
}

fn default_pattern() -> String {
    "ERROR".into()
}
fn default_warn_count() -> u64 {
    1
}
fn default_top() -> usize {
    10
}

/// Distinct messages kept; further new messages are counted as "(other messages)".
const MAX_DISTINCT: usize = 10_000;
/// Characters of a message kept for grouping and display.
const MESSAGE_CHARS: usize = 300;

static UUID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
        .expect("valid regex")
});
static HEX: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:0x[0-9a-f]+|[0-9a-f]*[0-9][0-9a-f]*[a-f][0-9a-f]*|[0-9a-f]*[a-f][0-9a-f]*[0-9][0-9a-f]*)\b").expect("valid regex")
});
static NUMBER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\d+(?:\.\d+)?").expect("valid regex"));
/// A leading timestamp: `2026-01-05 10:00:00,123`, `2026-01-05T10:00:00.123+05:30`,
/// `[2026-01-05 10:00:00]`, `2026-01-05 10:00:00.123 IST` (PostgreSQL; common zone
/// abbreviations only, so a level word like `ERROR` is never taken for a zone).
static LEADING_TS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\[?(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2})(?:[.,](\d{1,9}))?(?:\s?(Z|[+-]\d{2}:?\d{2})|\s(UTC|GMT|IST|CET|CEST|EET|EEST|WET|WEST|BST|MSK|EST|EDT|CST|CDT|MST|MDT|PST|PDT|HKT|SGT|JST|KST|AEST|AEDT)\b)?\]?\s*")
        .expect("valid regex")
});

/// Collects matches across files.
struct Tally {
    pattern: regex::bytes::Regex,
    /// Lines older than this are skipped (first run with `since`).
    cutoff: Option<DateTime<Utc>>,
    tz: chrono_tz::Tz,
    matches: u64,
    /// normalised message → (count, first example).
    messages: HashMap<String, (u64, String)>,
    other: u64,
    cancel: tokio_util::sync::CancellationToken,
}

impl Tally {
    fn line(&mut self, line: &[u8]) {
        if !self.pattern.is_match(line) {
            return;
        }
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\n', '\r']);
        if let Some(cutoff) = self.cutoff
            && leading_time(text, self.tz).is_some_and(|t| t < cutoff)
        {
            return;
        }
        self.matches += 1;
        let key = normalise(text);
        if let Some(entry) = self.messages.get_mut(&key) {
            entry.0 += 1;
        } else if self.messages.len() < MAX_DISTINCT {
            self.messages
                .insert(key, (1, text.chars().take(MESSAGE_CHARS).collect()));
        } else {
            self.other += 1;
        }
    }
}

/// What `scan_file` did: the reads, a note about rotation or truncation, and the new
/// (inode, offset) to remember.
type ScanResult = (Vec<FileRead>, Option<String>, (u64, u64));

/// How many leading bytes of a file its fingerprint covers (fewer when the offset is smaller).
const HEAD_BYTES: u64 = 128;

/// FNV-1a hash of the first `min(offset, HEAD_BYTES)` bytes of a file as it is on disk.
fn head_fingerprint(path: &Path, offset: u64) -> u64 {
    use std::io::Read;
    let mut head = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(offset.min(HEAD_BYTES)).read_to_end(&mut head);
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in head {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // Stored in SQLite as i64: keep it non-negative.
    hash & (i64::MAX as u64)
}

/// One file read: where from, where to.
struct FileRead {
    path: PathBuf,
    from: u64,
    to: u64,
}

impl LogScan {
    pub fn prepare(&mut self, p: &mut Prepare) {
        if self.files.is_empty() {
            p.error("files", "log_scan needs at least one file or glob");
        }
        if let Err(e) = regex::bytes::Regex::new(&self.pattern) {
            p.error("pattern", format!("invalid regex: {e}"));
        }
        for f in &self.files {
            if let Err(e) = globset::Glob::new(file_name_of(f)) {
                p.error("files", format!("invalid glob {f:?}: {e}"));
            }
        }
        if let Some(fc) = self.fail_count
            && self.warn_count > fc
        {
            p.error(
                "warn_count",
                format!(
                    "warn_count ({}) is above fail_count ({fc})",
                    self.warn_count
                ),
            );
        }
    }

    pub async fn run(&self, ctx: &ItemCtx) -> Outcome {
        let this = self.clone();
        let ctx = ctx.clone();
        match tokio::task::spawn_blocking(move || this.scan(&ctx)).await {
            Ok(o) => o,
            Err(e) => Outcome::fail(format!("scanning failed: {e}")),
        }
    }

    fn scan(&self, ctx: &ItemCtx) -> Outcome {
        let pattern = match regex::bytes::Regex::new(&self.pattern) {
            Ok(r) => r,
            Err(e) => return Outcome::fail(format!("invalid pattern: {e}")),
        };
        let mut tally = Tally {
            pattern,
            cutoff: None,
            tz: ctx.tz,
            matches: 0,
            messages: HashMap::new(),
            other: 0,
            cancel: ctx.cancel.clone(),
        };
        let mut details = Vec::new();
        let mut files_data = Vec::new();
        let mut problems: Vec<String> = Vec::new();
        let mut worst = Status::Pass;
        let mut pending = Vec::new();

        let (bases, missing) = self.expand(ctx);
        for m in missing {
            worst = Status::Fail;
            problems.push(m.clone());
            details.push(m);
        }
        let previous_run: Option<SystemTime> = ctx.previous_started_at.map(SystemTime::from);
        for base in &bases {
            let key = base.to_string_lossy().to_string();
            let state = match ctx.store.scan_offset(&ctx.job, &ctx.item, &key) {
                Ok(s) => s,
                Err(e) => {
                    worst = Status::Fail;
                    problems.push(format!("cannot read the remembered offset of {key}: {e:#}"));
                    continue;
                }
            };
            tally.cutoff = match (state, self.since) {
                (None, Some(since)) => chrono::Duration::from_std(since.get())
                    .ok()
                    .map(|d| ctx.started_at - d),
                _ => None,
            };
            match self.scan_file(base, state, previous_run, &mut tally) {
                Ok((reads, note, new_state)) => {
                    let parts: Vec<String> = reads
                        .iter()
                        .map(|r| {
                            if r.from == 0 {
                                format!("{} ({} bytes)", r.path.display(), r.to)
                            } else {
                                format!("{} (from byte {} to {})", r.path.display(), r.from, r.to)
                            }
                        })
                        .collect();
                    let mut line = format!(
                        "read {}",
                        if parts.is_empty() {
                            format!("{} (nothing new)", base.display())
                        } else {
                            parts.join(", then ")
                        }
                    );
                    if let Some(n) = &note {
                        line.push_str(&format!(" — {n}"));
                    }
                    details.push(line);
                    files_data.push(json!({
                        "file": key,
                        "note": note,
                        "reads": reads.iter().map(|r| json!({"path": r.path, "from": r.from, "to": r.to})).collect::<Vec<_>>(),
                        "inode": new_state.0, "offset": new_state.1,
                    }));
                    // The new offset is stored with the report (in its transaction), not now: a
                    // crash before the report is stored must not lose these lines for good.
                    if !ctx.dry_run {
                        pending.push(crate::store::ScanOffset {
                            job: ctx.job.clone(),
                            item: ctx.item.clone(),
                            file: key.clone(),
                            inode: new_state.0,
                            offset: new_state.1,
                            fingerprint: head_fingerprint(base, new_state.1),
                        });
                    }
                    crate::failpoint!("log-scan-after-read");
                }
                Err(e) => {
                    worst = Status::Fail;
                    problems.push(format!("{}: {e}", base.display()));
                    details.push(format!("{}: {e}", base.display()));
                }
            }
            if tally.cancel.is_cancelled() {
                problems.push("interrupted".into());
                worst = Status::Fail;
                break;
            }
        }
        if ctx.dry_run {
            details.push("dry run: offsets not advanced".into());
        }

        let count = tally.matches;
        let count_status = if self.fail_count.is_some_and(|f| count >= f) {
            Status::Fail
        } else if self.warn_count > 0 && count >= self.warn_count {
            Status::Warn
        } else {
            Status::Pass
        };
        if count_status.severity() > worst.severity() {
            worst = count_status;
        }
        let since_text = match ctx.previous_started_at {
            Some(t) => format!(
                "since the previous run ({})",
                t.with_timezone(&ctx.tz).format("%Y-%m-%d %H:%M %Z")
            ),
            None => match self.since {
                Some(s) => format!("in the last {s} (first run)"),
                None => "(first run: whole files)".into(),
            },
        };
        let mut top: Vec<(String, u64, String)> = tally
            .messages
            .into_iter()
            .map(|(k, (n, ex))| (k, n, ex))
            .collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let distinct = top.len() + usize::from(tally.other > 0);
        let mut summary = format!(
            "{count} line{} matching /{}/ {since_text}",
            if count == 1 { "" } else { "s" },
            self.pattern
        );
        if count > 0 {
            summary.push_str(&format!(", {distinct} distinct"));
        }
        if !problems.is_empty() {
            summary = format!("{}; {summary}", problems.join("; "));
        }
        let mut lines = Vec::new();
        for (msg, n, _) in top.iter().take(self.top) {
            lines.push(format!("{n:>6}× {msg}"));
        }
        if tally.other > 0 {
            lines.push(format!(
                "{:>6}× (other messages beyond {MAX_DISTINCT} distinct)",
                tally.other
            ));
        }
        lines.extend(details);
        Outcome::new(worst, summary).with_details(lines).with_pending(pending).with_data(json!({
            "matches": count,
            "pattern": self.pattern,
            "distinct": distinct,
            "top": top.iter().take(self.top).map(|(m, n, ex)| json!({"message": m, "count": n, "example": ex})).collect::<Vec<_>>(),
            "files": files_data,
            "dry_run": ctx.dry_run,
        }))
    }

    /// The files to scan (globs expanded, rotated siblings of other entries removed) and
    /// messages for configured plain paths that do not exist.
    fn expand(&self, ctx: &ItemCtx) -> (Vec<PathBuf>, Vec<String>) {
        let mut out: Vec<PathBuf> = Vec::new();
        let mut missing = Vec::new();
        for entry in &self.files {
            let path = ctx.path(Path::new(entry));
            let name = file_name_of(entry);
            if !name.contains(['*', '?', '[']) {
                if path.exists() {
                    out.push(path);
                } else {
                    missing.push(format!("{} does not exist", path.display()));
                }
                continue;
            }
            let dir = path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| ctx.config_dir.clone());
            let glob = match globset::Glob::new(name) {
                Ok(g) => g.compile_matcher(),
                Err(e) => {
                    missing.push(format!("invalid glob {entry:?}: {e}"));
                    continue;
                }
            };
            let mut found: Vec<PathBuf> = match std::fs::read_dir(&dir) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .filter(|e| glob.is_match(e.file_name()))
                    .map(|e| e.path())
                    .collect(),
                Err(e) => {
                    missing.push(format!("cannot list {}: {e}", dir.display()));
                    continue;
                }
            };
            if found.is_empty() {
                missing.push(format!("no file matches {}", path.display()));
            }
            found.sort();
            out.extend(found);
        }
        out.sort();
        out.dedup();
        // A glob like `*.log*` also matches `app.log.1`: that one is read as app.log's sibling.
        let all = out.clone();
        out.retain(|p| {
            !all.iter()
                .any(|other| other != p && is_rotated_sibling(other, p))
        });
        (out, missing)
    }

    /// Reads what is new in `base` (and its rotated siblings); returns the reads, a note about
    /// rotation/truncation, and the new (inode, offset) to remember.
    fn scan_file(
        &self,
        base: &Path,
        state: Option<(u64, u64, Option<u64>)>,
        previous_run: Option<SystemTime>,
        tally: &mut Tally,
    ) -> Result<ScanResult, String> {
        let meta = std::fs::metadata(base).map_err(|e| format!("cannot stat: {e}"))?;
        let (ino, size) = (meta.ino(), meta.len());
        // Inodes are reused: after logrotate removes a file, the new log often gets the old
        // inode. The remembered fingerprint of the first bytes tells a new file on a reused
        // inode from the old one, so it is not read from the old offset.
        let same_head = match state {
            Some((_, off, Some(fp))) => head_fingerprint(base, off) == fp,
            _ => true,
        };
        let state = state.map(|(i, o, _)| (i, o));
        let gz = is_gz(base);
        let mut reads = Vec::new();
        let mut note = None;
        let mut siblings = rotated_siblings(base);
        siblings.sort_by_key(|(_, m)| m.modified().ok());

        let start = match state {
            None => {
                // First run: the whole file; with `since`, rotated siblings changed within the
                // window too (lines older than the cutoff are skipped by timestamp).
                if let Some(cutoff) = tally.cutoff {
                    let cutoff = SystemTime::from(cutoff);
                    for (p, m) in &siblings {
                        if m.modified().is_ok_and(|t| t >= cutoff) {
                            reads.push(read_from(p, 0, tally)?);
                        }
                    }
                }
                0
            }
            Some((old_ino, old_off)) if old_ino == ino && same_head && (gz || size >= old_off) => {
                old_off
            }
            Some((old_ino, old_off)) => {
                let changed: Vec<&(PathBuf, std::fs::Metadata)> = siblings
                    .iter()
                    .filter(|(_, m)| {
                        m.ino() == old_ino
                            || previous_run.is_none_or(|prev| m.modified().is_ok_and(|t| t > prev))
                    })
                    .collect();
                if old_ino == ino && size < old_off {
                    note = Some(format!(
                        "truncated (size {size} < remembered offset {old_off}): read from the start"
                    ));
                    // copytruncate: the rest of the old content is in the newest rotated copy.
                    if let Some((p, _)) = changed.last().filter(|_| previous_run.is_some()) {
                        reads.push(read_from(p, old_off, tally)?);
                        note = Some(format!(
                            "truncated (copytruncate into {}): read its rest, then the file from the start",
                            p.display()
                        ));
                    }
                } else {
                    // Rotated: the old file is the sibling with the old inode, or once
                    // compressed (new inode), the oldest sibling changed since the previous run.
                    let old_pos = changed
                        .iter()
                        .position(|(_, m)| m.ino() == old_ino)
                        .or(if changed.is_empty() { None } else { Some(0) });
                    match old_pos {
                        Some(i) => {
                            let (p, _) = changed[i];
                            reads.push(read_from(p, old_off, tally)?);
                            for (p, _) in changed.iter().skip(i + 1) {
                                reads.push(read_from(p, 0, tally)?);
                            }
                            note = Some(format!("rotated: read the rest of {}, then the new file from the start", p.display()));
                        }
                        None => note = Some("rotated, and the old file was not found: read the new file from the start".into()),
                    }
                }
                0
            }
        };
        let r = read_from(base, start, tally)?;
        let new_offset = r.to;
        reads.push(r);
        // Nothing read from the base and nothing else: say "nothing new" rather than listing it.
        reads.retain(|r| r.to > r.from || r.from == 0 && r.to > 0);
        Ok((reads, note, (ino, new_offset)))
    }
}

/// Reads complete lines from `offset` to the end; returns where it stopped (after the last
/// complete line; for `.gz` the end of the decompressed stream).
fn read_from(path: &Path, offset: u64, tally: &mut Tally) -> Result<FileRead, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let gz = is_gz(path);
    let mut reader: Box<dyn BufRead> = if gz {
        let mut r = BufReader::with_capacity(
            64 * 1024,
            flate2::read::MultiGzDecoder::new(BufReader::new(file)),
        );
        // Decompressed bytes are skipped to reach the offset.
        std::io::copy(&mut (&mut r).take(offset), &mut std::io::sink())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Box::new(r)
    } else {
        let mut f = file;
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(offset))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Box::new(BufReader::with_capacity(64 * 1024, f))
    };
    let mut pos = offset;
    let mut buf = Vec::with_capacity(4096);
    let mut lines = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') && !gz {
            // A line still being written: leave it for the next run.
            break;
        }
        pos += n as u64;
        tally.line(&buf);
        lines += 1;
        if lines.is_multiple_of(100_000) && tally.cancel.is_cancelled() {
            break;
        }
        if buf.capacity() > 1024 * 1024 {
            buf = Vec::with_capacity(4096);
        }
    }
    Ok(FileRead {
        path: path.to_path_buf(),
        from: offset,
        to: pos,
    })
}

fn is_gz(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "gz")
}

/// The file-name part of a configured path or glob.
fn file_name_of(entry: &str) -> &str {
    entry.rsplit('/').next().unwrap_or(entry)
}

/// `app.log.1`, `app.log.2.gz`, `app.log-20260105`, `app.log-20260105.gz` are rotated
/// siblings of `app.log`.
fn is_rotated_sibling(base: &Path, candidate: &Path) -> bool {
    if base.parent() != candidate.parent() {
        return false;
    }
    let (Some(b), Some(c)) = (
        base.file_name().and_then(|n| n.to_str()),
        candidate.file_name().and_then(|n| n.to_str()),
    ) else {
        return false;
    };
    let Some(rest) = c.strip_prefix(b) else {
        return false;
    };
    let rest = rest.strip_suffix(".gz").unwrap_or(rest);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match (rest.strip_prefix('.'), rest.strip_prefix('-')) {
        (Some(n), _) => digits(n),
        (_, Some(d)) => digits(d) && d.len() >= 8,
        _ => false,
    }
}

fn rotated_siblings(base: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let Some(dir) = base.parent() else {
        return Vec::new();
    };
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| is_rotated_sibling(base, p))
        .filter_map(|p| {
            std::fs::metadata(&p)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| (p, m))
        })
        .collect()
}

/// The message of a line for grouping: leading timestamp removed, UUIDs and hex ids → `<id>`,
/// numbers → `<n>`, cut to a readable length.
pub fn normalise(line: &str) -> String {
    let rest = LEADING_TS.replace(line, "");
    let s = UUID.replace_all(&rest, "<id>");
    let s = HEX.replace_all(&s, |c: &regex::Captures| {
        // Words like "deadbeef" without digits are not matched; "a1b2c3" and 0x1f are ids, but
        // short all-letter words ("add", "bad") never reach here.
        if c[0].len() >= 6 || c[0].starts_with("0x") || c[0].starts_with("0X") {
            "<id>".to_string()
        } else {
            c[0].to_string()
        }
    });
    let s = NUMBER.replace_all(&s, "<n>");
    s.chars()
        .take(MESSAGE_CHARS)
        .collect::<String>()
        .trim()
        .to_string()
}

/// The time of a line's leading timestamp; without an offset it is read in `tz`.
fn leading_time(line: &str, tz: chrono_tz::Tz) -> Option<DateTime<Utc>> {
    let c = LEADING_TS.captures(line)?;
    let naive = NaiveDateTime::parse_from_str(&c[1].replace('T', " "), "%Y-%m-%d %H:%M:%S").ok()?;
    match c.get(3).map(|m| m.as_str()) {
        Some("Z") => Some(Utc.from_utc_datetime(&naive)),
        Some(off) => {
            let digits: String = off.chars().filter(|c| c.is_ascii_digit()).collect();
            let (h, m): (i32, i32) = (
                digits.get(0..2)?.parse().ok()?,
                digits.get(2..4)?.parse().ok()?,
            );
            let secs = (h * 3600 + m * 60) * if off.starts_with('-') { -1 } else { 1 };
            let fixed = chrono::FixedOffset::east_opt(secs)?;
            fixed
                .from_local_datetime(&naive)
                .single()
                .map(|t| t.with_timezone(&Utc))
        }
        None => tz
            .from_local_datetime(&naive)
            .earliest()
            .map(|t| t.with_timezone(&Utc)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_normalised() {
        assert_eq!(
            normalise(
                "2026-01-05 10:00:01.123 ERROR [http-nio-8080-exec-7] Order 81723 rejected for user 3f2a9c1e-8b7d-4c1a-9e2f-1a2b3c4d5e6f"
            ),
            "ERROR [http-nio-<n>-exec-<n>] Order <n> rejected for user <id>"
        );
        assert_eq!(
            normalise("ERROR trace 0x7f3a9c at deadbeef12"),
            "ERROR trace <id> at <id>"
        );
        assert_eq!(
            normalise("2026-01-05 10:00:01.123 IST [4242] ERROR:  duplicate key value"),
            "[<n>] ERROR:  duplicate key value"
        );
    }

    #[test]
    fn leading_timestamps_parse_in_the_zone_or_with_their_offset() {
        let tz: chrono_tz::Tz = "Asia/Kolkata".parse().expect("zone");
        let t = leading_time("2026-01-05 10:00:00,123 ERROR x", tz).expect("parsed");
        assert_eq!(t.to_rfc3339(), "2026-01-05T04:30:00+00:00");
        let t = leading_time("2026-01-05T10:00:00.5Z ERROR", tz).expect("parsed");
        assert_eq!(t.to_rfc3339(), "2026-01-05T10:00:00+00:00");
        let t = leading_time("[2026-01-05 10:00:00 +0100] x", tz).expect("parsed");
        assert_eq!(t.to_rfc3339(), "2026-01-05T09:00:00+00:00");
        assert!(leading_time("Jan  5 10:00:00 host x", tz).is_none());
    }

    #[test]
    fn rotated_siblings_are_recognised() {
        let b = Path::new("/l/app.log");
        assert!(is_rotated_sibling(b, Path::new("/l/app.log.1")));
        assert!(is_rotated_sibling(b, Path::new("/l/app.log.12.gz")));
        assert!(is_rotated_sibling(b, Path::new("/l/app.log-20260105.gz")));
        assert!(!is_rotated_sibling(b, Path::new("/l/app.log.bak")));
        assert!(!is_rotated_sibling(b, Path::new("/l/app.logger")));
        assert!(!is_rotated_sibling(b, Path::new("/other/app.log.1")));
    }
}
