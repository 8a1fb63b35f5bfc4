//! A real `runbook daemon` process, and the CLI commands tests read its work back with
//! (`history`, `report`).

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use super::{PATIENCE, runbook_std};

/// A daemon process (`RUNBOOK_LOG=info`, its log in a file beside the config); killed when
/// dropped so a failing test leaks nothing.
pub struct Daemon {
    child: Child,
    /// Its log file (for a closure that reads it while the daemon is borrowed mutably).
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(config: &Path) -> Daemon {
        Daemon::spawn(config, None)
    }

    /// With `FAILPOINTS` set to `failpoints` (a build with the `failpoints` feature).
    pub fn with_failpoints(config: &Path, failpoints: &str) -> Daemon {
        Daemon::spawn(config, Some(failpoints))
    }

    fn spawn(config: &Path, failpoints: Option<&str>) -> Daemon {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let log = config.with_extension(format!("{n}.log"));
        let mut cmd = runbook_std(config, &["daemon"]);
        cmd.env("RUNBOOK_LOG", "info")
            .env_remove("FAILPOINTS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the daemon's log"));
        if let Some(f) = failpoints {
            cmd.env("FAILPOINTS", f);
        }
        Daemon {
            child: cmd.spawn().expect("cannot start the daemon"),
            log,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, s: Signal) {
        kill(self.pid(), s).expect("cannot signal the daemon");
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the daemon did not exit; log:\n{}", self.log());
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn exited(&mut self) -> bool {
        !self.alive()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `runbook --config CONFIG ARGS` (without `FAILPOINTS`): its stdout as JSON; panics when
/// it fails.
fn cli_json(config: &Path, args: &[&str]) -> Value {
    let out = runbook_std(config, args)
        .env_remove("FAILPOINTS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `runbook history -n 1000 --format json` of `config` (newest first).
pub fn history(config: &Path) -> Vec<Value> {
    cli_json(config, &["history", "-n", "1000", "--format", "json"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// `runbook report RUN_ID --format json` of `config`.
pub fn report(config: &Path, run_id: &str) -> Value {
    cli_json(config, &["report", run_id, "--format", "json"])
}
