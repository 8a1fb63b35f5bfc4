// The command line's clap definitions (a contract: SPEC section 1), on their own so that
// build.rs can `include!` this file and generate the shell completions and the man page from
// the very same definitions. It must therefore use only clap and std (no `crate::` paths) and
// hold no inner attributes or `//!` comments.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "runbook",
    version,
    about = "Runs an operations runbook's checklists on schedule and reports pass/warn/fail per item"
)]
pub struct Cli {
    /// Config file. Default: $RUNBOOK_CONFIG, else ./jobs.toml, else /etc/runbook/jobs.toml.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Log format on stderr (journald is used automatically under systemd).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Text,
    Html,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the scheduler in the foreground (systemd Type=notify).
    Daemon,
    /// Run one job now and print its report.
    RunJob {
        job: String,
        /// Only this item (repeatable).
        #[arg(long = "item", value_name = "NAME")]
        items: Vec<String>,
        /// Change nothing: state-changing items print their plan and are skipped.
        #[arg(long)]
        dry_run: bool,
        /// Do not send notifications.
        #[arg(long)]
        no_notify: bool,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Exit 1 on warnings too.
        #[arg(long)]
        strict: bool,
    },
    /// Jobs: schedule, time zone, description, next run, items.
    List {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// The next fire times (job's zone and UTC).
    Next {
        job: Option<String>,
        #[arg(short = 'n', default_value_t = 5)]
        n: usize,
        /// Start from this time (RFC3339) instead of now.
        #[arg(long)]
        after: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Validate the config; --connect also reaches every target and notifier.
    CheckConfig {
        #[arg(long)]
        connect: bool,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Recent runs from the state store.
    History {
        job: Option<String>,
        #[arg(short = 'n', default_value_t = 20)]
        n: usize,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// One item's number over the job's stored runs, oldest first (dry runs left out).
    Trend {
        job: String,
        item: String,
        /// The field of the item's `data`; dots name a nested one (`disks.0.used_percent`).
        #[arg(long, default_value = "value")]
        field: String,
        /// One target of an item over several databases: the field of that target's own
        /// result (the item's `targets[]`) instead of the item's.
        #[arg(long, value_name = "NAME")]
        target: Option<String>,
        /// The newest N points.
        #[arg(short = 'n', default_value_t = 30)]
        n: usize,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Re-render a stored report.
    Report {
        /// A run id (or a unique prefix), or `last`.
        run: String,
        /// With `last`: the last run of this job.
        #[arg(long)]
        job: Option<String>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
    },
    /// Acknowledge an item of a stored run: who did a manual item, or who took a failing one.
    Ack {
        /// A run id (or a unique prefix), or `last` (the job's latest run).
        run: String,
        /// The run's job.
        #[arg(long)]
        job: String,
        /// The item's name, as in the report.
        #[arg(long, value_name = "NAME")]
        item: String,
        /// Who did it or took it.
        #[arg(long, value_name = "WHO")]
        by: String,
        /// A note shown with the acknowledgement.
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Send a test message through each (or one) notifier.
    NotifyTest {
        channel: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Undelivered notifications; --flush retries them now.
    Outbox {
        #[arg(long)]
        flush: bool,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// The zero-setup tour: a throwaway PostgreSQL, the shipped jobs, real reports.
    Demo {
        /// Keep the temporary folder (cluster stopped) for a look afterwards.
        #[arg(long)]
        keep: bool,
    },
}
