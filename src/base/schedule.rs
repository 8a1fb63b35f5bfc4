//! When jobs fire: pure functions of (cron expression, zone, last slot, now).
//!
//! Nothing here reads the clock; callers pass `now`. That keeps the daemon's decisions
//! (next slot, missed slots, catch-up) testable without waiting, across real DST transitions.
//!
//! Cron semantics (croner): 5 fields (`min hour dom mon dow`) or 6 with seconds first; `L`, `W`,
//! `MON#1`; day-of-month AND day-of-week must both match, so `0 11 1-7 * MON` is the first Monday.
//!
//! DST policy, for zones that have it (IST does not):
//! - a wall-clock time that does not exist (the spring-forward gap, e.g. 02:30 in New York on the
//!   second Sunday of March) fires once, at the first instant after the gap (03:00 local);
//! - a wall-clock time that happens twice (the fall-back overlap) fires once, the first time;
//! - patterns with a wildcard hour (`*/15 * * * *`) are intervals and keep firing through both
//!   halves of an overlap, as real time passes.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::config::CatchUp;

/// A parsed cron expression.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    /// The expression as written.
    pub expr: String,
}

impl Schedule {
    /// Parses a 5- or 6-field expression; the error says what is wrong.
    pub fn parse(expr: &str) -> Result<Schedule, String> {
        let fields = expr.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "invalid cron expression {expr:?}: expected 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, found {fields}"
            ));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .dom_and_dow(true)
            .build();
        let cron = parser
            .parse(expr)
            .map_err(|e| format!("invalid cron expression {expr:?}: {e}"))?;
        // A pattern like "0 0 31 2 *" parses but never fires; say so now, not never.
        let probe = Utc::now();
        if cron.find_next_occurrence(&probe, false).is_err() {
            return Err(format!("cron expression {expr:?} never fires"));
        }
        Ok(Schedule {
            cron,
            expr: expr.to_string(),
        })
    }

    /// croner's English description, e.g. "At 10:00 AM".
    pub fn describe(&self) -> String {
        self.cron.describe()
    }

    /// The first slot strictly after `after`, in `tz`.
    pub fn next_after(&self, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Tz>> {
        let local = after.with_timezone(&tz);
        self.cron.find_next_occurrence(&local, false).ok()
    }

    /// The next `n` slots strictly after `after`.
    pub fn next_n(&self, tz: Tz, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Tz>> {
        let mut out = Vec::with_capacity(n);
        let mut cur = after;
        while out.len() < n {
            match self.next_after(tz, cur) {
                Some(t) => {
                    cur = t.with_timezone(&Utc);
                    out.push(t);
                }
                None => break,
            }
        }
        out
    }

    /// Slots in `(after, until]`, oldest first, at most `limit` of the newest.
    pub fn slots_between(
        &self,
        tz: Tz,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut out = std::collections::VecDeque::new();
        let mut cur = after;
        while let Some(t) = self.next_after(tz, cur) {
            let t = t.with_timezone(&Utc);
            if t > until {
                break;
            }
            if out.len() == limit {
                out.pop_front();
            }
            out.push_back(t);
            cur = t;
        }
        out.into()
    }

    /// [`Schedule::longest_gap`] from now (for `check-config`'s warnings).
    pub fn longest_gap_ahead(&self, tz: Tz) -> Option<std::time::Duration> {
        self.longest_gap(tz, Utc::now())
    }

    /// The longest time between two consecutive slots from `after` on, looking at most a year
    /// ahead and at most 10 000 slots (a 2-second schedule is regular long before that). For
    /// `0 8 * * MON-FRI` it is the weekend (72 h); across a DST change a daily slot is 25 h
    /// apart. Published as a metric so alert rules know how late a success may be.
    pub fn longest_gap(&self, tz: Tz, after: DateTime<Utc>) -> Option<std::time::Duration> {
        let horizon = after + chrono::Duration::days(366);
        let mut prev = self.next_after(tz, after)?.with_timezone(&Utc);
        let mut longest = None;
        for _ in 0..10_000 {
            let Some(next) = self.next_after(tz, prev) else {
                break;
            };
            let next = next.with_timezone(&Utc);
            let gap = (next - prev).to_std().unwrap_or_default();
            longest = Some(longest.map_or(gap, |l: std::time::Duration| l.max(gap)));
            if next > horizon {
                break;
            }
            prev = next;
        }
        longest
    }
}

/// What the daemon should do for one job right now (see [`plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Slots that passed while nobody ran them (oldest first, capped at 100).
    pub missed: Vec<DateTime<Utc>>,
    /// The missed slot to run now, with trigger `catch_up`.
    pub catch_up: Option<DateTime<Utc>>,
    /// The next slot to sleep until.
    pub next: Option<DateTime<Utc>>,
}

