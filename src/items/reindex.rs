//! `reindex`: REINDEX (CONCURRENTLY) per index, in parallel across tables, after cleaning leftovers.
//!
//! `REINDEX DATABASE` takes locks that block writes, and a failed `REINDEX ... CONCURRENTLY`
//! leaves invalid `*_ccnew*` (and sometimes `*_ccold*`) indexes that slow down every write until
//! someone drops them. This item first drops invalid indexes left by earlier runs (never one whose
//! table has a build in progress right now), then rebuilds each index on its own with
//! `REINDEX INDEX CONCURRENTLY`. Workers take whole tables, so two builds never run on one table
//! at once (they would wait on each other's locks), while different tables are rebuilt in
//! parallel, largest first. Afterwards every index is checked for `indisvalid`. System catalogs
//! are skipped (they cannot be reindexed concurrently).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Deserialize;
use serde_json::json;
use tokio_postgres::Client;

use super::support::workers;
use super::{ItemCtx, Outcome, Prepare, Status};
use crate::base::pg::{self, Target, qualified};
#[allow(unused_imports)]
use crate::base::units::{Dur, Percent, Size};

/// Options of `kind = "reindex"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reindex {
    pub target: String,
    /// Use `REINDEX ... CONCURRENTLY`. Default true. Without it each index is rebuilt under a
    /// lock that blocks writes to its table (still under `lock_timeout`).
    #[serde(default = "default_true")]
    pub concurrently: bool,
    /// Tables worked on at once (each on its own connection). Default 2.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    /// Limit to these schemas. Default: every schema but the system ones.
    #[serde(default)]
    pub schemas: Vec<String>,
    /// Limit to the indexes of these tables (`schema.table` or `table`, names as stored).
    #[serde(default)]
    pub tables: Vec<String>,
    /// Only B-tree indexes with at least this estimated bloat (from `pgstattuple`'s
    /// `pgstatindex`: 1 - leaf density / fill factor). Default: every index.
    pub min_bloat: Option<Percent>,
}

fn default_parallel() -> usize {
    2
}
fn default_true() -> bool {
    true
}

/// One index to rebuild.
#[derive(Debug, Clone)]
struct Index {
    schema: String,
    name: String,
    bytes: i64,
}

/// The indexes of one table, worked on by one worker in turn.
#[derive(Debug, Clone)]
struct TableWork {
    table: String,
    bytes: i64,
    indexes: Vec<Index>,
}

