//! The state on disk: one SQLite database (`state.db`, WAL) in `state_dir`.
//!
//! Tables: `runs` (every run with its report JSON), `locks` (one row per running job), `slots`
//! (the daemon's bookkeeping of fired, skipped and missed slots), `outbox` (one row per report
//! and channel), `scan_offsets` (where `log_scan` stopped reading). Schema changes are
//! migrations (rusqlite_migration, `user_version`).
//!
//! Two processes on one host (the daemon and a manual `run-job`) share the file safely: every
//! change is a transaction, writers wait up to 10 s for each other (`busy_timeout`), and a job
//! lock is a row inserted under `BEGIN IMMEDIATE`. A lock whose process is gone (killed with
//! `kill -9`, host rebooted) is taken over instead of blocking forever.
//!
//! Who holds a lock, a `running` run or an outbox claim is a [`Holder`]: host name, the kernel's
//! boot id, pid and the process's start time. A pid alone lies: after a reboot it belongs to
//! another process (in a container the daemon is PID 1 in every life), and `kill(pid, 0)`
//! answers EPERM for anyone else's process. A holder is alive only when the boot id is this
//! kernel's and the process with that pid started at the recorded time. The host name is for
//! people; the state folder belongs to one host (one kernel, one PID namespace: the daemon and
//! the commands run beside it).
//!
//! A finished run is one transaction: its report, the outbox rows of its channels and the
//! `log_scan` offsets it advanced ([`Store::finish_run`]). A crash leaves either all of them or
//! none (the run is then marked `interrupted` and its lines are read again next time).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};
use serde::Serialize;

use crate::report::{Ack, DeliveryStatus, NotificationStatus, Report};

const MIGRATIONS: &[M<'static>] = &[
    M::up(
        "CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        job TEXT NOT NULL,
        trigger TEXT NOT NULL,
        scheduled_for TEXT,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        status TEXT NOT NULL,
        pid INTEGER NOT NULL,
        host TEXT NOT NULL,
        report TEXT
    );
    CREATE INDEX runs_job_started ON runs(job, started_at);
    CREATE TABLE locks (
        job TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        pid INTEGER NOT NULL,
        host TEXT NOT NULL,
        acquired_at TEXT NOT NULL
    );
    CREATE TABLE slots (
        job TEXT NOT NULL,
        slot TEXT NOT NULL,
        state TEXT NOT NULL,
        run_id TEXT,
        recorded_at TEXT NOT NULL,
        PRIMARY KEY (job, slot)
    );
    CREATE TABLE outbox (
        run_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        created_at TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT,
        last_error TEXT,
        sent_at TEXT,
        PRIMARY KEY (run_id, channel)
    );
    CREATE TABLE scan_offsets (
        job TEXT NOT NULL,
        item TEXT NOT NULL,
        file TEXT NOT NULL,
        inode INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (job, item, file)
    );",
    ),
    // log_scan: a hash of the file's first bytes, because inodes are reused after rotation.
    M::up("ALTER TABLE scan_offsets ADD COLUMN fingerprint INTEGER;"),
    // Holders identified by boot id and process start time, not by pid alone (rows written
    // before keep NULL there and are judged by pid and the lock's time, see Holder::alive).
    M::up(
        "ALTER TABLE locks ADD COLUMN boot_id TEXT;
         ALTER TABLE locks ADD COLUMN start_ticks INTEGER;
         ALTER TABLE runs ADD COLUMN boot_id TEXT;
         ALTER TABLE runs ADD COLUMN start_ticks INTEGER;
         ALTER TABLE outbox ADD COLUMN claim_host TEXT;
         ALTER TABLE outbox ADD COLUMN claim_boot_id TEXT;
         ALTER TABLE outbox ADD COLUMN claim_pid INTEGER;
         ALTER TABLE outbox ADD COLUMN claim_start_ticks INTEGER;",
    ),
    // Whether a run can be the "previous comparable run" (SPEC 9.1): 0 for `--dry-run` and
    // `--item` runs. Rows written before keep NULL: their report says whether they were dry
    // runs; whether they were limited by `--item` was not recorded, so they count as full runs
    // (what they were taken for before).
    M::up("ALTER TABLE runs ADD COLUMN comparable INTEGER;"),
    // Outbox entries keyed by (run, channel, event): a channel may queue several entries for
    // one run (one event per bad item, say), each with its own payload. Today's channels queue
    // one entry per run with the empty event key and no payload, so the rows keep their meaning.
    M::up(
        "CREATE TABLE outbox_v2 (
        run_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        event TEXT NOT NULL DEFAULT '',
        payload TEXT,
        created_at TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT,
        last_error TEXT,
        sent_at TEXT,
        claim_host TEXT,
        claim_boot_id TEXT,
        claim_pid INTEGER,
        claim_start_ticks INTEGER,
        PRIMARY KEY (run_id, channel, event)
    );
    INSERT INTO outbox_v2 (run_id, channel, event, created_at, state, attempts, next_attempt_at,
        last_error, sent_at, claim_host, claim_boot_id, claim_pid, claim_start_ticks)
    SELECT run_id, channel, '', created_at, state, attempts, next_attempt_at, last_error, sent_at,
        claim_host, claim_boot_id, claim_pid, claim_start_ticks FROM outbox;
    DROP TABLE outbox;
    ALTER TABLE outbox_v2 RENAME TO outbox;",
    ),
    // Acknowledgements (SPEC 9.2): one row per `runbook ack` / `POST /runs/<id>/ack`, joined
    // into the report when it is read (the report row itself is never rewritten). And the
    // escalation steps already taken (SPEC 9.1 `escalate`): one row per run and step, written
    // with the step's outbox entries in one transaction, so a step is taken once, across
    // restarts.
    M::up(
        "CREATE TABLE acks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL,
        item TEXT NOT NULL,
        by TEXT NOT NULL,
        at TEXT NOT NULL,
        note TEXT
    );
    CREATE INDEX acks_run ON acks(run_id);
    CREATE TABLE escalations (
        run_id TEXT NOT NULL,
        step INTEGER NOT NULL,
        job TEXT NOT NULL,
        channels TEXT NOT NULL,
        sent_at TEXT NOT NULL,
        PRIMARY KEY (run_id, step)
    );",
    ),
];

/// A handle on the state database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    /// The state folder (for messages).
    pub dir: PathBuf,
    host: String,
}

/// Result of [`Store::try_lock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lock {
    Acquired {
        /// Set when a lock left by a dead process was taken over.
        stale_taken_over: Option<String>,
    },
    Held {
        run_id: String,
        pid: i64,
        host: String,
        since: String,
        /// The holding run's trigger (`manual`, `schedule`, `catch_up`), when it is recorded.
        trigger: Option<String>,
    },
}

/// Where `log_scan` stopped reading a file: committed with the report of the run that read up
/// to it ([`Store::finish_run`]). Defined with the items, which produce it.
pub use crate::items::state::ScanOffset;

/// One line of `history`.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub job: String,
    pub trigger: String,
    pub scheduled_for: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// `running`, `pass`, `warn`, `fail`, `interrupted`.
    pub status: String,
    pub duration_ms: Option<u64>,
    pub counts: Option<crate::report::Counts>,
    pub host: String,
}

/// Why an acknowledgement was not recorded ([`Store::ack`]).
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    /// The run does not exist or is not the job's: exit 2, HTTP 404. The message says which.
    #[error("{0}; nothing was recorded")]
    NotFound(String),
    /// The item does not exist in the run, or a field is missing: exit 2, HTTP 400.
    #[error("{0}; nothing was recorded")]
    BadInput(String),
    /// The state database failed.
    #[error("{0:#}")]
    Store(anyhow::Error),
}

/// The state of an outbox entry, stored as its serde name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboxState {
    /// Waiting for its next attempt.
    Pending,
    /// Claimed by a sender until `next_attempt_at`.
    Sending,
    /// Delivered.
    Sent,
    /// Given up after `outbox_max_age`.
    Dropped,
}

