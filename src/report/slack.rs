//! The Slack rendering (Block Kit) for an incoming webhook.
//!
//! Layout: a header with the status, a line with the counts, host and time (job's zone), one
//! section per failing or warning item (worst first: summary, change since the previous run,
//! the first detail lines), then compact lists of the items for a person (`manual`), the
//! skipped ones and the passing ones, and the run id.
//!
//! Slack rejects a whole message that breaks its limits (50 blocks, 3000 characters per text
//! object, 150 per header), so every text is cut to fit, ending in "... and N more", and when
//! there are more non-passing items than blocks the last section lists the rest by name.
//! The result always posts.

use serde_json::{Value, json};

use super::{Change, ItemReport, Report};
use crate::base::status::Status;

/// Slack's limit on blocks per message.
pub const MAX_BLOCKS: usize = 50;
/// Slack's limit on a section's text.
pub const MAX_TEXT: usize = 3000;
/// Slack's limit on a header's text.
pub const MAX_HEADER: usize = 150;
/// Detail lines shown per item (the email and the stored report have them all).
const DETAIL_LINES: usize = 8;
/// Targets listed per item over several targets (the rest are counted).
const TARGET_LINES: usize = 10;

/// Escapes the three characters Slack's mrkdwn treats as markup.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Cuts `s` to at most `max` characters, ending with `suffix` when cut.
fn cut(s: &str, max: usize, suffix: &str) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let keep = max.saturating_sub(suffix.chars().count());
    let mut out: String = s.chars().take(keep).collect();
    out.push_str(suffix);
    out
}

/// Joins `parts` with `sep` after `prefix`, as many as fit in `max` characters, then
/// "... and N more".
fn fit_list(prefix: &str, parts: &[String], sep: &str, max: usize) -> String {
    let mut out = prefix.to_string();
    for (i, p) in parts.iter().enumerate() {
        let rest = parts.len() - i - 1;
        let piece = if i == 0 {
            p.clone()
        } else {
            format!("{sep}{p}")
        };
        // Room for this piece and, if more follow, for the "... and N more" tail.
        let tail = if rest > 0 {
            format!("{sep}... and {rest} more").chars().count()
        } else {
            0
        };
        if out.chars().count() + piece.chars().count() + tail > max {
            let more = parts.len() - i;
            let t = if i == 0 {
                format!("... and {more} more")
            } else {
                format!("{sep}... and {more} more")
            };
            out.push_str(&t);
            return cut(&out, max, "…");
        }
        out.push_str(&piece);
    }
    out
}

fn emoji(s: Status) -> &'static str {
    match s {
        Status::Fail => ":red_circle:",
        Status::Warn => ":large_orange_circle:",
        Status::Pass => ":large_green_circle:",
        Status::Manual => ":ballot_box_with_check:",
        Status::Skipped => ":white_circle:",
    }
}

fn section(text: String) -> Value {
    json!({ "type": "section", "text": { "type": "mrkdwn", "text": cut(&text, MAX_TEXT, "\n... (cut)") } })
}

fn item_text(i: &ItemReport) -> String {
    let change = match i.change {
        Change::NewFailure => "  _new failure_",
        Change::Recovered => "  _recovered_",
        Change::Same => "",
    };
    let mut text = format!(
        "{} *{}  {}*{}\n{}",
        emoji(i.status),
        i.status.tag(),
        esc(&i.name),
        change,
        esc(&i.summary)
    );
    if !i.targets.is_empty() {
        // An item over several targets: one line per target that did not pass (worst first),
        // at most TARGET_LINES, then how many more; passing targets are only counted.
        let mut bad: Vec<_> = i
            .targets
            .iter()
            .filter(|t| t.status.severity() > 0)
            .collect();
        bad.sort_by_key(|t| std::cmp::Reverse(t.status.severity()));
        let lines: Vec<String> = bad
            .iter()
            .take(TARGET_LINES)
            .map(|t| {
                let first = t
                    .details
                    .first()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                esc(&cut(
                    &format!("{} {} — {}{first}", t.status.tag(), t.target, t.summary),
                    200,
                    "…",
                ))
            })
            .collect();
        // The counts always show: the list is cut to leave room for them.
        let mut tail = Vec::new();
        if bad.len() > TARGET_LINES {
            tail.push(format!(
                "... and {} more targets not passing",
                bad.len() - TARGET_LINES
            ));
        }
        let passing = i.targets.len() - bad.len();
        if passing > 0 {
            tail.push(format!(
                "{passing} other target{} passed",
                if passing == 1 { "" } else { "s" }
            ));
        }
        let tail = tail.join("\n");
        let room = MAX_TEXT.saturating_sub(text.chars().count() + tail.chars().count() + 10);
        let listed = cut(&lines.join("\n"), room, "\n... (cut)");
        let block = [listed, tail]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        text.push_str(&format!("\n```{block}```"));
    } else if !i.details.is_empty() {
        let shown: Vec<String> = i
            .details
            .iter()
            .take(DETAIL_LINES)
            .map(|d| esc(&cut(d, 300, "…")))
            .collect();
        let mut block = shown.join("\n");
        if i.details.len() > DETAIL_LINES {
            block.push_str(&format!(
                "\n... and {} more lines",
                i.details.len() - DETAIL_LINES
            ));
        }
        // Keep the code fence closed even when the text must be cut.
        let room = MAX_TEXT.saturating_sub(text.chars().count() + 8);
        text.push_str(&format!("\n```{}```", cut(&block, room, "\n... (cut)")));
    }
    text
}

