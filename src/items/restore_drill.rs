//! `restore_drill`: restores the newest backup into a scratch database and checks it.
//!
//! The only proof that a backup restores is restoring it. This kind takes the newest complete
//! backup (chosen exactly as `backup` chooses it), checks its `.sha256` sidecar, creates a scratch
//! database `runbook_drill_<run id>` on `target`, restores into it (`pg_restore -j parallel`
//! for custom and directory dumps, `psql` for plain dumps, gzip'd or not), runs the `checks`,
//! and records the time to restore (RTO) with its trend against earlier drills of the job.
//!
//! Invariants:
//! - It never touches a database whose name does not start with `runbook_drill_`: the name is
//!   checked when the config loads (`scratch_database`) and again before every CREATE and DROP.
//! - A backup file is untrusted input: nothing in it can run a program anywhere or touch any
//!   database but the scratch one. Three walls, each enough on its own for what it covers:
//!   1. the restore (pg_restore, psql) and the checks log in as a role made for this drill
//!      (`runbook_drill_<run id>`, the scratch database's name): not a superuser, no CREATEDB,
//!      CREATEROLE, replication or membership in any role, owning only the scratch database.
//!      So `COPY ... PROGRAM`, `DROP DATABASE other`, `ALTER SYSTEM`, untrusted extensions
//!      (dblink) and the like fail on the server's side, whether a plain dump's statement, a
//!      custom dump's TOC entry or a function the restore calls asks for them. It is never a
//!      `SET ROLE` from a stronger session (a dump could `RESET ROLE`). The role is dropped with
//!      the scratch database.
//!   2. psql reads a plain dump in `\restrict` mode, entered first with a random key only
//!      runbook knows: no meta-command (`\!`, backquotes in `\set`, `\connect`, `\o |`) can
//!      run. A psql too old for `\restrict` stops at that first line, before anything ran.
//!   3. [`plain_guard::PlainGuard`] reads the plain dump as psql would and refuses meta-commands,
//!      `CREATE/ALTER/DROP DATABASE` and `COPY ... PROGRAM` wherever they are, with the line, so
//!      the report says why. It leaves out pg_dump's own ownership and privilege lines (the
//!      drill's role could not run them), as `pg_restore --no-owner --no-privileges` does, and
//!      the statements on untrusted extensions (created first by the target's user or left
//!      out, as the filtered `pg_restore -L` list does for custom dumps).
//! - The scratch database is always dropped (`DROP DATABASE ... WITH (FORCE)`): after success,
//!   failure, timeout and cancellation (SIGTERM/SIGINT of `run-job`, daemon shutdown). A guard
//!   drops it even if this future is dropped midway. Only `keep_on_failure` keeps it, and only
//!   when the restore or a check failed (never after an interruption).
//! - Passwords reach pg_restore/psql through `PGPASSWORD` in the child's environment, never argv.
//!   The drill role's password is random, made per drill, and sent to the server only as a
//!   SCRAM verifier.

use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use super::backup::Verify;
use super::support::backup_files::BackupPattern;
use super::support::backup_format::Format;
use super::support::{backup_files, backup_format, pg_tools, plain_guard};
use super::{ItemCtx, Outcome, Prepare, SqlCheck, Status};
use crate::base::pg::{Target, quote_ident};
#[allow(unused_imports)]
use crate::base::units::{Dur, Percent, Size, human_bytes};

/// Every scratch database name starts with this; nothing else is ever created or dropped.
pub const SCRATCH_PREFIX: &str = "runbook_drill_";

/// Options of `kind = "restore_drill"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreDrill {
    /// The server to restore into (a scratch database `runbook_drill_*` is created there).
    pub target: String,
    /// `"dump"` (default: pg_dump files restored into a scratch database on `target`) or
    /// `"pitr"` (a base backup and the WAL archive replayed by a throwaway server; see
    /// [`super::pitr_drill`]).
    #[serde(default)]
    pub mode: DrillMode,
    /// Folder holding the backups (mode `dump`).
    #[serde(default)]
    pub dir: std::path::PathBuf,
    /// Shell glob matched against file names. Default `"*"`.
    #[serde(default)]
    pub pattern: BackupPattern,
    /// `pg_restore -j`. Default 2.
    #[serde(default = "default_parallel")]
    pub parallel: u32,
    /// Queries run against the restored database.
    #[serde(default)]
    pub checks: Vec<super::SqlCheck>,
    /// Warn when the restore takes longer (RTO).
    pub max_duration: Option<Dur>,
    /// Keep the scratch database when something fails (for a person to look at). Default false.
    #[serde(default)]
    pub keep_on_failure: bool,
    /// A file modified more recently than this is still being written. Default 60s.
    #[serde(default = "super::backup::default_settle")]
    pub settle: Dur,
    /// A fixed name for the scratch database (must start with `runbook_drill_`). Default:
    /// `runbook_drill_<run id>`, unique per run.
    pub scratch_database: Option<String>,
    /// A role of yours to restore as, instead of one the drill makes (for a target user that may
    /// not create roles). Checked before each drill: it must be able to log in and must not be a
    /// superuser, have CREATEDB, CREATEROLE, REPLICATION or BYPASSRLS, be a member of any role,
    /// or own a database. The scratch database is created with it as the owner.
    pub restore_role: Option<String>,
    /// The password of `restore_role` (a secret), when pg_hba.conf asks for one.
    pub restore_password: Option<crate::base::secret::SecretSource>,
    /// Extensions that only a superuser can create (untrusted ones, e.g. `pg_stat_statements`)
    /// and that the target's user creates in the scratch database before the dump (custom,
    /// directory or plain) is restored. The drill's role cannot create them, so without this a
    /// dump that has them would fail at its `CREATE EXTENSION`; an untrusted extension a dump
    /// has and this list does not name is left out of the restore (said in the details). Either
    /// way the dump's own statements on it are left out. The extension comes from the server's
    /// own installed files, never from the dump. Default none.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// `restore_password`, resolved by `prepare`.
    #[serde(skip)]
    pub resolved_restore_password: Option<crate::base::secret::Secret>,
    // Mode `pitr` (see `super::pitr_drill`).
    /// Folder of pg_basebackup outputs, one sub-folder per backup (or one backup itself).
    pub base_backup_dir: Option<std::path::PathBuf>,
    /// Folder the source's `archive_command` copies WAL segments into (only read).
    pub wal_archive_dir: Option<std::path::PathBuf>,
    /// `"latest"` (default), `"now - 5m"` or an RFC 3339 time.
    pub recovery_target: Option<String>,
    /// Database the checks run in on the restored server. Default: the target's.
    pub database: Option<String>,
    /// Where the scratch server lives. Default: `<state_dir>/pitr-drill`.
    pub scratch_dir: Option<std::path::PathBuf>,
    /// Warn/fail when the time to a queryable server is longer.
    pub rto_warn: Option<Dur>,
    pub rto_fail: Option<Dur>,
    /// Warn/fail when the newest transaction reached is older than this at the drill's start.
    pub rpo_warn: Option<Dur>,
    pub rpo_fail: Option<Dur>,
}

