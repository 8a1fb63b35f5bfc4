//! The scheduler's loop in-process: driven by a clock the test moves and stopped by a shutdown
//! future the test completes — no process, no signals (tests/daemon.rs runs the real daemon
//! process with signals). The store, the runner and the item are real. No timing assertions:
//! the test clock only moves when the test moves it, and every wait is generous.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use runbook::config::Config;
use runbook::daemon::scheduler::{Clock, run};
use runbook::store::Store;
use tokio::sync::{mpsc, oneshot, watch};

/// How long any condition may take to become true before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// A wall clock that stands still until the test moves it. `sleep(d)` resolves once the test
/// has moved the clock `d` past the instant the sleep began.
#[derive(Clone)]
struct TestClock {
    now: Arc<watch::Sender<DateTime<Utc>>>,
    /// How many times the loop went to sleep (it has finished a pass over the jobs).
    sleeps: Arc<AtomicUsize>,
}

impl TestClock {
    fn at(t: DateTime<Utc>) -> TestClock {
        TestClock {
            now: Arc::new(watch::channel(t).0),
            sleeps: Arc::default(),
        }
    }

    fn set(&self, t: DateTime<Utc>) {
        self.now.send_replace(t);
    }

    fn sleeps(&self) -> usize {
        self.sleeps.load(Ordering::SeqCst)
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let until = self.now() + chrono::TimeDelta::from_std(duration).unwrap();
        let mut rx = self.now.subscribe();
        self.sleeps.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let _ = rx.wait_for(|now| *now >= until).await;
        })
    }
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Polls `cond` (real time) until it holds; panics naming `what` after [`PATIENCE`].
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn config(dir: &Path) -> Config {
    let text = format!(
        "[runbook]\nstate_dir = {:?}\nhostname = \"loop-test\"\n\n\
         [jobs.daily]\nschedule = \"0 10 * * *\"\ntimezone = \"Asia/Kolkata\"\n\n\
         [[jobs.daily.items]]\nname = \"Look at the dashboards\"\nkind = \"manual\"\n",
        dir.join("state")
    );
    let path = dir.join("jobs.toml");
    std::fs::write(&path, &text).unwrap();
    Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_fires_the_slot_when_the_clock_reaches_it_and_returns_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    // 09:59:50 in Kolkata: the daily 10:00 slot is ten seconds away.
    let clock = TestClock::at(utc("2026-11-24T04:29:50Z"));
    let slot = utc("2026-11-24T04:30:00Z");
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async {
        let _ = stopped.await;
    };
    let (_reload, reload) = mpsc::channel(1);
    let daemon = run(config, clock.clone(), shutdown, reload);

    let driver = async {
        wait_until("the loop's first pass", || clock.sleeps() >= 1).await;
        let store = Store::open(&dir.path().join("state"), "loop-test").unwrap();
        assert!(
            store.history(None, 10).unwrap().is_empty(),
            "nothing may run before its slot"
        );
        assert_eq!(store.slot_state("daily", &slot).unwrap(), None);
        clock.set(utc("2026-11-24T04:30:00.500Z"));
        wait_until("the 10:00 slot's run to finish", || {
            store.slot_state("daily", &slot).unwrap().as_deref() == Some("done")
        })
        .await;
        stop.send(()).unwrap();
        store
    };
    let (result, store) = tokio::time::timeout(PATIENCE, async { tokio::join!(daemon, driver) })
        .await
        .expect("the loop did not return after the shutdown future completed");
    result.unwrap();

    let runs = store.history(Some("daily"), 10).unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].trigger, "schedule");
    assert_eq!(
        runs[0].scheduled_for.as_deref().map(utc),
        Some(slot),
        "{runs:?}"
    );
    assert!(runs[0].finished_at.is_some(), "{runs:?}");
}
