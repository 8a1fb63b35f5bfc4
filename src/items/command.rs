//! `command`: runs a program (argv, no shell) and passes when it exits with an allowed code.
//!
//! The program runs in its own process group. On timeout or cancellation the whole group gets
//! SIGTERM, then SIGKILL 5 s later, so a script's children do not outlive it. After the program
//! exits, anything it left running in its group is killed too (a leftover holding our pipes
//! would otherwise stall the run). It gets a clean environment ([`super::child_env`]): none of
//! the daemon's variables but `PATH`, `HOME`, the locale and a few more, plus the run's
//! `RUNBOOK_*` variables and the item's `env`. Secrets it prints are `[redacted]` in the report.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::Deserialize;
use tokio::io::{AsyncRead, BufReader};

use super::support::process::{End, ProcessGroup};
use super::{ItemCtx, Outcome, Prepare};
use crate::base::bounded::{CappedLines, LINE_CAP, lines_cut_text};

/// Options of `kind = "command"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Program and arguments. Run directly, never through a shell.
    pub argv: Vec<String>,
    /// Working folder. Default: the config file's folder.
    pub cwd: Option<PathBuf>,
    /// Environment variables for the program, on top of its clean environment (`PATH`,
    /// `HOME`, `LANG`, `LC_*`, `TZ`, `TMPDIR`, `USER`, `LOGNAME` and the `RUNBOOK_*` variables
    /// of the run; nothing else of the daemon's). A value is a string, or a secret:
    /// `{ env = "VAR" }` (the daemon's variable VAR) or `{ file = "PATH" }`.
    #[serde(default)]
    pub env: BTreeMap<String, crate::base::secret::SecretSource>,
    /// `env` with its values resolved by `prepare` (never printed).
    #[serde(skip)]
    pub resolved_env: Vec<(String, crate::base::secret::Secret)>,
    /// How many of the last output lines (stdout and stderr) go into the report. Default 20.
    #[serde(default = "default_output_lines")]
    pub output_lines: usize,
    /// True when the command changes nothing: it then also runs under `--dry-run`.
    #[serde(default)]
    pub read_only: bool,
    /// Exit codes that count as success. Default `[0]`.
    #[serde(default = "default_ok_codes")]
    pub ok_codes: Vec<i32>,
}

fn default_output_lines() -> usize {
    20
}
fn default_ok_codes() -> Vec<i32> {
    vec![0]
}

