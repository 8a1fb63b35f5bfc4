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
//!
//! Reading is the way grep reads: large blocks (`.gz` through `MultiGzDecoder`), the pattern
//! searched for in a whole block of lines, and only the lines around a match looked at; lines
//! that do not match cost no allocation and no per-line work. A line longer than 64 KiB is cut
//! (the pattern sees its first 64 KiB; the report counts such lines), and the table of distinct
//! messages is capped, so memory stays bounded whatever the log holds.
//!
//! `--dry-run` scans as usual but does not move the offsets (a dry run changes nothing, and the
//! real run after it must still see these lines).

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::SystemTime;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use regex::Regex;
use serde::Deserialize;
use serde_json::json;

use super::{ItemCtx, Outcome, Prepare, Status};
use crate::base::bounded::{LINE_CAP, lines_cut_text};
use crate::base::units::Dur;

/// Options of `kind = "log_scan"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogScan {
    /// Paths or globs (`*`, `?`, `[...]` in the file name part), relative to the config's
    /// folder; plain or `.gz`. Rotated siblings (`app.log.1`, `app.log.2.gz`,
    /// `app.log-20260105`) are followed automatically; do not list them.
    pub files: Vec<String>,
    /// A regex matched against each line. Default `ERROR`.
    #[serde(default)]
    pub pattern: LinePattern,
    /// On the first run (no remembered offset), only lines newer than this; lines without a
    /// parseable leading timestamp are counted. Default: the whole file.
    pub since: Option<Dur>,
    /// Warn when at least this many lines match (0: never warn). Default 1 (at most
    /// `fail_count` when only that is set: explicit beats default).
    #[serde(rename = "warn_count", default)]
    warn_count_set: Option<u64>,
    /// The warning threshold in effect (set by `prepare`).
    #[serde(skip, default = "default_warn_count")]
    pub warn_count: u64,
    /// Fail when at least this many lines match. Default: never.
    pub fail_count: Option<u64>,
    /// How many distinct messages to show. Default 10.
    #[serde(default = "default_top")]
    pub top: usize,
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
    /// The pattern, with `^`/`$` at line starts and ends (it is searched for in a whole buffer).
    pattern: regex::bytes::Regex,
    /// Lines older than this are skipped (first run with `since`).
    cutoff: Option<DateTime<Utc>>,
    tz: chrono_tz::Tz,
    matches: u64,
    /// normalised message → (count, first example).
    messages: HashMap<String, (u64, String)>,
    other: u64,
    /// Lines longer than [`LINE_CAP`] read so far (the pattern saw their first `LINE_CAP` bytes).
    lines_cut: u64,
    cancel: tokio_util::sync::CancellationToken,
}

