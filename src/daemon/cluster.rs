//! High availability: several daemons share one PostgreSQL (`[cluster] url`) so that every
//! scheduled slot of every job runs on exactly one of them.
//!
//! One table, `runbook_claims`, holds a row per (job, slot). A node runs a slot only if its
//! `INSERT ... ON CONFLICT DO NOTHING` created the row; the others see the row and record the
//! slot as run `elsewhere`. While the run lasts, its node renews `lease_until` every third of
//! the lease; a node that dies stops renewing, and once the lease has expired another node may
//! take the slot over (an `UPDATE ... WHERE lease_until < now()`, which only one node can win).
//! Lease times are the database server's `now()`, so the nodes' clocks need not agree on them.
//!
//! Fencing: a node that cannot renew stops its run at `lease − margin` after its last renewal
//! was sent ([`Cluster::keep_lease`]), and no node takes a claim over (or claims past it) before
//! `lease_until + margin`: a slot never runs on two nodes at the same time. Manual runs take a
//! claim too (`manual` rows), so `run-job` cannot overlap a scheduled run elsewhere.
//!
//! A claim is also refused while another slot of the same job is still running somewhere with
//! a live lease: one job never runs twice at once across the cluster.
//!
//! When the database cannot be reached, the caller applies `on_cluster_down` (run anyway, or
//! skip) and logs it loudly. Every statement has a timeout; a failed connection is dropped and
//! made again on the next call.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::base::pg::PgError;

/// Why the cluster database did not answer. Every variant means the same to the caller (the
/// database is unreachable: apply `on_cluster_down`, retry later); the message says which.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterDbError {
    #[error(transparent)]
    Connect(#[from] PgError),
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    #[error("cluster database {display}: {message}")]
    Statement { display: String, message: String },
    #[error("cluster database {display}: no answer within {secs}s")]
    NoAnswer { display: String, secs: u64 },
    #[error("no connection")]
    NoConnection,
}

use crate::base::pg::Target;
use crate::config::{ClusterConfig, OnClusterDown};

/// Every statement against the cluster database must finish within this.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS runbook_claims (
    job text NOT NULL,
    slot timestamptz NOT NULL,
    node text NOT NULL,
    state text NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz NOT NULL,
    finished_at timestamptz,
    PRIMARY KEY (job, slot)
);
ALTER TABLE runbook_claims ADD COLUMN IF NOT EXISTS manual boolean NOT NULL DEFAULT false";

/// The outcome of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This node runs the slot. `abandoned`: older slots of the job whose node died mid-run
    /// (now marked abandoned; the run's report lists them as missed).
    Mine { abandoned: Vec<DateTime<Utc>> },
    /// Another node claimed it (named).
    Elsewhere(String),
    /// Another slot of the job is still running on that node.
    Busy(String),
    /// The cluster database could not be reached or answered with an error.
    Down(String),
}

/// A connection to the shared claims database.
pub struct Cluster {
    target: Target,
    /// This node's name in claim rows.
    pub node: String,
    pub lease: Duration,
    pub on_cluster_down: OnClusterDown,
    /// The current connection; `None` after an error (reconnected on next use).
    client: Mutex<Option<Client>>,
}

impl Cluster {
    /// Builds the cluster handle from the validated `[cluster]` (does not connect yet).
    pub fn new(config: &ClusterConfig) -> Cluster {
        let mut target = config.target.clone();
        target.connect_timeout = STATEMENT_TIMEOUT;
        Cluster {
            target,
            node: config.node.clone(),
            lease: config.lease.0,
            on_cluster_down: config.on_cluster_down,
            client: Mutex::new(None),
        }
    }

