//! The report of one run: the model (its JSON form is a contract, SPEC section 4) and pure
//! renderers: [`text`], [`html`], [`json`], [`slack`]. Renderers never do I/O.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::base::status::{Status, Trigger};

pub mod html;
pub mod json;
pub mod slack;
pub mod text;

/// How an item compares with the previous run of the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Fails now and did not fail last time (or this is its first run).
    NewFailure,
    /// Warned or failed last time and passes now.
    Recovered,
    Same,
}

/// Counts per status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub pass: usize,
    pub warn: usize,
    pub fail: usize,
    pub skipped: usize,
    pub manual: usize,
}

/// One item's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemReport {
    pub name: String,
    pub kind: String,
    pub status: Status,
    pub summary: String,
    pub details: Vec<String>,
    pub data: serde_json::Value,
    pub duration_ms: u64,
    pub change: Change,
    /// An item over several targets (SPEC 9.5): each target's result, in the item's order.
    /// Empty (and left out of the JSON) for an item with one target or none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetResult>,
}

/// One target's result in an item over several targets (`targets[]` of SPEC 9.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetResult {
    pub target: String,
    pub status: Status,
    pub summary: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
    /// The kind's data for this target (as a single-target item's `data`).
    #[serde(default)]
    pub data: serde_json::Value,
    pub duration_ms: u64,
}

/// How a report's delivery to one channel stands (SPEC 9.1, `notifications[].status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Delivered.
    Sent,
    /// In the outbox: being delivered, or failed and to be retried.
    Queued,
    /// Not sent: below the channel's `on`, or a dry run for a heartbeat.
    Skipped,
    /// Not delivered and not queued: the outbox could not be written, or it was dropped.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Queued => "queued",
            DeliveryStatus::Skipped => "skipped",
            DeliveryStatus::Failed => "failed",
        }
    }
}

impl std::fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One line of a report's `notifications` list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NotificationStatus {
    pub channel: String,
    pub status: DeliveryStatus,
    pub error: Option<String>,
}

/// Someone's acknowledgement of an item of a stored run (SPEC 9.2): who did a `manual` item,
/// or who took a failing one. Kept in the store's `acks` table, never in the stored report row;
/// joined into the report whenever it is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub item: String,
    pub by: String,
    /// RFC 3339, UTC.
    pub at: String,
    pub note: Option<String>,
}

/// One run's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub run_id: String,
    pub job: String,
    /// The job's description (one line for people).
    #[serde(default)]
    pub description: String,
    pub trigger: Trigger,
    /// The slot this run is for, in the job's zone; null for manual runs.
    pub scheduled_for: Option<DateTime<FixedOffset>>,
    pub started_at: DateTime<FixedOffset>,
    pub finished_at: DateTime<FixedOffset>,
    pub duration_ms: u64,
    pub host: String,
    /// IANA name of the job's zone (the offsets above are in it).
    pub timezone: String,
    /// The worst item status (`manual` and `skipped` count as pass): `pass`, `warn` or `fail`.
    pub status: Status,
    pub counts: Counts,
    /// True for `--dry-run`: nothing was changed.
    #[serde(default)]
    pub dry_run: bool,
    pub items: Vec<ItemReport>,
    /// Slots that passed without a run before this one (RFC3339, job's zone), oldest first.
    #[serde(default)]
    pub missed: Vec<String>,
    /// Where the report goes. Stored once with the report (each channel `skipped` or
    /// `queued`); when a stored report is read, the store brings it up to date from the run's
    /// outbox rows (`sent`, `queued`, `failed`), so it always tells the delivery state.
    pub notifications: Vec<NotificationStatus>,
    /// Acknowledgements (SPEC 9.2), oldest first: empty when the run ends; the store adds them
    /// from its `acks` table when a stored report is read.
    #[serde(default)]
    pub acks: Vec<Ack>,
    /// The status of the previous comparable run (SPEC 9.1), set by `compare_with`; None on a
    /// job's first run. Only for `on = "change"` at delivery time: not part of the JSON.
    #[serde(skip)]
    pub previous_status: Option<Status>,
    /// Each item's `data.value` in the comparable runs before this one, oldest first, by item
    /// name (at most [`CHART_POINTS`] - 1 values): the HTML report's charts (SPEC 9.3). Filled
    /// from the store by whoever renders (`Store::fill_history`); the renderers only read it.
    /// Not part of the JSON.
    #[serde(skip)]
    pub history: std::collections::BTreeMap<String, Vec<f64>>,
}

