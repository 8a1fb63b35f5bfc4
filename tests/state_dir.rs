//! One state per host (SPEC 9.7): commands typed in a shell use the daemon's state folder, see
//! its runs and share its job locks; root does not leave files there the daemon cannot open; a
//! user without access is told what to do. Real processes, real files, real users (`nobody`):
//! the tests run as root, as CI does.
//!
//! None of them depends on whether `/var/lib/runbook` exists on this machine (installing the
//! .deb creates it): one hands the folder over through `$STATE_DIRECTORY` (the daemon, as
//! systemd does) and `$RUNBOOK_STATE_DIR` (the shell); one runs daemon and shell in a private
//! mount namespace whose `/var/lib` holds only a `/var/lib/runbook` of its own; the others name
//! their `state_dir`.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;
use support::{text, wait_until_or};

const BIN: &str = env!("CARGO_BIN_EXE_runbook");

/// A command with a clean environment as far as runbook is concerned, run from `cwd`.
fn runbook(cwd: &Path, config: &Path) -> Command {
    let mut c = support::runbook_std(config, &[]);
    c.current_dir(cwd)
        .env_remove("RUNBOOK_STATE_DIR")
        .env_remove("STATE_DIRECTORY");
    c
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn shell_commands_see_the_daemons_runs_and_share_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let host_state = dir.path().join("var-lib-runbook");
    let daemon_cwd = dir.path().join("daemon-cwd");
    let shell_cwd = dir.path().join("shell-cwd");
    std::fs::create_dir_all(&daemon_cwd).unwrap();
    std::fs::create_dir_all(&shell_cwd).unwrap();
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // No state_dir: the default rule decides. The first run waits for `release`, holding the
    // job's lock; a Slack webhook nobody answers leaves an outbox entry.
    let config = dir.path().join("jobs.toml");
    std::fs::write(
        &config,
        format!(
            r#"[runbook]
shutdown_grace = "1s"

[notify.slack]
type = "slack"
webhook_url = {{ env = "TEST_WEBHOOK_URL" }}

[jobs.tick]
schedule = "*/2 * * * * *"

[[jobs.tick.items]]
name = "wait for release"
kind = "command"
argv = ["sh", "-c", "touch started; while [ ! -e release ]; do sleep 0.1; done"]
cwd = "{}"
timeout = "5m"
"#,
            dir.path().display()
        ),
    )
    .unwrap();
    let webhook = format!("http://127.0.0.1:{dead_port}/services/T0/B0/x");
    let log = dir.path().join("daemon.log");
    let daemon = Killed(
        runbook(&daemon_cwd, &config)
            .arg("daemon")
            .env("STATE_DIRECTORY", &host_state)
            .env("RUNBOOK_LOG", "info")
            .env("TEST_WEBHOOK_URL", &webhook)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let daemon_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until_or(
        "the daemon's first run to start",
        || dir.path().join("started").exists(),
        daemon_log,
    );

    let shell = |args: &[&str]| -> Output {
        runbook(&shell_cwd, &config)
            .args(args)
            .env("RUNBOOK_STATE_DIR", &host_state)
            .env("TEST_WEBHOOK_URL", &webhook)
            .output()
            .unwrap()
    };

    // A manual run from the shell finds the daemon's run holding the lock: exit 3.
    let out = shell(&["run-job", "tick", "--no-notify"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("already running"),
        "{}",
        text(&out.stderr)
    );

    // `history` shows the daemon's run while it runs.
    let out = shell(&["history", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let runs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        runs.as_array()
            .unwrap()
            .iter()
            .any(|r| r["status"] == "running" && r["trigger"] == "schedule"),
        "{runs}"
    );

    std::fs::write(dir.path().join("release"), "").unwrap();
    let finished = || {
        let out = shell(&["history", "--format", "json"]);
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r["status"] == "pass")
            .collect::<Vec<_>>()
    };
    wait_until_or(
        "a finished run in the shell's history",
        || !finished().is_empty(),
        daemon_log,
    );
    let run_id = finished()[0]["run_id"].as_str().unwrap().to_string();

    // `report` re-renders the daemon's stored report.
    let out = shell(&["report", &run_id, "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["run_id"], run_id.as_str());
    assert_eq!(report["trigger"], "schedule");

    // `outbox` lists the daemon's undelivered Slack messages.
    wait_until_or(
        "an outbox entry for slack",
        || {
            let out = shell(&["outbox", "--format", "json"]);
            serde_json::from_slice::<Value>(&out.stdout)
                .map(|v| {
                    v["entries"]
                        .as_array()
                        .is_some_and(|e| e.iter().any(|e| e["channel"] == "slack"))
                })
                .unwrap_or(false)
        },
        daemon_log,
    );

    // One state: nothing went to ./runbook-state on either side.
    assert!(host_state.join("state.db").exists());
    assert!(!daemon_cwd.join("runbook-state").exists());
    assert!(!shell_cwd.join("runbook-state").exists());
    drop(daemon);
}

/// A folder `nobody` may enter (tempdir makes 0700 ones) with a copy of the binary it may run.
struct Shared {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

fn shared_dir() -> Shared {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("runbook");
    std::fs::copy(BIN, &bin).unwrap();
    Shared { dir, bin }
}

fn nobody() -> nix::unistd::User {
    nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("the tests need the user `nobody` (Debian: part of base-passwd)")
}

fn as_nobody(bin: &Path, config: &Path, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(bin)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUNBOOK_STATE_DIR")
        .env_remove("STATE_DIRECTORY")
        .output()
        .expect("runuser (util-linux) is needed: apt-get install util-linux")
}

#[test]
fn root_runs_as_the_state_folders_owner_so_the_daemon_can_still_open_it() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test checks what root does"
    );
    let s = shared_dir();
    let nobody = nobody();
    let state = s.dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    nix::unistd::chown(&state, Some(nobody.uid), Some(nobody.gid)).unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let config = s.dir.path().join("jobs.toml");
    std::fs::write(
        &config,
        format!(
            "[runbook]\nstate_dir = {:?}\n\n[notify.archive]\ntype = \"file\"\ndir = {:?}\n\n[jobs.who]\n[[jobs.who.items]]\nname = \"whoami\"\nkind = \"command\"\nargv = [\"id\", \"-u\"]\n",
            state.display().to_string(),
            state.join("sent").display().to_string()
        ),
    )
    .unwrap();

    // notify-test as root creates the file notifier's folder inside the state folder: as the
    // owner, or the daemon could not write its reports there afterwards.
    let out = runbook(s.dir.path(), &config)
        .args(["notify-test"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = runbook(s.dir.path(), &config)
        .args(["run-job", "who", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let details = report["items"][0]["details"].to_string();
    assert!(
        details.contains(&nobody.uid.to_string()),
        "the item ran as the state folder's owner ({}): {details}",
        nobody.uid
    );
    // Every file runbook and SQLite made (the reports in sent/ too) belongs to the folder's
    // owner.
    let mut files = 0;
    let mut folders = vec![state.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            assert_eq!(
                meta.uid(),
                nobody.uid.as_raw(),
                "{} is owned by uid {}",
                entry.path().display(),
                meta.uid()
            );
            if meta.is_dir() {
                folders.push(entry.path());
            }
            files += 1;
        }
    }
    assert!(
        files >= 2 + 1 + 8,
        "state.db and its companions, sent/, two reports of 4 files: {files}"
    );

    // The folder's owner (the daemon's user) opens it afterwards and sees the run.
    let out = as_nobody(&s.bin, &config, &["history", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let runs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
}

#[test]
fn a_user_without_access_is_told_which_folder_and_what_to_do() {
    let s = shared_dir();
    let state = s.dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let config = s.dir.path().join("jobs.toml");
    std::fs::write(
        &config,
        format!(
            "[runbook]\nstate_dir = {:?}\n\n[jobs.j]\n[[jobs.j.items]]\nname = \"m\"\nkind = \"manual\"\n",
            state.display().to_string()
        ),
    )
    .unwrap();
    for args in [&["history"][..], &["run-job", "j"], &["outbox"]] {
        let out = as_nobody(&s.bin, &config, args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!("cannot use the state folder {}", state.display())),
            "{err}"
        );
        assert!(err.contains("as user nobody"), "{err}");
        assert!(
            err.contains("sudo -u root runbook") && err.contains("RUNBOOK_STATE_DIR"),
            "says what to do: {err}"
        );
    }
    assert!(std::fs::read_dir(&state).unwrap().next().is_none());
}

/// A private mount namespace in which `/var/lib` is an empty tmpfs holding only
/// `/var/lib/runbook` (owned by `nobody`, 0700: the packaged daemon's folder), so the test
/// exercises the real default path without touching the machine's. Commands enter it with
/// `nsenter`; dropping it ends it.
struct HostNamespace(Child);

impl HostNamespace {
    fn start() -> HostNamespace {
        use std::io::BufRead;
        let script = "mount -t tmpfs tmpfs /var/lib && mkdir -m 0700 /var/lib/runbook \
                      && chown nobody /var/lib/runbook && echo ready && exec sleep 3600";
        let mut child = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare (util-linux) is needed: apt-get install util-linux");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the namespace could not be set up");
        HostNamespace(child)
    }

    /// A command run inside the namespace.
    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("--target")
            .arg(self.0.id().to_string())
            .args(["--mount", "--"])
            .arg(program)
            .env_remove("RUNBOOK_CONFIG")
            .env_remove("RUNBOOK_STATE_DIR")
            .env_remove("STATE_DIRECTORY")
            .env_remove("RUNBOOK_LOG");
        c
    }

    /// The namespace's `/var/lib/runbook`, seen from outside.
    fn state(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root/var/lib/runbook", self.0.id()))
    }
}

impl Drop for HostNamespace {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn on_a_host_with_the_daemons_folder_a_root_shell_uses_it_without_any_setting() {
    let s = shared_dir();
    let nobody = nobody();
    let work = s.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    nix::unistd::chown(&work, Some(nobody.uid), Some(nobody.gid)).unwrap();
    let config = s.dir.path().join("jobs.toml");
    std::fs::write(
        &config,
        format!(
            r#"[runbook]
shutdown_grace = "1s"

[jobs.tick]
schedule = "*/2 * * * * *"

[[jobs.tick.items]]
name = "wait for release"
kind = "command"
argv = ["sh", "-c", "touch started; while [ ! -e release ]; do sleep 0.1; done"]
cwd = "{}"
timeout = "5m"
"#,
            work.display()
        ),
    )
    .unwrap();
    let ns = HostNamespace::start();
    // The daemon as the unit runs it: as its user, with $STATE_DIRECTORY from systemd.
    let log = s.dir.path().join("daemon.log");
    // setpriv execs (runuser would fork, and killing it would leave the daemon running), so
    // the process killed at the end is the daemon itself.
    let _daemon = Killed(
        ns.command(Path::new("setpriv"))
            .arg(format!("--reuid={}", nobody.uid))
            .arg(format!("--regid={}", nobody.gid))
            .args(["--clear-groups", "--"])
            .arg(&s.bin)
            .arg("--config")
            .arg(&config)
            .arg("daemon")
            .env("STATE_DIRECTORY", "/var/lib/runbook")
            .env("RUNBOOK_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let daemon_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until_or(
        "the daemon's first run to start",
        || work.join("started").exists(),
        daemon_log,
    );

    // root at a shell, in another folder, no variables: the daemon's folder is found.
    let shell_cwd = tempfile::tempdir().unwrap();
    let shell = |args: &[&str]| -> Output {
        ns.command(&s.bin)
            .current_dir(shell_cwd.path())
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    let out = shell(&["check-config"]);
    assert!(
        text(&out.stdout)
            .contains("state: /var/lib/runbook (the daemon's state folder on this host)"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = shell(&["run-job", "tick", "--no-notify"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let out = shell(&["history", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let runs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        runs.as_array()
            .unwrap()
            .iter()
            .any(|r| r["status"] == "running" && r["trigger"] == "schedule"),
        "{runs}"
    );
    std::fs::write(work.join("release"), "").unwrap();
    wait_until_or(
        "the shell to see a finished run",
        || {
            let out = shell(&["report", "last", "--job", "tick", "--format", "json"]);
            out.status.success()
                && serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|r| r["status"] == "pass")
        },
        daemon_log,
    );

    // Everything in the daemon's folder is still the daemon's user's: root left nothing.
    for entry in std::fs::read_dir(ns.state()).unwrap() {
        let entry = entry.unwrap();
        assert_eq!(
            entry.metadata().unwrap().uid(),
            nobody.uid.as_raw(),
            "{} belongs to uid {}",
            entry.file_name().to_string_lossy(),
            entry.metadata().unwrap().uid()
        );
    }
    assert!(!shell_cwd.path().join("runbook-state").exists());
}