impl OutboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Sending => "sending",
            OutboxState::Sent => "sent",
            OutboxState::Dropped => "dropped",
        }
    }

    /// What a report's `notifications` says about a delivery in this state.
    pub fn delivery_status(self) -> DeliveryStatus {
        match self {
            OutboxState::Pending | OutboxState::Sending => DeliveryStatus::Queued,
            OutboxState::Sent => DeliveryStatus::Sent,
            OutboxState::Dropped => DeliveryStatus::Failed,
        }
    }
}

impl std::fmt::Display for OutboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl rusqlite::types::FromSql for OutboxState {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        match v.as_str()? {
            "pending" => Ok(OutboxState::Pending),
            "sending" => Ok(OutboxState::Sending),
            "sent" => Ok(OutboxState::Sent),
            "dropped" => Ok(OutboxState::Dropped),
            other => Err(rusqlite::types::FromSqlError::Other(
                format!("unknown outbox state {other:?}").into(),
            )),
        }
    }
}

impl rusqlite::ToSql for OutboxState {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

/// What identifies one outbox entry: the run, the channel, and an event key (empty for the
/// one report delivery of today's channels; a notifier that sends one event per bad item
/// queues one entry per item, each with its key and payload).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct OutboxKey {
    pub run_id: String,
    pub channel: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub event: String,
}

impl OutboxKey {
    /// The entry that delivers a run's report to a channel.
    pub fn report(run_id: &str, channel: &str) -> OutboxKey {
        OutboxKey {
            run_id: run_id.into(),
            channel: channel.into(),
            event: String::new(),
        }
    }
}

impl std::fmt::Display for OutboxKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "run {} channel {}", self.run_id, self.channel)?;
        if !self.event.is_empty() {
            write!(f, " event {}", self.event)?;
        }
        Ok(())
    }
}

/// A sender's claim on an outbox entry ([`Store::outbox_claim`]): the lease's end, which the
/// `outbox_mark_*` calls must present, so a sender whose lease was taken over cannot mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim(String);

/// One outbox row.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxEntry {
    #[serde(flatten)]
    pub key: OutboxKey,
    /// The entry's own payload (JSON), for channels that queue events; None for a report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    pub created_at: String,
    pub state: OutboxState,
    pub attempts: i64,
    /// For a `sending` row: when its claim's lease ends.
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    pub job: Option<String>,
    /// The process that claimed a `sending` row, when recorded.
    #[serde(skip)]
    pub claimed_by: Option<Holder>,
}

impl OutboxEntry {
    /// The claim a `sending` row holds (for taking over from a dead sender).
    pub fn held_claim(&self) -> Option<Claim> {
        (self.state == OutboxState::Sending)
            .then(|| self.next_attempt_at.clone().map(Claim))
            .flatten()
    }
}

/// What [`Store::prune`] removed (and kept).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Runs deleted, with their reports.
    pub runs: usize,
    /// Their outbox rows (all delivered or dropped).
    pub outbox: usize,
    /// Slot records deleted (the newest of each job is always kept: it is the loop's cursor).
    pub slots: usize,
    /// `log_scan` positions in files not read since the cut-off.
    pub scan_offsets: usize,
    /// Runs older than the cut-off kept because a notification of theirs is still pending.
    pub kept_pending: usize,
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A process that holds a lock, a run or an outbox claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The host name it ran on (for messages).
    pub host: String,
    /// `/proc/sys/kernel/random/boot_id` of its kernel; None in rows written before it was
    /// recorded (or where the kernel does not say).
    pub boot_id: Option<String>,
    pub pid: i64,
    /// When the process started, in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
    pub start_ticks: Option<i64>,
}

impl Holder {
    /// This process.
    pub fn me(host: &str) -> Holder {
        let pid = std::process::id() as i64;
        Holder {
            host: host.to_string(),
            boot_id: boot_id(),
            pid,
            start_ticks: process_start_ticks(pid),
        }
    }

    /// Whether the holder still runs. `since` (RFC 3339), when the row was written, judges rows
    /// without a boot id: a process with that pid that started after it is another process.
    pub fn alive(&self, since: Option<&str>) -> bool {
        if self.pid <= 0 {
            return false;
        }
        let ours = boot_id();
        match (&self.boot_id, &ours) {
            // Written under another boot: whatever has this pid now is another process.
            (Some(theirs), Some(ours)) if theirs != ours => false,
            (Some(_), _) => match (process_start_ticks(self.pid), self.start_ticks) {
                (Some(now), Some(then)) => now == then,
                (Some(_), None) => true,
                // Not visible in /proc (hidepid): ask the kernel; EPERM means it exists.
                (None, _) => kill_says_alive(self.pid),
            },
            (None, _) => match process_start_ticks(self.pid) {
                Some(ticks) => {
                    let started = process_started_at(ticks);
                    let since = since.and_then(|s| DateTime::parse_from_rfc3339(s).ok());
                    match (started, since) {
                        // One second of slack for the rounding of boot time and ticks.
                        (Some(started), Some(since)) => {
                            started <= since.with_timezone(&Utc) + chrono::Duration::seconds(1)
                        }
                        _ => true,
                    }
                }
                None => kill_says_alive(self.pid),
            },
        }
    }

    /// `host NAME, process PID`, for messages.
    pub fn describe(&self) -> String {
        format!("process {} on {}", self.pid, self.host)
    }
}

