//! The HTML report (e-mail, archive, status page): table layout and inline styles only, no
//! scripts, no remote images, so every mail client shows it the same. Worst items first; times
//! in the job's zone. askama escapes every value.

use askama::Template;

use super::{Change, ItemReport, Report};
use crate::items::Status;

struct Row<'a> {
    item: &'a ItemReport,
    tag: &'static str,
    color: &'static str,
    bg: &'static str,
    change: &'static str,
    duration: String,
    show_details: bool,
}

#[derive(Template)]
#[template(path = "report.html")]
struct Page<'a> {
    r: &'a Report,
    rows: Vec<Row<'a>>,
    title: String,
    banner_color: &'static str,
    headline: String,
    when: String,
    duration: String,
    scheduled: String,
}

fn colors(s: Status) -> (&'static str, &'static str) {
    match s {
        Status::Fail => ("#b42318", "#fef3f2"),
        Status::Warn => ("#b54708", "#fffaeb"),
        Status::Pass => ("#067647", "#ffffff"),
        Status::Manual => ("#3538cd", "#f5f8ff"),
        Status::Skipped => ("#475467", "#f9fafb"),
    }
}

pub fn render(r: &Report) -> String {
    let rows = r
        .items_worst_first()
        .into_iter()
        .map(|item| {
            let (color, bg) = colors(item.status);
            Row {
                item,
                tag: item.status.tag(),
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
        })
        .collect();
    let tz: Option<chrono_tz::Tz> = r.timezone.parse().ok();
    let scheduled = match (r.scheduled_for, tz) {
        (Some(s), Some(tz)) => s.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string(),
        (Some(s), None) => s.to_rfc3339(),
        (None, _) => String::new(),
    };
    let page = Page {
        r,
        rows,
        title: r.subject(),
        banner_color: colors(r.status).0,
        headline: format!("{} {}", r.job, r.status.as_str().to_uppercase()),
        when: r.started_local(),
        duration: r.duration_human(),
        scheduled,
    };
    page.render().expect("the report template renders")
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
    }
}
