//! `type = "slack"`: the report as Block Kit through an incoming webhook.

use std::path::Path;

use serde::Deserialize;

use super::On;
use crate::report::Report;
use crate::secret::{Secret, SecretSource};

/// Options of `type = "slack"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// The webhook URL is itself a secret.
    pub webhook_url: SecretSource,
    #[serde(skip)]
    pub webhook_resolved: Option<Secret>,
    #[serde(default)]
    pub on: On,
}

impl SlackConfig {
    pub fn prepare(&mut self, name: &str, base: &Path) -> Result<Vec<String>, Vec<String>> {
        match Secret::resolve(
            &self.webhook_url,
            &format!("notify.{name}.webhook_url"),
            base,
        ) {
            Ok(s) => {
                let w = if s.inline {
                    vec![
                        "webhook_url is written inline; it is a secret: prefer { env = \"VAR\" }"
                            .into(),
                    ]
                } else {
                    vec![]
                };
                self.webhook_resolved = Some(s);
                Ok(w)
            }
            Err(e) => Err(vec![e]),
        }
    }

    pub async fn deliver(&self, _report: &Report) -> Result<(), String> {
        Err("slack delivery is not implemented in this build".into())
    }
}
