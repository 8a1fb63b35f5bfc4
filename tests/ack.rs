//! Sign-off and escalation (SPEC 9.1 `escalate`, 9.2 `runbook ack`, 9.6 `POST /runs/<id>/ack`),
//! end to end: the real binary, a real daemon, its real HTTP server, the state database.

mod support;

use std::sync::atomic::Ordering;

use serde_json::Value;
use support::daemon::Daemon;
use support::{Setup, code, text, wait_until_or};

const JOBS: &str = r#"
[jobs.daily]
description = "Morning checklist"
notify = []

[[jobs.daily.items]]
name = "Disk check"
kind = "command"
argv = ["sh", "-c", "echo disk full; exit 1"]

[[jobs.daily.items]]
name = "Review Grafana"
kind = "manual"
link = "http://grafana.internal/d/overnight"
"#;

fn report_json(s: &Setup, run: &str) -> Value {
    let (c, v) = s.json(&[
        "--config",
        s.config().to_str().unwrap(),
        "report",
        run,
        "--job",
        "daily",
        "--format",
        "json",
    ]);
    assert_eq!(c, 0, "{v}");
    v
}

fn report_as(s: &Setup, run: &str, format: &str) -> String {
    let out = s
        .runbook(&["report", run, "--job", "daily", "--format", format])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    text(&out.stdout)
}

/// The stored report of `run` (a run's JSON with its `run_id`) lists `oncall` as sent.
fn assert_sent_to_oncall(s: &Setup, run: &serde_json::Value) {
    let v = support::daemon::report(&s.config(), run["run_id"].as_str().unwrap());
    assert!(
        v["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["channel"] == "oncall" && n["status"] == "sent"),
        "{v}"
    );
}

#[test]
fn ack_signs_off_a_manual_item_and_takes_a_failure_shown_wherever_the_report_is_read() {
    let s = Setup::new(JOBS);
    let (c, run, _) = s.run_job("daily", &[]);
    assert_eq!(c, 1, "the failing item fails the run");
    assert_eq!(
        run["acks"],
        serde_json::json!([]),
        "a fresh run has no acks"
    );
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let before = report_as(&s, "last", "text");
    assert!(before.contains("TODO  Review Grafana"), "{before}");

    // `last` = the job's latest run; text output says what was recorded.
    let out = s
        .runbook(&[
            "ack",
            "last",
            "--job",
            "daily",
            "--item",
            "Review Grafana",
            "--by",
            "alice",
            "--note",
            "dashboards look normal",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!(
            "done: \"Review Grafana\" of run {run_id} (daily) by alice"
        )),
        "{}",
        text(&out.stdout)
    );
    // A run id prefix works too; JSON output is one document.
    let (c, ack) = s.json(&[
        "--config",
        s.config().to_str().unwrap(),
        "ack",
        &run_id[..12],
        "--job",
        "daily",
        "--item",
        "Disk check",
        "--by",
        "bob",
        "--format",
        "json",
    ]);
    assert_eq!(c, 0, "{ack}");
    assert_eq!(ack["run_id"], run_id.as_str());
    assert_eq!(ack["item"], "Disk check");
    assert_eq!(ack["by"], "bob");
    assert!(ack["note"].is_null());

    let v = report_json(&s, &run_id);
    let acks = v["acks"].as_array().expect("acks in the report JSON");
    assert_eq!(acks.len(), 2, "{v}");
    assert_eq!(acks[0]["item"], "Review Grafana");
    assert_eq!(acks[0]["by"], "alice");
    assert_eq!(acks[0]["note"], "dashboards look normal");
    assert!(
        chrono::DateTime::parse_from_rfc3339(acks[0]["at"].as_str().unwrap()).is_ok(),
        "{v}"
    );
    assert_eq!(acks[1]["by"], "bob");
    // The stored run itself is unchanged: its status and counts are what ran.
    assert_eq!(v["status"], "fail");
    assert_eq!(v["counts"]["manual"], 1);

    let t = report_as(&s, "last", "text");
    assert!(
        t.contains("DONE  Review Grafana — for a person") && t.contains("(by alice)"),
        "{t}"
    );
    assert!(t.contains("(acked by bob)"), "{t}");
    assert!(t.contains("1 done"), "{t}");
    let h = report_as(&s, "last", "html");
    assert!(
        h.contains(">DONE<") && h.contains("Done by <b>alice</b>"),
        "{h}"
    );
    assert!(h.contains("Acknowledged by <b>bob</b>"), "{h}");
}

#[test]
fn an_ack_for_a_run_or_item_that_does_not_exist_exits_2_and_changes_nothing() {
    let s = Setup::new(&format!(
        "{JOBS}\n[jobs.other]\nnotify = []\n[[jobs.other.items]]\nname = \"x\"\nkind = \"manual\"\n"
    ));
    let (_, run, _) = s.run_job("daily", &[]);
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "ack",
                "01NOSUCHRUN",
                "--job",
                "daily",
                "--item",
                "Disk check",
                "--by",
                "a",
            ],
            "no stored run \"01NOSUCHRUN\"",
        ),
        (
            &[
                "ack", &run_id, "--job", "daily", "--item", "Nope", "--by", "a",
            ],
            "has no item \"Nope\"",
        ),
        (
            &[
                "ack",
                &run_id,
                "--job",
                "other",
                "--item",
                "Disk check",
                "--by",
                "a",
            ],
            "belongs to job \"daily\"",
        ),
        (
            &["ack", "last", "--job", "other", "--item", "x", "--by", "a"],
            "job \"other\" has no finished run",
        ),
        (
            &["ack", "last", "--job", "ghost", "--item", "x", "--by", "a"],
            "ghost",
        ),
        (
            &[
                "ack",
                &run_id,
                "--job",
                "daily",
                "--item",
                "Disk check",
                "--by",
                "  ",
            ],
            "who acknowledges",
        ),
    ];
    for (args, words) in cases {
        let out = s.runbook(args).output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(code(&out), 2, "{args:?}: {err}");
        assert!(
            err.contains(words) && err.contains("nothing was recorded"),
            "{args:?}: {err}"
        );
        assert!(text(&out.stdout).is_empty(), "{args:?}");
    }
    assert_eq!(report_json(&s, &run_id)["acks"], serde_json::json!([]));
}

