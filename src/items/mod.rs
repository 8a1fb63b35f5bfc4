//! Item kinds: what one checklist line does.
//!
//! Kinds are a closed enum ([`ItemSpec`], `#[serde(tag = "kind")]`) with `match` dispatch. Adding
//! a kind is adding a module with an options struct (`deny_unknown_fields`, doc comment on every
//! field), `prepare` (load-time checks), and `run` (returns an [`Outcome`]).
//!
//! Invariant: **a failed check is a value, not an error.** `run` never returns `Err`: whatever
//! goes wrong (connection refused, file missing, timeout) becomes `fail` with the reason. Panics
//! and timeouts are turned into `fail` by the runner.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::base::pg::Target;
pub use crate::base::status::{Status, Trigger};

pub mod alertmanager;
pub mod backup;
pub mod capacity;
pub mod child_env;
pub mod command;
pub mod connection;
pub mod create_indexes;
pub mod http;
pub mod key_rotation;
pub mod log_scan;
pub mod manual;
pub mod pitr_drill;
pub mod prometheus;
pub mod query_text;
pub mod reindex;
pub mod replication;
pub mod restore_drill;
pub mod slow_queries;
pub mod sql;
pub mod state;
pub mod support;
pub mod system;
pub mod tls_cert;
pub mod vacuum;
pub mod wal_archive;

/// What one item found.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: Status,
    /// One line.
    pub summary: String,
    /// Lines a person reads (the evidence).
    pub details: Vec<String>,
    /// Machine-readable facts for this kind (an object).
    pub data: serde_json::Value,
    /// State to remember only together with the report that accounts for it (`log_scan`'s new
    /// offsets): the runner writes it in the report's own transaction, so a crash before the
    /// report is stored leaves the old state and the next run reads those lines again.
    pub pending: Vec<state::ScanOffset>,
}

impl Outcome {
    pub fn new(status: Status, summary: impl Into<String>) -> Outcome {
        Outcome {
            status,
            summary: summary.into(),
            details: Vec::new(),
            data: serde_json::json!({}),
            pending: Vec::new(),
        }
    }
    pub fn pass(summary: impl Into<String>) -> Outcome {
        Outcome::new(Status::Pass, summary)
    }
    pub fn warn(summary: impl Into<String>) -> Outcome {
        Outcome::new(Status::Warn, summary)
    }
    pub fn fail(summary: impl Into<String>) -> Outcome {
        Outcome::new(Status::Fail, summary)
    }
    pub fn skipped(summary: impl Into<String>) -> Outcome {
        Outcome::new(Status::Skipped, summary)
    }
    pub fn manual(summary: impl Into<String>) -> Outcome {
        Outcome::new(Status::Manual, summary)
    }
    pub fn with_details(mut self, details: Vec<String>) -> Outcome {
        self.details = details;
        self
    }
    pub fn detail(mut self, line: impl Into<String>) -> Outcome {
        self.details.push(line.into());
        self
    }
    pub fn with_data(mut self, data: serde_json::Value) -> Outcome {
        self.data = data;
        self
    }
    /// State committed with the report (see [`Outcome::pending`]).
    pub fn with_pending(mut self, pending: Vec<state::ScanOffset>) -> Outcome {
        self.pending = pending;
        self
    }
    /// Raises the status to `status` if that is worse (never lowers it).
    pub fn escalate(&mut self, status: Status) {
        if status.severity() > self.status.severity() {
            self.status = status;
        }
    }
}

/// Everything an item may use while it runs. Built by the runner.
#[derive(Clone)]
pub struct ItemCtx {
    pub job: String,
    pub item: String,
    pub run_id: String,
    pub trigger: Trigger,
    /// The slot this run is for, RFC3339 in the job's zone (None for manual runs).
    pub scheduled_for: Option<String>,
    /// The job's zone, for display.
    pub tz: Tz,
    /// `--dry-run`: state-changing items report their plan and return `skipped`.
    pub dry_run: bool,
    /// The config file's folder: relative paths are relative to it.
    pub config_dir: PathBuf,
    /// The runbook's state folder: items that need scratch space on disk (the point-in-time
    /// drill's throwaway server) make it under here, never elsewhere.
    pub state_dir: PathBuf,
    pub targets: Arc<BTreeMap<String, Target>>,
    /// This item's own remembered state (log offsets, its earlier results); never the store.
    pub state: state::ItemState,
    /// Cancelled when the run must stop (job timeout, daemon shutdown). Items that hold external
    /// resources (child processes, scratch databases) clean up when it fires.
    pub cancel: CancellationToken,
    /// When this run started (UTC).
    pub started_at: DateTime<Utc>,
    /// Start of the previous completed run of this job, if any (e.g. `log_scan`'s "since").
    pub previous_started_at: Option<DateTime<Utc>>,
    /// This item's deadline (the runner enforces it too; items may use it to stop early).
    pub deadline: tokio::time::Instant,
    /// Hides the config's secrets in what a child process printed (the runner applies it to
    /// every outcome as well).
    pub redactor: crate::base::secret::Redactor,
    /// The run's connection to this item's database, shared with the other checks on it
    /// ([`connection`]); None where the item opens its own.
    pub shared: Option<Arc<connection::SharedConnection>>,
}

