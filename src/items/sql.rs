//! `sql`: runs a query and asserts on its first row.
//!
//! (Options are final; the implementation lands with its issue.)

use serde::Deserialize;

use super::{ItemCtx, Outcome, Prepare};
#[allow(unused_imports)]
use crate::units::{Dur, Percent, Size};

/// Options of `kind = "sql"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sql {
    pub target: String,
    pub query: String,
    /// Bound parameters ($1, $2, ...), never pasted into the text.
    #[serde(default)]
    pub params: Vec<toml::Value>,
    pub expect_rows: Option<u64>,
    pub max: Option<f64>,
    pub min: Option<f64>,
    pub warn_max: Option<f64>,
    pub warn_min: Option<f64>,
    /// The first column of the first row must be true.
    pub expect: Option<bool>,
}

impl Sql {
    pub fn prepare(&mut self, _p: &mut Prepare) {}

    pub async fn run(&self, _ctx: &ItemCtx) -> Outcome {
        Outcome::fail("kind `sql` is not implemented in this build")
    }
}
