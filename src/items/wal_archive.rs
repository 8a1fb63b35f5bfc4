//! `wal_archive`: is WAL archiving working (`pg_stat_archiver`)?
//!
//! Point-in-time recovery needs every WAL segment in the archive. The item reads the target's
//! `pg_stat_archiver` and settings, and fails when the newest archive attempt failed (a failure
//! with no success after it) or the newest archived segment is older than `max_age`; it warns
//! when this server does not archive (`archive_mode = off`, or `on` on a standby, which only
//! `always` archives), unless `required = false`. Read-only: it works on a standby too.
//!
//! Counts "since the previous run" come from this item's data in the job's previous stored
//! report (the archiver's totals then); the first run, or after a statistics reset, counts
//! from the reset. `archive_command` is never reported (it may hold a credential), only
//! whether it is set.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::support::backup_files::human_age;
use super::{ItemCtx, Outcome, Prepare, Status};
use crate::base::pg;
use crate::base::units::Dur;

/// Options of `kind = "wal_archive"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalArchive {
    pub target: String,
    /// Fail when the newest archived WAL segment is older than this. Default 15m.
    #[serde(default = "default_max_age")]
    pub max_age: Dur,
    /// When false, a server that does not archive passes (with a note) instead of warning.
    /// Default true.
    #[serde(default = "default_required")]
    pub required: bool,
}

fn default_max_age() -> Dur {
    Dur::from_secs(15 * 60)
}
fn default_required() -> bool {
    true
}

