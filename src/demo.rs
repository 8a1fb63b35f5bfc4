//! `runbook demo`: the zero-setup tour (SPEC section 8). (Filled in with the foundation.)

use std::process::ExitCode;

pub async fn run(_keep: bool) -> ExitCode {
    ExitCode::from(1)
}
