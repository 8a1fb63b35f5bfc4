//! Retrying undelivered notifications: exponential backoff with jitter, until delivered or
//! older than `outbox_max_age` (then dropped, loudly).
//!
//! The outbox row of a (run, channel) is the idempotency record. Before anything is sent, the
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

use super::NotifierConfig;
use crate::config::Config;
use crate::store::Store;

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

/// When to try again after `attempts` failed attempts.
pub fn next_attempt(attempts: u32) -> DateTime<Utc> {
    Utc::now()
        + chrono::Duration::from_std(retry_delay(attempts)).unwrap_or(chrono::Duration::hours(1))
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
pub async fn flush(config: &Config, store: &Store, due_only: bool) -> anyhow::Result<FlushResult> {
    let mut result = FlushResult::default();
    let busy = flush_pass(config, store, due_only, None, &mut result).await?;
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
        let busy = flush_pass(config, store, false, Some(&orphans), &mut result).await?;
        result.busy += busy.len();
    }
    Ok(result)
}

/// One pass over the outbox (or over the rows in `only`); returns the rows another live
/// process is delivering.
async fn flush_pass(
    config: &Config,
    store: &Store,
    due_only: bool,
    only: Option<&[(String, String)]>,
    result: &mut FlushResult,
) -> anyhow::Result<Vec<(String, String)>> {
    let now = Utc::now();
    let mut busy = Vec::new();
    for entry in store.outbox(None)? {
        if let Some(only) = only
            && !only
                .iter()
                .any(|(r, c)| *r == entry.run_id && *c == entry.channel)
        {
            continue;
        }
        let in_flight = match entry.state.as_str() {
            "pending" => false,
            "sending" => true,
            _ => continue,
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
                    tracing::warn!(run_id = %entry.run_id, channel = %entry.channel, "taking over a delivery claimed by {}, which is gone", h.describe());
                    dead_claim = entry.next_attempt_at.clone();
                }
                _ => {
                    busy.push((entry.run_id.clone(), entry.channel.clone()));
                    continue;
                }
            }
        }
        let notifier = config.notifiers.get(&entry.channel);
        let mut max_age = config.runbook.outbox_max_age.0;
        if matches!(notifier, Some(NotifierConfig::Heartbeat(_))) {
            max_age = max_age.min(HEARTBEAT_MAX_AGE);
        }
        let created = entry.created_at.as_str();
        let age = parse_time(created)
            .map(|c| (now - c).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::ZERO);
        if age > max_age {
            if store.outbox_mark_dropped(&entry.run_id, &entry.channel)? {
                tracing::error!(
                    run_id = %entry.run_id,
                    channel = %entry.channel,
                    job = entry.job.as_deref().unwrap_or("?"),
                    attempts = entry.attempts,
                    last_error = entry.last_error.as_deref().unwrap_or(""),
                    "NOTIFICATION DROPPED: undelivered for {} (longer than {}); this report was not delivered to {}",
                    crate::base::units::Dur(age),
                    crate::base::units::Dur(max_age),
                    entry.channel
                );
                record_in_report(
                    store,
                    &entry.run_id,
                    &entry.channel,
                    "failed",
                    Some(format!(
                        "dropped after {} undelivered",
                        crate::base::units::Dur(max_age)
                    )),
                );
                result.dropped += 1;
            }
            continue;
        }
        if due_only
            && !in_flight
            && dead_claim.is_none()
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
            Some(token) => {
                store.outbox_take_over(&entry.run_id, &entry.channel, CLAIM_LEASE, token)?
            }
            None => store.outbox_claim(&entry.run_id, &entry.channel, CLAIM_LEASE)?,
        };
        let Some(claim) = claimed else {
            // Another process claimed it between our listing and now.
            busy.push((entry.run_id.clone(), entry.channel.clone()));
            continue;
        };
        let attempts = entry.attempts.max(0) as u32 + 1;
        let Some(notifier) = notifier else {
            let msg = "channel is no longer in the configuration";
            store.outbox_mark_failed(
                &entry.run_id,
                &entry.channel,
                &claim,
                msg,
                &next_attempt(attempts),
            )?;
            result.failed += 1;
            continue;
        };
        let report = match store.report(&entry.run_id) {
            Ok(Some(mut r)) => {
                // A retry shows the same charts as the first attempt would have.
                if let Err(e) = store.fill_history(&mut r) {
                    tracing::warn!("cannot read earlier values for the charts: {e:#}");
                }
                r
            }
            Ok(None) | Err(_) => {
                store.outbox_mark_failed(
                    &entry.run_id,
                    &entry.channel,
                    &claim,
                    "the run's report is missing from the state store",
                    &next_attempt(attempts),
                )?;
                result.failed += 1;
                continue;
            }
        };
        match notifier.deliver(&report).await {
            Ok(()) => {
                if store.outbox_mark_sent(&entry.run_id, &entry.channel, &claim)? {
                    tracing::info!(run_id = %entry.run_id, channel = %entry.channel, attempts, "queued notification delivered");
                    record_in_report(store, &entry.run_id, &entry.channel, "sent", None);
                }
                result.delivered += 1;
            }
            Err(e) => {
                let next = next_attempt(attempts);
                tracing::warn!(run_id = %entry.run_id, channel = %entry.channel, attempts, next_attempt = %next.to_rfc3339(), "delivery failed again: {e}");
                store.outbox_mark_failed(&entry.run_id, &entry.channel, &claim, &e, &next)?;
                result.failed += 1;
            }
        }
    }
    Ok(busy)
}

/// Waits (at most one delivery timeout) for rows claimed by another process to leave
/// `sending`, then counts them as delivered elsewhere, failed, or still busy. Returns the rows
/// whose claimer died while we waited (to be delivered by us).
async fn wait_for_others(
    store: &Store,
    mut busy: Vec<(String, String)>,
    result: &mut FlushResult,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut orphans = Vec::new();
    let deadline = tokio::time::Instant::now() + super::DELIVERY_TIMEOUT + Duration::from_secs(5);
    while !busy.is_empty() {
        let rows = store.outbox(None)?;
        let mut still = Vec::new();
        for (run_id, channel) in busy {
            match rows
                .iter()
                .find(|e| e.run_id == run_id && e.channel == channel)
            {
                None => result.delivered_elsewhere += 1,
                Some(e)
                    if e.state == "sending"
                        && e.claimed_by.as_ref().is_some_and(|h| !h.alive(None)) =>
                {
                    orphans.push((run_id, channel))
                }
                Some(e) if e.state == "sending" => still.push((run_id, channel)),
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

/// Updates the stored report's `notifications` line of a channel. Best effort: the outbox row
/// is the record that matters.
fn record_in_report(
    store: &Store,
    run_id: &str,
    channel: &str,
    status: &str,
    error: Option<String>,
) {
    let Ok(Some(mut report)) = store.report(run_id) else {
        return;
    };
    let mut found = false;
    for n in report
        .notifications
        .iter_mut()
        .filter(|n| n.channel == channel)
    {
        n.status = status.into();
        n.error = error.clone();
        found = true;
    }
    if !found {
        report.notifications.push(super::NotificationStatus {
            channel: channel.into(),
            status: status.into(),
            error,
        });
    }
    if let Err(e) = store.update_report(&report) {
        tracing::warn!(
            run_id,
            "cannot update the stored report's notifications: {e:#}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