fn kill_says_alive(pid: i64) -> bool {
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// This kernel's boot id (changes at every boot; shared by the containers on one kernel).
pub fn boot_id() -> Option<String> {
    static BOOT_ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .clone()
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks since boot. (Still
/// readable under systemd's `ProcSubset=pid`; None when there is no such process to see.)
pub fn process_start_ticks(pid: i64) -> Option<i64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces and ')': fields resume
    // after the last ')', at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The wall-clock time of `ticks` since boot (`btime` of /proc/stat; USER_HZ is 100 on Linux).
fn process_started_at(ticks: i64) -> Option<DateTime<Utc>> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: i64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    DateTime::from_timestamp(btime + ticks / 100, ((ticks % 100) * 10_000_000) as u32)
}

/// True when a process with this pid exists on this host (a row without boot id or start time).
pub fn pid_alive(pid: i64) -> bool {
    Holder {
        host: String::new(),
        boot_id: None,
        pid,
        start_ticks: None,
    }
    .alive(None)
}

impl Store {
    /// Opens (creating and migrating) `dir/state.db`.
    pub fn open(dir: &Path, host: &str) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create state_dir {}", dir.display()))?;
        let path = dir.join("state.db");
        // Two processes opening a fresh state folder at once (the daemon starting while an
        // operator runs `history`) would race on switching to WAL and on creating the tables,
        // and the loser fails with "database is locked" (switching the journal mode does not
        // wait on the busy timeout). An advisory lock on a file beside the database makes the
        // set-up one process at a time; it is held for milliseconds.
        let lock_path = dir.join("state.db.open-lock");
        let open_lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot create {}", lock_path.display()))?;
        open_lock
            .lock()
            .with_context(|| format!("cannot lock {}", lock_path.display()))?;
        let mut conn = Connection::open(&path)
            .with_context(|| format!("cannot open state database {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: in WAL mode every commit is fsynced, so a committed report (and its outbox rows
        // and scan offsets) survives a power loss; NORMAL could roll back the newest commits
        // after a report was already e-mailed. A run commits a handful of times: the fsyncs
        // cost nothing that matters (docs/daemon.md, "State and durability").
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Migrations::from_slice(MIGRATIONS)
            .to_latest(&mut conn)
            .with_context(|| format!("cannot migrate state database {}", path.display()))?;
        drop(open_lock);
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            dir: dir.to_path_buf(),
            host: host.to_string(),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| anyhow::anyhow!("state database handle poisoned"))?;
        f(&mut conn)
            .with_context(|| format!("state database {}", self.dir.join("state.db").display()))
    }

    /// Takes the job's lock for `run_id`, unless a live process holds it.
    pub fn try_lock(&self, job: &str, run_id: &str) -> Result<Lock> {
        let me = Holder::me(&self.host);
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let held: Option<(String, Holder, String, Option<String>)> = tx
                .query_row(
                    "SELECT l.run_id, l.pid, l.host, l.acquired_at, l.boot_id, l.start_ticks, r.trigger
                     FROM locks l LEFT JOIN runs r ON r.run_id = l.run_id WHERE l.job = ?1",
                    [job],
                    |r| {
                        Ok((
                            r.get(0)?,
                            Holder { pid: r.get(1)?, host: r.get(2)?, boot_id: r.get(4)?, start_ticks: r.get(5)? },
                            r.get(3)?,
                            r.get(6)?,
                        ))
                    },
                )
                .optional()?;
            let mut stale = None;
            if let Some((held_run, holder, since, trigger)) = held {
                if holder.alive(Some(&since)) {
                    return Ok(Lock::Held { run_id: held_run, pid: holder.pid, host: holder.host, since, trigger });
                }
                // The holder died without releasing: its run was interrupted.
                tx.execute(
                    "UPDATE runs SET status = 'interrupted', finished_at = ?2 WHERE run_id = ?1 AND status = 'running'",
                    params![held_run, now()],
                )?;
                tx.execute("DELETE FROM locks WHERE job = ?1", [job])?;
                let why = match (&holder.boot_id, boot_id()) {
                    (Some(b), Some(ours)) if *b != ours => "it ran before the last reboot",
                    _ => "that process is gone",
                };
                stale = Some(format!(
                    "took over the lock of run {held_run} ({}, since {since}): {why}",
                    holder.describe()
                ));
            }
            tx.execute(
                "INSERT INTO locks (job, run_id, pid, host, acquired_at, boot_id, start_ticks) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![job, run_id, me.pid, me.host, now(), me.boot_id, me.start_ticks],
            )?;
            tx.commit()?;
            Ok(Lock::Acquired { stale_taken_over: stale })
        })
    }

    /// Releases the job's lock if `run_id` holds it.
    pub fn unlock(&self, job: &str, run_id: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM locks WHERE job = ?1 AND run_id = ?2",
                params![job, run_id],
            )
            .map(|_| ())
        })
    }

    /// The run currently holding the job's lock, if its process is alive.
    pub fn lock_holder(&self, job: &str) -> Result<Option<(String, i64)>> {
        let row: Option<(String, Holder, String)> = self.with(|c| {
            c.query_row(
                "SELECT run_id, pid, host, boot_id, start_ticks, acquired_at FROM locks WHERE job = ?1",
                [job],
                id_holder_since,
            )
            .optional()
        })?;
        Ok(row
            .filter(|(_, h, since)| h.alive(Some(since)))
            .map(|(r, h, _)| (r, h.pid)))
    }

    /// Records a run that starts now.
    pub fn insert_run(
        &self,
        run_id: &str,
        job: &str,
        trigger: &str,
        scheduled_for: Option<&str>,
        started_at: &DateTime<Utc>,
        comparable: bool,
    ) -> Result<()> {
        let me = Holder::me(&self.host);
        self.with(|c| {
            c.execute(
                "INSERT INTO runs (run_id, job, trigger, scheduled_for, started_at, status, pid, host, boot_id, start_ticks, comparable) VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7, ?8, ?9, ?10)",
                params![run_id, job, trigger, scheduled_for, started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), me.pid, me.host, me.boot_id, me.start_ticks, comparable],
            )
            .map(|_| ())
        })
    }

    /// Stores a finished run's report (and status) together with what must not outlive or
    /// predate it, in one transaction: the outbox entries of its deliveries (so a stored report
    /// is always queued for delivery, even when the process dies right after) and the
    /// `log_scan` offsets its items advanced (so lines are never skipped: either the report
    /// that counted them is stored, or the offsets stay where they were). The report's row is
    /// written here once and never changed: delivery state lives in the outbox rows, and
    /// reading a report brings its `notifications` up to date from them.
    pub fn finish_run(
        &self,
        report: &Report,
        offsets: &[ScanOffset],
        outbox: &[OutboxKey],
    ) -> Result<()> {
        let entries: Vec<(OutboxKey, Option<String>)> =
            outbox.iter().map(|k| (k.clone(), None)).collect();
        self.finish_run_with_events(report, offsets, &entries)
    }

    /// [`Store::finish_run`] with outbox entries that carry their own payload (a per-item
    /// channel's events: one entry per event key).
    pub fn finish_run_with_events(
        &self,
        report: &Report,
        offsets: &[ScanOffset],
        outbox: &[(OutboxKey, Option<String>)],
    ) -> Result<()> {
        let json = serde_json::to_string(report)?;
        let finished = report
            .finished_at
            .with_timezone(&Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                "UPDATE runs SET status = ?2, finished_at = ?3, report = ?4 WHERE run_id = ?1",
                params![report.run_id, report.status.as_str(), finished, json],
            )?;
            for o in offsets {
                upsert_scan_offset(&tx, o)?;
            }
            for (key, payload) in outbox {
                insert_outbox_row(&tx, key, payload.as_deref())?;
            }
            tx.commit()
        })
    }

    /// A stored report's JSON as users see it (see [`with_deliveries`]).
    fn load_report(&self, json: &str) -> Result<Report> {
        let report: Report =
            serde_json::from_str(json).context("stored report is not valid JSON")?;
        self.with(|c| as_shown(c, report))
    }

    /// Marks runs left `running` by dead processes of this host as `interrupted`. Returns them.
    pub fn mark_interrupted(&self) -> Result<Vec<String>> {
        let host = self.host.clone();
        let rows: Vec<(String, Holder, String)> = self.with(|c| {
            // This host's runs, and any run recorded with a boot id whatever host name it had
            // (a container gets a new one each time).
            let mut st = c.prepare(
                "SELECT run_id, pid, host, boot_id, start_ticks, started_at FROM runs
                 WHERE status = 'running' AND (host = ?1 OR boot_id IS NOT NULL)",
            )?;
            st.query_map(params![host], id_holder_since)?.collect()
        })?;
        let dead: Vec<String> = rows
            .into_iter()
            .filter(|(_, h, since)| !h.alive(Some(since)))
            .map(|(r, _, _)| r)
            .collect();
        for run in &dead {
            self.with(|c| {
                c.execute(
                    "UPDATE runs SET status = 'interrupted', finished_at = ?2 WHERE run_id = ?1",
                    params![run, now()],
                )?;
                c.execute("DELETE FROM locks WHERE run_id = ?1", [run])
                    .map(|_| ())
            })?;
        }
        Ok(dead)
    }

    /// The newest finished report of a job (the "previous run" for `change`).
    pub fn last_report(&self, job: &str) -> Result<Option<Report>> {
        let json: Option<String> = self.with(|c| {
            c.query_row(
                "SELECT report FROM runs WHERE job = ?1 AND report IS NOT NULL ORDER BY started_at DESC LIMIT 1",
                [job],
                |r| r.get(0),
            )
            .optional()
        })?;
        json.map(|j| self.load_report(&j)).transpose()
    }

    /// The previous comparable run of a job (SPEC 9.1): its newest finished report that was
    /// neither a `--dry-run` nor limited by `--item`. What `change` and `on = "change"`
    /// compare with. Runs stored before this was recorded count as full runs unless their
    /// report says they were dry runs.
    pub fn last_comparable_report(&self, job: &str) -> Result<Option<Report>> {
        let rows: Vec<String> = self.with(|c| {
            let mut st = c.prepare(
                "SELECT report FROM runs WHERE job = ?1 AND report IS NOT NULL
                 AND COALESCE(comparable, 1) = 1 ORDER BY started_at DESC",
            )?;
            st.query_map([job], |r| r.get(0))?.collect()
        })?;
        for json in rows {
            let report: Report =
                serde_json::from_str(&json).context("stored report is not valid JSON")?;
            if !report.dry_run {
                return self.with(|c| as_shown(c, report)).map(Some);
            }
        }
        Ok(None)
    }

    /// What the item `item` of kind `kind` found in the newest `limit` stored reports of `job`
    /// (newest first; reports without it skipped): its status and data, and each target's.
    /// Read with SQLite's JSON functions, so only this item's part of each report is parsed (a
    /// job's report over many databases is large; items ask for this once per target).
    pub fn earlier_item_results(
        &self,
        job: &str,
        item: &str,
        kind: &str,
        limit: usize,
    ) -> Result<Vec<EarlierItem>> {
        type Row = (String, String, Option<String>, Option<String>);
        let rows: Vec<Row> = self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT r.run_id, json_extract(i.value, '$.status'),
                        json_extract(i.value, '$.data'), json_extract(i.value, '$.targets')
                   FROM (SELECT run_id, started_at, report FROM runs
                          WHERE job = ?1 AND report IS NOT NULL
                          ORDER BY started_at DESC LIMIT ?4) r,
                        json_each(r.report, '$.items') i
                  WHERE json_extract(i.value, '$.name') = ?2
                    AND json_extract(i.value, '$.kind') = ?3
                  ORDER BY r.started_at DESC",
            )?;
            st.query_map(params![job, item, kind, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect()
        })?;
        #[derive(serde::Deserialize)]
        struct OnTarget {
            target: String,
            status: crate::base::status::Status,
            #[serde(default)]
            data: serde_json::Value,
        }
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (run_id, status, data, targets) in rows {
            // One entry per report (item names are unique within a job).
            if !seen.insert(run_id.clone()) {
                continue;
            }
            let Ok(status) = serde_json::from_value::<crate::base::status::Status>(
                serde_json::Value::String(status),
            ) else {
                continue;
            };
            let data = data
                .and_then(|d| serde_json::from_str(&d).ok())
                .unwrap_or(serde_json::Value::Null);
            let targets: Vec<OnTarget> = targets
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            out.push(EarlierItem {
                targets: targets
                    .into_iter()
                    .map(|t| {
                        let on = crate::items::state::EarlierResult {
                            run_id: run_id.clone(),
                            status: t.status,
                            data: t.data,
                        };
                        (t.target, on)
                    })
                    .collect(),
                item: crate::items::state::EarlierResult {
                    run_id,
                    status,
                    data,
                },
            });
        }
        Ok(out)
    }

    /// A stored report by run id (a unique prefix is enough).
    pub fn report(&self, run_id: &str) -> Result<Option<Report>> {
        let pattern = format!("{}%", run_id.replace(['%', '_'], ""));
        let rows: Vec<Option<String>> = self.with(|c| {
            let mut st = c.prepare("SELECT report FROM runs WHERE run_id LIKE ?1 LIMIT 2")?;
            st.query_map([pattern], |r| r.get(0))?.collect()
        })?;
        match rows.as_slice() {
            [Some(j)] => self.load_report(j).map(Some),
            [None] => {
                anyhow::bail!("run {run_id} has no report (it is still running or was interrupted)")
            }
            [] => Ok(None),
            _ => anyhow::bail!("run id prefix {run_id} is ambiguous"),
        }
    }

    /// The series of one item's number over a job's stored runs (SPEC 9.3): the newest `limit`
    /// points, returned oldest first, and how many runs were skipped on the way (the item absent,
    /// or the field missing or not a number). `field` is a path under the item's `data`
    /// (`value`, `used_pct`, `disks.0.used_percent`), checked by [`trend_field_path`]. Dry runs
    /// are left out. The JSON is read by SQLite (`json_extract`), newest first along the
    /// `(job, started_at)` index, and stepping stops once `limit` points are found.
    pub fn trend(
        &self,
        job: &str,
        item: &str,
        field: &str,
        limit: usize,
    ) -> Result<(Vec<TrendPoint>, usize)> {
        self.trend_on(job, item, None, field, limit)
    }

    /// [`Store::trend`], or with `target` the series of one target of an item over several
    /// (SPEC 9.5): the field read from that target's entry in the item's `targets[]`
    /// (`targets[?].data.<field>`). A run where the item has no entry for the target (the
    /// target was added later, or the item had a single target then) is skipped like one
    /// without the field. The target name is a bound parameter.
    pub fn trend_on(
        &self,
        job: &str,
        item: &str,
        target: Option<&str>,
        field: &str,
        limit: usize,
    ) -> Result<(Vec<TrendPoint>, usize)> {
        let path = trend_field_path(field)?;
        self.with(|c| {
            let mut st;
            let mut rows = match target {
                None => {
                    st = c.prepare_cached(
                        "SELECT r.run_id, json_extract(r.report, '$.started_at'),
                           (SELECT CASE WHEN json_type(j.value, ?3) IN ('integer', 'real')
                                        THEN json_extract(j.value, ?3) END
                              FROM json_each(r.report, '$.items') j
                             WHERE json_extract(j.value, '$.name') = ?2 LIMIT 1)
                         FROM runs r
                         WHERE r.job = ?1 AND r.report IS NOT NULL
                           AND coalesce(json_extract(r.report, '$.dry_run'), 0) = 0
                         ORDER BY r.started_at DESC",
                    )?;
                    st.query(params![job, item, path])?
                }
                Some(target) => {
                    // The same, one level down: the target's entry of the item's `targets[]`.
                    st = c.prepare_cached(
                        "SELECT r.run_id, json_extract(r.report, '$.started_at'),
                           (SELECT CASE WHEN json_type(t.value, ?3) IN ('integer', 'real')
                                        THEN json_extract(t.value, ?3) END
                              FROM json_each(r.report, '$.items') j,
                                   json_each(j.value, '$.targets') t
                             WHERE json_extract(j.value, '$.name') = ?2
                               AND json_extract(t.value, '$.target') = ?4 LIMIT 1)
                         FROM runs r
                         WHERE r.job = ?1 AND r.report IS NOT NULL
                           AND coalesce(json_extract(r.report, '$.dry_run'), 0) = 0
                         ORDER BY r.started_at DESC",
                    )?;
                    st.query(params![job, item, path, target])?
                }
            };
            let mut points = Vec::new();
            let mut skipped = 0;
            while points.len() < limit {
                let Some(r) = rows.next()? else { break };
                match r.get::<_, Option<f64>>(2)? {
                    Some(value) => points.push(TrendPoint {
                        run_id: r.get(0)?,
                        started_at: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                        value,
                    }),
                    None => skipped += 1,
                }
            }
            points.reverse();
            Ok((points, skipped))
        })
    }

    /// Fills `report.history` (the HTML report's charts, SPEC 9.3): for each of its items with a
    /// number in `data.value`, that number in the job's comparable runs (neither `--dry-run`
    /// nor `--item`, SPEC 9.1) before this one, at most `CHART_POINTS - 1`, oldest first, so
    /// that with this run's own value a chart has up to [`CHART_POINTS`]. "Before" is by the
    /// stored start of this run, so a report shown again later (status page, `report`, an
    /// outbox retry) gets the same chart as when it was first sent. One query: the newest
    /// comparable runs along the `(job, started_at)` index, their items read by SQLite.
    pub fn fill_history(&self, report: &mut Report) -> Result<()> {
        let wanted: std::collections::HashSet<&str> = report
            .items
            .iter()
            .filter(|i| i.data.get("value").and_then(|v| v.as_f64()).is_some())
            .map(|i| i.name.as_str())
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let started = report
            .started_at
            .with_timezone(&Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let rows: Vec<(String, String, f64)> = self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT r.started_at, json_extract(j.value, '$.name'), json_extract(j.value, '$.data.value')
                   FROM (SELECT started_at, report FROM runs
                          WHERE job = ?1 AND report IS NOT NULL AND run_id <> ?2
                            AND started_at < ?3 AND COALESCE(comparable, 1) = 1
                            AND coalesce(json_extract(report, '$.dry_run'), 0) = 0
                          ORDER BY started_at DESC LIMIT ?4) r,
                        json_each(r.report, '$.items') j
                  WHERE json_type(j.value, '$.data.value') IN ('integer', 'real')",
            )?;
            st.query_map(
                params![
                    report.job,
                    report.run_id,
                    started,
                    (crate::report::CHART_POINTS - 1) as i64
                ],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?
            .collect()
        })?;
        let mut rows: Vec<_> = rows
            .into_iter()
            .filter(|(_, name, _)| wanted.contains(name.as_str()))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        report.history.clear();
        for (_, name, value) in rows {
            report.history.entry(name).or_default().push(value);
        }
        Ok(())
    }

    /// True when a stored report of `job` has an item named `item` (for "unknown item" errors
    /// about items since removed from the config).
    pub fn item_ever_stored(&self, job: &str, item: &str) -> Result<bool> {
        self.with(|c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM runs r, json_each(r.report, '$.items') j
                  WHERE r.job = ?1 AND r.report IS NOT NULL AND json_extract(j.value, '$.name') = ?2)",
                params![job, item],
                |r| r.get(0),
            )
        })
    }

    /// True when a stored run of `job` has item `item` with an entry for `target` in its
    /// `targets[]` (SPEC 9.5).
    pub fn item_target_ever_stored(&self, job: &str, item: &str, target: &str) -> Result<bool> {
        self.with(|c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM runs r, json_each(r.report, '$.items') j,
                                              json_each(j.value, '$.targets') t
                  WHERE r.job = ?1 AND r.report IS NOT NULL AND json_extract(j.value, '$.name') = ?2
                    AND json_extract(t.value, '$.target') = ?3)",
                params![job, item, target],
                |r| r.get(0),
            )
        })
    }

    /// True when the store holds a run of `job`.
    pub fn job_ever_stored(&self, job: &str) -> Result<bool> {
        self.with(|c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM runs WHERE job = ?1)",
                [job],
                |r| r.get(0),
            )
        })
    }

    /// Recent runs, newest first.
    pub fn history(&self, job: Option<&str>, limit: usize) -> Result<Vec<RunSummary>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT run_id, job, trigger, scheduled_for, started_at, finished_at, status, report, host FROM runs
                 WHERE (?1 IS NULL OR job = ?1) ORDER BY started_at DESC LIMIT ?2",
            )?;
            st.query_map(params![job, limit as i64], |r| {
                let report: Option<String> = r.get(7)?;
                let parsed: Option<Report> = report.and_then(|j| serde_json::from_str(&j).ok());
                Ok(RunSummary {
                    run_id: r.get(0)?,
                    job: r.get(1)?,
                    trigger: r.get(2)?,
                    scheduled_for: r.get(3)?,
                    started_at: r.get(4)?,
                    finished_at: r.get(5)?,
                    status: r.get(6)?,
                    duration_ms: parsed.as_ref().map(|p| p.duration_ms),
                    counts: parsed.map(|p| p.counts),
                    host: r.get(8)?,
                })
            })?
            .collect()
        })
    }

    /// Records what happened to a slot: `running`, `done`, `skipped` (job still running), `missed`,
    /// `elsewhere`, `failed`, `interrupted` (the run lost its cluster lease).
    pub fn record_slot(
        &self,
        job: &str,
        slot: &DateTime<Utc>,
        state: &str,
        run_id: Option<&str>,
    ) -> Result<()> {
        let slot = slot.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.with(|c| {
            c.execute(
                "INSERT INTO slots (job, slot, state, run_id, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (job, slot) DO UPDATE SET state = excluded.state, run_id = COALESCE(excluded.run_id, slots.run_id)",
                params![job, slot, state, run_id, now()],
            )
            .map(|_| ())
        })
    }

    /// The recorded state of one slot, if any.
    pub fn slot_state(&self, job: &str, slot: &DateTime<Utc>) -> Result<Option<String>> {
        let slot = slot.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.with(|c| {
            c.query_row(
                "SELECT state FROM slots WHERE job = ?1 AND slot = ?2",
                params![job, slot],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// The newest recorded slot of a job.
    pub fn last_slot(&self, job: &str) -> Result<Option<DateTime<Utc>>> {
        let s: Option<String> = self.with(|c| {
            c.query_row("SELECT MAX(slot) FROM slots WHERE job = ?1", [job], |r| {
                r.get(0)
            })
        })?;
        Ok(s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
            .map(|d| d.with_timezone(&Utc)))
    }

    /// Slots of a job in a state (e.g. `skipped`, `missed`) recorded after `after`, oldest first.
    pub fn slots_in_state_since(
        &self,
        job: &str,
        state: &str,
        after: Option<&DateTime<Utc>>,
    ) -> Result<Vec<DateTime<Utc>>> {
        let after = after
            .map(|a| a.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        let rows: Vec<String> = self.with(|c| {
            let mut st = c.prepare(
                "SELECT slot FROM slots WHERE job = ?1 AND state = ?2 AND slot > ?3 ORDER BY slot",
            )?;
            st.query_map(params![job, state, after], |r| r.get(0))?
                .collect()
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|s| DateTime::parse_from_rfc3339(&s).ok())
            .map(|d| d.with_timezone(&Utc))
            .collect())
    }

    /// Deletes what is older than `before`: finished runs (with their reports and their outbox
    /// rows), slot records and `log_scan` positions. Never deleted: a run still running, a run
    /// with a notification still pending delivery, the newest finished run of each job and its
    /// newest comparable one (the "previous comparable run" its next report compares with),
    /// the newest slot of each job (the
    /// scheduler's cursor). One transaction.
    pub fn prune(&self, before: &DateTime<Utc>) -> Result<Pruned> {
        let millis = before.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let secs = before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut pruned = Pruned::default();
            let old_finished = "FROM runs r WHERE r.started_at < ?1 AND r.status != 'running'
                 AND r.started_at < (SELECT MAX(n.started_at) FROM runs n WHERE n.job = r.job AND n.status != 'running')
                 AND r.run_id IS NOT (SELECT n.run_id FROM runs n WHERE n.job = r.job AND n.status != 'running'
                     AND n.report IS NOT NULL AND COALESCE(n.comparable, 1) = 1
                     AND COALESCE(json_extract(n.report, '$.dry_run'), 0) = 0
                     ORDER BY n.started_at DESC LIMIT 1)";
            let pending = "EXISTS (SELECT 1 FROM outbox o WHERE o.run_id = r.run_id AND o.state IN ('pending', 'sending'))";
            let doomed: Vec<String> = {
                let mut st = tx.prepare(&format!("SELECT r.run_id {old_finished} AND NOT {pending}"))?;
                st.query_map([&millis], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?
            };
            pruned.kept_pending = tx.query_row(
                &format!("SELECT COUNT(*) {old_finished} AND {pending}"),
                [&millis],
                |r| r.get::<_, i64>(0),
            )? as usize;
            {
                let mut del_outbox = tx.prepare("DELETE FROM outbox WHERE run_id = ?1")?;
                let mut del_run = tx.prepare("DELETE FROM runs WHERE run_id = ?1")?;
                let mut del_acks = tx.prepare("DELETE FROM acks WHERE run_id = ?1")?;
                let mut del_esc = tx.prepare("DELETE FROM escalations WHERE run_id = ?1")?;
                for run in &doomed {
                    del_acks.execute([run])?;
                    del_esc.execute([run])?;
                    pruned.outbox += del_outbox.execute([run])?;
                    pruned.runs += del_run.execute([run])?;
                }
            }
            pruned.slots = tx.execute(
                "DELETE FROM slots WHERE slot < ?1
                 AND slot < (SELECT MAX(s.slot) FROM slots s WHERE s.job = slots.job)",
                [&secs],
            )?;
            pruned.scan_offsets =
                tx.execute("DELETE FROM scan_offsets WHERE updated_at < ?1", [&millis])?;
            tx.commit()?;
            Ok(pruned)
        })
    }

    /// `runbook ack` and `POST /runs/<id>/ack` (SPEC 9.2): records that `by` did (a `manual`
    /// item) or took (a failing one) item `item` of run `run` (of job `job`, when given).
    /// `run` is a run id (or a unique prefix) or `last` (the job's newest finished run). Nothing
    /// is recorded when the run, the job or the item does not match ([`AckError`]). The report
    /// row is not touched: acks live in their own table and are joined in when a report is
    /// read. Returns the report as it reads now (with this ack) and the ack.
    pub fn ack(
        &self,
        run: &str,
        job: Option<&str>,
        item: &str,
        by: &str,
        note: Option<&str>,
    ) -> std::result::Result<(Report, Ack), AckError> {
        let by = by.trim();
        if by.is_empty() {
            return Err(AckError::BadInput(
                "who acknowledges is not given (by)".into(),
            ));
        }
        if item.trim().is_empty() {
            return Err(AckError::BadInput("the item is not given (item)".into()));
        }
        let found = match (run, job) {
            ("last", Some(job)) => self.last_report(job),
            ("last", None) => {
                return Err(AckError::BadInput("`last` needs the job".into()));
            }
            _ => self.report(run),
        };
        let report = match found {
            Ok(Some(r)) => r,
            Ok(None) if run == "last" => {
                return Err(AckError::NotFound(format!(
                    "job {:?} has no finished run to acknowledge",
                    job.unwrap_or_default()
                )));
            }
            Ok(None) => return Err(AckError::NotFound(format!("no stored run {run:?}"))),
            Err(e) if e.chain().count() > 1 => return Err(AckError::Store(e)),
            Err(e) => return Err(AckError::NotFound(format!("{e:#}"))),
        };
        if let Some(job) = job
            && report.job != job
        {
            return Err(AckError::NotFound(format!(
                "run {} belongs to job {:?}, not {job:?}",
                report.run_id, report.job
            )));
        }
        if !report.items.iter().any(|i| i.name == item) {
            let names: Vec<&str> = report.items.iter().map(|i| i.name.as_str()).collect();
            return Err(AckError::BadInput(format!(
                "run {} of job {:?} has no item {item:?} (its items: {})",
                report.run_id,
                report.job,
                names.join(", ")
            )));
        }
        let ack = Ack {
            item: item.to_string(),
            by: by.to_string(),
            at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            note: note
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string),
        };
        let run_id = report.run_id.clone();
        self.with(|c| {
            c.execute(
                "INSERT INTO acks (run_id, item, by, at, note) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![run_id, ack.item, ack.by, ack.at, ack.note],
            )
            .map(|_| ())
        })
        .map_err(AckError::Store)?;
        let mut report = report;
        report.acks.push(ack.clone());
        Ok((report, ack))
    }

    /// The previous comparable run ([`Store::last_comparable_report`]: neither a dry run nor
    /// limited by `--item`) of each job in `jobs`, when it failed (the candidates for
    /// escalation), with their acks. A partial run does not say the other items recovered, so
    /// it does not stop the escalation of the full run before it.
    pub fn latest_failed_reports(&self, jobs: &[String]) -> Result<Vec<Report>> {
        let mut out = Vec::new();
        for job in jobs {
            if let Some(report) = self.last_comparable_report(job)?
                && report.status == crate::items::Status::Fail
            {
                out.push(report);
            }
        }
        Ok(out)
    }

    /// The escalation steps already taken for a run (their indexes, from 0).
    pub fn escalations_taken(&self, run_id: &str) -> Result<Vec<usize>> {
        self.with(|c| {
            let mut st =
                c.prepare_cached("SELECT step FROM escalations WHERE run_id = ?1 ORDER BY step")?;
            st.query_map([run_id], |r| r.get::<_, i64>(0).map(|s| s as usize))?
                .collect()
        })
    }

    /// Takes escalation step `step` of a run: records it (with its `channels`) and queues its
    /// outbox `entries` (`notify::plan_escalation`: the report, or PagerDuty events), in one
    /// transaction.
    /// Returns false (and changes nothing) when the step was already taken, by this process
    /// or another, now or before a restart.
    pub fn take_escalation(
        &self,
        job: &str,
        run_id: &str,
        step: usize,
        channels: &[String],
        entries: &[(OutboxKey, Option<String>)],
    ) -> Result<bool> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let inserted = tx.execute(
                "INSERT INTO escalations (run_id, step, job, channels, sent_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (run_id, step) DO NOTHING",
                params![run_id, step as i64, job, channels.join(","), now()],
            )?;
            if inserted == 1 {
                for (key, payload) in entries {
                    insert_outbox_row(&tx, key, payload.as_deref())?;
                }
            }
            tx.commit()?;
            Ok(inserted == 1)
        })
    }

    /// Adds a report delivery to the outbox (no-op when it is already there).
    pub fn outbox_enqueue(&self, run_id: &str, channel: &str) -> Result<()> {
        self.outbox_enqueue_event(&OutboxKey::report(run_id, channel), None)
    }

    /// Adds an entry with its own event key and payload to the outbox (no-op when it is
    /// already there).
    pub fn outbox_enqueue_event(&self, key: &OutboxKey, payload: Option<&str>) -> Result<()> {
        self.with(|c| insert_outbox_row(c, key, payload))
    }

    /// Claims a delivery for this process before it is sent: a `pending` row (or a `sending` row
    /// whose sender's lease ran out) becomes `sending` until now + `lease`. Returns the claim
    /// (which the later mark_* calls must present), or None when the row is not claimable
    /// (missing, sent, dropped, or being delivered by another process). One UPDATE, so of two
    /// processes claiming at once exactly one wins.
    pub fn outbox_claim(&self, key: &OutboxKey, lease: Duration) -> Result<Option<Claim>> {
        let now_utc = Utc::now();
        let until = (now_utc
            + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::minutes(5)))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let now = now_utc.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let me = Holder::me(&self.host);
        self.with(|c| {
            c.execute(
                "UPDATE outbox SET state = 'sending', next_attempt_at = ?4,
                        claim_host = ?6, claim_boot_id = ?7, claim_pid = ?8, claim_start_ticks = ?9
                 WHERE run_id = ?1 AND channel = ?2 AND event = ?3
                   AND (state = 'pending' OR (state = 'sending' AND next_attempt_at < ?5))",
                params![
                    key.run_id,
                    key.channel,
                    key.event,
                    until,
                    now,
                    me.host,
                    me.boot_id,
                    me.pid,
                    me.start_ticks
                ],
            )
            .map(|n| (n == 1).then(|| Claim(until.clone())))
        })
    }

    /// Takes over a delivery whose claimer is dead (see [`Holder::alive`]) before its lease ran
    /// out: only the very claim `dead_claim`, so of two processes taking over at once exactly
    /// one wins. Returns the new claim, as [`Store::outbox_claim`].
    pub fn outbox_take_over(
        &self,
        key: &OutboxKey,
        lease: Duration,
        dead_claim: &Claim,
    ) -> Result<Option<Claim>> {
        let until = (Utc::now()
            + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::minutes(5)))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let me = Holder::me(&self.host);
        self.with(|c| {
            c.execute(
                "UPDATE outbox SET next_attempt_at = ?4,
                        claim_host = ?6, claim_boot_id = ?7, claim_pid = ?8, claim_start_ticks = ?9
                 WHERE run_id = ?1 AND channel = ?2 AND event = ?3 AND state = 'sending' AND next_attempt_at = ?5",
                params![
                    key.run_id,
                    key.channel,
                    key.event,
                    until,
                    dead_claim.0,
                    me.host,
                    me.boot_id,
                    me.pid,
                    me.start_ticks
                ],
            )
            .map(|n| (n == 1).then(|| Claim(until.clone())))
        })
    }

    /// Marks a claimed delivery as sent. Returns false when the claim was lost (its lease ran
    /// out and another process took the row over).
    pub fn outbox_mark_sent(&self, key: &OutboxKey, claim: &Claim) -> Result<bool> {
        self.with(|c| {
            c.execute(
                "UPDATE outbox SET state = 'sent', sent_at = ?4, attempts = attempts + 1, last_error = NULL, next_attempt_at = NULL
                 WHERE run_id = ?1 AND channel = ?2 AND event = ?3 AND state = 'sending' AND next_attempt_at = ?5",
                params![key.run_id, key.channel, key.event, now(), claim.0],
            )
            .map(|n| n == 1)
        })
    }

    /// Records a failed attempt of a claimed delivery and when to try again (back to `pending`).
    /// Returns false when the claim was lost.
    pub fn outbox_mark_failed(
        &self,
        key: &OutboxKey,
        claim: &Claim,
        error: &str,
        next_attempt: &DateTime<Utc>,
    ) -> Result<bool> {
        self.with(|c| {
            c.execute(
                "UPDATE outbox SET state = 'pending', attempts = attempts + 1, last_error = ?4, next_attempt_at = ?5
                 WHERE run_id = ?1 AND channel = ?2 AND event = ?3 AND state = 'sending' AND next_attempt_at = ?6",
                params![key.run_id, key.channel, key.event, error, next_attempt.to_rfc3339_opts(chrono::SecondsFormat::Micros, true), claim.0],
            )
            .map(|n| n == 1)
        })
    }

    /// Records a claimed delivery the channel refused for good (a PagerDuty 4xx): `dropped`
    /// at once with the reason, never retried. Returns false when the claim was lost.
    pub fn outbox_mark_rejected(
        &self,
        key: &OutboxKey,
        claim: &Claim,
        error: &str,
    ) -> Result<bool> {
        self.with(|c| {
            c.execute(
                "UPDATE outbox SET state = 'dropped', attempts = attempts + 1, last_error = ?4
                 WHERE run_id = ?1 AND channel = ?2 AND event = ?3 AND state = 'sending' AND next_attempt_at = ?5",
                params![key.run_id, key.channel, key.event, error, claim.0],
            )
            .map(|n| n == 1)
        })
    }

    /// Gives up on a delivery (older than `outbox_max_age`), recording why in `last_error`.
    /// Returns false when it was not pending any more.
    pub fn outbox_mark_dropped(&self, key: &OutboxKey, reason: &str) -> Result<bool> {
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        self.with(|c| {
            c.execute(
                "UPDATE outbox SET state = 'dropped', last_error = ?5 WHERE run_id = ?1 AND channel = ?2 AND event = ?3
                 AND (state = 'pending' OR (state = 'sending' AND next_attempt_at < ?4))",
                params![key.run_id, key.channel, key.event, now, reason],
            )
            .map(|n| n == 1)
        })
    }

    /// Outbox rows in a state (None: all but `sent`), oldest first.
    pub fn outbox(&self, state: Option<OutboxState>) -> Result<Vec<OutboxEntry>> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {OUTBOX_COLUMNS} FROM outbox o LEFT JOIN runs r ON r.run_id = o.run_id
                 WHERE (?1 IS NULL AND o.state != 'sent') OR o.state = ?1 ORDER BY o.created_at"
            ))?;
            st.query_map([state], outbox_entry)?.collect()
        })
    }

    /// One outbox row, whatever its state.
    pub fn outbox_entry(&self, key: &OutboxKey) -> Result<Option<OutboxEntry>> {
        self.with(|c| {
            c.query_row(
                &format!(
                    "SELECT {OUTBOX_COLUMNS} FROM outbox o LEFT JOIN runs r ON r.run_id = o.run_id
                     WHERE o.run_id = ?1 AND o.channel = ?2 AND o.event = ?3"
                ),
                params![key.run_id, key.channel, key.event],
                outbox_entry,
            )
            .optional()
        })
    }

    /// Where `log_scan` stopped in a file: (inode, offset, fingerprint of its first bytes).
    pub fn scan_offset(
        &self,
        job: &str,
        item: &str,
        file: &str,
    ) -> Result<Option<(u64, u64, Option<u64>)>> {
        self.with(|c| {
            c.query_row(
                "SELECT inode, offset, fingerprint FROM scan_offsets WHERE job = ?1 AND item = ?2 AND file = ?3",
                params![job, item, file],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, Option<i64>>(2)?.map(|f| f as u64),
                    ))
                },
            )
            .optional()
        })
    }
}