/// What a drill restores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrillMode {
    /// A pg_dump file into a scratch database on `target`.
    #[default]
    Dump,
    /// A pg_basebackup and the WAL archive into a throwaway server (point in time).
    Pitr,
}

/// How long dropping the scratch database may take before we give up and report it.
const DROP_TIMEOUT: Duration = Duration::from_secs(5);

/// True for a name we may create and drop.
pub fn is_scratch_name(name: &str) -> bool {
    name.len() > SCRATCH_PREFIX.len() && name.len() <= 63 && name.starts_with(SCRATCH_PREFIX)
}

impl RestoreDrill {
    pub fn prepare(&mut self, p: &mut Prepare) {
        self.prepare_checks(p);
        if self.mode == DrillMode::Pitr {
            super::pitr_drill::prepare(self, p);
            return;
        }
        super::pitr_drill::refuse_pitr_options(self, p);
        if self.dir.as_os_str().is_empty() {
            p.error("dir", "dir (the folder holding the dumps) is required");
        }
        if self.parallel == 0 {
            p.error("parallel", "parallel must be at least 1");
        }
        if let Some(name) = &self.scratch_database
            && !is_scratch_name(name)
        {
            p.error(
                    "scratch_database",
                    format!("scratch_database {name:?} must start with \"{SCRATCH_PREFIX}\" (at most 63 bytes): a drill never touches any other database"),
                );
        }
        match (&self.restore_role, &self.restore_password) {
            (Some(role), _) if role.is_empty() || role.starts_with(SCRATCH_PREFIX) => p.error(
                "restore_role",
                format!("restore_role {role:?} must be a role of yours, not empty and not starting with \"{SCRATCH_PREFIX}\" (those are the drill's own, dropped after each drill)"),
            ),
            (None, Some(_)) => p.error(
                "restore_password",
                "restore_password needs restore_role (the drill's own role gets a random password)",
            ),
            (Some(_), Some(source)) => {
                self.resolved_restore_password = p.secret("restore_password", source);
            }
            _ => {}
        }
        let dir = p.path(&self.dir);
        if !dir.is_dir() {
            p.warning(format!(
                "backup folder {} does not exist (yet)",
                dir.display()
            ));
        }
    }

    /// The `checks`, for both modes.
    fn prepare_checks(&self, p: &mut Prepare) {
        for (i, c) in self.checks.iter().enumerate() {
            if c.query.trim().is_empty() {
                p.error(
                    &format!("checks[{i}].query"),
                    format!("check {:?} has an empty query", c.name),
                );
            }
            if let (Some(min), Some(max)) = (c.min, c.max)
                && min > max
            {
                p.error(
                    &format!("checks[{i}]"),
                    format!("check {:?}: min {min} is above max {max}", c.name),
                );
            }
        }
    }

    fn scratch_name(&self, ctx: &ItemCtx) -> String {
        match &self.scratch_database {
            Some(n) => n.clone(),
            None => format!("{SCRATCH_PREFIX}{}", ctx.run_id.to_ascii_lowercase()),
        }
    }