impl Reindex {
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
        if let Some(b) = self.min_bloat
            && !(0.0..=100.0).contains(&b.0)
        {
            p.error("min_bloat", "min_bloat must be between 0% and 100%");
        }
    }

    fn selected(&self, schema: &str, table: &str) -> bool {
        if !self.schemas.is_empty() && !self.schemas.iter().any(|s| s == schema) {
            return false;
        }
        self.tables.is_empty()
            || self.tables.iter().any(|p| match p.split_once('.') {
                Some((s, t)) => s == schema && t == table,
                None => p == table,
            })
    }

    fn statement(&self, ix: &Index) -> String {
        let c = if self.concurrently {
            " CONCURRENTLY"
        } else {
            ""
        };
        format!("REINDEX INDEX{c} {}", qualified(&ix.schema, &ix.name))
    }

    pub async fn run(&self, ctx: &ItemCtx) -> Outcome {
        let started = Instant::now();
        let target = match ctx.target(&self.target) {
            Ok(t) => t.clone(),
            Err(e) => return Outcome::fail(e.to_string()),
        };
        let client = match target.connect_for_maintenance().await {
            Ok(c) => c,
            Err(e) => return Outcome::fail(e),
        };
        if let Err(e) = pg::ensure_primary(&client, &target).await {
            return Outcome::fail(e);
        }
        // A cancelled build leaves an invalid index: builds are never cut short by a timeout.
        if let Err(e) = client.batch_execute("SET statement_timeout = 0").await {
            return Outcome::fail(format!("target {}: {}", target.name, pg::pg_error(&e)));
        }
        let leftovers = match self.leftovers(&client).await {
            Ok(l) => l,
            Err(e) => {
                return Outcome::fail(format!(
                    "target {}: cannot look for invalid indexes: {e}",
                    target.name
                ));
            }
        };
        let mut details = Vec::new();
        let (work, bloat_note) = match self.plan(&client, target.lock_timeout).await {
            Ok(w) => w,
            Err(e) => {
                return Outcome::fail(format!("target {}: cannot list indexes: {e}", target.name));
            }
        };
        if let Some(n) = &bloat_note {
            details.push(n.clone());
        }
        let total: usize = work.iter().map(|w| w.indexes.len()).sum();

        if ctx.dry_run {
            for l in &leftovers {
                details.push(format!("DROP INDEX CONCURRENTLY {l}; -- invalid leftover"));
            }
            for w in &work {
                for ix in &w.indexes {
                    details.push(format!(
                        "{}; -- on {}, {}",
                        self.statement(ix),
                        w.table,
                        crate::base::units::human_bytes(ix.bytes.max(0) as u64)
                    ));
                }
            }
            return Outcome::skipped(format!("dry run: would drop {} invalid leftover(s) and rebuild {total} index(es) on {}", leftovers.len(), target.name))
                .with_details(details)
                .with_data(json!({ "leftovers": leftovers, "planned": work.iter().flat_map(|w| w.indexes.iter().map(|i| qualified(&i.schema, &i.name))).collect::<Vec<_>>() }));
        }

        let mut leftovers_dropped = Vec::new();
        let mut failures = Vec::new();
        for l in &leftovers {
            match client
                .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {l}"))
                .await
            {
                Ok(()) => {
                    details.push(format!("dropped invalid leftover {l}"));
                    leftovers_dropped.push(l.clone());
                }
                Err(e) => failures.push(format!(
                    "cannot drop invalid leftover {l}: {}",
                    pg::pg_error(&e)
                )),
            }
        }

        // The planning connection becomes the first worker: no extra connection, and no race
        // for its slot on a server at max_connections.
        let (results, worker_errors, spare) = self.execute(ctx, &target, &work, client).await;
        if let Some(line) =
            workers::failed_line(&worker_errors, self.parallel.max(1).min(work.len().max(1)))
        {
            details.insert(0, line);
        }
        let mut done = 0;
        let mut index_data = Vec::new();
        for (name, r, seconds) in &results {
            match r {
                Ok(()) => done += 1,
                Err(e) => failures.push(format!("{name}: {e}")),
            }
            index_data.push(json!({ "index": name, "ok": r.is_ok(), "error": r.as_ref().err(), "seconds": seconds }));
        }

        // Verify: every index we rebuilt is valid, and no new leftovers exist (on a worker's
        // connection when one is left).
        let verify = match spare {
            Some(c) => Ok(c),
            None => target.connect().await,
        };
        match verify {
            Ok(c) => {
                let names: Vec<String> = results
                    .iter()
                    .filter(|r| r.1.is_ok())
                    .map(|r| r.0.clone())
                    .collect();
                match c.query("SELECT x::text FROM unnest($1::text[]) x WHERE NOT coalesce((SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(x)), false)", &[&names]).await {
                    Ok(rows) => {
                        for r in rows {
                            match pg::col::<String>(&r, 0) {
                                Ok(name) => failures.push(format!("{name} is not valid after the rebuild (indisvalid = false)")),
                                Err(e) => failures.push(format!("cannot verify indisvalid: {e}")),
                            }
                        }
                    }
                    Err(e) => failures.push(format!("cannot verify indisvalid: {}", pg::pg_error(&e))),
                }
                if let Ok(left) = self.leftovers(&c).await {
                    for l in left {
                        failures.push(format!("invalid index {l} remains"));
                    }
                }
            }
            Err(e) => failures.push(format!("cannot verify: {e}")),
        }

        let mut timed: Vec<&(String, Result<(), String>, f64)> =
            results.iter().filter(|r| r.1.is_ok()).collect();
        timed.sort_by(|a, b| b.2.total_cmp(&a.2));
        for (name, _, s) in timed.iter().take(10) {
            details.push(format!("{name} in {s:.1}s"));
        }
        let mut lines = failures.clone();
        lines.extend(details);
        let status = if !failures.is_empty() {
            Status::Fail
        } else if !leftovers_dropped.is_empty() {
            Status::Warn
        } else {
            Status::Pass
        };
        let mut summary = format!(
            "{done} of {total} index(es) rebuilt on {} in {:.1}s",
            target.name,
            started.elapsed().as_secs_f64()
        );
        if !leftovers_dropped.is_empty() {
            summary.push_str(&format!(
                ", {} invalid leftover(s) dropped",
                leftovers_dropped.len()
            ));
        }
        if !failures.is_empty() {
            summary.push_str(&format!(", {} problem(s)", failures.len()));
        }
        Outcome::new(status, summary).with_details(lines).with_data(json!({
            "target": target.name, "indexes_total": total, "indexes_done": done, "failures": failures,
            "leftovers_dropped": leftovers_dropped, "indexes": index_data, "seconds": started.elapsed().as_secs_f64(),
        }))
    }

    /// Invalid indexes in the selection that no session is building right now, qualified.
    async fn leftovers(&self, client: &Client) -> Result<Vec<String>, String> {
        // The owning table of a TOAST index is the table whose reltoastrelid it is.
        let rows = client
            .query(
                "SELECT n.nspname::text, c.relname::text, coalesce(on_.nspname, tn.nspname)::text, coalesce(o.relname, t.relname)::text \
                 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace \
                 LEFT JOIN pg_class o ON o.reltoastrelid = t.oid LEFT JOIN pg_namespace on_ ON on_.oid = o.relnamespace \
                 WHERE NOT i.indisvalid AND c.relkind = 'i' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
                   AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.relid IN (i.indrelid, o.oid) OR p.index_relid = i.indexrelid) \
                   AND NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'relation' AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                                   AND l.relation IN (i.indrelid, i.indexrelid, o.oid) AND l.pid <> pg_backend_pid() \
                                   AND l.mode IN ('ShareUpdateExclusiveLock', 'ShareLock', 'AccessExclusiveLock')) \
                 ORDER BY 1, 2",
                &[],
            )
            .await
            .map_err(|e| pg::pg_error(&e))?;
        let mut out = Vec::new();
        for r in &rows {
            if self.selected(&pg::col::<String>(r, 2)?, &pg::col::<String>(r, 3)?) {
                out.push(qualified(
                    &pg::col::<String>(r, 0)?,
                    &pg::col::<String>(r, 1)?,
                ));
            }
        }
        Ok(out)
    }

    /// Tables with their valid indexes, largest first; a note when `min_bloat` could not apply.
    async fn plan(
        &self,
        client: &Client,
        lock_timeout: std::time::Duration,
    ) -> Result<(Vec<TableWork>, Option<String>), String> {
        let version = pg::server_version_num(client).await?;
        let may = if version >= 170000 {
            "has_table_privilege(t.oid, 'MAINTAIN')"
        } else {
            "(pg_has_role(t.relowner, 'USAGE') OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user))"
        };
        let sql = format!(
            "SELECT n.nspname::text, c.relname::text, tn.nspname::text, t.relname::text, 0::bigint, c.oid, am.amname::text \
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace JOIN pg_am am ON am.oid = c.relam \
             WHERE c.relkind = 'i' AND i.indisvalid AND t.relpersistence <> 't' \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
               AND NOT EXISTS (SELECT 1 FROM pg_constraint x WHERE x.conindid = c.oid AND x.contype = 'x') AND {may} \
             ORDER BY 3, 4, 2"
        );
        let rows = client
            .query(&sql, &[])
            .await
            .map_err(|e| pg::pg_error(&e))?;
        let oids: Vec<u32> = rows
            .iter()
            .map(|r| pg::col(r, 5))
            .collect::<Result<_, _>>()?;
        let sizes = pg::relation_sizes(client, &oids, false, lock_timeout).await?;
        let mut note = None;
        let mut pgstattuple = false;
        if self.min_bloat.is_some() {
            pgstattuple = client
                .query_opt(
                    "SELECT 1 FROM pg_extension WHERE extname = 'pgstattuple'",
                    &[],
                )
                .await
                .map_err(|e| pg::pg_error(&e))?
                .is_some();
            if !pgstattuple {
                note = Some("min_bloat needs the pgstattuple extension (CREATE EXTENSION pgstattuple): every index is rebuilt".into());
            }
        }
        let mut tables: BTreeMap<String, TableWork> = BTreeMap::new();
        for r in rows {
            let (schema, name, tschema, tname): (String, String, String, String) = (
                pg::col(&r, 0)?,
                pg::col(&r, 1)?,
                pg::col(&r, 2)?,
                pg::col(&r, 3)?,
            );
            if !self.selected(&tschema, &tname) {
                continue;
            }
            if let (Some(min), true) = (self.min_bloat, pgstattuple) {
                let oid: u32 = pg::col(&r, 5)?;
                let am: String = pg::col(&r, 6)?;
                if am != "btree" {
                    continue;
                }
                let bloat = client
                    .query_one(
                        "SELECT CASE WHEN s.leaf_pages = 0 THEN 0 ELSE greatest(0, 100 - 100 * s.avg_leaf_density / \
                           coalesce((SELECT split_part(o, '=', 2)::float8 FROM unnest((SELECT reloptions FROM pg_class WHERE oid = $1)) o WHERE o LIKE 'fillfactor=%'), 90)) END::float8 \
                         FROM pgstatindex($1::oid::regclass) s",
                        &[&oid],
                    )
                    .await
                    .map_err(|e| pg::pg_error(&e))
                    .and_then(|r| pg::col::<f64>(&r, 0))?;
                if bloat < min.0 {
                    continue;
                }
            }
            let key = qualified(&tschema, &tname);
            let bytes: i64 = sizes.get(&pg::col::<u32>(&r, 5)?).copied().unwrap_or(0);
            let w = tables.entry(key.clone()).or_insert_with(|| TableWork {
                table: key,
                bytes: 0,
                indexes: Vec::new(),
            });
            w.bytes += bytes;
            w.indexes.push(Index {
                schema,
                name,
                bytes,
            });
        }
        let mut work: Vec<TableWork> = tables.into_values().collect();
        for w in &mut work {
            w.indexes.sort_by_key(|ix| std::cmp::Reverse(ix.bytes));
        }
        work.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.table.cmp(&b.table)));
        Ok((work, note))
    }

    /// Rebuilds with `parallel` workers, one table per worker at a time, the first on `first`.
    /// Returns per index (qualified name, result, seconds), why workers had no connection, and
    /// a connection still open for the checks afterwards.
    async fn execute(
        &self,
        ctx: &ItemCtx,
        target: &Target,
        work: &[TableWork],
        first: Client,
    ) -> (
        Vec<(String, Result<(), String>, f64)>,
        Vec<String>,
        Option<Client>,
    ) {
        let queue: Arc<Mutex<VecDeque<TableWork>>> =
            Arc::new(Mutex::new(work.iter().cloned().collect()));
        let results = Arc::new(Mutex::new(Vec::new()));
        let count = self.parallel.max(1).min(work.len().max(1));
        let mut connections: Vec<workers::Connect<Client>> = vec![workers::ready(Ok(first))];
        for _ in 1..count {
            let target = target.clone();
            connections.push(Box::pin(async move {
                let (c, _notices) = target.connect_extra_worker().await?;
                c.batch_execute("SET statement_timeout = 0")
                    .await
                    .map_err(|e| pg::PgError::Query(pg::pg_error(&e)))?;
                Ok(c)
            }));
        }
        let (target, opts, cancel) = (target.clone(), self.clone(), ctx.cancel.clone());
        let (work_queue, work_results) = (queue.clone(), results.clone());
        // The first worker's connection is already under statement_timeout = 0.
        let finished = workers::run(connections, "reindex", move |client: Client| {
            let (queue, results, target, opts, cancel) = (
                work_queue.clone(),
                work_results.clone(),
                target.clone(),
                opts.clone(),
                cancel.clone(),
            );
            async move {
                loop {
                    let Some(table) = queue.lock().expect("queue lock").pop_front() else {
                        return Some(client);
                    };
                    for ix in &table.indexes {
                        let name = qualified(&ix.schema, &ix.name);
                        if cancel.is_cancelled() {
                            results.lock().expect("results lock").push((
                                name,
                                Err("not done: the run was cancelled".to_string()),
                                0.0,
                            ));
                            continue;
                        }
                        let t0 = Instant::now();
                        let sql = opts.statement(ix);
                        let r = tokio::select! {
                            r = client.batch_execute(&sql) => match r {
                                Ok(()) => Ok(()),
                                Err(e) => Err(pg::explain_build_failure(&client, &e, &name, t0.elapsed(), opts.concurrently).await),
                            },
                            _ = cancel.cancelled() => {
                                target.cancel(&client.cancel_token()).await;
                                Err("cancelled while running".to_string())
                            }
                        };
                        if r.is_err() && opts.concurrently {
                            // A failed concurrent rebuild leaves `<name>_ccnew` (invalid): drop it now.
                            drop_ccnew(&client, ix).await;
                        }
                        results.lock().expect("results lock").push((
                            name,
                            r,
                            t0.elapsed().as_secs_f64(),
                        ));
                    }
                }
            }
        })
        .await;
        let (errors, spare) = (finished.errors, finished.spare);
        let mut out = results.lock().expect("results lock").clone();
        // Tables no worker could take (all connections failed) are failures, not silence.
        let leftover: Vec<TableWork> = queue.lock().expect("queue lock").drain(..).collect();
        let why = errors.first().cloned().unwrap_or_else(|| "not done".into());
        for t in leftover {
            for ix in t.indexes {
                out.push((qualified(&ix.schema, &ix.name), Err(why.clone()), 0.0));
            }
        }
        (out, errors, spare)
    }
}

