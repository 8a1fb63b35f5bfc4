//! The daemon: fires jobs at their slots, catches up after downtime, reloads on SIGHUP, stops
//! gracefully on SIGTERM/SIGINT, talks to systemd, serves metrics and (with `[cluster]`) shares
//! the work with other daemons.
//!
//! The loop is split in two so it can be tested without waiting:
//! - [`decide`] is a pure function of (schedule, zone, catch-up policy, the newest slot already
//!   handled, now): which slots were missed, which slot fires now and with which trigger. It is
//!   the same function at start (catch-up after downtime) and on every wake-up (a suspended VM
//!   or a clock step forward is just "several slots are due at once"; a clock step backward
//!   makes nothing due, so no slot ever fires twice).
//! - [`run`] owns the side effects: it sleeps until the next slot (waking at least every 30 s to
//!   re-read the wall clock, and often enough to ping the systemd watchdog), records every slot
//!   in the store before running it, spawns one task per run, and handles signals.
//!
//! Invariants:
//! - Every slot the loop passes is recorded (`running` → `done`, `skipped`, `missed`,
//!   `elsewhere`) before anything runs, so a crash never loses track of what happened.
//! - One job never runs twice at once: a due slot that finds the job running (our own task, a
//!   manual `run-job` holding the lock, or another node's live claim) is recorded `skipped`
//!   and listed in the job's next report (`missed`).
//! - Nothing here blocks the loop on the network: cluster claims and runs happen in the run's
//!   own task.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::daemon::cluster::{Claim, Cluster};
use crate::config::{CatchUp, Config, OnClusterDown};
use crate::items::Trigger;
use crate::runner::{RunError, RunOptions};
use crate::base::schedule::Schedule;
use crate::daemon::server::Metrics;
use crate::store::Store;

/// The loop re-reads the wall clock at least this often (suspend, clock steps, reloads).
pub const MAX_SLEEP: Duration = Duration::from_secs(30);

/// A due slot no older than this fires with trigger `schedule`; an older one (the loop woke
/// late: suspend, clock step, daemon start) is treated as missed and goes through the job's
/// catch-up policy.
pub const ON_TIME: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// How many missed slots are listed at most (the newest ones).
pub const MAX_MISSED: usize = 100;

/// How often undelivered notifications are retried in the background.
const OUTBOX_INTERVAL: Duration = Duration::from_secs(30);

/// After `shutdown_grace` the runs are cancelled; this is how long we then wait for them to
/// record their interrupted items (the runner gives an item 7 s to clean up).
const CANCEL_WAIT: Duration = Duration::from_secs(20);

/// What [`decide`] says about one job at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tick {
    /// Slots that passed without running (to record as `missed` and list in the next report),
    /// oldest first. Includes the catch-up slot itself when one runs late.
    pub missed: Vec<DateTime<Utc>>,
    /// The slot to run now and how.
    pub fire: Option<(DateTime<Utc>, Trigger)>,
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

