//! `alertmanager`: firing alerts from Alertmanager's API v2.
//!
//! (Options are final; the implementation lands with its issue.)

use serde::Deserialize;

use super::{ItemCtx, Outcome, Prepare};
#[allow(unused_imports)]
use crate::units::{Dur, Percent, Size};

/// Options of `kind = "alertmanager"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alertmanager {
    /// Base URL, e.g. `http://localhost:9093`.
    pub url: String,
    /// Fail when more alerts fire. Default 0.
    #[serde(default)]
    pub max_firing: usize,
    /// Only alerts matching all of these (`severity=critical`, `alertname=~High.*`).
    #[serde(default)]
    pub matchers: Vec<String>,
    /// Count silenced and inhibited alerts too. Default false.
    #[serde(default)]
    pub include_silenced: bool,
}

impl Alertmanager {
    pub fn prepare(&mut self, _p: &mut Prepare) {}

    pub async fn run(&self, _ctx: &ItemCtx) -> Outcome {
        Outcome::fail("kind `alertmanager` is not implemented in this build")
    }
}
