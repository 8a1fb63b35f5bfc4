//! Restoring an untrusted plain SQL dump: [`PlainGuard`] reads it statement by statement and
//! refuses what would leave the drill's scratch database, and leaves out ownership and
//! privilege statements and those of untrusted extensions; [`feed_plain`] streams the accepted
//! lines to psql; [`plain_extensions`] finds the extensions a dump creates, before the restore.

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
    /// and which `pg_restore --no-owner --no-privileges` leaves out too; a statement on an
    /// extension of [`PlainGuard::with_left_out`] (`CREATE`, `COMMENT ON`, `DROP EXTENSION`),
    /// with the lines held before it; or pg_dump's own `\restrict KEY` / `\unrestrict KEY`
    /// (psql is already restricted, with runbook's key).
    Skip,
    /// Keep it back until the statement it begins is read to its end: it may be one to leave
    /// out (a statement on an extension, over several lines). The next `Pass` sends the held
    /// lines before its own, the next `Skip` leaves them out with it.
    Hold,
}

/// A statement on an extension, as [`PlainGuard`] recognises it by its words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExtensionStatement {
    Create,
    Comment,
    Drop,
}

/// The longest name PostgreSQL keeps (NAMEDATALEN - 1 bytes); a longer quoted identifier is
/// kept to one byte more, so it equals no extension's name.
const NAME_MAX: usize = 63;

/// At most this many bytes of a statement are held back ([`LineVerdict::Hold`]); a longer one
/// is sent as it is (the server then decides).
const HOLD_MAX: usize = 64 * 1024;

