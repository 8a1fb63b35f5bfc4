//! `system`: disk use, memory available and load per core.
//!
//! (Options are final; the implementation lands with its issue.)

use serde::Deserialize;

use super::{ItemCtx, Outcome, Prepare};
#[allow(unused_imports)]
use crate::units::{Dur, Percent, Size};

/// Options of `kind = "system"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct System {
    #[serde(default = "default_paths")]
    pub paths: Vec<std::path::PathBuf>,
    #[serde(default = "default_disk_warn")]
    pub disk_warn: Percent,
    #[serde(default = "default_disk_fail")]
    pub disk_fail: Percent,
    #[serde(default = "default_memory_warn")]
    pub memory_warn: Percent,
    #[serde(default = "default_memory_fail")]
    pub memory_fail: Percent,
    #[serde(default = "default_load")]
    pub load_warn_per_core: f64,
    pub load_fail_per_core: Option<f64>,
}

impl System {
    pub fn prepare(&mut self, _p: &mut Prepare) {}

    pub async fn run(&self, _ctx: &ItemCtx) -> Outcome {
        Outcome::fail("kind `system` is not implemented in this build")
    }
}

fn default_paths() -> Vec<std::path::PathBuf> {
    vec!["/".into()]
}
fn default_disk_warn() -> Percent {
    Percent(80.0)
}
fn default_disk_fail() -> Percent {
    Percent(90.0)
}
fn default_memory_warn() -> Percent {
    Percent(85.0)
}
fn default_memory_fail() -> Percent {
    Percent(95.0)
}
fn default_load() -> f64 {
    2.0
}
