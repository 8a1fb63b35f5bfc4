//! `replication`: streaming standbys and replication slots (SPEC 9.4).
//!
//! On a primary (`pg_is_in_recovery()` false): every standby connected to it
//! (`pg_stat_replication`: write/flush/replay lag, how far its replay is behind the primary's
//! WAL) and every replication slot (`pg_replication_slots`: active or not, WAL it keeps the
//! primary from removing). On a standby: whether its WAL receiver is streaming, and its replay
//! lag. Read-only: the session is `default_transaction_read_only` and runs SELECTs only.
//!
//! With `primary = "<target>"` the item also says whether the standby belongs to that primary:
//! it compares `system_identifier` (`pg_control_system()`) of both clusters, as a standby of
//! another cluster has another identifier; and a target expected to be a standby that is not
//! in recovery fails (a promoted or failed-over node).
//!
//! `data.value` (SPEC 9.3) is the worst replay lag in seconds.

use serde::Deserialize;
use serde_json::json;

use super::{ItemCtx, Outcome, Prepare, Status};
use crate::base::pg;
use crate::base::units::{Dur, Size, human_bytes};

/// Options of `kind = "replication"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replication {
    pub target: String,
    /// Warn when a standby's replay lag is above. Default 30s (explicit beats default: at
    /// most `lag_fail` when only that is set, and the other way round).
    #[serde(rename = "lag_warn", default)]
    lag_warn_set: Option<Dur>,
    /// Fail when a standby's replay lag is above. Default 5m.
    #[serde(rename = "lag_fail", default)]
    lag_fail_set: Option<Dur>,
    /// Warn when a slot keeps more WAL than this on the primary. Default 5GB.
    #[serde(rename = "slot_retained_warn", default)]
    slot_retained_warn_set: Option<Size>,
    /// Fail when a slot keeps more WAL than this on the primary. Default 20GB.
    #[serde(rename = "slot_retained_fail", default)]
    slot_retained_fail_set: Option<Size>,
    /// The thresholds in effect (set by `prepare` from the above and the defaults).
    #[serde(skip, default = "default_lag_warn")]
    pub lag_warn: Dur,
    #[serde(skip, default = "default_lag_fail")]
    pub lag_fail: Dur,
    #[serde(skip, default = "default_retained_warn")]
    pub slot_retained_warn: Size,
    #[serde(skip, default = "default_retained_fail")]
    pub slot_retained_fail: Size,
    /// On a primary: fail when fewer standbys than this are streaming. Default 0.
    #[serde(default)]
    pub expect_standbys: u32,
    /// The target this standby must be a standby of (a name in `[targets]`, checked at load).
    #[serde(default)]
    pub primary: Option<String>,
}

fn default_lag_warn() -> Dur {
    Dur::from_secs(30)
}
fn default_lag_fail() -> Dur {
    Dur::from_secs(300)
}
fn default_retained_warn() -> Size {
    Size(5_000_000_000)
}
fn default_retained_fail() -> Size {
    Size(20_000_000_000)
}

/// A standby's state as shown to a role without `pg_read_all_stats` (NULL).
const UNKNOWN_STATE: &str = "unknown (needs pg_monitor)";

/// One row of `pg_stat_replication`.
struct Standby {
    application_name: String,
    client_addr: String,
    state: String,
    sync_state: String,
    write_lag: Option<f64>,
    flush_lag: Option<f64>,
    replay_lag: Option<f64>,
    replay_behind_bytes: Option<i64>,
}

/// One row of `pg_replication_slots`.
struct Slot {
    name: String,
    slot_type: String,
    active: bool,
    retained_bytes: Option<i64>,
    wal_status: Option<String>,
    database: Option<String>,
}

/// The worse of two statuses.
fn worse(a: Status, b: Status) -> Status {
    if b.severity() > a.severity() { b } else { a }
}

fn secs(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        Dur::from_secs(s.round() as u64).to_string()
    }
}