/// Decides what happens to one job at `now`, given the newest slot already handled.
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
        Some(Trigger::Schedule)
    } else {
        tick.missed.push(newest);
        let within = lateness
            .to_std()
            .map(|l| l <= policy.catch_up_within)
            .unwrap_or(true);
        (policy.catch_up == CatchUp::Once && within).then_some(Trigger::CatchUp)
    };
    if let Some(trigger) = trigger {
        if is_running() {
            if trigger == Trigger::CatchUp {
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

/// The next instant the loop must be awake for: the earliest next slot of any job, capped by
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

/// Per job bookkeeping of the loop.
struct JobState {
    /// The newest slot handled; slots at or before it never fire again.
    handled_until: DateTime<Utc>,
    /// The task of the job's current (or last) run.
    task: Option<JoinHandle<()>>,
}

impl JobState {
    fn running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }
}

/// Everything a run task needs, cheap to clone.
#[derive(Clone)]
struct Shared {
    store: Store,
    metrics: Arc<Metrics>,
    cluster: Option<Arc<Cluster>>,
    /// Slots skipped or missed per job, not yet listed in a report.
    unreported: Arc<Mutex<BTreeMap<String, Vec<DateTime<Utc>>>>>,
    /// Fired on shutdown after the grace period: runs stop and record interrupted items.
    cancel: CancellationToken,
    /// Told when a run finished (its failures may need escalating).
    escalation: Arc<tokio::sync::Notify>,
}

impl Shared {
    fn remember(&self, job: &str, slots: &[DateTime<Utc>]) {
        if slots.is_empty() {
            return;
        }
        if let Ok(mut u) = self.unreported.lock() {
            let list = u.entry(job.to_string()).or_default();
            list.extend_from_slice(slots);
            list.sort();
            list.dedup();
            let excess = list.len().saturating_sub(MAX_MISSED);
            list.drain(..excess);
        }
    }

    fn take_unreported(&self, job: &str) -> Vec<DateTime<Utc>> {
        self.unreported
            .lock()
            .map(|mut u| u.remove(job).unwrap_or_default())
            .unwrap_or_default()
    }

    fn record(&self, job: &str, slot: &DateTime<Utc>, state: &str, run_id: Option<&str>) {
        if let Err(e) = self.store.record_slot(job, slot, state, run_id) {
            tracing::error!(job, slot = %slot, "cannot record the slot in the state store: {e:#}");
        }
    }
}

/// A run to start (from the loop or from a cluster takeover).
struct Fire {
    job: String,
    slot: DateTime<Utc>,
    trigger: Trigger,
    /// Missed slots the report lists (besides the ones remembered as unreported).
    missed: Vec<DateTime<Utc>>,
    /// True when the slot was claimed by another node whose lease expired.
    takeover: bool,
}

/// Runs the daemon in the foreground until SIGTERM/SIGINT. Exit code 0 after a clean stop.
pub async fn run(config: Config) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;

    let store = Store::open(&config.state_dir, &config.hostname)?;
    for run_id in store.mark_interrupted()? {
        tracing::warn!(
            run_id,
            "run left running by a process that is gone: marked interrupted"
        );
    }
    let metrics = Arc::new(Metrics::new());
    metrics.configure(&config, Utc::now());
    metrics.load_history(&config, &store);
    let cluster = match &config.cluster {
        Some(c) => Some(Arc::new(
            Cluster::new(c, &config.hostname).map_err(|e| anyhow::anyhow!("[cluster]: {e}"))?,
        )),
        None => None,
    };
    let config = Arc::new(config);
    let (config_tx, config_rx) = watch::channel(config.clone());
    let stop = CancellationToken::new();

    let server = match &config.server {
        Some(s) => {
            let listener = tokio::net::TcpListener::bind(&s.listen)
                .await
                .map_err(|e| anyhow::anyhow!("[server] listen = {:?}: {e}", s.listen))?;
            tracing::info!(listen = %listener.local_addr()?, "serving /metrics, /healthz and the status page");
            let state = crate::daemon::server::AppState {
                metrics: metrics.clone(),
                store: store.clone(),
                config: config_rx.clone(),
            };
            Some(tokio::spawn(crate::daemon::server::serve(
                listener,
                state,
                stop.clone(),
            )))
        }
        None => None,
    };
    let outbox = tokio::spawn(drain_outbox(config_rx.clone(), store.clone(), stop.clone()));
    let housekeeping = tokio::spawn(crate::daemon::housekeeping::run(
        config_rx.clone(),
        store.clone(),
        stop.clone(),
    ));

    let escalation_wake = Arc::new(tokio::sync::Notify::new());
    let escalation = tokio::spawn(crate::daemon::escalation::run(
        config_rx.clone(),
        store.clone(),
        escalation_wake.clone(),
        stop.clone(),
    ));
    let shared = Shared {
        store: store.clone(),
        metrics: metrics.clone(),
        cluster: cluster.clone(),
        unreported: Default::default(),
        cancel: CancellationToken::new(),
        escalation: escalation_wake,
    };
    let (takeover_tx, mut takeover_rx) = mpsc::channel::<(String, DateTime<Utc>)>(16);
    let watcher = cluster.clone().map(|c| {
        tokio::spawn(watch_expired_claims(
            c,
            config_rx.clone(),
            store.clone(),
            takeover_tx.clone(),
            stop.clone(),
        ))
    });

    let mut jobs: HashMap<String, JobState> = HashMap::new();
    sync_jobs(&mut jobs, &config, &store, Utc::now());

    let mut watchdog_usec = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec)
        .then(|| Duration::from_micros(watchdog_usec));
    let _ = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("scheduling"),
        ],
    );
    tracing::info!(jobs = config.jobs.len(), config = %config.path.display(), state = %store.dir.display(), "daemon started");

    let mut config = config;
    loop {
        let now = Utc::now();
        // One pass over the jobs: record what is missed or skipped, start what is due.
        for (name, job) in &config.jobs {
            let (Some(schedule), Some(state)) = (&job.schedule, jobs.get_mut(name)) else {
                continue;
            };
            let policy = Policy {
                schedule,
                tz: job.tz,
                catch_up: job.config.catch_up,
                catch_up_within: job.config.catch_up_within.0,
            };
            let tick = decide(&policy, state.handled_until, now, || {
                state.running() || store.lock_holder(name).ok().flatten().is_some()
            });
            if let Some(h) = tick.handled_until {
                state.handled_until = h;
            }
            for slot in &tick.missed {
                shared.record(name, slot, "missed", None);
            }
            if !tick.missed.is_empty() && tick.fire.is_none() {
                tracing::warn!(job = %name, missed = tick.missed.len(), newest = %tick.missed[tick.missed.len() - 1], "slots missed (not caught up: catch_up policy)");
            }
            shared.remember(name, &tick.missed);
            if let Some(slot) = tick.skipped {
                tracing::warn!(job = %name, slot = %slot, "slot skipped: the job is still running");
                shared.record(name, &slot, "skipped", None);
                shared.remember(name, &[slot]);
            }
            if let Some((slot, trigger)) = tick.fire {
                let fire = Fire {
                    job: name.clone(),
                    slot,
                    trigger,
                    missed: vec![],
                    takeover: false,
                };
                state.task = Some(spawn_run(&config, &shared, fire));
            }
        }
        publish_next_runs(&config, &jobs, &metrics, now);
        if watchdog.is_some() {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        }

        let next_slots = config.jobs.iter().filter_map(|(name, job)| {
            let cursor = jobs.get(name)?.handled_until.max(now);
            job.schedule
                .as_ref()?
                .next_after(job.tz, cursor)
                .map(|t| t.with_timezone(&Utc))
        });
        // Sleep a millisecond past the slot so the wall clock has surely reached it.
        let sleep = next_wake(next_slots, Utc::now(), watchdog) + Duration::from_millis(1);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = sighup.recv() => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
                match Config::load(&config.path) {
                    Ok(new) => {
                        let new = Arc::new(new);
                        sync_jobs(&mut jobs, &new, &store, Utc::now());
                        metrics.configure(&new, Utc::now());
                        metrics.load_history(&new, &store);
                        tracing::info!(jobs = new.jobs.len(), "SIGHUP: configuration reloaded");
                        if new.server.as_ref().map(|s| &s.listen) != config.server.as_ref().map(|s| &s.listen) || new.cluster.is_some() != config.cluster.is_some() {
                            tracing::warn!("SIGHUP: changes to [server] and [cluster] take effect after a restart");
                        }
                        config = new;
                        let _ = config_tx.send(config.clone());
                    }
                    Err(e) => {
                        metrics.reload_failed();
                        tracing::error!("SIGHUP: the new configuration is invalid, keeping the old one:\n{e}");
                    }
                }
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
            }
            Some((job, slot)) = takeover_rx.recv() => {
                if let (Some(state), Some(j)) = (jobs.get_mut(&job), config.jobs.get(&job)) {
                    if state.running() {
                        continue;
                    }
                    let age = (Utc::now() - slot).to_std().unwrap_or_default();
                    if j.config.catch_up == CatchUp::Once && age <= j.config.catch_up_within.0 {
                        let fire = Fire { job: job.clone(), slot, trigger: Trigger::CatchUp, missed: vec![slot], takeover: true };
                        state.task = Some(spawn_run(&config, &shared, fire));
                    } else if let Some(c) = &cluster {
                        tracing::warn!(job, slot = %slot, "the node running this slot died; too old to take over (catch_up policy): recorded as missed");
                        c.abandon(&job, slot).await;
                        shared.record(&job, &slot, "missed", None);
                        shared.remember(&job, &[slot]);
                    }
                }
            }
        }
    }

    // Shutdown: stop firing, give the runs their grace, then cancel them.
    let _ = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status("stopping"),
        ],
    );
    let running: Vec<(String, JoinHandle<()>)> = jobs
        .into_iter()
        .filter_map(|(n, s)| s.task.filter(|t| !t.is_finished()).map(|t| (n, t)))
        .collect();
    if !running.is_empty() {
        let grace = config.runbook.shutdown_grace;
        let names: Vec<&str> = running.iter().map(|(n, _)| n.as_str()).collect();
        tracing::info!(jobs = ?names, "waiting up to {grace} (shutdown_grace) for running jobs");
        let mut handles: Vec<JoinHandle<()>> = running.into_iter().map(|(_, t)| t).collect();
        let all = futures_join(&mut handles);
        if tokio::time::timeout(grace.0, all).await.is_err() {
            tracing::warn!(
                "shutdown_grace ({grace}) is over: cancelling the running jobs (their unfinished items are recorded as interrupted)"
            );
            shared.cancel.cancel();
            if tokio::time::timeout(CANCEL_WAIT, futures_join(&mut handles))
                .await
                .is_err()
            {
                tracing::error!(
                    "runs did not stop within {}s of cancellation; exiting anyway",
                    CANCEL_WAIT.as_secs()
                );
            }
        }
    }
    stop.cancel();
    if let Some(w) = watcher {
        w.abort();
    }
    let _ = outbox.await;
    let _ = housekeeping.await;
    let _ = escalation.await;
    if let Some(s) = server {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    tracing::info!("daemon stopped");
    Ok(ExitCode::SUCCESS)
}

