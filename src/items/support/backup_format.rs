//! What a backup is and what it holds: its format from its first bytes (never the name alone),
//! a gzip or plain SQL stream read to its end with fixed-size buffers (the completion marker,
//! `CREATE TABLE` names), and the tables of a `pg_restore --list`.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::backup_files::Entry;
use super::checksum::{HashingReader, READ_BUF, StreamError, hex, open_sequential};

/// The completion marker pg_dump writes at the end of a plain SQL dump.
pub const PLAIN_MARKER: &str = "-- PostgreSQL database dump complete";

/// How many bytes at the end of a plain dump are searched for [`PLAIN_MARKER`]. pg_dump writes
/// only a few short lines after it (`--`, and `\unrestrict KEY` since 15.14/17.6).
const TAIL_BYTES: usize = 4096;

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
}