    /// Runs `f` on a live connection (connecting and creating the table when needed), under
    /// [`STATEMENT_TIMEOUT`]. Any error drops the connection.
    async fn with<T, F>(&self, f: F) -> Result<T, ClusterDbError>
    where
        F: for<'c> FnOnce(
            &'c Client,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send + 'c>,
        >,
    {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            let client = tokio::time::timeout(STATEMENT_TIMEOUT, self.target.connect())
                .await
                .map_err(|_| ClusterDbError::ConnectTimeout(self.target.display.clone()))??;
            // Two nodes starting together may race on CREATE TABLE IF NOT EXISTS; retry once.
            let mut created = client.batch_execute(SCHEMA).await;
            if created.is_err() {
                created = client.batch_execute(SCHEMA).await;
            }
            created.map_err(|e| ClusterDbError::Statement {
                display: self.target.display.clone(),
                message: crate::base::pg::pg_error(&e),
            })?;
            *guard = Some(client);
        }
        let Some(client) = guard.as_ref() else {
            return Err(ClusterDbError::NoConnection);
        };
        let result = match tokio::time::timeout(STATEMENT_TIMEOUT, f(client)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(ClusterDbError::Statement {
                display: self.target.display.clone(),
                message: crate::base::pg::pg_error(&e),
            }),
            Err(_) => Err(ClusterDbError::NoAnswer {
                display: self.target.display.clone(),
                secs: STATEMENT_TIMEOUT.as_secs(),
            }),
        };
        if result.is_err() {
            *guard = None;
        }
        result
    }

    fn lease_secs(&self) -> f64 {
        self.lease.as_secs_f64()
    }

    /// The safety margin around a lease: a node that could not renew stops its run at
    /// `lease − margin` after its last renewal was sent, and another node takes a slot over only
    /// at `lease_until + margin` on the database's clock. Between the two, `2 × margin`, the
    /// cut-off node's items are cancelled (statements cancelled on the server, commands killed).
    pub fn margin(&self) -> Duration {
        self.lease / 4
    }

    fn margin_secs(&self) -> f64 {
        self.margin().as_secs_f64()
    }

    /// Claims (job, slot) for this node.
    pub async fn claim(&self, job: &str, slot: DateTime<Utc>) -> Claim {
        self.claim_row(job, Some(slot)).await.0
    }

    /// A manual `run-job` on a node with `[cluster]`: claims a row for (job, the database's
    /// now()), refused like a slot while any run of the job holds a live lease anywhere; and
    /// while it runs, no node claims a slot of the job. Returns the claim and the row's slot.
    pub async fn claim_manual(&self, job: &str) -> (Claim, Option<DateTime<Utc>>) {
        self.claim_row(job, None).await
    }

    /// Inserts the claim row of `slot` (None: a manual run at the database's now()).
    async fn claim_row(
        &self,
        job: &str,
        slot: Option<DateTime<Utc>>,
    ) -> (Claim, Option<DateTime<Utc>>) {
        let (node, lease, margin) = (self.node.clone(), self.lease_secs(), self.margin_secs());
        let job_s = job.to_string();
        let r = self
            .with(move |c| {
                Box::pin(async move {
                    let manual = slot.is_none();
                    // A claim whose lease ran out less than `margin` ago may still be running on
                    // its node (which stops at lease − margin): it still blocks.
                    let inserted = c
                        .query_opt(
                            "INSERT INTO runbook_claims (job, slot, node, state, lease_until, manual)
                             SELECT $1, COALESCE($2, now()), $3, 'running', now() + make_interval(secs => $4::float8), $6
                             WHERE NOT EXISTS (SELECT 1 FROM runbook_claims
                                               WHERE job = $1 AND slot IS DISTINCT FROM $2 AND state = 'running'
                                                 AND lease_until + make_interval(secs => $5::float8) > now())
                             ON CONFLICT (job, slot) DO NOTHING RETURNING slot",
                            &[&job_s, &slot, &node, &lease, &margin, &manual],
                        )
                        .await?;
                    if let Some(row) = inserted {
                        let claimed: DateTime<Utc> = row.try_get(0)?;
                        let rows = c
                            .query(
                                "UPDATE runbook_claims SET state = 'abandoned', finished_at = now()
                                 WHERE job = $1 AND slot < $2 AND state = 'running'
                                   AND lease_until + make_interval(secs => $3::float8) < now()
                                 RETURNING slot, manual",
                                &[&job_s, &claimed, &margin],
                            )
                            .await?;
                        let mut abandoned = Vec::new();
                        for r in &rows {
                            // A manual run that died is not a slot anyone missed.
                            if !r.try_get::<_, bool>(1)? {
                                abandoned.push(r.try_get(0)?);
                            }
                        }
                        return Ok((Claim::Mine { abandoned }, Some(claimed)));
                    }
                    if let Some(slot) = slot {
                        let existing = c.query_opt("SELECT node FROM runbook_claims WHERE job = $1 AND slot = $2", &[&job_s, &slot]).await?;
                        if let Some(row) = existing {
                            return Ok((Claim::Elsewhere(row.try_get(0)?), None));
                        }
                    }
                    let busy = c
                        .query_opt(
                            "SELECT node FROM runbook_claims WHERE job = $1 AND state = 'running'
                               AND lease_until + make_interval(secs => $2::float8) > now() LIMIT 1",
                            &[&job_s, &margin],
                        )
                        .await?;
                    let node = match busy {
                        Some(r) => r.try_get(0)?,
                        None => "another node".into(),
                    };
                    Ok((Claim::Busy(node), None))
                })
            })
            .await;
        r.unwrap_or_else(|e| (Claim::Down(e.to_string()), None))
    }

    /// Takes over (job, slot) if its lease has expired and it is still the job's newest claim.
    pub async fn take_over(&self, job: &str, slot: DateTime<Utc>) -> Claim {
        let (node, lease, margin) = (self.node.clone(), self.lease_secs(), self.margin_secs());
        let job_s = job.to_string();
        let r = self
            .with(move |c| {
                Box::pin(async move {
                    // Only once the lease ran out `margin` ago: the node that held it has stopped
                    // its run by then (it cancels at lease − margin without a renewal).
                    let row = c
                        .query_opt(
                            "UPDATE runbook_claims SET node = $3, claimed_at = now(), lease_until = now() + make_interval(secs => $4::float8)
                             WHERE job = $1 AND slot = $2 AND state = 'running' AND NOT manual
                               AND lease_until + make_interval(secs => $5::float8) < now()
                               AND NOT EXISTS (SELECT 1 FROM runbook_claims n WHERE n.job = $1 AND n.slot > $2)
                             RETURNING node",
                            &[&job_s, &slot, &node, &lease, &margin],
                        )
                        .await?;
                    Ok(match row {
                        Some(_) => Claim::Mine { abandoned: vec![] },
                        None => Claim::Elsewhere("another node (taken over or finished)".into()),
                    })
                })
            })
            .await;
        r.unwrap_or_else(|e| Claim::Down(e.to_string()))
    }

    /// The newest claim of `job` whose node stopped renewing its lease, if it is still the
    /// job's newest claim (a later slot supersedes it).
    pub async fn expired_claim(&self, job: &str) -> Option<DateTime<Utc>> {
        let job_s = job.to_string();
        let margin = self.margin_secs();
        let r = self
            .with(move |c| {
                Box::pin(async move {
                    let row = c
                        .query_opt(
                            "SELECT slot, state = 'running' AND NOT manual
                                    AND lease_until + make_interval(secs => $2::float8) < now()
                             FROM runbook_claims WHERE job = $1 ORDER BY slot DESC LIMIT 1",
                            &[&job_s, &margin],
                        )
                        .await?;
                    match row {
                        Some(r) if r.try_get::<_, Option<bool>>(1)? == Some(true) => {
                            Ok(Some(r.try_get::<_, DateTime<Utc>>(0)?))
                        }
                        _ => Ok(None),
                    }
                })
            })
            .await;
        match r {
            Ok(slot) => slot,
            Err(e) => {
                tracing::error!(
                    job,
                    "CLUSTER DATABASE UNREACHABLE: cannot look for slots to take over: {e}"
                );
                None
            }
        }
    }

    /// Renews the lease of (job, slot) every third of the lease until the returned task is
    /// aborted (when the run ends), and fences the run: when no renewal has succeeded for
    /// `lease − margin` since the last successful one was sent (`renewed` is when the claim was
    /// sent), or the claim was taken over, it cancels `fence` (the run stops as on SIGTERM,
    /// its items interrupted with `reason` "lost the cluster lease") and ends. Only elapsed
    /// time on this node's monotonic clock is compared; lease times are the database's.
    pub fn keep_lease(
        self: Arc<Self>,
        job: String,
        slot: DateTime<Utc>,
        mut renewed: tokio::time::Instant,
        fence: tokio_util::sync::CancellationToken,
        reason: crate::runner::CancelReason,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            let every = (self.lease / 3).max(Duration::from_millis(200));
            let hold = self.lease.saturating_sub(self.margin());
            loop {
                let renewal = async {
                    tokio::time::sleep(every).await;
                    let sent = tokio::time::Instant::now();
                    crate::failpoint_async!("cluster-renew");
                    let (node, lease, job_s) = (self.node.clone(), self.lease_secs(), job.clone());
                    let r = self
                        .with(move |c| {
                            Box::pin(async move {
                                c.execute(
                                    "UPDATE runbook_claims SET lease_until = now() + make_interval(secs => $4::float8)
                                     WHERE job = $1 AND slot = $2 AND node = $3 AND state = 'running'",
                                    &[&job_s, &slot, &node, &lease],
                                )
                                .await
                            })
                        })
                        .await;
                    (sent, r)
                };
                let lost = tokio::select! {
                    _ = tokio::time::sleep_until(renewed + hold) => {
                        format!("no lease renewal succeeded for {:.1}s (lease {:.1}s − margin {:.1}s)", hold.as_secs_f64(), self.lease_secs(), self.margin_secs())
                    }
                    (sent, r) = renewal => match r {
                        Ok(1) => {
                            renewed = sent;
                            continue;
                        }
                        Ok(_) => "another node took the slot over".to_string(),
                        Err(e) => {
                            tracing::error!(job, slot = %slot, "CLUSTER DATABASE UNREACHABLE: cannot renew the lease: {e}");
                            continue;
                        }
                    },
                };
                tracing::error!(job, slot = %slot, "LOST THE CLUSTER LEASE ({lost}): cancelling the run so that no other node runs it at the same time");
                reason.set("lost the cluster lease");
                fence.cancel();
                return;
            }
        })
    }

    /// Marks (job, slot) done, if this node still holds its claim (a claim another node took
    /// over is left alone). Err when the database could not be reached: the caller retries, and
    /// the watcher retries every `lease/2` after that, across restarts ([`Cluster::my_open_claims`]),
    /// so a finished slot is marked instead of being taken over and run again.
    pub async fn finish(&self, job: &str, slot: DateTime<Utc>) -> Result<(), ClusterDbError> {
        let (job_s, node) = (job.to_string(), self.node.clone());
        self.with(move |c| {
            Box::pin(async move {
                c.execute(
                    "UPDATE runbook_claims SET state = 'done', finished_at = now()
                     WHERE job = $1 AND slot = $2 AND node = $3 AND state = 'running'",
                    &[&job_s, &slot, &node],
                )
                .await
            })
        })
        .await
        .map(|_| ())
    }

    /// Marks (job, slot) abandoned (its node died and it is too old to take over).
    pub async fn abandon(&self, job: &str, slot: DateTime<Utc>) {
        let job_s = job.to_string();
        let r = self
            .with(move |c| {
                Box::pin(async move {
                    c.execute("UPDATE runbook_claims SET state = 'abandoned', finished_at = now() WHERE job = $1 AND slot = $2 AND state = 'running'", &[&job_s, &slot]).await
                })
            })
            .await;
        if let Err(e) = r {
            tracing::error!(job, slot = %slot, "CLUSTER DATABASE UNREACHABLE: cannot mark the slot abandoned: {e}");
        }
    }

    /// The scheduled slots this node claimed that are still `running` in the database: those
    /// whose run is over here but whose `finish()` did not reach the database (or the process
    /// died in between) are marked by the watcher.
    pub async fn my_open_claims(&self) -> Result<Vec<(String, DateTime<Utc>)>, ClusterDbError> {
        let node = self.node.clone();
        self.with(move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT job, slot FROM runbook_claims WHERE node = $1 AND state = 'running' AND NOT manual",
                        &[&node],
                    )
                    .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect()
            })
        })
        .await
    }
}
