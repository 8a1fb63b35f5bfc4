//! The shared vocabulary of a run's outcome: an item's and a run's [`Status`], and how a run
//! was started ([`Trigger`]). Items produce them, the report stores them, delivery and the
//! daemon read them; they live here, below all of those, so none has to reach upward.

use serde::{Deserialize, Serialize};

/// The status of one item, and of a run (the worst of its items).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    /// A checklist line for a person: shown unchecked.
    Manual,
    /// Not run (dry run, or excluded); the plan is in the details.
    Skipped,
    Warn,
    Fail,
}

impl Status {
    /// Severity for "worst first" and for the run status: manual and skipped count as pass.
    pub fn severity(self) -> u8 {
        match self {
            Status::Pass | Status::Manual | Status::Skipped => 0,
            Status::Warn => 1,
            Status::Fail => 2,
        }
    }

    /// The four-letter tag of the text report.
    pub fn tag(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skipped => "SKIP",
            Status::Manual => "TODO",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skipped => "skipped",
            Status::Manual => "manual",
        }
    }
}

/// How a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Manual,
    Schedule,
    CatchUp,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch_up",
        }
    }
}
