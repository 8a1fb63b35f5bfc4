//! The text report: a header line, one line per item, then the details of non-passing items.

use std::fmt::Write;

use super::Report;
use crate::base::status::Status;

pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let c = &r.counts;
    let mut counts = r.counts_phrase();
    if c.manual > 0 {
        let done = r
            .items
            .iter()
            .filter(|i| i.status == Status::Manual && r.ack_of(&i.name).is_some())
            .count();
        if c.manual > done {
            let _ = write!(counts, ", {} to do", c.manual - done);
        }
        if done > 0 {
            let _ = write!(counts, ", {done} done");
        }
    }
    if c.skipped > 0 {
        let _ = write!(counts, ", {} skipped", c.skipped);
    }
    let _ = writeln!(
        out,
        "{} {} — {} — {} on {} at {}{}",
        r.job,
        r.status.as_str().to_uppercase(),
        counts,
        r.duration_human(),
        r.host,
        r.started_local(),
        if r.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    );
    if !r.missed.is_empty() {
        let _ = writeln!(out, "missed slots before this run: {}", r.missed.join(", "));
    }
    let _ = writeln!(out);
    for i in &r.items {
        let change = match i.change {
            super::Change::NewFailure => "  [new failure]",
            super::Change::Recovered => "  [recovered]",
            super::Change::Same => "",
        };
        let ack = r.ack_of(&i.name);
        let (tag, by) = match (i.status, ack) {
            (Status::Manual, Some(a)) => ("DONE", format!("  (by {})", a.by)),
            (_, Some(a)) => (i.status.tag(), format!("  (acked by {})", a.by)),
            (_, None) => (i.status.tag(), String::new()),
        };
        let _ = writeln!(out, "{tag}  {} — {}{change}{by}", i.name, i.summary);
    }
    let noteworthy: Vec<_> = r
        .items
        .iter()
        .filter(|i| !matches!(i.status, Status::Pass) && !i.details.is_empty())
        .collect();
    if !noteworthy.is_empty() {
        let _ = writeln!(out, "\nDetails:");
        for i in noteworthy {
            let _ = writeln!(out, "\n{}  {}", i.status.tag(), i.name);
            for d in &i.details {
                let _ = writeln!(out, "    {d}");
            }
        }
    }
    if !r.acks.is_empty() {
        let _ = writeln!(out, "\nAcknowledged:");
        for a in &r.acks {
            let _ = writeln!(
                out,
                "    {} — {} at {}{}",
                a.item,
                a.by,
                a.at,
                a.note
                    .as_deref()
                    .map(|n| format!(": {n}"))
                    .unwrap_or_default()
            );
        }
    }
    if !r.notifications.is_empty() {
        let _ = writeln!(out);
        for n in &r.notifications {
            let _ = writeln!(
                out,
                "notify {}: {}{}",
                n.channel,
                n.status,
                n.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
    }
    let _ = writeln!(out, "\nrun {}", r.run_id);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn layout() {
        let t = super::render(&crate::report::tests::sample());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "daily FAIL — 1 passed, 1 warning, 1 failed, 1 to do — 3.2s on ops-1 at 2026-11-24 10:00 IST"
        );
        assert_eq!(
            lines[2],
            "PASS  Backups completed — newest full-20261124.dump, 2.1G, 3h old"
        );
        assert_eq!(
            lines[3],
            "FAIL  Firing alerts — 2 alerts firing  [new failure]"
        );
        assert_eq!(lines[5], "TODO  Review Grafana — for a person");
        assert!(t.contains(
            "\nDetails:\n\nFAIL  Firing alerts\n    HighErrorRate (critical) since 09:12\n"
        ));
        assert!(
            !t.contains("full-20261124.dump 2.1G 3h"),
            "details of passing items stay out of the text report"
        );
    }

    #[test]
    fn acked_manual_item_reads_done_by_whom() {
        let mut r = crate::report::tests::sample();
        r.acks.push(crate::report::Ack {
            item: "Review Grafana".into(),
            by: "alice".into(),
            at: "2026-11-24T05:00:00Z".into(),
            note: Some("dashboards fine".into()),
        });
        r.acks.push(crate::report::Ack {
            item: "Firing alerts".into(),
            by: "bob".into(),
            at: "2026-11-24T05:01:00Z".into(),
            note: None,
        });
        let t = super::render(&r);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("1 failed, 1 done —"), "{}", lines[0]);
        assert_eq!(lines[5], "DONE  Review Grafana — for a person  (by alice)");
        assert_eq!(
            lines[3],
            "FAIL  Firing alerts — 2 alerts firing  [new failure]  (acked by bob)"
        );
        assert!(
            t.contains("Acknowledged:\n    Review Grafana — alice at 2026-11-24T05:00:00Z: dashboards fine\n"),
            "{t}"
        );
    }
}
