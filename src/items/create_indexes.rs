//! `create_indexes`: runs the CREATE INDEX CONCURRENTLY statements of a file, one at a time.
//!
//! Why not `psql -f indexes.sql`: `CREATE INDEX CONCURRENTLY IF NOT EXISTS` is a trap — a build
//! that failed or was cancelled leaves an INVALID index behind, and the next run's `IF NOT
//! EXISTS` then silently "succeeds" while the index is never used. Here every statement is
//! checked against the catalog first: a valid index of that name is "already present", an
//! invalid one is dropped (`DROP INDEX CONCURRENTLY`) and built again, and a build that fails
//! drops its own invalid leftover. The file is parsed completely before anything runs, and a
//! statement that is not `CREATE INDEX` refuses the whole file: the item cannot be used to run
//! arbitrary SQL by editing a file next to the config.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::json;
use tokio_postgres::Client;

use super::{ItemCtx, Outcome, Prepare, Status};
use crate::base::pg::{self, Target, qualified};

/// Options of `kind = "create_indexes"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateIndexes {
    pub target: String,
    /// SQL file of `CREATE INDEX` statements, relative to the config file's folder. Statements
    /// without `CONCURRENTLY` get it added; unqualified table names resolve through the
    /// connection's `search_path`, as with psql.
    pub file: PathBuf,
}

/// One `CREATE INDEX` statement of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexStatement {
    /// 1-based line of the statement's first token in the file.
    pub line: usize,
    /// The statement to run (with `CONCURRENTLY` added when it was missing).
    pub sql: String,
    /// The index name as stored in the catalog (quotes removed, unquoted names lower-cased).
    pub index: String,
    /// The table as written (quotes kept), for `to_regclass`.
    pub table: String,
    /// `CONCURRENTLY` was not written and was added.
    pub added_concurrently: bool,
}

