//! One connection per database, lent to a run's read-only checks in turn.
//!
//! The runner gives every database a run checks one [`SharedConnection`]; the checks on that
//! database (`sql`, `slow_queries`, `wal_archive`, `replication`) borrow it one after another
//! through [`crate::items::ItemCtx::check_connection`] instead of each opening its own: a
//! connection costs the server a process and its cache warm-up, several times what a check's
//! query costs (BENCHMARKS.md, "Many databases").
//!
//! What one check leaves on the session cannot reach the next: a reused connection is reset
//! with `DISCARD ALL` (session settings, advisory locks, temporary tables, prepared statements)
//! before the next check sets its own `statement_timeout`. A check that was cancelled (its
//! timeout, a shutdown) or whose connection broke gives it up: it is closed, and the next check
//! opens a new one, only after the server has closed the old one.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::base::pg::{Closed, PgError, Target};

/// The connection to one database shared by a run's checks on it (see the module docs).
pub struct SharedConnection {
    target: String,
    slot: Arc<Mutex<Slot>>,
}

enum Slot {
    /// Nothing open (first use).
    Empty,
    /// Open and idle, ready for the next check.
    Open(Client, Closed),
    /// Given up by a check; the server has not closed it yet.
    Closing(Closed),
}

impl SharedConnection {
    /// The shared connection to the target called `target` (opened when first borrowed).
    pub fn new(target: &str) -> SharedConnection {
        SharedConnection {
            target: target.to_string(),
            slot: Arc::new(Mutex::new(Slot::Empty)),
        }
    }

    /// The target's name.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Lends the connection to one check (waiting while another check has it), opening it
    /// first when there is none. `cancel` is the check's: a check cancelled while it holds the
    /// connection gives it up rather than return it mid-statement.
    pub async fn borrow(
        &self,
        target: &Target,
        cancel: CancellationToken,
    ) -> Result<CheckClient, PgError> {
        let mut slot = self.slot.clone().lock_owned().await;
        if let Slot::Open(client, closed) = std::mem::replace(&mut *slot, Slot::Empty) {
            match client.batch_execute("DISCARD ALL").await {
                Ok(()) if !client.is_closed() => {
                    return Ok(CheckClient {
                        client: Some(client),
                        closed: Some(closed),
                        home: Some(slot),
                        cancel,
                    });
                }
                _ => {
                    drop(client);
                    *slot = Slot::Closing(closed);
                }
            }
        }
        if let Slot::Closing(closed) = std::mem::replace(&mut *slot, Slot::Empty) {
            closed.wait().await;
        }
        let (client, closed) = target.connect_watched().await?;
        Ok(CheckClient {
            client: Some(client),
            closed: Some(closed),
            home: Some(slot),
            cancel,
        })
    }

    /// Closes the connection and waits until the server has closed it (at most
    /// [`crate::base::pg::LINGER_MAX`]): a per-cluster connection limit frees its slot after.
    pub async fn close(&self) {
        let mut slot = self.slot.lock().await;
        match std::mem::replace(&mut *slot, Slot::Empty) {
            Slot::Empty => {}
            Slot::Open(client, closed) => {
                drop(client);
                closed.wait().await;
            }
            Slot::Closing(closed) => closed.wait().await,
        }
    }
}

/// A connection a check uses: lent by a [`SharedConnection`] (given back when dropped) or its
/// own. Derefs to the client.
pub struct CheckClient {
    client: Option<Client>,
    closed: Option<Closed>,
    home: Option<OwnedMutexGuard<Slot>>,
    cancel: CancellationToken,
}

impl CheckClient {
    /// A connection of the check's own, closed when dropped.
    pub fn own(client: Client) -> CheckClient {
        CheckClient {
            client: Some(client),
            closed: None,
            home: None,
            cancel: CancellationToken::new(),
        }
    }
}

impl Deref for CheckClient {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until dropped")
    }
}

impl DerefMut for CheckClient {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until dropped")
    }
}

impl Drop for CheckClient {
    fn drop(&mut self) {
        let (Some(mut home), Some(client), Some(closed)) =
            (self.home.take(), self.client.take(), self.closed.take())
        else {
            return;
        };
        *home = if self.cancel.is_cancelled() || client.is_closed() {
            drop(client);
            Slot::Closing(closed)
        } else {
            Slot::Open(client, closed)
        };
    }
}
