//! A child process in a process group of its own, stopped as a whole: on a deadline or
//! cancellation the group gets SIGTERM, then SIGKILL after a grace period; after the child
//! exits, whatever it left running in its group (a script's children, `pg_restore -j`'s
//! workers) is killed so it cannot hold our pipes or outlive the run; and if the future running
//! it is dropped midway, the group is killed too. `command` and the PostgreSQL client tools
//! ([`super::pg_tools`]) run their children through it.

use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How a child in a [`ProcessGroup`] ended.
#[derive(Debug)]
pub enum End {
    Exited(std::process::ExitStatus),
    /// The deadline passed: the group was stopped.
    TimedOut,
    /// The cancellation token fired: the group was stopped.
    Cancelled,
    /// Waiting for the child failed (the OS refused `waitpid`).
    WaitFailed(std::io::Error),
}

/// A running child, the leader of its own process group.
pub struct ProcessGroup {
    /// The child, for its pipes and its exit status.
    pub child: Child,
    /// The group to kill; taken (`None`) once killed, so a pid reused later is never signalled.
    pgid: Option<Pid>,
}

impl ProcessGroup {
    /// Starts `cmd` (no shell) as the leader of a new process group, killed if dropped.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<ProcessGroup> {
        cmd.process_group(0).kill_on_drop(true);
        let child = cmd.spawn()?;
        let pgid = child.id().map(|p| Pid::from_raw(p as i32));
        Ok(ProcessGroup { child, pgid })
    }

    /// Waits until the child exits, `deadline` passes or `cancel` fires. In the last two cases
    /// the group gets SIGTERM, and SIGKILL when the child has not exited `grace` later.
    pub async fn wait(
        &mut self,
        deadline: Instant,
        cancel: &CancellationToken,
        grace: Duration,
    ) -> End {
        let end = tokio::select! {
            biased;
            r = self.child.wait() => match r {
                Ok(s) => End::Exited(s),
                Err(e) => End::WaitFailed(e),
            },
            _ = tokio::time::sleep_until(deadline) => End::TimedOut,
            _ = cancel.cancelled() => End::Cancelled,
        };
        if matches!(end, End::TimedOut | End::Cancelled) {
            self.signal(Signal::SIGTERM);
            if tokio::time::timeout(grace, self.child.wait())
                .await
                .is_err()
            {
                self.signal(Signal::SIGKILL);
                let _ = self.child.wait().await;
            }
        }
        end
    }

    /// Kills whatever is still running in the group (after the leader has exited).
    pub fn kill_group(&mut self) {
        if let Some(pg) = self.pgid.take() {
            let _ = killpg(pg, Signal::SIGKILL);
        }
    }

    fn signal(&self, signal: Signal) {
        if let Some(pg) = self.pgid {
            let _ = killpg(pg, signal);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill_group();
    }
}

#[cfg(test)]
mod tests {
    use std::process::Stdio;

    use tokio::io::AsyncBufReadExt;

    use super::*;

    /// Starts `sh -c script` (which prints a background child's pid first) in a group; returns
    /// the group and that pid.
    async fn start(script: &str) -> (ProcessGroup, i32) {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]).stdout(Stdio::piped());
        let mut group = ProcessGroup::spawn(&mut cmd).expect("sh starts");
        let out = group.child.stdout.take().expect("piped");
        let mut first = String::new();
        tokio::io::BufReader::new(out)
            .read_line(&mut first)
            .await
            .expect("reads the pid");
        (group, first.trim().parse().expect("a pid"))
    }

    /// Whether `pid` still runs (a zombie waiting for its reaper does not).
    fn running(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                let state = s.rsplit(')').next().unwrap_or("").trim_start();
                !state.starts_with('Z') && !state.starts_with('X')
            })
            .unwrap_or(false)
    }

    /// Waits (up to 10 s) for `pid` to end; whether it did.
    async fn ends(pid: i32) -> bool {
        for _ in 0..100 {
            if !running(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Waits for the group with a deadline `limit` from now (5 s grace after SIGTERM).
    async fn wait_for(group: &mut ProcessGroup, limit: Duration) -> End {
        let deadline = Instant::now() + limit;
        group
            .wait(deadline, &CancellationToken::new(), Duration::from_secs(5))
            .await
    }

    #[tokio::test]
    async fn a_deadline_stops_the_leader_and_its_children() {
        let (mut group, child) = start("sleep 60 & echo $!; wait").await;
        assert!(running(child));
        let end = wait_for(&mut group, Duration::from_millis(200)).await;
        assert!(matches!(end, End::TimedOut), "{end:?}");
        assert!(ends(child).await, "the leader's child {child} still runs");
    }

    #[tokio::test]
    async fn what_an_exited_leader_left_in_its_group_is_killed() {
        let (mut group, child) = start("sleep 60 & echo $!").await;
        let end = wait_for(&mut group, Duration::from_secs(30)).await;
        assert!(matches!(end, End::Exited(s) if s.success()), "{end:?}");
        assert!(
            running(child),
            "the leftover should outlive its leader until the group is killed"
        );
        group.kill_group();
        assert!(ends(child).await, "the leftover {child} still runs");
    }

    #[tokio::test]
    async fn dropping_a_running_group_kills_it() {
        let (group, child) = start("sleep 60 & echo $!; wait").await;
        drop(group);
        assert!(ends(child).await, "the group's process {child} still runs");
    }
}
