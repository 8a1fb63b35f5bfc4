//! The worker pool of the maintenance kinds (`vacuum`, `reindex`): one task per connection,
//! each taking work from a queue the caller shares with them, until the queue is empty or the
//! run is cancelled. A worker whose connection failed takes nothing and the others do its share;
//! why it failed is reported ([`failed_line`]), never silently.

use std::future::Future;
use std::pin::Pin;

use crate::base::pg::PgError;

/// How one worker gets its connection: ready (the planning connection), or connected in the
/// worker's own task, while the others already work.
pub type Connect<C> = Pin<Box<dyn Future<Output = Result<C, PgError>> + Send>>;

/// A connection that is already there (or already failed).
pub fn ready<C: Send + 'static>(conn: Result<C, PgError>) -> Connect<C> {
    Box::pin(std::future::ready(conn))
}

/// What the pool left when every worker was done.
pub struct Finished<C> {
    /// Why workers took nothing: their connection failed, or they panicked.
    pub errors: Vec<String>,
    /// A connection still open after its worker finished, for the caller's closing queries.
    pub spare: Option<C>,
}

/// The report line for workers whose connection failed (`max_connections` reached, say): they
/// took nothing and the others did their share, but the run was slower than asked and the
/// reason matters. `None` when every worker connected.
pub fn failed_line(errors: &[String], workers: usize) -> Option<String> {
    (!errors.is_empty()).then(|| {
        format!(
            "{} of {workers} worker connection(s) failed, so fewer tables ran at once: {}",
            errors.len(),
            errors.join("; ")
        )
    })
}

/// Runs one worker per entry of `connections`: each connects, then runs `work` with its
/// connection, which returns it (still usable) or `None`. Waits for all of them.
pub async fn run<C, W, Fut>(
    connections: Vec<Connect<C>>,
    kind: &'static str,
    work: W,
) -> Finished<C>
where
    C: Send + 'static,
    W: Fn(C) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Option<C>> + Send + 'static,
{
    let handles: Vec<_> = connections
        .into_iter()
        .map(|connect| {
            let work = work.clone();
            tokio::spawn(async move {
                match connect.await {
                    Ok(conn) => (None, work(conn).await),
                    Err(e) => {
                        // Without a connection this worker takes nothing; report it once.
                        tracing::warn!("{kind} worker: {e}");
                        (Some(e.to_string()), None)
                    }
                }
            })
        })
        .collect();
    let mut errors = Vec::new();
    let mut spare = None;
    for h in handles {
        match h.await {
            Ok((error, conn)) => {
                errors.extend(error);
                if spare.is_none() {
                    spare = conn;
                }
            }
            Err(e) => errors.push(format!("worker panicked: {e}")),
        }
    }
    Finished { errors, spare }
}