/// Drops the invalid `<index>_ccnew*` left by a failed `REINDEX INDEX CONCURRENTLY` of `ix`.
async fn drop_ccnew(client: &Client, ix: &Index) {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_index i ON i.indexrelid = c.oid \
             WHERE n.nspname = $1 AND NOT i.indisvalid AND left(c.relname, length($2) + 6) = $2 || '_ccnew'",
            &[&ix.schema, &ix.name],
        )
        .await;
    if let Ok(rows) = rows {
        for r in rows {
            let Ok(name) = pg::col::<String>(&r, 0) else {
                continue;
            };
            let _ = client
                .batch_execute(&format!(
                    "DROP INDEX CONCURRENTLY IF EXISTS {}",
                    qualified(&ix.schema, &name)
                ))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_quotes_and_honours_concurrently() {
        let mut r = Reindex {
            target: "t".into(),
            concurrently: true,
            parallel: 2,
            schemas: vec![],
            tables: vec![],
            min_bloat: None,
        };
        let ix = Index {
            schema: "public".into(),
            name: "Weird \"Ix\"".into(),
            bytes: 0,
        };
        assert_eq!(
            r.statement(&ix),
            "REINDEX INDEX CONCURRENTLY public.\"Weird \"\"Ix\"\"\""
        );
        r.concurrently = false;
        assert_eq!(
            r.statement(&ix),
            "REINDEX INDEX public.\"Weird \"\"Ix\"\"\""
        );
        r.tables = vec!["trading.orders".into()];
        assert!(r.selected("trading", "orders"));
        assert!(!r.selected("public", "orders"));
    }
}