/// Puts `problem` at the head of the outcome's summary and makes its status at least `status`.
fn raise(o: &mut Outcome, status: Status, problem: String) {
    o.status = worse(o.status, status);
    o.summary = format!("{problem}; {}", o.summary);
}

/// The cluster's `system_identifier` (`pg_control_system()`), as text (a 64-bit unsigned
/// number PostgreSQL shows as a bigint).
async fn system_identifier(client: &tokio_postgres::Client) -> Result<String, String> {
    let row = client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .map_err(|e| format!("cannot read pg_control_system(): {}", pg::pg_error(&e)))?;
    pg::col(&row, 0)
}

/// On a standby with `primary` set: is it a standby of that target's cluster? Compares the
/// clusters' system identifiers; adds its finding to `o` (fail: another cluster; warn: the
/// primary target is itself in recovery, or cannot be reached or read, the standby's own checks
/// still reported).
async fn upstream(ctx: &ItemCtx, name: &str, standby: &tokio_postgres::Client, o: &mut Outcome) {
    let mut seen = json!({ "target": name });
    let own = match system_identifier(standby).await {
        Ok(id) => id,
        Err(e) => {
            seen["error"] = json!(e);
            o.data["primary"] = seen;
            raise(
                o,
                Status::Warn,
                format!("cannot tell whether this is a standby of {name}: on the standby, {e}"),
            );
            return;
        }
    };
    o.data["system_identifier"] = json!(own);
    let theirs = match ctx.check_connection(name).await {
        Err(e) => Err(e.to_string()),
        Ok((_, client)) => match client
            .query_one(
                "SELECT system_identifier::text, pg_is_in_recovery() FROM pg_control_system()",
                &[],
            )
            .await
        {
            Err(e) => Err(format!(
                "target {name}: cannot read pg_control_system(): {}",
                pg::pg_error(&e)
            )),
            Ok(row) => pg::col::<String>(&row, 0)
                .and_then(|id| Ok((id, pg::col::<bool>(&row, 1)?)))
                .map_err(|e| format!("target {name}: {e}")),
        },
    };
    let (theirs, primary_in_recovery) = match theirs {
        Ok(t) => t,
        Err(e) => {
            seen["error"] = json!(e);
            o.data["primary"] = seen;
            raise(
                o,
                Status::Warn,
                format!(
                    "primary {name} cannot be checked, so whether this is its standby is unknown: {e}"
                ),
            );
            return;
        }
    };
    seen["system_identifier"] = json!(theirs);
    seen["in_recovery"] = json!(primary_in_recovery);
    seen["same_cluster"] = json!(own == theirs);
    o.data["primary"] = seen;
    let sender = o.data["sender"].as_str().map(str::to_string);
    if primary_in_recovery {
        raise(
            o,
            Status::Warn,
            format!("primary {name} is itself a standby (in recovery)"),
        );
        o.details.insert(
            0,
            format!(
                "target {name}, set as this standby's primary, is in recovery too: a cascade (this standby streams from another standby) or {name} is no longer the primary (a failover); set primary to the node that is not in recovery"
            ),
        );
    }
    if own != theirs {
        raise(
            o,
            Status::Fail,
            format!(
                "standby of another cluster: system identifier {own}, primary {name} has {theirs}"
            ),
        );
        o.details.insert(
            0,
            match &sender {
                Some(s) => format!(
                    "its WAL receiver streams from {s}: a server of another cluster than {name}'s (its base backup was taken from there); check primary_conninfo, or the primary option if {name} is the wrong target"
                ),
                None => format!(
                    "it was made from a base backup of another cluster than {name}'s (its WAL receiver's sender is not shown: not streaming, or the role lacks pg_monitor); check primary_conninfo, or the primary option if {name} is the wrong target"
                ),
            },
        );
    } else if !primary_in_recovery {
        o.details.insert(
            0,
            format!("a standby of {name}'s cluster (system identifier {own})"),
        );
    }
}