/// The items' narrow view of the store: their own offsets and earlier results.
impl crate::items::state::StateSource for Store {
    fn scan_offset(
        &self,
        job: &str,
        item: &str,
        file: &str,
    ) -> std::result::Result<
        Option<crate::items::state::FilePosition>,
        crate::items::state::StateError,
    > {
        Store::scan_offset(self, job, item, file)
            .map_err(|e| crate::items::state::StateError(format!("{e:#}")))
    }

    fn earlier_results(
        &self,
        job: &str,
        item: &str,
        kind: &str,
        target: Option<&str>,
        limit: usize,
    ) -> std::result::Result<Vec<crate::items::state::EarlierResult>, crate::items::state::StateError>
    {
        let found = self
            .earlier_item_results(job, item, kind, limit)
            .map_err(|e| crate::items::state::StateError(format!("{e:#}")))?;
        Ok(found
            .into_iter()
            .filter_map(|r| match target {
                None => Some(r.item),
                Some(t) => r
                    .targets
                    .into_iter()
                    .find(|(name, _)| name == t)
                    .map(|(_, on)| on),
            })
            .collect())
    }
}

/// What one item found in one earlier run: on the whole, and on each of its targets.
#[derive(Debug, Clone)]
pub struct EarlierItem {
    pub item: crate::items::state::EarlierResult,
    pub targets: Vec<(String, crate::items::state::EarlierResult)>,
}