impl ItemCtx {
    /// The context of the item `item` of kind `kind`, from the run's shared one.
    pub fn for_item(&self, item: &str, kind: &str) -> ItemCtx {
        ItemCtx {
            item: item.to_string(),
            state: self.state.for_item(item, kind),
            ..self.clone()
        }
    }

    /// The target called `name` (validated at load, so it exists).
    pub fn target(&self, name: &str) -> Result<&Target, TargetError> {
        self.targets
            .get(name)
            .ok_or_else(|| TargetError::Unknown(name.to_string()))
    }

    /// A connection for a read-only check on the target called `name`: the run's shared one
    /// for that database when the runner gave one ([`connection`]), else its own. Its
    /// statements run under `statement_timeout` (the time left before the item's deadline, or
    /// the target's own when shorter) and `default_transaction_read_only`. Both are best
    /// effort: a server that refuses the SET still answers the check's queries.
    pub async fn check_connection(
        &self,
        name: &str,
    ) -> Result<(&Target, connection::CheckClient), TargetError> {
        let target = self.target(name)?;
        let client = match self.shared.as_ref().filter(|s| s.target() == name) {
            Some(shared) => shared.borrow(target, self.cancel.clone()).await?,
            None => connection::CheckClient::own(target.connect().await?),
        };
        let timeout = target.check_timeout_ms(self.deadline);
        let _ = client
            .batch_execute(&format!(
                "SET statement_timeout = {timeout}; SET default_transaction_read_only = on"
            ))
            .await;
        Ok((target, client))
    }

    /// A path from the config, made absolute against the config's folder.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.config_dir.join(p)
        }
    }
}

/// Why an item cannot use its target.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Not in `[targets]` (the config refuses that at load; kept for items run by hand).
    #[error("unknown target {0:?}")]
    Unknown(String),
    /// The connection failed (the reason, as `base::pg` words it).
    #[error("{0}")]
    Connect(#[from] crate::base::pg::PgError),
}

/// Load-time checks of one item: collects errors (with the key they concern) and warnings.
pub struct Prepare<'a> {
    pub config_dir: &'a Path,
    pub targets: &'a BTreeMap<String, Target>,
    /// (key, message); the key locates the error in the file.
    pub errors: Vec<(Option<String>, String)>,
    pub warnings: Vec<String>,
}

/// A warn/fail pair where warn ≤ fail and either side may be left at its default: explicit
/// beats default, so a defaulted side moves to the explicit one when it would otherwise be on
/// the wrong side of it (`disk_fail = "75%"` alone lowers the default 80% warning to 75%).
/// Two explicit values are returned as they are: the caller refuses a pair in the wrong order.
pub fn explicit_beats_default<T: PartialOrd + Copy>(
    warn: Option<T>,
    fail: Option<T>,
    default_warn: T,
    default_fail: T,
) -> (T, T) {
    match (warn, fail) {
        (Some(w), Some(f)) => (w, f),
        (Some(w), None) => (w, if default_fail < w { w } else { default_fail }),
        (None, Some(f)) => (if default_warn > f { f } else { default_warn }, f),
        (None, None) => (default_warn, default_fail),
    }
}

