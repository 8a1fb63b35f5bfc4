//! `slow_queries`: slowest statements (pg_stat_statements) and long-running ones (pg_stat_activity).
//!
//! The runbook's "slow queries" alert and weekly review: the top N statements by mean execution
//! time from `pg_stat_statements` (PG 13+ names its columns `mean_exec_time`, earlier versions
//! `mean_time`; both are handled), and statements running longer than `max_running` right now.
//! The item creates nothing: when the extension is missing it says so, with the fix. `top = 0`
//! checks only the running statements (no extension needed).
//!
//! Query texts are reported normalised ([`super::query_text`]): literals become `$1`, `$2`...,
//! comments go, as pg_stat_statements shows them, so an `ALTER ROLE ... PASSWORD '...'` or a
//! customer's address in a `WHERE` never reaches a report. pg_stat_activity's texts are raw,
//! and pg_stat_statements keeps some utility statements' literals: both are normalised. What
//! identifies a statement stays: pid, user, application, database, state, duration, query id.

use serde::Deserialize;
use serde_json::json;

use super::{ItemCtx, Outcome, Prepare, Status, query_text};
use crate::base::pg;
#[allow(unused_imports)]
use crate::base::units::{Dur, Percent, Size};

/// Options of `kind = "slow_queries"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowQueries {
    pub target: String,
    /// How many statements of `pg_stat_statements` to list (this database's, slowest mean
    /// first). 0: only the long-running check. Default 10.
    #[serde(default = "default_top")]
    pub top: usize,
    /// Warn when a statement's mean time is above. Default 500ms (at most `fail_mean` when
    /// only that is set: explicit beats default).
    #[serde(rename = "warn_mean", default)]
    warn_mean_set: Option<Dur>,
    /// The warning threshold in effect (set by `prepare`).
    #[serde(skip, default = "default_warn_mean")]
    pub warn_mean: Dur,
    /// Fail when a statement's mean time is above. Default: never.
    pub fail_mean: Option<Dur>,
    /// Warn when a statement (or an open transaction sitting idle) has been running longer,
    /// on any database of the server. Default 5m.
    #[serde(default = "default_max_running")]
    pub max_running: Dur,
    /// List maintenance statements too (VACUUM, ANALYZE, REINDEX, CREATE INDEX, CLUSTER,
    /// CHECKPOINT, and pg_dump's `COPY ... TO stdout`). Default false: they are long by nature,
    /// runbook's own monthly maintenance and the nightly backup among them, and would fill the
    /// list and raise the alarm every week; the report says how many were left out.
    #[serde(default)]
    pub include_maintenance: bool,
}

/// What `include_maintenance = false` leaves out: the statement's text (as pg_stat_statements
/// keeps it) begins with a maintenance command, or is a COPY to the client (pg_dump's). A
/// PostgreSQL regular expression, matched case-insensitively (`~*`).
const MAINTENANCE_RE: &str = r"^\s*(VACUUM|ANALYZE|ANALYSE|REINDEX|CLUSTER|CHECKPOINT|CREATE\s+(UNIQUE\s+)?INDEX|COPY\s.*\sTO\s+STDOUT)";

const FIX_PRELOAD: &str = "to enable it: add pg_stat_statements to shared_preload_libraries in postgresql.conf and restart PostgreSQL (the extension is already created in this database)";
const FIX: &str = "to enable it: add pg_stat_statements to shared_preload_libraries in postgresql.conf, restart PostgreSQL, then run CREATE EXTENSION pg_stat_statements; in this database";

impl SlowQueries {
    pub fn prepare(&mut self, p: &mut Prepare) {
        self.warn_mean = match (self.warn_mean_set, self.fail_mean) {
            (Some(w), _) => w,
            (None, Some(f)) => default_warn_mean().min(f),
            (None, None) => default_warn_mean(),
        };
        if let Some(f) = self.fail_mean
            && f < self.warn_mean
        {
            p.error(
                "fail_mean",
                format!("fail_mean ({f}) is below warn_mean ({})", self.warn_mean),
            );
        }
        if self.top > 1000 {
            p.error("top", "top above 1000 makes an unreadable report");
        }
    }

