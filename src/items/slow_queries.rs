//! `slow_queries`: slowest statements (pg_stat_statements) and long-running ones (pg_stat_activity).
//!
//! (Options are final; the implementation lands with its issue.)

use serde::Deserialize;

use super::{ItemCtx, Outcome, Prepare};
#[allow(unused_imports)]
use crate::units::{Dur, Percent, Size};

/// Options of `kind = "slow_queries"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowQueries {
    pub target: String,
    /// How many statements to list. Default 10.
    #[serde(default = "default_top")]
    pub top: usize,
    /// Warn when a statement's mean time is above. Default 500ms.
    #[serde(default = "default_warn_mean")]
    pub warn_mean: Dur,
    pub fail_mean: Option<Dur>,
    /// Warn when a statement has been running longer. Default 5m.
    #[serde(default = "default_max_running")]
    pub max_running: Dur,
}

impl SlowQueries {
    pub fn prepare(&mut self, _p: &mut Prepare) {}

    pub async fn run(&self, _ctx: &ItemCtx) -> Outcome {
        Outcome::fail("kind `slow_queries` is not implemented in this build")
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
