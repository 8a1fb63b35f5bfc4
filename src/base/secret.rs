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

/// Why a secret could not be resolved. Each names the config key (`key`), never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("{key}: environment variable {env} is empty")]
    EnvEmpty { key: String, env: String },
    #[error("{key}: environment variable {env} is not set")]
    EnvUnset { key: String, env: String },
    #[error("{key}: environment variable {env} is not valid UTF-8")]
    EnvNotUtf8 { key: String, env: String },
    #[error("{key}: secret file {} is empty", path.display())]
    FileEmpty { key: String, path: PathBuf },
    /// The io error says "permission denied" or "not found"; it never contains the content.
    /// `hint` says where else a relative file was looked for (or is empty).
    #[error("{key}: cannot read secret file {}: {reason}{hint}", path.display())]
    Unreadable {
        key: String,
        path: PathBuf,
        reason: String,
        hint: String,
    },
}

impl From<SecretError> for String {
    fn from(e: SecretError) -> String {
        e.to_string()
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
    pub fn resolve(source: &SecretSource, key: &str, base: &Path) -> Result<Secret, SecretError> {
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
                Ok(_) => Err(SecretError::EnvEmpty {
                    key: key.into(),
                    env: env.clone(),
                }),
                Err(std::env::VarError::NotPresent) => Err(SecretError::EnvUnset {
                    key: key.into(),
                    env: env.clone(),
                }),
                Err(std::env::VarError::NotUnicode(_)) => Err(SecretError::EnvNotUtf8 {
                    key: key.into(),
                    env: env.clone(),
                }),
            },
            SecretSource::File { file } => {
                let path = Self::credential_path(file, base);
                match std::fs::read_to_string(&path) {
                    Ok(v) => {
                        let v = v.trim_end_matches(['\n', '\r']).to_owned();
                        if v.is_empty() {
                            return Err(SecretError::FileEmpty {
                                key: key.into(),
                                path,
                            });
                        }
                        Ok(Secret {
                            value: SecretString::from(v),
                            origin: format!("file {}", path.display()),
                            inline: false,
                        })
                    }
                    // The io error says "permission denied" or "not found"; it never contains the content.
                    Err(e) => Err(SecretError::Unreadable {
                        key: key.into(),
                        reason: e.to_string(),
                        hint: Self::credentials_hint(file),
                        path,
                    }),
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

/// What a secret's value becomes in a report.
pub const REDACTED_IN_REPORT: &str = "[redacted]";

/// Secrets shorter than this are not searched for: replacing every `ab` in a report would make
/// it unreadable and protect nothing a guess could not find.
const MIN_REDACTED_LEN: usize = 4;

/// Replaces every configured secret's value with `[redacted]` in text bound for a report.
///
/// Built once from the loaded config's secrets ([`crate::config::Config::redactor`]). A child
/// process gets only the secrets its item hands it, but it may print them (a script that
/// echoes its token, `set -x`, a tool that repeats a connection string in an error): the
/// output it leaves in a report goes through this first. A multi-line secret (a key file) is
/// also searched for line by line. Matching is by exact value in one pass, longest first.
#[derive(Clone, Default)]
pub struct Redactor {
    /// One alternation of the escaped values, longest first; None when there is nothing to hide.
    pattern: Option<std::sync::Arc<regex::Regex>>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Redactor([REDACTED])")
    }
}

impl Redactor {
    /// A redactor for these secrets' values.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Redactor {
        let mut needles: Vec<&str> = Vec::new();
        for s in secrets {
            let v = s.expose();
            needles.push(v);
            if v.contains('\n') {
                needles.extend(v.lines().map(|l| l.trim_end_matches('\r')));
            }
        }
        needles.retain(|n| n.chars().count() >= MIN_REDACTED_LEN);
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        needles.dedup();
        if needles.is_empty() {
            return Redactor { pattern: None };
        }
        let alternation = needles
            .iter()
            .map(|n| regex::escape(n))
            .collect::<Vec<_>>()
            .join("|");
        // Escaped literals always compile; the size limit is raised for very long secrets.
        let pattern = regex::RegexBuilder::new(&alternation)
            .size_limit(64 << 20)
            .build()
            .ok()
            .map(std::sync::Arc::new);
        Redactor { pattern }
    }

    /// `text` with every secret value replaced by `[redacted]`.
    pub fn redact<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        match &self.pattern {
            Some(re) => re.replace_all(text, REDACTED_IN_REPORT),
            None => std::borrow::Cow::Borrowed(text),
        }
    }

    /// Redacts `s` in place.
    pub fn redact_string(&self, s: &mut String) {
        if let std::borrow::Cow::Owned(r) = self.redact(s) {
            *s = r;
        }
    }

    /// Redacts every string (and object key) of a JSON value in place.
    pub fn redact_json(&self, v: &mut serde_json::Value) {
        if self.pattern.is_none() {
            return;
        }
        match v {
            serde_json::Value::String(s) => self.redact_string(s),
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| self.redact_json(x)),
            serde_json::Value::Object(o) => {
                let needs_key_change = o
                    .keys()
                    .any(|k| matches!(self.redact(k), std::borrow::Cow::Owned(_)));
                if needs_key_change {
                    let old = std::mem::take(o);
                    for (k, mut x) in old {
                        self.redact_json(&mut x);
                        o.insert(self.redact(&k).into_owned(), x);
                    }
                } else {
                    o.values_mut().for_each(|x| self.redact_json(x));
                }
            }
            _ => {}
        }
    }
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
            e.to_string(),
            "targets.trading.password: environment variable RUNBOOK_TEST_SURELY_UNSET is not set"
        );
        assert!(matches!(e, SecretError::EnvUnset { .. }), "{e:?}");
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

    #[test]
    fn redactor_hides_every_secret_longest_first_and_leaves_short_ones() {
        let long = Secret::literal("hunter2-long");
        let short = Secret::literal("hunter2");
        let tiny = Secret::literal("ab");
        let key = Secret::literal("-----BEGIN KEY-----\nc2VjcmV0LWxpbmU=\n-----END KEY-----");
        let r = Redactor::new([&short, &long, &tiny, &key]);
        assert_eq!(
            r.redact("a hunter2-long b hunter2 c ab"),
            "a [redacted] b [redacted] c ab"
        );
        assert_eq!(r.redact("line: c2VjcmV0LWxpbmU="), "line: [redacted]");
        let mut v = serde_json::json!({ "output": ["x hunter2"], "hunter2": 1, "n": 5 });
        r.redact_json(&mut v);
        assert_eq!(
            v,
            serde_json::json!({ "output": ["x [redacted]"], "[redacted]": 1, "n": 5 })
        );
        assert!(!format!("{r:?}").contains("hunter2"));
        assert_eq!(Redactor::default().redact("hunter2"), "hunter2");
    }
}