impl CreateIndexes {
    pub fn prepare(&mut self, p: &mut Prepare) {
        let path = p.path(&self.file);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                if let Err(errors) = parse_file(&text) {
                    p.error("file", format!("{}: {}", path.display(), errors.join("; ")));
                }
            }
            Err(e) => p.error("file", format!("cannot read {}: {e}", path.display())),
        }
    }

    pub async fn run(&self, ctx: &ItemCtx) -> Outcome {
        let path = ctx.path(&self.file);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => return Outcome::fail(format!("cannot read {}: {e}", path.display())),
        };
        // Everything is parsed and checked before anything runs.
        let statements = match parse_file(&text) {
            Ok(s) => s,
            Err(errors) => {
                return Outcome::fail(format!(
                    "{}: refused, nothing was run: {}",
                    path.display(),
                    errors.first().cloned().unwrap_or_default()
                ))
                .with_details(errors);
            }
        };
        let target = match ctx.target(&self.target) {
            Ok(t) => t.clone(),
            Err(e) => return Outcome::fail(e.to_string()),
        };
        let client = match target.connect_for_maintenance().await {
            Ok(c) => c,
            Err(e) => return Outcome::fail(e),
        };
        if let Err(e) = pg::ensure_primary(&client, &target).await {
            return Outcome::fail(e);
        }
        // A cancelled build leaves an invalid index: builds are never cut short by a timeout.
        if let Err(e) = client.batch_execute("SET statement_timeout = 0").await {
            return Outcome::fail(format!("target {}: {}", target.name, pg::pg_error(&e)));
        }

        let mut details = Vec::new();
        let mut data = Vec::new();
        let (mut built, mut present, mut rebuilt, mut failed) = (0, 0, 0, 0);
        for st in &statements {
            if ctx.cancel.is_cancelled() {
                details.push(format!(
                    "line {}: {} not run: the run was cancelled",
                    st.line, st.index
                ));
                failed += 1;
                continue;
            }
            let (state, note) = self.one(ctx, &client, &target, st).await;
            match state {
                "built" => built += 1,
                "present" => present += 1,
                "rebuilt" => rebuilt += 1,
                "planned" => {}
                _ => failed += 1,
            }
            details.push(format!("line {}: {} — {note}", st.line, st.index));
            data.push(json!({ "line": st.line, "index": st.index, "table": st.table, "result": state, "note": note, "statement": st.sql }));
        }
        if ctx.dry_run {
            return Outcome::skipped(format!(
                "dry run: {} statement(s) in {}; nothing changed",
                statements.len(),
                self.file.display()
            ))
            .with_details(details)
            .with_data(json!({ "file": path, "statements": data }));
        }
        let status = if failed > 0 {
            Status::Fail
        } else if rebuilt > 0 {
            Status::Warn
        } else {
            Status::Pass
        };
        let mut summary = format!("{built} built, {present} already present");
        if rebuilt > 0 {
            summary.push_str(&format!(", {rebuilt} invalid rebuilt"));
        }
        if failed > 0 {
            summary.push_str(&format!(", {failed} failed"));
        }
        Outcome::new(status, summary).with_details(details).with_data(json!({
            "file": path, "built": built, "already_present": present, "rebuilt": rebuilt, "failed": failed, "statements": data,
        }))
    }

    /// Handles one statement; returns (result, note). Results: built, present, rebuilt, failed,
    /// planned (dry run).
    async fn one(
        &self,
        ctx: &ItemCtx,
        client: &Client,
        target: &Target,
        st: &IndexStatement,
    ) -> (&'static str, String) {
        let table = match client
            .query_opt(
                "SELECT c.oid, n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
                &[&st.table],
            )
            .await
        {
            Ok(Some(r)) => match (pg::col::<u32>(&r, 0), pg::col::<String>(&r, 1)) {
                (Ok(oid), Ok(schema)) => (oid, schema),
                (Err(e), _) | (_, Err(e)) => return ("failed", format!("cannot resolve table {}: {e}", st.table)),
            },
            Ok(None) => return ("failed", format!("table {} does not exist (search_path as for psql)", st.table)),
            Err(e) => return ("failed", format!("cannot resolve table {}: {}", st.table, pg::pg_error(&e))),
        };
        let (table_oid, schema) = table;
        let existing = match lookup(client, &st.index, &schema).await {
            Ok(x) => x,
            Err(e) => return ("failed", e),
        };
        let name = qualified(&schema, &st.index);
        let mut invalid_found = false;
        if let Some(ix) = existing {
            if ix.relkind != 'i' && ix.relkind != 'I' {
                return (
                    "failed",
                    format!("the name {name} is already taken by a relation that is not an index"),
                );
            }
            if ix.table_oid != table_oid {
                return (
                    "failed",
                    format!("an index named {name} already exists on another table"),
                );
            }
            if ix.valid {
                return ("present", "already present".into());
            }
            if ix.being_built {
                return (
                    "failed",
                    format!(
                        "{name} is invalid and being built by another session right now: left alone"
                    ),
                );
            }
            invalid_found = true;
            if ctx.dry_run {
                return (
                    "planned",
                    format!(
                        "exists but INVALID: would DROP INDEX CONCURRENTLY {name}, then: {}",
                        st.sql
                    ),
                );
            }
            if let Err(e) = client
                .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"))
                .await
            {
                return (
                    "failed",
                    format!(
                        "exists but INVALID and cannot be dropped: {}",
                        pg::pg_error(&e)
                    ),
                );
            }
        }
        if ctx.dry_run {
            let added = if st.added_concurrently {
                " (CONCURRENTLY added)"
            } else {
                ""
            };
            return ("planned", format!("missing: would run{added}: {}", st.sql));
        }
        let t0 = std::time::Instant::now();
        let run = tokio::select! {
            r = client.batch_execute(&st.sql) => r,
            _ = ctx.cancel.cancelled() => {
                target.cancel(&client.cancel_token()).await;
                let _ = client.batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {name}")).await;
                return ("failed", "cancelled while building (leftover dropped)".into());
            }
        };
        if let Err(e) = run {
            let msg = pg::explain_build_failure(client, &e, &st.table, t0.elapsed(), true).await;
            // A failed concurrent build leaves an invalid index: drop it so nothing is left behind.
            let leftover =
                matches!(lookup(client, &st.index, &schema).await, Ok(Some(ix)) if !ix.valid);
            if leftover {
                return match client
                    .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"))
                    .await
                {
                    Ok(()) => (
                        "failed",
                        format!("build failed: {msg} (its invalid leftover was dropped)"),
                    ),
                    Err(e2) => (
                        "failed",
                        format!(
                            "build failed: {msg}; its invalid leftover could not be dropped: {}",
                            pg::pg_error(&e2)
                        ),
                    ),
                };
            }
            return ("failed", format!("build failed: {msg}"));
        }
        match lookup(client, &st.index, &schema).await {
            Ok(Some(ix)) if ix.valid => {
                if invalid_found {
                    ("rebuilt", "was INVALID: dropped and rebuilt".into())
                } else {
                    ("built", "built".into())
                }
            }
            Ok(Some(_)) => (
                "failed",
                "built but not valid afterwards (indisvalid = false)".into(),
            ),
            Ok(None) => (
                "failed",
                "statement succeeded but the index is not there".into(),
            ),
            Err(e) => ("failed", e),
        }
    }
}

