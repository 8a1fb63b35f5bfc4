//! `log_scan`: lines matching a pattern in log files since the previous run.
//!
//! (Options are final; the implementation lands with its issue.)

use serde::Deserialize;

use super::{ItemCtx, Outcome, Prepare};
#[allow(unused_imports)]
use crate::units::{Dur, Percent, Size};

/// Options of `kind = "log_scan"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogScan {
    /// Paths or globs (plain or .gz; rotated siblings are followed).
    pub files: Vec<String>,
    /// A regex. Default `ERROR`.
    #[serde(default = "default_pattern")]
    pub pattern: String,
    /// On the first run, only lines newer than this (default: the whole file).
    pub since: Option<Dur>,
    #[serde(default = "default_warn_count")]
    pub warn_count: u64,
    pub fail_count: Option<u64>,
    /// How many distinct messages to show. Default 10.
    #[serde(default = "default_top")]
    pub top: usize,
}

impl LogScan {
    pub fn prepare(&mut self, _p: &mut Prepare) {}

    pub async fn run(&self, _ctx: &ItemCtx) -> Outcome {
        Outcome::fail("kind `log_scan` is not implemented in this build")
    }
}

fn default_pattern() -> String {
    "ERROR".into()
}
fn default_warn_count() -> u64 {
    1
}
fn default_top() -> usize {
    10
}
