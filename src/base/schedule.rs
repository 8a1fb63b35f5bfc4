//! When jobs fire: pure functions of (cron expression, zone, last slot, now).
//!
//! Nothing here reads the clock; callers pass `now`. That keeps the daemon's decisions
//! (next slot, missed slots, catch-up) testable without waiting, across real DST transitions.
//! [`decide`] is the one scheduling decision: the daemon's loop (`daemon::scheduler`) calls it
//! for every job at every wake-up and only carries out what it says; [`next_wake`] says how
//! long the loop may sleep, [`CatchUp`] is a job's policy for slots missed while it was down.
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

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};

/// Why a cron expression was refused (the config names its file:line:column).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "invalid cron expression {expr:?}: expected 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, found {found}"
    )]
    FieldCount { expr: String, found: usize },
    #[error("invalid cron expression {expr:?}: {reason}")]
    Syntax { expr: String, reason: String },
    /// A pattern like `0 0 31 2 *` parses but never fires.
    #[error("cron expression {expr:?} never fires")]
    NeverFires { expr: String },
}

/// A parsed cron expression.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    /// The expression as written.
    pub expr: String,
}

impl Schedule {
    /// Parses a 5- or 6-field expression; the error says what is wrong.
    pub fn parse(expr: &str) -> Result<Schedule, ScheduleError> {
        let fields = expr.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(ScheduleError::FieldCount {
                expr: expr.to_string(),
                found: fields,
            });
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .dom_and_dow(true)
            .build();
        let cron = parser.parse(expr).map_err(|e| ScheduleError::Syntax {
            expr: expr.to_string(),
            reason: e.to_string(),
        })?;
        // A pattern like "0 0 31 2 *" parses but never fires; say so now, not never.
        // A pattern that fires at all fires again within a few decades of any instant (a leap
        // day that is a Monday: 28 years), so a fixed start will do and keeps this module free
        // of the clock.
        let probe = DateTime::<Utc>::from_timestamp(946_684_800, 0).expect("2000-01-01");
        if cron.find_next_occurrence(&probe, false).is_err() {
            return Err(ScheduleError::NeverFires {
                expr: expr.to_string(),
            });
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

/// The loop re-reads the wall clock at least this often (suspend, clock steps, reloads).
pub const MAX_SLEEP: Duration = Duration::from_secs(30);

/// A due slot no older than this fires with trigger `schedule`; an older one (the loop woke
/// late: suspend, clock step, daemon start) is treated as missed and goes through the job's
/// catch-up policy.
pub const ON_TIME: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// How many missed slots are listed at most (the newest ones).
pub const MAX_MISSED: usize = 100;

/// What to do with slots missed while the daemon was down (a job's `catch_up`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Run the newest missed slot once, if it is within `catch_up_within`.
    #[default]
    Once,
    /// Only record the missed slots.
    Skip,
}

/// Why a slot fires: the run's trigger (`schedule` or `catch_up` in its report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotTrigger {
    /// The slot is due now (at most [`ON_TIME`] late).
    Schedule,
    /// A missed slot run late, per the job's catch-up policy.
    CatchUp,
}

/// What [`decide`] says about one job at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tick {
    /// Slots that passed without running (to record as `missed` and list in the next report),
    /// oldest first. Includes the catch-up slot itself when one runs late.
    pub missed: Vec<DateTime<Utc>>,
    /// The slot to run now and why.
    pub fire: Option<(DateTime<Utc>, SlotTrigger)>,
    /// A slot that is due while the job is still running: recorded `skipped`.
    pub skipped: Option<DateTime<Utc>>,
    /// The newest slot handled by this tick (the job's new cursor), if any was due.
    pub handled_until: Option<DateTime<Utc>>,
}

/// How one job is scheduled (the parts of its config [`decide`] needs).
#[derive(Debug, Clone)]
pub struct Policy<'a> {
    pub schedule: &'a Schedule,
    pub tz: Tz,
    pub catch_up: CatchUp,
    pub catch_up_within: Duration,
}

impl Policy<'_> {
    /// Whether a slot `slot`, late at `now` (another node died running it), may still run: the
    /// catch-up policy is `once` and the slot is within `catch_up_within`.
    pub fn may_catch_up(&self, slot: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        let late = (now - slot).to_std().unwrap_or_default();
        self.catch_up == CatchUp::Once && late <= self.catch_up_within
    }

    /// The first slot after `cursor` and `now` (the loop's next wake-up for this job).
    pub fn next_slot(&self, cursor: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule
            .next_after(self.tz, cursor.max(now))
            .map(|t| t.with_timezone(&Utc))
    }
}