/// Quotes one argument for display (the plan and the report), the way a shell user reads it.
pub fn display_arg(a: &str) -> String {
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

impl Command {
    pub fn prepare(&mut self, p: &mut Prepare) {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            p.error(
                "argv",
                "argv must name a program: argv = [\"/path/to/program\", \"arg\"]",
            );
        }
        // A program given as a path (`./scripts/x.sh`, relative to the config's folder) is
        // looked at now, so a script left out of an install is found by `check-config`, not on
        // the first Monday of the month. A warning, not an error: it may be deployed later.
        if let Some(argv0) = self.argv.first().filter(|a| a.contains('/')) {
            // `components()` drops the `.` of `./scripts/...` for the message.
            let program: PathBuf = p.path(Path::new(argv0)).components().collect();
            match std::fs::metadata(&program) {
                Err(_) => p.warning(format!(
                    "program {argv0} ({}) does not exist (yet)",
                    program.display()
                )),
                Ok(m) if !m.is_file() || m.permissions().mode() & 0o111 == 0 => p.warning(format!(
                    "program {argv0} ({}) is not an executable file",
                    program.display()
                )),
                Ok(_) => {}
            }
        }
        if let Some(cwd) = &self.cwd {
            let dir = p.path(cwd);
            if !dir.is_dir() {
                p.warning(format!("cwd {} does not exist (yet)", dir.display()));
            }
        }
        if self.ok_codes.is_empty() {
            p.error("ok_codes", "ok_codes must list at least one exit code");
        }
        self.resolved_env.clear();
        for (name, source) in &self.env {
            if name.is_empty() || name.contains(['=', '\0']) {
                p.error("env", format!("invalid environment variable name {name:?}"));
                continue;
            }
            // A plain string is an ordinary value, not a secret: no "written inline" warning.
            match crate::base::secret::Secret::resolve(source, &format!("env.{name}"), p.config_dir)
            {
                Ok(value) => self.resolved_env.push((name.clone(), value)),
                Err(m) => p.error("env", m),
            }
        }
    }

    /// The `env` values read from the environment or a file: secrets.
    pub fn secrets(&self) -> Vec<&crate::base::secret::Secret> {
        self.resolved_env
            .iter()
            .filter(|(_, v)| !v.inline)
            .map(|(_, v)| v)
            .collect()
    }

    fn command_line(&self) -> String {
        self.argv
            .iter()
            .map(|a| display_arg(a))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub async fn run(&self, ctx: &ItemCtx) -> Outcome {
        let line = self.command_line();
        let cwd = self
            .cwd
            .as_deref()
            .map(|c| ctx.path(c))
            .unwrap_or_else(|| ctx.config_dir.clone());
        if ctx.dry_run && !self.read_only {
            return Outcome::skipped(format!("dry run: would run `{line}`"))
                .detail(format!("command: {line}"))
                .detail(format!("cwd: {}", cwd.display()))
                .with_data(serde_json::json!({ "argv": self.argv, "cwd": cwd, "planned": true }));
        }
        let program = if self.argv[0].contains('/') {
            ctx.path(std::path::Path::new(&self.argv[0]))
        } else {
            PathBuf::from(&self.argv[0])
        };
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&self.argv[1..])
            .current_dir(&cwd)
            .env("RUNBOOK_JOB", &ctx.job)
            .env("RUNBOOK_RUN_ID", &ctx.run_id)
            .env("RUNBOOK_TRIGGER", ctx.trigger.as_str())
            .env(
                "RUNBOOK_SCHEDULED_FOR",
                ctx.scheduled_for.as_deref().unwrap_or(""),
            )
            .envs(self.resolved_env.iter().map(|(k, v)| (k, v.expose())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        super::child_env::clean(cmd.as_std_mut(), super::child_env::Child::Command);
        // A daemon killed with SIGKILL cannot kill its children: the program would run on
        // (beside the run another cluster node takes over). The kernel kills it instead.
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Some(Signal::SIGKILL)).map_err(std::io::Error::from)
            });
        }
        let started = Instant::now();
        let mut group = match ProcessGroup::spawn(&mut cmd) {
            Ok(g) => g,
            Err(e) => {
                return Outcome::fail(format!("cannot start `{}`: {e}", self.argv[0]))
                    .detail(format!("command: {line}"))
                    .detail(format!("cwd: {}", cwd.display()));
            }
        };
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(self.output_lines + 1)));
        let readers = [
            tokio::spawn(collect(
                group.child.stdout.take(),
                tail.clone(),
                self.output_lines,
                ctx.redactor.clone(),
            )),
            tokio::spawn(collect(
                group.child.stderr.take(),
                tail.clone(),
                self.output_lines,
                ctx.redactor.clone(),
            )),
        ];
        let end = group
            .wait(ctx.deadline, &ctx.cancel, Duration::from_secs(5))
            .await;
        // Whatever the program left in its group would hold our pipes open: give output a moment
        // to drain, then end the group.
        let mut lines_cut = 0;
        for r in readers {
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), r).await {
                lines_cut += n;
            }
        }
        group.kill_group();
        let elapsed = started.elapsed();
        let output: Vec<String> = tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default();
        let mut details = vec![format!("command: {line}")];
        if !output.is_empty() {
            details.push(format!(
                "last {} line{} of output:",
                output.len(),
                if output.len() == 1 { "" } else { "s" }
            ));
            details.extend(output.iter().map(|l| format!("  {l}")));
        }
        if lines_cut > 0 {
            details.push(format!("output: {}", lines_cut_text(lines_cut)));
        }
        let secs = format!("{:.1}s", elapsed.as_secs_f64());
        match end {
            End::Cancelled => Outcome::fail(format!("interrupted after {secs}; process group killed"))
                .with_details(details)
                .with_data(serde_json::json!({ "argv": self.argv, "exit_code": null, "interrupted": true, "output": output, "lines_cut": lines_cut })),
            End::TimedOut => Outcome::fail(format!("timed out after {secs}; process group killed"))
                .with_details(details)
                .with_data(serde_json::json!({ "argv": self.argv, "exit_code": null, "timed_out": true, "output": output, "lines_cut": lines_cut })),
            End::WaitFailed(e) => Outcome::fail(format!("waiting for `{}` failed: {e}", self.argv[0])).with_details(details),
            End::Exited(st) => {
                use std::os::unix::process::ExitStatusExt;
                let data = serde_json::json!({ "argv": self.argv, "exit_code": st.code(), "signal": st.signal(), "seconds": elapsed.as_secs_f64(), "output": output, "lines_cut": lines_cut });
                match st.code() {
                    Some(code) if self.ok_codes.contains(&code) => {
                        let last = output.last().map(|l| format!(": {}", truncate(l, 120))).unwrap_or_default();
                        Outcome::pass(format!("exit {code} in {secs}{last}")).with_details(details).with_data(data)
                    }
                    Some(code) => Outcome::fail(format!("exit {code} in {secs}")).with_details(details).with_data(data),
                    None => Outcome::fail(format!("killed by signal {} after {secs}", st.signal().unwrap_or(0))).with_details(details).with_data(data),
                }
            }
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

/// Keeps the last `keep` lines of a stream in `tail` (each cut at [`LINE_CAP`] bytes while
/// reading, shown up to 500 characters); returns how many lines were cut.
async fn collect(
    stream: Option<impl AsyncRead + Unpin>,
    tail: Arc<Mutex<VecDeque<String>>>,
    keep: usize,
    redactor: crate::base::secret::Redactor,
) -> u64 {
    let Some(stream) = stream else { return 0 };
    let mut lines = CappedLines::new(BufReader::new(stream), LINE_CAP);
    while let Ok(Some((bytes, _))) = lines.next_line().await {
        if keep == 0 {
            continue;
        }
        // Secrets are hidden before the line is shortened, so no part of one survives the cut.
        let line = redactor
            .redact(&String::from_utf8_lossy(bytes))
            .into_owned();
        if let Ok(mut t) = tail.lock() {
            if t.len() == keep {
                t.pop_front();
            }
            t.push_back(truncate(&line, 500));
        }
    }
    lines.lines_cut()
}
