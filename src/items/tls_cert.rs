//! `tls_cert`: days until TLS certificates expire, from endpoints and PEM files.
//!
//! (Options are final; the implementation lands with its issue.)

use serde::Deserialize;

use super::{ItemCtx, Outcome, Prepare};
#[allow(unused_imports)]
use crate::units::{Dur, Percent, Size};

/// Options of `kind = "tls_cert"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCert {
    /// `host:port` endpoints (SNI is the host).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// PEM files (every certificate in each is checked).
    #[serde(default)]
    pub files: Vec<std::path::PathBuf>,
    #[serde(default = "default_warn")]
    pub warn_within: Dur,
    #[serde(default = "default_fail")]
    pub fail_within: Dur,
    /// Extra CA to verify chains against.
    pub ca_file: Option<std::path::PathBuf>,
}

impl TlsCert {
    pub fn prepare(&mut self, _p: &mut Prepare) {}

    pub async fn run(&self, _ctx: &ItemCtx) -> Outcome {
        Outcome::fail("kind `tls_cert` is not implemented in this build")
    }
}

fn default_warn() -> Dur {
    Dur::from_secs(30 * 86400)
}
fn default_fail() -> Dur {
    Dur::from_secs(7 * 86400)
}