    pub async fn run(&self, ctx: &ItemCtx) -> Outcome {
        let (target, client) = match ctx.check_connection(&self.target).await {
            Ok(c) => c,
            Err(e) => return Outcome::fail(e.to_string()),
        };
        let mut status = Status::Pass;
        let mut summary_parts = Vec::new();
        let mut details = Vec::new();
        let mut data = json!({ "target": target.name });

        if self.top > 0 {
            match self.statements(&client).await {
                Ok((rows, left_out)) => {
                    let warn_ms = self.warn_mean.0.as_secs_f64() * 1000.0;
                    let fail_ms = self.fail_mean.map(|f| f.0.as_secs_f64() * 1000.0);
                    let mut over_warn = 0;
                    let mut over_fail = 0;
                    let mut list = Vec::new();
                    for (query, queryid, calls, mean, total) in &rows {
                        let mark = if fail_ms.is_some_and(|f| *mean > f) {
                            over_fail += 1;
                            "FAIL "
                        } else if *mean > warn_ms {
                            over_warn += 1;
                            "WARN "
                        } else {
                            ""
                        };
                        details.push(format!(
                            "{mark}{mean:.1} ms mean, {calls} calls, {:.1} s total: {}",
                            total / 1000.0,
                            one_line(query, 160)
                        ));
                        list.push(json!({ "query": query, "query_id": queryid, "calls": calls, "mean_ms": mean, "total_ms": total }));
                    }
                    if over_fail > 0 {
                        status = Status::Fail;
                        summary_parts.push(format!(
                            "{over_fail} statement(s) above fail_mean {}",
                            self.fail_mean.map(|f| f.to_string()).unwrap_or_default()
                        ));
                    }
                    if over_warn > 0 {
                        status = status.max_by_severity(Status::Warn);
                        summary_parts.push(format!(
                            "{over_warn} statement(s) above warn_mean {}",
                            self.warn_mean
                        ));
                    }
                    if over_fail == 0 && over_warn == 0 {
                        let slowest = rows
                            .first()
                            .map(|r| format!(" (slowest {:.1} ms mean)", r.3))
                            .unwrap_or_default();
                        summary_parts
                            .push(format!("no statement above {}{slowest}", self.warn_mean));
                    }
                    // The trend (SPEC 9.3): the slowest statement's mean time in ms.
                    if let Some(r) = rows.first() {
                        data["value"] = json!(r.3);
                    }
                    data["statements"] = json!(list);
                    data["maintenance_left_out"] = json!(left_out);
                    if let Some(n) = left_out.filter(|n| *n > 0) {
                        details.push(format!(
                            "left out: {n} maintenance statement(s) above warn_mean {} (VACUUM, ANALYZE, REINDEX, CREATE INDEX, CLUSTER, CHECKPOINT, pg_dump's COPY ... TO stdout); include_maintenance = true lists them",
                            self.warn_mean
                        ));
                    }
                }
                Err(Missing(msg)) => {
                    status = Status::Warn;
                    summary_parts.push(msg.clone());
                    // Created but not preloaded: the restart is all that is left to do.
                    let fix = if msg.contains("not loaded") {
                        FIX_PRELOAD
                    } else {
                        FIX
                    };
                    details.push(format!("{msg}; {fix}"));
                    data["pg_stat_statements"] = json!("missing");
                }
            }
        }

        match self.running(&client).await {
            Ok(rows) => {
                if !rows.is_empty() {
                    status = status.max_by_severity(Status::Warn);
                    summary_parts.push(format!(
                        "{} statement(s) running longer than {}",
                        rows.len(),
                        self.max_running
                    ));
                } else {
                    summary_parts.push(format!("nothing running longer than {}", self.max_running));
                }
                let mut list = Vec::new();
                for r in &rows {
                    let app = if r.application.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", r.application)
                    };
                    details.insert(
                        0,
                        format!(
                            "pid {} {}@{}{app} {} for {}: {}",
                            r.pid,
                            r.user,
                            r.database,
                            r.state,
                            Dur(std::time::Duration::from_secs(r.seconds as u64)),
                            one_line(&r.query, 160)
                        ),
                    );
                    list.push(json!({ "pid": r.pid, "user": r.user, "application": r.application, "database": r.database, "state": r.state, "seconds": r.seconds, "query_id": r.query_id, "query": r.query }));
                }
                data["long_running"] = json!(list);
            }
            Err(e) => {
                return Outcome::fail(format!(
                    "target {}: cannot read pg_stat_activity: {e}",
                    target.name
                ));
            }
        }
        Outcome::new(status, summary_parts.join("; "))
            .with_details(details)
            .with_data(data)
    }

    /// (normalised query, query id, calls, mean ms, total ms) of this database, slowest mean
    /// first.
    #[allow(clippy::type_complexity)]
    async fn statements(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<(Vec<(String, Option<i64>, i64, f64, f64)>, Option<i64>), Missing> {
        let schema = client
            .query_opt(
                "SELECT n.nspname::text FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_stat_statements'",
                &[],
            )
            .await
            .map_err(|e| Missing(format!("cannot check for pg_stat_statements: {}", pg::pg_error(&e))))?;
        let schema = schema
            .map(|r| pg::col::<String>(&r, 0))
            .transpose()
            .map_err(Missing)?;
        let Some(schema) = schema else {
            return Err(Missing(
                "the pg_stat_statements extension is not installed in this database".into(),
            ));
        };
        let version = pg::server_version_num(client)
            .await
            .map_err(|e| Missing(e.to_string()))?;
        let (mean, total) = if version >= 130000 {
            ("mean_exec_time", "total_exec_time")
        } else {
            ("mean_time", "total_time")
        };
        let view = format!("{}.pg_stat_statements", pg::quote_ident(&schema));
        let this_db = "s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())";
        let sql = format!(
            "SELECT s.query, s.queryid, s.calls, s.{mean}, s.{total} FROM {view} s \
             WHERE {this_db} AND ($2 OR coalesce(s.query, '') !~* $3) ORDER BY s.{mean} DESC LIMIT $1"
        );
        let limit = self.top as i64;
        let read_error = |e: tokio_postgres::Error| {
            let m = pg::pg_error(&e);
            if m.contains("shared_preload_libraries") {
                Missing(
                    "pg_stat_statements is installed but not loaded (shared_preload_libraries)"
                        .into(),
                )
            } else {
                Missing(format!("cannot read pg_stat_statements: {m}"))
            }
        };
        let rows = client
            .query(&sql, &[&limit, &self.include_maintenance, &MAINTENANCE_RE])
            .await
            .map_err(read_error)?;
        // How many maintenance statements above warn_mean were left out, to say so.
        let left_out = if self.include_maintenance {
            None
        } else {
            let warn_ms = self.warn_mean.0.as_secs_f64() * 1000.0;
            let row = client
                .query_one(
                    &format!(
                        "SELECT count(*) FROM {view} s WHERE {this_db} AND coalesce(s.query, '') ~* $1 AND s.{mean} > $2"
                    ),
                    &[&MAINTENANCE_RE, &warn_ms],
                )
                .await
                .map_err(read_error)?;
            Some(pg::col::<i64>(&row, 0).map_err(Missing)?)
        };
        let top = rows
            .iter()
            .map(|r| {
                let query: Option<String> = pg::col(r, 0)?;
                let query = query.map_or_else(
                    || "<insufficient privilege>".to_string(),
                    |q| query_text::for_report(&q),
                );
                Ok((
                    query,
                    pg::col(r, 1)?,
                    pg::col(r, 2)?,
                    pg::col(r, 3)?,
                    pg::col(r, 4)?,
                ))
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(Missing)?;
        Ok((top, left_out))
    }

    /// Client sessions busy for longer than `max_running`: active statements by
    /// `query_start`, idle-in-transaction sessions by `xact_start`. Our own backend and idle
    /// sessions are left out. Query texts are normalised.
    async fn running(&self, client: &tokio_postgres::Client) -> Result<Vec<Running>, String> {
        let secs = self.max_running.0.as_secs_f64();
        // pg_stat_activity.query_id exists from PostgreSQL 14 (set when compute_query_id is on,
        // or auto with pg_stat_statements loaded).
        let query_id = if pg::server_version_num(client).await? >= 140000 {
            "query_id"
        } else {
            "NULL::bigint"
        };
        let rows = client
            .query(
                &format!(
                    "SELECT pid, coalesce(usename::text, ''), coalesce(application_name, ''), coalesce(datname::text, ''), state, \
                        extract(epoch FROM now() - CASE WHEN state = 'active' THEN query_start ELSE xact_start END)::float8 AS secs, \
                        {query_id}, coalesce(query, '') \
                 FROM pg_stat_activity \
                 WHERE pid <> pg_backend_pid() AND backend_type = 'client backend' AND state IS NOT NULL AND state <> 'idle' \
                   AND CASE WHEN state = 'active' THEN query_start ELSE xact_start END < now() - make_interval(secs => $1) \
                 ORDER BY secs DESC"
                ),
                &[&secs],
            )
            .await
            .map_err(|e| pg::pg_error(&e))?;
        rows.iter()
            .map(|r| {
                Ok(Running {
                    pid: pg::col(r, 0)?,
                    user: pg::col(r, 1)?,
                    application: pg::col(r, 2)?,
                    database: pg::col(r, 3)?,
                    state: pg::col(r, 4)?,
                    seconds: pg::col(r, 5)?,
                    query_id: pg::col(r, 6)?,
                    query: query_text::for_report(pg::col(r, 7)?),
                })
            })
            .collect()
    }
}

/// One session of [`SlowQueries::running`].
struct Running {
    pid: i32,
    user: String,
    /// `application_name` (empty when the client set none).
    application: String,
    database: String,
    state: String,
    /// How long the statement (or the idle transaction) has been running.
    seconds: f64,
    /// pg_stat_activity's `query_id` (None before PostgreSQL 14 or when not computed).
    query_id: Option<i64>,
    /// The query text, normalised (never raw).
    query: String,
}

/// The extension cannot be used; the message says why.
struct Missing(String);

/// A query on one line, shortened.
fn one_line(q: &str, max: usize) -> String {
    let s: String = q.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > max {
        format!("{}…", s.chars().take(max).collect::<String>())
    } else {
        s
    }
}

trait MaxBySeverity {
    fn max_by_severity(self, other: Status) -> Status;
}

impl MaxBySeverity for Status {
    fn max_by_severity(self, other: Status) -> Status {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }
}

fn default_top() -> usize {
    10
}
fn default_warn_mean() -> Dur {
    Dur(std::time::Duration::from_millis(500))
}
fn default_max_running() -> Dur {
    Dur::from_secs(300)
}
