//! The daemon's housekeeping: retention (`[runbook] keep_runs`, default 400d).
//!
//! Left alone, a daemon that runs for years keeps every report in `state.db` and every file a
//! `file` notifier wrote. Once at start and then daily, [`prune`] deletes what is older than
//! `keep_runs`: stored runs (with their delivered outbox rows, old slot records and stale
//! `log_scan` positions, see [`Store::prune`]) and, in each `file` notifier's folder, the reports
//! it wrote (recognised by their names, [`crate::notify::file::written_at`]). It logs what it
//! did at info, so the journal says when and what went.
//!
//! Deliberately not deleted: a run whose notifications are still pending (the outbox would lose
//! its report), the newest run of each job, files in those folders that runbook did not write.
//!
//! The same passes (and one when the daemon starts, before its first run: [`sweep_pitr_scratch`])
//! look for scratch servers of point-in-time restore drills that a crashed runbook left (SIGKILL,
//! OOM, power loss): each configured `mode = "pitr"` drill's scratch folder
//! ([`pitr_drill::scratch_folder`]). One that exists while no live run holds its job's lock is
//! stopped and removed ([`pitr_drill::clean_leftover`]) under that lock, so no drill can start
//! in it meanwhile; a folder whose job a live run holds belongs to that run's drill and is left
//! alone. Only the daemon sweeps: `run-job` cleans only its own drill's folder, when it starts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::items::ItemSpec;
use crate::items::pitr_drill::{self, Leftover};
use crate::items::restore_drill::DrillMode;
use crate::store::{Lock, Pruned, Store};

/// How often the daemon prunes (and once at start).
pub const INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// What one housekeeping pass did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Runs started before this were candidates.
    pub cutoff: DateTime<Utc>,
    pub store: Pruned,
    /// Files deleted per `file` notifier folder, in config order.
    pub files: Vec<(PathBuf, usize)>,
    /// Folders that could not be pruned, with why.
    pub errors: Vec<String>,
}

/// One pass: prunes the store and the `file` notifiers' folders of what is older than
/// `keep_runs` before `now`, and logs it.
pub fn prune(config: &Config, store: &Store, now: DateTime<Utc>) -> anyhow::Result<Summary> {
    let keep = config.runbook.keep_runs;
    let cutoff = now - chrono::Duration::from_std(keep.0).unwrap_or(chrono::Duration::days(400));
    let pruned = store.prune(&cutoff)?;
    let mut summary = Summary {
        cutoff,
        store: pruned,
        ..Default::default()
    };
    let mut dirs: Vec<&Path> = config
        .notifiers
        .values()
        .filter_map(|n| n.file_dir())
        .collect();
    dirs.dedup();
    for dir in dirs {
        match crate::notify::file::prune(dir, &cutoff) {
            Ok(n) => summary.files.push((dir.to_path_buf(), n)),
            Err(e) => summary
                .errors
                .push(format!("cannot prune {}: {e}", dir.display())),
        }
    }
    let files: Vec<String> = summary
        .files
        .iter()
        .map(|(d, n)| format!(", {n} file{} in {}", plural(*n), d.display()))
        .collect();
    tracing::info!(
        runs = summary.store.runs,
        files = summary.files.iter().map(|(_, n)| n).sum::<usize>(),
        "housekeeping: pruned {} run{} older than {keep} (started before {}){}{}",
        summary.store.runs,
        plural(summary.store.runs),
        cutoff.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        files.concat(),
        if summary.store.kept_pending > 0 {
            format!(
                "; kept {} older run{} whose notifications are still pending",
                summary.store.kept_pending,
                plural(summary.store.kept_pending)
            )
        } else {
            String::new()
        }
    );
    for e in &summary.errors {
        tracing::warn!("housekeeping: {e}");
    }
    Ok(summary)
}

/// What one sweep of the drills' scratch folders did.
#[derive(Debug, Default)]
pub struct Sweep {
    /// The folders it stopped and removed (or failed to remove: [`Leftover::error`]).
    pub removed: Vec<Leftover>,
    /// Folders left alone because a live run holds their job's lock: (job, folder).
    pub in_use: Vec<(String, PathBuf)>,
}