impl<'a> Prepare<'a> {
    pub fn new(config_dir: &'a Path, targets: &'a BTreeMap<String, Target>) -> Prepare<'a> {
        Prepare {
            config_dir,
            targets,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }
    pub fn error(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push((Some(key.to_string()), message.into()));
    }
    pub fn warning(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.config_dir.join(p)
        }
    }
    /// Refuses a `fail_within` longer than its `warn_within` (the item would fail before it
    /// ever warned).
    pub fn within_order(
        &mut self,
        warn_within: crate::base::units::Dur,
        fail_within: crate::base::units::Dur,
    ) {
        if fail_within > warn_within {
            self.error(
                "fail_within",
                format!("fail_within ({fail_within}) is longer than warn_within ({warn_within})"),
            );
        }
    }
    /// Resolves a secret, recording an error (naming `key`) when it cannot be read.
    pub fn secret(
        &mut self,
        key: &str,
        source: &crate::base::secret::SecretSource,
    ) -> Option<crate::base::secret::Secret> {
        match crate::base::secret::Secret::resolve(source, key, self.config_dir) {
            Ok(s) => {
                if s.inline {
                    self.warning(format!("{key} is written inline; prefer {{ env = \"VAR\" }} or {{ file = \"PATH\" }}"));
                }
                Some(s)
            }
            Err(m) => {
                self.error(key, m);
                None
            }
        }
    }
}

/// One item's kind and options.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ItemSpec {
    Manual(manual::Manual),
    Command(command::Command),
    KeyRotation(key_rotation::KeyRotation),
    Capacity(capacity::Capacity),
    Backup(backup::Backup),
    RestoreDrill(Box<restore_drill::RestoreDrill>),
    Vacuum(vacuum::Vacuum),
    Reindex(reindex::Reindex),
    CreateIndexes(create_indexes::CreateIndexes),
    Sql(sql::Sql),
    SlowQueries(slow_queries::SlowQueries),
    Replication(replication::Replication),
    Http(http::Http),
    Alertmanager(alertmanager::Alertmanager),
    Prometheus(prometheus::Prometheus),
    TlsCert(tls_cert::TlsCert),
    System(system::System),
    LogScan(log_scan::LogScan),
    WalArchive(wal_archive::WalArchive),
}

