//! Restoring an untrusted plain SQL dump: [`PlainGuard`] reads it statement by statement and
//! refuses what would leave the drill's scratch database, and leaves out ownership and
//! privilege statements; [`feed_plain`] streams the accepted lines to psql.

use std::io::{BufRead, Read};
use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::checksum::{READ_BUF, open_sequential};

/// Why a line of a plain dump must not reach psql (one sentence, with its line number).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Why [`feed_plain`] stopped before the end of the dump.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// A line must not run: nothing after it was sent.
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("{0}")]
    Read(String),
    /// psql exited or closed its input (its own error says why).
    #[error("psql stopped reading")]
    PsqlStopped,
    #[error("interrupted")]
    Cancelled,
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

    /// `Err(why)` for a line that must not run; otherwise whether to send it.
    pub fn check(&mut self, line: &[u8]) -> Result<LineVerdict, Refused> {
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
                    return Err(Refused(format!(
                        "line {}: the dump contains the psql meta-command \\{cmd}; a drill runs no psql commands (they could run programs or connect elsewhere)",
                        self.line_no
                    )));
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
    fn end_statement(&mut self) -> Result<(), Refused> {
        let words = std::mem::take(&mut self.words);
        self.at_start = true;
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        let line = self.line_no;
        self.last_was_ownership = Self::is_ownership(&w);
        match w.as_slice() {
            ["CREATE" | "ALTER" | "DROP", "DATABASE", ..] => {
                return Err(Refused(format!(
                    "line {line}: the dump creates, changes or drops a database ({} DATABASE; made with pg_dump --create?); a drill restores only into its scratch database",
                    w[0]
                )));
            }
            ["COPY", ..] => {
                if w.contains(&"PROGRAM") {
                    return Err(Refused(format!(
                        "line {line}: the dump runs a program (COPY ... PROGRAM)"
                    )));
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
) -> Result<u64, FeedError> {
    let f = open_sequential(path)
        .map_err(|e| FeedError::Read(format!("cannot read {}: {e}", path.display())))?;
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
            return Err(FeedError::Cancelled);
        }
        line.clear();
        let n = r
            .read_until(b'\n', &mut line)
            .map_err(|e| FeedError::Read(format!("cannot read {}: {e}", path.display())))?;
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
                return Err(FeedError::PsqlStopped);
            }
        }
    }
    if !chunk.is_empty() && tx.blocking_send(chunk).is_err() {
        return Err(FeedError::PsqlStopped);
    }
    Ok(guard.skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    fn guard_all(lines: &[&str]) -> Result<Vec<LineVerdict>, Refused> {
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
}
