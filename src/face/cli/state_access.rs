//! Opening the state folder from a command typed in a shell (one state per host, SPEC 9.7).
//!
//! The packaged daemon runs as its own user (`runbook`) and owns its state folder
//! (`/var/lib/runbook`, mode 0700). Commands typed in a shell use the same folder
//! ([`crate::config::resolve_state_dir`]), and two things would go wrong there:
//!
//! - **As root**, runbook and SQLite would create files in it (`state.db`, `state.db-wal`,
//!   `state.db-shm`, `state.db.open-lock`) owned by root, which the daemon's user then cannot
//!   open: the daemon fails at its next start. So a root process whose state folder belongs to
//!   another user becomes that user (group and supplementary groups too) before it opens
//!   anything: a manual `run-job` then also runs its items with the daemon's permissions, as the
//!   scheduled run would. The config and its secrets were read before, as root.
//! - **As another user** without access, SQLite would say "unable to open database file"; the
//!   error here names the folder, its owner and what to do instead.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{AccessFlags, Gid, Uid, User};

use crate::config::{Config, StateDirOrigin};

/// Why this process may not open the state folder (a message for the person at the terminal;
/// nothing was opened).
#[derive(Debug, thiserror::Error)]
pub enum StateAccessError {
    /// Root could not become the folder's owner.
    #[error(
        "the state folder {} ({origin}) belongs to user {owner}; runbook, run as root, \
         could not switch to that user before opening it: {source}. Run the command as \
         that user instead: sudo -u {owner} runbook ...",
        dir.display()
    )]
    CannotSwitch {
        dir: PathBuf,
        origin: StateDirOrigin,
        owner: String,
        source: nix::Error,
    },
    /// This user may not use the folder; the message says what to do instead.
    #[error("{0}")]
    Denied(String),
}

/// Makes this process fit to open `config.state_dir`: switches from root to the folder's owner
/// when they differ, or checks that this user may use it. Returns the user switched to, if any;
/// `Err` is a message for the person at the terminal (nothing was opened).
pub fn prepare(config: &Config) -> Result<Option<String>, StateAccessError> {
    prepare_dir(&config.state_dir, config.state_dir_origin, true)
}

/// Only the switch from root to the state folder's owner, for commands that do not open the
/// state but write where the daemon does (`notify-test` through a `file` notifier whose folder
/// is inside the state folder: a root-owned `sent/` would stop the daemon's deliveries). Any
/// other user goes on as before.
pub fn become_owner_if_root(config: &Config) -> Result<Option<String>, StateAccessError> {
    prepare_dir(&config.state_dir, config.state_dir_origin, false)
}

fn prepare_dir(
    dir: &Path,
    origin: StateDirOrigin,
    check_access: bool,
) -> Result<Option<String>, StateAccessError> {
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        // Not there yet: the store creates it, owned by whoever we are.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(_) if !check_access => return Ok(None),
        Err(e) => return Err(denied(dir, origin, None, &e.to_string())),
    };
    let me = nix::unistd::geteuid();
    if me.is_root() && meta.uid() != 0 {
        let user = switch_user(Uid::from_raw(meta.uid()), Gid::from_raw(meta.gid())).map_err(
            |source| StateAccessError::CannotSwitch {
                dir: dir.to_path_buf(),
                origin,
                owner: user_name(meta.uid()),
                source,
            },
        )?;
        tracing::info!(
            user,
            state_dir = %dir.display(),
            "running as the state folder's owner, as the daemon does"
        );
        return Ok(Some(user));
    }
    let rwx = AccessFlags::R_OK | AccessFlags::W_OK | AccessFlags::X_OK;
    if !check_access {
        return Ok(None);
    }
    if let Err(e) = nix::unistd::access(dir, rwx) {
        return Err(denied(dir, origin, Some(&meta), e.desc()));
    }
    Ok(None)
}

/// Becomes `uid`: its supplementary groups (from the user database, else just `gid`), its group,
/// then the user itself. glibc applies each change to every thread of the process.
fn switch_user(uid: Uid, gid: Gid) -> Result<String, nix::Error> {
    match User::from_uid(uid)? {
        Some(user) => {
            let name = std::ffi::CString::new(user.name.clone()).map_err(|_| nix::Error::EINVAL)?;
            nix::unistd::initgroups(&name, user.gid)?;
            nix::unistd::setgid(user.gid)?;
            nix::unistd::setuid(uid)?;
            Ok(user.name)
        }
        // A DynamicUser= has no entry outside its service's lifetime: the folder's ids will do.
        None => {
            nix::unistd::setgroups(&[gid])?;
            nix::unistd::setgid(gid)?;
            nix::unistd::setuid(uid)?;
            Ok(uid.to_string())
        }
    }
}

fn user_name(uid: u32) -> String {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

fn denied(
    dir: &Path,
    origin: StateDirOrigin,
    meta: Option<&std::fs::Metadata>,
    error: &str,
) -> StateAccessError {
    let me = user_name(nix::unistd::geteuid().as_raw());
    let owner = meta.map(|m| {
        format!(
            " It belongs to user {} (mode {:04o}).",
            user_name(m.uid()),
            m.permissions().mode() & 0o7777
        )
    });
    let run_as = meta
        .map(|m| user_name(m.uid()))
        .unwrap_or_else(|| "runbook".into());
    StateAccessError::Denied(format!(
        "cannot use the state folder {} ({origin}) as user {me}: {error}.{}\n  \
         Run the command as its owner (sudo -u {run_as} runbook ...) or as root (runbook then \
         switches to the owner itself), or give this command a state of its own with \
         [runbook] state_dir or RUNBOOK_STATE_DIR=PATH.",
        dir.display(),
        owner.unwrap_or_default()
    ))
}
