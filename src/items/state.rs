//! What an item remembers between runs, and the narrow handle through which it reads that.
//!
//! Items never see the state store: they get an [`ItemState`] scoped to their own job and item,
//! which answers two questions: where `log_scan` stopped in a file, and what this item found in
//! the job's earlier runs (`restore_drill`'s RTO trend, `wal_archive`'s counters). What an item
//! wants remembered travels back in its outcome ([`super::Outcome::pending`]) and is written by
//! the runner in the report's own transaction. The store implements [`StateSource`]; this layer
//! depends on nothing above it.

use std::sync::Arc;

use crate::base::status::Status;

/// Where `log_scan` stopped in one file, remembered with the report that accounts for the lines
/// before it.
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

/// A remembered position in a file: (inode, offset, fingerprint of its first bytes; `None` for
/// positions stored before fingerprints were).
pub type FilePosition = (u64, u64, Option<u64>);

/// What this item found in one earlier run of its job.
#[derive(Debug, Clone, PartialEq)]
pub struct EarlierResult {
    pub run_id: String,
    pub status: Status,
    /// The item's machine-readable data of that run.
    pub data: serde_json::Value,
}

/// The state store could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StateError(pub String);

/// The store's side of [`ItemState`]: lookups by job and item (implemented by `store::Store`).
pub trait StateSource: Send + Sync {
    /// The remembered position of `log_scan` item `item` of `job` in `file`.
    fn scan_offset(
        &self,
        job: &str,
        item: &str,
        file: &str,
    ) -> Result<Option<FilePosition>, StateError>;
    /// The results of the item `item` of kind `kind` in the newest `limit` stored reports of
    /// `job`, newest first (reports without that item are skipped). With `target`, the result
    /// on that target of an item over several targets (reports without it are skipped).
    fn earlier_results(
        &self,
        job: &str,
        item: &str,
        kind: &str,
        target: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EarlierResult>, StateError>;
}

/// One item's own state: its job, its name and kind, the run it belongs to.
#[derive(Clone)]
pub struct ItemState {
    source: Arc<dyn StateSource>,
    job: String,
    item: String,
    kind: String,
    run_id: String,
    /// The target of this run of an item over several targets (its earlier results are that
    /// target's).
    target: Option<String>,
}

impl ItemState {
    /// The state of the items of run `run_id` of `job` (not yet scoped to an item: see
    /// [`ItemState::for_item`]).
    pub fn new(source: Arc<dyn StateSource>, job: &str, run_id: &str) -> ItemState {
        ItemState {
            source,
            job: job.to_string(),
            item: String::new(),
            kind: String::new(),
            run_id: run_id.to_string(),
            target: None,
        }
    }

    /// The same run's state, scoped to the item `item` of kind `kind`.
    pub fn for_item(&self, item: &str, kind: &str) -> ItemState {
        ItemState {
            item: item.to_string(),
            kind: kind.to_string(),
            target: None,
            ..self.clone()
        }
    }

    /// The same item's state on one of its several targets (SPEC 9.5).
    pub fn for_target(&self, target: &str) -> ItemState {
        ItemState {
            target: Some(target.to_string()),
            ..self.clone()
        }
    }

    /// Where this item stopped reading `file` last time, if it did.
    pub fn scan_offset(&self, file: &str) -> Result<Option<FilePosition>, StateError> {
        self.source.scan_offset(&self.job, &self.item, file)
    }

    /// This item's results in the job's earlier runs (not this one), newest first, looking at
    /// the newest `limit` stored reports. A store that cannot be read gives none: a trend is
    /// commentary, never a reason to fail the check.
    pub fn earlier_results(&self, limit: usize) -> Vec<EarlierResult> {
        self.source
            .earlier_results(
                &self.job,
                &self.item,
                &self.kind,
                self.target.as_deref(),
                limit,
            )
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.run_id != self.run_id)
            .collect()
    }

    /// A position to remember for `file` (committed with the report).
    pub fn offset(&self, file: &str, inode: u64, offset: u64, fingerprint: u64) -> ScanOffset {
        ScanOffset {
            job: self.job.clone(),
            item: self.item.clone(),
            file: file.to_string(),
            inode,
            offset,
            fingerprint,
        }
    }
}
