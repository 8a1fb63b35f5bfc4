//! The HTML report (e-mail, archive, status page): table layout and inline styles only, no
//! scripts, no remote images, so every mail client shows it the same. Worst items first; times
//! in the job's zone. askama escapes every value.
//!
//! `templates/report.html` extends `templates/layout.html` (banner, count tiles, footer) and
//! uses the chips of `templates/ui.html`; the daemon's status page (`server::status`) is built
//! from the same pieces, with [`Tile`] and [`colors`] from here, so both look alike.

use askama::Template;

use super::{Ack, Change, ItemReport, Report};
use crate::base::status::Status;

struct Row<'a> {
    item: &'a ItemReport,
    tag: &'static str,
    color: &'static str,
    bg: &'static str,
    change: &'static str,
    duration: String,
    show_details: bool,
    /// The item's recent `data.value`s as bars, when earlier runs have one.
    chart: Option<Chart>,
    /// The item's newest acknowledgement (SPEC 9.2) and how it reads: "Done by alice" for a
    /// `manual` item, "Acknowledged by bob" for another.
    ack: Option<&'a Ack>,
    ack_words: &'static str,
}

/// The height in pixels of a chart's tallest bar.
const CHART_HEIGHT: u32 = 24;

/// A small bar chart of an item's `data.value` over its recent runs, drawn as one table row of
/// cells whose coloured part (`bgcolor`) and blank part (`border-top` in the row's colour) add
/// up to [`CHART_HEIGHT`]: HTML tables and inline CSS only, which every mail client shows
/// (inline SVG is dropped by Gmail and Outlook, data-URI images by several clients, remote
/// images are off by default). About 100 bytes a bar: a 30-point chart is ~3 KB, so a daily
/// report with a dozen charts stays under Gmail's 102 KB clipping limit.
struct Chart {
    bars: Vec<Bar>,
    /// The row's background (the blank part of each bar).
    bg: &'static str,
    /// "80.0 · +12% since previous (71.4) · 30 runs, min 61.2, max 80.0".
    caption: String,
}

struct Bar {
    fill: u32,
    empty: u32,
    color: &'static str,
    /// The value, for a tooltip where the client shows one.
    title: String,
}

/// The chart of `values` (oldest first; the last is this run's), None when there is nothing
/// earlier to compare with.
fn chart(values: &[f64], bg: &'static str) -> Option<Chart> {
    let (&last, earlier) = values.split_last()?;
    let &previous = earlier.last()?;
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // Bars start at 0 when the values are spread over much of it; otherwise a little below the
    // smallest value, so a change of a few percent is still visible (the caption gives the
    // numbers).
    let base = if lo >= 0.0 && hi - lo > 0.5 * hi {
        0.0
    } else {
        lo - (hi - lo) * 0.25
    };
    let h = f64::from(CHART_HEIGHT);
    let bars = values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let fill = if hi > base {
                ((v - base) / (hi - base) * h).round() as u32
            } else {
                CHART_HEIGHT / 2
            }
            .clamp(2, CHART_HEIGHT);
            Bar {
                fill,
                empty: CHART_HEIGHT - fill,
                color: if i + 1 == values.len() {
                    "#155eef"
                } else {
                    "#84adff"
                },
                title: fmt_value(v),
            }
        })
        .collect();
    Some(Chart {
        bars,
        bg,
        caption: format!(
            "{} \u{b7} {} \u{b7} {} runs, min {}, max {}",
            fmt_value(last),
            change_since(previous, last),
            values.len(),
            fmt_value(lo),
            fmt_value(hi)
        ),
    })
}

