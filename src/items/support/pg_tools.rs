//! PostgreSQL's client tools (`pg_restore`, `psql`) run the careful way: no shell, a clean
//! environment, their own process group ([`super::process`]), a deadline, interrupted when the
//! run is cancelled; the last lines of stderr kept for the report.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, BufReader};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::process::{End, ProcessGroup};

pub use crate::base::pgbin::pg_tool;

/// How a child process ended.
#[derive(Debug)]
pub enum ToolEnd {
    Exited(std::process::ExitStatus),
    TimedOut,
    Cancelled,
    SpawnFailed(String),
}

/// The result of [`run_tool`].
#[derive(Debug)]
pub struct ToolRun {
    pub end: ToolEnd,
    /// The last lines of stderr.
    pub stderr_tail: Vec<String>,
    /// Stdout lines, when asked for.
    pub stdout: Vec<String>,
}

impl ToolRun {
    pub fn ok(&self) -> bool {
        matches!(&self.end, ToolEnd::Exited(s) if s.success())
    }

    /// One line saying why it failed (the last stderr lines included).
    pub fn failure(&self, what: &str) -> String {
        let why = match &self.end {
            ToolEnd::Exited(s) => match s.code() {
                Some(c) => format!("exited with code {c}"),
                None => "was killed by a signal".into(),
            },
            ToolEnd::TimedOut => "timed out".into(),
            ToolEnd::Cancelled => "was interrupted".into(),
            ToolEnd::SpawnFailed(e) => return format!("cannot run {what}: {e}"),
        };
        let last = self
            .stderr_tail
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .cloned()
            .unwrap_or_default();
        if last.is_empty() {
            format!("{what} {why}")
        } else {
            format!("{what} {why}: {last}")
        }
    }
}

/// Runs a prepared command (no shell) in its own process group until it exits, `deadline`
/// passes or `cancel` fires (then the group gets SIGTERM, and SIGKILL 3 s later). Keeps the last
/// `tail` stderr lines, and all stdout lines when `keep_stdout`.
pub async fn run_tool(
    cmd: tokio::process::Command,
    deadline: Instant,
    cancel: &CancellationToken,
    keep_stdout: bool,
) -> ToolRun {
    run_tool_with_input(cmd, deadline, cancel, keep_stdout, None).await
}

/// [`run_tool`], with `input` chunks written to the tool's stdin (closed when the sender is done).
pub async fn run_tool_with_input(
    mut cmd: tokio::process::Command,
    deadline: Instant,
    cancel: &CancellationToken,
    keep_stdout: bool,
    input: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
) -> ToolRun {
    // A clean environment: the caller's own PG* variables stay, the daemon's secrets do not.
    crate::items::child_env::clean(cmd.as_std_mut(), crate::items::child_env::Child::PgTool);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(if keep_stdout {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stderr(Stdio::piped());
    let mut group = match ProcessGroup::spawn(&mut cmd) {
        Ok(g) => g,
        Err(e) => {
            let prog = cmd.as_std().get_program().to_string_lossy().into_owned();
            return ToolRun {
                end: ToolEnd::SpawnFailed(format!("{prog}: {e}")),
                stderr_tail: vec![],
                stdout: vec![],
            };
        }
    };
    let writer = match (input, group.child.stdin.take()) {
        (Some(mut rx), Some(mut stdin)) => Some(tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Some(chunk) = rx.recv().await {
                if stdin.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            let _ = stdin.shutdown().await;
        })),
        _ => None,
    };
    let stderr = tokio::spawn(collect_lines(group.child.stderr.take(), Some(20)));
    let stdout = tokio::spawn(collect_lines(group.child.stdout.take(), None));
    let end = match group.wait(deadline, cancel, Duration::from_secs(3)).await {
        End::Exited(s) => ToolEnd::Exited(s),
        End::WaitFailed(e) => ToolEnd::SpawnFailed(e.to_string()),
        End::TimedOut => ToolEnd::TimedOut,
        End::Cancelled => ToolEnd::Cancelled,
    };
    if let Some(w) = writer {
        w.abort();
    }
    // Whatever the tool left running in its group (pg_restore -j workers) goes with it.
    group.kill_group();
    let stderr_tail = tokio::time::timeout(Duration::from_secs(2), stderr)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    let stdout = tokio::time::timeout(Duration::from_secs(2), stdout)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    ToolRun {
        end,
        stderr_tail,
        stdout: if keep_stdout { stdout } else { vec![] },
    }
}

/// Stderr/stdout lines of a tool (the last `keep_last`, or all), each cut at 64 KiB while
/// reading and marked when cut. The last lines (stderr, shown in reports) are shortened to 500
/// characters; all lines (stdout, parsed) are kept as read.
async fn collect_lines(r: Option<impl AsyncRead + Unpin>, keep_last: Option<usize>) -> Vec<String> {
    let Some(r) = r else { return vec![] };
    let (lines, _) = crate::base::bounded::tail_lines(BufReader::new(r), keep_last).await;
    if keep_last.is_none() {
        return lines;
    }
    lines
        .iter()
        .map(|l| crate::base::bounded::shorten(l, 500))
        .collect()
}
