//! `vacuum`: VACUUM (ANALYZE) of a target's tables, largest first, in parallel.
//!
//! (Options are final; the implementation lands with its issue.)

use serde::Deserialize;

use super::{ItemCtx, Outcome, Prepare};
#[allow(unused_imports)]
use crate::units::{Dur, Percent, Size};

/// Options of `kind = "vacuum"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vacuum {
    pub target: String,
    /// Tables vacuumed at once. Default 2.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    /// Also ANALYZE. Default true.
    #[serde(default = "default_true")]
    pub analyze: bool,
    /// Only tables past autovacuum-style thresholds. Default false.
    #[serde(default)]
    pub only_needed: bool,
    /// `SKIP_LOCKED`: skip tables another session holds a conflicting lock on. Default false.
    #[serde(default)]
    pub skip_locked: bool,
    /// Limit to these schemas.
    #[serde(default)]
    pub schemas: Vec<String>,
    /// Limit to these tables (`schema.table` or `table`).
    #[serde(default)]
    pub tables: Vec<String>,
    /// Never these tables.
    #[serde(default)]
    pub exclude_tables: Vec<String>,
    /// No table starts later than this after the item started.
    pub window: Option<Dur>,
}

impl Vacuum {
    pub fn prepare(&mut self, _p: &mut Prepare) {}

    pub async fn run(&self, _ctx: &ItemCtx) -> Outcome {
        Outcome::fail("kind `vacuum` is not implemented in this build")
    }
}

fn default_parallel() -> usize {
    2
}
fn default_true() -> bool {
    true
}