fn insert_outbox_row(
    c: &Connection,
    key: &OutboxKey,
    payload: Option<&str>,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO outbox (run_id, channel, event, payload, created_at, state, next_attempt_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?5)
         ON CONFLICT (run_id, channel, event) DO NOTHING",
        params![key.run_id, key.channel, key.event, payload, now()],
    )
    .map(|_| ())
}

const OUTBOX_COLUMNS: &str = "o.run_id, o.channel, o.event, o.payload, o.created_at, o.state, o.attempts,
    o.next_attempt_at, o.last_error, r.job, o.claim_host, o.claim_boot_id, o.claim_pid, o.claim_start_ticks";

fn outbox_entry(r: &rusqlite::Row) -> rusqlite::Result<OutboxEntry> {
    Ok(OutboxEntry {
        key: OutboxKey {
            run_id: r.get(0)?,
            channel: r.get(1)?,
            event: r.get(2)?,
        },
        payload: r.get(3)?,
        created_at: r.get(4)?,
        state: r.get(5)?,
        attempts: r.get(6)?,
        next_attempt_at: r.get(7)?,
        last_error: r.get(8)?,
        job: r.get(9)?,
        claimed_by: match r.get::<_, Option<i64>>(12)? {
            Some(pid) => Some(Holder {
                host: r.get::<_, Option<String>>(10)?.unwrap_or_default(),
                boot_id: r.get(11)?,
                pid,
                start_ticks: r.get(13)?,
            }),
            None => None,
        },
    })
}