/// "+12% since previous (71.4)", "no change since previous", "+3 since previous (0)".
pub fn change_since(previous: f64, now: f64) -> String {
    if now == previous {
        return "no change since previous".to_string();
    }
    if previous == 0.0 {
        return format!(
            "{}{} since previous (0)",
            if now > 0.0 { "+" } else { "" },
            fmt_value(now)
        );
    }
    let pct = (now - previous) / previous.abs() * 100.0;
    let pct = if pct.abs() < 9.95 {
        format!("{pct:+.1}")
    } else {
        format!("{pct:+.0}")
    };
    format!("{pct}% since previous ({})", fmt_value(previous))
}

/// A number for people: `71.4`, `0.0042`, `1,500,000,000`.
pub fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    if a >= 1000.0 || (v.fract() == 0.0 && a < 1e15) {
        let digits = format!("{:.0}", a);
        let mut out = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(ch);
        }
        return if v < 0.0 { format!("-{out}") } else { out };
    }
    let s = if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.2e}")
    };
    if s.contains('.') && !s.contains('e') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A block of rows under a heading: "Needs attention", "For a person", "Skipped", "Passed".
struct Group<'a> {
    title: String,
    color: &'static str,
    rows: Vec<Row<'a>>,
    /// Passing items are listed one line each, without details.
    compact: bool,
}

/// One of the count tiles under the banner (`ui::tile` in templates/ui.html).
pub struct Tile {
    pub count: usize,
    pub label: &'static str,
    pub color: &'static str,
    pub bg: &'static str,
}

impl Tile {
    /// A tile counting things of status `s`: in the status's colours, grey when the count is 0.
    pub fn new(count: usize, label: &'static str, s: Status) -> Tile {
        let (color, bg) = if count > 0 {
            colors(s)
        } else {
            ("#98a2b3", "#f9fafb")
        };
        Tile {
            count,
            label,
            color,
            bg: if s == Status::Pass && count > 0 {
                "#ecfdf3"
            } else {
                bg
            },
        }
    }
}

#[derive(Template)]
#[template(path = "report.html")]
struct Page<'a> {
    r: &'a Report,
    groups: Vec<Group<'a>>,
    tiles: Vec<Tile>,
    title: String,
    banner_color: &'static str,
    status_word: String,
    verdict: String,
    changes: String,
    when: String,
    duration: String,
    scheduled: String,
}