impl Tally {
    /// Counts a line the pattern matched (with or without its newline).
    fn matched(&mut self, line: &[u8]) {
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

    /// A line too long to be held whole: its first [`LINE_CAP`] bytes.
    fn cut_line(&mut self, head: &[u8]) {
        self.lines_cut += 1;
        if self.pattern.is_match(head) {
            self.matched(head);
        }
    }

    /// Counts the matching lines of `region`, whole lines each ending with a newline, the way
    /// grep does: the pattern is searched for in the whole region, and only the lines around
    /// its matches are looked at (no work, no allocation for the others).
    fn region(&mut self, region: &[u8]) {
        debug_assert_eq!(region.last(), Some(&b'\n'));
        // Lines longer than the cap: one short backward search per LINE_CAP bytes finds them
        // (a window of LINE_CAP + 1 bytes from a line start that holds no newline is one).
        let mut p = 0;
        while p + LINE_CAP < region.len() {
            match memchr::memrchr(b'\n', &region[p..=p + LINE_CAP]) {
                Some(i) => p += i + 1,
                None => {
                    self.lines_cut += 1;
                    let from = p + LINE_CAP + 1;
                    p = memchr::memchr(b'\n', &region[from..])
                        .map_or(region.len(), |i| from + i + 1);
                }
            }
        }
        // `at` is always the start of a line.
        let mut at = 0;
        while at < region.len() {
            let Some(m) = self.pattern.find_at(region, at) else {
                break;
            };
            if m.start() >= region.len() {
                break;
            }
            let start = memchr::memrchr(b'\n', &region[at..m.start()]).map_or(at, |i| at + i + 1);
            let newline = memchr::memchr(b'\n', &region[m.start()..])
                .map_or(region.len() - 1, |i| m.start() + i);
            let line = &region[start..=newline];
            if newline - start > LINE_CAP {
                // A cut line matches on its first LINE_CAP bytes only (it is counted above).
                let head = &region[start..start + LINE_CAP];
                if self.pattern.is_match(head) {
                    self.matched(head);
                }
            } else if m.end() <= newline + 1 {
                self.matched(line);
            } else {
                // The match runs on into the next line(s): a line counts only if it matches
                // alone. Such a pattern (`[\s\S]`, `[^x]`) could make every search from here run
                // to the end of the block, so the rest of the block goes line by line.
                self.line_by_line(&region[start..]);
                return;
            }
            at = newline + 1;
        }
    }

    /// Matches each line of `lines` (whole lines, each ending with a newline) on its own, cut
    /// lines on their first [`LINE_CAP`] bytes (they were counted by [`Tally::region`]).
    fn line_by_line(&mut self, lines: &[u8]) {
        for line in lines.split_inclusive(|b| *b == b'\n') {
            let line = if line.len() - 1 > LINE_CAP {
                &line[..LINE_CAP]
            } else {
                line
            };
            if self.pattern.is_match(line) {
                self.matched(line);
            }
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
        for f in &self.files {
            if let Err(e) = globset::Glob::new(file_name_of(f)) {
                p.error("files", format!("invalid glob {f:?}: {e}"));
            }
        }
        self.warn_count = match (self.warn_count_set, self.fail_count) {
            (Some(w), _) => w,
            (None, Some(f)) => default_warn_count().min(f),
            (None, None) => default_warn_count(),
        };
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
        let mut tally = Tally {
            pattern: self.pattern.regex.clone(),
            cutoff: None,
            tz: ctx.tz,
            matches: 0,
            messages: HashMap::new(),
            other: 0,
            lines_cut: 0,
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
            let state = match ctx.state.scan_offset(&key) {
                Ok(s) => s,
                Err(e) => {
                    worst = Status::Fail;
                    problems.push(format!("cannot read the remembered offset of {key}: {e}"));
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
                        pending.push(ctx.state.offset(
                            &key,
                            new_state.0,
                            new_state.1,
                            head_fingerprint(base, new_state.1),
                        ));
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
            self.pattern.text
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
        if tally.lines_cut > 0 {
            lines.push(format!(
                "{} (the pattern sees only the first {} of a line)",
                lines_cut_text(tally.lines_cut),
                crate::base::bounded::size_text(LINE_CAP)
            ));
        }
        lines.extend(details);
        Outcome::new(worst, summary).with_details(lines).with_pending(pending).with_data(json!({
            // The trend (SPEC 9.3): how many lines matched.
            "value": count,
            "matches": count,
            "lines_cut": tally.lines_cut,
            "pattern": self.pattern.text,
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

/// Bytes asked for in one read: large reads keep the per-call cost negligible (grep reads
/// 96 KiB, ripgrep 64 KiB; more helps little and costs memory).
const READ_SIZE: usize = 256 * 1024;

/// Reads complete lines from `offset` to the end; returns where it stopped (after the last
/// complete line; for `.gz` the end of the decompressed stream).
///
/// The file is read in large blocks and the pattern searched for in each block of whole lines
/// ([`Tally::region`]); an unfinished line is carried to the front of the buffer. A line longer
/// than [`LINE_CAP`] is not carried: its first `LINE_CAP` bytes are kept and the rest skipped up
/// to its newline, so memory stays at about `READ_SIZE + LINE_CAP` whatever the file holds.
fn read_from(path: &Path, offset: u64, tally: &mut Tally) -> Result<FileRead, String> {
    let io_err = |e: std::io::Error| format!("{}: {e}", path.display());
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let gz = is_gz(path);
    let mut reader: Box<dyn Read> = if gz {
        let mut r = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(64 * 1024, file));
        // Decompressed bytes are skipped to reach the offset.
        std::io::copy(&mut (&mut r).take(offset), &mut std::io::sink()).map_err(io_err)?;
        Box::new(r)
    } else {
        let mut f = file;
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(offset)).map_err(io_err)?;
        Box::new(f)
    };
    let mut buf = vec![0u8; READ_SIZE + LINE_CAP + 1];
    // buf[..len] holds unread bytes that start at a line start (or, while a cut line is being
    // skipped, the bytes after what was skipped).
    let mut len = 0;
    // The file position of buf[0].
    let mut pos = offset;
    // The position after the last complete line counted: what the next run starts from.
    let mut done = offset;
    // A line longer than LINE_CAP whose newline is still to come: its first LINE_CAP bytes.
    let mut long: Option<Vec<u8>> = None;
    loop {
        // Fill the buffer (a read may return less than asked, a gzip stream often does).
        let mut eof = false;
        while len < buf.len() {
            match reader.read(&mut buf[len..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        let mut start = 0;
        if long.is_some() {
            match memchr::memchr(b'\n', &buf[..len]) {
                Some(i) => {
                    if let Some(head) = long.take() {
                        tally.cut_line(&head);
                    }
                    start = i + 1;
                    done = pos + start as u64;
                }
                None => {
                    // Still inside the long line: skip all of it.
                    pos += len as u64;
                    len = 0;
                }
            }
        }
        if long.is_none() {
            let end = memchr::memrchr(b'\n', &buf[start..len]).map_or(start, |i| start + i + 1);
            if end > start {
                tally.region(&buf[start..end]);
                done = pos + end as u64;
            }
            let rest = len - end;
            if rest > LINE_CAP {
                // No newline within LINE_CAP bytes: a line to cut.
                long = Some(buf[end..end + LINE_CAP].to_vec());
                pos += len as u64;
                len = 0;
            } else {
                buf.copy_within(end..len, 0);
                pos += end as u64;
                len = rest;
            }
        }
        if eof {
            // A gzip'd file is complete: its last line counts even without a newline. A plain
            // file's unfinished line is being written: it is read next time, whole.
            if gz {
                if let Some(head) = long.take() {
                    tally.cut_line(&head);
                } else if len > 0 {
                    let line = &buf[..len];
                    if tally.pattern.is_match(line) {
                        tally.matched(line);
                    }
                }
                done = pos + len as u64;
            }
            break;
        }
        if tally.cancel.is_cancelled() {
            break;
        }
    }
    Ok(FileRead {
        path: path.to_path_buf(),
        from: offset,
        to: done,
    })
}

/// The `pattern` option: a regex compiled when the config is read (a bad one is a configuration
/// error with its line and column, never a failed run).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct LinePattern {
    /// As written.
    text: String,
    regex: regex::bytes::Regex,
}

/// A `pattern` that is not a regex.
#[derive(Debug, thiserror::Error)]
#[error("invalid regex: {0}")]
pub struct InvalidRegex(#[from] regex::Error);

impl TryFrom<String> for LinePattern {
    type Error = InvalidRegex;
    fn try_from(text: String) -> Result<LinePattern, InvalidRegex> {
        Ok(LinePattern {
            regex: line_pattern(&text)?,
            text,
        })
    }
}

impl Default for LinePattern {
    /// `ERROR`.
    fn default() -> LinePattern {
        LinePattern::try_from("ERROR".to_string()).expect("`ERROR` is a regex")
    }
}

/// The pattern as it is searched for: `^` and `$` match at line starts and ends (also before a
/// `\r\n`), as they do when each line is matched on its own.
fn line_pattern(pattern: &str) -> Result<regex::bytes::Regex, regex::Error> {
    regex::bytes::RegexBuilder::new(pattern)
        .multi_line(true)
        .crlf(true)
        .build()
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
    // The timestamp pattern is anchored at the start: removing its match is slicing it off.
    let rest = LEADING_TS.find(line).map_or(line, |m| &line[m.end()..]);
    if rest.is_ascii() {
        normalise_ascii(rest.as_bytes())
    } else {
        normalise_regex(rest)
    }
}

/// [`normalise`] with the regexes `UUID`, `HEX` and `NUMBER` applied one after the other: the
/// definition, used for lines with non-ASCII text (where `\b` and `\d` follow Unicode).
fn normalise_regex(rest: &str) -> String {
    let s = UUID.replace_all(rest, "<id>");
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

/// [`normalise_regex`] for ASCII text in two passes over the bytes, with the same result (a
/// test compares them): it runs for every matching line, so it is the part of `log_scan` whose
/// cost grows with the number of matches. Words are runs of `[A-Za-z0-9_]` (ASCII's `\w`).
fn normalise_ascii(b: &[u8]) -> String {
    let is_word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    // Pass 1: UUIDs, then hex ids, word by word (both regexes match whole words only).
    let mut ids = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if !is_word(b[i]) {
            ids.push(b[i]);
            i += 1;
            continue;
        }
        if let Some(end) = uuid_at(b, i) {
            ids.extend_from_slice(b"<id>");
            i = end;
            continue;
        }
        let mut j = i;
        while j < b.len() && is_word(b[j]) {
            j += 1;
        }
        let word = &b[i..j];
        if is_hex_id(word) {
            ids.extend_from_slice(b"<id>");
        } else {
            ids.extend_from_slice(word);
        }
        i = j;
    }
    // Pass 2: numbers (`\d+(?:\.\d+)?`, greedy).
    let mut out = Vec::with_capacity(ids.len());
    let mut k = 0;
    while k < ids.len() {
        if !ids[k].is_ascii_digit() {
            out.push(ids[k]);
            k += 1;
            continue;
        }
        let digits_from = |mut e: usize| {
            while e < ids.len() && ids[e].is_ascii_digit() {
                e += 1;
            }
            e
        };
        let mut e = digits_from(k);
        if e + 1 < ids.len() && ids[e] == b'.' && ids[e + 1].is_ascii_digit() {
            e = digits_from(e + 1);
        }
        out.extend_from_slice(b"<n>");
        k = e;
    }
    out.truncate(MESSAGE_CHARS);
    // ASCII in, ASCII out.
    std::str::from_utf8(&out)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The end of a UUID (`8-4-4-4-12` hex digits, whole words) starting at word start `i`.
fn uuid_at(b: &[u8], i: usize) -> Option<usize> {
    let end = i + 36;
    if end > b.len()
        || b.get(end)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
    {
        return None;
    }
    let ok = b[i..end].iter().enumerate().all(|(k, c)| match k {
        8 | 13 | 18 | 23 => *c == b'-',
        _ => c.is_ascii_hexdigit(),
    });
    ok.then_some(end)
}

/// A whole word that `HEX` matches and the replacement turns into `<id>`: `0x` and hex digits,
/// or 6 or more hex digits with at least one digit and one letter.
fn is_hex_id(w: &[u8]) -> bool {
    if w.len() > 2 && (w.starts_with(b"0x") || w.starts_with(b"0X")) {
        return w[2..].iter().all(u8::is_ascii_hexdigit);
    }
    w.len() >= 6
        && w.iter().all(u8::is_ascii_hexdigit)
        && w.iter().any(u8::is_ascii_digit)
        && w.iter().any(u8::is_ascii_alphabetic)
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
    fn the_ascii_normaliser_agrees_with_the_regexes() {
        let tokens = [
            "2026-01-05 10:00:01.123 ",
            "[2026-01-05 10:00:01] ",
            "ERROR",
            "INFO",
            " ",
            "  ",
            "\t",
            "\u{b}",
            "-",
            ".",
            ":",
            "_",
            "<",
            ">",
            "/",
            "x",
            "0x",
            "0X",
            "0x1f",
            "0XAB",
            "0xg",
            "0x",
            "deadbeef",
            "deadbeef12",
            "a1b2c3",
            "a1b2",
            "12ab",
            "ABCDEF1",
            "abcdef",
            "123",
            "4",
            "4.2",
            "1.2.3",
            "2.",
            ".5",
            "exec7",
            "nio_8080",
            "3f2a9c1e-8b7d-4c1a-9e2f-1a2b3c4d5e6f",
            "3F2A9C1E-8B7D-4C1A-9E2F-1A2B3C4D5E6F",
            "3f2a9c1e-8b7d-4c1a-9e2f-1a2b3c4d5e6fa",
            "3f2a9c1e-8b7d-4c1a-9e2f",
            "g3f2a9c1e-8b7d-4c1a-9e2f-1a2b3c4d5e6f",
            "Order",
            "rejected",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for _ in 0..20_000 {
            let long = next(10) == 0;
            let n = 1 + next(if long { 120 } else { 12 });
            let line: String = (0..n).map(|_| tokens[next(tokens.len())]).collect();
            assert_eq!(
                normalise(&line),
                normalise_regex(
                    LEADING_TS
                        .find(&line)
                        .map_or(&line[..], |m| &line[m.end()..])
                ),
                "{line:?}"
            );
        }
        // Non-ASCII text takes the regexes (Unicode `\b` and `\d`).
        assert_eq!(
            normalise("Bestellung ١٢٣ für a1b2c3d4"),
            "Bestellung <n> für <id>"
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

    fn tally(pattern: &str) -> Tally {
        Tally {
            pattern: line_pattern(pattern).expect("valid pattern"),
            cutoff: None,
            tz: chrono_tz::UTC,
            matches: 0,
            messages: HashMap::new(),
            other: 0,
            lines_cut: 0,
            cancel: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// What a line-by-line reader finds in `text`: (matching lines, lines cut, bytes of
    /// complete lines). Each complete line is matched on its own, cut at LINE_CAP.
    fn line_by_line(text: &[u8], pattern: &str) -> (u64, u64, u64) {
        let re = line_pattern(pattern).expect("valid pattern");
        let (mut matches, mut cut, mut bytes) = (0, 0, 0);
        for line in text.split_inclusive(|b| *b == b'\n') {
            if !line.ends_with(b"\n") {
                break;
            }
            bytes += line.len() as u64;
            if line.len() - 1 > LINE_CAP {
                cut += 1;
                matches += u64::from(re.is_match(&line[..LINE_CAP]));
            } else {
                matches += u64::from(re.is_match(line));
            }
        }
        (matches, cut, bytes)
    }

    fn scan_bytes(text: &[u8], pattern: &str, offset: u64) -> (u64, u64, u64) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("app.log");
        std::fs::write(&path, text).expect("write");
        let mut t = tally(pattern);
        let read = read_from(&path, offset, &mut t).expect("read");
        (t.matches, t.lines_cut, read.to)
    }

    #[test]
    fn a_match_running_into_the_next_line_counts_only_a_line_that_matches_alone() {
        let text = b"ERROR\nx\nERROR x\nfoo ERROR\r\nERROR: a\n";
        assert_eq!(scan_bytes(text, r"ERROR\s+x", 0).0, 1);
        // `^` and `$` are a line's start and end (before `\r\n` too).
        assert_eq!(scan_bytes(text, "^ERROR", 0).0, 3);
        assert_eq!(scan_bytes(text, "ERROR$", 0).0, 2);
        // Empty matches and a pattern matching the newline itself do not loop or miscount.
        assert_eq!(scan_bytes(text, "x*", 0).0, 5);
        assert_eq!(scan_bytes(text, r"\n", 0).0, 5);
    }

    #[test]
    fn long_lines_are_cut_and_counted_and_the_offset_stays_on_line_boundaries() {
        let mut text = b"ERROR short\n".to_vec();
        // An error beyond the first 64 KiB of a line is not seen; one within it is.
        text.extend(std::iter::repeat_n(b'a', 100_000));
        text.extend_from_slice(b"ERROR late\nERROR");
        text.extend(std::iter::repeat_n(b'b', 3 * READ_SIZE));
        text.extend_from_slice(b"\nINFO fine\n");
        let complete = text.len() as u64;
        // A long line still being written is left for the next run, whole.
        text.extend_from_slice(b"ERROR");
        text.extend(std::iter::repeat_n(b'c', 2 * READ_SIZE));
        assert_eq!(scan_bytes(&text, "ERROR", 0), (2, 2, complete));
        assert_eq!(line_by_line(&text, "ERROR"), (2, 2, complete));
    }

    #[test]
    fn a_gzip_file_is_read_to_its_end_with_long_lines_cut() {
        let mut text = b"ERROR one\n".to_vec();
        text.extend(std::iter::repeat_n(b'z', 3 * READ_SIZE));
        text.extend_from_slice(b"\nERROR short\nERROR long last line without newline");
        text.extend(std::iter::repeat_n(b'w', 2 * LINE_CAP));
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("app.log.1.gz");
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&path).expect("create"),
            flate2::Compression::fast(),
        );
        std::io::Write::write_all(&mut enc, &text).expect("gzip");
        enc.finish().expect("gzip");
        let mut t = tally("ERROR");
        let read = read_from(&path, 0, &mut t).expect("read");
        // A compressed file is complete: its last line counts without a newline.
        assert_eq!((t.matches, t.lines_cut, read.to), (3, 2, text.len() as u64));
        // From a decompressed offset: only the rest.
        let mut t = tally("ERROR");
        let read = read_from(&path, 10, &mut t).expect("read");
        assert_eq!((t.matches, t.lines_cut, read.to), (2, 2, text.len() as u64));
    }

    #[test]
    fn block_search_finds_what_a_line_by_line_reader_finds() {
        // Lines of every length around the cap and the buffer size, errors anywhere in them.
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut text = Vec::new();
        for _ in 0..800 {
            let len = match next(40) {
                0 | 1 => LINE_CAP as u64 - 8 + next(16),
                2 => next((READ_SIZE + 2 * LINE_CAP) as u64),
                _ => next(200),
            } as usize;
            let mut line: Vec<u8> = (0..len).map(|i| b"abc defgh"[i % 9]).collect();
            if next(3) == 0 && len > 5 {
                let at = next((len - 5) as u64) as usize;
                line[at..at + 5].copy_from_slice(b"ERROR");
            }
            text.extend_from_slice(&line);
            text.push(if next(50) == 0 { b'\r' } else { b' ' });
            text.push(b'\n');
        }
        text.extend_from_slice(b"ERROR unfinished");
        for pattern in [
            "ERROR",
            "ERROR $",
            "^ERROR",
            r"ERROR[\s\S]{0,3}abc",
            r"ERROR[\s\S]*c",
        ] {
            let want = line_by_line(&text, pattern);
            assert_eq!(scan_bytes(&text, pattern, 0), want, "{pattern}");
        }
        // From an offset on a line boundary: the same as the rest of the file.
        let offset = text.len() / 2;
        let offset = offset
            + text[offset..]
                .iter()
                .position(|b| *b == b'\n')
                .expect("newline")
            + 1;
        let (m, c, b) = line_by_line(&text[offset..], "ERROR");
        assert_eq!(
            scan_bytes(&text, "ERROR", offset as u64),
            (m, c, offset as u64 + b)
        );
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