impl ItemSpec {
    /// The `kind` string, as in the config and the report.
    pub fn kind(&self) -> &'static str {
        match self {
            ItemSpec::Manual(_) => "manual",
            ItemSpec::Command(_) => "command",
            ItemSpec::KeyRotation(_) => "key_rotation",
            ItemSpec::Capacity(_) => "capacity",
            ItemSpec::Backup(_) => "backup",
            ItemSpec::RestoreDrill(_) => "restore_drill",
            ItemSpec::Vacuum(_) => "vacuum",
            ItemSpec::Reindex(_) => "reindex",
            ItemSpec::CreateIndexes(_) => "create_indexes",
            ItemSpec::Sql(_) => "sql",
            ItemSpec::SlowQueries(_) => "slow_queries",
            ItemSpec::Replication(_) => "replication",
            ItemSpec::Http(_) => "http",
            ItemSpec::Alertmanager(_) => "alertmanager",
            ItemSpec::Prometheus(_) => "prometheus",
            ItemSpec::TlsCert(_) => "tls_cert",
            ItemSpec::System(_) => "system",
            ItemSpec::LogScan(_) => "log_scan",
            ItemSpec::WalArchive(_) => "wal_archive",
        }
    }

    /// The database target this item uses, if any.
    pub fn target(&self) -> Option<&str> {
        match self {
            ItemSpec::RestoreDrill(o) => Some(&o.target),
            ItemSpec::Vacuum(o) => Some(&o.target),
            ItemSpec::Reindex(o) => Some(&o.target),
            ItemSpec::CreateIndexes(o) => Some(&o.target),
            ItemSpec::Sql(o) => Some(&o.target),
            ItemSpec::SlowQueries(o) => Some(&o.target),
            ItemSpec::WalArchive(o) => Some(&o.target),
            ItemSpec::Replication(o) => Some(&o.target),
            _ => None,
        }
    }

    /// Points the item at the target called `name` (an item over several targets runs once
    /// per target); false for a kind without a target.
    pub fn set_target(&mut self, name: &str) -> bool {
        let t = match self {
            ItemSpec::RestoreDrill(o) => &mut o.target,
            ItemSpec::Vacuum(o) => &mut o.target,
            ItemSpec::Reindex(o) => &mut o.target,
            ItemSpec::CreateIndexes(o) => &mut o.target,
            ItemSpec::Sql(o) => &mut o.target,
            ItemSpec::SlowQueries(o) => &mut o.target,
            ItemSpec::WalArchive(o) => &mut o.target,
            ItemSpec::Replication(o) => &mut o.target,
            _ => return false,
        };
        *t = name.to_string();
        true
    }

    /// True for the read-only database checks that borrow the run's connection to their
    /// database ([`ItemCtx::check_connection`]) rather than open their own: the runner runs them
    /// per database, one after another on one connection ([`connection`]).
    pub fn shares_connection(&self) -> bool {
        matches!(
            self,
            ItemSpec::Sql(_)
                | ItemSpec::SlowQueries(_)
                | ItemSpec::WalArchive(_)
                | ItemSpec::Replication(_)
        )
    }

    /// True when the item changes state: `--dry-run` only plans it, and items that change the
    /// same target run one after another.
    pub fn changes_state(&self) -> bool {
        match self {
            ItemSpec::RestoreDrill(_)
            | ItemSpec::Vacuum(_)
            | ItemSpec::Reindex(_)
            | ItemSpec::CreateIndexes(_) => true,
            ItemSpec::Command(c) => !c.read_only,
            _ => false,
        }
    }

    /// The option and length of an item's look-ahead window, for kinds that warn before a date
    /// (`tls_cert` `warn_within`, `key_rotation` `remind_before`): a job whose runs can be
    /// further apart than this lets the date pass between two runs unwarned (`check-config`
    /// says so).
    pub fn warning_window(&self) -> Option<(&'static str, std::time::Duration)> {
        match self {
            ItemSpec::TlsCert(o) => Some(("warn_within", o.warn_within.0)),
            ItemSpec::KeyRotation(o) => Some(("remind_before", o.remind_before.0)),
            _ => None,
        }
    }

    /// The default timeout of this kind when the item sets none (the job's timeout caps it).
    pub fn default_timeout(&self) -> Option<std::time::Duration> {
        match self {
            ItemSpec::Command(_) => Some(std::time::Duration::from_secs(600)),
            ItemSpec::Http(_)
            | ItemSpec::Alertmanager(_)
            | ItemSpec::Prometheus(_)
            | ItemSpec::TlsCert(_) => Some(std::time::Duration::from_secs(60)),
            _ => None,
        }
    }

    /// The secrets this item hands to a request or a child process (resolved by `prepare`).
    pub fn secrets(&self) -> Vec<&crate::base::secret::Secret> {
        match self {
            ItemSpec::Command(o) => o.secrets(),
            ItemSpec::Http(o) => o.secrets(),
            _ => vec![],
        }
    }

    /// Load-time checks and secret resolution.
    pub fn prepare(&mut self, p: &mut Prepare) {
        match self {
            ItemSpec::Manual(o) => o.prepare(p),
            ItemSpec::Command(o) => o.prepare(p),
            ItemSpec::KeyRotation(o) => o.prepare(p),
            ItemSpec::Capacity(o) => o.prepare(p),
            ItemSpec::Backup(o) => o.prepare(p),
            ItemSpec::RestoreDrill(o) => o.prepare(p),
            ItemSpec::Vacuum(o) => o.prepare(p),
            ItemSpec::Reindex(o) => o.prepare(p),
            ItemSpec::CreateIndexes(o) => o.prepare(p),
            ItemSpec::Sql(o) => o.prepare(p),
            ItemSpec::SlowQueries(o) => o.prepare(p),
            ItemSpec::Replication(o) => o.prepare(p),
            ItemSpec::Http(o) => o.prepare(p),
            ItemSpec::Alertmanager(o) => o.prepare(p),
            ItemSpec::Prometheus(o) => o.prepare(p),
            ItemSpec::TlsCert(o) => o.prepare(p),
            ItemSpec::System(o) => o.prepare(p),
            ItemSpec::LogScan(o) => o.prepare(p),
            ItemSpec::WalArchive(o) => o.prepare(p),
        }
    }

    /// Runs the item. Never fails: problems are `fail` outcomes.
    pub async fn run(&self, ctx: &ItemCtx) -> Outcome {
        match self {
            ItemSpec::Manual(o) => o.run(ctx).await,
            ItemSpec::Command(o) => o.run(ctx).await,
            ItemSpec::KeyRotation(o) => o.run(ctx).await,
            ItemSpec::Capacity(o) => o.run(),
            ItemSpec::Backup(o) => o.run(ctx).await,
            ItemSpec::RestoreDrill(o) => o.run(ctx).await,
            ItemSpec::Vacuum(o) => o.run(ctx).await,
            ItemSpec::Reindex(o) => o.run(ctx).await,
            ItemSpec::CreateIndexes(o) => o.run(ctx).await,
            ItemSpec::Sql(o) => o.run(ctx).await,
            ItemSpec::SlowQueries(o) => o.run(ctx).await,
            ItemSpec::Replication(o) => o.run(ctx).await,
            ItemSpec::Http(o) => o.run(ctx).await,
            ItemSpec::Alertmanager(o) => o.run(ctx).await,
            ItemSpec::Prometheus(o) => o.run(ctx).await,
            ItemSpec::TlsCert(o) => o.run(ctx).await,
            ItemSpec::System(o) => o.run(ctx).await,
            ItemSpec::LogScan(o) => o.run(ctx).await,
            ItemSpec::WalArchive(o) => o.run(ctx).await,
        }
    }
}

