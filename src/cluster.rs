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

use crate::config::{ClusterSection, OnClusterDown};
use crate::pg::Target;

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
)";

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
    /// Builds the cluster handle (does not connect yet).
    pub fn new(section: &ClusterSection, hostname: &str) -> Result<Cluster, String> {
        let mut target = Target::from_url("cluster", &section.url)?;
        target.password = section.password_resolved.clone();
        target.connect_timeout = STATEMENT_TIMEOUT;
        Ok(Cluster {
            target,
            node: section.node.clone().unwrap_or_else(|| hostname.to_string()),
            lease: section.lease.0,
            on_cluster_down: section.on_cluster_down,
            client: Mutex::new(None),
        })
    }

    /// Runs `f` on a live connection (connecting and creating the table when needed), under
    /// [`STATEMENT_TIMEOUT`]. Any error drops the connection.
    async fn with<T, F>(&self, f: F) -> Result<T, String>
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
                .map_err(|_| format!("connecting to {} timed out", self.target.display))??;
            // Two nodes starting together may race on CREATE TABLE IF NOT EXISTS; retry once.
            let mut created = client.batch_execute(SCHEMA).await;
            if created.is_err() {
                created = client.batch_execute(SCHEMA).await;
            }
            created.map_err(|e| {
                format!(
                    "cluster database {}: {}",
                    self.target.display,
                    crate::pg::pg_error(&e)
                )
            })?;
            *guard = Some(client);
        }
        let Some(client) = guard.as_ref() else {
            return Err("no connection".into());
        };
        let result = match tokio::time::timeout(STATEMENT_TIMEOUT, f(client)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!(
                "cluster database {}: {}",
                self.target.display,
                crate::pg::pg_error(&e)
            )),
            Err(_) => Err(format!(
                "cluster database {}: no answer within {}s",
                self.target.display,
                STATEMENT_TIMEOUT.as_secs()
            )),
        };
        if result.is_err() {
            *guard = None;
        }
        result
    }

    fn lease_secs(&self) -> f64 {
        self.lease.as_secs_f64()
    }

    /// Claims (job, slot) for this node.
    pub async fn claim(&self, job: &str, slot: DateTime<Utc>) -> Claim {
        let (node, lease) = (self.node.clone(), self.lease_secs());
        let job_s = job.to_string();
        let r = self
            .with(move |c| {
                Box::pin(async move {
                    let inserted = c
                        .query_opt(
                            "INSERT INTO runbook_claims (job, slot, node, state, lease_until)
                             SELECT $1, $2, $3, 'running', now() + make_interval(secs => $4::float8)
                             WHERE NOT EXISTS (SELECT 1 FROM runbook_claims
                                               WHERE job = $1 AND slot <> $2 AND state = 'running' AND lease_until > now())
                             ON CONFLICT (job, slot) DO NOTHING RETURNING node",
                            &[&job_s, &slot, &node, &lease],
                        )
                        .await?;
                    if inserted.is_some() {
                        let rows = c
                            .query(
                                "UPDATE runbook_claims SET state = 'abandoned', finished_at = now()
                                 WHERE job = $1 AND slot < $2 AND state = 'running' AND lease_until < now() RETURNING slot",
                                &[&job_s, &slot],
                            )
                            .await?;
                        return Ok(Claim::Mine { abandoned: rows.iter().map(|r| r.get(0)).collect() });
                    }
                    let existing = c.query_opt("SELECT node FROM runbook_claims WHERE job = $1 AND slot = $2", &[&job_s, &slot]).await?;
                    if let Some(row) = existing {
                        return Ok(Claim::Elsewhere(row.get(0)));
                    }
                    let busy = c
                        .query_opt(
                            "SELECT node FROM runbook_claims WHERE job = $1 AND state = 'running' AND lease_until > now() LIMIT 1",
                            &[&job_s],
                        )
                        .await?;
                    Ok(Claim::Busy(busy.map(|r| r.get(0)).unwrap_or_else(|| "another node".into())))
                })
            })
            .await;
        r.unwrap_or_else(Claim::Down)
    }

    /// Takes over (job, slot) if its lease has expired and it is still the job's newest claim.
    pub async fn take_over(&self, job: &str, slot: DateTime<Utc>) -> Claim {
        let (node, lease) = (self.node.clone(), self.lease_secs());
        let job_s = job.to_string();
        let r = self
            .with(move |c| {
                Box::pin(async move {
                    let row = c
                        .query_opt(
                            "UPDATE runbook_claims SET node = $3, claimed_at = now(), lease_until = now() + make_interval(secs => $4::float8)
                             WHERE job = $1 AND slot = $2 AND state = 'running' AND lease_until < now()
                               AND NOT EXISTS (SELECT 1 FROM runbook_claims n WHERE n.job = $1 AND n.slot > $2)
                             RETURNING node",
                            &[&job_s, &slot, &node, &lease],
                        )
                        .await?;
                    Ok(match row {
                        Some(_) => Claim::Mine { abandoned: vec![] },
                        None => Claim::Elsewhere("another node (taken over or finished)".into()),
                    })
                })
            })
            .await;
        r.unwrap_or_else(Claim::Down)
    }

    /// The newest claim of `job` whose node stopped renewing its lease, if it is still the
    /// job's newest claim (a later slot supersedes it).
    pub async fn expired_claim(&self, job: &str) -> Option<DateTime<Utc>> {
        let job_s = job.to_string();
        let r = self
            .with(move |c| {
                Box::pin(async move {
                    let row = c
                        .query_opt(
                            "SELECT slot, state = 'running' AND lease_until < now() FROM runbook_claims WHERE job = $1 ORDER BY slot DESC LIMIT 1",
                            &[&job_s],
                        )
                        .await?;
                    Ok(row.and_then(|r| r.get::<_, bool>(1).then(|| r.get::<_, DateTime<Utc>>(0))))
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
    /// aborted (when the run ends).
    pub fn keep_lease(self: Arc<Self>, job: String, slot: DateTime<Utc>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let every = (self.lease / 3).max(Duration::from_millis(500));
            loop {
                tokio::time::sleep(every).await;
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
                match r {
                    Ok(1) => {}
                    Ok(_) => {
                        tracing::error!(job, slot = %slot, "lost the cluster claim of this slot (another node took it over after the lease expired)")
                    }
                    Err(e) => {
                        tracing::error!(job, slot = %slot, "CLUSTER DATABASE UNREACHABLE: cannot renew the lease: {e}")
                    }
                }
            }
        })
    }

    /// Marks (job, slot) finished by this node.
    pub async fn finish(&self, job: &str, slot: DateTime<Utc>) {
        self.set_state(job, slot, "done").await
    }

    /// Marks (job, slot) abandoned (its node died and it is too old to take over).
    pub async fn abandon(&self, job: &str, slot: DateTime<Utc>) {
        self.set_state(job, slot, "abandoned").await
    }

    async fn set_state(&self, job: &str, slot: DateTime<Utc>, state: &'static str) {
        let job_s = job.to_string();
        let r = self
            .with(move |c| {
                Box::pin(async move {
                    c.execute("UPDATE runbook_claims SET state = $3, finished_at = now() WHERE job = $1 AND slot = $2", &[&job_s, &slot, &state]).await
                })
            })
            .await;
        if let Err(e) = r {
            tracing::error!(job, slot = %slot, "CLUSTER DATABASE UNREACHABLE: cannot mark the slot {state}: {e} (other nodes will see its lease expire)");
        }
    }
}
