//! One run of one job: lock, items in parallel under timeouts, report, store, notify.
//!
//! Items of a job run concurrently, at most `max_parallel_items` at once. Items that change the
//! same target (VACUUM, REINDEX CONCURRENTLY, index builds, restore drills) are chained in file
//! order: they would only block each other. Each item runs in its own task, so a panic is caught
//! and becomes `fail`; each has a deadline (its `timeout`, capped by the job's), after which its
//! cancellation token fires (a `command` kills its process group) and, after a short grace, the
//! task is aborted. A run always ends in a report, stored before any delivery is attempted, in
//! one transaction with its outbox rows and the `log_scan` offsets its items advanced.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Job};
use crate::items::connection::SharedConnection;
use crate::items::{ItemCtx, ItemSpec, Outcome, Status, Trigger};
use crate::report::{Change, Counts, ItemReport, Report, TargetResult};
use crate::store::{Lock, Store};

/// How long an item may take to clean up after its deadline or cancellation before its task is
/// aborted (a `command` sends SIGTERM, waits 5 s, then SIGKILL).
const CLEANUP_GRACE: Duration = Duration::from_secs(7);

/// How a run is asked for.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub trigger: Trigger,
    /// The slot (scheduled runs).
    pub scheduled_for: Option<DateTime<Utc>>,
    /// Only these items (`--item`); empty: all.
    pub only_items: Vec<String>,
    pub dry_run: bool,
    /// Deliver notifications (false: `--no-notify`).
    pub notify: bool,
    /// Slots missed before this run (listed in the report).
    pub missed: Vec<DateTime<Utc>>,
    /// Cancelled when the run must stop (daemon shutdown, a lost cluster lease).
    pub cancel: CancellationToken,
    /// Why `cancel` fired, for the interrupted items' summaries.
    pub cancel_reason: CancelReason,
}

/// Why a run was cancelled: "shutting down" unless whoever cancels it says otherwise first
/// ("lost the cluster lease"). Cheap to clone; set once.
#[derive(Clone, Debug, Default)]
pub struct CancelReason(Arc<std::sync::OnceLock<String>>);

impl CancelReason {
    /// Records the reason (the first one wins).
    pub fn set(&self, reason: &str) {
        let _ = self.0.set(reason.to_string());
    }

    pub fn get(&self) -> &str {
        self.0.get().map(String::as_str).unwrap_or("shutting down")
    }
}

impl RunOptions {
    pub fn manual() -> RunOptions {
        RunOptions {
            trigger: Trigger::Manual,
            scheduled_for: None,
            only_items: vec![],
            dry_run: false,
            notify: true,
            missed: vec![],
            cancel: CancellationToken::new(),
            cancel_reason: CancelReason::default(),
        }
    }
}

/// Why a run did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "job {job:?} is already running (run {run_id}, {trigger}, process {pid} on {host}, since {since}); nothing ran"
    )]
    Locked {
        job: String,
        run_id: String,
        pid: i64,
        host: String,
        since: String,
        /// `trigger manual`, `trigger schedule`, ... (or `trigger unknown`).
        trigger: String,
    },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Infra(#[from] anyhow::Error),
}

/// Runs `job` now and returns its stored report.
pub async fn run_job(
    config: &Config,
    store: &Store,
    job: &Job,
    opts: RunOptions,
) -> Result<Report, RunError> {
    for name in &opts.only_items {
        if !job.config.items.iter().any(|i| &i.name == name) {
            let known: Vec<&str> = job.config.items.iter().map(|i| i.name.as_str()).collect();
            return Err(RunError::Usage(format!(
                "job {:?} has no item {name:?} (items: {})",
                job.name,
                known.join(", ")
            )));
        }
    }
    let run_id = ulid::Ulid::new().to_string();
    match store.try_lock(&job.name, &run_id)? {
        Lock::Held {
            run_id,
            pid,
            host,
            since,
            trigger,
        } => {
            return Err(RunError::Locked {
                job: job.name.clone(),
                run_id,
                pid,
                host,
                since,
                trigger: format!("trigger {}", trigger.as_deref().unwrap_or("unknown")),
            });
        }
        Lock::Acquired { stale_taken_over } => {
            if let Some(msg) = stale_taken_over {
                tracing::warn!(job = %job.name, "{msg}");
            }
        }
    }
    let result = run_locked(config, store, job, &opts, &run_id).await;
    if let Err(e) = store.unlock(&job.name, &run_id) {
        tracing::error!(job = %job.name, "cannot release the job lock: {e:#}");
    }
    let (mut report, stored, outbox) = result?;
    if opts.notify {
        // The stored report stays as it is; the one returned shows how the deliveries went.
        report.notifications = crate::notify::deliver_run(
            &config.notifiers,
            store,
            &config.retry_policy(),
            &report,
            &outbox,
            stored,
        )
        .await;
    }
    Ok(report)
}

