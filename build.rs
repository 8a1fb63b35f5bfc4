//! Build script. Two jobs:
//!
//! 1. Records the git commit the binary was built from, for `runbook --version` and the
//!    `runbook_build_info` metric. Outside a git checkout (a source tarball) it says `unknown`;
//!    `RUNBOOK_GIT_COMMIT` in the build environment overrides it (packagers building from a
//!    tarball).
//! 2. Generates the shell completions (bash, zsh, fish) and the man pages from the clap
//!    definitions themselves (`src/face/cli/args.rs`, included below), so they can never disagree
//!    with the binary. They are written to `assets/` in the profile's folder (`target/release/
//!    assets/` for `cargo build --release` and `cargo deb`), where `Cargo.toml`'s
//!    `[package.metadata.deb]` assets and `scripts/install` pick them up.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

#[allow(dead_code)]
mod cli {
    include!("src/face/cli/args.rs");
}

fn main() {
    println!("cargo:rerun-if-env-changed=RUNBOOK_GIT_COMMIT");
    // Rebuild when HEAD moves (a commit, a checkout). `.git` is a folder in a clone but a file
    // in a worktree, so git says where HEAD and the refs are; only paths that exist are
    // watched (cargo reruns a build script on every build while a watched path is missing).
    for what in ["HEAD", "refs/heads", "packed-refs"] {
        if let Some(path) = git_path(what).filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    let commit = std::env::var("RUNBOOK_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(git_commit);
    println!(
        "cargo:rustc-env=RUNBOOK_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );

    println!("cargo:rerun-if-changed=src/face/cli/args.rs");
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
    // runbook(1) again, with the sections a reader of the top page looks for.
    let top = clap_mangen::Man::new(cli::Cli::command().disable_help_subcommand(true));
    let mut page = Vec::new();
    top.render_title(&mut page)?;
    top.render_name_section(&mut page)?;
    top.render_synopsis_section(&mut page)?;
    top.render_description_section(&mut page)?;
    top.render_options_section(&mut page)?;
    top.render_subcommands_section(&mut page)?;
    page.extend_from_slice(MAN_EXTRA.as_bytes());
    top.render_version_section(&mut page)?;
    std::fs::write(tmp.join("runbook.1"), page)?;
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

/// Sections of runbook(1) that clap does not describe (SPEC section 1; README "Install").
const MAN_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
0
The job ran and no item failed (warnings allowed unless \fB\-\-strict\fR); any other command succeeded.
.TP
1
The job ran and at least one item failed (or warned, with \fB\-\-strict\fR).
.TP
2
Configuration or usage error: nothing ran. The message names the file, line and column, or the job and item.
.TP
3
Another run of the same job holds its lock: nothing ran.
.SH ENVIRONMENT
.TP
\fBRUNBOOK_CONFIG\fR
The config file when \fB\-\-config\fR is not given.
.TP
\fBRUNBOOK_LOG\fR
Log level filter (default: info for the daemon, warn otherwise).
.TP
\fBSTATE_DIRECTORY\fR
Default state folder (systemd's StateDirectory=).
.TP
\fBCREDENTIALS_DIRECTORY\fR
Where relative \fB{ file = "NAME" }\fR secrets are looked up first (systemd's LoadCredential=).
.SH FILES
.TP
\fI/etc/runbook/jobs.toml\fR
The configuration; relative paths in it (sql/, scripts/) are relative to its folder.
.TP
\fI/etc/runbook/env\fR, \fI/etc/runbook/credentials/\fR
The service's secrets (root only), handed over by systemd.
.TP
\fI/var/lib/runbook\fR
The state: runs, reports, locks, the outbox.
.TP
\fI/usr/share/doc/runbook/\fR
README.md and docs/: configuration, checks, backups, the daemon.
.SH "SEE ALSO"
\fBsystemctl\fR(1), \fBsystemd.exec\fR(5); the unit runbook.service
"#;

fn tempdir_in(dir: &Path) -> std::io::Result<PathBuf> {
    let tmp = dir.join(".man-tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    Ok(tmp)
}

fn git_path(what: &str) -> Option<PathBuf> {
    let out = Command::new("git")
        .args(["rev-parse", "--git-path", what])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!path.is_empty()).then(|| PathBuf::from(path))
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