    pub async fn run(&self, ctx: &ItemCtx) -> Outcome {
        if self.mode == DrillMode::Pitr {
            return super::pitr_drill::run(self, ctx).await;
        }
        let target = match ctx.target(&self.target) {
            Ok(t) => t.clone(),
            Err(e) => return Outcome::fail(e.to_string()),
        };
        let scratch = self.scratch_name(ctx);
        if !is_scratch_name(&scratch) {
            return Outcome::fail(format!(
                "refusing scratch database {scratch:?}: its name must start with \"{SCRATCH_PREFIX}\""
            ));
        }
        let dir = ctx.path(&self.dir);
        let matcher = self.pattern.matcher();
        let sel = match backup_files::select_newest(
            &dir,
            matcher,
            self.settle.0,
            Duration::from_millis(200),
            &[],
        )
        .await
        {
            Ok(s) => s,
            Err(e) => return Outcome::fail(e.to_string()),
        };
        let Some(i) = sel.newest else {
            let why = if sel.all.is_empty() {
                format!(
                    "no backup matching {:?} in {}",
                    self.pattern.as_str(),
                    dir.display()
                )
            } else {
                format!(
                    "no complete backup in {}: {} is still being written",
                    dir.display(),
                    sel.all[0].name
                )
            };
            return Outcome::fail(why);
        };
        let backup = sel.all[i].clone();
        let format = backup_format::detect(&backup);
        let plain_gzip = format == Format::Gzip;
        let method = match format {
            Format::Custom | Format::Directory => Method::PgRestore,
            Format::PlainSql | Format::Gzip => Method::Psql,
            Format::BaseBackup => {
                return Outcome::fail(format!(
                    "{} is a base backup: this drill restores logical dumps (pg_dump) into a scratch database; drill base backups with mode = \"pitr\" (base_backup_dir, wal_archive_dir), verify them with kind = \"backup\", verify = \"manifest\"",
                    backup.name
                ));
            }
            Format::Unknown => {
                return Outcome::fail(format!(
                    "{} is not a dump pg_restore or psql can read",
                    backup.name
                ));
            }
        };
        let command_line = self.command_line(method, &scratch, &backup.path, plain_gzip);
        let mut data = serde_json::json!({
            "backup": backup.json(std::time::SystemTime::now()),
            "format": format.as_str(),
            "target": target.name,
            "scratch_database": scratch,
            "command": command_line,
        });

        if ctx.dry_run {
            let mut o = Outcome::skipped(format!(
                "dry run: would restore {} into scratch database {scratch} on {}",
                backup.name, target.display
            ))
            .detail(format!(
                "backup: {} ({}, {})",
                backup.path.display(),
                format.as_str(),
                human_bytes(backup.size)
            ))
            .detail(match &self.restore_role {
                Some(role) => format!(
                    "CREATE DATABASE {} OWNER {} (restore_role, checked to be no superuser and to own no other database)",
                    quote_ident(&scratch),
                    quote_ident(role)
                ),
                None => format!(
                    "CREATE ROLE {0} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD <random>; CREATE DATABASE {0} OWNER {0}",
                    quote_ident(&scratch)
                ),
            })
            .detail(format!("restore: {command_line}"));
            for c in &self.checks {
                o.details.push(format!("check {:?}: {}", c.name, c.query));
            }
            o.details.push(if self.restore_role.is_some() {
                format!("DROP DATABASE {} WITH (FORCE)", quote_ident(&scratch))
            } else {
                format!(
                    "DROP DATABASE {0} WITH (FORCE); DROP ROLE {0}",
                    quote_ident(&scratch)
                )
            });
            data["planned"] = true.into();
            return o.with_data(data);
        }

        // The checksum first: restoring a corrupt copy would prove nothing.
        let v = super::backup::verify_entry(&backup, format, Verify::None, &[], ctx).await;
        if v.interrupted {
            return Outcome::fail("interrupted before the restore").with_data(data);
        }
        if !v.problems.is_empty() {
            return Outcome::fail(format!("{}: {}", backup.name, v.problems[0]))
                .with_details(v.problems)
                .with_data(data);
        }
        data["checksum"] = v.checksum.into();

        let admin = match target.connect_for_maintenance().await {
            Ok(c) => c,
            Err(e) => {
                return Outcome::fail(format!("restore target unreachable: {e}")).with_data(data);
            }
        };
        match admin.query_one("SELECT pg_is_in_recovery()", &[]).await {
            Ok(row) if crate::base::pg::col::<bool>(&row, 0).unwrap_or(false) => {
                return Outcome::fail(format!(
                    "target {} is a standby (in recovery): a drill cannot create a database there; point it at the primary or a spare server",
                    target.name
                ))
                .with_data(data);
            }
            Ok(_) => {}
            Err(e) => {
                return Outcome::fail(format!(
                    "target {}: {}",
                    target.name,
                    crate::base::pg::pg_error(&e)
                ))
                .with_data(data);
            }
        }
        let mut details = Vec::new();
        if let Ok(rows) = admin.query("SELECT datname FROM pg_database WHERE datname LIKE 'runbook\\_drill\\_%' UNION SELECT rolname FROM pg_roles WHERE rolname LIKE 'runbook\\_drill\\_%' ORDER BY 1", &[]).await {
            let left: Vec<String> = rows.iter().filter_map(|r| crate::base::pg::col::<String>(r, 0).ok()).filter(|n| *n != scratch).collect();
            if !left.is_empty() {
                details.push(format!("scratch databases or roles left by earlier drills (kept or interrupted): {}", left.join(", ")));
            }
        }

        // The role the restore runs as (made for this drill, or the configured restore_role),
        // then the scratch database it owns.
        let (role, password) = match &self.restore_role {
            Some(role) => match check_restore_role(&admin, role).await {
                Ok(()) => (role.clone(), self.resolved_restore_password.clone()),
                Err(e) => {
                    return Outcome::fail(format!(
                        "restore_role {role:?} {e}: a backup file could use that; nothing was restored"
                    ))
                    .with_data(data);
                }
            },
            None => match create_drill_role(&admin, &scratch).await {
                Ok(p) => (scratch.clone(), Some(p)),
                Err(e) => {
                    return Outcome::fail(format!(
                        "cannot create the drill's restore role {scratch}: {e}; the target's user needs CREATEROLE and CREATEDB (or to be a superuser), or set restore_role"
                    ))
                    .with_data(data);
                }
            },
        };
        // Dropping the scratch database also drops a role of the same name: the drill's own
        // (a configured restore_role never has such a name).
        let mut guard = ScratchGuard {
            target: Some(target.clone()),
            name: scratch.clone(),
        };
        let mut restorer = target.clone();
        restorer.pg.user(&role);
        restorer.password = password;
        data["restore_role"] = role.clone().into();

        let created = Instant::now();
        if let Err(e) = admin
            .batch_execute(&format!(
                "CREATE DATABASE {} OWNER {}",
                quote_ident(&scratch),
                quote_ident(&role)
            ))
            .await
        {
            let mut o = Outcome::fail(format!(
                "cannot create scratch database {scratch}: {}",
                crate::base::pg::pg_error(&e)
            ));
            if let Err(e) = drop_scratch(&admin, &scratch).await {
                o.details
                    .push(format!("could not drop role {scratch}: {e}"));
            } else {
                guard.disarm();
            }
            return o.with_data(data);
        }
        details.push(format!(
            "restoring {} ({}, {}) into {scratch} on {}",
            backup.name,
            format.as_str(),
            human_bytes(backup.size),
            target.display
        ));
        details.push(format!("command: {command_line}"));
        details.push(format!(
            "restored and checked as role {role}: not a superuser, owns only the scratch database (a dump cannot run programs or reach other databases)"
        ));

        // Untrusted extensions of the dump: made first by the target's user (those listed in
        // `extensions`) or left out; the rest restores as the drill's role.
        let left_out = match self
            .prepare_extensions(
                ctx,
                &target,
                &admin,
                &scratch,
                &backup.path,
                method,
                plain_gzip,
            )
            .await
        {
            Ok((left_out, lines)) => {
                details.extend(lines);
                left_out
            }
            Err(e) => {
                let mut o = Outcome::fail(e).with_data(data);
                o.details.splice(0..0, details);
                return o;
            }
        };
        let work = self.restore_and_check(
            ctx,
            &restorer,
            &scratch,
            &backup.path,
            method,
            plain_gzip,
            created,
            &left_out,
        );
        let ended = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => End::Interrupted,
            _ = tokio::time::sleep_until(ctx.deadline) => End::TimedOut,
            r = work => End::Done(r),
        };
        // A restore that ended because we were cancelled is an interruption, not a failed
        // restore (keep_on_failure does not apply to it).
        let ended = match ended {
            End::Done(_) if ctx.cancel.is_cancelled() => End::Interrupted,
            e => e,
        };