/// At most this many extension names are collected from one dump.
const EXTENSIONS_MAX: usize = 1000;

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
    /// Words of the current statement at parenthesis depth 0 (the first 64): keywords and
    /// unquoted identifiers upper-cased; a quoted identifier as `"` and its text (the first 64
    /// bytes, `""` read as `"`), so it never equals a keyword.
    words: Vec<String>,
    /// The text of the quoted identifier being read at depth 0.
    quoted: Option<Vec<u8>>,
    /// True while the current statement has nothing but blanks and comments so far.
    at_start: bool,
    /// `standard_conforming_strings` as the dump set it (on unless it says otherwise).
    standard_strings: bool,
    /// The line number of the line being checked (1-based).
    line_no: u64,
    /// True when the statement that ended last was an ownership or privilege statement.
    last_was_ownership: bool,
    /// True when the statement that ended last was one on an extension in `left_out`.
    last_was_left_out: bool,
    /// Bytes of the lines held back so far ([`LineVerdict::Hold`]), while a statement that
    /// began at a line's start may still be one to leave out.
    held: Option<usize>,
    /// Extensions whose `CREATE`, `COMMENT ON` and `DROP EXTENSION` statements are left out
    /// (names as PostgreSQL stores them).
    left_out: Vec<String>,
    /// Ownership and privilege statements left out.
    pub skipped: u64,
    /// Statements on the extensions of `left_out` left out.
    pub skipped_extension_statements: u64,
    /// The extensions the dump creates (`CREATE EXTENSION`), in order, without repeats.
    pub extensions: Vec<String>,
    /// Set when a statement that loads data (`COPY`, `INSERT`) ended: pg_dump writes the
    /// extensions before any data.
    pub seen_data: bool,
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
            quoted: None,
            at_start: true,
            standard_strings: true,
            line_no: 0,
            last_was_ownership: false,
            last_was_left_out: false,
            held: None,
            left_out: Vec::new(),
            skipped: 0,
            skipped_extension_statements: 0,
            extensions: Vec::new(),
            seen_data: false,
        }
    }

    /// A guard that also leaves out the statements on these extensions (`CREATE EXTENSION`,
    /// `COMMENT ON EXTENSION`, `DROP EXTENSION`, each when its lines hold nothing else), named
    /// as PostgreSQL stores them (an unquoted name is folded to lower case, a quoted one is
    /// taken as it is).
    pub fn with_left_out(left_out: Vec<String>) -> PlainGuard {
        PlainGuard {
            left_out,
            ..PlainGuard::new()
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
                            self.end_quoted();
                            i += 1;
                            continue;
                        }
                    }
                    if let Some(q) = &mut self.quoted
                        && q.len() <= NAME_MAX
                    {
                        q.push(b);
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
                    if self.paren == 0 {
                        self.quoted = Some(Vec::new());
                    }
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
        if self.quote == Quote::Double
            && let Some(q) = &mut self.quoted
        {
            // A quoted identifier goes on over the line's end, which is part of it.
            q.extend_from_slice(&line[body.len()..]);
            q.truncate(NAME_MAX + 1);
        }
        let held = self.held.take();
        let whole_statement = starts_statement || held.is_some();
        // A line (or the held lines and this one) that is exactly one ownership or privilege
        // statement (as pg_dump writes them), or one on a left-out extension, is left out;
        // anything else around it on the line, and it is sent as it is.
        if whole_statement
            && statements == 1
            && (self.last_was_ownership || self.last_was_left_out)
            && self.at_start
            && self.quote == Quote::None
        {
            if self.last_was_left_out {
                self.skipped_extension_statements += 1;
            } else {
                self.skipped += 1;
            }
            return Ok(LineVerdict::Skip);
        }
        // A statement that began at this line's start (or with the lines held) and goes on:
        // held while it may still be one on a left-out extension.
        let held_bytes = held.unwrap_or(0) + line.len();
        if whole_statement
            && statements == 0
            && !self.left_out.is_empty()
            && held_bytes <= HOLD_MAX
            && Self::may_become_extension_statement(&self.words)
        {
            self.held = Some(held_bytes);
            return Ok(LineVerdict::Hold);
        }
        Ok(LineVerdict::Pass)
    }

    /// A quoted identifier at depth 0 ended: it is a word of the statement.
    fn end_quoted(&mut self) {
        let Some(q) = self.quoted.take() else {
            return;
        };
        if self.paren == 0 && self.words.len() < 64 {
            self.words
                .push(format!("\"{}", String::from_utf8_lossy(&q)));
        }
    }

    /// True while the words read so far can still be the start of a statement on an extension.
    fn may_become_extension_statement(words: &[String]) -> bool {
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        matches!(
            w.as_slice(),
            ["CREATE"]
                | ["CREATE", "EXTENSION", ..]
                | ["COMMENT"]
                | ["COMMENT", "ON"]
                | ["COMMENT", "ON", "EXTENSION", ..]
                | ["DROP"]
                | ["DROP", "EXTENSION", ..]
        )
    }

    /// The extension a statement is on, by its words: `CREATE EXTENSION [IF NOT EXISTS] name
    /// [WITH] [SCHEMA ...] [VERSION ...] [CASCADE]`, `COMMENT ON EXTENSION name IS ...`, `DROP
    /// EXTENSION [IF EXISTS] name [CASCADE | RESTRICT]`. The name as PostgreSQL stores it: an
    /// unquoted one folded to lower case, a quoted one as it is. Anything else (a `U&"..."`
    /// name, several names) is not recognised, and the statement goes to the server as it is.
    fn extension_statement(w: &[&str]) -> Option<(ExtensionStatement, String)> {
        let (kind, rest) = match w {
            ["CREATE", "EXTENSION", "IF", "NOT", "EXISTS", rest @ ..]
            | ["CREATE", "EXTENSION", rest @ ..] => (ExtensionStatement::Create, rest),
            ["COMMENT", "ON", "EXTENSION", rest @ ..] => (ExtensionStatement::Comment, rest),
            ["DROP", "EXTENSION", "IF", "EXISTS", rest @ ..] | ["DROP", "EXTENSION", rest @ ..] => {
                (ExtensionStatement::Drop, rest)
            }
            _ => return None,
        };
        let (name, after) = rest.split_first()?;
        let shape_ok = match kind {
            ExtensionStatement::Create => matches!(
                after.first(),
                None | Some(&("WITH" | "SCHEMA" | "VERSION" | "CASCADE" | "FROM"))
            ),
            ExtensionStatement::Comment => after.first() == Some(&"IS"),
            ExtensionStatement::Drop => matches!(after, [] | ["CASCADE" | "RESTRICT"]),
        };
        if !shape_ok {
            return None;
        }
        let name = match name.strip_prefix('"') {
            Some(quoted) => quoted.to_string(),
            None => name.to_ascii_lowercase(),
        };
        (!name.is_empty() && name.len() <= NAME_MAX).then_some((kind, name))
    }

    /// A statement ended (a `;` at depth 0): judge it by its words.
    fn end_statement(&mut self) -> Result<(), Refused> {
        let words = std::mem::take(&mut self.words);
        self.at_start = true;
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        let line = self.line_no;
        self.last_was_ownership = Self::is_ownership(&w);
        self.last_was_left_out = false;
        if let Some((kind, name)) = Self::extension_statement(&w) {
            self.last_was_left_out = self.left_out.contains(&name);
            if kind == ExtensionStatement::Create
                && !self.extensions.contains(&name)
                && self.extensions.len() < EXTENSIONS_MAX
            {
                self.extensions.push(name);
            }
        }
        if matches!(w.first(), Some(&("COPY" | "INSERT"))) {
            self.seen_data = true;
        }
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

/// A plain dump (gzip'd or not), read line by line.
fn open_plain(path: &Path, gzip: bool) -> Result<impl BufRead, FeedError> {
    let f = open_sequential(path)
        .map_err(|e| FeedError::Read(format!("cannot read {}: {e}", path.display())))?;
    let inner: Box<dyn Read> = if gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(
            std::io::BufReader::with_capacity(READ_BUF, f),
        ))
    } else {
        Box::new(f)
    };
    Ok(std::io::BufReader::with_capacity(READ_BUF, inner))
}

