//! The daemon's loop: fires jobs at their slots, catches up after downtime, reloads its
//! configuration when asked, stops gracefully, talks to systemd, serves metrics and (with
//! `[cluster]`) shares the work with other daemons.
//!
//! What fires when is decided elsewhere: [`crate::base::schedule::decide`] is a pure function
//! of (schedule, zone, catch-up policy, the newest slot already handled, now). This module owns
//! the side effects: [`run`] sleeps until the next slot (waking at least every 30 s to re-read
//! the clock, and often enough to ping the systemd watchdog), records every slot in the store
//! before running it, and spawns one task per run.
//!
//! [`run`] takes its clock, its shutdown future and its reload trigger as parameters (as
//! mini-redis's `server::run(listener, shutdown)` does): it installs no signal handlers. The
//! face wires SIGTERM/SIGINT to `shutdown` and SIGHUP to `reload`; tests pass a clock they move
//! and a future they complete.
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
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::base::schedule::{self, MAX_MISSED, Policy, SlotTrigger};
use crate::config::{Config, Job, OnClusterDown};
use crate::daemon::cluster::{Claim, Cluster};
use crate::daemon::server::Metrics;
use crate::items::Trigger;
use crate::runner::{RunError, RunOptions};
use crate::store::Store;

/// How often undelivered notifications are retried in the background.
const OUTBOX_INTERVAL: Duration = Duration::from_secs(30);

/// After `shutdown_grace` the runs are cancelled; this is how long we then wait for them to
/// record their interrupted items (the runner gives an item 7 s to clean up).
const CANCEL_WAIT: Duration = Duration::from_secs(20);

/// Where the loop reads the time and how it waits for it: [`SystemClock`] in the daemon, a
/// clock the test moves in tests.
pub trait Clock: Send + Sync {
    /// The current wall-clock time.
    fn now(&self) -> DateTime<Utc>;
    /// Resolves once `duration` has passed on this clock.
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
}

/// The real clock: `Utc::now()` and tokio's timer.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        Box::pin(tokio::time::sleep(duration))
    }
}

impl From<SlotTrigger> for Trigger {
    fn from(t: SlotTrigger) -> Trigger {
        match t {
            SlotTrigger::Schedule => Trigger::Schedule,
            SlotTrigger::CatchUp => Trigger::CatchUp,
        }
    }
}

/// The scheduling policy of a job with a schedule (None: it runs only by hand).
fn policy(job: &Job) -> Option<Policy<'_>> {
    Some(Policy {
        schedule: job.schedule.as_ref()?,
        tz: job.tz,
        catch_up: job.config.catch_up,
        catch_up_within: job.config.catch_up_within.0,
    })
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

/// Runs the daemon in the foreground until `shutdown` completes; then stops firing, gives the
/// running jobs their `shutdown_grace`, cancels what is left and returns. Every message on
/// `reload` re-reads the configuration file (an invalid one is logged and the old one kept).
///
/// `clock` is where the loop reads the time and sleeps ([`SystemClock`] in the daemon).
pub async fn run(
    config: Config,
    clock: impl Clock,
    shutdown: impl Future<Output = ()>,
    mut reload: mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    let (mut daemon, mut takeovers) = Daemon::start(config, clock.now()).await?;
    daemon.ready();
    tokio::pin!(shutdown);
    loop {
        let pass = clock.now();
        daemon.fire_due(pass);
        // Sleep a millisecond past the slot so the wall clock has surely reached it.
        let sleep = daemon.sleep_for(pass, clock.now()) + Duration::from_millis(1);
        tokio::select! {
            _ = clock.sleep(sleep) => {}
            _ = &mut shutdown => break,
            Some(()) = reload.recv() => daemon.reload(clock.now()),
            Some((job, slot)) = takeovers.recv() => daemon.take_over(&job, slot, clock.now()).await,
        }
    }
    daemon.stop().await;
    Ok(())
}

/// The background tasks beside the loop, stopped together on the way out.
struct Background {
    /// Cancelled when the loop stops: the tasks below finish their current pass and return.
    stop: CancellationToken,
    server: Option<JoinHandle<()>>,
    outbox: JoinHandle<()>,
    housekeeping: JoinHandle<()>,
    /// Escalation of unacknowledged failures (`escalate`), woken by `escalation_wake`.
    escalation: JoinHandle<()>,
    escalation_wake: Arc<tokio::sync::Notify>,
    /// With a cluster: the watcher of expired claims (aborted, it holds no state).
    watcher: Option<JoinHandle<()>>,
}