        let (mut outcome, failed) = match ended {
            End::Done(r) => self.judge(ctx, r, &mut details, &mut data),
            End::Interrupted => (
                Outcome::fail("interrupted (shutting down) during the restore drill"),
                false,
            ),
            End::TimedOut => (Outcome::fail("timed out during the restore drill"), false),
        };
        outcome.details.splice(0..0, details);

        if failed && self.keep_on_failure {
            guard.disarm();
            if self.restore_role.is_none() {
                // The drill's role stays as the kept database's owner, but can no longer log in.
                let _ = admin
                    .batch_execute(&format!("ALTER ROLE {} NOLOGIN", quote_ident(&scratch)))
                    .await;
                outcome.details.push(format!("scratch database {scratch} kept for inspection (keep_on_failure); drop it with: DROP DATABASE {0} WITH (FORCE); DROP ROLE {0}", quote_ident(&scratch)));
            } else {
                outcome.details.push(format!("scratch database {scratch} kept for inspection (keep_on_failure); drop it with: DROP DATABASE {} WITH (FORCE)", quote_ident(&scratch)));
            }
            data["scratch_dropped"] = false.into();
        } else {
            match drop_scratch(&admin, &scratch).await {
                Ok(()) => {
                    guard.disarm();
                    outcome
                        .details
                        .push(format!("scratch database {scratch} and its role dropped"));
                    data["scratch_dropped"] = true.into();
                }
                Err(e) => {
                    // The guard tries once more on its own connection when it goes out of scope.
                    outcome.escalate(Status::Fail);
                    outcome
                        .details
                        .push(format!("could not drop scratch database {scratch}: {e}"));
                    data["scratch_dropped"] = false.into();
                }
            }
        }
        outcome.data = merge(data, outcome.data);
        outcome
    }

    fn command_line(
        &self,
        method: Method,
        scratch: &str,
        path: &std::path::Path,
        gzip: bool,
    ) -> String {
        match method {
            Method::PgRestore => format!(
                "pg_restore --no-owner --no-privileges --exit-on-error -j {} -d {scratch} -U {scratch} {}",
                self.parallel,
                path.display()
            ),
            Method::Psql => format!(
                "{}psql -X -q -v ON_ERROR_STOP=1 -d {scratch} -U {scratch} -f - (in \\restrict mode, through runbook's plain-dump filter)",
                if gzip {
                    format!("gzip -dc {} | ", path.display())
                } else {
                    format!("{} → ", path.display())
                }
            ),
        }
    }

    /// The child process environment for pg_restore/psql: where to connect, the password.
    fn pg_env(cmd: &mut tokio::process::Command, target: &Target) {
        for var in [
            "PGSERVICE",
            "PGSERVICEFILE",
            "PGDATABASE",
            "PGOPTIONS",
            "PGHOSTADDR",
            "PGPASSFILE",
        ] {
            cmd.env_remove(var);
        }
        if let Some(h) = target.pg.get_hosts().first() {
            match h {
                tokio_postgres::config::Host::Tcp(h) => cmd.env("PGHOST", h),
                tokio_postgres::config::Host::Unix(p) => cmd.env("PGHOST", p),
            };
        }
        if let Some(p) = target.pg.get_ports().first() {
            cmd.env("PGPORT", p.to_string());
        }
        if let Some(u) = target.pg.get_user() {
            cmd.env("PGUSER", u);
        }
        match &target.password {
            Some(pw) => cmd.env("PGPASSWORD", pw.expose()),
            None => cmd.env_remove("PGPASSWORD"),
        };
        let mode = match target.sslmode {
            crate::base::pg::SslMode::Disable => "disable",
            crate::base::pg::SslMode::Prefer => "prefer",
            crate::base::pg::SslMode::Require => "require",
            crate::base::pg::SslMode::VerifyFull => "verify-full",
        };
        cmd.env("PGSSLMODE", mode);
        if let Some(ca) = &target.ca_file {
            cmd.env("PGSSLROOTCERT", ca);
        }
        cmd.env("PGAPPNAME", "runbook-drill");
        cmd.env(
            "PGCONNECT_TIMEOUT",
            target.connect_timeout.as_secs().max(1).to_string(),
        );
    }

    /// The untrusted extensions (creatable only by a superuser) the dump creates: those in
    /// `extensions` are created in the scratch database by the target's user now; all of them
    /// (and their comments) are left out of the restore, through a filtered `pg_restore -L`
    /// list for a custom or directory dump, by the plain-dump filter for a plain one. Returns
    /// what to leave out with the detail lines saying what happened. Nothing to leave out when
    /// the dump could not be read for its extensions: the restore itself then says why.
    #[allow(clippy::too_many_arguments)]
    async fn prepare_extensions(
        &self,
        ctx: &ItemCtx,
        target: &Target,
        admin: &tokio_postgres::Client,
        scratch: &str,
        path: &std::path::Path,
        method: Method,
        gzip: bool,
    ) -> Result<(LeftOut, Vec<String>), String> {
        let (named, list) = match method {
            Method::PgRestore => match Self::toc_listing(path).await {
                Some(list) => (toc_extensions(&list), Some(list)),
                None => return Ok((LeftOut::default(), vec![])),
            },
            Method::Psql => (Self::plain_dump_extensions(ctx, path, gzip).await, None),
        };
        if named.is_empty() {
            return Ok((LeftOut::default(), vec![]));
        }
        let trusted: Vec<String> = match admin
            .query(
                "SELECT DISTINCT name FROM pg_available_extension_versions WHERE trusted AND name = ANY($1)",
                &[&named],
            )
            .await
        {
            Ok(rows) => rows
                .iter()
                .filter_map(|r| crate::base::pg::col::<String>(r, 0).ok())
                .collect(),
            Err(e) => return Err(format!("cannot list trusted extensions: {}", crate::base::pg::pg_error(&e))),
        };
        let untrusted: Vec<&String> = named.iter().filter(|n| !trusted.contains(n)).collect();
        if untrusted.is_empty() {
            return Ok((LeftOut::default(), vec![]));
        }
        let mut lines = Vec::new();
        let wanted: Vec<&&String> = untrusted
            .iter()
            .filter(|n| self.extensions.contains(n))
            .collect();
        if !wanted.is_empty() {
            let client = target
                .connect_to(scratch)
                .await
                .map_err(|e| format!("cannot connect to {scratch} to create extensions: {e}"))?;
            for name in wanted {
                client
                    .batch_execute(&format!("CREATE EXTENSION IF NOT EXISTS {}", quote_ident(name)))
                    .await
                    .map_err(|e| {
                        format!(
                            "cannot create extension {name} in {scratch} (listed in extensions): {}",
                            crate::base::pg::pg_error(&e)
                        )
                    })?;
                lines.push(format!(
                    "extension {name} created by the target's user before the restore (listed in extensions)"
                ));
            }
        }
        for name in untrusted.iter().filter(|n| !self.extensions.contains(n)) {
            lines.push(format!(
                "extension {name} left out of the restore: only a superuser can create it, not the drill's role; list it in extensions to have the target's user create it first"
            ));
        }
        let Some(list) = list else {
            let names = untrusted.into_iter().cloned().collect();
            return Ok((LeftOut { toc: None, names }, lines));
        };
        let kept = toc_without_extensions(&list, &untrusted);
        let mut file = tempfile::Builder::new()
            .prefix("runbook-drill-toc-")
            .tempfile()
            .map_err(|e| format!("cannot write the restore list: {e}"))?;
        std::io::Write::write_all(&mut file, kept.as_bytes())
            .map_err(|e| format!("cannot write the restore list: {e}"))?;
        let names = untrusted.into_iter().cloned().collect();
        Ok((
            LeftOut {
                toc: Some(file),
                names,
            },
            lines,
        ))
    }

    /// A custom or directory dump's table of contents (`pg_restore -l`); None when it cannot be
    /// read.
    async fn toc_listing(path: &std::path::Path) -> Option<String> {
        // Reading the archive's table of contents connects nowhere: no password, the clean
        // environment every PostgreSQL tool gets.
        let mut cmd = tokio::process::Command::new(pg_tools::pg_tool("pg_restore"));
        cmd.arg("-l").arg(path).kill_on_drop(true);
        crate::items::child_env::clean(cmd.as_std_mut(), crate::items::child_env::Child::PgTool);
        let listing = tokio::time::timeout(Duration::from_secs(120), cmd.output()).await;
        let Ok(Ok(out)) = listing else {
            return None;
        };
        if !out.status.success() {
            return None;
        }
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The extensions a plain dump creates before its data, read by the plain-dump filter
    /// (nothing when it refuses a line or cannot read the dump: the restore then stops with the
    /// reason). Stops when the drill is cancelled or times out.
    async fn plain_dump_extensions(
        ctx: &ItemCtx,
        path: &std::path::Path,
        gzip: bool,
    ) -> Vec<String> {
        let cancel = ctx.cancel.child_token();
        let (p, c) = (path.to_path_buf(), cancel.clone());
        let scan = tokio::task::spawn_blocking(move || plain_guard::plain_extensions(&p, gzip, c));
        match tokio::time::timeout_at(ctx.deadline, scan).await {
            Ok(Ok(Ok(names))) => names,
            Ok(_) => vec![],
            Err(_) => {
                cancel.cancel();
                vec![]
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn restore_and_check(
        &self,
        ctx: &ItemCtx,
        target: &Target,
        scratch: &str,
        path: &std::path::Path,
        method: Method,
        gzip: bool,
        started: Instant,
        left_out: &LeftOut,
    ) -> DrillResult {
        let mut skipped_ownership = 0;
        let run = match method {
            Method::PgRestore => {
                let mut cmd = tokio::process::Command::new(pg_tools::pg_tool("pg_restore"));
                cmd.args([
                    "--no-owner",
                    "--no-privileges",
                    "--exit-on-error",
                    "-j",
                    &self.parallel.to_string(),
                    "-d",
                    scratch,
                ]);
                if let Some(list) = &left_out.toc {
                    cmd.arg("-L").arg(list.path());
                }
                cmd.arg(path);
                Self::pg_env(&mut cmd, target);
                pg_tools::run_tool(cmd, ctx.deadline, &ctx.cancel, false).await
            }
            Method::Psql => {
                let mut cmd = tokio::process::Command::new(pg_tools::pg_tool("psql"));
                cmd.args([
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-d",
                    scratch,
                    "-f",
                    "-",
                ]);
                Self::pg_env(&mut cmd, target);
                let (tx, rx) = tokio::sync::mpsc::channel(8);
                // psql's first line locks out every meta-command for the rest of the input;
                // only this key unlocks it, and nobody else ever sees it.
                let key = match random_alnum(32) {
                    Ok(k) => k,
                    Err(e) => {
                        return DrillResult {
                            restore_error: Some(e),
                            ..Default::default()
                        };
                    }
                };
                let _ = tx.try_send(format!("\\restrict {key}\n").into_bytes());
                let (p, cancel) = (path.to_path_buf(), ctx.cancel.clone());
                let names = left_out.names.clone();
                let feeder = tokio::task::spawn_blocking(move || {
                    plain_guard::feed_plain(&p, gzip, names, tx, cancel)
                });
                let run =
                    pg_tools::run_tool_with_input(cmd, ctx.deadline, &ctx.cancel, false, Some(rx))
                        .await;
                match feeder.await {
                    Ok(Err(e)) if !matches!(e, plain_guard::FeedError::PsqlStopped) => {
                        return DrillResult {
                            restore_error: Some(format!("plain dump refused or unreadable: {e}")),
                            ..Default::default()
                        };
                    }
                    Ok(Ok(n)) if n > 0 => skipped_ownership = n,
                    _ => {}
                }
                if run
                    .stderr_tail
                    .iter()
                    .any(|l| l.contains("invalid command \\restrict"))
                {
                    return DrillResult {
                        restore_error: Some(format!(
                            "{} is too old to restore an untrusted plain dump safely: it lacks \\restrict (psql 13.22, 14.19, 15.14, 16.10, 17.6 or later); nothing was restored",
                            pg_tools::pg_tool("psql").display()
                        )),
                        ..Default::default()
                    };
                }
                run
            }
        };
        let rto = started.elapsed();
        if !run.ok() {
            let tool = if method == Method::PgRestore {
                "pg_restore"
            } else {
                "psql"
            };
            let mut why = run.failure(tool);
            if run.stderr_tail.iter().any(|l| {
                l.contains("authentication failed")
                    || l.contains("no pg_hba.conf entry")
                    || l.contains("no password supplied")
            }) {
                why.push_str(&format!(
                    " (the drill logs in as its own role {}: pg_hba.conf must let it log in with a password from here, e.g. a `host all all <runbook's address> scram-sha-256` line)",
                    target.pg.get_user().unwrap_or("?")
                ));
            }
            let mut r = DrillResult {
                restore_error: Some(why),
                rto: Some(rto),
                ..Default::default()
            };
            r.restore_log = run
                .stderr_tail
                .iter()
                .rev()
                .take(8)
                .rev()
                .map(|l| format!("{tool}: {l}"))
                .collect();
            return r;
        }
        let mut r = DrillResult {
            rto: Some(rto),
            skipped_ownership,
            ..Default::default()
        };
        if self.checks.is_empty() {
            return r;
        }
        let client = match target.connect_to(scratch).await {
            Ok(c) => c,
            Err(e) => {
                r.checks.push(CheckResult {
                    name: "connect".into(),
                    ok: false,
                    value: None,
                    message: e.to_string(),
                });
                return r;
            }
        };
        for c in &self.checks {
            r.checks.push(run_check(&client, c).await);
        }
        r
    }

    fn judge(
        &self,
        ctx: &ItemCtx,
        r: DrillResult,
        details: &mut Vec<String>,
        data: &mut serde_json::Value,
    ) -> (Outcome, bool) {
        let rto_ms = r.rto.map(|d| d.as_millis() as u64);
        data["rto_ms"] = rto_ms.into();
        data["checks"] = serde_json::Value::Array(
            r.checks.iter().map(|c| serde_json::json!({ "name": c.name, "ok": c.ok, "value": c.value, "message": c.message })).collect(),
        );
        if let Some(e) = r.restore_error {
            details.extend(r.restore_log);
            return (Outcome::fail(format!("restore failed: {e}")), true);
        }
        let rto = r.rto.unwrap_or_default();
        // The trend (SPEC 9.3): seconds to a restored, checked database.
        data["value"] = serde_json::json!((rto.as_secs_f64() * 1000.0).round() / 1000.0);
        let trend = self.trend(ctx, rto);
        data["previous_rto_ms"] = trend.previous_ms.into();
        data["rto_history_ms"] = trend.history_ms.clone().into();
        data["rto_change_pct"] = trend.change_pct.into();
        details.push(format!(
            "time to restore (RTO): {}{}",
            fmt_secs(rto),
            trend.text
        ));
        if r.skipped_ownership > 0 {
            details.push(format!(
                "{} ownership and privilege statements of the plain dump left out (as pg_restore --no-owner --no-privileges)",
                r.skipped_ownership
            ));
        }
        for c in &r.checks {
            details.push(format!(
                "{} check {:?}: {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.message
            ));
        }
        let failed: Vec<&CheckResult> = r.checks.iter().filter(|c| !c.ok).collect();
        if !failed.is_empty() {
            let names: Vec<String> = failed
                .iter()
                .map(|c| format!("{:?} ({})", c.name, c.message))
                .collect();
            return (
                Outcome::fail(format!(
                    "restored in {}, but {} check{} failed: {}",
                    fmt_secs(rto),
                    failed.len(),
                    if failed.len() == 1 { "" } else { "s" },
                    names.join("; ")
                )),
                true,
            );
        }
        let summary = format!(
            "restored in {}{}, {} check{} passed",
            fmt_secs(rto),
            trend.short,
            r.checks.len(),
            if r.checks.len() == 1 { "" } else { "s" }
        );
        if let Some(max) = self.max_duration
            && rto > max.0
        {
            return (
                Outcome::warn(format!(
                    "RTO {} is above max_duration {max}: {summary}",
                    fmt_secs(rto)
                )),
                false,
            );
        }
        (Outcome::pass(summary), false)
    }

    /// RTO against the earlier drills of this item (from the stored reports of the job).
    fn trend(&self, ctx: &ItemCtx, rto: Duration) -> Trend {
        let history: Vec<u64> = ctx
            .state
            .earlier_results(20)
            .iter()
            .filter(|i| i.status != Status::Fail)
            .filter_map(|i| i.data.get("rto_ms").and_then(|v| v.as_u64()))
            .take(5)
            .collect();
        let Some(&prev) = history.first() else {
            return Trend {
                text: " (first recorded drill)".into(),
                ..Default::default()
            };
        };
        let now = rto.as_millis() as f64;
        let pct = if prev > 0 {
            (now - prev as f64) * 100.0 / prev as f64
        } else {
            0.0
        };
        let list: Vec<String> = history
            .iter()
            .map(|ms| fmt_secs(Duration::from_millis(*ms)))
            .collect();
        Trend {
            text: format!(
                "; previous drill {} ({pct:+.0}%); earlier drills, newest first: {}",
                fmt_secs(Duration::from_millis(prev)),
                list.join(", ")
            ),
            short: format!(" ({pct:+.0}% vs previous drill)"),
            previous_ms: Some(prev),
            history_ms: history,
            change_pct: Some((pct * 10.0).round() / 10.0),
        }
    }
}

#[derive(Default)]
struct Trend {
    text: String,
    short: String,
    previous_ms: Option<u64>,
    history_ms: Vec<u64>,
    change_pct: Option<f64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    PgRestore,
    Psql,
}

/// The untrusted extensions a drill leaves out of the restore (see `prepare_extensions`).
#[derive(Default)]
struct LeftOut {
    /// For pg_restore: the dump's table of contents without them (`pg_restore -L`).
    toc: Option<tempfile::NamedTempFile>,
    /// Their names: the plain-dump filter leaves out their statements.
    names: Vec<String>,
}

enum End {
    Done(DrillResult),
    Interrupted,
    TimedOut,
}

#[derive(Default)]
struct DrillResult {
    restore_error: Option<String>,
    /// Ownership and privilege statements of a plain dump left out.
    skipped_ownership: u64,
    restore_log: Vec<String>,
    rto: Option<Duration>,
    checks: Vec<CheckResult>,
}

pub(super) struct CheckResult {
    pub(super) name: String,
    pub(super) ok: bool,
    pub(super) value: Option<String>,
    pub(super) message: String,
}

/// Runs one check: the query must return a row; min/max/expect apply to its first column.
pub(super) async fn run_check(client: &tokio_postgres::Client, c: &SqlCheck) -> CheckResult {
    let fail = |message: String| CheckResult {
        name: c.name.clone(),
        ok: false,
        value: None,
        message,
    };
    let msgs = match client.simple_query(&c.query).await {
        Ok(m) => m,
        Err(e) => return fail(format!("query failed: {}", crate::base::pg::pg_error(&e))),
    };
    let Some(row) = msgs.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
        _ => None,
    }) else {
        return fail("the query returned no row".into());
    };
    let Some(text) = row.get(0).map(str::to_string) else {
        return fail("the first column is NULL".into());
    };
    let mut problems = Vec::new();
    if let Some(expect) = c.expect {
        let b = match text.as_str() {
            "t" | "true" => Some(true),
            "f" | "false" => Some(false),
            _ => None,
        };
        match b {
            Some(b) if b == expect => {}
            Some(b) => problems.push(format!("is {b}, expected {expect}")),
            None => problems.push(format!("{text:?} is not a boolean")),
        }
    }
    if c.min.is_some() || c.max.is_some() {
        match text.trim().parse::<f64>() {
            Ok(v) => {
                if let Some(min) = c.min.filter(|m| v < *m) {
                    problems.push(format!("{text} is below min {min}"));
                }
                if let Some(max) = c.max.filter(|m| v > *m) {
                    problems.push(format!("{text} is above max {max}"));
                }
            }
            Err(_) => problems.push(format!("{text:?} is not a number")),
        }
    }
    if problems.is_empty() {
        CheckResult {
            name: c.name.clone(),
            ok: true,
            value: Some(text.clone()),
            message: format!("value {text}"),
        }
    } else {
        CheckResult {
            name: c.name.clone(),
            ok: false,
            value: Some(text),
            message: problems.join(", "),
        }
    }
}

/// `DROP DATABASE IF EXISTS "runbook_drill_..." WITH (FORCE)` and then the drill's role of the
/// same name, refusing any other name.
async fn drop_scratch(admin: &tokio_postgres::Client, name: &str) -> Result<(), String> {
    if !is_scratch_name(name) {
        return Err(format!("refusing to drop {name:?}: not a scratch database"));
    }
    let drop = async {
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(name)
            ))
            .await?;
        admin
            .batch_execute(&format!("DROP ROLE IF EXISTS {}", quote_ident(name)))
            .await
    };
    match tokio::time::timeout(DROP_TIMEOUT, drop).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(crate::base::pg::pg_error(&e)),
        Err(_) => Err(format!("timed out after {}s", DROP_TIMEOUT.as_secs())),
    }
}

