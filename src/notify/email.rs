//! `type = "email"`: the report as a multipart (text + HTML) message over SMTP.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::On;
use crate::report::Report;
use crate::secret::{Secret, SecretSource};

/// Options of `type = "email"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// `smtp://host:587?tls=required` (STARTTLS), `smtps://host:465`, `smtp://host:25?tls=none`.
    pub smtp_url: String,
    pub username: Option<String>,
    pub password: Option<SecretSource>,
    #[serde(skip)]
    pub password_resolved: Option<Secret>,
    /// `Name <address>`.
    pub from: String,
    pub to: Vec<String>,
    /// Extra CA certificate (PEM) to trust for the SMTP server.
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub on: On,
}

impl EmailConfig {
    pub fn prepare(&mut self, name: &str, base: &Path) -> Result<Vec<String>, Vec<String>> {
        let mut warnings = vec![];
        let mut errors = vec![];
        if let Some(src) = &self.password {
            match Secret::resolve(src, &format!("notify.{name}.password"), base) {
                Ok(s) => {
                    if s.inline {
                        warnings.push("password is written inline; prefer { env = \"VAR\" } or { file = \"PATH\" }".into());
                    }
                    self.password_resolved = Some(s);
                }
                Err(e) => errors.push(e),
            }
        }
        if self.to.is_empty() {
            errors.push("`to` needs at least one address".into());
        }
        if errors.is_empty() {
            Ok(warnings)
        } else {
            Err(errors)
        }
    }

    pub async fn deliver(&self, _report: &Report) -> Result<(), String> {
        Err("email delivery is not implemented in this build".into())
    }
}