/// Waits for every handle (finished ones return at once).
async fn futures_join(handles: &mut [JoinHandle<()>]) {
    for h in handles.iter_mut() {
        if !h.is_finished() {
            let _ = h.await;
        }
    }
}

/// Adds state for new jobs (cursor from the store) and drops jobs no longer configured.
fn sync_jobs(
    jobs: &mut HashMap<String, JobState>,
    config: &Config,
    store: &Store,
    now: DateTime<Utc>,
) {
    // A removed job whose run is in progress stays until shutdown, so that run is waited for
    // (and cancelled) like the others; the loop only looks at configured jobs.
    jobs.retain(|name, state| {
        state.running() || config.jobs.get(name).is_some_and(|j| j.schedule.is_some())
    });
    for (name, job) in &config.jobs {
        if job.schedule.is_none() || jobs.contains_key(name) {
            continue;
        }
        let last = match store.last_slot(name) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(job = %name, "cannot read the job's last slot (starting fresh): {e:#}");
                None
            }
        };
        jobs.insert(
            name.clone(),
            JobState {
                handled_until: start_cursor(last, now),
                task: None,
            },
        );
    }
}

fn publish_next_runs(
    config: &Config,
    jobs: &HashMap<String, JobState>,
    metrics: &Metrics,
    now: DateTime<Utc>,
) {
    for (name, job) in &config.jobs {
        let Some(schedule) = &job.schedule else {
            continue;
        };
        let cursor = jobs
            .get(name)
            .map(|s| s.handled_until.max(now))
            .unwrap_or(now);
        if let Some(next) = schedule.next_after(job.tz, cursor) {
            metrics.set_next_run(name, next.timestamp() as f64);
        }
    }
}

