//! `vacuum`: VACUUM (ANALYZE) of a target's tables, largest first, in parallel.
//!
//! Why not `vacuumdb -j`: it orders tables by `relpages` (stale, and 0 for never-analyzed tables,
//! so the biggest table may start last and the run ends with one worker busy and one idle), and
//! it aborts the whole run on the first error or lock. Here each worker has its own connection
//! (under the target's `lock_timeout`) and takes the largest remaining table by real size (heap +
//! indexes + TOAST, measured from the files: [`pg::relation_sizes`]). A table whose lock cannot be had is put back at
//! the end of the queue with a growing delay and retried; a table that still fails is reported
//! and the others still run. `only_needed` applies autovacuum's own formulas and says why each
//! table was chosen; like autovacuum, a table past only the analyze threshold gets `ANALYZE`
//! alone, not a full VACUUM. The planning connection becomes the first worker and the other
//! workers connect while the plan is made (with `only_needed`, once the plan says how many
//! tables need work), so a run costs at most `parallel` connections.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::Client;

use super::support::workers;
use super::{ItemCtx, Outcome, Prepare, Status};
use crate::base::pg::{self, Target, qualified};
#[allow(unused_imports)]
use crate::base::units::{Dur, Percent, Size};

/// Options of `kind = "vacuum"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vacuum {
    pub target: String,
    /// Tables vacuumed at once (each on its own connection). Default 2.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    /// Also ANALYZE. Default true.
    #[serde(default = "default_true")]
    pub analyze: bool,
    /// Only tables past autovacuum-style thresholds (dead tuples, inserts or modifications since
    /// the last vacuum/analyze, never analyzed, transaction ID age). Default false.
    #[serde(default)]
    pub only_needed: bool,
    /// `SKIP_LOCKED`: skip tables another session holds a conflicting lock on (reported as
    /// skipped) instead of waiting up to `lock_timeout` and retrying. Default false.
    #[serde(default)]
    pub skip_locked: bool,
    /// Limit to these schemas. Default: every schema except `pg_toast` and temporary ones
    /// (the system catalogs included, as `VACUUM;` does).
    #[serde(default)]
    pub schemas: Vec<String>,
    /// Limit to these tables (`schema.table` or `table`, names as stored: no quotes).
    #[serde(default)]
    pub tables: Vec<String>,
    /// Never these tables (`schema.table` or `table`).
    #[serde(default)]
    pub exclude_tables: Vec<String>,
    /// No table starts later than this after the item started; the rest are listed as not done.
    pub window: Option<Dur>,
    /// How many times a table whose lock could not be had (`lock_timeout`) is tried again, at
    /// the end of the queue, after 1s, 2s, 4s, ... Default 2.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// `maintenance_io_concurrency` in our sessions: how many blocks ANALYZE asks the kernel
    /// to read ahead while it samples a table (and VACUUM's heap scan, from PostgreSQL 17).
    /// Default: [`DEFAULT_IO_CONCURRENCY`] when the server runs with PostgreSQL's built-in
    /// value (10), else the server's own setting is kept. 0 turns read-ahead off.
    pub io_concurrency: Option<u32>,
}

/// The read-ahead depth used when the server's `maintenance_io_concurrency` was never set.
/// PostgreSQL's built-in 10 suits one spinning disk; on SSD or network storage a deeper queue
/// makes ANALYZE of a table that is not in memory 1.4x faster here (BENCHMARKS.md).
pub const DEFAULT_IO_CONCURRENCY: u32 = 128;

fn default_parallel() -> usize {
    2
}
fn default_true() -> bool {
    true
}
fn default_retries() -> u32 {
    2
}

/// One table of the plan.
#[derive(Debug, Clone)]
struct Table {
    oid: u32,
    schema: String,
    name: String,
    /// `pg_total_relation_size`.
    bytes: i64,
    dead_before: i64,
    /// Why `only_needed` chose it (empty otherwise).
    reasons: Vec<String>,
    /// `only_needed` found it past the analyze threshold only: `ANALYZE`, no VACUUM (as
    /// autovacuum decides the two separately). Also a partitioned table: it has no rows of
    /// its own to vacuum.
    analyze_only: bool,
    /// A partition whose partitioned table is analyzed in this run: `VACUUM` without ANALYZE,
    /// as the partitioned table's ANALYZE analyzes each partition too.
    skip_analyze: bool,
    /// A partitioned table: analyzed after every table, on one connection.
    partitioned: bool,
}

