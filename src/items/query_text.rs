//! Query texts fit for a report: literals replaced by `$1`, `$2`..., comments dropped.
//!
//! `pg_stat_activity.query` is the text a client sent, literals and all: an
//! `ALTER ROLE app PASSWORD 'hunter2'`, a customer's e-mail address in a `WHERE`, a token in a
//! comment. `pg_stat_statements` normalises ordinary statements the same way, but not every
//! utility statement. Before a query text goes into a report it is tokenised with the
//! PostgreSQL dialect of `sqlparser` (which knows `'...'`, `E'...'`, `U&'...'`, `B'...'`,
//! `X'...'`, `$$...$$`, `$tag$...$tag$`, numbers, nested `/* */` and `--` comments) and put back
//! together from its tokens with every literal replaced by the next free `$n` and every comment
//! dropped; identifiers, keywords, operators and the `$n` parameters already there are kept.
//!
//! Invariant: **no part of a literal is ever shown.** Text that cannot be tokenised (a query cut
//! off by `track_activity_query_size` inside a string) is shown up to the last complete token,
//! then `…`. A plain string with a backslash before a quote is withheld whole: a session with
//! `standard_conforming_strings = off` reads `'it\'s'` as one literal where the tokeniser reads
//! a shorter one followed by words, so the words could be the literal's inside.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

/// Shown instead of a query whose text cannot be normalised safely.
pub const WITHHELD: &str = "[query text withheld: it cannot be normalised safely]";

/// `sql` with its literals replaced by `$n` and comments dropped, on one line; None when the
/// text cannot be normalised safely (show [`WITHHELD`] instead).
pub fn normalise(sql: &str) -> Option<String> {
    let dialect = PostgreSqlDialect {};
    let mut tokens = Vec::new();
    let complete = Tokenizer::new(&dialect, sql)
        .with_unescape(false)
        .tokenize_with_location_into_buf(&mut tokens)
        .is_ok();
    let tokens: Vec<Token> = tokens.into_iter().map(|t| t.token).collect();
    // New parameters are numbered after those already in the text (pg_stat_statements' own).
    let mut next = tokens
        .iter()
        .filter_map(|t| match t {
            Token::Placeholder(p) => p.strip_prefix('$')?.parse::<u32>().ok(),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let mut out = String::with_capacity(sql.len().min(4096));
    let mut space = false;
    for token in &tokens {
        let piece = match token {
            Token::Whitespace(
                Whitespace::Space
                | Whitespace::Newline
                | Whitespace::Tab
                | Whitespace::SingleLineComment { .. }
                | Whitespace::MultiLineComment(_),
            ) => {
                space = true;
                continue;
            }
            Token::SingleQuotedString(s)
            | Token::NationalStringLiteral(s)
            | Token::SingleQuotedByteStringLiteral(s)
                if ambiguous_backslash(s) =>
            {
                return None;
            }
            Token::Word(_)
            | Token::Placeholder(_)
            | Token::Char(_)
            | Token::EOF
            | Token::Comma
            | Token::Period
            | Token::Colon
            | Token::DoubleColon
            | Token::SemiColon
            | Token::LParen
            | Token::RParen
            | Token::LBracket
            | Token::RBracket
            | Token::Eq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::Mod
            | Token::StringConcat
            | Token::Arrow
            | Token::LongArrow
            | Token::HashArrow
            | Token::HashLongArrow => token.to_string(),
            // Every literal (strings of every kind, numbers) and any token this list does not
            // know: a parameter.
            t if is_literal(t) => {
                next += 1;
                format!("${next}")
            }
            t => t.to_string(),
        };
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        out.push_str(&piece);
    }
    // As pg_stat_statements shows a statement: without the closing semicolon.
    while out.ends_with([' ', ';']) {
        out.pop();
    }
    if !complete {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push('…');
    }
    Some(out)
}

/// A report's text of `sql`: normalised, or [`WITHHELD`].
pub fn for_report(sql: &str) -> String {
    normalise(sql).unwrap_or_else(|| WITHHELD.to_string())
}

/// True for tokens that carry a value written in the query.
fn is_literal(t: &Token) -> bool {
    matches!(
        t,
        Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
    )
}

/// A plain string's raw inside with an odd run of backslashes before a quote (or at its end,
/// before the closing quote): `standard_conforming_strings = off` reads that quote as part of
/// the literal, so the literal would end elsewhere.
fn ambiguous_backslash(raw: &str) -> bool {
    let mut run = 0usize;
    for c in raw.chars() {
        match c {
            '\\' => run += 1,
            '\'' if run % 2 == 1 => return true,
            _ => run = 0,
        }
    }
    run % 2 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_of_every_kind_become_parameters_and_comments_go() {
        let cases = [
            (
                "ALTER ROLE app PASSWORD 'hunter2'",
                "ALTER ROLE app PASSWORD $1",
            ),
            (
                "SELECT 'hunter2' , pg_sleep(30) /* 'hunter2' */ ;",
                "SELECT $1 , pg_sleep($2)",
            ),
            (
                "select E'hun\\'ter2', U&'d\\0061t\\+000061', B'0101', X'1F', N'hunter2', 1.5e3, 42 -- hunter2\n",
                "select $1, $2, $3, $4, $5, $6, $7",
            ),
            (
                "SELECT $$hunter2$$, $tag$it's hunter2$tag$, 'it''s hunter2'",
                "SELECT $1, $2, $3",
            ),
            (
                "SELECT a FROM t WHERE b = $1 AND c = 'hunter2' /* outer /* nested hunter2 */ still hunter2 */",
                "SELECT a FROM t WHERE b = $1 AND c = $2",
            ),
            (
                "SELECT \"Weird Col\", x::text, interval '1 day' FROM s.\"T\"",
                "SELECT \"Weird Col\", x::text, interval $1 FROM s.\"T\"",
            ),
            ("  SELECT\n\t1  ", "SELECT $1"),
            (
                "SELECT $_$hunter2$_$, 'hunter2'::text, ARRAY['hunter2'], x$y",
                "SELECT $1, $2::text, ARRAY[$3], x$y",
            ),
            ("SET my.token = 'hunter2'", "SET my.token = $1"),
        ];
        for (sql, want) in cases {
            assert_eq!(normalise(sql).as_deref(), Some(want), "{sql}");
        }
    }

    #[test]
    fn text_that_cannot_be_tokenised_is_cut_before_it_and_ambiguous_strings_are_withheld() {
        // Cut off inside a string (track_activity_query_size): what came before, then "…".
        assert_eq!(
            normalise("INSERT INTO t VALUES (1, 'hunter2 and more").as_deref(),
            Some("INSERT INTO t VALUES ($1, …")
        );
        assert_eq!(normalise("SELECT $$hunter2").as_deref(), Some("SELECT …"));
        assert_eq!(
            normalise("SELECT 1 /* hunter2").as_deref(),
            Some("SELECT $1 …")
        );
        // standard_conforming_strings = off: 'x\'hunter2\'y' is one literal there.
        for sql in [
            "SELECT 'x\\'hunter2\\'y'",
            "SELECT 'C:\\', 'hunter2'",
            "SELECT 'a\\''', hunter2",
        ] {
            assert_eq!(normalise(sql), None, "{sql}");
            assert_eq!(for_report(sql), WITHHELD);
        }
        // A doubled backslash is a backslash in either mode.
        assert_eq!(normalise("SELECT 'C:\\\\'").as_deref(), Some("SELECT $1"));
    }
}