/// The next line of `r` into `line` (cleared first); false at the end.
fn next_line(r: &mut impl BufRead, line: &mut Vec<u8>, path: &Path) -> Result<bool, FeedError> {
    line.clear();
    let n = r
        .read_until(b'\n', line)
        .map_err(|e| FeedError::Read(format!("cannot read {}: {e}", path.display())))?;
    Ok(n > 0)
}

/// The extensions a plain dump creates (`CREATE EXTENSION`), read as [`feed_plain`] reads it up
/// to its first data (`COPY`, `INSERT`: pg_dump writes extensions before any data), so a drill
/// can deal with the untrusted ones before the restore. Runs on a blocking thread. `Err` for a
/// line [`PlainGuard`] refuses (the restore then stops there too) or a read error.
pub fn plain_extensions(
    path: &Path,
    gzip: bool,
    cancel: CancellationToken,
) -> Result<Vec<String>, FeedError> {
    let mut r = open_plain(path, gzip)?;
    let mut guard = PlainGuard::new();
    let mut line = Vec::new();
    while !guard.seen_data && next_line(&mut r, &mut line, path)? {
        if cancel.is_cancelled() {
            return Err(FeedError::Cancelled);
        }
        guard.check(&line)?;
    }
    Ok(guard.extensions)
}

