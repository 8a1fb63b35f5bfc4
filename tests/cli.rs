//! The command line end to end: real processes, real files, a real state database.
//! Each test writes a jobs.toml into its own temporary folder and runs the built binary.

mod support;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;
use support::{Setup, code, text};

/// Every jobs.toml of these tests has a file channel `archive` that writes to `sent/`.
fn setup(jobs: &str) -> Setup {
    Setup::new(&format!(
        "[notify.archive]\ntype = \"file\"\ndir = \"sent\"\n\n{jobs}"
    ))
}

const PASSING: &str = r#"
[jobs.daily]
description = "Morning checklist"
schedule = "0 10 * * *"

[[jobs.daily.items]]
name = "Say hello"
kind = "command"
argv = ["sh", "-c", "echo hello from $RUNBOOK_JOB $RUNBOOK_TRIGGER"]

[[jobs.daily.items]]
name = "Review Grafana"
kind = "manual"
link = "http://grafana.internal/d/overnight"
"#;

#[test]
fn check_config_reports_each_mistake_with_file_line_column_and_item() {
    let cases: &[(&str, &str, &str)] = &[
        // (jobs.toml text, expected position, expected words)
        (
            "[jobs.daily]\nschedule = \"0 10 * * *\"\n[[jobs.daily.items]]\nname = \"A\"\nkind = \"manual\"\nlnk = \"x\"\n",
            "jobs.toml:6:1",
            "job \"daily\", item \"A\": unknown field `lnk`",
        ),
        (
            "[jobs.daily]\ntimeout = 30\n",
            "jobs.toml:2:",
            "job \"daily\"",
        ),
        (
            "[jobs.daily]\nschedule = \"0 10 * *\"\n",
            "jobs.toml:2:1",
            "expected 5 fields",
        ),
        (
            "[jobs.daily]\nschedule = \"61 10 * * *\"\n",
            "jobs.toml:2:1",
            "invalid cron expression",
        ),
        (
            "[runbook]\ntimezone = \"India/Mumbai\"\n",
            "jobs.toml:2:1",
            "unknown time zone \"India/Mumbai\"",
        ),
        (
            "[jobs.daily]\ntimezone = \"Mars/Olympus\"\n",
            "jobs.toml:2:1",
            "job \"daily\": unknown time zone",
        ),
        (
            "[jobs.daily]\nnotify = [\"pager\"]\n",
            "jobs.toml:2:1",
            "unknown notifier \"pager\"",
        ),
        (
            "[jobs.daily]\n[[jobs.daily.items]]\nname = \"q\"\nkind = \"sql\"\ntarget = \"nope\"\nquery = \"SELECT 1\"\n",
            "jobs.toml:5:1",
            "item \"q\": unknown target \"nope\"",
        ),
        (
            "[jobs.daily]\n[[jobs.daily.items]]\nname = \"A\"\nkind = \"manual\"\n[[jobs.daily.items]]\nname = \"A\"\nkind = \"manual\"\n",
            "jobs.toml:6:1",
            "duplicate item name \"A\"",
        ),
        (
            "[jobs.daily]\ncatch_up_within = \"12 hourz\"\n",
            "jobs.toml:2:",
            "invalid duration",
        ),
        (
            "[jobs.daily]\n[[jobs.daily.items]]\nname = \"K\"\nkind = \"key_rotation\"\nkeys = [{ name = \"x\", rotated = 2026-01-01, max_age = \"ninety days\" }]\n",
            "jobs.toml:5:",
            "invalid duration",
        ),
        (
            "[jobs.daily]\n[[jobs.daily.items]]\nname = \"B\"\nkind = \"backupp\"\n",
            "jobs.toml:",
            "unknown variant `backupp`",
        ),
        (
            "[jobs.daily\nschedule = 1\n",
            "jobs.toml:1:12",
            "unclosed table",
        ),
    ];
    for (toml, position, words) in cases {
        let s = Setup::raw(toml);
        let out = s.run(&["check-config"]);
        let err = text(&out.stderr);
        assert_eq!(code(&out), 2, "{toml}\n{err}");
        assert!(
            err.contains(position),
            "expected {position} in:\n{err}\nfor:\n{toml}"
        );
        assert!(
            err.contains(words),
            "expected {words:?} in:\n{err}\nfor:\n{toml}"
        );
        assert!(err.contains("nothing ran"), "{err}");
    }
}

