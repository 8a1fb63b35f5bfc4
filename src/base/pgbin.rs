//! Where the PostgreSQL programs are: the server's bin folder (`initdb`, `pg_ctl`) and the
//! client tools items run (`pg_restore`, `psql`). Production code (backup verification, restore
//! drills) and the throwaway test clusters of `face::pgcluster` share this one lookup.

use std::path::PathBuf;

/// No PostgreSQL server installation was found.
#[derive(Debug, thiserror::Error)]
#[error(
    "PostgreSQL server binaries (initdb, pg_ctl) not found: install them (Debian: apt-get install postgresql) or set PG_BIN"
)]
pub struct BinDirNotFound;

/// Finds the folder with `initdb` and `pg_ctl`: `$PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`, else `$PATH`.
pub fn find_bin_dir() -> Result<PathBuf, BinDirNotFound> {
    if let Some(p) = std::env::var_os("PG_BIN") {
        let p = PathBuf::from(p);
        if p.join("initdb").exists() {
            return Ok(p);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    candidates.sort();
    if let Some((_, bin)) = candidates.pop() {
        return Ok(bin);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
            return Ok(dir);
        }
    }
    Err(BinDirNotFound)
}

/// Path of a PostgreSQL client tool: the newest server installation's bin folder, else `$PATH`.
pub fn pg_tool(name: &str) -> PathBuf {
    if let Ok(dir) = find_bin_dir() {
        let p = dir.join(name);
        if p.exists() {
            return p;
        }
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(name)
}

/// We are root, PostgreSQL refuses to run as root, and there is no `postgres` user.
#[derive(Debug, thiserror::Error)]
#[error(
    "runbook runs as root and PostgreSQL refuses to, but there is no `postgres` user to run the server as"
)]
pub struct NoServerUser;

/// The user a PostgreSQL server we start runs as: `postgres` when we are root (the server
/// refuses root), else ourselves (`None`). Shared by the restore drill's scratch server and
/// `face::pgcluster`'s throwaway clusters.
pub fn server_user() -> Result<Option<nix::unistd::User>, NoServerUser> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name("postgres") {
        Ok(Some(u)) => Ok(Some(u)),
        _ => Err(NoServerUser),
    }
}