/// An existing relation with the index's name.
struct Existing {
    relkind: char,
    valid: bool,
    table_oid: u32,
    being_built: bool,
}

async fn lookup(client: &Client, index: &str, schema: &str) -> Result<Option<Existing>, String> {
    let row = client
        .query_opt(
            "SELECT c.relkind::text, coalesce(i.indisvalid, false), coalesce(i.indrelid, 0::oid), \
                    EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = c.oid OR p.relid = i.indrelid) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_index i ON i.indexrelid = c.oid \
             WHERE c.relname = $1 AND n.nspname = $2",
            &[&index, &schema],
        )
        .await
        .map_err(|e| format!("cannot look up index {index}: {}", pg::pg_error(&e)))?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some(Existing {
        relkind: pg::col::<String>(&r, 0)?.chars().next().unwrap_or('?'),
        valid: pg::col(&r, 1)?,
        table_oid: pg::col(&r, 2)?,
        being_built: pg::col(&r, 3)?,
    }))
}

/// A lexical token of SQL, with its byte range.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// An unquoted word (keyword or identifier), as written.
    Word(String),
    /// A double-quoted identifier, unescaped.
    Quoted(String),
    /// Anything else: literals, operators, parentheses, a backslash.
    Other(char),
}

/// A token with its byte range in the text.
type Spanned = (Tok, usize, usize);

