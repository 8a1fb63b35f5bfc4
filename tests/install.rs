//! The installed layout, without dpkg: `scripts/install` (the from-source path, which reads the
//! Debian package's own asset list from Cargo.toml) stages the files into a temporary root, and
//! the staged binary checks the staged `/etc/runbook/jobs.toml` as a new host would.
//! `scripts/test-package` does the same with the real package and dpkg (as root, in .ci/run).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Where the test binary's build put the runbook binary and build.rs's assets/.
fn build_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_runbook"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs scripts/install into a fresh staging root.
fn stage(prefix: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install"))
        .env("DESTDIR", root.path())
        .env("PREFIX", prefix)
        .env("RUNBOOK_BUILD_DIR", build_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/install failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    root
}

fn files(root: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, root, out);
            } else {
                out.insert(format!("/{}", p.strip_prefix(root).unwrap().display()));
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// The staged binary on the staged config, in an environment without any secret.
fn runbook(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(root.join("usr/bin/runbook"));
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .arg("--config")
        .arg(root.join("etc/runbook/jobs.toml"))
        .args(args)
        .envs(env.iter().copied());
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A daemon that starts although its secrets are missing would never exit: stop it after a
    // minute so the assertion below reports it (this bounds the test; it times nothing).
    for _ in 0..600 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if child.try_wait().unwrap().is_none() {
        child.kill().unwrap();
    }
    child.wait_with_output().unwrap()
}

/// The three secrets of the shipped jobs.toml, and nothing else, are reported; exit 2.
fn assert_only_missing_secrets(what: &str, out: &Output, config: &Path) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{what}: {err}");
    assert!(
        out.stdout.is_empty(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let lines: Vec<&str> = err.lines().collect();
    let located = format!("{}:", config.display());
    let errors: Vec<&&str> = lines.iter().filter(|l| l.starts_with(&located)).collect();
    assert_eq!(errors.len(), 3, "{what}: {err}");
    for needle in [
        "targets.trading.password: environment variable TRADING_DB_PASSWORD is not set",
        "notify.oncall-email.password: cannot read secret file",
        "notify.slack.webhook_url: environment variable SLACK_WEBHOOK_URL is not set",
    ] {
        assert!(
            errors.iter().any(|l| l.contains(needle)),
            "{what}: no {needle:?} in {err}"
        );
    }
    assert_eq!(
        lines.len(),
        4,
        "{what}: only the three errors and the summary: {err}"
    );
    assert_eq!(
        lines[3],
        format!(
            "runbook: 3 configuration errors in {}; nothing ran",
            config.display()
        )
    );
}

#[test]
fn install_stages_the_package_file_list_with_its_modes() {
    let root = stage("/usr");
    let got = files(root.path());
    for f in [
        "/usr/bin/runbook",
        "/etc/runbook/jobs.toml",
        "/etc/runbook/sql/indexes.sql",
        "/etc/runbook/scripts/disaster-recovery/test-application-rollback.sh",
        "/usr/lib/systemd/system/runbook.service",
        "/usr/lib/sysusers.d/runbook.conf",
        "/usr/lib/tmpfiles.d/runbook.conf",
        "/usr/share/bash-completion/completions/runbook",
        "/usr/share/zsh/vendor-completions/_runbook",
        "/usr/share/fish/vendor_completions.d/runbook.fish",
        "/usr/share/man/man1/runbook.1.gz",
        "/usr/share/man/man1/runbook-check-config.1.gz",
        "/usr/share/man/man1/runbook-run-job.1.gz",
        "/usr/share/man/man1/runbook-ack.1.gz",
        "/usr/share/man/man1/runbook-trend.1.gz",
        "/usr/share/doc/runbook/README.md",
        "/usr/share/doc/runbook/docs/daemon.md",
        "/usr/share/doc/runbook/examples/alerts.yml",
    ] {
        assert!(got.contains(f), "{f} not installed; installed: {got:#?}");
    }
    let r = root.path();
    assert_eq!(mode(&r.join("usr/bin/runbook")), 0o755);
    assert_eq!(mode(&r.join("etc/runbook")), 0o750);
    assert_eq!(mode(&r.join("etc/runbook/jobs.toml")), 0o640);
    assert_eq!(mode(&r.join("etc/runbook/sql")), 0o750);
    assert_eq!(mode(&r.join("etc/runbook/sql/indexes.sql")), 0o640);
    assert_eq!(
        mode(&r.join("etc/runbook/scripts/disaster-recovery/test-application-rollback.sh")),
        0o750
    );
    let unit = std::fs::read_to_string(r.join("usr/lib/systemd/system/runbook.service")).unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/bin/runbook --config /etc/runbook/jobs.toml daemon\n"),
        "{unit}"
    );

    // The completions and man pages come from the clap definitions: they know every subcommand.
    let bash =
        std::fs::read_to_string(r.join("usr/share/bash-completion/completions/runbook")).unwrap();
    for sub in [
        "daemon",
        "run-job",
        "check-config",
        "history",
        "outbox",
        "notify-test",
        "trend",
        "ack",
    ] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    let mut man = String::new();
    use std::io::Read;
    flate2::read::GzDecoder::new(
        std::fs::File::open(r.join("usr/share/man/man1/runbook.1.gz")).unwrap(),
    )
    .read_to_string(&mut man)
    .unwrap();
    assert!(
        man.contains("runbook\\-check\\-config(1)") || man.contains("runbook-check-config(1)"),
        "{man}"
    );
}

#[test]
fn local_prefix_install_points_the_unit_at_its_binary() {
    let root = stage("/usr/local");
    let r = root.path();
    assert!(r.join("usr/local/bin/runbook").is_file());
    assert!(
        r.join("usr/local/share/zsh/site-functions/_runbook")
            .is_file()
    );
    let unit =
        std::fs::read_to_string(r.join("usr/local/lib/systemd/system/runbook.service")).unwrap();
    assert!(
        unit.contains(
            "\nExecStart=/usr/local/bin/runbook --config /etc/runbook/jobs.toml daemon\n"
        ),
        "{unit}"
    );
    assert!(
        unit.contains(
            "\nExecReload=/usr/local/bin/runbook --config /etc/runbook/jobs.toml check-config\n"
        ),
        "{unit}"
    );
    assert!(!unit.contains("/usr/bin/runbook"), "{unit}");
}

#[test]
fn installed_config_lacks_only_its_secrets() {
    let root = stage("/usr");
    let r = root.path();
    let config = r.join("etc/runbook/jobs.toml");

    let out = runbook(r, &["check-config"], &[]);
    assert_only_missing_secrets("check-config", &out, &config);
    let out = runbook(r, &["daemon"], &[]);
    assert_only_missing_secrets("daemon", &out, &config);

    // With the secrets provided, the configuration is complete: what may remain are warnings
    // about the host's own state (the backup folder, before the first backup).
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("smtp"), "smtp-password\n").unwrap();
    let out = runbook(
        r,
        &["check-config"],
        &[
            ("TRADING_DB_PASSWORD", "db-password"),
            ("SLACK_WEBHOOK_URL", "https://hooks.example/services/T/B/x"),
            ("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap()),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in stdout.lines().filter(|l| l.starts_with("warning:")) {
        assert!(
            line.ends_with("backup folder /var/backups/postgresql/full does not exist (yet)"),
            "unexpected warning on a fresh install: {line}"
        );
    }
}

#[test]
fn missing_dr_script_is_named_by_check_config() {
    let root = stage("/usr");
    let r = root.path();
    std::fs::remove_file(
        r.join("etc/runbook/scripts/disaster-recovery/test-application-rollback.sh"),
    )
    .unwrap();
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("smtp"), "smtp-password\n").unwrap();
    let out = runbook(
        r,
        &["check-config"],
        &[
            ("TRADING_DB_PASSWORD", "db-password"),
            ("SLACK_WEBHOOK_URL", "https://hooks.example/services/T/B/x"),
            ("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap()),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            l.starts_with("warning:")
                && l.contains("program ./scripts/disaster-recovery/test-application-rollback.sh")
                && l.ends_with("does not exist (yet)")
        })
        .collect();
    // The monthly job and the monthly-dr job both run it.
    assert_eq!(missing.len(), 2, "{stdout}");
    assert!(missing[0].contains("job \"monthly\""), "{stdout}");
}