/// Decides, from the last slot the daemon recorded for a job, what happens now.
///
/// - `last_slot`: the newest slot already recorded (run, skipped or missed). None on a job's very
///   first start: nothing counts as missed then, we only look forward.
/// - A slot equal to `now` (to the second) is due, not missed: it is returned as `next`.
pub fn plan(
    schedule: &Schedule,
    tz: Tz,
    last_slot: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    catch_up: CatchUp,
    catch_up_within: std::time::Duration,
) -> Plan {
    let lookback_start = now - chrono::Duration::seconds(1);
    let missed = match last_slot {
        Some(last) if last < lookback_start => {
            schedule.slots_between(tz, last, lookback_start, 100)
        }
        _ => Vec::new(),
    };
    let catch_up_slot = match (catch_up, missed.last()) {
        (CatchUp::Once, Some(&newest)) => {
            let age = (now - newest).to_std().unwrap_or_default();
            (age <= catch_up_within).then_some(newest)
        }
        _ => None,
    };
    let next = schedule
        .next_after(tz, lookback_start)
        .map(|t| t.with_timezone(&Utc));
    Plan {
        missed,
        catch_up: catch_up_slot,
        next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn local(tz: Tz, slots: &[DateTime<Tz>]) -> Vec<String> {
        slots
            .iter()
            .map(|t| t.with_timezone(&tz).to_rfc3339())
            .collect()
    }

    #[test]
    fn longest_gap_covers_weekends_dst_and_months() {
        let from = utc("2026-01-05T00:00:00Z");
        let hours = |expr: &str, zone: &str| {
            Schedule::parse(expr)
                .unwrap()
                .longest_gap(zone.parse().unwrap(), from)
                .map(|d| d.as_secs() as f64 / 3600.0)
        };
        assert_eq!(hours("0 8 * * *", "Asia/Kolkata"), Some(24.0));
        assert_eq!(
            hours("0 8 * * *", "America/New_York"),
            Some(25.0),
            "fall-back night"
        );
        assert_eq!(hours("0 8 * * MON-FRI", "Asia/Kolkata"), Some(72.0));
        // First Monday of the month: four or five weeks apart.
        assert_eq!(hours("0 8 1-7 * MON", "Asia/Kolkata"), Some(35.0 * 24.0));
        assert_eq!(
            hours("*/5 8-17 * * MON-FRI", "Asia/Kolkata"),
            Some(62.0 + 5.0 / 60.0),
            "Friday 17:55 to Monday 08:00"
        );
        let every_two = Schedule::parse("*/2 * * * * *").unwrap();
        assert_eq!(
            every_two.longest_gap("UTC".parse().unwrap(), from),
            Some(std::time::Duration::from_secs(2))
        );
    }

    #[test]
    fn daily_ist_fires_at_ten_local() {
        let s = Schedule::parse("0 10 * * *").unwrap();
        let tz: Tz = "Asia/Kolkata".parse().unwrap();
        let next = s.next_n(tz, utc("2026-11-24T05:00:00Z"), 2);
        assert_eq!(
            local(tz, &next),
            ["2026-11-25T10:00:00+05:30", "2026-11-26T10:00:00+05:30"]
        );
        assert_eq!(
            next[0].with_timezone(&Utc).to_rfc3339(),
            "2026-11-25T04:30:00+00:00"
        );
    }

    #[test]
    fn first_monday_needs_dom_and_dow() {
        let s = Schedule::parse("0 11 1-7 * MON").unwrap();
        let tz: Tz = "Asia/Kolkata".parse().unwrap();
        let next = s.next_n(tz, utc("2026-11-24T00:00:00Z"), 3);
        assert_eq!(
            local(tz, &next),
            [
                "2026-12-07T11:00:00+05:30",
                "2027-01-04T11:00:00+05:30",
                "2027-02-01T11:00:00+05:30"
            ]
        );
        let hash = Schedule::parse("0 11 * * MON#1").unwrap();
        assert_eq!(
            local(tz, &hash.next_n(tz, utc("2026-11-24T00:00:00Z"), 3)),
            local(tz, &next)
        );
    }

    #[test]
    fn last_day_and_weekday_and_seconds() {
        let tz = Tz::UTC;
        let l = Schedule::parse("0 0 L * *").unwrap();
        assert_eq!(
            local(tz, &l.next_n(tz, utc("2027-02-01T00:00:00Z"), 1)),
            ["2027-02-28T00:00:00+00:00"]
        );
        // 15W: the weekday nearest the 15th; 2026-11-15 is a Sunday, so Monday the 16th.
        let w = Schedule::parse("0 9 15W * *").unwrap();
        assert_eq!(
            local(tz, &w.next_n(tz, utc("2026-11-01T00:00:00Z"), 1)),
            ["2026-11-16T09:00:00+00:00"]
        );
        let six = Schedule::parse("*/2 * * * * *").unwrap();
        assert_eq!(
            local(tz, &six.next_n(tz, utc("2026-11-01T00:00:00Z"), 2)),
            ["2026-11-01T00:00:02+00:00", "2026-11-01T00:00:04+00:00"]
        );
    }

    #[test]
    fn bad_expressions_are_explained() {
        assert!(
            Schedule::parse("0 10 * *")
                .unwrap_err()
                .contains("expected 5 fields")
        );
        assert!(
            Schedule::parse("0 25 * * *")
                .unwrap_err()
                .contains("invalid cron expression")
        );
        assert!(
            Schedule::parse("0 0 30 2 *")
                .unwrap_err()
                .contains("never fires")
        );
        assert!(
            Schedule::parse("0 0 0 1 1 * 2030")
                .unwrap_err()
                .contains("expected 5 fields")
        );
    }

    #[test]
    fn new_york_spring_gap_fires_once_after_the_gap() {
        // 2027-03-14: clocks jump from 02:00 to 03:00 EST→EDT. 02:30 does not exist.
        let tz: Tz = "America/New_York".parse().unwrap();
        let s = Schedule::parse("30 2 * * *").unwrap();
        let next = s.next_n(tz, utc("2027-03-13T12:00:00Z"), 3);
        assert_eq!(
            local(tz, &next),
            [
                "2027-03-14T03:00:00-04:00",
                "2027-03-15T02:30:00-04:00",
                "2027-03-16T02:30:00-04:00"
            ]
        );
    }

    #[test]
    fn new_york_fall_overlap_fires_once() {
        // 2026-11-01: 01:00-02:00 happens twice (EDT then EST).
        let tz: Tz = "America/New_York".parse().unwrap();
        let s = Schedule::parse("30 1 * * *").unwrap();
        let next = s.next_n(tz, utc("2026-10-31T12:00:00Z"), 2);
        assert_eq!(
            local(tz, &next),
            ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
        );
    }

    #[test]
    fn berlin_transitions() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let s = Schedule::parse("30 2 * * *").unwrap();
        // 2027-03-28: 02:00 → 03:00 CET→CEST.
        let spring = s.next_n(tz, utc("2027-03-27T12:00:00Z"), 2);
        assert_eq!(
            local(tz, &spring),
            ["2027-03-28T03:00:00+02:00", "2027-03-29T02:30:00+02:00"]
        );
        // 2026-10-25: 03:00 → 02:00 CEST→CET, 02:30 happens twice: fire once.
        let fall = s.next_n(tz, utc("2026-10-24T12:00:00Z"), 2);
        assert_eq!(
            local(tz, &fall),
            ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
        );
    }

    #[test]
    fn interval_patterns_keep_real_time_through_an_overlap() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let s = Schedule::parse("0 * * * *").unwrap();
        let slots = s.slots_between(
            tz,
            utc("2026-11-01T04:30:00Z"),
            utc("2026-11-01T07:30:00Z"),
            10,
        );
        // 05:00Z = 01:00 EDT, 06:00Z = 01:00 EST, 07:00Z = 02:00 EST: one per real hour, the
        // repeated 01:00 included.
        assert_eq!(slots.len(), 3);
        assert_eq!(slots[0], utc("2026-11-01T05:00:00Z"));
        assert_eq!(slots[2], utc("2026-11-01T07:00:00Z"));
    }

    #[test]
    fn plan_after_downtime_catches_up_newest_within_window() {
        let tz: Tz = "Asia/Kolkata".parse().unwrap();
        let s = Schedule::parse("0 10 * * *").unwrap();
        // Last run on the 21st; daemon back on the 24th at 13:00 IST: 22nd, 23rd, 24th missed.
        let last = tz
            .with_ymd_and_hms(2026, 11, 21, 10, 0, 0)
            .unwrap()
            .with_timezone(&Utc);
        let now = tz
            .with_ymd_and_hms(2026, 11, 24, 13, 0, 0)
            .unwrap()
            .with_timezone(&Utc);
        let p = plan(
            &s,
            tz,
            Some(last),
            now,
            CatchUp::Once,
            std::time::Duration::from_secs(12 * 3600),
        );
        assert_eq!(p.missed.len(), 3);
        assert_eq!(
            p.catch_up,
            Some(
                tz.with_ymd_and_hms(2026, 11, 24, 10, 0, 0)
                    .unwrap()
                    .with_timezone(&Utc)
            )
        );
        assert_eq!(
            p.next,
            Some(
                tz.with_ymd_and_hms(2026, 11, 25, 10, 0, 0)
                    .unwrap()
                    .with_timezone(&Utc)
            )
        );
        // Too old for the window: nothing runs, the slots are still listed.
        let p = plan(
            &s,
            tz,
            Some(last),
            now,
            CatchUp::Once,
            std::time::Duration::from_secs(3600),
        );
        assert_eq!((p.missed.len(), p.catch_up), (3, None));
        let p = plan(
            &s,
            tz,
            Some(last),
            now,
            CatchUp::Skip,
            std::time::Duration::from_secs(12 * 3600),
        );
        assert_eq!((p.missed.len(), p.catch_up), (3, None));
    }

    #[test]
    fn plan_first_start_and_due_slot() {
        let tz = Tz::UTC;
        let s = Schedule::parse("0 10 * * *").unwrap();
        let now = utc("2026-11-24T10:00:00Z");
        let p = plan(
            &s,
            tz,
            None,
            now,
            CatchUp::Once,
            std::time::Duration::from_secs(3600),
        );
        assert!(p.missed.is_empty());
        assert_eq!(
            p.next,
            Some(now),
            "a slot at exactly now is due, not missed"
        );
        // The previous slot was recorded: nothing missed, the next is tomorrow.
        let p = plan(
            &s,
            tz,
            Some(now),
            now + chrono::Duration::seconds(5),
            CatchUp::Once,
            std::time::Duration::from_secs(3600),
        );
        assert!(p.missed.is_empty());
        assert_eq!(p.next, Some(utc("2026-11-25T10:00:00Z")));
    }
}
