//! `jobs.toml` → a validated [`Config`].
//!
//! Loading happens in two steps. First `toml` + `serde` turn the text into typed structs (the
//! file as written: `RawConfig`, `ServerSection`, `ClusterSection`, ...); every struct denies
//! unknown keys, so a typo is an error, and toml's spans give the line and column. Then
//! `validate` checks what types cannot, one validator per section (`Check::runbook`,
//! `targets`, `notifiers`, `jobs`, `items`, `cluster`, `server`): cron syntax, zone names,
//! references to notifiers and targets, duplicate item names, secrets that resolve, and each
//! kind's own rules; and builds what runs (the parsed [`Schedule`], resolved [`Target`]s,
//! [`ServerConfig`], [`ClusterConfig`]), so nothing is checked again at run time. All semantic
//! mistakes are collected, not just the first, and each names file:line:column and the
//! job/item ([`Locator`] maps them back to the text).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono_tz::Tz;
use serde::Deserialize;

use crate::base::pg::{Target, TargetConfig};
use crate::base::schedule::{CatchUp, Schedule};
use crate::base::units::Dur;
use crate::items::{ItemSpec, Prepare};
use crate::notify::{Notifier, NotifierConfig, Notifiers, RetryPolicy};

/// The `[runbook]` table: defaults for the whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunbookSection {
    /// Default zone of every schedule (IANA name, e.g. `Asia/Kolkata`). Default `UTC`.
    #[serde(default = "default_tz")]
    pub timezone: String,
    /// Where the state database lives (relative: to the config's folder). Default, so that the
    /// daemon and commands typed in a shell share one state per host: `$RUNBOOK_STATE_DIR`, else
    /// `$STATE_DIRECTORY` (systemd's `StateDirectory=`), else `/var/lib/runbook` when it exists
    /// (the packaged daemon's folder), else `./runbook-state`. See [`resolve_state_dir`].
    pub state_dir: Option<PathBuf>,
    /// How many items of one job may run at once. Default 4.
    #[serde(default = "default_parallel")]
    pub max_parallel_items: usize,
    /// How many targets of one item over several targets (SPEC 9.5) run at once, and how many
    /// of a run's database items may hold a connection to one cluster (host and port) at once.
    /// Default 4.
    #[serde(default = "default_parallel")]
    pub max_parallel_targets: usize,
    /// Host name shown in reports. Default: the machine's host name.
    pub hostname: Option<String>,
    /// Undelivered notifications older than this are dropped (and logged). Default 7d.
    #[serde(default = "default_outbox_max_age")]
    pub outbox_max_age: Dur,
    /// On SIGTERM, how long running jobs may finish before they are cancelled. Default 30s.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Dur,
    /// The daemon's housekeeping deletes stored runs (and the `file` notifiers' reports) older
    /// than this, once at start and then daily. Default 400d: a year of monthly runs and then
    /// some, so "the same month last year" is still there. At least 1d.
    #[serde(default = "default_keep_runs")]
    pub keep_runs: Dur,
}

impl Default for RunbookSection {
    fn default() -> Self {
        RunbookSection {
            timezone: default_tz(),
            state_dir: None,
            max_parallel_items: default_parallel(),
            max_parallel_targets: default_parallel(),
            hostname: None,
            outbox_max_age: default_outbox_max_age(),
            shutdown_grace: default_shutdown_grace(),
            keep_runs: default_keep_runs(),
        }
    }
}

fn default_tz() -> String {
    "UTC".into()
}
fn default_parallel() -> usize {
    4
}
fn default_outbox_max_age() -> Dur {
    Dur::from_secs(7 * 86400)
}
fn default_shutdown_grace() -> Dur {
    Dur::from_secs(30)
}
fn default_keep_runs() -> Dur {
    Dur::from_secs(400 * 86400)
}

/// The packaged daemon's state folder (`StateDirectory=runbook` in the shipped unit).
pub const HOST_STATE_DIR: &str = "/var/lib/runbook";

/// Why the state folder is the one it is (shown by `check-config`, named in access errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StateDirOrigin {
    /// `[runbook] state_dir` in the config file.
    Config,
    /// `$RUNBOOK_STATE_DIR`.
    Env,
    /// `$STATE_DIRECTORY`, set by systemd's `StateDirectory=` (the daemon under its unit).
    Systemd,
    /// The packaged daemon's folder, [`HOST_STATE_DIR`], which exists on this host.
    Host,
    /// `./runbook-state`: no daemon state on this host (a checkout, a trial).
    Local,
}

impl fmt::Display for StateDirOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StateDirOrigin::Config => "[runbook] state_dir",
            StateDirOrigin::Env => "$RUNBOOK_STATE_DIR",
            StateDirOrigin::Systemd => "$STATE_DIRECTORY, from systemd",
            StateDirOrigin::Host => "the daemon's state folder on this host",
            StateDirOrigin::Local => "no daemon state folder on this host",
        })
    }
}

/// One state per host: the rule that picks the state folder, first match wins.
///
/// 1. `[runbook] state_dir` (`explicit`; relative to the config's folder `base`);
/// 2. `$RUNBOOK_STATE_DIR` (relative to the current folder);
/// 3. `$STATE_DIRECTORY` (the daemon under systemd; its first entry);
/// 4. `host_dir` (`/var/lib/runbook`, the packaged daemon's `StateDirectory=`) when it exists,
///    so `history`, `report`, `outbox` and a manual `run-job` typed in a shell see the
///    daemon's runs and share its job locks;
/// 5. `./runbook-state`.
///
/// `env` reads an environment variable and `host_dir` is a parameter so tests can exercise
/// every branch without the real `/var/lib/runbook`.
pub fn resolve_state_dir(
    explicit: Option<&Path>,
    base: &Path,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
    host_dir: &Path,
) -> (PathBuf, StateDirOrigin) {
    if let Some(p) = explicit {
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        };
        return (p, StateDirOrigin::Config);
    }
    // Relative paths become absolute, so messages say where the state is.
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    if let Some(p) = env("RUNBOOK_STATE_DIR").filter(|p| !p.is_empty()) {
        return (absolute(PathBuf::from(p)), StateDirOrigin::Env);
    }
    if let Some(p) = env("STATE_DIRECTORY").filter(|p| !p.is_empty()) {
        // systemd joins several StateDirectory= entries with ':'; ours is the first.
        let first = p
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        if !first.is_empty() {
            return (PathBuf::from(first), StateDirOrigin::Systemd);
        }
    }
    if host_dir.is_dir() {
        return (host_dir.to_path_buf(), StateDirOrigin::Host);
    }
    (
        absolute(PathBuf::from("runbook-state")),
        StateDirOrigin::Local,
    )
}

