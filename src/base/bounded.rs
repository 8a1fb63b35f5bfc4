//! Bounded reads: lines and HTTP bodies read with a cap, so what another program writes (a
//! log line, a child's output, a web API's answer) cannot make runbook's memory grow without
//! limit.
//!
//! A line longer than [`LINE_CAP`] is cut: its first `LINE_CAP` bytes are kept, the rest is
//! skipped as it streams past (never held), and the cut is counted so the report can say so.
//! A body longer than its cap is read up to the cap while streaming (`chunk()`, never `bytes()`),
//! and the caller learns that it was cut.
//!
//! Used by `log_scan` (its own buffer search, with the same cap), `command`'s output tail, the
//! backup tools' stderr/stdout (`items::support::pg_tools::run_tool`), the HTTP-based items and the
//! notifiers.

use std::collections::VecDeque;
use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// The longest line kept, in bytes (without its newline).
pub const LINE_CAP: usize = 64 * 1024;

/// The largest answer read from a JSON API (Alertmanager, Prometheus) and from an `http` item.
pub const API_BODY_CAP: usize = 8 * 1024 * 1024;

/// The largest error answer read from a notification endpoint (only its first line is shown).
pub const NOTIFY_BODY_CAP: usize = 64 * 1024;

/// A size in bytes as people read it: `64 KiB`, `8 MiB`, `100 bytes`.
pub fn size_text(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// "1 line cut at 64 KiB", "3 lines cut at 64 KiB".
pub fn lines_cut_text(n: u64) -> String {
    format!(
        "{n} line{} cut at {}",
        if n == 1 { "" } else { "s" },
        size_text(LINE_CAP)
    )
}

/// What [`tail_lines`] appends to a line it cut.
fn cut_mark() -> String {
    format!(" … [line cut at {}]", size_text(LINE_CAP))
}

/// A line for display: its first `max` characters and "…" when longer; a line [`tail_lines`]
/// cut keeps its mark, so the reader still sees why it ends there.
pub fn shorten(line: &str, max: usize) -> String {
    let mark = cut_mark();
    let (body, mark) = match line.strip_suffix(mark.as_str()) {
        Some(body) => (body, mark.as_str()),
        None => (line, ""),
    };
    if body.chars().nth(max).is_none() {
        return line.to_string();
    }
    format!("{}…{mark}", body.chars().take(max).collect::<String>())
}

/// Appends the part of `avail` up to the first newline to `line`, keeping at most `cap` bytes
/// in `line`. Returns (bytes of `avail` consumed, the line ended here, bytes were dropped).
fn take_line_part(avail: &[u8], line: &mut Vec<u8>, cap: usize) -> (usize, bool, bool) {
    let (content, consumed, ended) = match memchr::memchr(b'\n', avail) {
        Some(i) => (i, i + 1, true),
        None => (avail.len(), avail.len(), false),
    };
    let room = cap.saturating_sub(line.len());
    line.extend_from_slice(&avail[..content.min(room)]);
    (consumed, ended, content > room)
}

/// Removes a trailing `\r` (CRLF output).
fn strip_cr(line: &mut Vec<u8>) {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
}

/// Lines of an async stream (a child's stdout/stderr), each cut at `cap` bytes; memory stays
/// at `cap` plus the reader's buffer whatever the stream holds.
pub struct CappedLines<R> {
    /// The stream, read through its own buffer.
    reader: R,
    /// The current line (without newline), at most `cap` bytes; reused for every line.
    line: Vec<u8>,
    /// The longest line kept.
    cap: usize,
    /// How many lines were longer than `cap` so far.
    cut: u64,
}

impl<R: AsyncBufRead + Unpin> CappedLines<R> {
    pub fn new(reader: R, cap: usize) -> Self {
        CappedLines {
            reader,
            line: Vec::new(),
            cap,
            cut: 0,
        }
    }

    /// The next line without its newline (and a trailing `\r`), cut at the cap, and whether it
    /// was cut; `None` at the end. A last line without a newline is returned too.
    pub async fn next_line(&mut self) -> io::Result<Option<(&[u8], bool)>> {
        self.line.clear();
        let mut any = false;
        let mut cut = false;
        loop {
            let avail = self.reader.fill_buf().await?;
            if avail.is_empty() {
                break;
            }
            any = true;
            let (used, ended, dropped) = take_line_part(avail, &mut self.line, self.cap);
            cut |= dropped;
            self.reader.consume(used);
            if ended {
                break;
            }
        }
        if !any {
            return Ok(None);
        }
        if cut {
            self.cut += 1;
        } else {
            strip_cr(&mut self.line);
        }
        Ok(Some((&self.line, cut)))
    }

    /// How many lines were cut so far.
    pub fn lines_cut(&self) -> u64 {
        self.cut
    }
}

/// One line of a blocking reader, cut at `cap` bytes, into `line` (cleared first; without the
/// newline and a trailing `\r`). Returns `None` at the end, else whether the line was cut.
pub fn read_line_capped(
    reader: &mut impl io::BufRead,
    line: &mut Vec<u8>,
    cap: usize,
) -> io::Result<Option<bool>> {
    line.clear();
    let mut any = false;
    let mut cut = false;
    loop {
        let avail = reader.fill_buf()?;
        if avail.is_empty() {
            break;
        }
        any = true;
        let (used, ended, dropped) = take_line_part(avail, line, cap);
        cut |= dropped;
        reader.consume(used);
        if ended {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if !cut {
        strip_cr(line);
    }
    Ok(Some(cut))
}

/// The last `keep` lines of a stream as text, each cut at [`LINE_CAP`] and marked when cut.
/// Returns them with the number of cut lines.
pub async fn tail_lines<R: AsyncBufRead + Unpin>(
    reader: R,
    keep: Option<usize>,
) -> (Vec<String>, u64) {
    let mut lines = CappedLines::new(reader, LINE_CAP);
    let mut out = VecDeque::new();
    while let Ok(Some((line, cut))) = lines.next_line().await {
        if keep == Some(0) {
            continue;
        }
        let mut text = String::from_utf8_lossy(line).into_owned();
        if cut {
            text.push_str(&cut_mark());
        }
        out.push_back(text);
        if let Some(k) = keep
            && out.len() > k
        {
            out.pop_front();
        }
    }
    (out.into(), lines.lines_cut())
}

/// A response body read up to a cap.
#[derive(Debug)]
pub struct Body {
    /// The first bytes of the body, at most the cap.
    pub bytes: Vec<u8>,
    /// The body was longer than the cap: `bytes` is only its beginning.
    pub cut: bool,
}

impl Body {
    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Reads at most `cap` bytes of a response body, chunk by chunk as it arrives; the rest is not
/// read (the connection is dropped with the response).
pub async fn read_body(mut resp: reqwest::Response, cap: usize) -> Result<Body, reqwest::Error> {
    let hint = resp
        .content_length()
        .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let mut bytes = Vec::with_capacity(hint.min(cap).min(1024 * 1024));
    let mut cut = false;
    while let Some(chunk) = resp.chunk().await? {
        let room = cap - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            cut = true;
            break;
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Body { bytes, cut })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size_text(LINE_CAP), "64 KiB");
        assert_eq!(size_text(API_BODY_CAP), "8 MiB");
        assert_eq!(size_text(100), "100 bytes");
        assert_eq!(lines_cut_text(1), "1 line cut at 64 KiB");
        assert_eq!(lines_cut_text(2), "2 lines cut at 64 KiB");
    }

    #[test]
    fn blocking_lines_are_cut_and_the_rest_of_a_long_line_is_skipped() {
        let mut text = b"short\r\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', 100));
        text.extend_from_slice(b"\nafter\nlast without newline");
        // A small buffer, so a line spans many fills.
        let mut r = io::BufReader::with_capacity(7, &text[..]);
        let mut line = Vec::new();
        let mut got = Vec::new();
        while let Some(cut) = read_line_capped(&mut r, &mut line, 10).expect("read") {
            got.push((String::from_utf8_lossy(&line).into_owned(), cut));
        }
        assert_eq!(
            got,
            vec![
                ("short".to_string(), false),
                ("x".repeat(10), true),
                ("after".to_string(), false),
                ("last witho".to_string(), true),
            ]
        );
    }

    #[tokio::test]
    async fn async_lines_are_cut_counted_and_marked() {
        let mut text = b"one\n".to_vec();
        text.extend(std::iter::repeat_n(b'y', LINE_CAP + 5));
        text.extend_from_slice(b"\ntwo\n");
        let (lines, cut) = tail_lines(&text[..], None).await;
        assert_eq!(cut, 1);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "one");
        assert!(lines[1].starts_with(&"y".repeat(LINE_CAP)));
        assert!(
            lines[1].ends_with("[line cut at 64 KiB]"),
            "{}",
            &lines[1][LINE_CAP..]
        );
        assert_eq!(lines[2], "two");
        let (last, _) = tail_lines(&text[..], Some(1)).await;
        assert_eq!(last, vec!["two".to_string()]);
        assert_eq!(
            shorten(&lines[1], 3),
            "yyy… … [line cut at 64 KiB]",
            "a cut line keeps its mark"
        );
        assert_eq!(shorten("abcdef", 3), "abc…");
        assert_eq!(shorten("abc", 3), "abc");
    }
}
