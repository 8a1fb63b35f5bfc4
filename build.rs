//! Build script: records the git commit the binary was built from, for `runbook --version` and
//! the `runbook_build_info` metric. Outside a git checkout (a source tarball) it says `unknown`;
//! `RUNBOOK_GIT_COMMIT` in the build environment overrides it (packagers building from a tarball).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=RUNBOOK_GIT_COMMIT");
    // Rebuild when HEAD moves (a commit, a checkout). Both files may be absent outside git.
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let commit = std::env::var("RUNBOOK_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(git_commit);
    println!(
        "cargo:rustc-env=RUNBOOK_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
}

fn git_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_string();
    if commit.is_empty() {
        return None;
    }
    // A checkout with uncommitted changes says so, as `git describe --dirty` does.
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| o.status.success() && !o.stdout.is_empty())
        .unwrap_or(false);
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}
