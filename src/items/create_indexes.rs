//! `create_indexes`: runs the CREATE INDEX CONCURRENTLY statements of a file, one at a time.
//!
//! (Options are final; the implementation lands with its issue.)

use serde::Deserialize;

use super::{ItemCtx, Outcome, Prepare};
#[allow(unused_imports)]
use crate::units::{Dur, Percent, Size};

/// Options of `kind = "create_indexes"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateIndexes {
    pub target: String,
    /// SQL file, relative to the config file's folder.
    pub file: std::path::PathBuf,
}

impl CreateIndexes {
    pub fn prepare(&mut self, _p: &mut Prepare) {}

    pub async fn run(&self, _ctx: &ItemCtx) -> Outcome {
        Outcome::fail("kind `create_indexes` is not implemented in this build")
    }
}