/// Splits SQL into statements (on `;` outside quotes, comments and dollar quotes) and tokens.
/// Returns, per statement, its tokens with byte ranges in `text`.
fn split(text: &str) -> Result<Vec<Vec<Spanned>>, String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut cur: Vec<Spanned> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            loop {
                if i + 1 >= b.len() {
                    return Err("unterminated /* comment".into());
                }
                if b[i] == b'/' && b[i + 1] == b'*' {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b[i + 1] == b'/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b';' {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            i += 1;
        } else if c == b'\'' {
            let start = i;
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err("unterminated string literal".into()),
                    Some(b'\'') if b.get(i + 1) == Some(&b'\'') => i += 2,
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(_) => i += 1,
                }
            }
            cur.push((Tok::Other('\''), start, i));
        } else if c == b'"' {
            let start = i;
            let mut ident = String::new();
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err("unterminated quoted identifier".into()),
                    Some(b'"') if b.get(i + 1) == Some(&b'"') => {
                        ident.push('"');
                        i += 2;
                    }
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(_) => {
                        let ch = text[i..].chars().next().unwrap_or('?');
                        ident.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            cur.push((Tok::Quoted(ident), start, i));
        } else if c == b'$'
            && (b
                .get(i + 1)
                .is_some_and(|n| *n == b'$' || n.is_ascii_alphabetic() || *n == b'_'))
        {
            // A dollar quote: $tag$ ... $tag$.
            let start = i;
            let tag_end = text[i + 1..].find('$').map(|p| i + 1 + p);
            let Some(tag_end) = tag_end else {
                return Err("unterminated dollar quote".into());
            };
            let tag = &text[i..=tag_end];
            if !tag[1..tag.len() - 1]
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
            {
                cur.push((Tok::Other('$'), i, i + 1));
                i += 1;
                continue;
            }
            let Some(close) = text[tag_end + 1..].find(tag) else {
                return Err(format!("unterminated dollar quote {tag}"));
            };
            i = tag_end + 1 + close + tag.len();
            cur.push((Tok::Other('$'), start, i));
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80)
            {
                i += 1;
            }
            cur.push((Tok::Word(text[start..i].to_string()), start, i));
        } else {
            let ch = text[i..].chars().next().unwrap_or('?');
            cur.push((Tok::Other(ch), i, i + ch.len_utf8()));
            i += ch.len_utf8();
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

fn is_kw(t: Option<&Spanned>, kw: &str) -> bool {
    matches!(t, Some((Tok::Word(w), _, _)) if w.eq_ignore_ascii_case(kw))
}

/// A name token as stored in the catalog (unquoted names fold to lower case), or None.
fn ident(t: Option<&Spanned>) -> Option<String> {
    match t {
        Some((Tok::Word(w), _, _)) => Some(w.to_lowercase()),
        Some((Tok::Quoted(q), _, _)) => Some(q.clone()),
        _ => None,
    }
}

/// Parses a file of `CREATE INDEX` statements. Any other statement (or an unnamed index, whose
/// presence cannot be checked) is an error; all errors are returned, naming their lines.
pub fn parse_file(text: &str) -> Result<Vec<IndexStatement>, Vec<String>> {
    let statements = split(text).map_err(|e| vec![e])?;
    let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for toks in statements {
        let start = toks[0].1;
        let end = toks[toks.len() - 1].2;
        let line = line_of(start);
        let stmt_text = &text[start..end];
        let first_line: String = stmt_text
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(60)
            .collect();
        let mut k = 0;
        if !is_kw(toks.first(), "create") {
            errors.push(format!(
                "line {line}: not a CREATE INDEX statement, refused: {first_line}"
            ));
            continue;
        }
        k += 1;
        if is_kw(toks.get(k), "unique") {
            k += 1;
        }
        if !is_kw(toks.get(k), "index") {
            errors.push(format!(
                "line {line}: not a CREATE INDEX statement, refused: {first_line}"
            ));
            continue;
        }
        let after_index = toks[k].2;
        k += 1;
        let mut added_concurrently = false;
        if is_kw(toks.get(k), "concurrently") {
            k += 1;
        } else {
            added_concurrently = true;
        }
        if is_kw(toks.get(k), "if")
            && is_kw(toks.get(k + 1), "not")
            && is_kw(toks.get(k + 2), "exists")
        {
            k += 3;
        }
        if is_kw(toks.get(k), "on") {
            errors.push(format!("line {line}: CREATE INDEX without a name, refused (its presence cannot be checked): {first_line}"));
            continue;
        }
        let Some(index) = ident(toks.get(k)) else {
            errors.push(format!(
                "line {line}: cannot read the index name: {first_line}"
            ));
            continue;
        };
        k += 1;
        if !is_kw(toks.get(k), "on") {
            errors.push(format!("line {line}: expected ON after the index name (an index name cannot be schema-qualified): {first_line}"));
            continue;
        }
        k += 1;
        if is_kw(toks.get(k), "only") {
            k += 1;
        }
        let Some(first) = toks
            .get(k)
            .filter(|t| matches!(t.0, Tok::Word(_) | Tok::Quoted(_)))
        else {
            errors.push(format!(
                "line {line}: cannot read the table name: {first_line}"
            ));
            continue;
        };
        let mut table_end = first.2;
        if matches!(toks.get(k + 1), Some((Tok::Other('.'), _, _))) {
            match toks.get(k + 2) {
                Some(t) if matches!(t.0, Tok::Word(_) | Tok::Quoted(_)) => table_end = t.2,
                _ => {
                    errors.push(format!(
                        "line {line}: cannot read the table name: {first_line}"
                    ));
                    continue;
                }
            }
        }
        let table = text[first.1..table_end].to_string();
        let sql = if added_concurrently {
            format!(
                "{} CONCURRENTLY{}",
                &text[start..after_index],
                &text[after_index..end]
            )
        } else {
            stmt_text.to_string()
        };
        out.push(IndexStatement {
            line,
            sql,
            index,
            table,
            added_concurrently,
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_shipped_index_file() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/sql/indexes.sql"))
            .expect("sql/indexes.sql");
        let st = parse_file(&text).expect("parses");
        assert_eq!(st.len(), 7);
        assert_eq!(st[0].index, "idx_orders_user_id_status");
        assert_eq!(st[0].table, "orders");
        assert!(!st[0].added_concurrently);
        assert_eq!(st[6].table, "transactions");
    }

    #[test]
    fn quoted_names_comments_and_missing_concurrently() {
        let text = "-- c; with semicolon\n/* block; */ create unique index \"Weird \"\"Ix\"\"\" on only public.\"Weird \"\"Name\"\"\" (a) where b = 'x;y';\nCREATE INDEX IF NOT EXISTS Ix2 ON t USING btree (lower(v));";
        let st = parse_file(text).expect("parses");
        assert_eq!(st.len(), 2);
        assert_eq!(st[0].index, "Weird \"Ix\"");
        assert_eq!(st[0].table, "public.\"Weird \"\"Name\"\"\"");
        assert_eq!(st[0].line, 2);
        assert!(
            st[0]
                .sql
                .starts_with("create unique index CONCURRENTLY \"Weird")
        );
        assert!(st[0].sql.ends_with("'x;y'"));
        assert_eq!(st[1].index, "ix2");
        assert_eq!(
            st[1].sql,
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS Ix2 ON t USING btree (lower(v))"
        );
    }

    #[test]
    fn refuses_anything_but_named_create_index() {
        let e = parse_file("CREATE INDEX CONCURRENTLY a ON t(x);\nDROP TABLE t;\nCREATE INDEX ON t(y);\n\\i other.sql\n").unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with("line 2: not a CREATE INDEX"));
        assert!(e[1].contains("without a name"));
        assert!(e[2].starts_with("line 4"));
        assert!(parse_file("CREATE INDEX a ON t(x); SELECT pg_sleep(1)").is_err());
        assert!(parse_file("CREATE TABLE x (a int)").is_err());
    }
}
