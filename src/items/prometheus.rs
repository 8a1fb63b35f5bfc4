//! `prometheus`: an instant PromQL query compared with thresholds.
//!
//! (Options are final; the implementation lands with its issue.)

use serde::Deserialize;

use super::{ItemCtx, Outcome, Prepare};
#[allow(unused_imports)]
use crate::units::{Dur, Percent, Size};

/// Options of `kind = "prometheus"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prometheus {
    /// Base URL, e.g. `http://localhost:9090`.
    pub url: String,
    pub query: String,
    pub warn_above: Option<f64>,
    pub fail_above: Option<f64>,
    pub warn_below: Option<f64>,
    pub fail_below: Option<f64>,
    /// What an empty result means. Default warn.
    #[serde(default)]
    pub no_data: NoData,
}

impl Prometheus {
    pub fn prepare(&mut self, _p: &mut Prepare) {}

    pub async fn run(&self, _ctx: &ItemCtx) -> Outcome {
        Outcome::fail("kind `prometheus` is not implemented in this build")
    }
}

/// What an empty query result means.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum NoData {
    #[default]
    Warn,
    Fail,
    Pass,
}