/// The number of values a chart in the HTML report shows at most (this run's included).
pub const CHART_POINTS: usize = 30;

impl Report {
    /// The newest acknowledgement of item `name`, if any.
    pub fn ack_of(&self, name: &str) -> Option<&Ack> {
        self.acks.iter().rev().find(|a| a.item == name)
    }

    /// True when some failing item has no acknowledgement (what `escalate` waits for).
    pub fn has_unacked_failure(&self) -> bool {
        self.items
            .iter()
            .any(|i| i.status == Status::Fail && self.ack_of(&i.name).is_none())
    }

    /// Fills `status` and `counts` from the items.
    pub fn finish_status(&mut self) {
        let mut counts = Counts::default();
        let mut worst = Status::Pass;
        for i in &self.items {
            match i.status {
                Status::Pass => counts.pass += 1,
                Status::Warn => counts.warn += 1,
                Status::Fail => counts.fail += 1,
                Status::Skipped => counts.skipped += 1,
                Status::Manual => counts.manual += 1,
            }
            if i.status.severity() > worst.severity() {
                worst = i.status;
            }
        }
        self.counts = counts;
        self.status = worst;
    }

    /// Sets each item's `change` against the previous run of the job (None: first run).
    pub fn compare_with(&mut self, previous: Option<&Report>) {
        self.previous_status = previous.map(|p| p.status);
        for item in &mut self.items {
            let before = previous
                .and_then(|p| p.items.iter().find(|i| i.name == item.name))
                .map(|i| i.status);
            item.change = match (before, item.status) {
                (Some(Status::Fail), Status::Fail) => Change::Same,
                (_, Status::Fail) => Change::NewFailure,
                (Some(Status::Warn | Status::Fail), Status::Pass) => Change::Recovered,
                _ => Change::Same,
            };
        }
    }

    /// Whether this run differs from the previous comparable one (`on = "change"`): its status
    /// is not that run's (a first run counts as a change), or an item is `new_failure` or
    /// `recovered`.
    pub fn changed(&self) -> bool {
        self.previous_status != Some(self.status)
            || self
                .items
                .iter()
                .any(|i| matches!(i.change, Change::NewFailure | Change::Recovered))
    }

    /// Items, worst first (fail, warn, manual, skipped, pass), file order within a status.
    pub fn items_worst_first(&self) -> Vec<&ItemReport> {
        let rank = |s: Status| match s {
            Status::Fail => 0,
            Status::Warn => 1,
            Status::Manual => 2,
            Status::Skipped => 3,
            Status::Pass => 4,
        };
        let mut v: Vec<&ItemReport> = self.items.iter().collect();
        v.sort_by_key(|i| rank(i.status));
        v
    }

    /// "5 passed, 1 warning, 0 failed" (the e-mail subject's wording).
    pub fn counts_phrase(&self) -> String {
        let c = &self.counts;
        format!(
            "{} passed, {} warning{}, {} failed",
            c.pass,
            c.warn,
            if c.warn == 1 { "" } else { "s" },
            c.fail
        )
    }

    /// `[runbook] daily FAIL — 5 passed, 1 warning, 1 failed` (contract).
    /// SPEC 6's subject; a dry run says so after the status (it changed nothing, and a mail
    /// filter on `[runbook] daily FAIL` should not take it for a real failure).
    pub fn subject(&self) -> String {
        format!(
            "[runbook] {} {}{} — {}",
            self.job,
            self.status.as_str().to_uppercase(),
            if self.dry_run { " (dry run)" } else { "" },
            self.counts_phrase()
        )
    }

    /// A start time for people: `2026-11-24 10:00 IST`.
    pub fn started_local(&self) -> String {
        let tz: Option<chrono_tz::Tz> = self.timezone.parse().ok();
        match tz {
            Some(tz) => self
                .started_at
                .with_timezone(&tz)
                .format("%Y-%m-%d %H:%M %Z")
                .to_string(),
            None => self.started_at.format("%Y-%m-%d %H:%M %:z").to_string(),
        }
    }

    /// `1.2s`, `3m 05s`.
    pub fn duration_human(&self) -> String {
        human_ms(self.duration_ms)
    }
}