/// Creates the role a drill restores as (named like the scratch database): it can log in with a
/// random password and nothing more (no superuser, CREATEDB, CREATEROLE, replication, BYPASSRLS,
/// no membership in any role). Returns its password. A target user that is not a superuser is
/// made a member of it, which PostgreSQL asks of `CREATE DATABASE ... OWNER`; the reverse never.
async fn create_drill_role(
    admin: &tokio_postgres::Client,
    name: &str,
) -> Result<crate::base::secret::Secret, String> {
    if !is_scratch_name(name) {
        return Err(format!("refusing role {name:?}: not a scratch name"));
    }
    let password = random_alnum(32)?;
    // Only the SCRAM verifier travels (a server logging DDL logs no password).
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    if !verifier
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+/=$:-".contains(&b))
    {
        return Err("unexpected characters in a SCRAM verifier".into());
    }
    let role = quote_ident(name);
    let sql = format!(
        "CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD '{verifier}'"
    );
    admin
        .batch_execute(&sql)
        .await
        .map_err(|e| crate::base::pg::pg_error(&e))?;
    let superuser = admin
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map(|r| r.try_get::<_, bool>(0).unwrap_or(false))
        .unwrap_or(false);
    if !superuser
        && let Err(e) = admin
            .batch_execute(&format!("GRANT {role} TO CURRENT_USER"))
            .await
    {
        let _ = admin
            .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
            .await;
        return Err(crate::base::pg::pg_error(&e));
    }
    Ok(crate::base::secret::Secret::literal(&password))
}