#[test]
fn check_config_reports_all_semantic_mistakes_at_once() {
    let s = Setup::raw(
        "[runbook]\ntimezone = \"Nowhere/City\"\n[jobs.a]\nschedule = \"bad\"\nnotify = [\"x\"]\n",
    );
    let out = s.run(&["check-config"]);
    let err = text(&out.stderr);
    assert_eq!(code(&out), 2);
    assert!(err.contains("3 configuration errors"), "{err}");
}

#[test]
fn check_config_on_a_good_file_says_what_it_found() {
    let s = setup(PASSING);
    let out = s.run(&["check-config"]);
    let o = text(&out.stdout);
    assert_eq!(code(&out), 0, "{o}{}", text(&out.stderr));
    assert!(o.contains("OK — 1 job, 2 items"), "{o}");
    assert!(
        o.contains("daily") && o.contains("IST"),
        "next run in the job's zone: {o}"
    );
}

#[test]
fn secrets_missing_or_inline_are_named_by_key_never_by_value() {
    let s = Setup::raw(
        "[notify.slack]\ntype = \"slack\"\nwebhook_url = { env = \"RUNBOOK_TEST_UNSET_WEBHOOK\" }\n",
    );
    let out = s.run(&["check-config"]);
    let err = text(&out.stderr);
    assert_eq!(code(&out), 2);
    assert!(
        err.contains(
            "notify.slack.webhook_url: environment variable RUNBOOK_TEST_UNSET_WEBHOOK is not set"
        ),
        "{err}"
    );

    let s = Setup::raw(
        "[notify.slack]\ntype = \"slack\"\nwebhook_url = { file = \"missing-secret\" }\n",
    );
    let err = text(&s.run(&["check-config"]).stderr);
    assert!(
        err.contains("notify.slack.webhook_url: cannot read secret file"),
        "{err}"
    );

    let s = Setup::raw(
        "[notify.slack]\ntype = \"slack\"\nwebhook_url = \"https://hooks.slack.com/services/T0/B0/very-secret-token\"\n",
    );
    let out = s.run(&["check-config"]);
    let all = text(&out.stdout) + &text(&out.stderr);
    assert_eq!(code(&out), 0);
    assert!(all.contains("warning:") && all.contains("inline"), "{all}");
    assert!(!all.contains("very-secret-token"), "{all}");

    let s = Setup::raw(
        "[notify.slack]\ntype = \"slack\"\nwebhook_url = { env = \"RUNBOOK_TEST_WEBHOOK\" }\n",
    );
    let out = s
        .cmd()
        .arg("check-config")
        .env(
            "RUNBOOK_TEST_WEBHOOK",
            "https://hooks.example/very-secret-token",
        )
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(!(text(&out.stdout) + &text(&out.stderr)).contains("very-secret-token"));
}

#[test]
fn config_path_comes_from_flag_then_env() {
    let s = setup(PASSING);
    std::fs::rename(s.path().join("jobs.toml"), s.path().join("other.toml")).unwrap();
    // No ./jobs.toml: the fallback is /etc/runbook/jobs.toml, which exists only where the
    // package is installed; either way the output names it.
    let out = s.run(&["check-config"]);
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(all.contains("/etc/runbook/jobs.toml"), "{all}");
    if !Path::new("/etc/runbook/jobs.toml").exists() {
        assert_eq!(
            code(&out),
            2,
            "no ./jobs.toml and no /etc/runbook/jobs.toml"
        );
    }
    assert_eq!(code(&s.run(&["--config", "other.toml", "check-config"])), 0);
    let out = s
        .cmd()
        .arg("check-config")
        .env("RUNBOOK_CONFIG", s.path().join("other.toml"))
        .output()
        .unwrap();
    assert_eq!(code(&out), 0);
}

