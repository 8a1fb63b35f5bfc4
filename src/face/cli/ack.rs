//! `runbook ack <RUN_ID|last> --job JOB --item NAME --by WHO [--note TEXT]` (SPEC 9.2): records
//! an acknowledgement in the state store ([`crate::store::Store::ack`]). Exit 0 when recorded;
//! exit 2, with the reason and nothing changed, when the run, job or item does not exist.

use std::process::ExitCode;

use super::{EXIT_FAILED, EXIT_OK, Format, open_store, print_json, usage};
use crate::config::Config;
use crate::store::AckError;

pub fn run(
    config: &Config,
    run: &str,
    job: &str,
    item: &str,
    by: &str,
    note: Option<&str>,
    format: Format,
) -> ExitCode {
    if let Err(e) = config.job(job) {
        // A job no longer configured may still have stored runs worth signing off.
        let stored = open_store(config)
            .ok()
            .and_then(|s| s.job_ever_stored(job).ok())
            .unwrap_or(false);
        if !stored {
            return usage(format!("{e}; nothing was recorded"));
        }
    }
    let store = match open_store(config) {
        Ok(s) => s,
        Err(c) => return c,
    };
    match store.ack(run, Some(job), item, by, note) {
        Ok((report, ack)) => {
            match format {
                Format::Json => print_json(&serde_json::json!({
                    "run_id": report.run_id,
                    "job": report.job,
                    "item": ack.item,
                    "by": ack.by,
                    "at": ack.at,
                    "note": ack.note,
                })),
                Format::Text => {
                    let manual = report
                        .items
                        .iter()
                        .any(|i| i.name == ack.item && i.status == crate::items::Status::Manual);
                    println!(
                        "{} {:?} of run {} ({}) by {}{}",
                        if manual { "done:" } else { "acknowledged:" },
                        ack.item,
                        report.run_id,
                        report.job,
                        ack.by,
                        ack.note
                            .as_deref()
                            .map(|n| format!(": {n}"))
                            .unwrap_or_default()
                    );
                }
            }
            ExitCode::from(EXIT_OK)
        }
        Err(e @ (AckError::NotFound(_) | AckError::BadInput(_))) => usage(e),
        Err(AckError::Store(e)) => {
            eprintln!("runbook: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}