/// Records the slot and starts its run in a task of its own: the cluster claim (network) and
/// the run never block the loop.
fn spawn_run(config: &Arc<Config>, shared: &Shared, fire: Fire) -> JoinHandle<()> {
    if !fire.takeover {
        shared.record(&fire.job, &fire.slot, "running", None);
    }
    let config = config.clone();
    let shared = shared.clone();
    tokio::spawn(async move { run_slot(config, shared, fire).await })
}

async fn run_slot(config: Arc<Config>, shared: Shared, fire: Fire) {
    let Fire {
        job: name,
        slot,
        trigger,
        mut missed,
        takeover,
    } = fire;
    let Some(job) = config.jobs.get(&name) else {
        return;
    };
    let cancel = shared.cancel.child_token();
    let cancel_reason = crate::runner::CancelReason::default();
    // With a cluster: claim the slot (or take over an expired claim) before running it.
    let mut lease = None;
    if let Some(cluster) = &shared.cluster {
        let sent = tokio::time::Instant::now();
        let claim = if takeover {
            cluster.take_over(&name, slot).await
        } else {
            cluster.claim(&name, slot).await
        };
        match claim {
            Claim::Mine { abandoned } => {
                if takeover {
                    tracing::warn!(job = %name, slot = %slot, "took over a slot whose node stopped renewing its lease");
                    shared.record(&name, &slot, "running", None);
                }
                missed.extend(abandoned);
                lease = Some(cluster.clone().keep_lease(
                    name.clone(),
                    slot,
                    sent,
                    cancel.clone(),
                    cancel_reason.clone(),
                ));
            }
            Claim::Elsewhere(node) => {
                tracing::debug!(job = %name, slot = %slot, node, "slot claimed by another node");
                if !takeover {
                    shared.record(&name, &slot, "elsewhere", None);
                }
                return;
            }
            Claim::Busy(node) => {
                tracing::warn!(job = %name, slot = %slot, node, "slot skipped: the job is still running on another node");
                shared.record(&name, &slot, "skipped", None);
                shared.remember(&name, &[slot]);
                return;
            }
            Claim::Down(e) => match cluster.on_cluster_down {
                OnClusterDown::Run => {
                    tracing::error!(job = %name, slot = %slot, "CLUSTER DATABASE UNREACHABLE ({e}): running the slot anyway (on_cluster_down = \"run\"); another node may run it too");
                }
                OnClusterDown::Skip => {
                    tracing::error!(job = %name, slot = %slot, "CLUSTER DATABASE UNREACHABLE ({e}): slot NOT run (on_cluster_down = \"skip\")");
                    shared.record(&name, &slot, "skipped", None);
                    shared.remember(&name, &[slot]);
                    return;
                }
            },
        }
    }
    missed.extend(shared.take_unreported(&name));
    missed.sort();
    missed.dedup();
    let opts = RunOptions {
        trigger,
        scheduled_for: Some(slot),
        missed: missed.clone(),
        cancel,
        cancel_reason,
        ..RunOptions::manual()
    };
    let result = crate::runner::run_job(&config, &shared.store, job, opts).await;
    // The lease task ends by itself only when it fenced the run (lost the lease).
    let fenced = lease.as_ref().is_some_and(|l| l.is_finished());
    match result {
        Ok(report) if fenced => {
            tracing::warn!(job = %name, slot = %slot, run_id = %report.run_id, "the run was cancelled: it lost the cluster lease; another node takes the slot over");
            shared.record(&name, &slot, "interrupted", Some(&report.run_id));
            shared.metrics.observe(&report);
        }
        Ok(report) => {
            shared.record(&name, &slot, "done", Some(&report.run_id));
            shared.metrics.observe(&report);
            shared.escalation.notify_one();
        }
        Err(RunError::Locked { run_id, pid, .. }) => {
            tracing::warn!(job = %name, slot = %slot, run_id, pid, "slot skipped: the job is running (manual run)");
            shared.record(&name, &slot, "skipped", None);
            shared.remember(&name, &missed);
            shared.remember(&name, &[slot]);
        }
        Err(e) => {
            tracing::error!(job = %name, slot = %slot, "the run could not be carried out: {e:#}");
            shared.record(&name, &slot, "failed", None);
        }
    }
    if let (Some(c), false) = (&shared.cluster, fenced) {
        crate::failpoint!("cluster-before-finish");
        // The lease is kept renewed while we try, so no node takes the finished slot over; what
        // is still unmarked after that, the watcher marks (see `finish_open_claims`).
        for attempt in 1..=3 {
            match c.finish(&name, slot).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(job = %name, slot = %slot, attempt, "CLUSTER DATABASE UNREACHABLE: cannot mark the slot done: {e} (retrying)");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
    if let Some(l) = lease {
        l.abort();
    }
}

/// Retries undelivered notifications in the background, and once more on the way out.
async fn drain_outbox(config: watch::Receiver<Arc<Config>>, store: Store, stop: CancellationToken) {
    // The first pass is at start: reports stored by a process that died before delivering them
    // (their outbox rows were written with the report) go out now, not 30 s later.
    let mut first = true;
    loop {
        let stopping = if std::mem::take(&mut first) {
            false
        } else {
            tokio::select! {
                _ = tokio::time::sleep(OUTBOX_INTERVAL) => false,
                _ = stop.cancelled() => true,
            }
        };
        let current = config.borrow().clone();
        // On the way out, one last try of everything pending, kept short so systemd's stop
        // timeout is not reached; what is left stays queued for the next start.
        let limit = Duration::from_secs(if stopping { 15 } else { 120 });
        match tokio::time::timeout(
            limit,
            crate::notify::outbox::flush(
                &current.notifiers,
                &current.retry_policy(),
                &store,
                !stopping,
            ),
        )
        .await
        {
            Ok(Ok(r)) if r.delivered + r.failed + r.dropped > 0 => {
                tracing::info!(
                    delivered = r.delivered,
                    failed = r.failed,
                    dropped = r.dropped,
                    "outbox retried"
                )
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("outbox: {e:#}"),
            Err(_) => {
                tracing::warn!(
                    "outbox: retrying took longer than {} s; will continue later",
                    limit.as_secs()
                )
            }
        }
        if stopping {
            return;
        }
    }
}

/// With a cluster: runs [`watch_once`] every `lease/2`. A failed pass (a panic) is logged and
/// the watcher goes on: without it, finished slots would stay unmarked and dead nodes' slots
/// would never be taken over.
async fn watch_expired_claims(
    cluster: Arc<Cluster>,
    config: watch::Receiver<Arc<Config>>,
    store: Store,
    tx: mpsc::Sender<(String, DateTime<Utc>)>,
    stop: CancellationToken,
) {
    let every = (cluster.lease / 2).max(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let pass = tokio::spawn(watch_once(
            cluster.clone(),
            config.clone(),
            store.clone(),
            tx.clone(),
        ));
        if let Err(e) = pass.await {
            tracing::error!("the cluster watcher failed ({e}); restarting it");
        }
    }
}

/// One pass of the cluster watcher: marks this node's finished slots done (their `finish()`
/// did not reach the database, or the process died before it), then notices slots whose node
/// stopped renewing its lease (died mid-run) and asks the loop to take them over.
async fn watch_once(
    cluster: Arc<Cluster>,
    config: watch::Receiver<Arc<Config>>,
    store: Store,
    tx: mpsc::Sender<(String, DateTime<Utc>)>,
) {
    match cluster.my_open_claims().await {
        Ok(open) => {
            for (job, slot) in open {
                let state = store.slot_state(&job, &slot).ok().flatten();
                if matches!(state.as_deref(), Some("done" | "failed" | "skipped")) {
                    match cluster.finish(&job, slot).await {
                        Ok(()) => {
                            tracing::info!(job, slot = %slot, "marked a finished slot done in the cluster database")
                        }
                        Err(e) => {
                            tracing::error!(job, slot = %slot, "CLUSTER DATABASE UNREACHABLE: cannot mark the slot done: {e}")
                        }
                    }
                }
            }
        }
        Err(e) => {
            tracing::error!("CLUSTER DATABASE UNREACHABLE: cannot look for unmarked slots: {e}")
        }
    }
    let jobs: Vec<String> = config
        .borrow()
        .jobs
        .iter()
        .filter(|(_, j)| j.schedule.is_some())
        .map(|(n, _)| n.clone())
        .collect();
    for job in jobs {
        if let Some(slot) = cluster.expired_claim(&job).await {
            let _ = tx.send((job, slot)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
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
    ) -> Vec<(DateTime<Utc>, Trigger)> {
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
        assert!(fired.iter().all(|(_, t)| *t == Trigger::Schedule));
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
        assert_eq!(tick.fire, Some((slot24, Trigger::CatchUp)));
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
            Some((at, Trigger::Schedule))
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
            Some((utc("2026-11-24T13:00:00Z"), Trigger::CatchUp))
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
            Some((utc("2026-11-24T13:00:00Z"), Trigger::Schedule))
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
        assert_eq!(fired, [(utc("2026-11-24T14:00:00Z"), Trigger::Schedule)]);
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
        assert!(fired.iter().all(|(_, t)| *t == Trigger::Schedule));
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
            Some((utc("2026-11-24T10:05:00Z"), Trigger::Schedule))
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
}
