//! Secrets in the configuration: `"literal"`, `{ env = "VAR" }` or `{ file = "PATH" }`.
//!
//! A secret is resolved once, when the config loads, so a missing variable or unreadable file is
//! a config error that names the *key* (never the value). The value lives in a
//! [`secrecy::SecretString`]: its `Debug` prints `[REDACTED]`, and the only way to read it is
//! [`Secret::expose`], which makes every use greppable. `{ file = ... }` is how systemd's
//! `LoadCredential=` hands secrets over (`/run/credentials/runbook.service/NAME`); a relative
//! path is looked up in `$CREDENTIALS_DIRECTORY` first.

use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Where a secret comes from, as written in the config.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged, deny_unknown_fields)]
pub enum SecretSource {
    /// Written inline. Allowed, but `check-config` warns about it.
    Literal(String),
    /// Read from an environment variable.
    Env { env: String },
    /// Read from a file (trailing newline removed).
    File { file: PathBuf },
}

/// A resolved secret value. Never printed, never serialized.
#[derive(Clone)]
pub struct Secret {
    value: SecretString,
    /// Where it came from, for messages: `environment variable SLACK_WEBHOOK_URL`.
    pub origin: String,
    /// True when the value was written inline in the config file.
    pub inline: bool,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}, [REDACTED])", self.origin)
    }
}

impl Secret {
    /// A secret made in code (tests, `demo`).
    pub fn literal(value: &str) -> Secret {
        Secret {
            value: SecretString::from(value.to_owned()),
            origin: "inline value".into(),
            inline: true,
        }
    }

    /// The value. Call it only where the value is handed to a library (a password to a connection).
    pub fn expose(&self) -> &str {
        self.value.expose_secret()
    }

    /// Resolves a source. `key` names the config key in errors; `base` is the config's folder.
    pub fn resolve(source: &SecretSource, key: &str, base: &Path) -> Result<Secret, String> {
        match source {
            SecretSource::Literal(v) => Ok(Secret {
                value: SecretString::from(v.clone()),
                origin: "inline value".into(),
                inline: true,
            }),
            SecretSource::Env { env } => match std::env::var(env) {
                Ok(v) if !v.is_empty() => Ok(Secret {
                    value: SecretString::from(v),
                    origin: format!("environment variable {env}"),
                    inline: false,
                }),
                Ok(_) => Err(format!("{key}: environment variable {env} is empty")),
                Err(std::env::VarError::NotPresent) => {
                    Err(format!("{key}: environment variable {env} is not set"))
                }
                Err(std::env::VarError::NotUnicode(_)) => Err(format!(
                    "{key}: environment variable {env} is not valid UTF-8"
                )),
            },
            SecretSource::File { file } => {
                let path = Self::credential_path(file, base);
                match std::fs::read_to_string(&path) {
                    Ok(v) => {
                        let v = v.trim_end_matches(['\n', '\r']).to_owned();
                        if v.is_empty() {
                            return Err(format!("{key}: secret file {} is empty", path.display()));
                        }
                        Ok(Secret {
                            value: SecretString::from(v),
                            origin: format!("file {}", path.display()),
                            inline: false,
                        })
                    }
                    // The io error says "permission denied" or "not found"; it never contains the content.
                    Err(e) => Err(format!(
                        "{key}: cannot read secret file {}: {e}{}",
                        path.display(),
                        Self::credentials_hint(file)
                    )),
                }
            }
        }
    }

    /// For a relative secret file that could not be read: where else it was looked for, so a
    /// check from a shell says why a credential that systemd hands the service is not found.
    fn credentials_hint(file: &Path) -> String {
        if file.is_absolute() {
            return String::new();
        }
        match std::env::var_os("CREDENTIALS_DIRECTORY") {
            None => {
                " ($CREDENTIALS_DIRECTORY, where systemd's LoadCredential= puts it, is not set)"
                    .into()
            }
            Some(dir) => format!(
                " (nor in $CREDENTIALS_DIRECTORY {})",
                Path::new(&dir).display()
            ),
        }
    }

    fn credential_path(file: &Path, base: &Path) -> PathBuf {
        if file.is_absolute() {
            return file.to_path_buf();
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let p = Path::new(&dir).join(file);
            if p.exists() {
                return p;
            }
        }
        base.join(file)
    }
}

/// Replaces every occurrence of each secret value in `text` with `[REDACTED]`. Used on error
/// messages that come from libraries which may echo a URL or a header back.
pub fn redact(text: &str, secrets: &[&Secret]) -> String {
    let mut out = text.to_owned();
    for s in secrets {
        let v = s.expose();
        if v.len() >= 4 {
            out = out.replace(v, "[REDACTED]");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_env_names_the_key_not_a_value() {
        let src = SecretSource::Env {
            env: "RUNBOOK_TEST_SURELY_UNSET".into(),
        };
        let e = Secret::resolve(&src, "targets.trading.password", Path::new(".")).unwrap_err();
        assert_eq!(
            e,
            "targets.trading.password: environment variable RUNBOOK_TEST_SURELY_UNSET is not set"
        );
    }

    #[test]
    fn file_secret_trims_newline_and_debug_redacts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "hunter2-very-secret\n").unwrap();
        let s =
            Secret::resolve(&SecretSource::File { file: "pw".into() }, "k", dir.path()).unwrap();
        assert_eq!(s.expose(), "hunter2-very-secret");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(
            redact("url=https://x/hunter2-very-secret/y", &[&s]),
            "url=https://x/[REDACTED]/y"
        );
    }
}