/// Refuses a configured `restore_role` that a dump could use to leave the scratch database:
/// `Err` says what it has too much of.
async fn check_restore_role(admin: &tokio_postgres::Client, role: &str) -> Result<(), String> {
    let row = admin
        .query_opt(
            "SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication, r.rolbypassrls, r.rolcanlogin,
                    (SELECT string_agg(g.rolname, ', ' ORDER BY g.rolname) FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid),
                    (SELECT string_agg(d.datname, ', ' ORDER BY d.datname) FROM pg_database d WHERE d.datdba = r.oid)
             FROM pg_roles r WHERE r.rolname = $1",
            &[&role],
        )
        .await
        .map_err(|e| crate::base::pg::pg_error(&e))?
        .ok_or("does not exist")?;
    let flag = |i: usize| row.try_get::<_, bool>(i).unwrap_or(true);
    let mut too_much = Vec::new();
    for (i, what) in [
        (0, "SUPERUSER"),
        (1, "CREATEROLE"),
        (2, "CREATEDB"),
        (3, "REPLICATION"),
        (4, "BYPASSRLS"),
    ] {
        if flag(i) {
            too_much.push(what.to_string());
        }
    }
    if let Ok(Some(groups)) = row.try_get::<_, Option<String>>(6) {
        too_much.push(format!("membership in {groups}"));
    }
    if let Ok(Some(dbs)) = row.try_get::<_, Option<String>>(7) {
        too_much.push(format!("ownership of database {dbs}"));
    }
    if !too_much.is_empty() {
        return Err(format!("has {}", too_much.join(", ")));
    }
    if !row.try_get::<_, bool>(5).unwrap_or(false) {
        return Err("cannot log in (NOLOGIN)".into());
    }
    Ok(())
}