/// The daemon's port, from its log.
fn port_of(d: &Daemon) -> u16 {
    let mut port = None;
    wait_until_or(
        "the daemon logs its address",
        || {
            port = d
                .log()
                .split("listen=127.0.0.1:")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|p| p.parse::<u16>().ok());
            port.is_some()
        },
        || d.log(),
    );
    port.unwrap()
}

const TOKEN: &str = "ack-form-token";

/// The jobs behind `[server] token = TOKEN`, one run of `daily` stored, and the daemon serving
/// them: (setup, that run's id, daemon).
fn daemon_with_a_run() -> (Setup, String, Daemon) {
    let s = Setup::builder()
        .body(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n{JOBS}"
        ))
        .build();
    let (_, run, _) = s.run_job("daily", &[]);
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let d = Daemon::start(&s.config());
    (s, run_id, d)
}

#[test]
fn the_status_page_lists_open_todos_and_failures_and_its_form_acks_behind_the_token() {
    let (s, run_id, d) = daemon_with_a_run();
    let port = port_of(&d);
    let auth = format!("Authorization: Bearer {TOKEN}");
    let post = |path: &str, body: &str, headers: &[&str]| {
        support::http::post_form(port, path, body, headers).expect("the server answers")
    };

    let (c, _, page) = support::http::get(port, "/", &[&auth]).unwrap();
    assert_eq!(c, 200);
    assert!(
        page.contains("Open TODOs and unacknowledged failures (2)"),
        "{page}"
    );
    assert!(
        page.contains(&format!(
            "<form method=\"post\" action=\"runs/{run_id}/ack\""
        )),
        "{page}"
    );
    assert!(
        page.contains("name=\"item\" value=\"Review Grafana\"") && page.contains(">Done</button>")
    );
    assert!(
        page.contains("name=\"item\" value=\"Disk check\"") && page.contains(">Take it</button>")
    );
    assert!(!page.contains("<script"), "no scripts");
    // A half-typed form is not wiped by the page's reload every minute.
    assert!(
        page.contains("<meta http-equiv=\"refresh\" content=\"600\">"),
        "{page}"
    );

    // Without the token: 401, nothing recorded.
    let path = format!("/runs/{run_id}/ack");
    let (c, _, _) = post(&path, "item=Review+Grafana&by=mallory", &[]);
    assert_eq!(c, 401);
    // Bad input: a clear 404 / 400.
    let (c, _, body) = post(
        "/runs/01NOSUCHRUN/ack",
        "item=Review+Grafana&by=a",
        &[&auth],
    );
    assert_eq!(c, 404, "{body}");
    assert!(
        body.contains("no stored run") && body.contains("nothing was recorded"),
        "{body}"
    );
    let (c, _, body) = post(&path, "item=Nope&by=a", &[&auth]);
    assert_eq!(c, 400, "{body}");
    assert!(body.contains("has no item \"Nope\""), "{body}");
    let (c, _, body) = post(&path, "item=Review+Grafana", &[&auth]);
    assert_eq!(c, 400, "{body}");
    assert!(body.contains("`by`"), "{body}");
    assert_eq!(report_json(&s, &run_id)["acks"], serde_json::json!([]));

    // The form, as a browser sends it (the cookie the ?token= visit set): 303 back.
    let (c, head, _) = support::http::get(port, &format!("/?token={TOKEN}"), &[]).unwrap();
    assert_eq!(c, 303);
    let cookie = support::http::header(&head, "set-cookie").unwrap();
    let cookie = format!("Cookie: {}", cookie.split(';').next().unwrap());
    let (c, head, _) = post(
        &path,
        "item=Review+Grafana&back=status&by=alice+%26+co&note=all+green",
        &[&cookie],
    );
    assert_eq!(c, 303, "{head}");
    assert_eq!(support::http::header(&head, "location"), Some("../../"));
    let (c, head, _) = post(&path, "item=Disk+check&by=bob", &[&auth]);
    assert_eq!(c, 303);
    assert_eq!(
        support::http::header(&head, "location"),
        Some(format!("../{run_id}").as_str()),
        "without back=status, back to the run's page"
    );

    let acks = report_json(&s, &run_id)["acks"].clone();
    assert_eq!(acks[0]["by"], "alice & co", "{acks}");
    assert_eq!(acks[0]["note"], "all green");
    assert_eq!(acks[1]["item"], "Disk check");
    let (_, _, page) = support::http::get(port, "/", &[&auth]).unwrap();
    assert!(
        !page.contains("Open TODOs and unacknowledged failures"),
        "{page}"
    );
    let (_, _, runpage) = support::http::get(port, &format!("/runs/{run_id}"), &[&auth]).unwrap();
    assert!(
        runpage.contains(">DONE<") && runpage.contains("Done by <b>alice &#38; co</b>"),
        "{runpage}"
    );
    drop(d);
}

