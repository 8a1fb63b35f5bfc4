//! Retrying undelivered notifications: exponential backoff with jitter, until delivered or
//! older than `outbox_max_age` (then dropped, loudly).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::store::Store;

/// When to try again after `attempts` failed attempts: 30 s, 1 min, 2 min, ... capped at 1 h,
/// with ±20% jitter so a fleet does not retry in lockstep.
pub fn next_attempt(attempts: u32) -> DateTime<Utc> {
    let base = 30u64
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(10))
        .min(3600);
    let jitter =
        (std::process::id() as u64 ^ Utc::now().timestamp_subsec_nanos() as u64) % (base / 5 + 1);
    Utc::now() + chrono::Duration::seconds((base - base / 10 + jitter) as i64)
}

/// What a flush did.
#[derive(Debug, Default, serde::Serialize)]
pub struct FlushResult {
    pub delivered: usize,
    pub failed: usize,
    pub dropped: usize,
}

/// Retries pending deliveries (`due_only`: only those whose next attempt time has come).
pub async fn flush(config: &Config, store: &Store, due_only: bool) -> anyhow::Result<FlushResult> {
    let mut result = FlushResult::default();
    let max_age = config.runbook.outbox_max_age.0;
    for entry in store.outbox(Some("pending"))? {
        let created = DateTime::parse_from_rfc3339(&entry.created_at)
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_else(|_| Utc::now());
        if (Utc::now() - created).to_std().unwrap_or(Duration::ZERO) > max_age {
            tracing::error!(run_id = %entry.run_id, channel = %entry.channel, "notification dropped: undelivered for longer than outbox_max_age ({})", config.runbook.outbox_max_age);
            store.outbox_mark_dropped(&entry.run_id, &entry.channel)?;
            result.dropped += 1;
            continue;
        }
        if due_only {
            if let Some(next) = entry
                .next_attempt_at
                .as_deref()
                .and_then(|n| DateTime::parse_from_rfc3339(n).ok())
            {
                if next.with_timezone(&Utc) > Utc::now() {
                    continue;
                }
            }
        }
        let Some(notifier) = config.notifiers.get(&entry.channel) else {
            store.outbox_mark_failed(
                &entry.run_id,
                &entry.channel,
                "channel no longer in the configuration",
                &next_attempt(entry.attempts as u32 + 1),
            )?;
            result.failed += 1;
            continue;
        };
        let Some(mut report) = store.report(&entry.run_id)? else {
            continue;
        };
        match notifier.deliver(&report).await {
            Ok(()) => {
                if store.outbox_mark_sent(&entry.run_id, &entry.channel)? {
                    result.delivered += 1;
                    for n in report
                        .notifications
                        .iter_mut()
                        .filter(|n| n.channel == entry.channel)
                    {
                        n.status = "sent".into();
                        n.error = None;
                    }
                    store.update_report(&report)?;
                }
            }
            Err(e) => {
                tracing::warn!(run_id = %entry.run_id, channel = %entry.channel, "delivery failed again: {e}");
                store.outbox_mark_failed(
                    &entry.run_id,
                    &entry.channel,
                    &e,
                    &next_attempt(entry.attempts as u32 + 1),
                )?;
                result.failed += 1;
            }
        }
    }
    Ok(result)
}
