//! `type = "heartbeat"`: healthchecks.io-style pings (`url/start`, `url`, `url/fail`), so an
//! outside monitor notices when runs stop happening at all.

use std::path::Path;

use serde::Deserialize;

use crate::report::Report;
use crate::secret::{Secret, SecretSource};

/// Options of `type = "heartbeat"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// The check's ping URL (a secret: anyone with it can ping).
    pub url: SecretSource,
    #[serde(skip)]
    pub url_resolved: Option<Secret>,
}

impl HeartbeatConfig {
    pub fn prepare(&mut self, name: &str, base: &Path) -> Result<Vec<String>, Vec<String>> {
        match Secret::resolve(&self.url, &format!("notify.{name}.url"), base) {
            Ok(s) => {
                self.url_resolved = Some(s);
                Ok(vec![])
            }
            Err(e) => Err(vec![e]),
        }
    }

    pub async fn ping_start(&self) -> Result<(), String> {
        Err("heartbeat delivery is not implemented in this build".into())
    }

    pub async fn deliver(&self, _report: &Report) -> Result<(), String> {
        Err("heartbeat delivery is not implemented in this build".into())
    }
}