/// A stored report as users see it: [`with_deliveries`], and its `acks` from the `acks` table.
fn as_shown(c: &Connection, report: Report) -> rusqlite::Result<Report> {
    let mut report = with_deliveries(c, report)?;
    report.acks = acks_of(c, &report.run_id)?;
    Ok(report)
}

/// The acknowledgements of a run, oldest first.
fn acks_of(c: &Connection, run_id: &str) -> rusqlite::Result<Vec<Ack>> {
    let mut st =
        c.prepare_cached("SELECT item, by, at, note FROM acks WHERE run_id = ?1 ORDER BY id")?;
    st.query_map([run_id], |r| {
        Ok(Ack {
            item: r.get(0)?,
            by: r.get(1)?,
            at: r.get(2)?,
            note: r.get(3)?,
        })
    })?
    .collect()
}

/// A stored report's JSON with its `notifications` from the outbox: the stored JSON (written once, never changed) with its
/// `notifications` brought up to date from the run's outbox rows (SPEC 9.1). A channel's
/// entries sum up as its worst state: any dropped is `failed`, else any pending or sending is
/// `queued`, else `sent`.
fn with_deliveries(c: &Connection, mut report: Report) -> rusqlite::Result<Report> {
    let mut st = c.prepare_cached(
        "SELECT channel, state, last_error FROM outbox WHERE run_id = ?1 ORDER BY channel, event",
    )?;
    let rows = st
        .query_map([&report.run_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, OutboxState>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let rank = |s: DeliveryStatus| match s {
        DeliveryStatus::Sent | DeliveryStatus::Skipped => 0,
        DeliveryStatus::Queued => 1,
        DeliveryStatus::Failed => 2,
    };
    let mut derived: Vec<NotificationStatus> = Vec::new();
    for (channel, state, error) in rows {
        let status = state.delivery_status();
        let error = match state {
            OutboxState::Sent => None,
            _ => error,
        };
        match derived.iter_mut().find(|n| n.channel == channel) {
            Some(n) if rank(status) > rank(n.status) => {
                n.status = status;
                n.error = error;
            }
            Some(_) => {}
            None => derived.push(NotificationStatus {
                channel,
                status,
                error,
            }),
        }
    }
    for d in derived {
        match report
            .notifications
            .iter_mut()
            .find(|n| n.channel == d.channel)
        {
            Some(n) => *n = d,
            None => report.notifications.push(d),
        }
    }
    Ok(report)
}

fn upsert_scan_offset(c: &Connection, o: &ScanOffset) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO scan_offsets (job, item, file, inode, offset, updated_at, fingerprint) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (job, item, file) DO UPDATE SET inode = excluded.inode, offset = excluded.offset, updated_at = excluded.updated_at, fingerprint = excluded.fingerprint",
        params![o.job, o.item, o.file, o.inode as i64, o.offset as i64, now(), o.fingerprint as i64],
    )
    .map(|_| ())
}