impl Background {
    /// Starts the server (binding `[server] listen`), the outbox drain, housekeeping and, with a
    /// cluster, the watcher of expired claims (which sends slots to take over on `takeovers`).
    async fn spawn(
        config: watch::Receiver<Arc<Config>>,
        store: &Store,
        metrics: &Arc<Metrics>,
        cluster: Option<Arc<Cluster>>,
        takeovers: mpsc::Sender<(String, DateTime<Utc>)>,
    ) -> anyhow::Result<Background> {
        let stop = CancellationToken::new();
        let listen = config.borrow().server.as_ref().map(|s| s.listen.clone());
        let server = match listen {
            Some(listen) => {
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .map_err(|e| anyhow::anyhow!("[server] listen = {listen:?}: {e}"))?;
                tracing::info!(listen = %listener.local_addr()?, "serving /metrics, /healthz and the status page");
                let state = crate::daemon::server::AppState {
                    metrics: metrics.clone(),
                    store: store.clone(),
                    config: config.clone(),
                };
                Some(tokio::spawn(crate::daemon::server::serve(
                    listener,
                    state,
                    stop.clone(),
                )))
            }
            None => None,
        };
        let outbox = tokio::spawn(drain_outbox(config.clone(), store.clone(), stop.clone()));
        let housekeeping = tokio::spawn(crate::daemon::housekeeping::run(
            config.clone(),
            store.clone(),
            stop.clone(),
        ));
        let escalation_wake = Arc::new(tokio::sync::Notify::new());
        let escalation = tokio::spawn(crate::daemon::escalation::run(
            config.clone(),
            store.clone(),
            escalation_wake.clone(),
            stop.clone(),
        ));
        let watcher = cluster.map(|c| {
            tokio::spawn(watch_expired_claims(
                c,
                config,
                store.clone(),
                takeovers,
                stop.clone(),
            ))
        });
        Ok(Background {
            stop,
            server,
            outbox,
            housekeeping,
            escalation,
            escalation_wake,
            watcher,
        })
    }
}

/// The loop's state between wake-ups.
struct Daemon {
    /// The configuration in force (replaced on reload).
    config: Arc<Config>,
    /// Publishes the configuration in force to the server, outbox and housekeeping tasks.
    config_tx: watch::Sender<Arc<Config>>,
    store: Store,
    metrics: Arc<Metrics>,
    shared: Shared,
    /// One entry per scheduled job (and per removed job whose run is still going).
    jobs: HashMap<String, JobState>,
    /// systemd's watchdog interval, when it asks for pings.
    watchdog: Option<Duration>,
    background: Background,
}

