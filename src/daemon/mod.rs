//! **daemon**: the long-running process. The scheduling loop, the HTTP endpoint (metrics,
//! health, status page), high-availability claims, and the daily housekeeping pass. Uses
//! `runner` and everything below it.

pub mod cluster;
pub mod escalation;
pub mod housekeeping;
pub mod scheduler;
pub mod server;