/// A row of `(run_id, pid, host, boot_id, start_ticks, <since>)`: who holds something, and since
/// when (a lock's `acquired_at`, a running run's `started_at`).
fn id_holder_since(r: &rusqlite::Row) -> rusqlite::Result<(String, Holder, String)> {
    Ok((
        r.get(0)?,
        Holder {
            pid: r.get(1)?,
            host: r.get(2)?,
            boot_id: r.get(3)?,
            start_ticks: r.get(4)?,
        },
        r.get(5)?,
    ))
}

#[cfg(test)]
mod open_tests {
    use super::Store;

    #[test]
    fn many_openers_of_a_fresh_state_folder_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let d = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    Store::open(&d, "h")
                        .map(|_| ())
                        .map_err(|e| format!("{e:#}"))
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), Ok(()));
        }
    }

    /// A state folder of the version before outbox events: its rows keep their state, attempts
    /// and claim, get the empty event key, and a stored report's old `notifications` (written
    /// back then by the delivery) are replaced by what the outbox says.
    #[test]
    fn outbox_rows_of_the_previous_schema_survive_the_event_key_migration() {
        use super::{DeliveryStatus, MIGRATIONS, OutboxKey, OutboxState};
        let dir = tempfile::tempdir().unwrap();
        let mut report = crate::report::tests::sample();
        report.notifications = vec![crate::report::NotificationStatus {
            channel: "mail".into(),
            status: DeliveryStatus::Queued,
            error: Some("connection refused".into()),
        }];
        {
            let mut c = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
            rusqlite_migration::Migrations::from_slice(&MIGRATIONS[..4])
                .to_latest(&mut c)
                .unwrap();
            c.execute(
                "INSERT INTO runs (run_id, job, trigger, started_at, status, pid, host, report)
                 VALUES (?1, 'notify-test', 'manual', '2026-01-01T00:00:00Z', 'pass', 1, 'h', ?2)",
                rusqlite::params![report.run_id, serde_json::to_string(&report).unwrap()],
            )
            .unwrap();
            c.execute(
                "INSERT INTO outbox (run_id, channel, created_at, state, attempts, sent_at)
                 VALUES (?1, 'mail', '2026-01-01T00:00:00Z', 'sent', 2, '2026-01-01T00:05:00Z')",
                [&report.run_id],
            )
            .unwrap();
        }
        let store = Store::open(dir.path(), "h").unwrap();
        let key = OutboxKey::report(&report.run_id, "mail");
        let row = store.outbox_entry(&key).unwrap().expect("the row survives");
        assert_eq!((row.state, row.attempts), (OutboxState::Sent, 2));
        let shown = store.report(&report.run_id).unwrap().unwrap();
        assert_eq!(shown.notifications.len(), 1);
        assert_eq!(shown.notifications[0].status, DeliveryStatus::Sent);
        assert_eq!(shown.notifications[0].error, None);
        // A second entry of the same run and channel, with its own event key, fits beside it.
        let event = OutboxKey {
            event: "item/Disk space".into(),
            ..key
        };
        store
            .outbox_enqueue_event(&event, Some(r#"{"action":"trigger"}"#))
            .unwrap();
        let pending = store.outbox(Some(OutboxState::Pending)).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].key, event);
        assert_eq!(
            pending[0].payload.as_deref(),
            Some(r#"{"action":"trigger"}"#)
        );
        let shown = store.report(&report.run_id).unwrap().unwrap();
        assert_eq!(
            shown.notifications[0].status,
            DeliveryStatus::Queued,
            "the worst entry"
        );
    }
}

