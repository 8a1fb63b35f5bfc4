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

use crate::report::Report;

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
    },
}

/// Where `log_scan` stopped reading a file: committed with the report of the run that read up
/// to it ([`Store::finish_run`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanOffset {
    pub job: String,
    pub item: String,
    /// The configured file (its path as the item names it).
    pub file: String,
    pub inode: u64,
    /// Bytes read, always at a line end.
    pub offset: u64,
    /// A hash of the file's first bytes (inodes are reused after rotation).
    pub fingerprint: u64,
}

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

/// One outbox row.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxEntry {
    pub run_id: String,
    pub channel: String,
    pub created_at: String,
    /// `pending` (waiting for its next attempt), `sending` (claimed by a sender until
    /// `next_attempt_at`), `sent`, `dropped` (given up after `outbox_max_age`).
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    pub job: Option<String>,
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// True when a process with this pid exists on this host.
pub fn pid_alive(pid: i64) -> bool {
    if pid <= 0 {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::ESRCH) => false,
        Err(_) => true,
    }
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
        let pid = std::process::id() as i64;
        let host = self.host.clone();
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let held: Option<(String, i64, String, String)> = tx
                .query_row("SELECT run_id, pid, host, acquired_at FROM locks WHERE job = ?1", [job], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()?;
            let mut stale = None;
            if let Some((held_run, held_pid, held_host, since)) = held {
                let alive = held_host != host || pid_alive(held_pid);
                if alive {
                    return Ok(Lock::Held { run_id: held_run, pid: held_pid, host: held_host, since });
                }
                // The holder died without releasing: its run was interrupted.
                tx.execute(
                    "UPDATE runs SET status = 'interrupted', finished_at = ?2 WHERE run_id = ?1 AND status = 'running'",
                    params![held_run, now()],
                )?;
                tx.execute("DELETE FROM locks WHERE job = ?1", [job])?;
                stale = Some(format!("took over the lock of run {held_run} (process {held_pid} is gone)"));
            }
            tx.execute(
                "INSERT INTO locks (job, run_id, pid, host, acquired_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![job, run_id, pid, host, now()],
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
        let row: Option<(String, i64, String)> = self.with(|c| {
            c.query_row(
                "SELECT run_id, pid, host FROM locks WHERE job = ?1",
                [job],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
        })?;
        Ok(row
            .filter(|(_, pid, host)| *host != self.host || pid_alive(*pid))
            .map(|(r, p, _)| (r, p)))
    }

    /// Records a run that starts now.
    pub fn insert_run(
        &self,
        run_id: &str,
        job: &str,
        trigger: &str,
        scheduled_for: Option<&str>,
        started_at: &DateTime<Utc>,
    ) -> Result<()> {
        let pid = std::process::id() as i64;
        let host = self.host.clone();
        self.with(|c| {
            c.execute(
                "INSERT INTO runs (run_id, job, trigger, scheduled_for, started_at, status, pid, host) VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7)",
                params![run_id, job, trigger, scheduled_for, started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), pid, host],
            )
            .map(|_| ())
        })
    }

    /// Stores a finished run's report (and status) together with what must not outlive or
    /// predate it, in one transaction: the outbox rows of the channels it goes to (so a stored
    /// report is always queued for delivery, even when the process dies right after) and the
    /// `log_scan` offsets its items advanced (so lines are never skipped: either the report
    /// that counted them is stored, or the offsets stay where they were).
    pub fn finish_run(
        &self,
        report: &Report,
        offsets: &[ScanOffset],
        channels: &[String],
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
            for channel in channels {
                insert_outbox_row(&tx, &report.run_id, channel)?;
            }
            tx.commit()
        })
    }

    /// Replaces a stored report (e.g. after its notifications were delivered).
    pub fn update_report(&self, report: &Report) -> Result<()> {
        let json = serde_json::to_string(report)?;
        self.with(|c| {
            c.execute(
                "UPDATE runs SET report = ?2 WHERE run_id = ?1",
                params![report.run_id, json],
            )
            .map(|_| ())
        })
    }

    /// Marks runs left `running` by dead processes of this host as `interrupted`. Returns them.
    pub fn mark_interrupted(&self) -> Result<Vec<String>> {
        let host = self.host.clone();
        let rows: Vec<(String, i64)> = self.with(|c| {
            let mut st =
                c.prepare("SELECT run_id, pid FROM runs WHERE status = 'running' AND host = ?1")?;
            st.query_map([host], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })?;
        let dead: Vec<String> = rows
            .into_iter()
            .filter(|(_, pid)| !pid_alive(*pid))
            .map(|(r, _)| r)
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
        json.map(|j| serde_json::from_str(&j).context("stored report is not valid JSON"))
            .transpose()
    }

    /// The newest `limit` finished reports of a job, newest first (e.g. a restore drill's trend
    /// against earlier drills).
    pub fn recent_reports(&self, job: &str, limit: usize) -> Result<Vec<Report>> {
        let rows: Vec<String> = self.with(|c| {
            let mut st = c.prepare("SELECT report FROM runs WHERE job = ?1 AND report IS NOT NULL ORDER BY started_at DESC LIMIT ?2")?;
            st.query_map(params![job, limit as i64], |r| r.get(0))?.collect()
        })?;
        Ok(rows
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect())
    }

    /// A stored report by run id (a unique prefix is enough).
    pub fn report(&self, run_id: &str) -> Result<Option<Report>> {
        let pattern = format!("{}%", run_id.replace(['%', '_'], ""));
        let rows: Vec<Option<String>> = self.with(|c| {
            let mut st = c.prepare("SELECT report FROM runs WHERE run_id LIKE ?1 LIMIT 2")?;
            st.query_map([pattern], |r| r.get(0))?.collect()
        })?;
        match rows.as_slice() {
            [Some(j)] => Ok(Some(serde_json::from_str(j)?)),
            [None] => {
                anyhow::bail!("run {run_id} has no report (it is still running or was interrupted)")
            }
            [] => Ok(None),
            _ => anyhow::bail!("run id prefix {run_id} is ambiguous"),
        }
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

    /// Adds a delivery to the outbox (no-op when it is already there).
    pub fn outbox_enqueue(&self, run_id: &str, channel: &str) -> Result<()> {
        self.with(|c| insert_outbox_row(c, run_id, channel))
    }

    /// Claims a delivery for this process before it is sent: a `pending` row (or a `sending` row
    /// whose sender's lease ran out) becomes `sending` until now + `lease`. Returns the claim
    /// token (the lease's end, which the later mark_* calls must present), or None when the row
    /// is not claimable (sent, dropped, or being delivered by another process). One UPDATE, so
    /// of two processes claiming at once exactly one wins.
    pub fn outbox_claim(
        &self,
        run_id: &str,
        channel: &str,
        lease: Duration,
    ) -> Result<Option<String>> {
        let now_utc = Utc::now();
        let until = (now_utc
            + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::minutes(5)))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let now = now_utc.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        self.with(|c| {
            c.execute(
                "UPDATE outbox SET state = 'sending', next_attempt_at = ?3
                 WHERE run_id = ?1 AND channel = ?2 AND (state = 'pending' OR (state = 'sending' AND next_attempt_at < ?4))",
                params![run_id, channel, until, now],
            )
            .map(|n| if n == 1 { Some(until.clone()) } else { None })
        })
    }

    /// Marks a claimed delivery as sent. Returns false when the claim was lost (its lease ran
    /// out and another process took the row over).
    pub fn outbox_mark_sent(&self, run_id: &str, channel: &str, claim: &str) -> Result<bool> {
        self.with(|c| {
            c.execute(
                "UPDATE outbox SET state = 'sent', sent_at = ?3, attempts = attempts + 1, last_error = NULL, next_attempt_at = NULL
                 WHERE run_id = ?1 AND channel = ?2 AND state = 'sending' AND next_attempt_at = ?4",
                params![run_id, channel, now(), claim],
            )
            .map(|n| n == 1)
        })
    }

    /// Records a failed attempt of a claimed delivery and when to try again (back to `pending`).
    pub fn outbox_mark_failed(
        &self,
        run_id: &str,
        channel: &str,
        claim: &str,
        error: &str,
        next_attempt: &DateTime<Utc>,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE outbox SET state = 'pending', attempts = attempts + 1, last_error = ?3, next_attempt_at = ?4
                 WHERE run_id = ?1 AND channel = ?2 AND state = 'sending' AND next_attempt_at = ?5",
                params![run_id, channel, error, next_attempt.to_rfc3339_opts(chrono::SecondsFormat::Micros, true), claim],
            )
            .map(|_| ())
        })
    }

    /// Gives up on a delivery (older than `outbox_max_age`). Returns false when it was not
    /// pending any more.
    pub fn outbox_mark_dropped(&self, run_id: &str, channel: &str) -> Result<bool> {
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        self.with(|c| {
            c.execute(
                "UPDATE outbox SET state = 'dropped' WHERE run_id = ?1 AND channel = ?2
                 AND (state = 'pending' OR (state = 'sending' AND next_attempt_at < ?3))",
                params![run_id, channel, now],
            )
            .map(|n| n == 1)
        })
    }

    /// Outbox rows in a state (None: all but `sent`), oldest first.
    pub fn outbox(&self, state: Option<&str>) -> Result<Vec<OutboxEntry>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT o.run_id, o.channel, o.created_at, o.state, o.attempts, o.next_attempt_at, o.last_error, r.job
                 FROM outbox o LEFT JOIN runs r ON r.run_id = o.run_id
                 WHERE (?1 IS NULL AND o.state != 'sent') OR o.state = ?1 ORDER BY o.created_at",
            )?;
            st.query_map([state], |r| {
                Ok(OutboxEntry {
                    run_id: r.get(0)?,
                    channel: r.get(1)?,
                    created_at: r.get(2)?,
                    state: r.get(3)?,
                    attempts: r.get(4)?,
                    next_attempt_at: r.get(5)?,
                    last_error: r.get(6)?,
                    job: r.get(7)?,
                })
            })?
            .collect()
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

fn insert_outbox_row(c: &Connection, run_id: &str, channel: &str) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO outbox (run_id, channel, created_at, state, next_attempt_at) VALUES (?1, ?2, ?3, 'pending', ?3)
         ON CONFLICT (run_id, channel) DO NOTHING",
        params![run_id, channel, now()],
    )
    .map(|_| ())
}

fn upsert_scan_offset(c: &Connection, o: &ScanOffset) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO scan_offsets (job, item, file, inode, offset, updated_at, fingerprint) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (job, item, file) DO UPDATE SET inode = excluded.inode, offset = excluded.offset, updated_at = excluded.updated_at, fingerprint = excluded.fingerprint",
        params![o.job, o.item, o.file, o.inode as i64, o.offset as i64, now(), o.fingerprint as i64],
    )
    .map(|_| ())
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
}