#[test]
fn next_lists_fire_times_in_zone_and_utc_with_dom_and_dow() {
    let s = setup(
        "[jobs.monthly]\nschedule = \"0 11 1-7 * MON\"\n[jobs.ny]\nschedule = \"30 2 * * *\"\ntimezone = \"America/New_York\"\n[jobs.byhand]\n",
    );
    let (c, v) = s.json(&[
        "next",
        "monthly",
        "-n",
        "3",
        "--after",
        "2026-11-24T00:00:00Z",
        "--format",
        "json",
    ]);
    assert_eq!(c, 0);
    let next: Vec<&str> = v["jobs"][0]["next"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["local"].as_str().unwrap())
        .collect();
    assert_eq!(
        next,
        [
            "2026-12-07T11:00:00+05:30",
            "2027-01-04T11:00:00+05:30",
            "2027-02-01T11:00:00+05:30"
        ]
    );
    assert_eq!(v["jobs"][0]["next"][0]["utc"], "2026-12-07T05:30:00+00:00");
    assert!(
        v["jobs"][0]["description"]
            .as_str()
            .unwrap()
            .contains("Monday")
    );

    // Spring forward in New York: 02:30 does not exist on 2027-03-14; it fires once at 03:00.
    let (_, v) = s.json(&[
        "next",
        "ny",
        "-n",
        "2",
        "--after",
        "2027-03-13T12:00:00Z",
        "--format",
        "json",
    ]);
    let next: Vec<&str> = v["jobs"][0]["next"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["local"].as_str().unwrap())
        .collect();
    assert_eq!(
        next,
        ["2027-03-14T03:00:00-04:00", "2027-03-15T02:30:00-04:00"]
    );

    let out = s.run(&[
        "next",
        "monthly",
        "-n",
        "1",
        "--after",
        "2026-11-24T00:00:00Z",
    ]);
    let o = text(&out.stdout);
    assert!(
        o.contains("Mon 2026-12-07 11:00:00 IST") && o.contains("2026-12-07 05:30:00 UTC"),
        "{o}"
    );
    assert!(text(&s.run(&["next", "byhand"]).stdout).contains("runs only by hand"));
    assert_eq!(code(&s.run(&["next", "nosuchjob"])), 2);
    assert_eq!(code(&s.run(&["next", "--after", "yesterday"])), 2);
}

#[test]
fn list_shows_jobs_with_schedule_zone_description_and_items() {
    let s = setup(PASSING);
    let (c, v) = s.json(&["list", "--format", "json"]);
    assert_eq!(c, 0);
    let job = &v["jobs"][0];
    assert_eq!(job["job"], "daily");
    assert_eq!(job["timezone"], "Asia/Kolkata");
    assert_eq!(job["schedule"], "0 10 * * *");
    assert!(job["next_run"].as_str().unwrap().ends_with("+05:30"));
    assert_eq!(job["items"].as_array().unwrap().len(), 2);
    let o = text(&s.run(&["list"]).stdout);
    assert!(o.contains("Say hello [command]"), "{o}");
}

