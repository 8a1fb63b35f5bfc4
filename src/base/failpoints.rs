//! Crash points for the fault-injection tests. They exist only in a build with the cargo feature
//! `failpoints` (the test suite's: `.ci/run` tests with it); in every other build `failpoint!`
//! expands to nothing.
//!
//! With the feature, the `FAILPOINTS` variable (the `fail` crate's syntax, read at start) arms
//! them: `FAILPOINTS="report-stored=return"` makes the process send itself SIGKILL the moment it
//! reaches that point — the same as a `kill -9` at exactly that instant (no destructor runs,
//! nothing is flushed). `return(hang)` makes an async point wait forever instead (a statement the
//! server never answers). Other actions of the crate (`sleep(ms)`, `panic`, `1*return`) work too.
//!
//! The points: `report-stored` (a run's report and its outbox rows are committed, nothing is
//! delivered yet), `log-scan-after-read` (a file read, its offset not yet committed),
//! `cluster-before-finish` (a run is over, its cluster claim not yet marked done),
//! `cluster-renew` (a lease renewal is about to be sent).

/// A crash point (see the module doc). Expands to nothing without the `failpoints` feature.
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        $crate::base::failpoints::hit($name);
    };
}

/// A crash point in async code: like [`failpoint!`], and `return(hang)` waits forever here.
#[macro_export]
macro_rules! failpoint_async {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        if $crate::base::failpoints::hit($name) {
            std::future::pending::<()>().await;
        }
    };
}

/// Evaluates the point `name`: kills the process (`return`, `return(crash)`), or returns true
/// when the caller should hang (`return(hang)`).
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) -> bool {
    let Some(action) = fail::eval(name, |arg| arg.unwrap_or_default()) else {
        return false;
    };
    if action == "hang" {
        eprintln!("runbook: failpoint {name}: hanging");
        return true;
    }
    eprintln!("runbook: failpoint {name}: killing this process (SIGKILL)");
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    std::process::abort()
}