/// `[server]` as written: the daemon's HTTP endpoint (metrics, health, status page).
/// Validation builds a [`ServerConfig`] from it.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Address to listen on, e.g. `127.0.0.1:9187`.
    pub listen: String,
    /// A secret: when set, every path but `/healthz` and `/metrics` needs
    /// `Authorization: Bearer <token>` (or the cookie `?token=` sets; SPEC 9.6).
    pub token: Option<crate::base::secret::SecretSource>,
}

/// By hand: an inline `token` source holds the value itself, and Debug output must not show it.
impl std::fmt::Debug for ServerSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSection")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "..."))
            .finish()
    }
}

/// `[server]` built at load: the token resolved (and not empty).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on, e.g. `127.0.0.1:9187`.
    pub listen: String,
    token: Option<crate::base::secret::Secret>,
}

impl ServerConfig {
    /// The resolved `token`, if one is set.
    pub fn token(&self) -> Option<&crate::base::secret::Secret> {
        self.token.as_ref()
    }
}

/// What a daemon does when the shared cluster database cannot be reached.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnClusterDown {
    /// Run the slot anyway (risking a duplicate run on another node). Logged loudly.
    #[default]
    Run,
    /// Do not run the slot (risking a missed run). Logged loudly.
    Skip,
}

/// `[cluster]` as written: several daemons sharing one PostgreSQL so every slot runs exactly
/// once. Validation builds a [`ClusterConfig`] from it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// The shared PostgreSQL database.
    pub url: String,
    /// Password for `url`, a secret.
    pub password: Option<crate::base::secret::SecretSource>,
    /// How long a claim lasts without renewal before another node may take the slot over.
    #[serde(default = "default_lease")]
    pub lease: Dur,
    #[serde(default)]
    pub on_cluster_down: OnClusterDown,
    /// This node's name in claim rows. Default: the host name.
    pub node: Option<String>,
}

fn default_lease() -> Dur {
    Dur::from_secs(60)
}

/// `[cluster]` built at load: the URL parsed and the password resolved, so a daemon or a
/// manual run finds nothing left to check.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The shared database (named `cluster` in messages).
    pub target: Target,
    /// This node's name in claim rows (`node`, default the host name).
    pub node: String,
    /// How long a claim lasts without renewal before another node may take the slot over.
    pub lease: Dur,
    pub on_cluster_down: OnClusterDown,
}

/// One `[jobs.NAME]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// One line for people: shown in `list`, reports and emails.
    #[serde(default)]
    pub description: String,
    /// Cron expression (5 fields, or 6 with seconds first). None: the job runs only by hand.
    pub schedule: Option<String>,
    /// Overrides `[runbook].timezone`.
    pub timezone: Option<String>,
    #[serde(default)]
    pub catch_up: CatchUp,
    /// How old a missed slot may be and still be caught up. Default 12h.
    #[serde(default = "default_catch_up_within")]
    pub catch_up_within: Dur,
    /// The whole job's deadline. Default 1h.
    #[serde(default = "default_job_timeout")]
    pub timeout: Dur,
    /// Notifiers to use. Default: every notifier.
    pub notify: Option<Vec<String>>,
    /// Overrides `[runbook].max_parallel_items` for this job.
    pub max_parallel_items: Option<usize>,
    /// Escalation steps (SPEC 9.1): a failing item nobody acknowledged within a step's
    /// `after` sends the run's report to the step's notifiers, once per run and step.
    #[serde(default)]
    pub escalate: Vec<EscalateStep>,
    /// The checklist.
    #[serde(default)]
    pub items: Vec<ItemConfig>,
}

/// One `escalate = [{ after = "30m", notify = ["pagerduty"] }]` step of a job.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalateStep {
    /// How long after the run finished a failure may stay unacknowledged.
    pub after: Dur,
    /// The notifiers that then get the run's report.
    pub notify: Vec<String>,
}

fn default_catch_up_within() -> Dur {
    Dur::from_secs(12 * 3600)
}
fn default_job_timeout() -> Dur {
    Dur::from_secs(3600)
}

/// One `[[jobs.NAME.items]]` entry: common fields plus the kind's own options.
#[derive(Debug, Clone)]
pub struct ItemConfig {
    /// Unique within the job; used by `--item` and in reports.
    pub name: String,
    /// This item's deadline (each kind has its own default; the job's timeout caps it).
    pub timeout: Option<Dur>,
    /// The kind and its options (`kind = "backup"`, ...). An item over several targets carries
    /// the first of them here; the runner sets each in turn.
    pub spec: ItemSpec,
    /// `target` as written when it names several targets (a list or a glob; SPEC 9.5).
    pub target_selector: Option<TargetSelector>,
    /// The targets the item runs on, one run each, in order (resolved at load from
    /// `target_selector`); empty for an item with one target or none.
    pub fleet: Vec<String>,
}

/// An item's `target` naming several targets (SPEC 9.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSelector {
    /// `target = ["a", "b"]`.
    List(Vec<String>),
    /// `target = "shard-*"`: a glob over the names of `[targets]`.
    Glob(String),
}

impl TargetSelector {
    /// True for a `target` string that is a glob rather than a name (`*`, `?` or `[`).
    pub fn is_glob(s: &str) -> bool {
        s.contains(['*', '?', '['])
    }

    /// The defined target names this selects, in order (a list's order, or sorted for a glob),
    /// or why it selects none.
    pub fn resolve(&self, defined: &BTreeSet<String>) -> Result<Vec<String>, String> {
        let names: Vec<&str> = defined.iter().map(String::as_str).collect();
        match self {
            TargetSelector::List(list) => {
                if list.is_empty() {
                    return Err("target = [] names no target".into());
                }
                let unknown: Vec<&String> = list.iter().filter(|t| !defined.contains(*t)).collect();
                if !unknown.is_empty() {
                    return Err(format!(
                        "unknown target{} {} (defined: {})",
                        if unknown.len() == 1 { "" } else { "s" },
                        unknown
                            .iter()
                            .map(|t| format!("{t:?}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        or_none(&names)
                    ));
                }
                let mut seen = BTreeSet::new();
                Ok(list
                    .iter()
                    .filter(|t| seen.insert(t.as_str()))
                    .cloned()
                    .collect())
            }
            TargetSelector::Glob(pattern) => {
                let glob = globset::GlobBuilder::new(pattern)
                    .literal_separator(false)
                    .build()
                    .map_err(|e| format!("invalid target glob {pattern:?}: {}", e.kind()))?
                    .compile_matcher();
                let matched: Vec<String> = defined
                    .iter()
                    .filter(|t| glob.is_match(t))
                    .cloned()
                    .collect();
                if matched.is_empty() {
                    return Err(format!(
                        "target glob {pattern:?} matches no target (defined: {})",
                        or_none(&names)
                    ));
                }
                Ok(matched)
            }
        }
    }
}

impl std::fmt::Display for TargetSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetSelector::List(l) => write!(f, "{l:?}"),
            TargetSelector::Glob(g) => write!(f, "{g:?}"),
        }
    }
}