async fn run_locked(
    config: &Config,
    store: &Store,
    job: &Job,
    opts: &RunOptions,
    run_id: &str,
) -> Result<(Report, bool, Vec<crate::notify::Planned>), RunError> {
    // `log_scan` counts lines since the job's last run, whatever kind it was; `change` and
    // `on = "change"` compare with the previous comparable run (SPEC 9.1): neither a dry run
    // nor limited by `--item`, so a partial run never becomes the base of the next full one.
    let previous = store.last_report(&job.name)?;
    let comparable = store.last_comparable_report(&job.name)?;
    let started = Utc::now();
    let scheduled_local = opts
        .scheduled_for
        .map(|s| s.with_timezone(&job.tz).fixed_offset());
    store.insert_run(
        run_id,
        &job.name,
        opts.trigger.as_str(),
        scheduled_local.map(|s| s.to_rfc3339()).as_deref(),
        &started,
        !opts.dry_run && opts.only_items.is_empty(),
    )?;
    if opts.notify && !opts.dry_run {
        crate::notify::run_started(&config.notifiers, &job.notify).await;
    }
    tracing::info!(job = %job.name, run_id, trigger = opts.trigger.as_str(), "run started");

    // `capacity` items forecast numbers other items stored: the runner reads them (items sit
    // below the store) into a copy of the job, so the items themselves stay pure.
    let with_inputs;
    let job = if job
        .config
        .items
        .iter()
        .any(|i| matches!(i.spec, ItemSpec::Capacity(_)))
    {
        with_inputs = capacity_inputs(job, store, started);
        &with_inputs
    } else {
        job
    };
    let selected: Vec<usize> = (0..job.config.items.len())
        .filter(|&i| {
            opts.only_items.is_empty() || opts.only_items.contains(&job.config.items[i].name)
        })
        .collect();
    let base_ctx = ItemCtx {
        job: job.name.clone(),
        item: String::new(),
        run_id: run_id.to_string(),
        trigger: opts.trigger,
        scheduled_for: scheduled_local.map(|s| s.to_rfc3339()),
        tz: job.tz,
        dry_run: opts.dry_run,
        config_dir: config.dir.clone(),
        state_dir: config.state_dir.clone(),
        targets: config.targets.clone(),
        state: crate::items::state::ItemState::new(
            Arc::new(RunState::new(store.clone())),
            &job.name,
            run_id,
        ),
        cancel: opts.cancel.clone(),
        started_at: started,
        previous_started_at: previous.as_ref().map(|p| p.started_at.with_timezone(&Utc)),
        deadline: Instant::now(),
        redactor: config.redactor.clone(),
        shared: None,
    };
    let outcomes = execute(
        job,
        &selected,
        base_ctx,
        (
            config.runbook.max_parallel_items,
            config.runbook.max_parallel_targets,
        ),
        &opts.cancel_reason,
    )
    .await;

    let finished = Utc::now();
    let tz = job.tz;
    let local = |t: DateTime<Utc>| t.with_timezone(&tz).fixed_offset();
    // State the items want remembered (log_scan offsets) goes into the report's transaction.
    let mut pending = Vec::new();
    let items = selected
        .iter()
        .zip(outcomes)
        .map(|(&i, (mut outcome, ms, mut targets))| {
            pending.append(&mut outcome.pending);
            let item = &job.config.items[i];
            // Whatever reached an outcome (a child's output, an echoed URL) is shown without
            // the config's secrets.
            let mut outcome = outcome;
            let r = &config.redactor;
            r.redact_string(&mut outcome.summary);
            outcome.details.iter_mut().for_each(|d| r.redact_string(d));
            r.redact_json(&mut outcome.data);
            for t in &mut targets {
                r.redact_string(&mut t.summary);
                t.details.iter_mut().for_each(|d| r.redact_string(d));
                r.redact_json(&mut t.data);
            }
            ItemReport {
                name: item.name.clone(),
                kind: item.spec.kind().to_string(),
                status: outcome.status,
                summary: outcome.summary,
                details: outcome.details,
                data: outcome.data,
                duration_ms: ms,
                change: Change::Same,
                targets,
            }
        })
        .collect();
    let mut report = Report {
        run_id: run_id.to_string(),
        job: job.name.clone(),
        description: job.config.description.clone(),
        trigger: opts.trigger,
        scheduled_for: scheduled_local,
        started_at: local(started),
        finished_at: local(finished),
        duration_ms: (finished - started).num_milliseconds().max(0) as u64,
        host: config.hostname.clone(),
        timezone: job.tz.name().to_string(),
        status: Status::Pass,
        counts: Counts::default(),
        dry_run: opts.dry_run,
        items,
        missed: opts.missed.iter().map(|m| local(*m).to_rfc3339()).collect(),
        notifications: vec![],
        acks: vec![],
        previous_status: None,
        history: Default::default(),
    };
    report.finish_status();
    report.compare_with(comparable.as_ref());
    // The HTML report's charts: each item's value in the comparable runs before this one.
    if let Err(e) = store.fill_history(&mut report) {
        tracing::warn!(job = %job.name, run_id, "cannot read the items' earlier values for the report's charts: {e:#}");
    }
    // The items have run: their report must reach a person even when the state database
    // cannot be written (disk full, locked by a stuck process). It is still printed and
    // delivered; only history loses it, and the log says so.
    // The outbox entries are written with the report: once it is stored, its delivery is
    // queued even if this process dies before delivering (the daemon or `outbox --flush`
    // sends it). The report says where it goes (`queued` or `skipped`); it is never stored
    // again: the outbox entries carry the delivery state from here on.
    let mut outbox = Vec::new();
    if opts.notify {
        (report.notifications, outbox) =
            crate::notify::plan_run(&config.notifiers, &job.notify, &report, comparable.as_ref());
    }
    let rows: Vec<_> = outbox
        .iter()
        .map(|p| (p.key.clone(), p.payload.clone()))
        .collect();
    let stored = match store.finish_run_with_events(&report, &pending, &rows) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(job = %job.name, run_id, "cannot store the report (it is still printed and delivered): {e:#}");
            false
        }
    };
    crate::failpoint!("report-stored");
    tracing::info!(job = %job.name, run_id, status = report.status.as_str(), duration_ms = report.duration_ms, "run finished");
    Ok((report, stored, outbox))
}