/// A `{ name, ... }` check used by `restore_drill` (and reusable): a query returning one row
/// and an assertion on its first column.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlCheck {
    pub name: String,
    pub query: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub expect: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::ItemSpec;

    /// The error of reading `toml` as an item, or `None` when it reads. (The config names the
    /// file, line, column, job and item of such an error: `tests/cli.rs`.)
    fn read_error(toml: &str) -> Option<String> {
        toml::from_str::<ItemSpec>(toml)
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn options_that_can_be_checked_are_refused_when_the_config_is_read() {
        let cases = [
            (
                "kind = \"backup\"\ndir = \"/b\"\npattern = \"[oops\"\n",
                "invalid glob \"[oops\"",
            ),
            (
                "kind = \"restore_drill\"\ntarget = \"db\"\ndir = \"/b\"\npattern = \"[oops\"\n",
                "invalid glob \"[oops\"",
            ),
            (
                "kind = \"log_scan\"\nfiles = [\"/l\"]\npattern = \"(unclosed\"\n",
                "invalid regex",
            ),
            (
                "kind = \"alertmanager\"\nurl = \"ftp://am:9093\"\n",
                "unsupported URL scheme \"ftp\"",
            ),
            (
                "kind = \"prometheus\"\nurl = \"not a url\"\nquery = \"up\"\n",
                "invalid URL \"not a url\"",
            ),
            (
                "kind = \"http\"\nurl = \"file:///etc/passwd\"\n",
                "unsupported URL scheme \"file\"",
            ),
        ];
        for (toml, words) in cases {
            let err = read_error(toml).unwrap_or_else(|| panic!("accepted:\n{toml}"));
            assert!(err.contains(words), "expected {words:?} in {err}");
        }
        // The defaults and good values read.
        assert_eq!(read_error("kind = \"backup\"\ndir = \"/b\"\n"), None);
        assert_eq!(read_error("kind = \"log_scan\"\nfiles = [\"/l\"]\n"), None);
    }

    /// The errors `prepare` records for the item `toml` (no targets).
    fn prepare_errors(toml: &str) -> Vec<(Option<String>, String)> {
        let mut spec: ItemSpec = toml::from_str(toml).expect("reads");
        let targets = std::collections::BTreeMap::new();
        let mut p = super::Prepare::new(std::path::Path::new("."), &targets);
        spec.prepare(&mut p);
        p.errors
    }

    #[test]
    fn a_fail_within_longer_than_warn_within_is_refused_naming_both() {
        for toml in [
            "kind = \"tls_cert\"\nfiles = [\"c.pem\"]\nwarn_within = \"7d\"\nfail_within = \"30d\"\n",
            "kind = \"capacity\"\njob = \"daily\"\nseries = [{ item = \"Disk\", limit = 100 }]\nwarn_within = \"7d\"\nfail_within = \"30d\"\n",
        ] {
            let errors = prepare_errors(toml);
            assert!(
                errors.contains(&(
                    Some("fail_within".into()),
                    "fail_within (30d) is longer than warn_within (7d)".into()
                )),
                "{toml}: {errors:?}"
            );
        }
        let fine = "kind = \"tls_cert\"\nfiles = [\"c.pem\"]\nwarn_within = \"30d\"\nfail_within = \"7d\"\n";
        assert!(
            !prepare_errors(fine)
                .iter()
                .any(|(k, _)| k.as_deref() == Some("fail_within")),
            "{fine}"
        );
    }
}