/// Block Kit payload for an incoming webhook.
pub fn render(report: &Report) -> Value {
    let status = report.status.as_str().to_uppercase();
    let mut blocks = Vec::new();
    blocks.push(json!({
        "type": "header",
        "text": { "type": "plain_text", "text": cut(&format!("{} {} — {}", report.job, status, report.counts_phrase()), MAX_HEADER, "…"), "emoji": true }
    }));
    let c = &report.counts;
    let mut line = format!("{} *{}*", emoji(report.status), status);
    if c.manual > 0 {
        line.push_str(&format!(" · {} to do", c.manual));
    }
    if c.skipped > 0 {
        line.push_str(&format!(" · {} skipped", c.skipped));
    }
    line.push_str(&format!(
        " · {} on {} · took {}",
        esc(&report.started_local()),
        esc(&report.host),
        report.duration_human()
    ));
    if report.dry_run {
        line.push_str(" · *dry run: nothing changed*");
    }
    if !report.description.is_empty() {
        line = format!("{}\n{line}", esc(&report.description));
    }
    if !report.missed.is_empty() {
        line.push_str(&format!(
            "\n:warning: missed slots before this run: {}",
            esc(&report.missed.join(", "))
        ));
    }
    blocks.push(section(line));

    let ordered = report.items_worst_first();
    let bad: Vec<&ItemReport> = ordered
        .iter()
        .copied()
        .filter(|i| matches!(i.status, Status::Fail | Status::Warn))
        .collect();
    let names = |s: Status| -> Vec<String> {
        ordered
            .iter()
            .filter(|i| i.status == s)
            .map(|i| esc(&i.name))
            .collect()
    };
    let (todo, skipped, passed) = (
        names(Status::Manual),
        names(Status::Skipped),
        names(Status::Pass),
    );
    let recovered: Vec<String> = ordered
        .iter()
        .filter(|i| i.change == Change::Recovered)
        .map(|i| esc(&i.name))
        .collect();

    // Blocks after the item sections: divider, up to three lists, the run-id context.
    let trailing = 2 + [!todo.is_empty(), !skipped.is_empty(), !passed.is_empty()]
        .iter()
        .filter(|b| **b)
        .count();
    let room = MAX_BLOCKS - blocks.len() - trailing;
    if !bad.is_empty() {
        blocks.push(json!({ "type": "divider" }));
    }
    let room = room.saturating_sub(usize::from(!bad.is_empty()));
    let (shown, rest) = if bad.len() > room {
        bad.split_at(room.saturating_sub(1))
    } else {
        (&bad[..], &[][..])
    };
    for i in shown {
        blocks.push(section(item_text(i)));
    }
    if !rest.is_empty() {
        let parts: Vec<String> = rest
            .iter()
            .map(|i| format!("{} {}", i.status.tag(), esc(&i.name)))
            .collect();
        blocks.push(section(fit_list(
            &format!("*{} more not passing:* ", rest.len()),
            &parts,
            " · ",
            MAX_TEXT,
        )));
    }
    blocks.push(json!({ "type": "divider" }));
    if !todo.is_empty() {
        blocks.push(section(fit_list(
            &format!("{} *To do ({}):* ", emoji(Status::Manual), todo.len()),
            &todo,
            " · ",
            MAX_TEXT,
        )));
    }
    if !skipped.is_empty() {
        blocks.push(section(fit_list(
            &format!("{} *Skipped ({}):* ", emoji(Status::Skipped), skipped.len()),
            &skipped,
            " · ",
            MAX_TEXT,
        )));
    }
    if !passed.is_empty() {
        let mut prefix = format!("{} *Passed ({}):* ", emoji(Status::Pass), passed.len());
        if !recovered.is_empty() {
            prefix = format!(
                "{} *Passed ({}, {} recovered):* ",
                emoji(Status::Pass),
                passed.len(),
                recovered.len()
            );
        }
        blocks.push(section(fit_list(&prefix, &passed, " · ", MAX_TEXT)));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{ "type": "mrkdwn", "text": cut(&format!("runbook · run `{}` · `runbook report {}`", report.run_id, report.run_id), MAX_TEXT, "…") }]
    }));
    debug_assert!(blocks.len() <= MAX_BLOCKS);
    json!({ "text": report.subject(), "blocks": blocks })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample;

    /// Every limit Slack enforces on what we send.
    pub fn assert_within_limits(v: &Value) {
        let blocks = v["blocks"].as_array().expect("blocks");
        assert!(blocks.len() <= MAX_BLOCKS, "{} blocks", blocks.len());
        for b in blocks {
            match b["type"].as_str().unwrap() {
                "header" => {
                    assert!(b["text"]["text"].as_str().unwrap().chars().count() <= MAX_HEADER)
                }
                "section" => {
                    assert!(b["text"]["text"].as_str().unwrap().chars().count() <= MAX_TEXT)
                }
                "context" => {
                    for e in b["elements"].as_array().unwrap() {
                        assert!(e["text"].as_str().unwrap().chars().count() <= MAX_TEXT);
                    }
                }
                "divider" => {}
                other => panic!("unexpected block {other}"),
            }
        }
    }

    #[test]
    fn an_item_over_hundreds_of_targets_lists_ten_and_counts_the_rest() {
        let mut r = sample();
        let mut i = r.items[0].clone();
        i.name = "Connections".into();
        i.status = Status::Fail;
        i.targets = (0..400)
            .map(|n| crate::report::TargetResult {
                target: format!("shard-{n:03}"),
                status: if n % 4 == 0 {
                    Status::Pass
                } else if n % 4 == 1 {
                    Status::Warn
                } else {
                    Status::Fail
                },
                summary: format!("summary {n} {}", "x".repeat(400)),
                details: vec![format!("detail of {n}")],
                data: serde_json::json!({}),
                duration_ms: 1,
            })
            .collect();
        r.items = vec![i];
        r.finish_status();
        let v = render(&r);
        assert_within_limits(&v);
        let text = v.to_string();
        // Failing targets first, ten of them, then counts.
        assert!(text.contains("FAIL shard-002"), "{text}");
        assert!(
            !text.contains("shard-001 "),
            "a warning comes after every failure: {text}"
        );
        assert!(
            text.contains("... and 290 more targets not passing"),
            "{text}"
        );
        assert!(text.contains("100 other targets passed"), "{text}");
    }

    #[test]
    fn worst_first_and_compact_lists() {
        let v = render(&sample());
        assert_within_limits(&v);
        assert_eq!(
            v["text"],
            "[runbook] daily FAIL — 1 passed, 1 warning, 1 failed"
        );
        assert_eq!(v["blocks"][0]["type"], "header");
        let texts: Vec<&str> = v["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|b| b["text"]["text"].as_str())
            .collect();
        let all = texts.join("\n");
        let fail = all.find("FAIL  Firing alerts").unwrap();
        let warn = all.find("WARN  Disk").unwrap();
        let passed = all.find("*Passed (1):* Backups completed").unwrap();
        assert!(fail < warn && warn < passed, "{all}");
        assert!(all.contains("_new failure_"));
        assert!(all.contains("*To do (1):* Review Grafana"));
        assert!(all.contains("&lt;script&gt;"), "mrkdwn is escaped");
        assert!(!all.contains("<script>"));
        assert!(all.contains("2026-11-24 10:00 IST"));
    }

    #[test]
    fn sixty_failing_items_stay_within_limits() {
        let mut r = sample();
        let template = r.items[1].clone();
        r.items = (0..60)
            .map(|n| {
                let mut i = template.clone();
                i.name = format!(
                    "Check number {n} with a rather long name to fill the lines {}",
                    "x".repeat(40)
                );
                i.details = (0..40)
                    .map(|d| format!("detail line {d} {}", "y".repeat(200)))
                    .collect();
                i.summary = "s".repeat(5000);
                i
            })
            .collect();
        r.items.extend((0..300).map(|n| ItemReport {
            name: format!("passing item {n} {}", "z".repeat(30)),
            status: Status::Pass,
            ..template.clone()
        }));
        r.finish_status();
        let v = render(&r);
        assert_within_limits(&v);
        let blocks = v["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), MAX_BLOCKS);
        let all: String = blocks
            .iter()
            .filter_map(|b| b["text"]["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            all.contains("more not passing:"),
            "the items without a section are listed by name"
        );
        assert!(
            all.contains("... and "),
            "long lists end in '... and N more'"
        );
        assert!(all.contains("*Passed (300):*"));
        // Every code fence that is opened is closed.
        for b in blocks.iter().filter_map(|b| b["text"]["text"].as_str()) {
            assert_eq!(b.matches("```").count() % 2, 0, "{b}");
        }
    }

    #[test]
    fn fit_list_says_how_many_are_left_out() {
        let parts: Vec<String> = (0..100).map(|i| format!("item{i}")).collect();
        let s = fit_list("P: ", &parts, " · ", 60);
        assert!(s.chars().count() <= 60, "{s}");
        assert!(s.ends_with(" more"), "{s}");
        let shown = s.matches("item").count();
        assert!(s.contains(&format!("... and {} more", 100 - shown)), "{s}");
        assert_eq!(fit_list("P: ", &parts[..2], " · ", 60), "P: item0 · item1");
    }
}