impl<'de> Deserialize<'de> for ItemConfig {
    /// As written, except `target`: a list or a glob is taken out (the kinds read one name) and
    /// kept as the item's [`TargetSelector`].
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ItemConfig, D::Error> {
        use serde::de::Error;
        #[derive(Deserialize)]
        struct Plain {
            name: String,
            timeout: Option<Dur>,
            #[serde(flatten)]
            spec: ItemSpec,
        }
        let mut table = toml::Table::deserialize(d)?;
        let selector = match table.get("target") {
            Some(toml::Value::Array(list)) => {
                let names = list
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<String>>>()
                    .ok_or_else(|| {
                        D::Error::custom("target: a list of target names must hold only strings")
                    })?;
                Some(TargetSelector::List(names))
            }
            Some(toml::Value::String(s)) if TargetSelector::is_glob(s) => {
                Some(TargetSelector::Glob(s.clone()))
            }
            _ => None,
        };
        if let Some(sel) = &selector {
            // The kind reads a name; the runner sets the real one per target.
            let first = match sel {
                TargetSelector::List(l) => l.first().cloned().unwrap_or_default(),
                TargetSelector::Glob(g) => g.clone(),
            };
            table.insert("target".into(), toml::Value::String(first));
        }
        let plain = Plain::deserialize(toml::Value::Table(table))
            .map_err(|e| D::Error::custom(e.message().trim()))?;
        Ok(ItemConfig {
            name: plain.name,
            timeout: plain.timeout,
            spec: plain.spec,
            target_selector: selector,
            fleet: Vec::new(),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    runbook: RunbookSection,
    #[serde(default)]
    targets: BTreeMap<String, TargetConfig>,
    #[serde(default)]
    notify: BTreeMap<String, NotifierConfig>,
    #[serde(default)]
    jobs: BTreeMap<String, JobConfig>,
    server: Option<ServerSection>,
    cluster: Option<ClusterSection>,
}

/// A job ready to run: its config plus the parsed schedule and zone.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub config: JobConfig,
    /// Zone of the schedule and of times shown in its reports.
    pub tz: Tz,
    /// None for a job that runs only by hand.
    pub schedule: Option<Schedule>,
    /// Names of the notifiers this job uses.
    pub notify: Vec<String>,
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages and relative paths).
    pub path: PathBuf,
    /// The folder of `path`: relative paths in items are relative to it.
    pub dir: PathBuf,
    pub runbook: RunbookSection,
    /// The resolved state folder ([`resolve_state_dir`]).
    pub state_dir: PathBuf,
    /// Which rule chose `state_dir`.
    pub state_dir_origin: StateDirOrigin,
    pub hostname: String,
    pub targets: Arc<BTreeMap<String, Target>>,
    /// The built notifiers by name (`[notify.NAME]`).
    pub notifiers: Notifiers,
    pub jobs: BTreeMap<String, Job>,
    pub server: Option<ServerConfig>,
    pub cluster: Option<ClusterConfig>,
    /// Non-fatal findings (inline secrets, ...), shown by `check-config`.
    pub warnings: Vec<String>,
    /// Hides every secret of this config in text bound for a report (what a child printed).
    pub redactor: crate::base::secret::Redactor,
}

/// One configuration mistake, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// `job "daily", item "Backups"` when known.
    pub context: Option<String>,
    /// The job the mistake is in, when it is in one (for `check-config --format json`).
    pub job: Option<String>,
    /// The item (its `name`, else `#N` counting from 1 within the job), when in one.
    pub item: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if let Some(c) = &self.context {
            write!(f, "{c}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// All mistakes found in one file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// `35d`, `36h` (gaps and windows in check-config's warnings).
fn days_or_hours(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    if secs.is_multiple_of(86400) {
        format!("{}d", secs / 86400)
    } else if secs >= 86400 {
        format!("{:.1}d", secs as f64 / 86400.0)
    } else {
        format!("{}h", secs.div_ceil(3600))
    }
}

/// The config path per SPEC: `--config`, else `$RUNBOOK_CONFIG`, else `./jobs.toml`, else
/// `/etc/runbook/jobs.toml`.
pub fn resolve_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("RUNBOOK_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let local = PathBuf::from("jobs.toml");
    if local.exists() {
        return local;
    }
    PathBuf::from("/etc/runbook/jobs.toml")
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 1,
                column: 1,
                context: None,
                job: None,
                item: None,
                message: format!("cannot read config file: {e}"),
            }])
        })?;
        Config::from_text(path, &text)
    }

    /// Parses and validates config text; `path` is used for messages and relative paths.
    pub fn from_text(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let locator = Locator::new(path, text);
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigErrors(vec![locator.locate_toml_error(&e)]))?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        validate(raw, path.to_path_buf(), dir, &locator)
    }

    /// Every secret of the configuration: targets' and the cluster's passwords, notifiers'
    /// credentials, and the secrets items hand to requests and child processes. The
    /// [`crate::base::secret::Redactor`] of reports is built from these.
    pub fn secrets(&self) -> Vec<&crate::base::secret::Secret> {
        let mut all: Vec<&crate::base::secret::Secret> = Vec::new();
        all.extend(self.targets.values().filter_map(|t| t.password.as_ref()));
        if let Some(c) = &self.cluster {
            all.extend(c.target.password.as_ref());
        }
        if let Some(s) = &self.server {
            all.extend(s.token());
        }
        for n in self.notifiers.values() {
            all.extend(n.secrets());
        }
        for job in self.jobs.values() {
            for item in &job.config.items {
                all.extend(item.spec.secrets());
            }
        }
        all
    }

    /// How long undelivered notifications are retried (`outbox_max_age`).
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_age: self.runbook.outbox_max_age.0,
        }
    }

    /// The job called `name`, or an error listing the known ones.
    pub fn job(&self, name: &str) -> Result<&Job, UnknownJob> {
        self.jobs.get(name).ok_or_else(|| UnknownJob {
            name: name.to_string(),
            file: self.path.clone(),
            known: self.jobs.keys().cloned().collect(),
        })
    }
}

/// A job name that is not in the configuration (a usage error for the command line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job {name:?} in {} (jobs: {})", file.display(), known.join(", "))]
pub struct UnknownJob {
    pub name: String,
    /// The configuration file.
    pub file: PathBuf,
    /// The jobs it defines.
    pub known: Vec<String>,
}

