//! The environment of every child process runbook starts: a clean one.
//!
//! The daemon's environment holds secrets: the variables behind `{ env = "VAR" }` in the
//! config, everything systemd's `EnvironmentFile=` loaded, `CREDENTIALS_DIRECTORY`. A child
//! inherits none of that. It gets only what a program needs to run like it would from a login
//! shell ([`INHERITED`]: `PATH`, `HOME`, `LANG`, `LC_*`, `TZ`, `TMPDIR`, `USER`, `LOGNAME`),
//! PostgreSQL client tools also libpq's TLS file settings ([`PG_TOOL_INHERITED`]: paths, not
//! secrets), and then what the spawn site sets itself: a `command` item its `RUNBOOK_*`
//! variables and its `env` option, a restore its `PG*` connection variables (`PGPASSWORD` only
//! where it hands over a target's password on purpose). `NOTIFY_SOCKET` is never passed on, so
//! a child cannot talk to systemd in our name.
//!
//! Every spawn site calls [`clean`] once its own variables are set; [`run_tool`] does it for
//! the PostgreSQL tools.
//!
//! [`run_tool`]: super::support::pg_tools::run_tool

use std::ffi::{OsStr, OsString};

/// Inherited from the daemon by every child, when set.
pub const INHERITED: &[&str] = &[
    "PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME",
];

/// Also inherited by PostgreSQL client tools: where libpq finds TLS files.
pub const PG_TOOL_INHERITED: &[&str] = &[
    "PGSSLCERT",
    "PGSSLKEY",
    "PGSSLROOTCERT",
    "PGSSLCRL",
    "PGSSLCRLDIR",
];

/// What kind of child a process is: which variables it may inherit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Child {
    /// A `command` item's program.
    Command,
    /// pg_restore, psql, pg_verifybackup, pg_dump.
    PgTool,
}

/// Whether the daemon's variable `name` is passed on to a `child`.
pub fn inherited(name: &OsStr, child: Child) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    INHERITED.contains(&name)
        || name.starts_with("LC_")
        || (child == Child::PgTool && PG_TOOL_INHERITED.contains(&name))
}

/// Gives `cmd` a clean environment: the inherited variables of `child`'s kind from the daemon,
/// then every variable the caller already set (or removed) on `cmd`, then no `NOTIFY_SOCKET`.
pub fn clean(cmd: &mut std::process::Command, child: Child) {
    let own: Vec<(OsString, Option<OsString>)> = cmd
        .get_envs()
        .map(|(k, v)| (k.to_os_string(), v.map(OsStr::to_os_string)))
        .collect();
    cmd.env_clear();
    for (k, v) in std::env::vars_os() {
        if inherited(&k, child) {
            cmd.env(k, v);
        }
    }
    for (k, v) in own {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.env_remove("NOTIFY_SOCKET");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_callers_variables_and_only_allowed_inherited_ones() {
        let mut cmd = std::process::Command::new("true");
        cmd.env("PGPASSWORD", "given-on-purpose")
            .env("NOTIFY_SOCKET", "/run/x")
            .env_remove("PGSERVICE");
        clean(&mut cmd, Child::PgTool);
        let envs: Vec<(String, Option<String>)> = cmd
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        assert!(envs.contains(&("PGPASSWORD".into(), Some("given-on-purpose".into()))));
        assert!(
            !envs
                .iter()
                .any(|(k, v)| k == "NOTIFY_SOCKET" && v.is_some())
        );
        for (k, v) in &envs {
            assert!(
                v.is_none() || k == "PGPASSWORD" || inherited(OsStr::new(k), Child::PgTool),
                "{k} is passed on"
            );
        }
        assert!(inherited(OsStr::new("LC_ALL"), Child::Command));
        assert!(!inherited(OsStr::new("PGSSLKEY"), Child::Command));
        assert!(!inherited(
            OsStr::new("CREDENTIALS_DIRECTORY"),
            Child::PgTool
        ));
        assert!(!inherited(OsStr::new("PGPASSWORD"), Child::PgTool));
    }
}