/// The (text, background) colours of a status.
pub fn colors(s: Status) -> (&'static str, &'static str) {
    match s {
        Status::Fail => ("#b42318", "#fef3f2"),
        Status::Warn => ("#b54708", "#fffaeb"),
        Status::Pass => ("#067647", "#ffffff"),
        Status::Manual => ("#3538cd", "#f5f8ff"),
        Status::Skipped => ("#475467", "#f9fafb"),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The banner's one-sentence verdict: what needs doing first.
fn verdict(r: &Report) -> String {
    let c = &r.counts;
    let mut parts = Vec::new();
    if c.fail > 0 {
        parts.push(format!("{} failed", plural(c.fail, "item", "items")));
    }
    if c.warn > 0 {
        parts.push(format!(
            "{} to look at",
            plural(c.warn, "warning", "warnings")
        ));
    }
    if parts.is_empty() {
        parts.push(if c.pass > 0 {
            "every check passed".to_string()
        } else {
            "no checks ran".to_string()
        });
    }
    if c.manual > 0 {
        parts.push(format!(
            "{} for a person",
            plural(c.manual, "task", "tasks")
        ));
    }
    let mut v = parts.join(", ");
    if let Some(first) = v.get(..1) {
        v = format!("{}{}", first.to_uppercase(), &v[1..]);
    }
    v
}

/// "New failure: A, B · Recovered: C" (empty when nothing changed).
fn changes(r: &Report) -> String {
    let names = |c: Change| -> Vec<&str> {
        r.items
            .iter()
            .filter(|i| i.change == c)
            .map(|i| i.name.as_str())
            .collect()
    };
    let (new, recovered) = (names(Change::NewFailure), names(Change::Recovered));
    let mut parts = Vec::new();
    if !new.is_empty() {
        parts.push(format!(
            "new failure{}: {}",
            if new.len() == 1 { "" } else { "s" },
            new.join(", ")
        ));
    }
    if !recovered.is_empty() {
        parts.push(format!("recovered: {}", recovered.join(", ")));
    }
    parts.join(" · ")
}

pub fn render(r: &Report) -> String {
    let ordered = r.items_worst_first();
    let pick = |f: &dyn Fn(Status) -> bool| -> Vec<Row> {
        ordered
            .iter()
            .copied()
            .filter(|i| f(i.status))
            .map(|i| make_row(r, i, r.ack_of(&i.name)))
            .collect()
    };
    let mut groups = Vec::new();
    let attention = pick(&|s| matches!(s, Status::Fail | Status::Warn));
    if !attention.is_empty() {
        groups.push(Group {
            title: format!("Needs attention ({})", attention.len()),
            color: colors(r.status).0,
            rows: attention,
            compact: false,
        });
    }
    let manual = pick(&|s| s == Status::Manual);
    if !manual.is_empty() {
        groups.push(Group {
            title: format!("For a person to do ({})", manual.len()),
            color: colors(Status::Manual).0,
            rows: manual,
            compact: false,
        });
    }
    let skipped = pick(&|s| s == Status::Skipped);
    if !skipped.is_empty() {
        groups.push(Group {
            title: format!("Skipped ({})", skipped.len()),
            color: colors(Status::Skipped).0,
            rows: skipped,
            compact: false,
        });
    }
    let passed = pick(&|s| s == Status::Pass);
    if !passed.is_empty() {
        groups.push(Group {
            title: format!("Passed ({})", passed.len()),
            color: colors(Status::Pass).0,
            rows: passed,
            compact: true,
        });
    }
    let c = &r.counts;
    let tile = Tile::new;
    let mut tiles = vec![
        tile(c.fail, "failed", Status::Fail),
        tile(c.warn, "warnings", Status::Warn),
        tile(c.pass, "passed", Status::Pass),
    ];
    if c.manual > 0 {
        tiles.push(tile(c.manual, "to do", Status::Manual));
    }
    if c.skipped > 0 {
        tiles.push(tile(c.skipped, "skipped", Status::Skipped));
    }
    let tz: Option<chrono_tz::Tz> = r.timezone.parse().ok();
    let scheduled = match (r.scheduled_for, tz) {
        (Some(s), Some(tz)) => s.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string(),
        (Some(s), None) => s.to_rfc3339(),
        (None, _) => String::new(),
    };
    let page = Page {
        r,
        groups,
        tiles,
        title: r.subject(),
        banner_color: colors(r.status).0,
        status_word: r.status.as_str().to_uppercase(),
        verdict: verdict(r),
        changes: changes(r),
        when: r.started_local(),
        duration: r.duration_human(),
        scheduled,
    };
    page.render().expect("the report template renders")
}

fn make_row<'a>(r: &Report, item: &'a ItemReport, ack: Option<&'a Ack>) -> Row<'a> {
    let done = item.status == Status::Manual && ack.is_some();
    let (color, bg) = if done {
        (colors(Status::Pass).0, "#ecfdf3")
    } else {
        colors(item.status)
    };
    let chart = item
        .data
        .get("value")
        .and_then(|v| v.as_f64())
        .and_then(|now| {
            let earlier = r.history.get(&item.name)?;
            let mut values = earlier.clone();
            values.push(now);
            // Passed items are listed on white, the others on their status's background.
            chart(
                &values,
                if item.status == Status::Pass {
                    "#ffffff"
                } else {
                    bg
                },
            )
        });
    Row {
        item,
        tag: if done { "DONE" } else { item.status.tag() },
        ack,
        ack_words: if item.status == Status::Manual {
            "Done by"
        } else {
            "Acknowledged by"
        },
        color,
        bg,
        change: match item.change {
            Change::NewFailure => "new failure",
            Change::Recovered => "recovered",
            Change::Same => "",
        },
        duration: super::human_ms(item.duration_ms),
        show_details: item.status != Status::Pass && !item.details.is_empty(),
        chart,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_and_orders_worst_first() {
        let h = super::render(&crate::report::tests::sample());
        assert!(!h.contains("<script>"), "values are escaped");
        assert!(h.contains("alert(1)"), "the detail line is shown, escaped");
        let fail = h.find("Firing alerts").unwrap();
        let warn = h.find("Disk").unwrap();
        let pass = h.find("Backups completed").unwrap();
        assert!(fail < warn && warn < pass, "worst first");
        assert!(h.contains("2026-11-24 10:00 IST"));
        assert!(
            !h.contains("<img") && !h.contains("<link") && !h.contains("<style"),
            "inline styles only"
        );
        assert!(
            h.contains("FAIL &mdash; 1 item failed, 1 warning to look at, 1 task for a person"),
            "the verdict leads"
        );
        assert!(
            h.contains("Needs attention (2)")
                && h.contains("For a person to do (1)")
                && h.contains("Passed (1)")
        );
        assert!(h.contains("<b>Since the previous run:</b> new failure: Firing alerts"));
        assert!(!h.contains("DONE"), "nothing is done before an ack");
    }

    #[test]
    fn acked_manual_item_reads_done_by_whom() {
        let mut r = crate::report::tests::sample();
        r.acks.push(crate::report::Ack {
            item: "Review Grafana".into(),
            by: "alice <ops>".into(),
            at: "2026-11-24T05:00:00Z".into(),
            note: Some("dashboards fine".into()),
        });
        let h = super::render(&r);
        assert!(h.contains(">DONE<"), "{h}");
        assert!(
            h.contains("Done by <b>alice &#60;ops&#62;</b>")
                || h.contains("Done by <b>alice &lt;ops&gt;</b>"),
            "{h}"
        );
        assert!(h.contains("dashboards fine"));
    }

    #[test]
    fn change_and_numbers_for_people() {
        assert_eq!(super::change_since(66.0, 72.6), "+10% since previous (66)");
        assert_eq!(super::change_since(40.0, 39.0), "-2.5% since previous (40)");
        assert_eq!(super::change_since(5.0, 5.0), "no change since previous");
        assert_eq!(super::change_since(0.0, 3.0), "+3 since previous (0)");
        assert_eq!(super::fmt_value(1_500_000_000.0), "1,500,000,000");
        assert_eq!(super::fmt_value(71.43), "71.4");
        assert_eq!(super::fmt_value(0.0042), "4.20e-3");
        assert_eq!(super::fmt_value(-1234.6), "-1,235");
    }

    #[test]
    fn a_chart_needs_an_earlier_value_and_keeps_every_bar_visible() {
        assert!(super::chart(&[5.0], "#ffffff").is_none());
        let c = super::chart(&[10.0, 10.0, 10.0], "#ffffff").expect("a chart");
        assert!(
            c.bars
                .iter()
                .all(|b| b.fill + b.empty == super::CHART_HEIGHT)
        );
        let c = super::chart(&[0.0, 50.0, 100.0], "#ffffff").expect("a chart");
        let fills: Vec<u32> = c.bars.iter().map(|b| b.fill).collect();
        assert_eq!(fills, vec![2, 12, 24], "from 0, the smallest still visible");
    }

    #[test]
    fn all_passed_says_so() {
        let mut r = crate::report::tests::sample();
        for i in &mut r.items {
            i.status = crate::base::status::Status::Pass;
            i.change = crate::report::Change::Same;
        }
        r.finish_status();
        let h = super::render(&r);
        assert!(h.contains("PASS &mdash; Every check passed"), "{h}");
        assert!(!h.contains("Needs attention"));
        assert!(!h.contains("Since the previous run"));
    }
}