/// Stops and removes the scratch servers that crashed point-in-time drills left: for each job
/// with a `mode = "pitr"` drill whose scratch folder exists, takes the job's lock (so no run
/// starts a drill in it meanwhile), cleans the folders with [`pitr_drill::clean_leftover`] and
/// releases the lock. A job whose lock a live run holds is left alone: its drill owns the
/// folder. Logs a warning for each folder removed. Blocking.
pub fn sweep_pitr_scratch(config: &Config, store: &Store) -> Sweep {
    let mut sweep = Sweep::default();
    for (name, job) in &config.jobs {
        let folders: Vec<(&str, PathBuf)> = job
            .config
            .items
            .iter()
            .flat_map(|item| match &item.spec {
                ItemSpec::RestoreDrill(o) if o.mode == DrillMode::Pitr => {
                    let targets = if item.fleet.is_empty() {
                        vec![o.target.as_str()]
                    } else {
                        item.fleet.iter().map(String::as_str).collect()
                    };
                    targets
                        .into_iter()
                        .map(|t| {
                            let folder = pitr_drill::scratch_folder(
                                o,
                                &config.dir,
                                &config.state_dir,
                                name,
                                &item.name,
                                t,
                            );
                            (item.name.as_str(), folder)
                        })
                        .collect()
                }
                _ => Vec::new(),
            })
            .filter(|(_, folder)| folder.exists())
            .collect();
        if folders.is_empty() {
            continue;
        }
        let lock_id = format!("housekeeping-{}", ulid::Ulid::new());
        match store.try_lock(name, &lock_id) {
            Ok(Lock::Held { run_id, pid, .. }) => {
                for (item, folder) in folders {
                    tracing::info!(job = %name, item, folder = %folder.display(), run_id, pid, "housekeeping: the scratch folder of a running drill is left alone (run {run_id}, pid {pid}, holds the job's lock)");
                    sweep.in_use.push((name.clone(), folder));
                }
                continue;
            }
            Ok(Lock::Acquired { stale_taken_over }) => {
                if let Some(msg) = stale_taken_over {
                    tracing::warn!(job = %name, "housekeeping: {msg}");
                }
            }
            Err(e) => {
                tracing::error!(job = %name, "housekeeping: cannot take the job's lock to remove a drill's scratch folder: {e:#}");
                continue;
            }
        }
        for (item, folder) in folders {
            let Some(left) = pitr_drill::clean_leftover(&folder) else {
                continue;
            };
            match &left.error {
                None => {
                    tracing::warn!(job = %name, item, folder = %folder.display(), pids = ?left.stopped, "housekeeping: pitr drill {name}.{item}: {left}")
                }
                Some(_) => {
                    tracing::error!(job = %name, item, folder = %folder.display(), pids = ?left.stopped, "housekeeping: pitr drill {name}.{item}: {left}")
                }
            }
            sweep.removed.push(left);
        }
        if let Err(e) = store.unlock(name, &lock_id) {
            tracing::error!(job = %name, "housekeeping: cannot release the job's lock: {e:#}");
        }
    }
    sweep
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The daemon's housekeeping task: a pass at start, then every [`INTERVAL`], with the config
/// in force at the time, until `stop`. Each pass prunes and (but the one at start, which the
/// daemon did before its first run) sweeps the drills' scratch folders.
pub async fn run(config: watch::Receiver<Arc<Config>>, store: Store, stop: CancellationToken) {
    let mut sweep = false;
    loop {
        let current = config.borrow().clone();
        let s = store.clone();
        let pass = tokio::task::spawn_blocking(move || {
            if sweep {
                sweep_pitr_scratch(&current, &s);
            }
            prune(&current, &s, Utc::now())
        })
        .await;
        // The daemon swept once itself, before its first run.
        sweep = true;
        match pass {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("housekeeping: {e:#}"),
            Err(e) => tracing::error!("housekeeping: the task failed: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A real store and folder; runs inserted with backdated start times (no sleeping).
    struct Fixture {
        dir: tempfile::TempDir,
        config: Config,
        store: Store,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[runbook]\nstate_dir = {:?}\nkeep_runs = \"30d\"\n\n[notify.archive]\ntype = \"file\"\ndir = \"sent\"\n",
            dir.path().join("state").display().to_string()
        );
        let config = Config::from_text(&dir.path().join("jobs.toml"), &text).unwrap();
        let store = Store::open(&config.state_dir, "test").unwrap();
        Fixture { dir, config, store }
    }

    impl Fixture {
        /// A finished run of `job` that started `days_ago` days before `now`.
        fn run(&self, job: &str, days_ago: i64, now: DateTime<Utc>) -> String {
            self.run_of(job, days_ago, now, true)
        }

        /// Like `run`; `comparable: false` is a `--dry-run` or `--item` run.
        fn run_of(&self, job: &str, days_ago: i64, now: DateTime<Utc>, comparable: bool) -> String {
            let mut report =
                crate::notify::test_report(&self.config.hostname, &self.config.runbook.timezone);
            report.run_id = ulid::Ulid::new().to_string();
            report.job = job.into();
            let started = now - chrono::Duration::days(days_ago);
            report.started_at = started.fixed_offset();
            report.finished_at = report.started_at;
            self.store
                .insert_run(&report.run_id, job, "schedule", None, &started, comparable)
                .unwrap();
            self.store.finish_run(&report, &[], &[]).unwrap();
            report.run_id
        }

        fn run_ids(&self) -> Vec<String> {
            self.store
                .history(None, 1000)
                .unwrap()
                .into_iter()
                .map(|r| r.run_id)
                .collect()
        }
    }

    #[test]
    fn pruning_keeps_the_previous_comparable_run_behind_a_newer_partial_one() {
        let f = fixture();
        let now = Utc::now();
        let older_full = f.run("daily", 42, now);
        let full = f.run("daily", 41, now);
        let partial = f.run_of("daily", 40, now, false);
        f.store.prune(&(now - chrono::Duration::days(30))).unwrap();
        let mut left = f.run_ids();
        left.sort();
        let mut want = vec![full.clone(), partial];
        want.sort();
        assert_eq!(left, want, "{older_full} should be the only one pruned");
        assert_eq!(
            f.store
                .last_comparable_report("daily")
                .unwrap()
                .unwrap()
                .run_id,
            full
        );
    }

    #[test]
    fn old_runs_go_unless_pending_or_the_newest_of_their_job() {
        let f = fixture();
        let now = Utc::now();
        let old = f.run("daily", 40, now);
        let old_delivered = f.run("daily", 39, now);
        let delivered = crate::store::OutboxKey::report(&old_delivered, "archive");
        f.store.outbox_enqueue(&old_delivered, "archive").unwrap();
        let claim = f
            .store
            .outbox_claim(&delivered, Duration::from_secs(60))
            .unwrap()
            .unwrap();
        assert!(f.store.outbox_mark_sent(&delivered, &claim).unwrap());
        let old_pending = f.run("daily", 38, now);
        f.store.outbox_enqueue(&old_pending, "archive").unwrap();
        let recent = f.run("daily", 2, now);
        // A monthly job whose only run is older than keep_runs keeps it: it is its latest.
        let only_monthly = f.run("monthly", 45, now);
        let slot = |days: i64| now - chrono::Duration::days(days);
        for d in [40, 39, 2] {
            f.store
                .record_slot("daily", &slot(d), "done", None)
                .unwrap();
        }
        f.store
            .record_slot("monthly", &slot(45), "done", None)
            .unwrap();

        let s = prune(&f.config, &f.store, now).unwrap();
        assert_eq!(s.store.runs, 2, "{s:?}");
        assert_eq!(s.store.outbox, 1, "the delivered row went with its run");
        assert_eq!(s.store.kept_pending, 1);
        assert_eq!(s.store.slots, 2, "old slots, but each job's newest stays");
        let left = f.run_ids();
        assert!(
            !left.contains(&old) && !left.contains(&old_delivered),
            "{left:?}"
        );
        for kept in [&old_pending, &recent, &only_monthly] {
            assert!(left.contains(kept), "{kept} should stay: {left:?}");
        }
        assert_eq!(
            f.store.outbox(None).unwrap().len(),
            1,
            "the pending entry stays"
        );
        assert_eq!(
            f.store.last_slot("monthly").unwrap(),
            Some(slot(45)).map(|t| t.with_nanosecond_zero())
        );

        // A second pass finds nothing more.
        let s = prune(&f.config, &f.store, now).unwrap();
        assert_eq!((s.store.runs, s.store.slots), (0, 0));
    }

    #[test]
    fn the_file_notifiers_old_reports_go_and_other_files_stay() {
        let f = fixture();
        let now = Utc::now();
        let sent = f.dir.path().join("sent");
        std::fs::create_dir_all(&sent).unwrap();
        let name = |days: i64, ext: &str| {
            format!(
                "daily-{}-{}.{ext}",
                (now - chrono::Duration::days(days)).format("%Y%m%dT%H%M%SZ"),
                ulid::Ulid::new()
            )
        };
        let mut old = vec![];
        for ext in ["txt", "html", "json", "eml"] {
            old.push(name(31, ext));
        }
        old.push(format!(".{}.tmp", name(60, "html")));
        let recent = name(29, "html");
        let foreign = [
            "notes.txt",
            "daily-export.csv",
            "daily-20000101T000000Z-x.txt",
        ];
        for n in old.iter().chain([&recent]) {
            std::fs::write(sent.join(n), "report").unwrap();
        }
        for n in foreign {
            std::fs::write(sent.join(n), "not ours").unwrap();
        }
        let s = prune(&f.config, &f.store, now).unwrap();
        assert_eq!(s.files, vec![(sent.clone(), 5)]);
        let mut left: Vec<String> = std::fs::read_dir(&sent)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut expected: Vec<String> = foreign.iter().map(|s| s.to_string()).collect();
        expected.push(recent);
        expected.sort();
        assert_eq!(left, expected);
        // A folder not written yet is not an error.
        std::fs::remove_dir_all(&sent).unwrap();
        assert!(prune(&f.config, &f.store, now).unwrap().errors.is_empty());
        assert!(!Path::new(&sent).exists());
    }

    /// A config with a pitr drill in job `drill`, and its scratch folder made as a crashed drill
    /// leaves it (a pid record naming a live process that is not a server on that folder).
    fn pitr_fixture() -> (Fixture, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[runbook]\nstate_dir = {:?}\n\n[targets.db]\nurl = \"postgres://postgres@127.0.0.1:1/app\"\n\n[jobs.drill]\n[[jobs.drill.items]]\nname = \"pitr\"\nkind = \"restore_drill\"\nmode = \"pitr\"\ntarget = \"db\"\nbase_backup_dir = \"base\"\nwal_archive_dir = \"wal\"\n",
            dir.path().join("state").display().to_string()
        );
        let config = Config::from_text(&dir.path().join("jobs.toml"), &text).unwrap();
        let store = Store::open(&config.state_dir, "test").unwrap();
        let ItemSpec::RestoreDrill(o) = &config.jobs["drill"].config.items[0].spec else {
            panic!("not a drill");
        };
        let folder = pitr_drill::scratch_folder(
            o,
            &config.dir,
            &config.state_dir,
            "drill",
            "pitr",
            &o.target,
        );
        std::fs::create_dir_all(folder.join("data")).unwrap();
        std::fs::write(
            folder.join("drill-server.pid"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        (Fixture { dir, config, store }, folder)
    }

    #[test]
    fn a_crashed_drills_scratch_folder_goes_unless_a_live_run_holds_its_job() {
        let (f, folder) = pitr_fixture();
        // A live run (this process) holds the job: its drill owns the folder.
        assert!(matches!(
            f.store.try_lock("drill", "run-1").unwrap(),
            Lock::Acquired { .. }
        ));
        let sweep = sweep_pitr_scratch(&f.config, &f.store);
        assert!(sweep.removed.is_empty(), "{sweep:?}");
        assert_eq!(sweep.in_use, vec![("drill".to_string(), folder.clone())]);
        assert!(folder.exists());
        f.store.unlock("drill", "run-1").unwrap();

        // Nobody holds it: the folder goes, and the pid in its record (a process that is not a
        // server on that folder, this one) is left alone.
        let sweep = sweep_pitr_scratch(&f.config, &f.store);
        assert_eq!(sweep.removed.len(), 1, "{sweep:?}");
        assert_eq!(sweep.removed[0].scratch, folder);
        assert!(sweep.removed[0].stopped.is_empty(), "{sweep:?}");
        assert!(sweep.removed[0].error.is_none(), "{sweep:?}");
        assert!(!folder.exists());
        // The sweep's lock was released: a run can start.
        assert_eq!(f.store.lock_holder("drill").unwrap(), None);
        // Nothing left: nothing to do.
        let sweep = sweep_pitr_scratch(&f.config, &f.store);
        assert!(sweep.removed.is_empty() && sweep.in_use.is_empty());
    }

    trait NanosZero {
        fn with_nanosecond_zero(self) -> Self;
    }
    impl NanosZero for DateTime<Utc> {
        fn with_nanosecond_zero(self) -> Self {
            use chrono::Timelike;
            self.with_nanosecond(0).unwrap()
        }
    }
}