#[test]
fn run_job_prints_report_stores_it_and_writes_files() {
    let s = setup(PASSING);
    let (c, v) = s.json(&["run-job", "daily", "--format", "json"]);
    assert_eq!(c, 0, "{v}");
    assert_eq!(v["job"], "daily");
    assert_eq!(v["status"], "pass");
    assert_eq!(v["trigger"], "manual");
    assert_eq!(v["counts"]["pass"], 1);
    assert_eq!(v["counts"]["manual"], 1);
    // "exit 0 in 0.0s: ...": the exit code and the last output line (how long it took is
    // the machine's business).
    let summary = v["items"][0]["summary"].as_str().unwrap_or_default();
    assert!(
        regex::Regex::new(r"^exit 0 in \d+\.\ds: hello from daily manual$")
            .unwrap()
            .is_match(summary),
        "{summary}"
    );
    assert_eq!(v["items"][1]["status"], "manual");
    assert_eq!(v["notifications"][0]["channel"], "archive");
    assert_eq!(v["notifications"][0]["status"], "sent");
    let run_id = v["run_id"].as_str().unwrap().to_string();

    // The archive holds the three renderings.
    let sent: Vec<String> = std::fs::read_dir(s.path().join("sent"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    for ext in ["txt", "html", "json", "eml"] {
        assert!(
            sent.iter().any(|f| f.contains(&run_id) && f.ends_with(ext)),
            "{sent:?}"
        );
    }

    // history and report re-render the stored run.
    let (c, h) = s.json(&["history", "--format", "json"]);
    assert_eq!(c, 0);
    assert_eq!(h[0]["run_id"], run_id.as_str());
    assert_eq!(h[0]["status"], "pass");
    let (c, stored) = s.json(&["report", "last", "--job", "daily", "--format", "json"]);
    assert_eq!(c, 0);
    assert_eq!(stored, v, "the stored report is the printed one");
    let (_, by_id) = s.json(&["report", &run_id[..12], "--format", "json"]);
    assert_eq!(by_id["run_id"], run_id.as_str());
    let html = text(&s.run(&["report", "last", "--format", "html"]).stdout);
    assert!(html.contains("<html") && html.contains("Say hello"));
    assert_eq!(code(&s.run(&["report", "01NOSUCHRUN"])), 2);
}

#[test]
fn exit_codes_follow_the_contract() {
    let s = setup(
        r#"
[jobs.ok]
[[jobs.ok.items]]
name = "fine"
kind = "command"
argv = ["true"]

[jobs.warns]
[[jobs.warns.items]]
name = "key due soon"
kind = "key_rotation"
remind_before = "36500d"
keys = [{ name = "api", rotated = 2026-11-01, max_age = "3650d" }]

[jobs.fails]
[[jobs.fails.items]]
name = "broken"
kind = "command"
argv = ["sh", "-c", "echo boom >&2; exit 3"]
[[jobs.fails.items]]
name = "still runs"
kind = "command"
argv = ["true"]
"#,
    );
    assert_eq!(code(&s.run(&["run-job", "ok"])), 0);
    assert_eq!(
        code(&s.run(&["run-job", "warns"])),
        0,
        "warnings pass without --strict"
    );
    assert_eq!(code(&s.run(&["run-job", "warns", "--strict"])), 1);
    let (c, v) = s.json(&["run-job", "fails", "--format", "json"]);
    assert_eq!(c, 1);
    assert_eq!(
        v["items"][0]["summary"]
            .as_str()
            .unwrap()
            .split(" in ")
            .next(),
        Some("exit 3")
    );
    assert!(
        v["items"][0]["details"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == "  boom"),
        "{v}"
    );
    assert_eq!(
        v["items"][1]["status"], "pass",
        "a failing item never stops the others"
    );
    let out = s.run(&["run-job", "nosuch"]);
    assert_eq!(code(&out), 2);
    assert!(text(&out.stderr).contains("unknown job \"nosuch\""));
    let out = s.run(&["run-job", "ok", "--item", "nosuch"]);
    assert_eq!(code(&out), 2);
    assert!(text(&out.stderr).contains("has no item \"nosuch\""));
    assert_eq!(code(&s.run(&["run-job"])), 2, "usage error");
}

#[test]
fn item_filter_runs_only_the_named_items() {
    let s = setup(PASSING);
    let (c, v) = s.json(&[
        "run-job",
        "daily",
        "--item",
        "Review Grafana",
        "--format",
        "json",
    ]);
    assert_eq!(c, 0);
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    assert_eq!(v["items"][0]["name"], "Review Grafana");
}

#[test]
fn second_run_of_a_running_job_exits_3_and_a_killed_holder_does_not_block() {
    let s = setup(
        r#"
[jobs.slow]
[[jobs.slow.items]]
name = "sleep"
kind = "command"
argv = ["sh", "-c", "touch started; sleep 30"]
"#,
    );
    let mut first = s
        .std_command()
        .args(["run-job", "slow", "--no-notify"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&s.path().join("started"));
    let out = s.run(&["run-job", "slow"]);
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("already running"),
        "{}",
        text(&out.stderr)
    );

    // kill -9 the holder: its lock must not block forever.
    first.kill().unwrap();
    first.wait().unwrap();
    std::fs::remove_file(s.path().join("started")).unwrap();
    let mut third = s
        .std_command()
        .args(["run-job", "slow", "--no-notify"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&s.path().join("started"));
    third.kill().unwrap();
    third.wait().unwrap();
    let (_, h) = s.json(&["history", "slow", "--format", "json"]);
    let statuses: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses.last(),
        Some(&"interrupted"),
        "the killed run is recorded as interrupted: {statuses:?}"
    );
}

fn wait_for(p: &Path) {
    for _ in 0..300 {
        if p.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{} never appeared", p.display());
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn timeout_kills_the_whole_process_group_and_others_finish() {
    let s = setup(
        r#"
[jobs.t]
[[jobs.t.items]]
name = "hangs"
kind = "command"
argv = ["sh", "-c", "sleep 300 & echo $! > grandchild.pid; echo waiting; wait"]
timeout = "1s"

[[jobs.t.items]]
name = "quick"
kind = "command"
argv = ["sh", "-c", "echo ok"]
"#,
    );
    let (c, v) = s.json(&["run-job", "t", "--format", "json"]);
    assert_eq!(c, 1);
    let hangs = &v["items"][0];
    assert_eq!(hangs["status"], "fail");
    assert!(
        hangs["summary"].as_str().unwrap().starts_with("timed out"),
        "{hangs}"
    );
    assert_eq!(hangs["data"]["timed_out"], true);
    assert!(
        hangs["details"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == "  waiting"),
        "output captured: {hangs}"
    );
    assert_eq!(v["items"][1]["status"], "pass");
    let pid: i32 = std::fs::read_to_string(s.path().join("grandchild.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        !pid_alive(pid),
        "the grandchild {pid} was killed with its group"
    );
}

#[test]
fn job_timeout_fails_unfinished_items_with_the_reason() {
    let s = setup(
        r#"
[jobs.t]
timeout = "1s"
max_parallel_items = 1
[[jobs.t.items]]
name = "long"
kind = "command"
argv = ["sleep", "30"]
[[jobs.t.items]]
name = "never started"
kind = "command"
argv = ["true"]
"#,
    );
    let (c, v) = s.json(&["run-job", "t", "--format", "json"]);
    assert_eq!(c, 1);
    assert!(
        v["items"][0]["summary"]
            .as_str()
            .unwrap()
            .starts_with("timed out"),
        "{v}"
    );
    assert!(
        v["items"][1]["summary"]
            .as_str()
            .unwrap()
            .contains("job's timeout"),
        "{v}"
    );
}

#[test]
fn items_run_concurrently_up_to_max_parallel_items() {
    let item = |n: u32| {
        format!(
            "[[jobs.p.items]]\nname = \"i{n}\"\nkind = \"command\"\nargv = [\"sh\", \"-c\", \"echo start >> events; sleep 0.5; echo end >> events\"]\n"
        )
    };
    let s = setup(&format!(
        "[jobs.p]\nmax_parallel_items = 2\n{}",
        (0..6).map(item).collect::<String>()
    ));
    let (c, _) = s.json(&["run-job", "p", "--format", "json"]);
    assert_eq!(c, 0);
    let events = std::fs::read_to_string(s.path().join("events")).unwrap();
    let (mut running, mut max) = (0i32, 0i32);
    for e in events.lines() {
        running += if e == "start" { 1 } else { -1 };
        max = max.max(running);
    }
    assert_eq!(
        max, 2,
        "at most two at once, and they do overlap:\n{events}"
    );
}

#[test]
fn dry_run_plans_state_changing_commands_and_runs_read_only_ones() {
    let s = setup(
        r#"
[jobs.d]
[[jobs.d.items]]
name = "changes things"
kind = "command"
argv = ["touch", "changed"]
[[jobs.d.items]]
name = "only looks"
kind = "command"
argv = ["sh", "-c", "echo looked > looked"]
read_only = true
"#,
    );
    let (c, v) = s.json(&["run-job", "d", "--dry-run", "--format", "json"]);
    assert_eq!(c, 0);
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["items"][0]["status"], "skipped");
    assert_eq!(
        v["items"][0]["summary"],
        "dry run: would run `touch changed`"
    );
    assert!(!s.path().join("changed").exists(), "nothing changed");
    assert_eq!(v["items"][1]["status"], "pass");
    assert!(s.path().join("looked").exists());
}

#[test]
fn command_gets_runbook_environment_cwd_and_last_output_lines() {
    let s = setup(
        r#"
[jobs.e]
[[jobs.e.items]]
name = "env"
kind = "command"
argv = ["sh", "-c", "echo job=$RUNBOOK_JOB run=$RUNBOOK_RUN_ID trigger=$RUNBOOK_TRIGGER sched=[$RUNBOOK_SCHEDULED_FOR] extra=$EXTRA notify=[$NOTIFY_SOCKET]; pwd; for i in 1 2 3 4 5; do echo line$i; done"]
env = { EXTRA = "yes" }
output_lines = 3
cwd = "sub"
"#,
    );
    std::fs::create_dir(s.path().join("sub")).unwrap();
    let out = s
        .cmd()
        .args(["run-job", "e", "--format", "json"])
        .env("NOTIFY_SOCKET", "/run/systemd/notify")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let data = &v["items"][0]["data"];
    let output: Vec<&str> = data["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(
        output,
        ["line3", "line4", "line5"],
        "the last output_lines lines"
    );
    // The full output was longer; check the environment through a second, unlimited run.
    std::fs::write(
        s.path().join("jobs.toml"),
        std::fs::read_to_string(s.path().join("jobs.toml"))
            .unwrap()
            .replace("output_lines = 3", "output_lines = 20"),
    )
    .unwrap();
    let out = s
        .cmd()
        .args(["run-job", "e", "--format", "json"])
        .env("NOTIFY_SOCKET", "/run/systemd/notify")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = v["items"][0]["data"]["output"][0]
        .as_str()
        .unwrap()
        .to_string();
    let run_id = v["run_id"].as_str().unwrap();
    assert_eq!(
        first,
        format!("job=e run={run_id} trigger=manual sched=[] extra=yes notify=[]")
    );
    let pwd = v["items"][0]["data"]["output"][1].as_str().unwrap();
    assert_eq!(
        PathBuf::from(pwd),
        s.path().canonicalize().unwrap().join("sub")
    );
}

#[test]
fn missing_program_is_a_failed_item_not_a_crash() {
    let s = setup(
        "[jobs.m]\n[[jobs.m.items]]\nname = \"nope\"\nkind = \"command\"\nargv = [\"/nonexistent/program\"]\n[[jobs.m.items]]\nname = \"ok\"\nkind = \"manual\"\n",
    );
    let (c, v) = s.json(&["run-job", "m", "--format", "json"]);
    assert_eq!(c, 1);
    assert!(
        v["items"][0]["summary"]
            .as_str()
            .unwrap()
            .starts_with("cannot start `/nonexistent/program`"),
        "{v}"
    );
    assert_eq!(v["items"][1]["status"], "manual");
}

#[test]
fn change_is_reported_against_the_previous_run() {
    let s = setup(
        "[jobs.c]\n[[jobs.c.items]]\nname = \"flag\"\nkind = \"command\"\nargv = [\"sh\", \"-c\", \"test ! -e broken\"]\n",
    );
    let (_, first) = s.json(&["run-job", "c", "--format", "json"]);
    assert_eq!(first["items"][0]["change"], "same");
    std::fs::write(s.path().join("broken"), "").unwrap();
    let (_, second) = s.json(&["run-job", "c", "--format", "json"]);
    assert_eq!(second["items"][0]["change"], "new_failure");
    let (_, third) = s.json(&["run-job", "c", "--format", "json"]);
    assert_eq!(third["items"][0]["change"], "same");
    std::fs::remove_file(s.path().join("broken")).unwrap();
    let (_, fourth) = s.json(&["run-job", "c", "--format", "json"]);
    assert_eq!(fourth["items"][0]["change"], "recovered");
    let txt = text(&s.run(&["report", "last"]).stdout);
    assert!(txt.contains("[recovered]"), "{txt}");
}

/// Two items that fail while their file exists; a channel with `on = "change"`.
const TWO_FLAGS: &str = "[notify.changes]\ntype = \"file\"\ndir = \"changes\"\non = \"change\"\n\n[jobs.c]\nnotify = [\"changes\"]\n[[jobs.c.items]]\nname = \"a\"\nkind = \"command\"\nargv = [\"sh\", \"-c\", \"test ! -e broken_a\"]\n[[jobs.c.items]]\nname = \"b\"\nkind = \"command\"\nargv = [\"sh\", \"-c\", \"test ! -e broken_b\"]\n";

fn changes(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{}={}",
                i["name"].as_str().unwrap(),
                i["change"].as_str().unwrap()
            )
        })
        .collect()
}

fn channel_status(v: &Value, channel: &str) -> String {
    v["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["channel"] == channel)
        .unwrap_or_else(|| panic!("no {channel} in {v}"))["status"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn change_compares_with_the_previous_comparable_run_not_an_item_or_dry_run() {
    let s = setup(TWO_FLAGS);
    std::fs::write(s.path().join("broken_a"), "").unwrap();
    std::fs::write(s.path().join("broken_b"), "").unwrap();
    let (c, full) = s.json(&["run-job", "c", "--format", "json"]);
    assert_eq!(c, 1);
    assert_eq!(changes(&full), ["a=new_failure", "b=new_failure"]);
    // A partial run compares with the full run, and is not the base of the next one.
    let (_, partial) = s.json(&["run-job", "c", "--item", "a", "--format", "json"]);
    assert_eq!(changes(&partial), ["a=same"]);
    let (_, next) = s.json(&["run-job", "c", "--format", "json"]);
    assert_eq!(changes(&next), ["a=same", "b=same"], "{next}");
    // Nor is a dry run (its command items are skipped).
    let (_, dry) = s.json(&["run-job", "c", "--dry-run", "--format", "json"]);
    assert_eq!(dry["items"][1]["status"], "skipped", "{dry}");
    let (_, after_dry) = s.json(&["run-job", "c", "--format", "json"]);
    assert_eq!(changes(&after_dry), ["a=same", "b=same"], "{after_dry}");
}

#[test]
fn on_change_sends_only_when_the_run_differs_from_the_previous_comparable_run() {
    let s = setup(TWO_FLAGS);
    std::fs::write(s.path().join("broken_a"), "").unwrap();
    std::fs::write(s.path().join("broken_b"), "").unwrap();
    // A job's first run is a change.
    let (_, first) = s.json(&["run-job", "c", "--format", "json"]);
    assert_eq!(channel_status(&first, "changes"), "sent", "{first}");
    let (_, partial) = s.json(&["run-job", "c", "--item", "a", "--format", "json"]);
    assert_eq!(channel_status(&partial, "changes"), "skipped", "{partial}");
    let (_, same) = s.json(&["run-job", "c", "--format", "json"]);
    assert_eq!(channel_status(&same, "changes"), "skipped", "{same}");
    // Still failing overall, but b recovered: that is a change.
    std::fs::remove_file(s.path().join("broken_b")).unwrap();
    let (_, recovered) = s.json(&["run-job", "c", "--format", "json"]);
    assert_eq!(changes(&recovered), ["a=same", "b=recovered"]);
    assert_eq!(channel_status(&recovered, "changes"), "sent", "{recovered}");
    // a recovers too: the run passes.
    std::fs::remove_file(s.path().join("broken_a")).unwrap();
    let (c, pass) = s.json(&["run-job", "c", "--format", "json"]);
    assert_eq!(c, 0);
    assert_eq!(channel_status(&pass, "changes"), "sent", "{pass}");
    let (_, again) = s.json(&["run-job", "c", "--format", "json"]);
    assert_eq!(channel_status(&again, "changes"), "skipped", "{again}");
    let sent = std::fs::read_dir(s.path().join("changes"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count();
    assert_eq!(sent, 3);
}

#[test]
fn key_rotation_warns_before_and_fails_after_due() {
    let today = chrono::Utc::now().date_naive();
    let s = setup(&format!(
        "[jobs.k]\n[[jobs.k.items]]\nname = \"keys\"\nkind = \"key_rotation\"\nkeys = [\n  {{ name = \"fresh\", rotated = {}, max_age = \"90d\" }},\n  {{ name = \"soon\", rotated = {}, max_age = \"90d\", owner = \"payments\" }},\n  {{ name = \"late\", rotated = {}, max_age = \"90d\" }},\n]\n",
        today - chrono::Duration::days(1),
        today - chrono::Duration::days(85),
        today - chrono::Duration::days(95),
    ));
    let (c, v) = s.json(&["run-job", "k", "--format", "json"]);
    assert_eq!(c, 1);
    let item = &v["items"][0];
    assert_eq!(item["status"], "fail");
    assert_eq!(item["summary"], "1 key overdue for rotation, 1 due soon");
    let keys = item["data"]["keys"].as_array().unwrap();
    let by_name = |n: &str| keys.iter().find(|k| k["name"] == n).unwrap().clone();
    // The trend's number (SPEC 9.3): the fewest days left (the overdue key's, negative).
    let fewest = keys.iter().filter_map(|k| k["days_left"].as_i64()).min();
    assert!(fewest.is_some_and(|d| d < 0), "{item:#}");
    assert_eq!(item["data"]["value"].as_i64(), fewest, "{item:#}");
    assert_eq!(by_name("late")["status"], "fail");
    assert_eq!(by_name("soon")["status"], "warn");
    assert_eq!(by_name("fresh")["status"], "pass");
    assert!(
        item["details"][0].as_str().unwrap().contains("OVERDUE"),
        "most urgent first: {item}"
    );
}

#[test]
fn shipped_jobs_toml_is_valid_and_covers_the_runbook_jobs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("smtp"), "x").unwrap();
    let out = Command::cargo_bin("runbook")
        .unwrap()
        .current_dir(root)
        .args(["--config", "jobs.toml", "list", "--format", "json"])
        .env("TRADING_DB_PASSWORD", "x")
        .env("SLACK_WEBHOOK_URL", "https://hooks.example/x")
        .env("CREDENTIALS_DIRECTORY", creds.path())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let jobs: Vec<&str> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job"].as_str().unwrap())
        .collect();
    assert_eq!(jobs, ["daily", "monthly", "monthly-dr", "weekly"]);
    let job = |n: &str| {
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["job"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(job("daily")["schedule"], "0 10 * * *");
    assert_eq!(job("weekly")["schedule"], "0 11 * * MON");
    assert_eq!(job("daily")["timezone"], "Asia/Kolkata");
    assert!(
        job("monthly-dr")["schedule"].is_null(),
        "monthly-dr runs by hand"
    );
    let kinds = |n: &str| {
        job(n)["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["kind"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    for k in ["alertmanager", "backup", "log_scan", "http", "system"] {
        assert!(kinds("daily").contains(&k.to_string()), "daily has {k}");
    }
    for k in ["vacuum", "reindex", "key_rotation", "tls_cert", "command"] {
        assert!(kinds("monthly").contains(&k.to_string()), "monthly has {k}");
    }
    for k in ["backup", "restore_drill", "command"] {
        assert!(
            kinds("monthly-dr").contains(&k.to_string()),
            "monthly-dr has {k}"
        );
    }
    assert!(kinds("weekly").contains(&"slow_queries".to_string()));
}

#[test]
fn a_report_that_cannot_be_stored_is_still_printed() {
    // A process outside the run's process group holds the state database's write lock past
    // the busy timeout (10 s), as a stuck process or a full disk would make writes fail.
    let s = setup(
        r#"
[jobs.w]
[[jobs.w.items]]
name = "locks the state database"
kind = "command"
argv = ["sh", "-c", "setsid python3 -c \"import sqlite3,time; c=sqlite3.connect('state/state.db', isolation_level=None); c.execute('BEGIN EXCLUSIVE'); open('locked','w').close(); time.sleep(14)\" >/dev/null 2>&1 & while [ ! -e locked ]; do sleep 0.05; done"]
"#,
    );
    let out = s.run(&["run-job", "w", "--no-notify", "--format", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no report printed ({e}): {}", text(&out.stderr)));
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(v["items"][0]["status"], "pass");
    assert!(
        text(&out.stderr).contains("cannot store the report"),
        "{}",
        text(&out.stderr)
    );
}