impl Daemon {
    /// Opens the store, marks runs of a dead process interrupted, stops and removes the scratch
    /// servers crashed drills left, starts the server, outbox, housekeeping and cluster watcher
    /// tasks, and reads each job's cursor. Returns the receiver of slots to take over from dead
    /// cluster nodes.
    async fn start(
        config: Config,
        now: DateTime<Utc>,
    ) -> anyhow::Result<(Daemon, mpsc::Receiver<(String, DateTime<Utc>)>)> {
        let store = Store::open(&config.state_dir, &config.hostname)?;
        for run_id in store.mark_interrupted()? {
            tracing::warn!(
                run_id,
                "run left running by a process that is gone: marked interrupted"
            );
        }
        let metrics = Arc::new(Metrics::new());
        metrics.configure(&config, now);
        metrics.load_history(&config, &store);
        let cluster = config.cluster.as_ref().map(|c| Arc::new(Cluster::new(c)));
        let config = Arc::new(config);
        // Before the first run: a scratch server a crashed drill left goes now, not at the
        // next drill of its item (maybe a month away).
        let (c, s) = (config.clone(), store.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || {
            crate::daemon::housekeeping::sweep_pitr_scratch(&c, &s)
        })
        .await
        {
            tracing::error!("housekeeping: the sweep of the drills' scratch folders failed: {e}");
        }
        let (config_tx, config_rx) = watch::channel(config.clone());
        let (takeover_tx, takeover_rx) = mpsc::channel::<(String, DateTime<Utc>)>(16);
        let background =
            Background::spawn(config_rx, &store, &metrics, cluster.clone(), takeover_tx).await?;
        let shared = Shared {
            store: store.clone(),
            metrics: metrics.clone(),
            cluster,
            unreported: Default::default(),
            cancel: CancellationToken::new(),
            escalation: background.escalation_wake.clone(),
        };
        let mut jobs = HashMap::new();
        sync_jobs(&mut jobs, &config, &store, now);
        let mut watchdog_usec = 0u64;
        let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec)
            .then(|| Duration::from_micros(watchdog_usec));
        let daemon = Daemon {
            config,
            config_tx,
            store,
            metrics,
            shared,
            jobs,
            watchdog,
            background,
        };
        Ok((daemon, takeover_rx))
    }

    /// Tells systemd (and the log) that the daemon is scheduling.
    fn ready(&self) {
        let _ = sd_notify::notify(
            false,
            &[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status("scheduling"),
            ],
        );
        tracing::info!(jobs = self.config.jobs.len(), config = %self.config.path.display(), state = %self.store.dir.display(), "daemon started");
    }

    /// One pass over the jobs at `now`: records what is missed or skipped, starts what is due,
    /// publishes the next runs and pings the watchdog.
    fn fire_due(&mut self, now: DateTime<Utc>) {
        for (name, job) in &self.config.jobs {
            let (Some(policy), Some(state)) = (policy(job), self.jobs.get_mut(name)) else {
                continue;
            };
            let store = &self.store;
            let tick = schedule::decide(&policy, state.handled_until, now, || {
                state.running() || store.lock_holder(name).ok().flatten().is_some()
            });
            if let Some(h) = tick.handled_until {
                state.handled_until = h;
            }
            let shared = &self.shared;
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
                    trigger: trigger.into(),
                    missed: vec![],
                    takeover: false,
                };
                state.task = Some(spawn_run(&self.config, shared, fire));
            }
        }
        publish_next_runs(&self.config, &self.jobs, &self.metrics, now);
        if self.watchdog.is_some() {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        }
    }

    /// How long the loop may sleep from `now` ([`schedule::next_wake`] over every job's next
    /// slot after the pass that just ran at `pass`).
    fn sleep_for(&self, pass: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
        let next_slots = self.config.jobs.iter().filter_map(|(name, job)| {
            policy(job)?.next_slot(self.jobs.get(name)?.handled_until, pass)
        });
        schedule::next_wake(next_slots, now, self.watchdog)
    }

    /// Re-reads the configuration file; an invalid one is logged and the old one kept.
    fn reload(&mut self, now: DateTime<Utc>) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
        match Config::load(&self.config.path) {
            Ok(new) => {
                let new = Arc::new(new);
                sync_jobs(&mut self.jobs, &new, &self.store, now);
                self.metrics.configure(&new, now);
                self.metrics.load_history(&new, &self.store);
                tracing::info!(jobs = new.jobs.len(), "SIGHUP: configuration reloaded");
                let old = &self.config;
                if new.server.as_ref().map(|s| &s.listen) != old.server.as_ref().map(|s| &s.listen)
                    || new.cluster.is_some() != old.cluster.is_some()
                {
                    tracing::warn!(
                        "SIGHUP: changes to [server] and [cluster] take effect after a restart"
                    );
                }
                self.config = new;
                let _ = self.config_tx.send(self.config.clone());
            }
            Err(e) => {
                self.metrics.reload_failed();
                tracing::error!(
                    "SIGHUP: the new configuration is invalid, keeping the old one:\n{e}"
                );
            }
        }
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    }

    /// A slot whose cluster node stopped renewing its lease: run it here if the job's catch-up
    /// policy allows, else record it missed.
    async fn take_over(&mut self, job: &str, slot: DateTime<Utc>, now: DateTime<Utc>) {
        let (Some(state), Some(policy)) = (
            self.jobs.get_mut(job),
            self.config.jobs.get(job).and_then(policy),
        ) else {
            return;
        };
        if state.running() {
            return;
        }
        if policy.may_catch_up(slot, now) {
            let fire = Fire {
                job: job.to_string(),
                slot,
                trigger: Trigger::CatchUp,
                missed: vec![slot],
                takeover: true,
            };
            state.task = Some(spawn_run(&self.config, &self.shared, fire));
        } else if let Some(c) = &self.shared.cluster {
            tracing::warn!(job, slot = %slot, "the node running this slot died; too old to take over (catch_up policy): recorded as missed");
            c.abandon(job, slot).await;
            self.shared.record(job, &slot, "missed", None);
            self.shared.remember(job, &[slot]);
        }
    }

    /// Shutdown: stop firing, give the runs their grace, then cancel them; then stop the
    /// background tasks (the outbox gets one last pass).
    async fn stop(self) {
        let _ = sd_notify::notify(
            false,
            &[
                sd_notify::NotifyState::Stopping,
                sd_notify::NotifyState::Status("stopping"),
            ],
        );
        let running: Vec<(String, JoinHandle<()>)> = self
            .jobs
            .into_iter()
            .filter_map(|(n, s)| s.task.filter(|t| !t.is_finished()).map(|t| (n, t)))
            .collect();
        if !running.is_empty() {
            let grace = self.config.runbook.shutdown_grace;
            let names: Vec<&str> = running.iter().map(|(n, _)| n.as_str()).collect();
            tracing::info!(jobs = ?names, "waiting up to {grace} (shutdown_grace) for running jobs");
            let mut handles: Vec<JoinHandle<()>> = running.into_iter().map(|(_, t)| t).collect();
            if tokio::time::timeout(grace.0, futures_join(&mut handles))
                .await
                .is_err()
            {
                tracing::warn!(
                    "shutdown_grace ({grace}) is over: cancelling the running jobs (their unfinished items are recorded as interrupted)"
                );
                self.shared.cancel.cancel();
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
        let b = self.background;
        b.stop.cancel();
        if let Some(w) = b.watcher {
            w.abort();
        }
        let _ = b.outbox.await;
        let _ = b.housekeeping.await;
        let _ = b.escalation.await;
        if let Some(s) = b.server {
            let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
        }
        tracing::info!("daemon stopped");
    }
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
                handled_until: schedule::start_cursor(last, now),
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