/// Decides what happens to one job at `now`, given the newest slot already handled.
///
/// It is the same function at start (catch-up after downtime) and on every wake-up (a
/// suspended VM or a clock step forward is just "several slots are due at once"; a clock step
/// backward makes nothing due, so no slot ever fires twice).
///
/// Slots in `(handled_until, now]` are due. The newest fires: with trigger `schedule` if it is
/// at most [`ON_TIME`] old, else per the catch-up policy (`once` within `catch_up_within`:
/// trigger `catch_up`; otherwise it is only recorded as missed). Older due slots are missed.
/// `is_running` is asked only when something would fire; if it says yes, the slot is skipped.
pub fn decide(
    policy: &Policy<'_>,
    handled_until: DateTime<Utc>,
    now: DateTime<Utc>,
    is_running: impl FnOnce() -> bool,
) -> Tick {
    let mut due = policy
        .schedule
        .slots_between(policy.tz, handled_until, now, MAX_MISSED + 1);
    let Some(newest) = due.pop() else {
        return Tick::default();
    };
    let mut tick = Tick {
        missed: due,
        handled_until: Some(newest),
        ..Tick::default()
    };
    let lateness = now - newest;
    let trigger = if lateness <= ON_TIME {
        Some(SlotTrigger::Schedule)
    } else {
        tick.missed.push(newest);
        let within = lateness
            .to_std()
            .map(|l| l <= policy.catch_up_within)
            .unwrap_or(true);
        (policy.catch_up == CatchUp::Once && within).then_some(SlotTrigger::CatchUp)
    };
    if let Some(trigger) = trigger {
        if is_running() {
            if trigger == SlotTrigger::CatchUp {
                tick.missed.pop();
            }
            tick.skipped = Some(newest);
        } else {
            tick.fire = Some((newest, trigger));
        }
    }
    tick
}

/// Where the loop starts for a job: after its newest recorded slot, or (a job never scheduled
/// before) one second before now, so nothing counts as missed and a slot at exactly now fires.
pub fn start_cursor(last_recorded: Option<DateTime<Utc>>, now: DateTime<Utc>) -> DateTime<Utc> {
    last_recorded.unwrap_or(now - chrono::TimeDelta::seconds(1))
}

