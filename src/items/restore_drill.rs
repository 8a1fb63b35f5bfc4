//! `restore_drill`: restores the newest backup into a scratch database and checks it.
//!
//! (Options are final; the implementation lands with its issue.)

use serde::Deserialize;

use super::{ItemCtx, Outcome, Prepare};
#[allow(unused_imports)]
use crate::units::{Dur, Percent, Size};

/// Options of `kind = "restore_drill"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreDrill {
    /// The server to restore into (a scratch database `runbook_drill_*` is created there).
    pub target: String,
    /// Folder holding the backups.
    pub dir: std::path::PathBuf,
    /// Shell glob matched against file names. Default `"*"`.
    #[serde(default = "super::backup::default_pattern")]
    pub pattern: String,
    /// `pg_restore -j`. Default 2.
    #[serde(default = "default_parallel")]
    pub parallel: u32,
    /// Queries run against the restored database.
    #[serde(default)]
    pub checks: Vec<super::SqlCheck>,
    /// Warn when the restore takes longer (RTO).
    pub max_duration: Option<Dur>,
    /// Keep the scratch database when something fails (for a person to look at). Default false.
    #[serde(default)]
    pub keep_on_failure: bool,
    /// A file modified more recently than this is still being written. Default 60s.
    #[serde(default = "super::backup::default_settle")]
    pub settle: Dur,
}

impl RestoreDrill {
    pub fn prepare(&mut self, _p: &mut Prepare) {}

    pub async fn run(&self, _ctx: &ItemCtx) -> Outcome {
        Outcome::fail("kind `restore_drill` is not implemented in this build")
    }
}

fn default_parallel() -> u32 {
    2
}