/// `n` random letters and digits from the kernel's generator.
fn random_alnum(n: usize) -> Result<String, String> {
    use std::io::Read;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut out = String::with_capacity(n);
    let mut f = std::fs::File::open("/dev/urandom")
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    let mut b = [0u8; 1];
    while out.len() < n {
        f.read_exact(&mut b)
            .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
        // 248 = 4 * 62: no bias.
        if b[0] < 248 {
            out.push(ALPHABET[(b[0] % 62) as usize] as char);
        }
    }
    Ok(out)
}

/// Drops the scratch database when it goes out of scope armed: the backstop for paths where the
/// drill's future is dropped before its own cleanup ran (the runner aborting the task).
struct ScratchGuard {
    target: Option<Target>,
    name: String,
}

impl ScratchGuard {
    fn disarm(&mut self) {
        self.target = None;
    }
}

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        let Some(target) = self.target.take() else {
            return;
        };
        let name = self.name.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        // A thread with its own runtime: we may be inside a runtime that is shutting down.
        std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(_) => return,
            };
            let r = rt.block_on(async {
                let admin = target.connect_for_maintenance().await?;
                drop_scratch(&admin, &name).await
            });
            if let Err(e) = &r {
                tracing::error!(database = %name, "could not drop the restore drill's scratch database: {e}");
            }
            let _ = tx.send(());
        });
        let _ = rx.recv_timeout(DROP_TIMEOUT + Duration::from_secs(2));
    }
}