/// The jobs of the escalation test: `paged` escalates to `oncall` 10 s after its failing run,
/// `taken` to `oncall2` 4 s after, but its failure is acknowledged first.
fn escalation_jobs(oncall: u16, oncall2: u16) -> String {
    format!(
        r#"
[notify.oncall]
type = "slack"
webhook_url = "http://127.0.0.1:{oncall}/hook"

[notify.oncall2]
type = "slack"
webhook_url = "http://127.0.0.1:{oncall2}/hook"

[jobs.taken]
notify = []
escalate = [{{ after = "4s", notify = ["oncall2"] }}]
[[jobs.taken.items]]
name = "broken"
kind = "command"
argv = ["false"]

[jobs.paged]
notify = []
escalate = [{{ after = "10s", notify = ["oncall"] }}]
[[jobs.paged.items]]
name = "broken"
kind = "command"
argv = ["false"]
"#
    )
}

fn stop(mut d: Daemon) {
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(), Some(0), "{}", d.log());
}

fn wait_watching(d: &Daemon) {
    wait_until_or(
        "the escalation task has made its first pass",
        || d.log().contains("escalation: watching 2 job(s)"),
        || d.log(),
    );
}

#[test]
fn an_unacknowledged_failure_escalates_once_per_run_and_step_across_restarts() {
    let (oncall, sent) = support::http::ok_server();
    let (oncall2, sent2) = support::http::ok_server();
    let s = Setup::new(&escalation_jobs(oncall, oncall2));
    let (c, taken, _) = s.run_job("taken", &[]);
    assert_eq!(c, 1);
    let out = s
        .runbook(&[
            "ack", "last", "--job", "taken", "--item", "broken", "--by", "carol",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let (c, paged, _) = s.run_job("paged", &[]);
    assert_eq!(c, 1);
    let finished =
        chrono::DateTime::parse_from_rfc3339(paged["finished_at"].as_str().unwrap()).unwrap();

    // A daemon that stops before the deadline: nothing escalated yet.
    let d = Daemon::start(&s.config());
    wait_watching(&d);
    stop(d);
    let early = chrono::Utc::now() < finished + chrono::Duration::seconds(10);
    if early {
        assert_eq!(
            sent.load(Ordering::SeqCst),
            0,
            "escalated before the deadline"
        );
    }

    // Restarted: the deadline comes from the store, and the step is taken once.
    let d = Daemon::start(&s.config());
    wait_until_or(
        "the escalation is delivered",
        || sent.load(Ordering::SeqCst) >= 1,
        || d.log(),
    );
    let log = d.log();
    assert!(log.contains("ESCALATED") && log.contains("paged"), "{log}");
    stop(d);

    // Started again after it: no second delivery.
    let d = Daemon::start(&s.config());
    wait_watching(&d);
    stop(d);
    assert_eq!(sent.load(Ordering::SeqCst), 1, "exactly one escalation");
    assert_eq!(
        sent2.load(Ordering::SeqCst),
        0,
        "an acknowledged failure is not escalated (its deadline passed before the other's)"
    );
    assert!(taken["run_id"].is_string());
    // The report says where it went.
    assert_sent_to_oncall(&s, &paged);
}

/// How many passes the escalation task has announced (its first, and the first after each
/// reload).
fn announced(d: &Daemon) -> usize {
    d.log().matches("escalation: watching").count()
}

/// SIGHUP, then waits until the escalation task has made its first pass with the configuration
/// it re-read (and delivered what that pass escalated).
fn reload(d: &Daemon) {
    let before = announced(d);
    d.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until_or(
        "the escalation task's pass after the reload",
        || announced(d) > before,
        || d.log(),
    );
}

/// `escalate` gained or lost by a reload (SIGHUP) takes effect at once: the failure already
/// standing is escalated without waiting for the task's rescan, once; once removed, a new
/// failure is not escalated.
#[test]
fn escalate_added_by_a_reload_escalates_the_standing_failure_once_and_removed_stops() {
    let (oncall, sent) = support::http::ok_server();
    let jobs = |escalate: &str| {
        format!(
            "[notify.oncall]\ntype = \"slack\"\nwebhook_url = \"http://127.0.0.1:{oncall}/hook\"\n\n\
             [jobs.paged]\nnotify = []\n{escalate}\n\
             [[jobs.paged.items]]\nname = \"broken\"\nkind = \"command\"\nargv = [\"false\"]\n"
        )
    };
    let s = Setup::new(&jobs(""));
    let (c, failed, _) = s.run_job("paged", &[]);
    assert_eq!(c, 1);
    let d = Daemon::start(&s.config());
    wait_until_or(
        "the escalation task has made its first pass",
        || d.log().contains("escalation: watching 0 job(s)"),
        || d.log(),
    );

    // Added: the standing failure is escalated now, not at the next rescan (5 minutes, longer
    // than the tests' patience).
    s.write_body(&jobs(
        "escalate = [{ after = \"2s\", notify = [\"oncall\"] }]",
    ));
    reload(&d);
    assert!(
        d.log().contains("escalation: watching 1 job(s)"),
        "{}",
        d.log()
    );
    wait_until_or(
        "the escalation is delivered",
        || sent.load(Ordering::SeqCst) >= 1,
        || d.log(),
    );
    // Another pass (a reload of the same file): the step is not taken again.
    reload(&d);
    assert_eq!(sent.load(Ordering::SeqCst), 1, "exactly one escalation");
    assert_eq!(d.log().matches("ESCALATED").count(), 1, "{}", d.log());
    assert_sent_to_oncall(&s, &failed);

    // Removed: a new failure is not escalated, also once its `after` would have passed and the
    // task made a pass.
    s.write_body(&jobs(""));
    reload(&d);
    let (c, again, _) = s.run_job("paged", &[]);
    assert_eq!(c, 1);
    let finished =
        chrono::DateTime::parse_from_rfc3339(again["finished_at"].as_str().unwrap()).unwrap();
    while chrono::Utc::now() < finished + chrono::Duration::milliseconds(2500) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    reload(&d);
    assert_eq!(
        sent.load(Ordering::SeqCst),
        1,
        "escalated after escalate was removed: {}",
        d.log()
    );
    assert_eq!(d.log().matches("ESCALATED").count(), 1, "{}", d.log());
    let v = support::daemon::report(&s.config(), again["run_id"].as_str().unwrap());
    assert!(
        !v["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["channel"] == "oncall"),
        "{v}"
    );
    stop(d);
}

#[test]
fn escalate_config_errors_name_file_line_column_and_job() {
    let s = Setup::new(
        "[notify.oncall]\ntype = \"file\"\ndir = \"out\"\n\n[jobs.daily]\nnotify = []\nescalate = [{ after = \"30m\", notify = [\"pagerduty\"] }]\n[[jobs.daily.items]]\nname = \"a\"\nkind = \"manual\"\n",
    );
    let out = s.runbook(&["check-config"]).output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(code(&out), 2, "{err}");
    assert!(
        err.contains("jobs.toml:11:1")
            && err.contains("job \"daily\"")
            && err.contains("unknown notifier \"pagerduty\""),
        "{err}"
    );
    s.write_body(
        "[notify.oncall]\ntype = \"file\"\ndir = \"out\"\n\n[jobs.daily]\nnotify = []\nescalate = [{ after = \"soon\", notify = [\"oncall\"] }]\n[[jobs.daily.items]]\nname = \"a\"\nkind = \"manual\"\n",
    );
    let out = s.runbook(&["check-config"]).output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(code(&out), 2, "{err}");
    assert!(
        err.contains("jobs.toml:11:") && err.contains("soon"),
        "{err}"
    );
}

/// Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
/// fd 3 carries commands to it, fd 4 its answers, each a JSON text ended by a NUL byte).
struct Chromium {
    child: std::process::Child,
    to: std::fs::File,
    from: std::sync::mpsc::Receiver<Value>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Chromium {
    fn start() -> Chromium {
        use std::os::fd::{FromRawFd, IntoRawFd};
        use std::os::unix::process::CommandExt;
        let exe = ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .find_map(|n| {
                std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                    .map(|d| d.join(n))
                    .find(|p| p.is_file())
            })
            .expect("this test needs a headless Chromium: apt-get install chromium");
        let profile = tempfile::tempdir().unwrap();
        let (cmd_r, cmd_w) = nix::unistd::pipe().unwrap();
        let (ans_r, ans_w) = nix::unistd::pipe().unwrap();
        let (cmd_r, ans_w) = (cmd_r.into_raw_fd(), ans_w.into_raw_fd());
        let mut c = std::process::Command::new(exe);
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-pipe",
            "--window-size=1100,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
        unsafe {
            c.pre_exec(move || {
                if nix::libc::dup2(cmd_r, 3) < 0 || nix::libc::dup2(ans_w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = c.spawn().expect("start chromium");
        // Our copies of Chromium's ends.
        unsafe {
            drop(std::fs::File::from_raw_fd(cmd_r));
            drop(std::fs::File::from_raw_fd(ans_w));
        }
        let to = std::fs::File::from(cmd_w);
        let mut from_file = std::fs::File::from(ans_r);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            while let Ok(n) = from_file.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.iter().position(|&b| b == 0) {
                    let msg: Vec<u8> = buf.drain(..=end).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&msg[..end]) {
                        let _ = tx.send(v);
                    }
                }
            }
        });
        Chromium {
            child,
            to,
            from: rx,
            next_id: 0,
            _profile: profile,
        }
    }

    /// Sends one command (to the page's session, when given) and returns its result.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        use std::io::Write;
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = serde_json::json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        loop {
            let v = self
                .from
                .recv_timeout(support::PATIENCE)
                .unwrap_or_else(|_| panic!("chromium did not answer {method}"));
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `js` in the page; its value.
    fn eval(&mut self, session: &str, js: &str) -> Value {
        self.call(
            Some(session),
            "Runtime.evaluate",
            serde_json::json!({"expression": js, "returnByValue": true}),
        )["result"]["value"]
            .clone()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_real_browser_signs_off_a_todo_through_the_status_page_form_with_the_token() {
    let (s, run_id, d) = daemon_with_a_run();
    let port = port_of(&d);
    let mut b = Chromium::start();
    let target = b.call(
        None,
        "Target.createTarget",
        serde_json::json!({"url": "about:blank"}),
    )["targetId"]
        .clone();
    let session = b.call(
        None,
        "Target.attachToTarget",
        serde_json::json!({"targetId": target, "flatten": true}),
    )["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    // Once with ?token=: the cookie is set and the browser lands on the page without it.
    let home = format!("http://127.0.0.1:{port}/");
    b.call(
        Some(&session),
        "Page.navigate",
        serde_json::json!({"url": format!("{home}?token={TOKEN}")}),
    );
    let state = "document.readyState + ' ' + location.href";
    wait_until_or(
        "the status page is shown without the token in its address",
        || b.eval(&session, state) == format!("complete {home}").as_str(),
        || d.log(),
    );
    let todos = b.eval(&session, "document.forms.length");
    assert_eq!(
        todos, 2,
        "one form per open TODO and unacknowledged failure"
    );
    // A person types a name and a note and presses "Done" (a real submit: the browser encodes
    // the form, resolves its relative action, sends its cookie and follows the 303).
    let pressed = b.eval(
        &session,
        "(() => { const f = [...document.forms].find(f => f.item.value === 'Review Grafana');
                  f.by.value = 'dora'; f.note.value = 'checked in the browser';
                  f.querySelector('button').click(); return 'pressed'; })()",
    );
    assert_eq!(pressed, "pressed");
    wait_until_or(
        "the browser is back on the status page, with one form left",
        || {
            b.eval(&session, state) == format!("complete {home}").as_str()
                && b.eval(&session, "document.forms.length") == 1
        },
        || d.log(),
    );
    let acks = report_json(&s, &run_id)["acks"].clone();
    assert_eq!(acks.as_array().map(Vec::len), Some(1), "{acks}");
    assert_eq!(acks[0]["item"], "Review Grafana");
    assert_eq!(acks[0]["by"], "dora");
    assert_eq!(acks[0]["note"], "checked in the browser");
    drop(b);
    drop(d);
}

#[test]
fn escalation_follows_the_latest_full_run_and_takes_each_step_once() {
    let s = Setup::new(
        r#"
[notify.oncall]
type = "file"
dir = "paged"

[jobs.daily]
notify = []
escalate = [{ after = "30m", notify = ["oncall"] }, { after = "2h", notify = ["oncall"] }]
[[jobs.daily.items]]
name = "broken"
kind = "command"
argv = ["false"]
[[jobs.daily.items]]
name = "fine"
kind = "command"
argv = ["true"]
"#,
    );
    let (c, full, _) = s.run_job("daily", &[]);
    assert_eq!(c, 1);
    // A partial run that passes says nothing about the failing item: it is not the run that
    // counts.
    let (c, _, _) = s.run_job("daily", &["--item", "fine"]);
    assert_eq!(c, 0);
    let config = runbook::config::Config::load(&s.config()).unwrap_or_else(|e| panic!("{e}"));
    let store = runbook::store::Store::open(&config.state_dir, &config.hostname).unwrap();
    let finished = chrono::DateTime::parse_from_rfc3339(full["finished_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let pass = |at: chrono::DateTime<chrono::Utc>| {
        runbook::daemon::escalation::pass(&config, &store, at).unwrap()
    };
    let (taken, next) = pass(finished + chrono::Duration::minutes(29));
    assert!(taken.is_empty());
    assert_eq!(
        next,
        Some(finished + chrono::Duration::minutes(30)),
        "sleeps until the deadline"
    );
    let (taken, next) = pass(finished + chrono::Duration::minutes(31));
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert_eq!(taken[0].run_id, full["run_id"].as_str().unwrap());
    assert_eq!(taken[0].step, 0);
    assert_eq!(next, Some(finished + chrono::Duration::hours(2)));
    let (taken, _) = pass(finished + chrono::Duration::minutes(32));
    assert!(taken.is_empty(), "a step is taken once");
    // Acknowledged before the second step: no second step.
    let full_id = full["run_id"].as_str().unwrap();
    let out = s
        .runbook(&[
            "ack", full_id, "--job", "daily", "--item", "broken", "--by", "erin",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let (taken, next) = pass(finished + chrono::Duration::hours(3));
    assert!(taken.is_empty(), "{taken:?}");
    assert_eq!(next, None);
}

/// An escalation step to a `pagerduty` notifier queues PagerDuty events, not a report (which
/// PagerDuty cannot take): one `trigger` per failing item nobody acknowledged, with the run's
/// own `dedup_key`, each its own outbox entry.
#[test]
fn escalation_to_pagerduty_queues_a_trigger_per_unacknowledged_failure() {
    let s = Setup::builder()
        .body(
            r#"
[notify.pd]
type = "pagerduty"
routing_key = "0123456789abcdef0123456789abcdef"
url = "http://127.0.0.1:9/v2/enqueue"

[jobs.daily]
notify = []
escalate = [{ after = "30m", notify = ["pd"] }]
[[jobs.daily.items]]
name = "broken"
kind = "command"
argv = ["false"]
[[jobs.daily.items]]
name = "taken"
kind = "command"
argv = ["false"]
[[jobs.daily.items]]
name = "fine"
kind = "command"
argv = ["true"]
"#,
        )
        .build();
    let (c, full, _) = s.run_job("daily", &[]);
    assert_eq!(c, 1);
    let run_id = full["run_id"].as_str().unwrap();
    let out = s
        .runbook(&[
            "ack", run_id, "--job", "daily", "--item", "taken", "--by", "erin",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));

    let config = runbook::config::Config::load(&s.config()).unwrap_or_else(|e| panic!("{e}"));
    let store = runbook::store::Store::open(&config.state_dir, &config.hostname).unwrap();
    let finished = chrono::DateTime::parse_from_rfc3339(full["finished_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let (taken, _) =
        runbook::daemon::escalation::pass(&config, &store, finished + chrono::Duration::hours(1))
            .unwrap();
    assert_eq!(taken.len(), 1, "{taken:?}");

    let out = s.runbook(&["outbox", "--format", "json"]).output().unwrap();
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries: Vec<&serde_json::Value> = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["run_id"] == run_id)
        .collect();
    let events: Vec<&str> = entries
        .iter()
        .map(|e| e["event"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(events, vec!["escalate-0/trigger/broken"], "{listing:#}");
    let event: serde_json::Value =
        serde_json::from_str(entries[0]["payload"].as_str().expect("payload")).unwrap();
    assert_eq!(event["event_action"], "trigger");
    assert_eq!(event["dedup_key"], "runbook/daily/broken");
    assert_eq!(event["payload"]["severity"], "critical");
    assert!(
        !listing
            .to_string()
            .contains("0123456789abcdef0123456789abcdef"),
        "the routing key is never stored or listed: {listing:#}"
    );
}
