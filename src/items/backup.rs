//! `backup`: verifies the newest backup file in a folder.
//!
//! A backup that exists is not yet a backup that restores. This kind answers the runbook's
//! "Backups completed" line properly: it finds the newest *complete* file (one still being
//! written is skipped and named), lists the newest five like `ls -lh`, checks age, size and a
//! sudden shrink against the previous backup, verifies the `.sha256` sidecar, and with
//! `verify = "auto"` reads the whole archive: gzip streams through every member, custom and
//! directory dumps through `pg_restore -f /dev/null` (a full read: `pg_restore --list` alone
//! passes a truncated dump), plain dumps up to their completion marker. `verify = "manifest"`
//! runs `pg_verifybackup` on a base backup folder. Everything streams: memory stays constant.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::support::backup_files::BackupPattern;
use super::support::backup_files::Entry;
use super::support::backup_format::Format;
use super::support::{backup_files, backup_format, checksum, pg_tools};
use super::{ItemCtx, Outcome, Prepare, Status};
use crate::base::units::{Dur, Percent, Size, human_bytes};

/// Options of `kind = "backup"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// Folder holding the backups.
    pub dir: std::path::PathBuf,
    /// Shell glob matched against file names. Default `"*"`.
    #[serde(default)]
    pub pattern: BackupPattern,
    /// Fail when the newest backup is older. Default 26h.
    #[serde(default = "default_max_age")]
    pub max_age: Dur,
    /// Fail when the newest backup is smaller.
    pub min_size: Option<Size>,
    /// Warn when the newest backup shrank more than this against the previous one. Default 50%.
    #[serde(default = "default_max_shrink")]
    pub max_shrink: Percent,
    /// `auto` (read the whole archive), `none`, or `manifest` (pg_verifybackup). Default auto.
    #[serde(default)]
    pub verify: Verify,
    /// Tables that must be in the dump's table of contents (`orders` or `schema.orders`).
    /// Needs `verify = "auto"`.
    #[serde(default)]
    pub require_tables: Vec<String>,
    /// A file modified more recently than this is still being written. Default 60s.
    #[serde(default = "default_settle")]
    pub settle: Dur,
}

/// Shortest time between the first look at a file and the re-stat that proves it is no longer
/// growing (when the verification itself was quicker than this, we wait the rest).
const RESTAT_WINDOW: Duration = Duration::from_millis(200);

/// What verifying one backup found.
#[derive(Debug, Default)]
pub struct Verification {
    /// Reasons to fail.
    pub problems: Vec<String>,
    /// Evidence lines for the report.
    pub notes: Vec<String>,
    /// How the content was verified (`pg_restore -f /dev/null`, `gzip`, ...).
    pub how: String,
    /// `ok`, `mismatch`, `absent`, `error`.
    pub checksum: &'static str,
    pub sha256: Option<String>,
    /// True when the run was cancelled midway.
    pub interrupted: bool,
}

impl Backup {
    pub fn prepare(&mut self, p: &mut Prepare) {
        if !self.require_tables.is_empty() && self.verify != Verify::Auto {
            p.error(
                "require_tables",
                "require_tables needs verify = \"auto\" (the table list is read from the dump)",
            );
        }
        let dir = p.path(&self.dir);
        if !dir.is_dir() {
            p.warning(format!(
                "backup folder {} does not exist (yet)",
                dir.display()
            ));
        }
    }