/// One point of `runbook trend` (SPEC 9.3).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrendPoint {
    pub run_id: String,
    /// RFC3339 in the job's zone, as in the report.
    pub started_at: String,
    pub value: f64,
}

/// A `--field` that is not a path of names joined by dots.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad --field {0:?}: use names of letters, digits, `_` or `-` joined by dots (e.g. `value`, `disks.0.used_percent`)"
)]
pub struct BadTrendField(pub String);

/// The SQLite JSON path of an item's `data` field named with dots (`value`, `disks.0.used_percent`:
/// a number segment indexes an array). Segments are letters, digits, `_` and `-`.
pub fn trend_field_path(field: &str) -> Result<String, BadTrendField> {
    let mut path = String::from("$.data");
    for seg in field.split('.') {
        if seg.is_empty()
            || !seg
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
        {
            return Err(BadTrendField(field.to_string()));
        }
        if seg.chars().all(|ch| ch.is_ascii_digit()) {
            path.push_str(&format!("[{seg}]"));
        } else {
            path.push_str(&format!(".\"{seg}\""));
        }
    }
    Ok(path)
}

#[cfg(test)]
mod item_state_tests {
    use std::sync::Arc;

    use super::{ScanOffset, Store};
    use crate::items::state::ItemState;

    /// Stores a finished run `run_id` of job `daily` whose item "Backups completed" (backup) has
    /// `data`, with `offsets`.
    fn store_run(
        store: &Store,
        run_id: &str,
        minute: u32,
        data: serde_json::Value,
        offsets: &[ScanOffset],
    ) {
        let mut report = crate::report::tests::sample();
        report.run_id = run_id.to_string();
        let started =
            chrono::DateTime::parse_from_rfc3339(&format!("2026-11-24T10:{minute:02}:00+00:00"))
                .unwrap();
        report.started_at = started;
        report.finished_at = started;
        report.items[0].data = data;
        store
            .insert_run(run_id, "daily", "schedule", None, &started.to_utc(), true)
            .unwrap();
        store.finish_run(&report, offsets, &[]).unwrap();
    }

    #[test]
    fn an_item_reads_only_its_own_earlier_results_and_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "h").unwrap();
        let offset = |item: &str| ScanOffset {
            job: "daily".into(),
            item: item.into(),
            file: "/var/log/app.log".into(),
            inode: 7,
            offset: 4096,
            fingerprint: 99,
        };
        store_run(
            &store,
            "run-1",
            1,
            serde_json::json!({ "n": 1 }),
            &[offset("scan")],
        );
        store_run(&store, "run-2", 2, serde_json::json!({ "n": 2 }), &[]);
        store_run(&store, "run-3", 3, serde_json::json!({ "n": 3 }), &[]);

        // Run 3 is the one running: its own stored report is not an "earlier" result.
        let run = ItemState::new(Arc::new(store.clone()), "daily", "run-3");
        let backup = run.for_item("Backups completed", "backup");
        let seen: Vec<(String, serde_json::Value)> = backup
            .earlier_results(10)
            .into_iter()
            .map(|r| (r.run_id, r.data))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("run-2".to_string(), serde_json::json!({ "n": 2 })),
                ("run-1".to_string(), serde_json::json!({ "n": 1 })),
            ]
        );
        // Same name, another kind: not this item's history.
        assert!(
            run.for_item("Backups completed", "restore_drill")
                .earlier_results(10)
                .is_empty()
        );

        // Offsets are the item's own: another item of the job sees none.
        assert_eq!(
            run.for_item("scan", "log_scan")
                .scan_offset("/var/log/app.log")
                .unwrap(),
            Some((7, 4096, Some(99)))
        );
        assert_eq!(
            run.for_item("other", "log_scan")
                .scan_offset("/var/log/app.log")
                .unwrap(),
            None
        );
        // What an item hands back to be remembered names its own job and item.
        assert_eq!(
            run.for_item("scan", "log_scan")
                .offset("/var/log/app.log", 7, 4096, 99),
            offset("scan")
        );
    }
}