/// Checks the parsed file section by section and assembles the [`Config`]; every mistake is
/// collected (located at file:line:column, naming the job and item) before any is returned.
fn validate(
    raw: RawConfig,
    path: PathBuf,
    dir: PathBuf,
    loc: &Locator,
) -> Result<Config, ConfigErrors> {
    let mut check = Check {
        loc,
        dir: &dir,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let default_tz = check.runbook(&raw.runbook);
    let targets = check.targets(&raw.targets);
    let notifiers = check.notifiers(raw.notify);
    // Items naming a target that failed to resolve get that target's error, not "unknown".
    let target_names: BTreeSet<String> = raw.targets.keys().cloned().collect();
    let job_names: BTreeSet<String> = raw.jobs.keys().cloned().collect();
    let known = Known {
        default_tz,
        notifiers: &notifiers,
        targets: &targets,
        target_names: &target_names,
        job_names: &job_names,
    };
    let jobs = check.jobs(raw.jobs, &known);
    let cluster_target = raw.cluster.as_ref().and_then(|c| check.cluster(c));
    let server = check.server(raw.server);
    let Check {
        mut errors,
        warnings,
        ..
    } = check;
    if !errors.is_empty() {
        errors.sort_by_key(|e| (e.line, e.column));
        return Err(ConfigErrors(errors));
    }

    let (state_dir, state_dir_origin) = resolve_state_dir(
        raw.runbook.state_dir.as_deref(),
        &dir,
        |name| std::env::var_os(name),
        Path::new(HOST_STATE_DIR),
    );
    let hostname = raw.runbook.hostname.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into())
    });

    let cluster = raw
        .cluster
        .zip(cluster_target)
        .map(|(section, target)| ClusterConfig {
            target,
            node: section.node.unwrap_or_else(|| hostname.clone()),
            lease: section.lease,
            on_cluster_down: section.on_cluster_down,
        });

    let mut config = Config {
        path,
        dir,
        runbook: raw.runbook,
        state_dir,
        state_dir_origin,
        hostname,
        targets: Arc::new(targets),
        notifiers: notifiers
            .into_iter()
            .filter_map(|(name, n)| Some((name, n?)))
            .collect(),
        jobs,
        server,
        cluster,
        warnings,
        redactor: crate::base::secret::Redactor::default(),
    };
    config.redactor = crate::base::secret::Redactor::new(config.secrets());
    Ok(config)
}

/// What the jobs may refer to, checked before them.
struct Known<'a> {
    /// `[runbook] timezone` (UTC when it was wrong).
    default_tz: Tz,
    /// Every `[notify.NAME]`, built (None: its options are wrong, and the errors say why).
    notifiers: &'a BTreeMap<String, Option<Notifier>>,
    /// The targets that resolved.
    targets: &'a BTreeMap<String, Target>,
    /// Every `[targets.NAME]`, resolved or not.
    target_names: &'a BTreeSet<String>,
    /// Every `[jobs.NAME]` (a `capacity` item reads another job's runs).
    job_names: &'a BTreeSet<String>,
}

/// The validators of [`validate`], one per section: each checks what types cannot and records
/// its findings here.
struct Check<'a> {
    loc: &'a Locator,
    /// The config's folder: relative paths are relative to it.
    dir: &'a Path,
    errors: Vec<ConfigError>,
    /// Non-fatal findings, `file:line:col: ...`.
    warnings: Vec<String>,
}

