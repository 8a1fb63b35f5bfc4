//! `escalate` (SPEC 9.1): when a job's latest run has a failing item that nobody acknowledged
//! (SPEC 9.2) within a step's `after` (counted from the end of the run), the run's report goes
//! to that step's notifiers, once per run and step.
//!
//! Everything lives in the store, nothing in memory: a step taken is a row of `escalations`,
//! written in one transaction with the outbox entries that deliver it (event key
//! `escalate-<step>`), so a step is taken exactly once whatever restarts in between, and its
//! delivery is retried like any other ([`crate::notify::outbox`]). Acks are read from the store
//! at the deadline, so an ack given by `runbook ack` in another process counts.
//!
//! The task costs an idle daemon nothing: it computes the next deadline from the store and
//! sleeps until then. It also wakes when the daemon finishes a run, when the configuration is
//! reloaded, and every [`RESCAN`] (for runs finished by a manual `run-job` in another process,
//! which the daemon is not told about).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::store::Store;

/// The longest the task sleeps without a deadline: how late a run finished by another process
/// is noticed at worst.
pub const RESCAN: Duration = Duration::from_secs(300);

/// A step taken by [`pass`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub job: String,
    pub run_id: String,
    /// The step's index, from 0.
    pub step: usize,
    pub notify: Vec<String>,
}

/// One pass at `now`: takes every step that is due (recording it and queuing its deliveries),
/// and returns them with the next deadline still ahead, if any.
pub fn pass(
    config: &Config,
    store: &Store,
    now: DateTime<Utc>,
) -> anyhow::Result<(Vec<Taken>, Option<DateTime<Utc>>)> {
    let jobs: Vec<String> = config
        .jobs
        .values()
        .filter(|j| !j.config.escalate.is_empty())
        .map(|j| j.name.clone())
        .collect();
    let mut taken = Vec::new();
    let mut next: Option<DateTime<Utc>> = None;
    for report in store.latest_failed_reports(&jobs)? {
        if !report.has_unacked_failure() {
            continue;
        }
        let Some(job) = config.jobs.get(&report.job) else {
            continue;
        };
        let done = store.escalations_taken(&report.run_id)?;
        let finished = report.finished_at.with_timezone(&Utc);
        for (i, step) in job.config.escalate.iter().enumerate() {
            if done.contains(&i) {
                continue;
            }
            let due = finished
                + chrono::Duration::from_std(step.after.get()).unwrap_or(chrono::Duration::MAX);
            if due > now {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            let entries: Vec<(crate::store::OutboxKey, Option<String>)> = step
                .notify
                .iter()
                .flat_map(|ch| crate::notify::plan_escalation(&config.notifiers, ch, &report, i))
                .map(|p| (p.key, p.payload))
                .collect();
            if store.take_escalation(&job.name, &report.run_id, i, &step.notify, &entries)? {
                let unacked: Vec<&str> = report
                    .items
                    .iter()
                    .filter(|it| {
                        it.status == crate::items::Status::Fail && report.ack_of(&it.name).is_none()
                    })
                    .map(|it| it.name.as_str())
                    .collect();
                tracing::warn!(
                    job = %job.name,
                    run_id = %report.run_id,
                    step = i + 1,
                    notify = %step.notify.join(", "),
                    "ESCALATED: failing item(s) not acknowledged within {}: {}",
                    crate::base::units::Dur(step.after.get()),
                    unacked.join(", ")
                );
                taken.push(Taken {
                    job: job.name.clone(),
                    run_id: report.run_id.clone(),
                    step: i,
                    notify: step.notify.clone(),
                });
            }
        }
    }
    Ok((taken, next))
}

/// The daemon's escalation task (see the module's documentation). `wake` is notified when the
/// daemon finishes a run. It logs how many jobs it watches at its first pass and at the first
/// pass after each reload (after delivering what that pass escalated).
pub async fn run(
    mut config: watch::Receiver<Arc<Config>>,
    store: Store,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    // Said at the first pass and at the first after each reload.
    let mut announce = true;
    loop {
        let current = config.borrow_and_update().clone();
        let now = Utc::now();
        let (cfg, st) = (current.clone(), store.clone());
        let result = tokio::task::spawn_blocking(move || pass(&cfg, &st, now)).await;
        let next = match result {
            Ok(Ok((taken, next))) => {
                if !taken.is_empty() {
                    // Deliver now rather than at the outbox's next round.
                    if let Err(e) = crate::notify::outbox::flush(
                        &current.notifiers,
                        &current.retry_policy(),
                        &store,
                        true,
                    )
                    .await
                    {
                        tracing::error!("escalation: delivering: {e:#}");
                    }
                }
                next
            }
            Ok(Err(e)) => {
                tracing::error!("escalation: cannot read the state store: {e:#}");
                None
            }
            Err(e) => {
                tracing::error!("escalation pass failed: {e}");
                None
            }
        };
        if std::mem::take(&mut announce) {
            let watched = current
                .jobs
                .values()
                .filter(|j| !j.config.escalate.is_empty())
                .count();
            tracing::info!(
                jobs = watched,
                next_deadline = %next.map(|n| n.to_rfc3339()).unwrap_or_else(|| "none".into()),
                "escalation: watching {watched} job(s)"
            );
        }
        let sleep = next
            .map(|n| (n - Utc::now()).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(RESCAN)
            .min(RESCAN);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = wake.notified() => {}
            changed = config.changed() => {
                if changed.is_err() {
                    return;
                }
                announce = true;
            }
            _ = stop.cancelled() => return,
        }
    }
}
