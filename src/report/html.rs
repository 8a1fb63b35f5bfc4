//! The HTML report (e-mail, archive, status page): table layout and inline styles only, no
//! scripts, no remote images, so every mail client shows it the same. Worst items first; times
//! in the job's zone. askama escapes every value.
//!
//! `templates/report.html` extends `templates/layout.html` (banner, count tiles, footer) and
//! uses the chips of `templates/ui.html`; the daemon's status page (`server::status`) is built
//! from the same pieces, with [`Tile`] and [`colors`] from here, so both look alike.

use askama::Template;

use super::{Ack, Change, ItemReport, Report};
use crate::items::Status;

struct Row<'a> {
    item: &'a ItemReport,
    tag: &'static str,
    color: &'static str,
    bg: &'static str,
    change: &'static str,
    duration: String,
    show_details: bool,
    /// The item's newest acknowledgement (SPEC 9.2) and how it reads: "Done by alice" for a
    /// `manual` item, "Acknowledged by bob" for another.
    ack: Option<&'a Ack>,
    ack_words: &'static str,
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
            .map(|i| make_row(i, r.ack_of(&i.name)))
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

fn make_row<'a>(item: &'a ItemReport, ack: Option<&'a Ack>) -> Row<'a> {
    let done = item.status == Status::Manual && ack.is_some();
    let (color, bg) = if done {
        (colors(Status::Pass).0, "#ecfdf3")
    } else {
        colors(item.status)
    };
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
    fn all_passed_says_so() {
        let mut r = crate::report::tests::sample();
        for i in &mut r.items {
            i.status = crate::items::Status::Pass;
            i.change = crate::report::Change::Same;
        }
        r.finish_status();
        let h = super::render(&r);
        assert!(h.contains("PASS &mdash; Every check passed"), "{h}");
        assert!(!h.contains("Needs attention"));
        assert!(!h.contains("Since the previous run"));
    }
}