fn bytes(n: Option<i64>) -> String {
    n.map_or_else(|| "unknown".into(), |n| human_bytes(n.max(0) as u64))
}

impl Replication {
    pub fn prepare(&mut self, p: &mut Prepare) {
        use super::explicit_beats_default as pair;
        (self.lag_warn, self.lag_fail) = pair(
            self.lag_warn_set,
            self.lag_fail_set,
            default_lag_warn(),
            default_lag_fail(),
        );
        (self.slot_retained_warn, self.slot_retained_fail) = pair(
            self.slot_retained_warn_set,
            self.slot_retained_fail_set,
            default_retained_warn(),
            default_retained_fail(),
        );
        if self.lag_fail < self.lag_warn {
            p.error(
                "lag_fail",
                format!(
                    "lag_fail ({}) is below lag_warn ({})",
                    self.lag_fail, self.lag_warn
                ),
            );
        }
        if self.slot_retained_fail < self.slot_retained_warn {
            p.error(
                "slot_retained_fail",
                format!(
                    "slot_retained_fail ({}) is below slot_retained_warn ({})",
                    self.slot_retained_fail, self.slot_retained_warn
                ),
            );
        }
    }

    pub async fn run(&self, ctx: &ItemCtx) -> Outcome {
        let (target, client) = match ctx.check_connection(&self.target).await {
            Ok(c) => c,
            Err(e) => return Outcome::fail(e.to_string()),
        };
        let in_recovery = match client.query_one("SELECT pg_is_in_recovery()", &[]).await {
            Ok(r) => match pg::col::<bool>(&r, 0) {
                Ok(b) => b,
                Err(e) => return Outcome::fail(format!("target {}: {e}", target.name)),
            },
            Err(e) => {
                return Outcome::fail(format!(
                    "target {}: cannot check pg_is_in_recovery(): {}",
                    target.name,
                    pg::pg_error(&e)
                ));
            }
        };
        let r = if in_recovery {
            self.standby(&client).await
        } else {
            self.primary(&client).await
        };
        let mut o = match r {
            Ok(o) => o,
            Err(e) => return Outcome::fail(format!("target {}: {e}", target.name)),
        };
        o.data["target"] = json!(target.name);
        if let Some(primary) = &self.primary {
            if in_recovery {
                upstream(ctx, primary, &client, &mut o).await;
            } else {
                o.data["primary"] = json!({ "target": primary });
                raise(
                    &mut o,
                    Status::Fail,
                    format!(
                        "expected a standby of {primary}, but {} is a primary (not in recovery)",
                        target.name
                    ),
                );
                o.details.insert(
                    0,
                    format!(
                        "{} accepts writes: it was promoted (a failover?) or was never a standby of {primary}; if it is the primary now, point the item at the new standby or drop the primary option",
                        target.name
                    ),
                );
            }
        }
        o
    }