impl Check<'_> {
    /// `[runbook]`: the default zone (UTC when it is wrong, so the jobs are still checked),
    /// `keep_runs` and `max_parallel_items`.
    fn runbook(&mut self, runbook: &RunbookSection) -> Tz {
        let loc = self.loc;
        if runbook.keep_runs.0 < std::time::Duration::from_secs(86400) {
            self.errors.push(loc.at_key(
                "runbook",
                "keep_runs",
                None,
                format!(
                    "keep_runs = \"{}\" is too short: runs are kept at least 1d (the default is 400d)",
                    runbook.keep_runs
                ),
            ));
        }
        if runbook.max_parallel_items == 0 {
            self.errors.push(loc.at_key(
                "runbook",
                "max_parallel_items",
                None,
                "max_parallel_items must be at least 1".into(),
            ));
        }
        if runbook.max_parallel_targets == 0 {
            self.errors.push(loc.at_key(
                "runbook",
                "max_parallel_targets",
                None,
                "max_parallel_targets must be at least 1".into(),
            ));
        }
        match runbook.timezone.parse() {
            Ok(tz) => tz,
            Err(_) => {
                self.errors.push(loc.at_key(
                    "runbook",
                    "timezone",
                    None,
                    unknown_zone(&runbook.timezone),
                ));
                Tz::UTC
            }
        }
    }

    /// `[targets.NAME]`: each resolved (password, TLS files) into a ready [`Target`].
    fn targets(&mut self, raw: &BTreeMap<String, TargetConfig>) -> BTreeMap<String, Target> {
        let (loc, dir) = (self.loc, self.dir);
        let mut targets = BTreeMap::new();
        for (name, t) in raw {
            match Target::resolve(name, t, dir) {
                Ok((target, warns)) => {
                    for w in warns {
                        self.warnings.push(format!(
                            "{}: target {name:?}: {w}",
                            loc.position_of_section(&format!("targets.{name}"))
                        ));
                    }
                    targets.insert(name.clone(), target);
                }
                Err(msgs) => {
                    for m in msgs {
                        self.errors.push(loc.at_section(
                            &format!("targets.{name}"),
                            Some(format!("target {name:?}")),
                            m,
                        ));
                    }
                }
            }
        }
        targets
    }

    /// `[notify.NAME]`: each notifier validated and built (its secrets resolved, its options
    /// checked); `None` for one whose options are wrong (the errors say why).
    fn notifiers(
        &mut self,
        raw: BTreeMap<String, NotifierConfig>,
    ) -> BTreeMap<String, Option<Notifier>> {
        let (loc, dir) = (self.loc, self.dir);
        let (errors, warnings) = (&mut self.errors, &mut self.warnings);
        let mut notifiers = BTreeMap::new();
        for (name, n) in raw {
            let section = format!("notify.{name}");
            let built = match n.prepare(&name, dir) {
                Ok((built, warns)) => {
                    for w in warns {
                        warnings.push(format!(
                            "{}: notifier {name:?}: {w}",
                            loc.position_of_section(&section)
                        ));
                    }
                    Some(built)
                }
                Err(msgs) => {
                    for m in msgs {
                        errors.push(loc.at_section(
                            &section,
                            Some(format!("notifier {name:?}")),
                            m,
                        ));
                    }
                    None
                }
            };
            notifiers.insert(name, built);
        }
        notifiers
    }

    /// `[jobs.NAME]`: every job and its items.
    fn jobs(&mut self, raw: BTreeMap<String, JobConfig>, known: &Known) -> BTreeMap<String, Job> {
        raw.into_iter()
            .map(|(name, job)| {
                let job = self.job(name.clone(), job, known);
                (name, job)
            })
            .collect()
    }

    /// One job: its name, zone, schedule, notifiers and items.
    fn job(&mut self, name: String, mut job: JobConfig, known: &Known) -> Job {
        let loc = self.loc;
        let section = format!("jobs.{name}");
        let ctx = Some(format!("job {name:?}"));
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            self.errors.push(loc.at_section(
                &section,
                ctx.clone(),
                "job names may contain only letters, digits, '-' and '_'".into(),
            ));
        }
        let (tz, schedule) = self.job_schedule(&section, &ctx, &job, known.default_tz);
        if job.max_parallel_items == Some(0) {
            self.errors.push(loc.at_key(
                &section,
                "max_parallel_items",
                ctx.clone(),
                "max_parallel_items must be at least 1".into(),
            ));
        }
        let notify = self.job_notifiers(&section, &ctx, &job, known.notifiers);
        let escalate_errors = validate_escalate(&job.escalate, known.notifiers, |m| {
            loc.at_key(&section, "escalate", ctx.clone(), m)
        });
        self.errors.extend(escalate_errors);
        if job.items.is_empty() {
            self.warnings.push(format!(
                "{}: job {name:?} has no items",
                loc.position_of_section(&section)
            ));
        }
        // The longest time between two runs of the job (first Mondays: 35 days), against the
        // look-ahead window of items that warn before a date.
        // Only worked out for jobs that have such an item (a minutely job steps 10 000 slots).
        let longest_gap = schedule
            .as_ref()
            .filter(|_| job.items.iter().any(|i| i.spec.warning_window().is_some()))
            .and_then(|s| s.longest_gap_ahead(tz));
        self.items(&name, &mut job.items, known, longest_gap);
        Job {
            name,
            config: job,
            tz,
            schedule,
            notify,
        }
    }

    /// A job's `timezone` (default: `[runbook]`'s) and `schedule` (None: runs only by hand).
    fn job_schedule(
        &mut self,
        section: &str,
        ctx: &Option<String>,
        job: &JobConfig,
        default_tz: Tz,
    ) -> (Tz, Option<Schedule>) {
        let loc = self.loc;
        let tz = match &job.timezone {
            None => default_tz,
            Some(z) => match z.parse::<Tz>() {
                Ok(tz) => tz,
                Err(_) => {
                    self.errors
                        .push(loc.at_key(section, "timezone", ctx.clone(), unknown_zone(z)));
                    default_tz
                }
            },
        };
        let schedule = match &job.schedule {
            None => None,
            Some(expr) => match Schedule::parse(expr) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.errors
                        .push(loc.at_key(section, "schedule", ctx.clone(), e.to_string()));
                    None
                }
            },
        };
        (tz, schedule)
    }

    /// A job's `notify` list: each name must be a defined notifier (default: all of them).
    fn job_notifiers(
        &mut self,
        section: &str,
        ctx: &Option<String>,
        job: &JobConfig,
        notifiers: &BTreeMap<String, Option<Notifier>>,
    ) -> Vec<String> {
        let Some(list) = &job.notify else {
            return notifiers.keys().cloned().collect();
        };
        for n in list {
            if !notifiers.contains_key(n) {
                let known: Vec<&str> = notifiers.keys().map(String::as_str).collect();
                self.errors.push(self.loc.at_key(
                    section,
                    "notify",
                    ctx.clone(),
                    format!("unknown notifier {n:?} (defined: {})", or_none(&known)),
                ));
            }
        }
        list.clone()
    }

    /// A job's `[[jobs.NAME.items]]`: unique non-empty names, known targets, and each kind's
    /// own rules (its `prepare`).
    fn items(
        &mut self,
        job: &str,
        items: &mut [ItemConfig],
        known: &Known,
        longest_gap: Option<std::time::Duration>,
    ) {
        let (loc, dir) = (self.loc, self.dir);
        let mut seen = BTreeSet::new();
        for (index, item) in items.iter_mut().enumerate() {
            let item_section = format!("jobs.{job}.items#{index}");
            let ictx = Some(format!("job {job:?}, item {:?}", item.name));
            if item.name.trim().is_empty() {
                self.errors.push(loc.at_key(
                    &item_section,
                    "name",
                    ictx.clone(),
                    "item name must not be empty".into(),
                ));
            }
            if !seen.insert(item.name.clone()) {
                self.errors.push(loc.at_key(
                    &item_section,
                    "name",
                    ictx.clone(),
                    format!("duplicate item name {:?} in job {job:?}", item.name),
                ));
            }
            if let Some(sel) = item.target_selector.clone() {
                match sel.resolve(known.target_names) {
                    Ok(names) => {
                        if item.spec.set_target(&names[0]) {
                            item.fleet = names;
                        } else {
                            self.errors.push(loc.at_key(
                                &item_section,
                                "target",
                                ictx.clone(),
                                format!("kind {:?} takes no target list or glob", item.spec.kind()),
                            ));
                        }
                    }
                    Err(msg) => {
                        self.errors
                            .push(loc.at_key(&item_section, "target", ictx.clone(), msg))
                    }
                }
            } else if let Some(t) = item.spec.target()
                && !known.target_names.contains(t)
            {
                let names: Vec<&str> = known.target_names.iter().map(String::as_str).collect();
                self.errors.push(loc.at_key(
                    &item_section,
                    "target",
                    ictx.clone(),
                    format!("unknown target {t:?} (defined: {})", or_none(&names)),
                ));
            }
            // A `capacity` item reads another job's stored runs: that job must exist.
            if let crate::items::ItemSpec::Capacity(c) = &item.spec
                && let Some(source) = &c.job
                && !known.job_names.contains(source)
            {
                self.errors.push(loc.at_key(
                    &item_section,
                    "job",
                    ictx.clone(),
                    format!(
                        "unknown job {source:?} (defined: {})",
                        known.job_names.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            // A `replication` item's `primary` names the target its standby must follow.
            if let crate::items::ItemSpec::Replication(r) = &item.spec
                && let Some(primary) = &r.primary
            {
                let own = item.fleet.contains(primary) || item.spec.target() == Some(primary);
                let msg = if !known.target_names.contains(primary) {
                    let names: Vec<&str> = known.target_names.iter().map(String::as_str).collect();
                    Some(format!(
                        "unknown target {primary:?} in primary (defined: {})",
                        or_none(&names)
                    ))
                } else if own {
                    Some(format!(
                        "primary {primary:?} is also the item's target: a target cannot be a standby of itself"
                    ))
                } else {
                    None
                };
                if let Some(msg) = msg {
                    self.errors
                        .push(loc.at_key(&item_section, "primary", ictx.clone(), msg));
                }
            }
            let mut prep = Prepare::new(dir, known.targets);
            item.spec.prepare(&mut prep);
            for (key, msg) in prep.errors {
                let key = key.as_deref().unwrap_or("kind");
                self.errors
                    .push(loc.at_key(&item_section, key, ictx.clone(), msg));
            }
            for w in prep.warnings {
                self.warnings.push(format!(
                    "{}: job {job:?}, item {:?}: {w}",
                    loc.position_of_section(&item_section),
                    item.name
                ));
            }
            if let (Some(gap), Some((key, window))) = (longest_gap, item.spec.warning_window())
                && gap > window
            {
                self.warnings.push(format!(
                    "{}: job {job:?}, item {:?}: the job's runs can be {} apart (the longest gap between its slots), longer than {key} ({}): a date can pass the whole window between two runs unwarned; set {key} to at least {} or check it in a job that runs more often",
                    loc.position_of_section(&item_section),
                    item.name,
                    days_or_hours(gap),
                    days_or_hours(window),
                    days_or_hours(gap),
                ));
            }
        }
    }

    /// `[cluster]`: its URL parsed and its password resolved into the shared database's
    /// [`Target`] (None also when they are wrong: the errors say why).
    fn cluster(&mut self, cluster: &ClusterSection) -> Option<Target> {
        let password = match &cluster.password {
            None => None,
            Some(src) => {
                match crate::base::secret::Secret::resolve(src, "cluster.password", self.dir) {
                    Ok(s) => Some(s),
                    Err(m) => {
                        self.errors.push(self.loc.at_key(
                            "cluster",
                            "password",
                            None,
                            m.to_string(),
                        ));
                        None
                    }
                }
            }
        };
        match Target::from_url("cluster", &cluster.url) {
            Ok(mut target) => {
                target.password = password;
                Some(target)
            }
            Err(m) => {
                self.errors
                    .push(self.loc.at_key("cluster", "url", None, m.to_string()));
                None
            }
        }
    }

    /// `[server]`: its token resolved, not empty.
    fn server(&mut self, server: Option<ServerSection>) -> Option<ServerConfig> {
        let server = server?;
        let mut built = ServerConfig {
            listen: server.listen,
            token: None,
        };
        let Some(src) = &server.token else {
            return Some(built);
        };
        match crate::base::secret::Secret::resolve(src, "server.token", self.dir) {
            Ok(s) if s.expose().trim().is_empty() => self.errors.push(self.loc.at_key(
                "server",
                "token",
                None,
                "server.token is empty".into(),
            )),
            Ok(s) => {
                if s.inline {
                    self.warnings.push(
                        "server.token is written inline; prefer { env = \"VAR\" } or { file = \"PATH\" }"
                            .into(),
                    );
                }
                built.token = Some(s)
            }
            Err(m) => self
                .errors
                .push(self.loc.at_key("server", "token", None, m.to_string())),
        }
        Some(built)
    }
}

/// The problems of a job's `escalate` steps, each made an error by `at` (which places it).
fn validate_escalate<N, E>(
    steps: &[EscalateStep],
    notifiers: &BTreeMap<String, N>,
    at: impl Fn(String) -> E,
) -> Vec<E> {
    let mut errors = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let n = i + 1;
        if step.after.get().is_zero() {
            errors.push(at(format!(
                "escalate step {n}: `after` must be longer than 0"
            )));
        }
        if step.notify.is_empty() {
            errors.push(at(format!("escalate step {n}: `notify` names no notifier")));
        }
        for name in &step.notify {
            if !notifiers.contains_key(name) {
                let known: Vec<&str> = notifiers.keys().map(String::as_str).collect();
                errors.push(at(format!(
                    "escalate step {n}: unknown notifier {name:?} (defined: {})",
                    or_none(&known)
                )));
            }
        }
    }
    errors
}

/// `a, b, c`, or `none`.
fn or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn unknown_zone(z: &str) -> String {
    format!(
        "unknown time zone {z:?} (use an IANA name such as \"Asia/Kolkata\" or \"Europe/Berlin\")"
    )
}

/// Maps byte offsets, sections and keys of the config text back to line:column and job/item,
/// so every error can say where it is.
///
/// It understands the layout people write: `[table]` and `[[array]]` headers, one `key = value`
/// per line. Items are the `[[jobs.NAME.items]]` headers, numbered per job. Anything it cannot
/// place falls back to the nearest enclosing section, then to line 1.
pub struct Locator {
    file: PathBuf,
    text: String,
    /// (byte offset of header line, section id, item name when an item).
    sections: Vec<SectionInfo>,
}

struct SectionInfo {
    start: usize,
    line: usize,
    id: String,
    item_name: Option<String>,
    /// (key, line, column) for `key = ...` lines directly in this section.
    keys: Vec<(String, usize, usize)>,
}

impl Locator {
    pub fn new(file: &Path, text: &str) -> Locator {
        let mut sections = vec![SectionInfo {
            start: 0,
            line: 1,
            id: String::new(),
            item_name: None,
            keys: vec![],
        }];
        let mut item_counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut offset = 0;
        for (lineno, line) in text.split_inclusive('\n').enumerate() {
            let trimmed = line.trim_start();
            let indent = line.len() - trimmed.len();
            if trimmed.starts_with('[') {
                let is_array = trimmed.starts_with("[[");
                let inner = trimmed.trim_start_matches('[');
                let end = inner.find(']').unwrap_or(inner.len());
                let path: Vec<String> = split_dotted(&inner[..end]);
                let id = if is_array && path.len() == 3 && path[0] == "jobs" && path[2] == "items" {
                    let n = item_counts.entry(path[1].clone()).or_insert(0);
                    let id = format!("jobs.{}.items#{}", path[1], n);
                    *n += 1;
                    Some(id)
                } else if path.len() > 3 && path[0] == "jobs" && path[2] == "items" {
                    // A sub-table of the current item (e.g. `[[jobs.monthly.items.keys]]`): keep
                    // attributing lines to the item.
                    None
                } else {
                    Some(path.join("."))
                };
                if let Some(id) = id {
                    sections.push(SectionInfo {
                        start: offset,
                        line: lineno + 1,
                        id,
                        item_name: None,
                        keys: vec![],
                    });
                }
            } else if let Some(eq) = trimmed.find('=') {
                let key = trimmed[..eq].trim().trim_matches('"').to_string();
                if !key.is_empty() && !key.starts_with('#') {
                    let sec = sections.last_mut().expect("root section");
                    if key == "name" && sec.item_name.is_none() {
                        let v = trimmed[eq + 1..].trim();
                        let v = v.split(" #").next().unwrap_or(v).trim();
                        if let Ok(s) =
                            toml::from_str::<BTreeMap<String, String>>(&format!("v = {v}"))
                        {
                            sec.item_name = s.get("v").cloned();
                        }
                    }
                    sec.keys.push((key, lineno + 1, indent + 1));
                }
            }
            offset += line.len();
        }
        Locator {
            file: file.to_path_buf(),
            text: text.to_owned(),
            sections,
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before
            .rsplit('\n')
            .next()
            .map(|l| l.chars().count())
            .unwrap_or(0)
            + 1;
        (line, col)
    }

    fn section(&self, id: &str) -> Option<&SectionInfo> {
        self.sections.iter().find(|s| s.id == id)
    }

    /// `file:line:col` of a section's header (for warnings).
    pub fn position_of_section(&self, id: &str) -> String {
        let line = self.section(id).map(|s| s.line).unwrap_or(1);
        format!("{}:{}:1", self.file.display(), line)
    }

    fn at_section(&self, id: &str, context: Option<String>, message: String) -> ConfigError {
        let line = self.section(id).map(|s| s.line).unwrap_or(1);
        let (job, item) = self.job_and_item(id);
        ConfigError {
            file: self.file.clone(),
            line,
            column: 1,
            context,
            job,
            item,
            message,
        }
    }

    /// The job and item a section id (`jobs.daily`, `jobs.daily.items#2`) belongs to.
    fn job_and_item(&self, id: &str) -> (Option<String>, Option<String>) {
        let mut parts = id.splitn(3, '.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("jobs"), Some(job), Some(rest)) if rest.starts_with("items#") => {
                let n: usize = rest["items#".len()..].parse().unwrap_or(0);
                let name = self
                    .section(id)
                    .and_then(|s| s.item_name.clone())
                    .unwrap_or_else(|| format!("#{}", n + 1));
                (Some(job.to_string()), Some(name))
            }
            (Some("jobs"), Some(job), _) => (Some(job.to_string()), None),
            _ => (None, None),
        }
    }

    fn at_key(&self, id: &str, key: &str, context: Option<String>, message: String) -> ConfigError {
        if let Some(sec) = self.section(id)
            && let Some((_, line, col)) = sec.keys.iter().find(|(k, _, _)| k == key)
        {
            let (job, item) = self.job_and_item(id);
            return ConfigError {
                file: self.file.clone(),
                line: *line,
                column: *col,
                context,
                job,
                item,
                message,
            };
        }
        self.at_section(id, context, message)
    }

    /// Turns a toml/serde error into a located error naming the job/item it is in.
    fn locate_toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let message = e.message().trim().to_string();
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let (mut line, mut column) = self.line_col(offset);
        let sec = self.sections.iter().rev().find(|s| s.start <= offset);
        let mut context = None;
        let (mut job, mut item) = (None, None);
        if let Some(sec) = sec {
            context = describe_section(&sec.id, sec.item_name.as_deref());
            (job, item) = self.job_and_item(&sec.id);
            // serde reports an unknown or mistyped field at the enclosing table; point at the key.
            if let Some((l, c)) = self.refine(sec, &message) {
                line = l;
                column = c;
            }
        }
        ConfigError {
            file: self.file.clone(),
            line,
            column,
            context,
            job,
            item,
            message,
        }
    }
}

impl Locator {
    /// serde reports mistakes inside an item at the item's table. Point closer: at the key named
    /// in backticks ("unknown field `dirr`"), else at the first line of the section containing
    /// the quoted bad value ("invalid duration \"ninety days\"").
    fn refine(&self, sec: &SectionInfo, message: &str) -> Option<(usize, usize)> {
        if let Some(field) = backticked(message)
            && let Some((_, l, c)) = sec.keys.iter().find(|(k, _, _)| *k == field)
        {
            return Some((*l, *c));
        }
        let start = message.find('"')? + 1;
        let end = message[start..].find('"')? + start;
        let needle = format!("\"{}\"", &message[start..end]);
        let next = self
            .sections
            .iter()
            .map(|s| s.start)
            .filter(|&s| s > sec.start)
            .min()
            .unwrap_or(self.text.len());
        let pos = self.text[sec.start..next].find(&needle)? + sec.start;
        let (line, _) = self.line_col(pos);
        let line_start = self.text[..pos].rfind('\n').map(|i| i + 1).unwrap_or(0);
        let indent = self.text[line_start..].len() - self.text[line_start..].trim_start().len();
        Some((line, indent + 1))
    }
}

fn describe_section(id: &str, item_name: Option<&str>) -> Option<String> {
    let mut parts = id.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("jobs"), Some(job), Some(rest)) if rest.starts_with("items#") => {
            let n: usize = rest["items#".len()..].parse().unwrap_or(0);
            Some(match item_name {
                Some(name) => format!("job {job:?}, item {name:?}"),
                None => format!("job {job:?}, item #{}", n + 1),
            })
        }
        (Some("jobs"), Some(job), _) => Some(format!("job {job:?}")),
        (Some("targets"), Some(t), _) => Some(format!("target {t:?}")),
        (Some("notify"), Some(n), _) => Some(format!("notifier {n:?}")),
        _ => None,
    }
}

