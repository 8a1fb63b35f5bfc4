//! Build script. Two jobs:
//!
//! 1. Records the git commit the binary was built from, for `runbook --version` and the
//!    `runbook_build_info` metric. Outside a git checkout (a source tarball) it says `unknown`;
//!    `RUNBOOK_GIT_COMMIT` in the build environment overrides it (packagers building from a
//!    tarball).
//! 2. Generates the shell completions (bash, zsh, fish) and the man pages from the clap
//!    definitions themselves (`src/cli/args.rs`, included below), so they can never disagree
//!    with the binary. They are written to `assets/` in the profile's folder (`target/release/
//!    assets/` for `cargo build --release` and `cargo deb`), where `Cargo.toml`'s
//!    `[package.metadata.deb]` assets and `scripts/install` pick them up.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

#[allow(dead_code)]
mod cli {
    include!("src/cli/args.rs");
}

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

    println!("cargo:rerun-if-changed=src/cli/args.rs");
    println!("cargo:rerun-if-changed=build.rs");
    let assets = assets_dir();
    if let Err(e) = write_assets(&assets) {
        panic!(
            "cannot write completions and man pages to {}: {e}",
            assets.display()
        );
    }
}

/// `<target>/<profile>/assets`: three levels above `OUT_DIR`
/// (`<target>/<profile>/build/runbook-<hash>/out`). cargo-deb maps its `target/release/` asset
/// prefix to the same folder, whatever `CARGO_TARGET_DIR` or `--target` say.
fn assets_dir() -> PathBuf {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    out.ancestors()
        .nth(3)
        .expect("OUT_DIR is <target>/<profile>/build/<pkg>/out")
        .join("assets")
}

fn write_assets(dir: &Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    use clap_complete::Shell;

    let completions = dir.join("completions");
    let man = dir.join("man");
    std::fs::create_dir_all(&completions)?;
    std::fs::create_dir_all(&man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = cli::Cli::command();
        clap_complete::generate_to(shell, &mut cmd, "runbook", &completions)?;
    }
    // runbook.1 and one page per subcommand (runbook-run-job.1, ...), gzipped as Debian wants
    // them; the gzip header carries no time stamp, so the output is reproducible.
    let tmp = tempdir_in(dir)?;
    clap_mangen::generate_to(cli::Cli::command(), &tmp)?;
    for entry in std::fs::read_dir(&tmp)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        let page = std::fs::read(&path)?;
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(man.join(format!("{name}.gz")))?,
            flate2::Compression::best(),
        );
        gz.write_all(&page)?;
        gz.finish()?;
    }
    std::fs::remove_dir_all(&tmp)
}

fn tempdir_in(dir: &Path) -> std::io::Result<PathBuf> {
    let tmp = dir.join(".man-tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    Ok(tmp)
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