impl Table {
    fn display(&self) -> String {
        qualified(&self.schema, &self.name)
    }
}

/// What happened to one table.
#[derive(Debug, Clone)]
enum Done {
    Vacuumed { seconds: f64, attempts: u32 },
    Skipped(String),
    Failed(String),
    NotStarted(String),
}

/// A worker's connection (under `lock_timeout`) and its server notices, or why it failed.
type Conn = Result<(Client, UnboundedReceiver<String>), pg::PgError>;

/// A queue entry: the table, how often it was tried, and when it may be tried again.
struct Queued {
    index: usize,
    attempts: u32,
    not_before: Instant,
}

impl Vacuum {
    pub fn prepare(&mut self, p: &mut Prepare) {
        if self.parallel == 0 {
            p.error("parallel", "parallel must be at least 1");
        }
        if self.parallel > 32 {
            p.error(
                "parallel",
                "parallel above 32 would take too many connections",
            );
        }
        for (key, list) in [
            ("tables", &self.tables),
            ("exclude_tables", &self.exclude_tables),
        ] {
            for t in list {
                if t.trim().is_empty() || t.split('.').count() > 2 {
                    p.error(key, format!("{t:?} is not `table` or `schema.table`"));
                }
            }
        }
        if let Some(n) = self.io_concurrency
            && n > 1000
        {
            p.error(
                "io_concurrency",
                format!("io_concurrency = {n}: PostgreSQL accepts 0 to 1000"),
            );
        }
    }

    /// Our sessions' read-ahead depth, if we set one, and why: the item's `io_concurrency`, or
    /// [`DEFAULT_IO_CONCURRENCY`] when nobody configured the server's (`pg_settings.source` is
    /// `default`). A value set in postgresql.conf, for the database or the role, or for a
    /// tablespace (which PostgreSQL prefers anyway) is left alone.
    async fn read_ahead(&self, client: &Client) -> Result<Option<(u32, String)>, String> {
        if let Some(n) = self.io_concurrency {
            return Ok(Some((n, "the item's io_concurrency".into())));
        }
        let row = client
            .query_opt(
                "SELECT setting::int, source FROM pg_settings WHERE name = 'maintenance_io_concurrency'",
                &[],
            )
            .await
            .map_err(|e| pg::pg_error(&e))?;
        // Before PostgreSQL 13 there is no such setting: nothing to do.
        let Some(row) = row else { return Ok(None) };
        let (setting, source): (i32, String) = (
            crate::base::pg::col(&row, 0)?,
            crate::base::pg::col(&row, 1)?,
        );
        // 0 is the built-in value where the platform cannot read ahead (no posix_fadvise).
        let raise = source == "default" && setting > 0 && (setting as u32) < DEFAULT_IO_CONCURRENCY;
        Ok(raise.then(|| {
            (
                DEFAULT_IO_CONCURRENCY,
                format!("the server's is PostgreSQL's built-in {setting}"),
            )
        }))
    }

    fn statement(&self, table: &Table) -> String {
        if table.analyze_only {
            return if self.skip_locked {
                format!("ANALYZE (SKIP_LOCKED) {}", table.display())
            } else {
                format!("ANALYZE {}", table.display())
            };
        }
        let mut opts = Vec::new();
        if self.analyze && !table.skip_analyze {
            opts.push("ANALYZE");
        }
        if self.skip_locked {
            opts.push("SKIP_LOCKED");
        }
        if opts.is_empty() {
            format!("VACUUM {}", table.display())
        } else {
            format!("VACUUM ({}) {}", opts.join(", "), table.display())
        }
    }

