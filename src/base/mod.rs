//! **base**: the vocabulary every other layer shares and that depends on nothing in the crate
//! above it: PostgreSQL connections, schedules (pure), secrets, units, capped reads, crash
//! points.

pub mod bounded;
pub mod failpoints;
pub mod pg;
pub mod pgbin;
pub mod schedule;
pub mod secret;
pub mod status;
pub mod units;