    /// The primary's view: its standbys and its slots.
    async fn primary(&self, client: &tokio_postgres::Client) -> Result<Outcome, String> {
        let rows = client
            .query(
                "SELECT coalesce(application_name, ''), coalesce(host(client_addr), 'local socket'), \
                        coalesce(state, $1), coalesce(sync_state, ''), \
                        extract(epoch FROM write_lag)::float8, extract(epoch FROM flush_lag)::float8, \
                        extract(epoch FROM replay_lag)::float8, \
                        pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint \
                 FROM pg_stat_replication ORDER BY application_name, client_addr",
                &[&UNKNOWN_STATE],
            )
            .await
            .map_err(|e| format!("cannot read pg_stat_replication: {}", pg::pg_error(&e)))?;
        let standbys = rows
            .iter()
            .map(|r| {
                Ok(Standby {
                    application_name: pg::col(r, 0)?,
                    client_addr: pg::col(r, 1)?,
                    state: pg::col(r, 2)?,
                    sync_state: pg::col(r, 3)?,
                    write_lag: pg::col(r, 4)?,
                    flush_lag: pg::col(r, 5)?,
                    replay_lag: pg::col(r, 6)?,
                    replay_behind_bytes: pg::col(r, 7)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let wal_status = if pg::server_version_num(client).await? >= 130000 {
            "wal_status::text"
        } else {
            "NULL::text"
        };
        let rows = client
            .query(
                &format!(
                    "SELECT slot_name::text, slot_type, active, \
                            pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, {wal_status}, database::text \
                     FROM pg_replication_slots ORDER BY slot_name"
                ),
                &[],
            )
            .await
            .map_err(|e| format!("cannot read pg_replication_slots: {}", pg::pg_error(&e)))?;
        let slots = rows
            .iter()
            .map(|r| {
                Ok(Slot {
                    name: pg::col(r, 0)?,
                    slot_type: pg::col(r, 1)?,
                    active: pg::col(r, 2)?,
                    retained_bytes: pg::col(r, 3)?,
                    wal_status: pg::col(r, 4)?,
                    database: pg::col(r, 5)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(self.judge_primary(&standbys, &slots))
    }

    fn judge_primary(&self, standbys: &[Standby], slots: &[Slot]) -> Outcome {
        let mut status = Status::Pass;
        let mut problems: Vec<String> = Vec::new();
        let mut details = Vec::new();
        let warn_s = self.lag_warn.0.as_secs_f64();
        let fail_s = self.lag_fail.0.as_secs_f64();

        let streaming = standbys.iter().filter(|s| s.state == "streaming").count();
        if (streaming as u64) < u64::from(self.expect_standbys) {
            status = Status::Fail;
            let hidden = standbys.iter().filter(|s| s.state == UNKNOWN_STATE).count();
            problems.push(format!(
                "expected {} standby(s), {streaming} streaming{}",
                self.expect_standbys,
                if hidden > 0 {
                    format!(" ({hidden} connected but their state is hidden: grant pg_monitor to the target's role)")
                } else {
                    String::new()
                }
            ));
        }
        // A NULL lag means the standby has caught up and nothing has happened since.
        let worst = standbys
            .iter()
            .map(|s| s.replay_lag.unwrap_or(0.0))
            .fold(0.0_f64, f64::max);
        let mut list = Vec::new();
        for s in standbys {
            let lag = s.replay_lag.unwrap_or(0.0);
            let name = if s.application_name.is_empty() {
                s.client_addr.clone()
            } else {
                format!("{} ({})", s.application_name, s.client_addr)
            };
            let mark = if lag > fail_s {
                status = Status::Fail;
                problems.push(format!(
                    "standby {name} replay lag {} (fail above {})",
                    secs(lag),
                    self.lag_fail
                ));
                "FAIL "
            } else if lag > warn_s {
                status = worse(status, Status::Warn);
                problems.push(format!(
                    "standby {name} replay lag {} (warn above {})",
                    secs(lag),
                    self.lag_warn
                ));
                "WARN "
            } else {
                ""
            };
            let lag_text = |l: Option<f64>| l.map_or_else(|| "none".into(), secs);
            details.push(format!(
                "{mark}standby {name}: {}{}, lag write {} / flush {} / replay {}, replay {} behind",
                s.state,
                if s.sync_state.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", s.sync_state)
                },
                lag_text(s.write_lag),
                lag_text(s.flush_lag),
                lag_text(s.replay_lag),
                bytes(s.replay_behind_bytes),
            ));
            list.push(json!({
                "application_name": s.application_name,
                "client_addr": s.client_addr,
                "state": s.state,
                "sync_state": s.sync_state,
                "write_lag_seconds": s.write_lag,
                "flush_lag_seconds": s.flush_lag,
                "replay_lag_seconds": s.replay_lag,
                "replay_lsn_distance_bytes": s.replay_behind_bytes,
            }));
        }

        let mut slot_list = Vec::new();
        for s in slots {
            let retained = s.retained_bytes.unwrap_or(0).max(0) as u64;
            let mut marks: Vec<(Status, String)> = Vec::new();
            if s.wal_status.as_deref() == Some("lost") {
                marks.push((
                    Status::Fail,
                    format!(
                        "slot {} has lost WAL its consumer still needs (wal_status lost): that standby or subscriber must be rebuilt",
                        s.name
                    ),
                ));
            }
            // One line per slot: inactive or not, and the threshold it crossed.
            let over = if retained > self.slot_retained_fail.0 {
                Some((
                    Status::Fail,
                    format!(" (fail above {})", self.slot_retained_fail),
                ))
            } else if retained > self.slot_retained_warn.0 {
                Some((
                    Status::Warn,
                    format!(" (warn above {})", self.slot_retained_warn),
                ))
            } else {
                None
            };
            if !s.active || over.is_some() {
                let (st, limit) = over.unwrap_or((Status::Warn, String::new()));
                let how = if s.active {
                    "retains"
                } else {
                    "is inactive, holding"
                };
                marks.push((
                    worse(st, Status::Warn),
                    format!(
                        "slot {} {how} {} of WAL{limit}",
                        s.name,
                        human_bytes(retained)
                    ),
                ));
            }
            let worst_mark = marks.iter().map(|(st, _)| *st).fold(Status::Pass, worse);
            status = worse(status, worst_mark);
            problems.extend(marks.into_iter().map(|(_, m)| m));
            details.push(format!(
                "{}slot {} ({}{}): {}, retains {}{}",
                match worst_mark {
                    Status::Fail => "FAIL ",
                    Status::Warn => "WARN ",
                    _ => "",
                },
                s.name,
                s.slot_type,
                s.database
                    .as_deref()
                    .map(|d| format!(", database {d}"))
                    .unwrap_or_default(),
                if s.active { "active" } else { "inactive" },
                bytes(s.retained_bytes),
                s.wal_status
                    .as_deref()
                    .map(|w| format!(", wal_status {w}"))
                    .unwrap_or_default(),
            ));
            if !s.active {
                details.push(format!(
                    "slot {} is inactive: its standby or subscriber is not connected, and the primary keeps every WAL segment from its restart_lsn on; if that consumer is gone for good, SELECT pg_drop_replication_slot('{}')",
                    s.name,
                    s.name.replace('\'', "''")
                ));
            }
            slot_list.push(json!({
                "slot_name": s.name,
                "slot_type": s.slot_type,
                "database": s.database,
                "active": s.active,
                "wal_retained_bytes": s.retained_bytes,
                "wal_status": s.wal_status,
            }));
        }

        let overview = format!(
            "primary: {streaming} of {} standby(s) streaming{}, {} slot(s)",
            standbys.len(),
            if standbys.is_empty() {
                String::new()
            } else {
                format!(", worst replay lag {}", secs(worst))
            },
            slots.len()
        );
        let summary = if problems.is_empty() {
            overview
        } else {
            format!("{}; {overview}", problems.join("; "))
        };
        let mut data = json!({
            "role": "primary",
            "streaming": streaming,
            "expect_standbys": self.expect_standbys,
            "standbys": list,
            "slots": slot_list,
        });
        if !standbys.is_empty() {
            data["value"] = json!(worst);
        }
        Outcome::new(status, summary)
            .with_details(details)
            .with_data(data)
    }

    /// The standby's view: its WAL receiver and its replay lag.
    ///
    /// `now() - pg_last_xact_replay_timestamp()` grows on a quiet primary although nothing is
    /// missing, so it is the lag only while received WAL is still waiting to be replayed
    /// (`pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()`); when everything received has
    /// been replayed the lag is 0.
    async fn standby(&self, client: &tokio_postgres::Client) -> Result<Outcome, String> {
        let row = client
            .query_one(
                "SELECT (SELECT status FROM pg_stat_wal_receiver LIMIT 1), \
                        (SELECT sender_host || ':' || sender_port FROM pg_stat_wal_receiver LIMIT 1), \
                        extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, \
                        pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint, \
                        pg_last_xact_replay_timestamp()::text, pg_last_wal_receive_lsn()::text",
                &[],
            )
            .await
            .map_err(|e| format!("cannot read the standby's replication state: {}", pg::pg_error(&e)))?;
        let receiver: Option<String> = pg::col(&row, 0)?;
        let sender: Option<String> = pg::col(&row, 1)?;
        let since_replay: Option<f64> = pg::col(&row, 2)?;
        let pending: Option<i64> = pg::col(&row, 3)?;
        let last_replay: Option<String> = pg::col(&row, 4)?;
        let streaming = receiver.as_deref() == Some("streaming");
        let received: Option<String> = pg::col(&row, 5)?;
        let mut details = Vec::new();
        // Nothing waiting to be replayed: caught up, whatever the clock says. No receive
        // position at all (no WAL receiver since start): unknown.
        let mut lag = match pending {
            Some(p) if p > 0 => since_replay.map(|s| s.max(0.0)),
            Some(_) => Some(0.0),
            None => None,
        };
        // WAL that is not a transaction (a checkpoint, the primary's periodic running-xacts
        // record) can be caught between receive and replay while the last transaction is
        // hours old: look again a second later. If by then the standby replayed everything it
        // had received, it is less than that second behind.
        if let (Some(l), Some(at)) = (lag, &received)
            && l > self.lag_warn.0.as_secs_f64()
        {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let row = client
                .query_one(
                    "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), $1::text::pg_lsn) >= 0",
                    &[at],
                )
                .await
                .map_err(|e| {
                    format!(
                        "cannot read the standby's replay position: {}",
                        pg::pg_error(&e)
                    )
                })?;
            if pg::col::<bool>(&row, 0)? {
                lag = Some(0.0);
                details.push(format!(
                    "WAL received up to {at} was replayed within a second: caught up (the last transaction is simply {} old: the primary is quiet)",
                    secs(l)
                ));
            }
        }
        let mut status = Status::Pass;
        let mut problems = Vec::new();
        if !streaming {
            status = Status::Fail;
            problems.push(format!(
                "standby is not streaming (WAL receiver: {}): it is not receiving WAL from its primary; check primary_conninfo and the primary's pg_hba.conf and logs",
                receiver.as_deref().unwrap_or("not running")
            ));
        }
        if let Some(l) = lag {
            if l > self.lag_fail.0.as_secs_f64() {
                status = Status::Fail;
                problems.push(format!(
                    "replay lag {} (fail above {})",
                    secs(l),
                    self.lag_fail
                ));
            } else if l > self.lag_warn.0.as_secs_f64() {
                status = worse(status, Status::Warn);
                problems.push(format!(
                    "replay lag {} (warn above {})",
                    secs(l),
                    self.lag_warn
                ));
            }
        }
        let overview = format!(
            "standby: {}, replay lag {}, {} received but not yet replayed",
            if streaming {
                format!(
                    "streaming from {}",
                    sender.as_deref().unwrap_or("its primary")
                )
            } else {
                "not streaming".into()
            },
            lag.map_or_else(|| "unknown".into(), secs),
            bytes(pending)
        );
        let summary = if problems.is_empty() {
            overview
        } else {
            format!("{}; {overview}", problems.join("; "))
        };
        details.push(format!(
            "last replayed transaction committed at {} on the primary",
            last_replay
                .as_deref()
                .unwrap_or("unknown (none replayed since start)")
        ));
        let mut data = json!({
            "role": "standby",
            "streaming": streaming,
            "wal_receiver_status": receiver,
            "sender": sender,
            "replay_lag_seconds": lag,
            "seconds_since_last_replay": since_replay,
            "receive_replay_distance_bytes": pending,
            "last_replay_at": last_replay,
        });
        if let Some(l) = lag {
            data["value"] = json!(l);
        }
        Ok(Outcome::new(status, summary)
            .with_details(details)
            .with_data(data))
    }
}