    pub async fn run(&self, ctx: &ItemCtx) -> Outcome {
        let started = Instant::now();
        let target = match ctx.target(&self.target) {
            Ok(t) => t.clone(),
            Err(e) => return Outcome::fail(e.to_string()),
        };
        // The planning connection is a maintenance one (under `lock_timeout`): it becomes the
        // first worker.
        let first = match target.connect_for_maintenance_with_notices().await {
            Ok(c) => c,
            Err(e) => return Outcome::fail(e),
        };
        if let Err(e) = pg::ensure_primary(&first.0, &target).await {
            return Outcome::fail(e);
        }
        // The other workers connect while the plan is made; with `only_needed` (often one table
        // or none) once the plan says how many are needed. None for a dry run.
        let connect_others = |n: usize| -> Vec<_> {
            (0..n)
                .map(|_| {
                    let target = target.clone();
                    tokio::spawn(async move { target.connect_extra_worker().await })
                })
                .collect()
        };
        let mut others = if ctx.dry_run || self.only_needed {
            Vec::new()
        } else {
            connect_others(self.parallel.max(1) - 1)
        };
        let (tables, not_needed) = match self.plan(&first.0, target.lock_timeout).await {
            Ok(t) => t,
            Err(e) => {
                for o in &others {
                    o.abort();
                }
                return Outcome::fail(format!("target {}: cannot list tables: {e}", target.name));
            }
        };

        if ctx.dry_run {
            let mut details = vec![format!(
                "plan: {} table(s), largest first, {} at a time:",
                tables.len(),
                self.parallel.max(1)
            )];
            for t in &tables {
                let why = if t.reasons.is_empty() {
                    String::new()
                } else {
                    format!(" — {}", t.reasons.join(", "))
                };
                details.push(format!(
                    "{}; -- {}{why}",
                    self.statement(t),
                    crate::base::units::human_bytes(t.bytes.max(0) as u64)
                ));
            }
            if self.only_needed {
                details.push(format!(
                    "{not_needed} table(s) below the thresholds: not vacuumed"
                ));
            }
            let planned: Vec<String> = tables.iter().map(Table::display).collect();
            return Outcome::skipped(format!(
                "dry run: would vacuum {} table(s) on {}",
                tables.len(),
                target.name
            ))
            .with_details(details)
            .with_data(json!({ "planned": planned, "not_needed": not_needed }));
        }
        if self.only_needed {
            others = connect_others(self.parallel.max(1).min(tables.len()).saturating_sub(1));
        }
        let mut conns = vec![Ok(first)];
        for o in others {
            conns.push(match o.await {
                Ok(r) => r,
                Err(e) => Err(pg::PgError::Connect(format!(
                    "worker connection task failed: {e}"
                ))),
            });
        }
        // No more connections than tables.
        conns.truncate(tables.len().max(1));
        // Read-ahead is an optimisation: if the setting cannot be read, the server's is used
        // and the report says so; the vacuum goes on.
        let mut read_ahead_note = None;
        let read_ahead = if tables.is_empty() {
            None
        } else {
            match self
                .read_ahead(&conns[0].as_ref().expect("the planning connection").0)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    read_ahead_note = Some(format!(
                        "read-ahead: cannot read maintenance_io_concurrency ({e}): the server's setting is used"
                    ));
                    None
                }
            }
        };
        let read_ahead_set = read_ahead
            .as_ref()
            .map(|(n, _)| format!("SET maintenance_io_concurrency = {n}"));
        if let Some(set) = &read_ahead_set {
            for conn in &mut conns {
                if let Ok((client, _)) = conn
                    && let Err(e) = client.batch_execute(set).await
                {
                    *conn = Err(pg::PgError::Query(format!(
                        "target {}: {set}: {}",
                        target.name,
                        pg::pg_error(&e)
                    )));
                }
            }
        }

        // Partitioned tables (last in the plan) after everything else, on one connection.
        let split = tables
            .iter()
            .position(|t| t.partitioned)
            .unwrap_or(tables.len());
        let (mut results, mut spare, mut worker_errors) = self
            .execute(ctx, &target, &tables[..split], conns, started)
            .await;
        if split < tables.len() {
            let conn = match spare.take() {
                Some(c) => Ok(c),
                None => match target.connect_for_maintenance_with_notices().await {
                    Ok((client, notices)) => {
                        if let Some(set) = &read_ahead_set {
                            // Best effort: read-ahead only speeds the ANALYZE up.
                            let _ = client.batch_execute(set).await;
                        }
                        Ok((client, notices))
                    }
                    Err(e) => Err(e),
                },
            };
            let (more, left, errors) = self
                .execute(ctx, &target, &tables[split..], vec![conn], started)
                .await;
            results.extend(more);
            spare = left;
            worker_errors.extend(errors);
        }
        let mut out = self
            .report(
                &target,
                &tables,
                results,
                not_needed,
                spare.map(|(c, _)| c),
                started,
            )
            .await;
        // Say what we changed in the server's behaviour for our sessions.
        out.data["io_concurrency"] = json!(read_ahead.as_ref().map(|(n, _)| n));
        if let Some((n, why)) = read_ahead {
            out.details.push(format!(
                "read-ahead: maintenance_io_concurrency = {n} in our sessions ({why})"
            ));
        }
        out.details.extend(read_ahead_note);
        out.details.extend(workers::failed_line(
            &worker_errors,
            self.parallel.max(1).min(tables.len().max(1)),
        ));
        out.data["workers_failed"] = json!(worker_errors.len());
        out
    }

    /// Tables to vacuum, largest first, and how many were left out by `only_needed`.
    async fn plan(
        &self,
        client: &Client,
        lock_timeout: Duration,
    ) -> Result<(Vec<Table>, usize), String> {
        let version = pg::server_version_num(client).await?;
        // PG 17 has the MAINTAIN privilege; before it, owners (and members of the owning role),
        // the database owner (not for shared catalogs) and superusers may vacuum a table.
        let may_vacuum = if version >= 170000 {
            "has_table_privilege(c.oid, 'MAINTAIN')"
        } else {
            "(pg_has_role(c.relowner, 'USAGE') OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
             OR (NOT c.relisshared AND pg_has_role((SELECT datdba FROM pg_database WHERE datname = current_database()), 'USAGE')))"
        };
        // The pg_stat_get_* functions the pg_stat_all_tables view is made of, called directly:
        // the view also joins and groups every table's indexes, which costs more than the rest
        // of the plan on a database with many tables.
        let ins = if version >= 130000 {
            "pg_stat_get_ins_since_vacuum(c.oid)"
        } else {
            "0::bigint"
        };
        // autovacuum's own rule: a table's reloption (ALTER TABLE ... SET
        // (autovacuum_vacuum_scale_factor = 0.01)) wins over the server's setting.
        let opt = |reloption: &str, setting: &str| {
            format!(
                "coalesce((SELECT split_part(o, '=', 2) FROM unnest(c.reloptions) o WHERE split_part(o, '=', 1) = '{reloption}')::float8, \
                 current_setting('{setting}')::float8)"
            )
        };
        let sql = format!(
            "SELECT c.oid, n.nspname::text, c.relname::text, 0::bigint, \
                    pg_stat_get_dead_tuples(c.oid), pg_stat_get_mod_since_analyze(c.oid), {ins}, \
                    greatest(c.reltuples, pg_stat_get_live_tuples(c.oid))::float8, \
                    (pg_stat_get_last_analyze_time(c.oid) IS NULL AND pg_stat_get_last_autoanalyze_time(c.oid) IS NULL), age(c.relfrozenxid)::bigint, \
                    {vt}, {vs}, {at}, {as_}, {ins_thr}, {ins_scale}, {freeze}, \
                    array_to_string(ARRAY(SELECT o FROM unnest(c.reloptions) o WHERE o LIKE 'autovacuum\\_%' ORDER BY o), ', '), \
                    c.relkind = 'p', CASE WHEN c.relispartition THEN pg_partition_root(c.oid)::oid ELSE 0::oid END \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ({kinds}) AND n.nspname <> 'pg_toast' AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
               AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%' AND c.relpersistence <> 't' AND {may_vacuum} \
             ORDER BY n.nspname, c.relname",
            vt = opt("autovacuum_vacuum_threshold", "autovacuum_vacuum_threshold"),
            vs = opt(
                "autovacuum_vacuum_scale_factor",
                "autovacuum_vacuum_scale_factor"
            ),
            at = opt(
                "autovacuum_analyze_threshold",
                "autovacuum_analyze_threshold"
            ),
            as_ = opt(
                "autovacuum_analyze_scale_factor",
                "autovacuum_analyze_scale_factor"
            ),
            ins_thr = if version >= 130000 {
                opt(
                    "autovacuum_vacuum_insert_threshold",
                    "autovacuum_vacuum_insert_threshold",
                )
            } else {
                "-1::float8".to_string()
            },
            ins_scale = if version >= 130000 {
                opt(
                    "autovacuum_vacuum_insert_scale_factor",
                    "autovacuum_vacuum_insert_scale_factor",
                )
            } else {
                "0::float8".to_string()
            },
            freeze = opt("autovacuum_freeze_table_age", "vacuum_freeze_table_age"),
            // Partitioned tables have no rows and autovacuum never analyzes them, but the
            // planner uses their statistics of the whole hierarchy: `VACUUM ANALYZE;` gathers
            // them, and so do we (not with only_needed, which follows autovacuum).
            kinds = if self.analyze && !self.only_needed {
                "'r', 'm', 'p'"
            } else {
                "'r', 'm'"
            },
        );
        let rows = client
            .query(&sql, &[])
            .await
            .map_err(|e| pg::pg_error(&e))?;
        let mut tables = Vec::new();
        let mut not_needed = 0;
        // Each planned relation's partition root (0: not a partition).
        let mut roots = std::collections::HashMap::new();
        for r in rows {
            let schema: String = crate::base::pg::col(&r, 1)?;
            let name: String = crate::base::pg::col(&r, 2)?;
            if !self.selected(&schema, &name) {
                continue;
            }
            let partitioned: bool = crate::base::pg::col(&r, 18)?;
            let root: u32 = crate::base::pg::col(&r, 19)?;
            roots.insert(crate::base::pg::col::<u32>(&r, 0)?, root);
            let dead: i64 = crate::base::pg::col(&r, 4)?;
            let modified: i64 = crate::base::pg::col(&r, 5)?;
            let inserted: i64 = crate::base::pg::col(&r, 6)?;
            let tuples: f64 = crate::base::pg::col::<f64>(&r, 7)?.max(0.0);
            let never_analyzed: bool = crate::base::pg::col(&r, 8)?;
            let xid_age: i64 = crate::base::pg::col(&r, 9)?;
            let (vt, vs, at, as_, it, is, freeze): (f64, f64, f64, f64, f64, f64, f64) = (
                crate::base::pg::col(&r, 10)?,
                crate::base::pg::col(&r, 11)?,
                crate::base::pg::col(&r, 12)?,
                crate::base::pg::col(&r, 13)?,
                crate::base::pg::col(&r, 14)?,
                crate::base::pg::col(&r, 15)?,
                crate::base::pg::col(&r, 16)?,
            );
            let mut reasons = Vec::new();
            let mut analyze_only = false;
            if self.only_needed {
                let dead_limit = vt + vs * tuples;
                if dead as f64 > dead_limit {
                    reasons.push(format!("{dead} dead tuples > {dead_limit:.0}"));
                }
                if it >= 0.0 && inserted as f64 > it + is * tuples {
                    reasons.push(format!(
                        "{inserted} inserted since vacuum > {:.0}",
                        it + is * tuples
                    ));
                }
                if xid_age as f64 > freeze {
                    reasons.push(format!(
                        "xid age {xid_age} > vacuum_freeze_table_age {freeze:.0}"
                    ));
                }
                let needs_vacuum = !reasons.is_empty();
                if self.analyze && never_analyzed {
                    reasons.push("never analyzed".to_string());
                } else if self.analyze && modified as f64 > at + as_ * tuples {
                    reasons.push(format!(
                        "{modified} modified since analyze > {:.0}",
                        at + as_ * tuples
                    ));
                }
                if reasons.is_empty() {
                    not_needed += 1;
                    continue;
                }
                if !needs_vacuum {
                    analyze_only = true;
                    reasons.push("ANALYZE only (below the vacuum thresholds)".to_string());
                }
                let own: String = crate::base::pg::col(&r, 17)?;
                if !own.is_empty() {
                    reasons.push(format!("with the table's own {own}"));
                }
            }
            tables.push(Table {
                oid: crate::base::pg::col(&r, 0)?,
                schema,
                name,
                bytes: crate::base::pg::col(&r, 3)?,
                dead_before: dead,
                reasons,
                analyze_only: analyze_only || partitioned,
                skip_analyze: false,
                partitioned,
            });
        }
        // A partitioned table whose own root is planned too is analyzed as part of the root's
        // hierarchy; partitions under a planned root are vacuumed without ANALYZE.
        let planned_roots: std::collections::HashSet<u32> = tables
            .iter()
            .filter(|t| t.partitioned && roots.get(&t.oid) == Some(&0))
            .map(|t| t.oid)
            .collect();
        tables.retain(|t| !t.partitioned || planned_roots.contains(&t.oid));
        for t in &mut tables {
            if !t.partitioned && roots.get(&t.oid).is_some_and(|r| planned_roots.contains(r)) {
                t.skip_analyze = true;
            }
        }
        // Largest first by real size (taken without queueing behind locks).
        let oids: Vec<u32> = tables.iter().map(|t| t.oid).collect();
        let sizes = pg::relation_sizes(client, &oids, true, lock_timeout).await?;
        for t in &mut tables {
            t.bytes = sizes.get(&t.oid).copied().unwrap_or(0);
        }
        // Partitioned tables last: their ANALYZE follows every partition's VACUUM.
        tables.sort_by(|a, b| {
            a.partitioned
                .cmp(&b.partitioned)
                .then_with(|| b.bytes.cmp(&a.bytes))
                .then_with(|| a.schema.cmp(&b.schema))
                .then_with(|| a.name.cmp(&b.name))
        });
        Ok((tables, not_needed))
    }

    /// True when `schema.name` passes `schemas`, `tables` and `exclude_tables`.
    fn selected(&self, schema: &str, name: &str) -> bool {
        let matches = |pattern: &String| match pattern.split_once('.') {
            Some((s, t)) => s == schema && t == name,
            None => pattern == name,
        };
        if !self.schemas.is_empty() && !self.schemas.iter().any(|s| s == schema) {
            return false;
        }
        if !self.tables.is_empty() && !self.tables.iter().any(matches) {
            return false;
        }
        !self.exclude_tables.iter().any(matches)
    }

    /// Runs the plan with one worker per connection in `conns` (a connection that failed is a
    /// worker that takes nothing); returns one result per table (plan order), a connection
    /// still open, for the report's last query, and why workers had no connection.
    async fn execute(
        &self,
        ctx: &ItemCtx,
        target: &Target,
        tables: &[Table],
        conns: Vec<Conn>,
        started: Instant,
    ) -> (
        Vec<Done>,
        Option<(Client, UnboundedReceiver<String>)>,
        Vec<String>,
    ) {
        let results: Arc<Mutex<Vec<Option<Done>>>> = Arc::new(Mutex::new(vec![None; tables.len()]));
        let queue: Arc<Mutex<VecDeque<Queued>>> = Arc::new(Mutex::new(
            (0..tables.len())
                .map(|index| Queued {
                    index,
                    attempts: 0,
                    not_before: Instant::now(),
                })
                .collect(),
        ));
        // The window ends new starts; the item's own deadline (less a margin to report) too.
        let window_end = self.window.map(|w| started + w.0);
        let item_end = ctx
            .deadline
            .into_std()
            .checked_sub(Duration::from_secs(5))
            .unwrap_or_else(Instant::now);
        let stop_at = window_end.map_or(item_end, |w| w.min(item_end));
        let tables = Arc::new(tables.to_vec());

        let window_given = window_end.is_some();
        let (target, opts, cancel) = (target.clone(), self.clone(), ctx.cancel.clone());
        let work_results = results.clone();
        let connections = conns.into_iter().map(workers::ready).collect();
        let finished = workers::run(connections, "vacuum", move |(client, mut notices): (Client, UnboundedReceiver<String>)| {
            let (queue, results, tables, target, opts, cancel) = (
                queue.clone(),
                work_results.clone(),
                tables.clone(),
                target.clone(),
                opts.clone(),
                cancel.clone(),
            );
            async move {
                loop {
                    let next = {
                        let mut q = queue.lock().expect("queue lock");
                        let now = Instant::now();
                        match q.iter().position(|e| e.not_before <= now) {
                            Some(p) => q.remove(p).map(Ok),
                            None => q.iter().map(|e| e.not_before).min().map(Err),
                        }
                    };
                    let entry = match next {
                        None => return Some((client, notices)),
                        Some(Err(wake)) => {
                            tokio::select! {
                                _ = tokio::time::sleep_until(wake.into()) => {},
                                _ = cancel.cancelled() => return Some((client, notices)),
                            }
                            continue;
                        }
                        Some(Ok(e)) => e,
                    };
                    let now = Instant::now();
                    if cancel.is_cancelled() || now >= stop_at {
                        let why = if cancel.is_cancelled() {
                            "not done: the run was cancelled"
                        } else if window_given {
                            "not done: the window ended"
                        } else {
                            "not done: the item's timeout was near"
                        };
                        results.lock().expect("results lock")[entry.index] = Some(Done::NotStarted(why.into()));
                        continue;
                    }
                    let table = &tables[entry.index];
                    let sql = opts.statement(table);
                    let t0 = Instant::now();
                    while notices.try_recv().is_ok() {}
                    let r = tokio::select! {
                        r = client.batch_execute(&sql) => r,
                        _ = cancel.cancelled() => {
                            target.cancel(&client.cancel_token()).await;
                            results.lock().expect("results lock")[entry.index] = Some(Done::Failed("cancelled while running".into()));
                            return None;
                        }
                    };
                    let attempts = entry.attempts + 1;
                    let done = match r {
                        Ok(()) => {
                            let mut skipped = None;
                            while let Ok(n) = notices.try_recv() {
                                if n.contains("skipping") {
                                    skipped = Some(n);
                                }
                            }
                            match skipped {
                                Some(n) => Done::Skipped(n),
                                None => Done::Vacuumed { seconds: t0.elapsed().as_secs_f64(), attempts },
                            }
                        }
                        Err(e) if pg::is_lock_timeout(&e) && entry.attempts < opts.retries => {
                            let delay = Duration::from_secs(1 << entry.attempts.min(6));
                            queue.lock().expect("queue lock").push_back(Queued {
                                index: entry.index,
                                attempts,
                                not_before: Instant::now() + delay,
                            });
                            continue;
                        }
                        Err(e) if pg::is_lock_timeout(&e) => {
                            let who = pg::lock_blockers(&client, &table.display(), t0.elapsed(), pg::LockWait::Vacuum)
                                .await
                                .map(|w| format!(": waited for {w}"))
                                .unwrap_or_default();
                            Done::Failed(format!("lock not available after {attempts} attempt(s) (lock_timeout {:?}){who}", target.lock_timeout))
                        }
                        Err(e) if pg::sqlstate(&e) == Some("42P01") => Done::Skipped("table was dropped meanwhile".into()),
                        Err(e) => Done::Failed(pg::pg_error(&e)),
                    };
                    results.lock().expect("results lock")[entry.index] = Some(done);
                }
            }
        })
        .await;
        let (worker_errors, spare) = (finished.errors, finished.spare);
        let results = results.lock().expect("results lock").clone();
        let fallback = worker_errors
            .first()
            .cloned()
            .unwrap_or_else(|| "not done".into());
        let results = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Done::Failed(fallback.clone())))
            .collect();
        (results, spare, worker_errors)
    }

    async fn report(
        &self,
        target: &Target,
        tables: &[Table],
        results: Vec<Done>,
        not_needed: usize,
        spare: Option<Client>,
        started: Instant,
    ) -> Outcome {
        // Dead tuples after: the stats VACUUM reported (fresh per transaction), read on a
        // worker's connection when one is left.
        let oids: Vec<u32> = tables.iter().map(|t| t.oid).collect();
        let mut dead_after = std::collections::HashMap::new();
        let client = match spare {
            Some(c) => Ok(c),
            None => target.connect().await,
        };
        if let Ok(c) = client
            && let Ok(rows) = c
                .query(
                    "SELECT o, pg_stat_get_dead_tuples(o) FROM unnest($1::oid[]) o",
                    &[&oids],
                )
                .await
        {
            for r in rows {
                // A row with an unexpected NULL is left out (the "after" count is informative).
                if let (Ok(oid), Ok(dead)) = (
                    crate::base::pg::col::<u32>(&r, 0),
                    crate::base::pg::col::<i64>(&r, 1),
                ) {
                    dead_after.insert(oid, dead);
                }
            }
        }
        let (mut done, mut skipped, mut failed, mut analyzed_only) = (0, 0, 0, 0);
        let (mut dead_before_sum, mut dead_after_sum) = (0i64, 0i64);
        let mut problem_lines = Vec::new();
        let mut table_data = Vec::new();
        let mut timed: Vec<(f64, String)> = Vec::new();
        for (t, r) in tables.iter().zip(&results) {
            let after = dead_after.get(&t.oid).copied();
            let (status, note, seconds) = match r {
                Done::Vacuumed { seconds, attempts } => {
                    done += 1;
                    // ANALYZE alone removes no dead tuples: the sums are over VACUUMed tables.
                    if !t.analyze_only {
                        dead_before_sum += t.dead_before;
                        dead_after_sum += after.unwrap_or(0);
                    }
                    timed.push((
                        *seconds,
                        format!(
                            "{} {} in {seconds:.1}s",
                            t.display(),
                            crate::base::units::human_bytes(t.bytes.max(0) as u64)
                        ),
                    ));
                    let mut notes = Vec::new();
                    if t.analyze_only {
                        analyzed_only += 1;
                        notes.push("ANALYZE only".to_string());
                    }
                    if *attempts > 1 {
                        notes.push(format!("after {attempts} attempts (lock)"));
                    }
                    let note = notes.join(", ");
                    ("done", note, Some(*seconds))
                }
                Done::Skipped(why) => {
                    skipped += 1;
                    problem_lines.push(format!("skipped {}: {why}", t.display()));
                    ("skipped", why.clone(), None)
                }
                Done::NotStarted(why) => {
                    skipped += 1;
                    problem_lines.push(format!("{} {why}", t.display()));
                    ("not_done", why.clone(), None)
                }
                Done::Failed(why) => {
                    failed += 1;
                    problem_lines.push(format!("FAILED {}: {why}", t.display()));
                    ("failed", why.clone(), None)
                }
            };
            table_data.push(json!({
                "schema": t.schema, "table": t.name, "bytes": t.bytes, "status": status, "note": note,
                "seconds": seconds, "dead_tuples_before": t.dead_before, "dead_tuples_after": after, "reasons": t.reasons,
            }));
        }
        let elapsed = started.elapsed().as_secs_f64();
        let mut details = problem_lines;
        if self.only_needed {
            for t in tables {
                details.push(format!("chose {}: {}", t.display(), t.reasons.join(", ")));
            }
            details.push(format!(
                "{not_needed} table(s) below the thresholds: not vacuumed"
            ));
        }
        timed.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (_, line) in timed.iter().take(10) {
            details.push(line.clone());
        }
        let vacuumed = done - analyzed_only;
        if vacuumed > 0 {
            details.push(format!(
                "dead tuples: {dead_before_sum} before, {dead_after_sum} after (the {vacuumed} VACUUMed table(s))"
            ));
        }
        let status = if failed > 0 {
            Status::Fail
        } else if skipped > 0 {
            Status::Warn
        } else {
            Status::Pass
        };
        let mut summary = format!(
            "{done} of {} table(s) vacuumed on {} in {elapsed:.1}s",
            tables.len(),
            target.name
        );
        if analyzed_only > 0 {
            summary.push_str(&format!(" ({analyzed_only} of them ANALYZE only)"));
        }
        if skipped > 0 {
            summary.push_str(&format!(", {skipped} skipped"));
        }
        if failed > 0 {
            summary.push_str(&format!(", {failed} failed"));
        }
        if self.only_needed {
            summary.push_str(&format!(" ({not_needed} not needed)"));
        }
        Outcome::new(status, summary).with_details(details).with_data(json!({
            "target": target.name,
            "tables_total": tables.len(), "tables_done": done, "tables_skipped": skipped, "tables_failed": failed,
            "tables_not_needed": not_needed, "tables_analyze_only": analyzed_only,
            "dead_tuples_before": dead_before_sum, "dead_tuples_after": dead_after_sum,
            "seconds": elapsed, "tables": table_data,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(schemas: &[&str], tables: &[&str], exclude: &[&str]) -> Vacuum {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Vacuum {
            target: "t".into(),
            parallel: 2,
            analyze: true,
            only_needed: false,
            skip_locked: false,
            schemas: v(schemas),
            tables: v(tables),
            exclude_tables: v(exclude),
            window: None,
            retries: 2,
            io_concurrency: None,
        }
    }

    #[test]
    fn filters_by_schema_table_and_exclusion() {
        let o = opts(&["trading"], &[], &["trading.audit"]);
        assert!(o.selected("trading", "orders"));
        assert!(!o.selected("public", "orders"));
        assert!(!o.selected("trading", "audit"));
        let o = opts(&[], &["orders", "public.x"], &[]);
        assert!(o.selected("trading", "orders"));
        assert!(o.selected("public", "x"));
        assert!(!o.selected("trading", "x"));
    }

    #[test]
    fn statement_quotes_names_and_lists_options() {
        let mut o = opts(&[], &[], &[]);
        o.skip_locked = true;
        let t = Table {
            oid: 1,
            schema: "public".into(),
            name: "Weird \"Name\"".into(),
            bytes: 0,
            dead_before: 0,
            reasons: vec![],
            analyze_only: false,
            skip_analyze: false,
            partitioned: false,
        };
        assert_eq!(
            o.statement(&t),
            "VACUUM (ANALYZE, SKIP_LOCKED) public.\"Weird \"\"Name\"\"\""
        );
        o.analyze = false;
        o.skip_locked = false;
        assert_eq!(o.statement(&t), "VACUUM public.\"Weird \"\"Name\"\"\"");
    }

    #[test]
    fn a_table_past_only_the_analyze_threshold_gets_analyze_alone() {
        let mut o = opts(&[], &[], &[]);
        let t = Table {
            oid: 1,
            schema: "trading".into(),
            name: "orders".into(),
            bytes: 0,
            dead_before: 0,
            reasons: vec![],
            analyze_only: true,
            skip_analyze: false,
            partitioned: false,
        };
        assert_eq!(o.statement(&t), "ANALYZE trading.orders");
        o.skip_locked = true;
        assert_eq!(o.statement(&t), "ANALYZE (SKIP_LOCKED) trading.orders");
    }
}