/// Reads a plain dump (gzip'd or not) line by line through [`PlainGuard`] (leaving out the
/// statements on the extensions of `left_out`, see [`PlainGuard::with_left_out`]) and sends it
/// in chunks to `tx`; stops at the first refused line. Runs on a blocking thread. Returns how
/// many ownership and privilege statements were left out.
pub fn feed_plain(
    path: &Path,
    gzip: bool,
    left_out: Vec<String>,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    cancel: CancellationToken,
) -> Result<u64, FeedError> {
    let mut r = open_plain(path, gzip)?;
    let mut guard = PlainGuard::with_left_out(left_out);
    let mut chunk = Vec::with_capacity(256 * 1024);
    // Lines held back while the statement they begin may still be one to leave out.
    let mut held = Vec::new();
    let mut line = Vec::new();
    loop {
        if cancel.is_cancelled() {
            return Err(FeedError::Cancelled);
        }
        if !next_line(&mut r, &mut line, path)? {
            break;
        }
        match guard.check(&line)? {
            LineVerdict::Skip => {
                held.clear();
                continue;
            }
            LineVerdict::Hold => {
                held.extend_from_slice(&line);
                continue;
            }
            LineVerdict::Pass => {}
        }
        chunk.append(&mut held);
        chunk.extend_from_slice(&line);
        if chunk.len() >= 256 * 1024 {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(256 * 1024));
            if tx.blocking_send(full).is_err() {
                return Err(FeedError::PsqlStopped);
            }
        }
    }
    // A statement still held at the end has no `;`: psql gets it as it is.
    chunk.append(&mut held);
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

    fn pss_guard() -> PlainGuard {
        PlainGuard::with_left_out(vec!["pg_stat_statements".into(), "Odd Name".into()])
    }

    /// What `feed_plain` would send of `text`, through a guard leaving out pg_stat_statements
    /// and "Odd Name".
    fn sent(text: &str) -> Result<String, Refused> {
        let mut g = pss_guard();
        let (mut out, mut held) = (String::new(), String::new());
        for line in text.split_inclusive('\n') {
            match g.check(line.as_bytes())? {
                LineVerdict::Skip => held.clear(),
                LineVerdict::Hold => held.push_str(line),
                LineVerdict::Pass => {
                    out.push_str(&std::mem::take(&mut held));
                    out.push_str(line);
                }
            }
        }
        out.push_str(&held);
        Ok(out)
    }

    #[test]
    fn plain_guard_leaves_out_the_statements_on_left_out_extensions_only() {
        // As pg_dump writes them, and the same statements spelt otherwise.
        for gone in [
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements WITH SCHEMA public;\n",
            "COMMENT ON EXTENSION pg_stat_statements IS 'track planning and execution statistics';\n",
            "DROP EXTENSION IF EXISTS pg_stat_statements;\n",
            "create extension PG_STAT_STATEMENTS;\n",
            "CREATE EXTENSION \"pg_stat_statements\" SCHEMA public VERSION '1.10' CASCADE; -- c\n",
            "CREATE EXTENSION \"Odd Name\";\n",
            "CREATE EXTENSION\n  IF NOT EXISTS\n  pg_stat_statements\n  WITH SCHEMA public;\n",
            "COMMENT ON EXTENSION pg_stat_statements IS 'two\nlines; with a semicolon';\n",
            "CREATE EXTENSION \"pg_stat_\nstatements\"; CREATE EXTENSION \"Odd Name\";\n",
        ] {
            let out = sent(&format!("SELECT 1;\n{gone}SELECT 2;\n"));
            // The last case is two statements on one line: sent as it is.
            if gone.contains("pg_stat_\n") {
                assert_eq!(out, Ok(format!("SELECT 1;\n{gone}SELECT 2;\n")));
            } else {
                assert_eq!(out, Ok("SELECT 1;\nSELECT 2;\n".into()), "{gone:?}");
            }
        }
        // Other names, other statements and anything else on the lines are sent as they are:
        // the server then decides (the drill's role may not create an untrusted extension).
        for kept in [
            "CREATE EXTENSION pg_stat_statements_x;\n",
            "CREATE EXTENSION \"PG_STAT_STATEMENTS\";\n",
            "CREATE EXTENSION \"odd name\";\n",
            "CREATE EXTENSION U&\"pg_stat_statements\";\n",
            "CREATE EXTENSION pgcrypto;\n",
            "CREATE EXTENSION pg_stat_statements; SELECT 3;\n",
            "SELECT 3; CREATE EXTENSION pg_stat_statements;\n",
            "CREATE EXTENSION pg_stat_statements; /* a comment that\ngoes on */ SELECT 3;\n",
            "CREATE EXTENSION\npg_stat_statements; SELECT 3;\n",
            "CREATE TABLE pg_stat_statements (x int);\n",
            "COMMENT ON TABLE pg_stat_statements IS 'x';\n",
            "DROP EXTENSION pg_stat_statements, pgcrypto;\n",
            "SELECT 'CREATE EXTENSION pg_stat_statements;';\n",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$\nCREATE EXTENSION pg_stat_statements;\n$$;\n",
            "CREATE\nTABLE t (x int);\n",
        ] {
            assert_eq!(
                sent(&format!("SELECT 1;\n{kept}SELECT 2;\n")),
                Ok(format!("SELECT 1;\n{kept}SELECT 2;\n")),
                "{kept:?}"
            );
        }
        // A statement without its `;` at the end of the dump is sent.
        assert_eq!(
            sent("CREATE EXTENSION\npg_stat_statements"),
            Ok("CREATE EXTENSION\npg_stat_statements".into())
        );
    }

    #[test]
    fn plain_guard_still_refuses_what_rides_along_with_an_extension_statement() {
        for hostile in [
            "CREATE EXTENSION pg_stat_statements; DROP DATABASE other;",
            "CREATE EXTENSION pg_stat_statements; \\! touch /tmp/x",
            "CREATE EXTENSION\npg_stat_statements; \\c other",
            "CREATE EXTENSION\npg_stat_statements;\nDROP DATABASE other;",
            "COMMENT ON EXTENSION pg_stat_statements IS 'x'; copy t from program 'touch /tmp/x';",
            "CREATE EXTENSION \"pg_stat_statements\n\\! x\"; CREATE DATABASE x;",
        ] {
            assert!(sent(&format!("{hostile}\n")).is_err(), "{hostile:?} passed");
        }
    }

    #[test]
    fn plain_guard_lists_the_extensions_a_dump_creates() {
        let mut g = PlainGuard::new();
        for line in [
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements WITH SCHEMA public;",
            "COMMENT ON EXTENSION pgcrypto IS 'x';",
            "CREATE EXTENSION \"Odd Name\";",
            "CREATE EXTENSION pg_stat_statements;",
            "CREATE TABLE t (x int);",
        ] {
            assert_eq!(
                g.check(format!("{line}\n").as_bytes()),
                Ok(LineVerdict::Pass)
            );
            assert!(!g.seen_data);
        }
        assert!(g.check(b"COPY public.t (x) FROM stdin;\n").is_ok());
        assert!(g.seen_data);
        assert_eq!(g.extensions, vec!["pg_stat_statements", "Odd Name"]);
    }

    #[test]
    fn quoted_owners_are_ownership_statements_too() {
        assert_eq!(
            guard_all(&["ALTER TABLE public.\"Orders\" OWNER TO \"app-owner\";"]),
            Ok(vec![LineVerdict::Skip])
        );
    }
}