/// Milliseconds for people.
pub fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        let s = ms / 1000;
        format!("{}m {:02}s", s / 60, s % 60)
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A report with one item of each status, for renderer tests.
    pub fn sample() -> Report {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap();
        let item =
            |name: &str, kind: &str, status: Status, summary: &str, details: &[&str]| ItemReport {
                name: name.into(),
                kind: kind.into(),
                status,
                summary: summary.into(),
                details: details.iter().map(|s| s.to_string()).collect(),
                data: serde_json::json!({}),
                duration_ms: 12,
                change: Change::Same,
                targets: vec![],
            };
        let mut r = Report {
            run_id: "01JTESTRUN0000000000000000".into(),
            job: "daily".into(),
            description: "Morning checklist".into(),
            trigger: Trigger::Schedule,
            scheduled_for: Some(t("2026-11-24T10:00:00+05:30")),
            started_at: t("2026-11-24T10:00:00+05:30"),
            finished_at: t("2026-11-24T10:00:03+05:30"),
            duration_ms: 3200,
            host: "ops-1".into(),
            timezone: "Asia/Kolkata".into(),
            status: Status::Pass,
            counts: Counts::default(),
            dry_run: false,
            items: vec![
                item(
                    "Backups completed",
                    "backup",
                    Status::Pass,
                    "newest full-20261124.dump, 2.1G, 3h old",
                    &["full-20261124.dump 2.1G 3h"],
                ),
                item(
                    "Firing alerts",
                    "alertmanager",
                    Status::Fail,
                    "2 alerts firing",
                    &[
                        "HighErrorRate (critical) since 09:12",
                        "<script>alert(1)</script>",
                    ],
                ),
                item(
                    "Disk",
                    "system",
                    Status::Warn,
                    "/ is 83% full",
                    &["/: 83% used"],
                ),
                item(
                    "Review Grafana",
                    "manual",
                    Status::Manual,
                    "for a person",
                    &[],
                ),
            ],
            missed: vec![],
            notifications: vec![],
            acks: vec![],
            previous_status: None,
            history: Default::default(),
        };
        r.finish_status();
        r.compare_with(None);
        r
    }

    #[test]
    fn status_is_worst_and_counts_add_up() {
        let r = sample();
        assert_eq!(r.status, Status::Fail);
        assert_eq!(
            r.counts,
            Counts {
                pass: 1,
                warn: 1,
                fail: 1,
                skipped: 0,
                manual: 1
            }
        );
        assert_eq!(
            r.subject(),
            "[runbook] daily FAIL — 1 passed, 1 warning, 1 failed"
        );
    }

    #[test]
    fn change_against_previous_run() {
        let first = sample();
        assert_eq!(
            first.items[1].change,
            Change::NewFailure,
            "a failing item on the first run is a new failure"
        );
        assert_eq!(first.items[0].change, Change::Same);
        let mut second = sample();
        second.items[1].status = Status::Pass;
        second.items[0].status = Status::Fail;
        second.compare_with(Some(&first));
        assert_eq!(second.items[1].change, Change::Recovered);
        assert_eq!(second.items[0].change, Change::NewFailure);
        let mut third = sample();
        third.compare_with(Some(&sample()));
        assert_eq!(
            third.items[1].change,
            Change::Same,
            "still failing is not new"
        );
    }

    #[test]
    fn json_has_the_contract_fields() {
        let v: serde_json::Value = serde_json::from_str(&json::render(&sample())).unwrap();
        for key in [
            "run_id",
            "job",
            "trigger",
            "scheduled_for",
            "started_at",
            "finished_at",
            "duration_ms",
            "host",
            "status",
            "counts",
            "items",
            "notifications",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["status"], "fail");
        assert_eq!(v["trigger"], "schedule");
        assert_eq!(v["scheduled_for"], "2026-11-24T10:00:00+05:30");
        assert_eq!(v["counts"]["manual"], 1);
        let item = &v["items"][1];
        for key in [
            "name",
            "kind",
            "status",
            "summary",
            "details",
            "data",
            "duration_ms",
            "change",
        ] {
            assert!(item.get(key).is_some(), "item missing {key}");
        }
        assert_eq!(item["change"], "new_failure");
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, sample());
    }
}
