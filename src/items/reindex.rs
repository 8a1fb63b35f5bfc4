//! `reindex`: REINDEX (CONCURRENTLY) per index, in parallel across tables, after cleaning leftovers.
//!
//! (Options are final; the implementation lands with its issue.)

use serde::Deserialize;

use super::{ItemCtx, Outcome, Prepare};
#[allow(unused_imports)]
use crate::units::{Dur, Percent, Size};

/// Options of `kind = "reindex"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reindex {
    pub target: String,
    /// Use `REINDEX ... CONCURRENTLY`. Default true.
    #[serde(default = "default_true")]
    pub concurrently: bool,
    /// Tables worked on at once. Default 2.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    #[serde(default)]
    pub schemas: Vec<String>,
    #[serde(default)]
    pub tables: Vec<String>,
    /// Only indexes with at least this estimated bloat. Default: every index.
    pub min_bloat: Option<Percent>,
}

impl Reindex {
    pub fn prepare(&mut self, _p: &mut Prepare) {}

    pub async fn run(&self, _ctx: &ItemCtx) -> Outcome {
        Outcome::fail("kind `reindex` is not implemented in this build")
    }
}

fn default_parallel() -> usize {
    2
}
fn default_true() -> bool {
    true
}