/// A copy of `job` whose `capacity` items carry their series' points: each series' number in
/// the source job's stored runs (`runbook trend`'s series: dry runs left out) within the item's
/// `window` before `now`, oldest first.
fn capacity_inputs(job: &Job, store: &Store, now: DateTime<Utc>) -> Job {
    /// Enough for a run every 10 minutes over 30 days; older points are outside any sane window.
    const MAX_POINTS: usize = 5000;
    let mut copy = job.clone();
    for item in &mut copy.config.items {
        let ItemSpec::Capacity(c) = &mut item.spec else {
            continue;
        };
        let source = c.job.clone().unwrap_or_else(|| job.name.clone());
        let since = now - chrono::Duration::from_std(c.window.0).unwrap_or_default();
        c.history = c
            .series
            .iter()
            .map(|s| {
                let (points, _) = store
                    .trend(&source, &s.item, &s.field, MAX_POINTS)
                    .map_err(|e| format!("{e:#}"))?;
                Ok(points
                    .into_iter()
                    .filter_map(|p| {
                        let t = DateTime::parse_from_rfc3339(&p.started_at)
                            .ok()?
                            .with_timezone(&Utc);
                        (t >= since && t <= now).then_some((t, p.value))
                    })
                    .collect())
            })
            .collect();
    }
    copy
}

/// The items' state for one run: the store, except that an item's earlier results are read
/// once for all the targets of an item over several databases (each target's are in the same
/// rows; reading them again per target costs time). They cannot change during the run: its own
/// report is stored after its items.
struct RunState {
    store: Store,
    earlier: std::sync::Mutex<HashMap<EarlierKey, EarlierItems>>,
}

/// (job, item, kind, how many reports).
type EarlierKey = (String, String, String, usize);

/// An item's earlier results as read once for a run.
type EarlierItems = Arc<Vec<crate::store::EarlierItem>>;

impl RunState {
    fn new(store: Store) -> RunState {
        RunState {
            store,
            earlier: Default::default(),
        }
    }
}

impl crate::items::state::StateSource for RunState {
    fn scan_offset(
        &self,
        job: &str,
        item: &str,
        file: &str,
    ) -> Result<Option<crate::items::state::FilePosition>, crate::items::state::StateError> {
        crate::items::state::StateSource::scan_offset(&self.store, job, item, file)
    }

