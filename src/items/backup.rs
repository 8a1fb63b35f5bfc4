//! `backup`: verifies the newest backup file in a folder.
//!
//! (Options are final; the implementation lands with its issue.)

use serde::Deserialize;

use super::{ItemCtx, Outcome, Prepare};
#[allow(unused_imports)]
use crate::units::{Dur, Percent, Size};

/// Options of `kind = "backup"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// Folder holding the backups.
    pub dir: std::path::PathBuf,
    /// Shell glob matched against file names. Default `"*"`.
    #[serde(default = "default_pattern")]
    pub pattern: String,
    /// Fail when the newest backup is older. Default 26h.
    #[serde(default = "default_max_age")]
    pub max_age: Dur,
    /// Fail when the newest backup is smaller.
    pub min_size: Option<Size>,
    /// Warn when the newest backup shrank more than this against the previous one. Default 50%.
    #[serde(default = "default_max_shrink")]
    pub max_shrink: Percent,
    /// `auto` (read the whole archive), `none`, or `manifest` (pg_verifybackup). Default auto.
    #[serde(default)]
    pub verify: Verify,
    /// Tables that must be in the dump's table of contents.
    #[serde(default)]
    pub require_tables: Vec<String>,
    /// A file modified more recently than this is still being written. Default 60s.
    #[serde(default = "default_settle")]
    pub settle: Dur,
}

impl Backup {
    pub fn prepare(&mut self, _p: &mut Prepare) {}

    pub async fn run(&self, _ctx: &ItemCtx) -> Outcome {
        Outcome::fail("kind `backup` is not implemented in this build")
    }
}

/// How deeply a backup is verified.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Verify {
    #[default]
    Auto,
    None,
    Manifest,
}

pub fn default_pattern() -> String {
    "*".into()
}
fn default_max_age() -> Dur {
    Dur::from_secs(26 * 3600)
}
fn default_max_shrink() -> Percent {
    Percent(50.0)
}
pub fn default_settle() -> Dur {
    Dur::from_secs(60)
}
