//! Retrying undelivered notifications: exponential backoff with jitter, until delivered or
//! older than the [`RetryPolicy`]'s `max_age` (`outbox_max_age`; then dropped, loudly). Every
//! retry goes through [`super::deliver`], as the first attempt does.
//!
//! The outbox entry of a (run, channel, event) is the idempotency record. Before anything is sent, the
//! sender *claims* the row: one `UPDATE ... WHERE state = 'pending'` turns it into `sending`
//! with a lease (see [`crate::store::Store::outbox_claim`]). SQLite serialises writers, so of two
//! processes flushing at once (the daemon and a manual `outbox --flush`) exactly one wins the
//! claim and the other skips the row. The winner marks the row `sent` or, after a failure,
//! `pending` again with the time of the next attempt. A sender that dies mid-delivery leaves a
//! `sending` row; the claim records who holds it (a [`crate::store::Holder`]: boot id, pid,
//! process start time), so the next flush sees the claimer is gone and takes the row over at
//! once. Rows whose claimer is not recorded (written by an older version) wait for the lease,
//! [`CLAIM_LEASE`], to expire. A takeover is the one case where a message may arrive twice (the server accepted it, the process died before
//! recording it): we prefer that to losing a report.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};

use super::{Notifiers, Sender};
use crate::store::{OutboxEntry, OutboxKey, OutboxState, Store};

/// How long a claimed row stays reserved for its sender: longer than any delivery may take
/// (each is capped at [`super::DELIVERY_TIMEOUT`]).
pub const CLAIM_LEASE: Duration = Duration::from_secs(300);

/// How long a heartbeat ping is worth retrying. A ping says "a run happened *now*"; a success
/// or failure ping replayed hours later would tell the monitor something false about the present.
pub const HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(3600);

/// The retry policy: the first retry after about 30 s, doubling up to one hour, with jitter (a
/// random extra of up to the delay itself) so a fleet that lost its mail relay at the same
/// moment does not retry in lockstep. Built with `backon`'s exponential policy.
fn policy() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(30))
        .with_max_delay(Duration::from_secs(3600))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// The delay before the next attempt, after `attempts` failed attempts (1 = the first failed).
pub fn retry_delay(attempts: u32) -> Duration {
    policy()
        .nth(attempts.saturating_sub(1).min(20) as usize)
        .unwrap_or(Duration::from_secs(3600))
}

/// How long undelivered entries are retried, passed in by whoever assembles the notifiers
/// (the configuration's `outbox_max_age`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Entries older than this are dropped (heartbeats after at most [`HEARTBEAT_MAX_AGE`]).
    pub max_age: Duration,
}

impl RetryPolicy {
    /// When to try again after `attempts` failed attempts.
    pub fn next_attempt(&self, attempts: u32) -> DateTime<Utc> {
        Utc::now()
            + chrono::Duration::from_std(retry_delay(attempts))
                .unwrap_or(chrono::Duration::hours(1))
    }

    /// How long an entry of this channel is worth retrying.
    fn max_age_for(&self, notifier: Option<&super::Notifier>) -> Duration {
        match notifier.map(|n| &n.sender) {
            Some(Sender::Heartbeat(_)) => self.max_age.min(HEARTBEAT_MAX_AGE),
            _ => self.max_age,
        }
    }
}

/// What a flush did.
#[derive(Debug, Default, serde::Serialize)]
pub struct FlushResult {
    /// Delivered now.
    pub delivered: usize,
    /// Tried and failed again (still queued).
    pub failed: usize,
    /// Given up: older than `outbox_max_age` (logged as errors).
    pub dropped: usize,
    /// Not tried: another process was delivering them and had not finished when we stopped
    /// waiting for it.
    pub busy: usize,
    /// Delivered by another process that had claimed them while we flushed.
    pub delivered_elsewhere: usize,
    /// Not tried: their next attempt is not due yet (`due_only`).
    pub not_due: usize,
}