const QUERY: &str = "SELECT s.archived_count, s.last_archived_wal, \
       to_char(s.last_archived_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
       extract(epoch FROM now() - s.last_archived_time)::float8, \
       s.failed_count, s.last_failed_wal, \
       to_char(s.last_failed_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
       extract(epoch FROM now() - s.last_failed_time)::float8, \
       (s.last_failed_time IS NOT NULL AND (s.last_archived_time IS NULL OR s.last_failed_time > s.last_archived_time)), \
       coalesce(to_char(s.stats_reset AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), ''), \
       (SELECT setting FROM pg_settings WHERE name = $1), \
       coalesce((SELECT setting FROM pg_settings WHERE name = $2), ''), \
       coalesce((SELECT setting FROM pg_settings WHERE name = $3), ''), \
       pg_is_in_recovery() \
  FROM pg_stat_archiver s";

/// One read of `pg_stat_archiver` and the archiving settings.
struct Archiver {
    archived_total: i64,
    last_archived_wal: Option<String>,
    last_archived_time: Option<String>,
    last_archived_age: Option<f64>,
    failed_total: i64,
    last_failed_wal: Option<String>,
    last_failed_time: Option<String>,
    last_failed_age: Option<f64>,
    /// The newest attempt failed: a failure with no success after it.
    failing: bool,
    stats_reset: String,
    archive_mode: String,
    archive_command: String,
    archive_library: String,
    in_recovery: bool,
}

impl WalArchive {
    pub fn prepare(&mut self, p: &mut Prepare) {
        if self.max_age.0.is_zero() {
            p.error("max_age", "max_age must be above 0");
        }
    }

    pub async fn run(&self, ctx: &ItemCtx) -> Outcome {
        let (target, client) = match ctx.check_connection(&self.target).await {
            Ok(c) => c,
            Err(e) => return Outcome::fail(e.to_string()),
        };
        let a = match read(&client).await {
            Ok(a) => a,
            Err(e) => {
                return Outcome::fail(format!(
                    "target {}: cannot read pg_stat_archiver: {e}",
                    target.name
                ));
            }
        };

        // Counts since the previous run: this item's totals in the job's previous report, when
        // the statistics were not reset since (else the totals, counted from the reset).
        let previous = previous_totals(ctx);
        let (archived, failed, since) = match previous {
            Some((pa, pf, reset))
                if reset == a.stats_reset && pa <= a.archived_total && pf <= a.failed_total =>
            {
                (a.archived_total - pa, a.failed_total - pf, "last run")
            }
            _ => (a.archived_total, a.failed_total, "statistics reset"),
        };
        let since_text = if since == "last run" {
            "since last run".to_string()
        } else if a.stats_reset.is_empty() {
            "in total".to_string()
        } else {
            format!("since statistics reset {}", a.stats_reset)
        };

        let age_text = |secs: f64| human_age(Duration::from_secs_f64(secs.max(0.0)));
        let failures = format!("{failed} failure(s) and {archived} archived {since_text}");
        let archiving_here =
            a.archive_mode == "always" || (a.archive_mode == "on" && !a.in_recovery);
        let last_ok = match (&a.last_archived_wal, a.last_archived_age) {
            (Some(w), Some(s)) => format!("last WAL {w} archived {} ago", age_text(s)),
            _ => "no WAL archived yet".to_string(),
        };

        let mut details = vec![format!(
            "archive_mode = {}{}; {}",
            a.archive_mode,
            if a.in_recovery { " (standby)" } else { "" },
            if !a.archive_library.is_empty() {
                format!("archive_library = {}", a.archive_library)
            } else if !a.archive_command.is_empty() {
                "archive_command is set".to_string()
            } else {
                "neither archive_command nor archive_library is set".to_string()
            }
        )];
        if let (Some(w), Some(t)) = (&a.last_archived_wal, &a.last_archived_time) {
            details.push(format!("last archived: {w} at {t}"));
        }
        if let (Some(w), Some(t), Some(s)) =
            (&a.last_failed_wal, &a.last_failed_time, a.last_failed_age)
        {
            details.push(format!("last failed: {w} at {t} ({} ago)", age_text(s)));
        }
        details.push(format!(
            "totals: {} archived, {} failed{}",
            a.archived_total,
            a.failed_total,
            if a.stats_reset.is_empty() {
                String::new()
            } else {
                format!(" since statistics reset {}", a.stats_reset)
            }
        ));

        let (status, summary) = if !archiving_here {
            let why = if a.archive_mode == "on" && a.in_recovery {
                "this standby does not archive WAL (archive_mode = on archives only on the primary; archive_mode = always archives here too)".to_string()
            } else {
                format!("WAL archiving is off (archive_mode = {})", a.archive_mode)
            };
            if self.required {
                details.push("point-in-time recovery from this server's WAL is not possible; set archive_mode and archive_command (or archive_library), or required = false if that is intended".into());
                (Status::Warn, why)
            } else {
                (
                    Status::Pass,
                    format!("{why}; not required (required = false)"),
                )
            }
        } else if a.failing {
            let wal = a.last_failed_wal.as_deref().unwrap_or("?");
            let when = a.last_failed_time.as_deref().unwrap_or("?");
            let ago = a
                .last_failed_age
                .map(|s| format!(" ({} ago)", age_text(s)))
                .unwrap_or_default();
            details.push("the archiver retries the segment until archive_command succeeds; WAL piles up in pg_wal meanwhile: check archive_command and the archive's destination in the server log".into());
            (
                Status::Fail,
                format!(
                    "WAL archiving is failing: WAL {wal} failed at {when}{ago}, no success after it; {last_ok}; {failures}"
                ),
            )
        } else {
            match a.last_archived_age {
                Some(s) if s > self.max_age.0.as_secs_f64() => (
                    Status::Fail,
                    format!("{last_ok}, older than max_age {}; {failures}", self.max_age),
                ),
                Some(_) => (Status::Pass, format!("{last_ok}; {failures}")),
                None => (
                    Status::Warn,
                    format!("archiving is on but no WAL has been archived yet; {failures}"),
                ),
            }
        };

        let data = json!({
            "target": target.name,
            "archive_mode": a.archive_mode,
            "archive_command_set": !a.archive_command.is_empty(),
            "archive_library": (!a.archive_library.is_empty()).then_some(&a.archive_library),
            "in_recovery": a.in_recovery,
            "archived_count": archived,
            "failed_count": failed,
            "counted_since": since,
            "archived_total": a.archived_total,
            "failed_total": a.failed_total,
            "stats_reset": a.stats_reset,
            "last_archived_wal": a.last_archived_wal,
            "last_archived_time": a.last_archived_time,
            "last_archived_age_seconds": a.last_archived_age,
            "last_failed_wal": a.last_failed_wal,
            "last_failed_time": a.last_failed_time,
            "failing": a.failing,
            "max_age_seconds": self.max_age.0.as_secs_f64(),
            "value": a.last_archived_age,
        });
        Outcome::new(status, summary)
            .with_details(details)
            .with_data(data)
    }
}

async fn read(client: &tokio_postgres::Client) -> Result<Archiver, String> {
    let row = client
        .query_one(
            QUERY,
            &[&"archive_mode", &"archive_command", &"archive_library"],
        )
        .await
        .map_err(|e| pg::pg_error(&e))?;
    Ok(Archiver {
        archived_total: pg::col(&row, 0)?,
        last_archived_wal: pg::col(&row, 1)?,
        last_archived_time: pg::col(&row, 2)?,
        last_archived_age: pg::col(&row, 3)?,
        failed_total: pg::col(&row, 4)?,
        last_failed_wal: pg::col(&row, 5)?,
        last_failed_time: pg::col(&row, 6)?,
        last_failed_age: pg::col(&row, 7)?,
        failing: pg::col(&row, 8)?,
        stats_reset: pg::col(&row, 9)?,
        archive_mode: pg::col::<Option<String>>(&row, 10)?.unwrap_or_else(|| "off".into()),
        archive_command: pg::col(&row, 11)?,
        archive_library: pg::col(&row, 12)?,
        in_recovery: pg::col(&row, 13)?,
    })
}

/// (archived total, failed total, stats_reset) in this item's data of the job's newest earlier
/// report that has it.
fn previous_totals(ctx: &ItemCtx) -> Option<(i64, i64, String)> {
    ctx.state.earlier_results(5).iter().find_map(|i| {
        Some((
            i.data.get("archived_total")?.as_i64()?,
            i.data.get("failed_total")?.as_i64()?,
            i.data.get("stats_reset")?.as_str()?.to_string(),
        ))
    })
}
