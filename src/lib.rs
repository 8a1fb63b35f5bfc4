//! `runbook` turns an operations runbook's recurring checklists into scheduled, verified work.
//!
//! # Layout
//!
//! The modules follow the data's way through the program:
//!
//! - [`config`]: `jobs.toml` → validated, typed configuration. Everything that can be checked is
//!   checked here, with file:line:column, so nothing surprises us at 3 a.m.
//! - [`secret`]: secrets given inline, by environment variable or by file; never printed.
//! - [`schedule`]: pure functions of (cron, zone, last slot, now): when a job fires next and which
//!   slots were missed. The only module besides `scheduler` that knows zones and wall clocks.
//! - [`scheduler`]: the daemon's loop (sleep until the next slot, fire, catch up, reload).
//! - [`server`]: the daemon's HTTP endpoint: `/metrics`, `/healthz`, the status page.
//! - [`housekeeping`]: the daemon's daily retention pass (`keep_runs`): old runs and report files.
//! - [`cluster`]: high availability: claims per (job, slot) in a shared PostgreSQL.
//! - [`runner`]: one run of one job: lock, items in parallel under timeouts, report, store, notify.
//! - [`items`]: one module per item kind; each turns its options into an [`items::Outcome`].
//! - [`report`]: the report model and its pure renderers (text, HTML, JSON, Slack).
//! - [`notify`]: delivery of reports (file, email, Slack, heartbeat), fed by the outbox.
//! - [`store`]: the state on disk (SQLite): runs, locks, slots, outbox, scan offsets.
//! - [`bounded`]: lines and HTTP bodies read with a cap (64 KiB a line), so no input grows
//!   memory without limit.
//! - [`pg`]: connections to PostgreSQL targets (TLS, timeouts, session settings).
//! - [`pgcluster`]: a throwaway PostgreSQL cluster, used by `demo`, the tests and the benchmarks.
//! - [`demo`]: the zero-setup tour.
//! - [`failpoints`]: crash points for the fault tests (cargo feature `failpoints` only).
//! - [`cli`]: the command line (a contract: see SPEC section 1).

/// The git commit this binary was built from (`build.rs`), or `unknown` outside a checkout.
pub const GIT_COMMIT: &str = env!("RUNBOOK_GIT_COMMIT");

/// What `runbook --version` prints after the name: `0.1.0 (abc123def456)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("RUNBOOK_GIT_COMMIT"),
    ")"
);

pub mod base;
pub mod config;
pub mod daemon;
pub mod face;
pub mod items;
pub mod notify;
pub mod report;
pub mod runner;
pub mod store;