impl FlushResult {
    /// True when something is still undelivered after this flush.
    pub fn left_undelivered(&self) -> bool {
        self.failed + self.dropped + self.busy + self.not_due > 0
    }
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

/// Retries undelivered notifications. With `due_only` (the daemon's periodic call) only those
/// whose next attempt time has come; without (`outbox --flush`) all of them, now.
pub async fn flush(
    notifiers: &Notifiers,
    policy: &RetryPolicy,
    store: &Store,
    due_only: bool,
) -> anyhow::Result<FlushResult> {
    let mut result = FlushResult::default();
    let ctx = super::Deliverer::new(notifiers, store, policy);
    let busy = flush_pass(&ctx, due_only, None, &mut result).await?;
    if due_only {
        result.busy = busy.len();
        return Ok(result);
    }
    // An operator's flush should end with an answer: wait for the other sender to finish; if
    // it dies meanwhile, deliver its rows ourselves.
    if !busy.is_empty() {
        tracing::info!(
            "waiting for {} notification(s) being sent by another process",
            busy.len()
        );
    }
    let orphans = wait_for_others(store, busy, &mut result).await?;
    if !orphans.is_empty() {
        let busy = flush_pass(&ctx, false, Some(&orphans), &mut result).await?;
        result.busy += busy.len();
    }
    Ok(result)
}

/// One pass over the outbox (or over the entries in `only`); returns the entries another live
/// process is delivering.
async fn flush_pass(
    ctx: &super::Deliverer,
    due_only: bool,
    only: Option<&[OutboxKey]>,
    result: &mut FlushResult,
) -> anyhow::Result<Vec<OutboxKey>> {
    let (notifiers, policy, store) = (&*ctx.notifiers, &ctx.policy, &ctx.store);
    let now = Utc::now();
    let mut busy = Vec::new();
    for entry in store.outbox(None)? {
        let key = &entry.key;
        if only.is_some_and(|only| !only.contains(key)) {
            continue;
        }
        let in_flight = match entry.state {
            OutboxState::Pending => false,
            OutboxState::Sending => true,
            OutboxState::Sent | OutboxState::Dropped => continue,
        };
        let lease_active = in_flight
            && entry
                .next_attempt_at
                .as_deref()
                .and_then(parse_time)
                .is_some_and(|t| t > now);
        // The claim of a sender that died (kill -9, a crash, a reboot) is taken over now rather
        // than when its lease ends.
        let mut dead_claim = None;
        if lease_active {
            match &entry.claimed_by {
                Some(h) if !h.alive(None) => {
                    tracing::warn!(run_id = %key.run_id, channel = %key.channel, "taking over a delivery claimed by {}, which is gone", h.describe());
                    dead_claim = entry.held_claim();
                }
                _ => {
                    busy.push(key.clone());
                    continue;
                }
            }
        }
        let notifier = notifiers.get(&key.channel);
        let max_age = policy.max_age_for(notifier);
        let age = parse_time(&entry.created_at)
            .map(|c| (now - c).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::ZERO);
        if age > max_age {
            drop_entry(store, &entry, age, max_age, result)?;
            continue;
        }
        if due_only
            && !in_flight
            && entry
                .next_attempt_at
                .as_deref()
                .and_then(parse_time)
                .is_some_and(|t| t > now)
        {
            result.not_due += 1;
            continue;
        }
        let claimed = match &dead_claim {
            Some(dead) => store.outbox_take_over(key, CLAIM_LEASE, dead)?,
            None => store.outbox_claim(key, CLAIM_LEASE)?,
        };
        let Some(claim) = claimed else {
            // Another process claimed it between our listing and now.
            busy.push(key.clone());
            continue;
        };
        let attempts = entry.attempts.max(0) as u32 + 1;
        let report = match store.report(&key.run_id) {
            Ok(Some(mut r)) => {
                // A retry shows the same charts as the first attempt would have.
                if let Err(e) = store.fill_history(&mut r) {
                    tracing::warn!("cannot read earlier values for the charts: {e:#}");
                }
                r
            }
            Ok(None) | Err(_) => {
                store.outbox_mark_failed(
                    key,
                    &claim,
                    "the run's report is missing from the state store",
                    &policy.next_attempt(attempts),
                )?;
                result.failed += 1;
                continue;
            }
        };
        let attempt = super::Attempt {
            key: key.clone(),
            payload: entry.payload.clone(),
            claim: Some(claim),
            attempts,
            report: std::sync::Arc::new(report),
        };
        let line = ctx.deliver(&attempt).await;
        match line.status {
            crate::report::DeliveryStatus::Sent => result.delivered += 1,
            _ => result.failed += 1,
        }
    }
    Ok(busy)
}

/// Gives up on an entry older than `max_age`, loudly.
fn drop_entry(
    store: &Store,
    entry: &OutboxEntry,
    age: Duration,
    max_age: Duration,
    result: &mut FlushResult,
) -> anyhow::Result<()> {
    let key = &entry.key;
    let mut reason = format!(
        "dropped after {} undelivered",
        crate::base::units::Dur(max_age)
    );
    if let Some(e) = &entry.last_error {
        reason.push_str(&format!(" (last error: {e})"));
    }
    if store.outbox_mark_dropped(key, &reason)? {
        tracing::error!(
            run_id = %key.run_id,
            channel = %key.channel,
            job = entry.job.as_deref().unwrap_or("?"),
            attempts = entry.attempts,
            last_error = entry.last_error.as_deref().unwrap_or(""),
            "NOTIFICATION DROPPED: undelivered for {} (longer than {}); this report was not delivered to {}",
            crate::base::units::Dur(age),
            crate::base::units::Dur(max_age),
            key.channel
        );
        result.dropped += 1;
    }
    Ok(())
}

/// Waits (at most one delivery timeout) for entries claimed by another process to leave
/// `sending`, then counts them as delivered elsewhere, failed, or still busy. Returns the
/// entries whose claimer died while we waited (to be delivered by us).
async fn wait_for_others(
    store: &Store,
    mut busy: Vec<OutboxKey>,
    result: &mut FlushResult,
) -> anyhow::Result<Vec<OutboxKey>> {
    let mut orphans = Vec::new();
    let deadline = tokio::time::Instant::now() + super::DELIVERY_TIMEOUT + Duration::from_secs(5);
    while !busy.is_empty() {
        let rows = store.outbox(None)?;
        let mut still = Vec::new();
        for key in busy {
            match rows.iter().find(|e| e.key == key) {
                None => result.delivered_elsewhere += 1,
                Some(e)
                    if e.state == OutboxState::Sending
                        && e.claimed_by.as_ref().is_some_and(|h| !h.alive(None)) =>
                {
                    orphans.push(key)
                }
                Some(e) if e.state == OutboxState::Sending => still.push(key),
                Some(_) => result.failed += 1,
            }
        }
        busy = still;
        if busy.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    result.busy = busy.len();
    Ok(orphans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::{Notifier, On};
    use crate::report::DeliveryStatus;

    /// The outbox entries of a report planned for report channels.
    fn entries(report: &crate::report::Report) -> Vec<crate::notify::Planned> {
        crate::notify::outbox_keys(report)
            .into_iter()
            .map(|key| crate::notify::Planned { key, payload: None })
            .collect()
    }

    /// A store with one stored run of `report`, queued for channel `archive`: a `file`
    /// notifier into `dir`.
    fn stored_run(
        state: &std::path::Path,
        dir: &std::path::Path,
    ) -> (Store, Notifiers, crate::report::Report) {
        let store = Store::open(state, "test-host").unwrap();
        let mut report = crate::notify::test_report("test-host", "UTC");
        let started = report.started_at.with_timezone(&Utc);
        store
            .insert_run(&report.run_id, &report.job, "manual", None, &started, true)
            .unwrap();
        let notifiers: Notifiers = [(
            "archive".to_string(),
            Notifier {
                on: On::Always,
                sender: Sender::File(crate::notify::file::Folder {
                    dir: dir.to_path_buf(),
                }),
            },
        )]
        .into();
        report.notifications = crate::notify::plan(&notifiers, &["archive".into()], &report);
        store
            .finish_run(&report, &[], &crate::notify::outbox_keys(&report))
            .unwrap();
        (store, notifiers, report)
    }

    #[tokio::test]
    async fn an_entry_past_max_age_is_dropped_and_the_report_says_failed_with_the_last_error() {
        let tmp = tempfile::tempdir().unwrap();
        // The folder's parent is a file: every delivery fails, even as root.
        std::fs::write(tmp.path().join("blocked"), "x").unwrap();
        let (store, notifiers, report) =
            stored_run(&tmp.path().join("state"), &tmp.path().join("blocked/out"));
        let keep = RetryPolicy {
            max_age: Duration::from_secs(3600),
        };
        let lines =
            crate::notify::deliver_run(&notifiers, &store, &keep, &report, &entries(&report), true)
                .await;
        assert_eq!(lines[0].status, DeliveryStatus::Queued, "{lines:?}");

        let r = flush(&notifiers, &keep, &store, false).await.unwrap();
        assert_eq!((r.failed, r.dropped), (1, 0), "{r:?}");
        let shown = store.report(&report.run_id).unwrap().unwrap();
        assert_eq!(shown.notifications[0].status, DeliveryStatus::Queued);

        let none = RetryPolicy {
            max_age: Duration::ZERO,
        };
        let r = flush(&notifiers, &none, &store, false).await.unwrap();
        assert_eq!((r.failed, r.dropped), (0, 1), "{r:?}");
        let shown = store.report(&report.run_id).unwrap().unwrap();
        let line = &shown.notifications[0];
        assert_eq!(line.status, DeliveryStatus::Failed, "{line:?}");
        let error = line.error.as_deref().unwrap();
        assert!(
            error.starts_with("dropped after") && error.contains("cannot create"),
            "{error}"
        );
        assert_eq!(store.outbox(None).unwrap()[0].state, OutboxState::Dropped);
        // Nothing is retried any more, even once the channel works again.
        std::fs::remove_file(tmp.path().join("blocked")).unwrap();
        let r = flush(&notifiers, &keep, &store, false).await.unwrap();
        assert_eq!((r.delivered, r.failed), (0, 0), "{r:?}");
    }

    #[tokio::test]
    async fn the_first_attempt_of_a_report_the_store_has_is_claimed_and_delivered_once() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let (store, notifiers, report) = stored_run(&tmp.path().join("state"), &out);
        let policy = RetryPolicy {
            max_age: Duration::from_secs(3600),
        };
        let lines = crate::notify::deliver_run(
            &notifiers,
            &store,
            &policy,
            &report,
            &entries(&report),
            true,
        )
        .await;
        assert_eq!(lines[0].status, DeliveryStatus::Sent, "{lines:?}");
        assert_eq!(
            std::fs::read_dir(&out).unwrap().count(),
            4,
            "txt, html, json, eml"
        );
        // A second attempt finds the entry sent: nothing is delivered twice.
        std::fs::remove_dir_all(&out).unwrap();
        let again = crate::notify::deliver_run(
            &notifiers,
            &store,
            &policy,
            &report,
            &entries(&report),
            true,
        )
        .await;
        assert_eq!(again[0].status, DeliveryStatus::Sent, "{again:?}");
        assert!(!out.exists(), "delivered twice");
        let r = flush(&notifiers, &policy, &store, false).await.unwrap();
        assert_eq!(r.delivered, 0, "{r:?}");
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let first = retry_delay(1);
        assert!(
            first >= Duration::from_secs(30) && first <= Duration::from_secs(60),
            "{first:?}"
        );
        let third = retry_delay(3);
        assert!(
            third >= Duration::from_secs(120) && third <= Duration::from_secs(240),
            "{third:?}"
        );
        let late = retry_delay(50);
        assert!(
            late >= Duration::from_secs(3600) && late <= Duration::from_secs(7200),
            "{late:?}"
        );
    }
}