pub(super) fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        format!("{}m {:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

fn merge(mut base: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    if let (Some(b), serde_json::Value::Object(e)) = (base.as_object_mut(), extra) {
        for (k, v) in e {
            b.insert(k, v);
        }
    }
    base
}

fn default_parallel() -> u32 {
    2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_scratch_names_are_accepted() {
        assert!(is_scratch_name("runbook_drill_01jabc"));
        assert!(!is_scratch_name("runbook_drill_"));
        assert!(!is_scratch_name("trademaster_trading"));
        assert!(!is_scratch_name("postgres"));
        assert!(!is_scratch_name(&format!(
            "runbook_drill_{}",
            "x".repeat(60)
        )));
    }
}

/// The extensions a `pg_restore -l` listing creates (`…; 3079 16385 EXTENSION - name owner`).
fn toc_extensions(list: &str) -> Vec<String> {
    let mut names: Vec<String> = list
        .lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            (t.get(3) == Some(&"EXTENSION")).then(|| t.get(5).map(|n| n.to_string()))?
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The listing without the entries that create `names` or comment on them.
fn toc_without_extensions(list: &str, names: &[&String]) -> String {
    let mut out = String::new();
    for l in list.lines() {
        let t: Vec<&str> = l.split_whitespace().collect();
        let named = |i: usize| {
            t.get(i)
                .is_some_and(|n| names.iter().any(|x| x.as_str() == *n))
        };
        let skip = !l.starts_with(';')
            && ((t.get(3) == Some(&"EXTENSION") && named(5))
                || (t.get(3) == Some(&"COMMENT") && t.get(5) == Some(&"EXTENSION") && named(6)));
        if !skip {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod toc_tests {
    const LIST: &str = ";\n; Archive created at 2026-12-05\n;\n3; 3079 16385 EXTENSION - pg_stat_statements \n4421; 0 0 COMMENT - EXTENSION pg_stat_statements \n2; 3079 16390 EXTENSION - pgcrypto \n215; 1259 16400 TABLE public orders postgres\n";

    #[test]
    fn extensions_are_read_from_the_listing_and_left_out_with_their_comments() {
        assert_eq!(
            super::toc_extensions(LIST),
            vec!["pg_stat_statements", "pgcrypto"]
        );
        let pss = "pg_stat_statements".to_string();
        let kept = super::toc_without_extensions(LIST, &[&pss]);
        assert!(!kept.contains("pg_stat_statements"), "{kept}");
        assert!(kept.contains("EXTENSION - pgcrypto"), "{kept}");
        assert!(kept.contains("TABLE public orders"), "{kept}");
        assert!(kept.starts_with(";\n; Archive"), "{kept}");
    }
}