/// The first `name` in backticks of a serde message ("unknown field `dirr`, expected ...").
fn backticked(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let end = message[start..].find('`')? + start;
    Some(&message[start..end])
}

fn split_dotted(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match (quote, c) {
            (None, '"') | (None, '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '.') => out.push(std::mem::take(&mut cur).trim().to_string()),
            (_, c) => cur.push(c),
        }
    }
    out.push(cur.trim().to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match Config::from_text(Path::new("jobs.toml"), text) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn unknown_item_key_points_at_the_key_and_names_job_and_item() {
        let text = "[jobs.daily]\nschedule = \"0 10 * * *\"\n\n[[jobs.daily.items]]\nname = \"Remind\"\nkind = \"manual\"\nlinkk = \"x\"\n";
        let e = errors(text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                "jobs.toml:7:1: job \"daily\", item \"Remind\": unknown field `linkk`"
            ),
            "{}",
            e[0]
        );
    }

    #[test]
    fn semantic_errors_are_all_reported_with_positions() {
        let text = r#"[runbook]
timezone = "Asia/Kolkatta"

[jobs.daily]
schedule = "0 25 * * *"
notify = ["nobody"]

[[jobs.daily.items]]
name = "A"
kind = "manual"

[[jobs.daily.items]]
name = "A"
kind = "manual"
"#;
        let e = errors(text);
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(
            e[0].starts_with("jobs.toml:2:1: unknown time zone \"Asia/Kolkatta\""),
            "{}",
            e[0]
        );
        assert!(
            e[1].starts_with("jobs.toml:5:1: job \"daily\": "),
            "{}",
            e[1]
        );
        assert!(
            e[2].starts_with("jobs.toml:6:1: job \"daily\": unknown notifier \"nobody\""),
            "{}",
            e[2]
        );
        assert!(
            e[3].starts_with("jobs.toml:13:1: job \"daily\", item \"A\": duplicate item name"),
            "{}",
            e[3]
        );
    }

    #[test]
    fn state_folder_rule_first_match_wins() {
        let base = Path::new("/etc/runbook");
        let host = tempfile::tempdir().unwrap();
        let none = |_: &str| None;
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        let all = vars(&[
            ("RUNBOOK_STATE_DIR", "/srv/runbook-state"),
            ("STATE_DIRECTORY", "/var/lib/runbook:/var/lib/other"),
        ]);
        // 1. The config's state_dir, relative to the config's folder, beats everything.
        assert_eq!(
            resolve_state_dir(Some(Path::new("state")), base, all, host.path()),
            (PathBuf::from("/etc/runbook/state"), StateDirOrigin::Config)
        );
        // 2. $RUNBOOK_STATE_DIR.
        assert_eq!(
            resolve_state_dir(None, base, all, host.path()),
            (PathBuf::from("/srv/runbook-state"), StateDirOrigin::Env)
        );
        // 3. systemd's $STATE_DIRECTORY (its first entry).
        let systemd = vars(&[("STATE_DIRECTORY", "/var/lib/runbook:/var/lib/other")]);
        assert_eq!(
            resolve_state_dir(None, base, systemd, host.path()),
            (PathBuf::from("/var/lib/runbook"), StateDirOrigin::Systemd)
        );
        // 4. The daemon's folder, when it exists on this host.
        assert_eq!(
            resolve_state_dir(None, base, none, host.path()),
            (host.path().to_path_buf(), StateDirOrigin::Host)
        );
        // 5. Else ./runbook-state (absolute, for messages).
        let gone = host.path().join("not-installed");
        let (dir, origin) = resolve_state_dir(None, base, none, &gone);
        assert_eq!(origin, StateDirOrigin::Local);
        assert_eq!(dir, std::env::current_dir().unwrap().join("runbook-state"));
        // Empty variables count as unset.
        let empty = vars(&[("RUNBOOK_STATE_DIR", ""), ("STATE_DIRECTORY", "")]);
        assert_eq!(
            resolve_state_dir(None, base, empty, host.path()).1,
            StateDirOrigin::Host
        );
    }

    #[test]
    fn keep_runs_defaults_to_400_days_and_too_short_is_located() {
        let c = Config::from_text(Path::new("jobs.toml"), "").unwrap();
        assert_eq!(c.runbook.keep_runs.0.as_secs(), 400 * 86400);
        let e = errors("[runbook]\ntimezone = \"UTC\"\nkeep_runs = \"12h\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("jobs.toml:3:1: keep_runs = \"12h\" is too short"),
            "{}",
            e[0]
        );
        let e = errors("[runbook]\nkeep_runs = \"a year\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("jobs.toml:2:"), "{}", e[0]);
    }

    #[test]
    fn errors_name_job_and_item_as_fields() {
        let text = "[jobs.daily]\n\n[[jobs.daily.items]]\nname = \"Remind\"\nkind = \"manual\"\nlinkk = \"x\"\n";
        let e = Config::from_text(Path::new("jobs.toml"), text).unwrap_err();
        assert_eq!(e.0[0].job.as_deref(), Some("daily"));
        assert_eq!(e.0[0].item.as_deref(), Some("Remind"));
        let e = Config::from_text(
            Path::new("jobs.toml"),
            "[jobs.daily]\nschedule = \"0 25 * * *\"\n",
        )
        .unwrap_err();
        assert_eq!(
            (e.0[0].job.as_deref(), e.0[0].item.as_deref()),
            (Some("daily"), None)
        );
    }

    #[test]
    fn cluster_is_built_at_load_and_a_bad_url_is_a_located_error() {
        let c = Config::from_text(
            Path::new("jobs.toml"),
            "[runbook]\nhostname = \"node-a\"\n\n[cluster]\nurl = \"postgres://runbook@db.example/claims\"\nlease = \"30s\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let cluster = c.cluster.expect("built");
        assert_eq!(cluster.node, "node-a", "node defaults to the host name");
        assert_eq!(cluster.lease.0.as_secs(), 30);
        assert_eq!(cluster.target.dbname(), "claims");
        let e = errors("[cluster]\nurl = \"postgres://[::1\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("jobs.toml:2:1: "), "{}", e[0]);
    }

    #[test]
    fn wrong_type_names_the_job() {
        let e = errors("[jobs.daily]\ntimeout = 30\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("jobs.toml:2:"), "{}", e[0]);
        assert!(e[0].contains("job \"daily\""), "{}", e[0]);
    }

    #[test]
    fn an_explicit_threshold_moves_the_defaulted_side_of_its_pair() {
        use crate::items::ItemSpec;
        let text = "[jobs.d]\n[[jobs.d.items]]\nname = \"s\"\nkind = \"system\"\ndisk_fail = \"75%\"\nmemory_warn = \"97%\"\nload_fail_per_core = 1.5\n\n[[jobs.d.items]]\nname = \"l\"\nkind = \"log_scan\"\nfiles = [\"x.log\"]\nfail_count = 0\n";
        let config = Config::from_text(Path::new("jobs.toml"), text).unwrap_or_else(|e| {
            panic!(
                "{:?}",
                e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>()
            )
        });
        let items = &config.jobs["d"].config.items;
        let ItemSpec::System(s) = &items[0].spec else {
            panic!("not a system item")
        };
        // Explicit fail below the default warn lowers the warn; explicit warn above the
        // default fail raises the fail; untouched defaults stay.
        assert_eq!((s.disk_warn.0, s.disk_fail.0), (75.0, 75.0));
        assert_eq!((s.memory_warn.0, s.memory_fail.0), (97.0, 97.0));
        assert_eq!(s.load_warn_per_core, 1.5);
        let ItemSpec::LogScan(l) = &items[1].spec else {
            panic!("not a log_scan item")
        };
        assert_eq!((l.warn_count, l.fail_count), (0, Some(0)));
        let text = "[jobs.d]\n[[jobs.d.items]]\nname = \"s\"\nkind = \"system\"\n";
        let config = Config::from_text(Path::new("jobs.toml"), text).unwrap();
        let ItemSpec::System(s) = &config.jobs["d"].config.items[0].spec else {
            panic!("not a system item")
        };
        assert_eq!((s.disk_warn.0, s.disk_fail.0), (80.0, 90.0));
        assert_eq!((s.memory_warn.0, s.memory_fail.0), (85.0, 95.0));
        assert_eq!(s.load_warn_per_core, 2.0);
    }

    #[test]
    fn an_explicit_pair_in_the_wrong_order_is_still_an_error_at_its_position() {
        let e = errors(
            "[jobs.d]\n[[jobs.d.items]]\nname = \"s\"\nkind = \"system\"\ndisk_warn = \"85%\"\ndisk_fail = \"75%\"\n",
        );
        assert_eq!(
            e,
            ["jobs.toml:5:1: job \"d\", item \"s\": disk_warn (85%) is above disk_fail (75%)"]
        );
    }
}