/// How long the loop may sleep: until the earliest next slot of any job, capped by
/// [`MAX_SLEEP`] and by half the watchdog interval.
pub fn next_wake(
    next_slots: impl IntoIterator<Item = DateTime<Utc>>,
    now: DateTime<Utc>,
    watchdog: Option<Duration>,
) -> Duration {
    let mut sleep = MAX_SLEEP;
    if let Some(w) = watchdog {
        sleep = sleep.min(w / 2);
    }
    for slot in next_slots {
        let until = (slot - now).to_std().unwrap_or(Duration::ZERO);
        sleep = sleep.min(until);
    }
    sleep
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
        let err = |expr: &str| Schedule::parse(expr).unwrap_err();
        assert!(matches!(
            err("0 10 * *"),
            ScheduleError::FieldCount { found: 4, .. }
        ));
        assert!(
            err("0 10 * *").to_string().contains("expected 5 fields"),
            "{}",
            err("0 10 * *")
        );
        assert!(matches!(err("0 25 * * *"), ScheduleError::Syntax { .. }));
        assert!(
            err("0 25 * * *")
                .to_string()
                .starts_with("invalid cron expression \"0 25 * * *\": ")
        );
        assert_eq!(
            err("0 0 30 2 *").to_string(),
            "cron expression \"0 0 30 2 *\" never fires"
        );
        assert!(matches!(
            err("0 0 0 1 1 * 2030"),
            ScheduleError::FieldCount { found: 7, .. }
        ));
        // Rare but real: leap days, and a leap day that is a Monday.
        assert!(Schedule::parse("0 0 29 2 *").is_ok());
        assert!(Schedule::parse("0 0 29 2 MON").is_ok());
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

    fn policy(schedule: &Schedule, tz: &str, catch_up: CatchUp, within_h: u64) -> Policy<'static> {
        let s: &'static Schedule = Box::leak(Box::new(schedule.clone()));
        Policy {
            schedule: s,
            tz: tz.parse().unwrap(),
            catch_up,
            catch_up_within: Duration::from_secs(within_h * 3600),
        }
    }

    /// A fake clock driving [`decide`] the way the loop does: wake at the next slot (or after
    /// `MAX_SLEEP`), decide, move the cursor. Returns the fired slots with their triggers.
    fn simulate(
        p: &Policy<'_>,
        mut cursor: DateTime<Utc>,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<(DateTime<Utc>, SlotTrigger)> {
        let mut fired = vec![];
        let mut now = from;
        while now <= until {
            let tick = decide(p, cursor, now, || false);
            if let Some(h) = tick.handled_until {
                cursor = h;
            }
            fired.extend(tick.fire);
            let next = p
                .schedule
                .next_after(p.tz, cursor.max(now))
                .map(|t| t.with_timezone(&Utc));
            now += chrono::TimeDelta::from_std(next_wake(next, now, None)).unwrap()
                + chrono::TimeDelta::milliseconds(1);
        }
        fired
    }

    #[test]
    fn daily_ist_job_fires_once_a_day_at_ten_local() {
        let s = Schedule::parse("0 10 * * *").unwrap();
        let p = policy(&s, "Asia/Kolkata", CatchUp::Once, 12);
        let start = utc("2026-11-24T00:00:00Z");
        let fired = simulate(
            &p,
            start_cursor(None, start),
            start,
            utc("2026-11-27T00:00:00Z"),
        );
        let local: Vec<String> = fired
            .iter()
            .map(|(t, _)| t.with_timezone(&p.tz).to_rfc3339())
            .collect();
        assert_eq!(
            local,
            [
                "2026-11-24T10:00:00+05:30",
                "2026-11-25T10:00:00+05:30",
                "2026-11-26T10:00:00+05:30"
            ]
        );
        assert!(fired.iter().all(|(_, t)| *t == SlotTrigger::Schedule));
    }

    #[test]
    fn missed_slot_within_window_runs_once_after_restart() {
        let s = Schedule::parse("0 10 * * *").unwrap();
        let p = policy(&s, "Asia/Kolkata", CatchUp::Once, 12);
        let tz: Tz = "Asia/Kolkata".parse().unwrap();
        // Last slot recorded on the 21st; the daemon comes back on the 24th at 13:00 IST.
        let last = tz
            .with_ymd_and_hms(2026, 11, 21, 10, 0, 0)
            .unwrap()
            .with_timezone(&Utc);
        let now = tz
            .with_ymd_and_hms(2026, 11, 24, 13, 0, 0)
            .unwrap()
            .with_timezone(&Utc);
        let tick = decide(&p, start_cursor(Some(last), now), now, || false);
        let slot24 = tz
            .with_ymd_and_hms(2026, 11, 24, 10, 0, 0)
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(tick.fire, Some((slot24, SlotTrigger::CatchUp)));
        assert_eq!(
            tick.missed.len(),
            3,
            "22nd, 23rd and 24th are listed as missed"
        );
        assert_eq!(tick.handled_until, Some(slot24));
        // The next wake-up does not fire it again.
        let again = decide(&p, slot24, now + chrono::TimeDelta::seconds(30), || false);
        assert_eq!(again, Tick::default());
    }

    #[test]
    fn missed_slot_outside_window_or_skip_policy_is_only_recorded() {
        let s = Schedule::parse("0 10 * * *").unwrap();
        let last = utc("2026-11-21T04:30:00Z");
        let now = utc("2026-11-24T20:00:00Z");
        let tick = decide(
            &policy(&s, "Asia/Kolkata", CatchUp::Once, 12),
            last,
            now,
            || false,
        );
        assert_eq!((tick.fire, tick.missed.len()), (None, 3));
        let tick = decide(
            &policy(&s, "Asia/Kolkata", CatchUp::Skip, 48),
            last,
            now,
            || false,
        );
        assert_eq!((tick.fire, tick.missed.len()), (None, 3));
    }

    #[test]
    fn first_start_counts_nothing_as_missed() {
        let s = Schedule::parse("0 10 * * *").unwrap();
        let p = policy(&s, "UTC", CatchUp::Once, 48);
        let now = utc("2026-11-24T13:00:00Z");
        assert_eq!(
            decide(&p, start_cursor(None, now), now, || false),
            Tick::default()
        );
        // A slot at exactly the start instant is due and fires.
        let at = utc("2026-11-24T10:00:00Z");
        assert_eq!(
            decide(&p, start_cursor(None, at), at, || false).fire,
            Some((at, SlotTrigger::Schedule))
        );
    }

    #[test]
    fn slot_that_finds_the_job_running_is_skipped_and_reported() {
        let s = Schedule::parse("*/2 * * * * *").unwrap();
        let p = policy(&s, "UTC", CatchUp::Once, 1);
        let now = utc("2026-11-24T10:00:02.3Z");
        let tick = decide(&p, utc("2026-11-24T10:00:00Z"), now, || true);
        assert_eq!(tick.fire, None);
        assert_eq!(tick.skipped, Some(utc("2026-11-24T10:00:02Z")));
        assert!(tick.missed.is_empty());
        // Overlap during a catch-up: the slot is skipped, not also counted as missed.
        let tick = decide(
            &p,
            utc("2026-11-24T09:00:00Z"),
            utc("2026-11-24T09:30:01Z"),
            || true,
        );
        assert_eq!(tick.skipped, Some(utc("2026-11-24T09:30:00Z")));
        assert!(!tick.missed.contains(&utc("2026-11-24T09:30:00Z")));
    }

    #[test]
    fn clock_jump_forward_catches_up_newest_and_lists_the_rest() {
        // A VM suspended from 10:00:30 to 13:05 with an hourly job.
        let s = Schedule::parse("0 * * * *").unwrap();
        let p = policy(&s, "UTC", CatchUp::Once, 2);
        let tick = decide(
            &p,
            utc("2026-11-24T10:00:00Z"),
            utc("2026-11-24T13:05:00Z"),
            || false,
        );
        assert_eq!(
            tick.fire,
            Some((utc("2026-11-24T13:00:00Z"), SlotTrigger::CatchUp))
        );
        assert_eq!(
            tick.missed,
            [
                utc("2026-11-24T11:00:00Z"),
                utc("2026-11-24T12:00:00Z"),
                utc("2026-11-24T13:00:00Z")
            ]
        );
        // Woken just after a slot (within ON_TIME): a normal scheduled run; older ones missed.
        let tick = decide(
            &p,
            utc("2026-11-24T10:00:00Z"),
            utc("2026-11-24T13:00:20Z"),
            || false,
        );
        assert_eq!(
            tick.fire,
            Some((utc("2026-11-24T13:00:00Z"), SlotTrigger::Schedule))
        );
        assert_eq!(tick.missed.len(), 2);
    }

    #[test]
    fn clock_jump_backward_never_fires_a_slot_twice() {
        let s = Schedule::parse("0 * * * *").unwrap();
        let p = policy(&s, "UTC", CatchUp::Once, 2);
        let cursor = utc("2026-11-24T13:00:00Z");
        // The clock steps back an hour and a half: nothing is due until 14:00 again.
        let fired = simulate(
            &p,
            cursor,
            utc("2026-11-24T11:30:00Z"),
            utc("2026-11-24T14:30:00Z"),
        );
        assert_eq!(
            fired,
            [(utc("2026-11-24T14:00:00Z"), SlotTrigger::Schedule)]
        );
    }

    #[test]
    fn loop_wakes_at_least_every_30s_and_for_the_watchdog() {
        let now = utc("2026-11-24T10:00:00Z");
        assert_eq!(
            next_wake([utc("2026-11-25T10:00:00Z")], now, None),
            MAX_SLEEP
        );
        assert_eq!(
            next_wake([utc("2026-11-24T10:00:05Z")], now, None),
            Duration::from_secs(5)
        );
        assert_eq!(
            next_wake([], now, Some(Duration::from_secs(20))),
            Duration::from_secs(10)
        );
        assert_eq!(
            next_wake([utc("2026-11-24T09:00:00Z")], now, None),
            Duration::ZERO
        );
    }

    #[test]
    fn new_york_dst_days_fire_once_per_wall_clock_time() {
        let s = Schedule::parse("30 1 * * *").unwrap();
        let p = policy(&s, "America/New_York", CatchUp::Once, 12);
        // Fall back (01:30 happens twice on 2026-11-01): one run.
        let start = utc("2026-10-31T12:00:00Z");
        let fired = simulate(
            &p,
            start_cursor(None, start),
            start,
            utc("2026-11-02T12:00:00Z"),
        );
        let local: Vec<String> = fired
            .iter()
            .map(|(t, _)| t.with_timezone(&p.tz).to_rfc3339())
            .collect();
        assert_eq!(
            local,
            ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
        );
        // Spring forward (02:30 does not exist on 2027-03-14): fires once, at 03:00.
        let s = Schedule::parse("30 2 * * *").unwrap();
        let p = policy(&s, "America/New_York", CatchUp::Once, 12);
        let start = utc("2027-03-13T12:00:00Z");
        let fired = simulate(
            &p,
            start_cursor(None, start),
            start,
            utc("2027-03-15T12:00:00Z"),
        );
        let local: Vec<String> = fired
            .iter()
            .map(|(t, _)| t.with_timezone(&p.tz).to_rfc3339())
            .collect();
        assert_eq!(
            local,
            ["2027-03-14T03:00:00-04:00", "2027-03-15T02:30:00-04:00"]
        );
        assert!(fired.iter().all(|(_, t)| *t == SlotTrigger::Schedule));
    }

    #[test]
    fn restart_after_downtime_then_keeps_schedule() {
        let s = Schedule::parse("*/2 * * * * *").unwrap();
        let p = policy(&s, "UTC", CatchUp::Once, 1);
        // Down from 10:00:00 to 10:05:00.5: the newest slot is on time and runs as scheduled,
        // the 149 before it are listed as missed (at most MAX_MISSED of them).
        let now = utc("2026-11-24T10:05:00.5Z");
        let tick = decide(&p, utc("2026-11-24T10:00:00Z"), now, || false);
        assert_eq!(
            tick.fire,
            Some((utc("2026-11-24T10:05:00Z"), SlotTrigger::Schedule))
        );
        assert_eq!(tick.missed.len(), MAX_MISSED);
        let fired = simulate(
            &p,
            utc("2026-11-24T10:05:00Z"),
            now,
            utc("2026-11-24T10:05:10.5Z"),
        );
        assert_eq!(fired.len(), 5);
    }

    #[test]
    fn after_downtime_the_newest_slot_catches_up_only_within_window_and_policy() {
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
        let p = policy(&s, "Asia/Kolkata", CatchUp::Once, 12);
        let tick = decide(&p, start_cursor(Some(last), now), now, || false);
        assert_eq!(tick.missed.len(), 3);
        let slot24 = tz
            .with_ymd_and_hms(2026, 11, 24, 10, 0, 0)
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(tick.fire, Some((slot24, SlotTrigger::CatchUp)));
        assert_eq!(
            p.next_slot(slot24, now),
            Some(
                tz.with_ymd_and_hms(2026, 11, 25, 10, 0, 0)
                    .unwrap()
                    .with_timezone(&Utc)
            )
        );
        // Too old for a 1 h window: nothing runs, the slots are still listed.
        let tick = decide(
            &policy(&s, "Asia/Kolkata", CatchUp::Once, 1),
            last,
            now,
            || false,
        );
        assert_eq!((tick.missed.len(), tick.fire), (3, None));
        let tick = decide(
            &policy(&s, "Asia/Kolkata", CatchUp::Skip, 12),
            last,
            now,
            || false,
        );
        assert_eq!((tick.missed.len(), tick.fire), (3, None));
    }

    #[test]
    fn a_handled_slot_is_not_due_again_and_the_next_is_tomorrow() {
        let s = Schedule::parse("0 10 * * *").unwrap();
        let p = policy(&s, "UTC", CatchUp::Once, 1);
        let slot = utc("2026-11-24T10:00:00Z");
        let later = slot + chrono::TimeDelta::seconds(5);
        assert_eq!(decide(&p, slot, later, || false), Tick::default());
        assert_eq!(p.next_slot(slot, later), Some(utc("2026-11-25T10:00:00Z")));
    }

    #[test]
    fn a_dead_nodes_slot_is_taken_over_only_within_the_catch_up_window() {
        let s = Schedule::parse("0 10 * * *").unwrap();
        let slot = utc("2026-11-24T10:00:00Z");
        let now = utc("2026-11-24T11:30:00Z");
        assert!(policy(&s, "UTC", CatchUp::Once, 2).may_catch_up(slot, now));
        assert!(!policy(&s, "UTC", CatchUp::Once, 1).may_catch_up(slot, now));
        assert!(!policy(&s, "UTC", CatchUp::Skip, 2).may_catch_up(slot, now));
    }
}