    pub async fn run(&self, ctx: &ItemCtx) -> Outcome {
        let dir = ctx.path(&self.dir);
        let matcher = self.pattern.matcher();
        let mut excluded: Vec<(PathBuf, String)> = Vec::new();
        loop {
            let looked_at = tokio::time::Instant::now();
            let sel = match backup_files::select_newest(
                &dir,
                matcher,
                self.settle.0,
                Duration::ZERO,
                &excluded,
            )
            .await
            {
                Ok(s) => s,
                Err(e) => {
                    return Outcome::fail(e.to_string())
                        .with_data(serde_json::json!({ "dir": dir }));
                }
            };
            let now = SystemTime::now();
            let Some(newest_i) = sel.newest else {
                return no_complete_backup(&dir, self.pattern.as_str(), &sel, now, ctx);
            };
            let newest = sel.all[newest_i].clone();
            let format = backup_format::detect(&newest);
            let v = verify_entry(&newest, format, self.verify, &self.require_tables, ctx).await;
            if v.interrupted {
                return Outcome::fail(format!("interrupted while verifying {}", newest.name));
            }
            // A file that changed while we read it was still being written: look again.
            let remaining = RESTAT_WINDOW.saturating_sub(looked_at.elapsed());
            tokio::time::sleep(remaining).await;
            let e2 = newest.clone();
            let again = tokio::task::spawn_blocking(move || backup_files::restat(&e2))
                .await
                .ok()
                .flatten();
            if again != Some((newest.size, newest.mtime)) {
                let why = match again {
                    Some((size, _)) => format!(
                        "still being written: changed while we read it ({} → {})",
                        human_bytes(newest.size),
                        human_bytes(size)
                    ),
                    None => "disappeared while we read it".to_string(),
                };
                excluded.push((newest.path.clone(), why));
                continue;
            }
            return self.judge(&dir, &sel, &newest, format, v, now, ctx);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn judge(
        &self,
        dir: &std::path::Path,
        sel: &backup_files::Selection,
        newest: &Entry,
        format: Format,
        v: Verification,
        now: SystemTime,
        ctx: &ItemCtx,
    ) -> Outcome {
        let mut problems = v.problems;
        let mut warnings = Vec::new();
        let age = newest.age(now);
        if age > self.max_age.0 {
            problems.push(format!(
                "newest backup is {} old, older than max_age {}",
                backup_files::human_age(age),
                self.max_age
            ));
        }
        if let Some(min) = self.min_size
            && newest.size < min.0
        {
            problems.push(format!(
                "newest backup is {}, smaller than min_size {}",
                human_bytes(newest.size),
                min
            ));
        }
        let previous = sel.previous();
        let mut shrink_pct = None;
        if let Some(prev) = previous
            && prev.size > 0
            && newest.size < prev.size
        {
            let pct = 100.0 * (prev.size - newest.size) as f64 / prev.size as f64;
            shrink_pct = Some((pct * 10.0).round() / 10.0);
            if pct > self.max_shrink.0 {
                warnings.push(format!(
                        "newest backup shrank {pct:.0}% against the previous one ({} → {}), more than max_shrink {}",
                        human_bytes(prev.size),
                        human_bytes(newest.size),
                        self.max_shrink
                    ));
            }
        }
        let status = if !problems.is_empty() {
            Status::Fail
        } else if !warnings.is_empty() {
            Status::Warn
        } else {
            Status::Pass
        };
        let summary = match (problems.first(), warnings.first()) {
            (Some(p), _) => format!("{}: {p}", newest.name),
            (None, Some(w)) => format!("{}: {w}", newest.name),
            (None, None) => format!(
                "{} ({}, {} old) verified: {}{}",
                newest.name,
                human_bytes(newest.size),
                backup_files::human_age(age),
                v.how,
                if v.checksum == "ok" {
                    ", checksum ok"
                } else {
                    ""
                }
            ),
        };
        let mut details: Vec<String> = problems.iter().chain(warnings.iter()).cloned().collect();
        details.push(format!(
            "newest complete: {} ({}, {})",
            newest.path.display(),
            format.as_str(),
            human_bytes(newest.size)
        ));
        details.extend(v.notes);
        for (i, why) in &sel.in_progress {
            details.push(format!("skipped {}: {why}", sel.all[*i].name));
        }
        details.push(format!(
            "newest {} in {}:",
            sel.all.len().min(5),
            dir.display()
        ));
        details.extend(
            sel.listing(now, ctx.tz)
                .into_iter()
                .map(|l| format!("  {l}")),
        );
        let mut o = Outcome::new(status, summary).with_details(details);
        o.data = serde_json::json!({
            "dir": dir,
            "newest": newest.json(now),
            "format": format.as_str(),
            "size": newest.size,
            // The trend (SPEC 9.3): the newest backup's size in bytes.
            "value": newest.size,
            "age_s": age.as_secs(),
            "verified": v.how,
            "checksum": v.checksum,
            "sha256": v.sha256,
            "previous": previous.map(|p| p.json(now)),
            "shrink_pct": shrink_pct,
            "in_progress": sel.in_progress.iter().map(|(i, _)| sel.all[*i].name.clone()).collect::<Vec<_>>(),
            "files": sel.listing_json(now),
        });
        o
    }
}

fn no_complete_backup(
    dir: &std::path::Path,
    pattern: &str,
    sel: &backup_files::Selection,
    now: SystemTime,
    ctx: &ItemCtx,
) -> Outcome {
    let data = serde_json::json!({ "dir": dir, "newest": null, "files": sel.listing_json(now) });
    if sel.all.is_empty() {
        return Outcome::fail(format!(
            "no backup matching {pattern:?} in {}",
            dir.display()
        ))
        .with_data(data);
    }
    let mut o = Outcome::fail(format!(
        "no complete backup in {}: {} still being written",
        dir.display(),
        sel.all[0].name
    ))
    .with_data(data);
    for (i, why) in &sel.in_progress {
        o.details
            .push(format!("skipped {}: {why}", sel.all[*i].name));
    }
    o.details.extend(
        sel.listing(now, ctx.tz)
            .into_iter()
            .map(|l| format!("  {l}")),
    );
    o
}

/// Verifies one backup: checksum sidecar, content (per `verify` and the format), required tables.
pub async fn verify_entry(
    e: &Entry,
    format: Format,
    verify: Verify,
    require_tables: &[String],
    ctx: &ItemCtx,
) -> Verification {
    let mut v = Verification {
        checksum: "absent",
        how: "none".into(),
        ..Default::default()
    };
    let sidecar = checksum::sidecar(e);
    let expected = match &sidecar {
        Some(p) => match checksum::read_sidecar(p) {
            Ok(h) => Some(h),
            Err(m) => {
                v.checksum = "error";
                v.problems.push(m.to_string());
                None
            }
        },
        None => None,
    };
    // Formats we stream ourselves hash on the same pass; the others hash beside the tool.
    let streamed = verify == Verify::Auto && matches!(format, Format::Gzip | Format::PlainSql);
    let hash_task = match (&expected, streamed) {
        (Some(_), false) => {
            let (path, cancel) = (e.path.clone(), ctx.cancel.clone());
            Some(tokio::task::spawn_blocking(move || {
                checksum::sha256_file(&path, &cancel)
            }))
        }
        _ => None,
    };
    let mut actual_sha: Option<Result<String, String>> = None;

    match (verify, format) {
        (Verify::None, _) => v.how = "none (verify = none)".into(),
        (Verify::Manifest, Format::BaseBackup) | (Verify::Auto, Format::BaseBackup) => {
            let mut cmd = tokio::process::Command::new(pg_tools::pg_tool("pg_verifybackup"));
            cmd.arg(&e.path);
            let r = pg_tools::run_tool(cmd, ctx.deadline, &ctx.cancel, true).await;
            v.how = "pg_verifybackup".into();
            if matches!(r.end, pg_tools::ToolEnd::Cancelled) {
                v.interrupted = true;
            } else if r.ok() {
                v.notes.push(format!(
                    "pg_verifybackup: {}",
                    r.stdout
                        .last()
                        .cloned()
                        .unwrap_or_else(|| "backup successfully verified".into())
                ));
            } else {
                v.problems.push(format!(
                    "base backup is corrupt: {}",
                    r.failure("pg_verifybackup")
                ));
                v.notes.extend(
                    r.stderr_tail
                        .iter()
                        .rev()
                        .take(5)
                        .rev()
                        .map(|l| format!("pg_verifybackup: {l}")),
                );
            }
            if !require_tables.is_empty() {
                v.problems.push(
                    "require_tables cannot be checked on a base backup (no table of contents)"
                        .into(),
                );
            }
        }
        (Verify::Manifest, f) => {
            v.how = "none".into();
            v.problems.push(format!("verify = \"manifest\" needs a base backup folder with a backup_manifest; {} is a {}", e.name, f.as_str()));
        }
        (Verify::Auto, Format::Custom | Format::Directory) => {
            let full = async {
                let mut cmd = tokio::process::Command::new(pg_tools::pg_tool("pg_restore"));
                cmd.arg("-f").arg("/dev/null").arg(&e.path);
                pg_tools::run_tool(cmd, ctx.deadline, &ctx.cancel, false).await
            };
            let list = async {
                if require_tables.is_empty() {
                    return None;
                }
                let mut cmd = tokio::process::Command::new(pg_tools::pg_tool("pg_restore"));
                cmd.arg("--list").arg(&e.path);
                Some(pg_tools::run_tool(cmd, ctx.deadline, &ctx.cancel, true).await)
            };
            let (full, list) = tokio::join!(full, list);
            v.how = "pg_restore -f /dev/null (full read)".into();
            if matches!(full.end, pg_tools::ToolEnd::Cancelled) {
                v.interrupted = true;
            } else if full.ok() {
                v.notes
                    .push("pg_restore read every entry of the archive".into());
            } else {
                v.problems.push(format!(
                    "{} is corrupt or incomplete: {}",
                    format.as_str(),
                    full.failure("pg_restore")
                ));
                v.notes.extend(
                    full.stderr_tail
                        .iter()
                        .rev()
                        .take(5)
                        .rev()
                        .map(|l| format!("pg_restore: {l}")),
                );
            }
            if let Some(list) = list {
                if list.ok() {
                    check_tables(
                        &mut v,
                        &backup_format::toc_tables(&list.stdout),
                        require_tables,
                    );
                } else if !matches!(list.end, pg_tools::ToolEnd::Cancelled) {
                    v.problems.push(format!(
                        "cannot read the table of contents: {}",
                        list.failure("pg_restore --list")
                    ));
                }
            }
        }
        (Verify::Auto, Format::Gzip | Format::PlainSql) => {
            let gzip = format == Format::Gzip;
            let (path, cancel, hash, tables) = (
                e.path.clone(),
                ctx.cancel.clone(),
                expected.is_some(),
                !require_tables.is_empty(),
            );
            let r = tokio::task::spawn_blocking(move || {
                backup_format::read_stream(&path, gzip, hash, tables, &cancel)
            })
            .await;
            match r {
                Err(join) => v.problems.push(format!("internal error: {join}")),
                Ok(Err(checksum::StreamError::Cancelled)) => v.interrupted = true,
                Ok(Err(checksum::StreamError::Io(m))) => {
                    v.how = if gzip {
                        "gzip (all members)".into()
                    } else {
                        "plain dump read to the end".into()
                    };
                    v.problems.push(m);
                }
                Ok(Ok(s)) => {
                    actual_sha = s.sha256.clone().map(Ok);
                    v.how = if gzip {
                        "gzip (all members)".into()
                    } else {
                        "completion marker".into()
                    };
                    if gzip {
                        v.notes.push(format!(
                            "gzip stream intact: {} uncompressed",
                            human_bytes(s.content_bytes)
                        ));
                    }
                    if s.inner_sql || !gzip {
                        if gzip {
                            v.how = "gzip (all members) + completion marker".into();
                        }
                        if s.marker_found {
                            v.notes.push(format!(
                                "plain dump ends with \"{}\"",
                                backup_format::PLAIN_MARKER
                            ));
                        } else {
                            v.problems.push(format!("plain dump is incomplete: \"{}\" is missing near its end (pg_dump did not finish)", backup_format::PLAIN_MARKER));
                        }
                        if !require_tables.is_empty() {
                            let found: Vec<(String, String)> = s
                                .tables
                                .iter()
                                .map(|t| backup_format::split_sql_name(t))
                                .collect();
                            check_tables(&mut v, &found, require_tables);
                        }
                    } else {
                        if s.inner_custom {
                            v.notes.push("the gzip stream holds a custom dump: its integrity is the gzip check (pg_restore cannot read it compressed)".into());
                        }
                        if !require_tables.is_empty() {
                            v.problems.push("require_tables cannot be checked inside this gzip file (it is not a plain SQL dump)".into());
                        }
                    }
                }
            }
        }
        (Verify::Auto, Format::Unknown) => {
            v.how = "none (format not recognised: size, age and checksum only)".into();
            if !require_tables.is_empty() {
                v.problems.push(format!("require_tables cannot be checked: {} is not a dump pg_restore or psql can read", e.name));
            }
        }
    }
    if let Some(t) = hash_task {
        actual_sha = match t.await {
            Ok(Ok(h)) => Some(Ok(h)),
            Ok(Err(checksum::StreamError::Cancelled)) => {
                v.interrupted = true;
                None
            }
            Ok(Err(checksum::StreamError::Io(m))) => Some(Err(m)),
            Err(j) => Some(Err(format!("internal error: {j}"))),
        };
    }
    if let (Some(exp), Some(act)) = (&expected, actual_sha) {
        match act {
            Ok(h) if &h == exp => {
                v.checksum = "ok";
                v.notes.push(format!(
                    "sha256 matches {}",
                    sidecar
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                ));
                v.sha256 = Some(h);
            }
            Ok(h) => {
                v.checksum = "mismatch";
                v.problems.insert(
                    0,
                    format!(
                        "checksum mismatch: {} says {exp}, the file's sha256 is {h}",
                        sidecar
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    ),
                );
                v.sha256 = Some(h);
            }
            Err(m) => {
                v.checksum = "error";
                v.problems.push(m.to_string());
            }
        }
    } else if expected.is_none() && sidecar.is_none() && !e.is_dir {
        v.notes
            .push("no .sha256 sidecar: checksum not verified".into());
    }
    v
}

fn check_tables(v: &mut Verification, found: &[(String, String)], required: &[String]) {
    let missing: Vec<&str> = required
        .iter()
        .filter(|t| !backup_format::has_table(found, t))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        v.notes
            .push(format!("required tables present: {}", required.join(", ")));
    } else {
        v.problems.push(format!(
            "required table{} missing from the dump: {}",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", ")
        ));
    }
}

/// How deeply a backup is verified.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Verify {
    #[default]
    Auto,
    None,
    Manifest,
}

fn default_max_age() -> Dur {
    Dur::from_secs(26 * 3600)
}
fn default_max_shrink() -> Percent {
    Percent(50.0)
}
pub fn default_settle() -> Dur {
    Dur::from_secs(60)
}