    fn earlier_results(
        &self,
        job: &str,
        item: &str,
        kind: &str,
        target: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::items::state::EarlierResult>, crate::items::state::StateError> {
        let Some(target) = target else {
            return crate::items::state::StateSource::earlier_results(
                &self.store,
                job,
                item,
                kind,
                None,
                limit,
            );
        };
        let key = (job.to_string(), item.to_string(), kind.to_string(), limit);
        let found = {
            let mut earlier = self.earlier.lock().unwrap_or_else(|e| e.into_inner());
            match earlier.get(&key) {
                Some(r) => r.clone(),
                None => {
                    let r = Arc::new(
                        self.store
                            .earlier_item_results(job, item, kind, limit)
                            .map_err(|e| crate::items::state::StateError(format!("{e:#}")))?,
                    );
                    earlier.insert(key, r.clone());
                    r
                }
            }
        };
        Ok(found
            .iter()
            .filter_map(|r| {
                r.targets
                    .iter()
                    .find(|(name, _)| name == target)
                    .map(|(_, on)| on.clone())
            })
            .collect())
    }
}

/// What [`execute`] found for one item: its outcome, duration in ms, and for an item over several
/// targets each target's result.
type Executed = (Outcome, u64, Vec<TargetResult>);

/// Connections per cluster: one semaphore per host and port, shared by every database item of
/// the run (`[runbook] max_parallel_targets` permits each).
#[derive(Clone)]
struct ClusterSlots {
    limit: usize,
    slots: Arc<std::sync::Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl ClusterSlots {
    fn new(limit: usize) -> ClusterSlots {
        ClusterSlots {
            limit: limit.max(1),
            slots: Default::default(),
        }
    }

    /// The semaphore of the cluster `target` is on (by host and port; None for an unknown name).
    fn of(&self, base: &ItemCtx, target: &str) -> Option<Arc<Semaphore>> {
        let t = base.targets.get(target)?;
        let key = format!("{:?} {:?}", t.pg.get_hosts(), t.pg.get_ports());
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        Some(
            slots
                .entry(key)
                .or_insert_with(|| Arc::new(Semaphore::new(self.limit)))
                .clone(),
        )
    }
}

/// The limits and clocks every item of one run shares.
#[derive(Clone)]
struct RunLimits {
    max_parallel_targets: usize,
    clusters: ClusterSlots,
    job_deadline: Instant,
    job_timeout: crate::base::units::Dur,
    reason: CancelReason,
}

/// The targets an item runs on (one entry, maybe None, for an item over one target or none),
/// and whether it is over several (`target` a list or a glob).
fn targets_of(item: &crate::config::ItemConfig) -> (Vec<Option<String>>, bool) {
    if item.fleet.is_empty() {
        (vec![item.spec.target().map(str::to_string)], false)
    } else {
        (item.fleet.iter().cloned().map(Some).collect(), true)
    }
}

/// What an item found from its runs on its targets (in the item's order of targets), with the
/// time from its first start to its last end.
fn executed(multi: bool, results: Vec<(Option<String>, (Outcome, u64))>, ms: u64) -> Executed {
    if multi {
        let targets: Vec<TargetResult> = results
            .into_iter()
            .map(|(name, (o, ms))| TargetResult {
                target: name.unwrap_or_default(),
                status: o.status,
                summary: o.summary,
                details: o.details,
                data: o.data,
                duration_ms: ms,
            })
            .collect();
        (combine_targets(&targets), ms, targets)
    } else {
        let (o, ms) = results
            .into_iter()
            .next()
            .map(|(_, r)| r)
            .unwrap_or_else(|| (Outcome::fail("internal error: no run"), 0));
        (o, ms, Vec::new())
    }
}

fn not_started(job_timeout: crate::base::units::Dur) -> Executed {
    (
        Outcome::fail(format!(
            "not started: the job's timeout ({job_timeout}) was reached"
        )),
        0,
        Vec::new(),
    )
}

/// Runs the selected items; returns what each found, in the order of `selected`.
///
/// Read-only database checks ([`ItemSpec::shares_connection`]) run as one group, by database:
/// per database one connection, which its checks borrow one after another in file order
/// ([`checks_by_database`]). The group takes one of the job's `max_parallel_items` permits, at
/// the place of its first item. Every other item runs on its own, on each of its targets.
async fn execute(
    job: &Job,
    selected: &[usize],
    base: ItemCtx,
    limits: (usize, usize),
    reason: &CancelReason,
) -> Vec<Executed> {
    let (default_parallel, max_parallel_targets) = limits;
    let parallel = job
        .config
        .max_parallel_items
        .unwrap_or(default_parallel)
        .max(1);
    let semaphore = Arc::new(Semaphore::new(parallel));
    let run = RunLimits {
        max_parallel_targets: max_parallel_targets.max(1),
        clusters: ClusterSlots::new(max_parallel_targets),
        job_deadline: Instant::now() + job.config.timeout.0,
        job_timeout: job.config.timeout,
        reason: reason.clone(),
    };
    let checks: Vec<usize> = selected
        .iter()
        .copied()
        .filter(|&i| {
            let item = &job.config.items[i];
            item.spec.shares_connection()
                && (item.spec.target().is_some() || !item.fleet.is_empty())
        })
        .collect();

    enum Slot {
        /// The job's timeout came first.
        Missed,
        Item(tokio::task::JoinHandle<Executed>),
        /// The n-th of the checks' group.
        Check(usize),
    }
    // Items start in file order as permits free up. Items that change the same target form a
    // chain: each waits for its predecessor on that target to finish before it runs on it (an
    // item over several targets waits per target).
    let mut previous_on_target: HashMap<String, tokio::sync::oneshot::Receiver<()>> =
        Default::default();
    let mut started: Vec<Slot> = Vec::new();
    let mut group: Option<tokio::task::JoinHandle<Vec<Executed>>> = None;
    let mut group_started = false;
    for &i in selected {
        if let Some(n) = checks.iter().position(|&c| c == i) {
            started.push(Slot::Check(n));
            if group_started {
                continue;
            }
            group_started = true;
        }
        let permit = tokio::select! {
            p = semaphore.clone().acquire_owned() => Some(p.expect("semaphore is never closed")),
            _ = tokio::time::sleep_until(run.job_deadline) => None,
        };
        let Some(permit) = permit else {
            if !checks.contains(&i) {
                started.push(Slot::Missed);
            }
            continue;
        };
        if checks.contains(&i) {
            let items: Vec<_> = checks
                .iter()
                .map(|&c| job.config.items[c].clone())
                .collect();
            let (base, run) = (base.clone(), run.clone());
            group = Some(tokio::spawn(async move {
                let out = checks_by_database(items, base, run).await;
                drop(permit);
                out
            }));
            continue;
        }
        let item = job.config.items[i].clone();
        let (names, multi) = targets_of(&item);
        let mut runs = Vec::with_capacity(names.len());
        for name in names {
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let predecessor = match &name {
                Some(t) if item.spec.changes_state() => {
                    previous_on_target.insert(t.clone(), done_rx)
                }
                _ => None,
            };
            let cluster = name.as_deref().and_then(|t| run.clusters.of(&base, t));
            runs.push((name, predecessor, done_tx, cluster));
        }
        let (base, run) = (base.clone(), run.clone());
        // At most `max_parallel_targets` of this item's targets at once.
        let per_item = Arc::new(Semaphore::new(if multi {
            run.max_parallel_targets
        } else {
            1
        }));
        started.push(Slot::Item(tokio::spawn(async move {
            let began = Instant::now();
            let mut handles = Vec::with_capacity(runs.len());
            for (name, predecessor, done_tx, cluster) in runs {
                let (base, run, per_item) = (base.clone(), run.clone(), per_item.clone());
                let mut item = item.clone();
                if let Some(t) = name.as_deref().filter(|_| multi) {
                    item.spec.set_target(t);
                }
                handles.push(tokio::spawn(async move {
                    if let Some(p) = predecessor {
                        let _ = p.await;
                    }
                    let _slot = per_item.acquire_owned().await;
                    let _connection = match cluster {
                        Some(c) => c.acquire_owned().await.ok(),
                        None => None,
                    };
                    let result = start_item(&item, &base, &run).await;
                    drop(_connection);
                    let _ = done_tx.send(());
                    (name, result)
                }));
            }
            let mut results = Vec::with_capacity(handles.len());
            for h in handles {
                results.push(h.await.unwrap_or_else(|e| {
                    (None, (Outcome::fail(format!("internal error: {e}")), 0))
                }));
            }
            drop(permit);
            executed(multi, results, began.elapsed().as_millis() as u64)
        })));
    }
    let mut checked: Vec<Option<Executed>> = match group {
        Some(handle) => match handle.await {
            Ok(v) => v.into_iter().map(Some).collect(),
            Err(e) => checks
                .iter()
                .map(|_| Some((Outcome::fail(format!("internal error: {e}")), 0, Vec::new())))
                .collect(),
        },
        None => checks.iter().map(|_| None).collect(),
    };
    let mut out = Vec::with_capacity(started.len());
    for s in started {
        out.push(match s {
            Slot::Missed => not_started(run.job_timeout),
            Slot::Check(n) => checked
                .get_mut(n)
                .and_then(Option::take)
                .unwrap_or_else(|| not_started(run.job_timeout)),
            Slot::Item(handle) => handle
                .await
                .unwrap_or_else(|e| (Outcome::fail(format!("internal error: {e}")), 0, Vec::new())),
        });
    }
    out
}

/// Runs the read-only checks `items` by database: one task per database holds one of its
/// cluster's `max_parallel_targets` slots and one connection ([`SharedConnection`]), runs each
/// check on that database in file order on it, then closes it and frees the slot once the
/// server has closed the connection, so the checks never hold more connections to a cluster
/// than the limit. An item over several databases still runs on at most `max_parallel_targets`
/// of them at once. Returns what each item found, in the order of `items`.
async fn checks_by_database(
    items: Vec<crate::config::ItemConfig>,
    base: ItemCtx,
    run: RunLimits,
) -> Vec<Executed> {
    let plans: Vec<(Vec<Option<String>>, bool)> = items.iter().map(targets_of).collect();
    let per_item: Vec<Arc<Semaphore>> = plans
        .iter()
        .map(|(_, multi)| {
            Arc::new(Semaphore::new(if *multi {
                run.max_parallel_targets
            } else {
                1
            }))
        })
        .collect();
    let mut databases: Vec<String> = Vec::new();
    for name in plans.iter().flat_map(|(names, _)| names.iter().flatten()) {
        if !databases.contains(name) {
            databases.push(name.clone());
        }
    }
    let items = Arc::new(items);
    let mut workers = Vec::with_capacity(databases.len());
    for database in databases {
        let on_it: Vec<usize> = (0..items.len())
            .filter(|&k| plans[k].0.contains(&Some(database.clone())))
            .collect();
        let multi: Vec<bool> = on_it.iter().map(|&k| plans[k].1).collect();
        let per_item: Vec<Arc<Semaphore>> = on_it.iter().map(|&k| per_item[k].clone()).collect();
        let (items, base, run) = (items.clone(), base.clone(), run.clone());
        workers.push(tokio::spawn(async move {
            let found =
                checks_on_database(&database, on_it, multi, per_item, &items, &base, &run).await;
            (database, found)
        }));
    }
    /// An item's run on one database: what it found, when it began and ended.
    type Ran = ((Outcome, u64), Instant, Instant);
    let mut by_item: Vec<HashMap<String, Ran>> = items.iter().map(|_| HashMap::new()).collect();
    for w in workers {
        match w.await {
            Ok((database, found)) => {
                for (k, result, began, ended) in found {
                    by_item[k].insert(database.clone(), (result, began, ended));
                }
            }
            Err(e) => tracing::error!(error = %e, "a database's checks stopped"),
        }
    }
    plans
        .into_iter()
        .zip(by_item)
        .map(|((names, multi), mut found)| {
            let began = found.values().map(|r| r.1).min();
            let ended = found.values().map(|r| r.2).max();
            let ms = match (began, ended) {
                (Some(b), Some(e)) => e.duration_since(b).as_millis() as u64,
                _ => 0,
            };
            let results = names
                .into_iter()
                .map(|name| {
                    let result = name
                        .as_ref()
                        .and_then(|n| found.remove(n))
                        .map(|(r, _, _)| r)
                        .unwrap_or_else(|| {
                            (Outcome::fail("internal error: the check did not run"), 0)
                        });
                    (name, result)
                })
                .collect();
            executed(multi, results, ms)
        })
        .collect()
}

/// How long a check may hold its database's shared connection before the checks after it on
/// that database go on without it, on another connection (within the cluster's limit): a slow
/// check delays the others by at most this.
const SHARE_WAIT: Duration = Duration::from_secs(5);

/// The checks `on_it` (indexes into `items`, file order) on one database: one after another on
/// one shared connection, holding one of the cluster's slots. A check still running after
/// [`SHARE_WAIT`] keeps its connection (and slot) and the next checks go on with another. Every
/// connection is closed, and its slot freed once the server has closed it, before this returns.
async fn checks_on_database(
    database: &str,
    on_it: Vec<usize>,
    multi: Vec<bool>,
    per_item: Vec<Arc<Semaphore>>,
    items: &Arc<Vec<crate::config::ItemConfig>>,
    base: &ItemCtx,
    run: &RunLimits,
) -> Vec<(usize, (Outcome, u64), Instant, Instant)> {
    type Running = tokio::task::JoinHandle<(usize, (Outcome, u64), Instant, Instant)>;
    let mut current: Option<(
        Arc<SharedConnection>,
        Option<tokio::sync::OwnedSemaphorePermit>,
    )> = None;
    let mut left_behind = Vec::new();
    let mut still_running: Vec<(usize, Running)> = Vec::new();
    let mut found = Vec::with_capacity(on_it.len());
    for ((k, multi), per_item) in on_it.into_iter().zip(multi).zip(per_item) {
        let slot = per_item.acquire_owned().await;
        let (shared, _) = match &current {
            Some(c) => c,
            None => {
                let cluster = match run.clusters.of(base, database) {
                    Some(c) => c.acquire_owned().await.ok(),
                    None => None,
                };
                current.insert((Arc::new(SharedConnection::new(database)), cluster))
            }
        };
        let mut ctx = base.clone();
        ctx.shared = Some(shared.clone());
        let mut item = items[k].clone();
        if multi {
            item.spec.set_target(database);
        }
        let run = run.clone();
        let mut task: Running = tokio::spawn(async move {
            let began = Instant::now();
            let result = start_item(&item, &ctx, &run).await;
            drop(slot);
            (k, result, began, Instant::now())
        });
        tokio::select! {
            done = &mut task => found.push(joined_check(k, done)),
            _ = tokio::time::sleep(SHARE_WAIT) => {
                still_running.push((k, task));
                left_behind.extend(current.take());
            }
        }
    }
    for (k, task) in still_running {
        found.push(joined_check(k, task.await));
    }
    for (shared, cluster) in left_behind.into_iter().chain(current) {
        shared.close().await;
        drop(cluster);
    }
    found
}

/// A check's run as [`checks_on_database`] records it, also when its task failed.
fn joined_check(
    k: usize,
    joined: Result<(usize, (Outcome, u64), Instant, Instant), tokio::task::JoinError>,
) -> (usize, (Outcome, u64), Instant, Instant) {
    joined.unwrap_or_else(|e| {
        let now = Instant::now();
        (
            k,
            (Outcome::fail(format!("internal error: {e}")), 0),
            now,
            now,
        )
    })
}

/// Runs one item (on one target) unless the job's deadline is (nearly) reached or the run was
/// cancelled.
async fn start_item(
    item: &crate::config::ItemConfig,
    base: &ItemCtx,
    run: &RunLimits,
) -> (Outcome, u64) {
    let (job_deadline, job_timeout, reason) = (run.job_deadline, run.job_timeout, &run.reason);
    // Timers may fire a hair early: an item that would get less than 50 ms is not started.
    if Instant::now() + Duration::from_millis(50) >= job_deadline {
        (
            Outcome::fail(format!(
                "not started: the job's timeout ({job_timeout}) was reached"
            )),
            0,
        )
    } else if base.cancel.is_cancelled() {
        (
            Outcome::fail(format!("interrupted: not started ({})", reason.get())),
            0,
        )
    } else {
        run_item(item, base, job_deadline, job_timeout, reason).await
    }
}

/// The outcome of an item over several targets: the worst status, a summary counting them
/// ("3 targets: 2 pass, 1 fail"), details grouped by target (those that did not pass first),
/// and data with the counts and `value` (see docs/database.md, "Many databases").
fn combine_targets(targets: &[TargetResult]) -> Outcome {
    let order = [
        Status::Fail,
        Status::Warn,
        Status::Pass,
        Status::Skipped,
        Status::Manual,
    ];
    let count = |s: Status| targets.iter().filter(|t| t.status == s).count();
    let worst = targets
        .iter()
        .map(|t| t.status)
        .max_by_key(|s| s.severity())
        .unwrap_or(Status::Pass);
    let status = if worst.severity() > 0 || targets.iter().all(|t| t.status == worst) {
        worst
    } else {
        Status::Pass
    };
    let counts: Vec<String> = [
        Status::Pass,
        Status::Warn,
        Status::Fail,
        Status::Skipped,
        Status::Manual,
    ]
    .into_iter()
    .filter(|s| count(*s) > 0)
    .map(|s| format!("{} {}", count(s), s.as_str()))
    .collect();
    let summary = format!(
        "{} target{}: {}",
        targets.len(),
        if targets.len() == 1 { "" } else { "s" },
        counts.join(", ")
    );
    let mut details = Vec::new();
    for s in order {
        for t in targets.iter().filter(|t| t.status == s) {
            details.push(format!("{}: {} — {}", t.target, t.status.tag(), t.summary));
            if s.severity() > 0 {
                details.extend(t.details.iter().map(|d| format!("    {d}")));
            }
        }
    }
    let values: Vec<f64> = targets
        .iter()
        .filter_map(|t| t.data.get("value").and_then(serde_json::Value::as_f64))
        .collect();
    let mut data = serde_json::json!({
        "targets": targets.len(),
        "pass": count(Status::Pass),
        "warn": count(Status::Warn),
        "fail": count(Status::Fail),
    });
    if let Some(max) = values.iter().copied().reduce(f64::max) {
        data["value"] = serde_json::json!(max);
    }
    Outcome::new(status, summary)
        .with_details(details)
        .with_data(data)
}

async fn run_item(
    item: &crate::config::ItemConfig,
    base: &ItemCtx,
    job_deadline: Instant,
    job_timeout: crate::base::units::Dur,
    reason: &CancelReason,
) -> (Outcome, u64) {
    let started = Instant::now();
    let limit = item
        .timeout
        .map(|t| t.0)
        .or_else(|| item.spec.default_timeout());
    let (deadline, limit_text) = match limit {
        Some(l) if started + l < job_deadline => (
            started + l,
            format!("its timeout ({})", crate::base::units::Dur(l)),
        ),
        _ => (job_deadline, format!("the job's timeout ({job_timeout})")),
    };
    let item_cancel = base.cancel.child_token();
    let mut ctx = base.for_item(&item.name, item.spec.kind());
    if !item.fleet.is_empty()
        && let Some(t) = item.spec.target()
    {
        ctx.state = ctx.state.for_target(t);
    }
    ctx.cancel = item_cancel.clone();
    ctx.deadline = deadline;
    let spec = item.spec.clone();
    let mut handle = tokio::spawn(async move { spec.run(&ctx).await });

    let run_cancel = base.cancel.clone();
    let outcome = tokio::select! {
        joined = &mut handle => joined_outcome(joined),
        interrupted = async {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => false,
                _ = run_cancel.cancelled() => true,
            }
        } => {
            item_cancel.cancel();
            match tokio::time::timeout(CLEANUP_GRACE, &mut handle).await {
                Ok(joined) => {
                    let mut o = joined_outcome(joined);
                    if interrupted {
                        o.escalate(Status::Fail);
                        let reason = reason.get();
                        o.summary = match o.summary.strip_prefix("interrupted") {
                            Some(rest) if !rest.starts_with(" (") => format!("interrupted ({reason}){rest}"),
                            Some(_) => o.summary,
                            None => format!("interrupted ({reason}): {}", o.summary),
                        };
                    } else if o.status != Status::Fail || o.summary.starts_with("interrupted") {
                        // The deadline, not a shutdown, stopped it: an item that saw its token
                        // cancelled before its own deadline check says "interrupted"; say why.
                        o = Outcome::fail(format!("timed out after {limit_text}")).with_details(o.details);
                    }
                    o
                }
                Err(_) => {
                    handle.abort();
                    if interrupted {
                        Outcome::fail(format!("interrupted ({})", reason.get()))
                    } else {
                        Outcome::fail(format!("timed out after {}s: {limit_text} was reached", deadline.duration_since(started).as_secs()))
                    }
                }
            }
        }
    };
    (outcome, started.elapsed().as_millis() as u64)
}

fn joined_outcome(joined: Result<Outcome, tokio::task::JoinError>) -> Outcome {
    match joined {
        Ok(o) => o,
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Outcome::fail(format!("internal error: the check panicked: {msg}"))
        }
        Err(_) => Outcome::fail("interrupted: the check was cancelled"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_check_becomes_a_failed_item_with_the_reason() {
        let handle = tokio::spawn(async {
            if std::hint::black_box(true) {
                panic!("index out of bounds: the len is 0");
            }
            Outcome::pass("unreachable")
        });
        let o = joined_outcome(handle.await);
        assert_eq!(o.status, Status::Fail);
        assert_eq!(
            o.summary,
            "internal error: the check panicked: index out of bounds: the len is 0"
        );
    }
}
