//! `http`: an HTTP endpoint: status, latency, JSON assertions.
//!
//! (Options are final; the implementation lands with its issue.)

use serde::Deserialize;

use super::{ItemCtx, Outcome, Prepare};
#[allow(unused_imports)]
use crate::units::{Dur, Percent, Size};

/// Options of `kind = "http"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    pub url: String,
    #[serde(default = "default_method")]
    pub method: String,
    /// Header values may be secrets.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, crate::secret::SecretSource>,
    #[serde(skip)]
    pub resolved_headers: Vec<(String, crate::secret::Secret)>,
    pub body: Option<String>,
    #[serde(default = "default_status")]
    pub expect_status: u16,
    pub max_latency: Option<Dur>,
    pub ca_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub json: Vec<JsonAssertion>,
}

impl Http {
    pub fn prepare(&mut self, _p: &mut Prepare) {}

    pub async fn run(&self, _ctx: &ItemCtx) -> Outcome {
        Outcome::fail("kind `http` is not implemented in this build")
    }
}

/// One assertion on the JSON body, addressed by a JSON Pointer (`/components/db/status`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonAssertion {
    pub pointer: String,
    pub equals: Option<toml::Value>,
    pub not_equals: Option<toml::Value>,
    /// For an array: no element has all these field values.
    pub none: Option<std::collections::BTreeMap<String, toml::Value>>,
    /// For an array: every element has all these field values.
    pub all: Option<std::collections::BTreeMap<String, toml::Value>>,
}

fn default_method() -> String {
    "GET".into()
}
fn default_status() -> u16 {
    200
}
