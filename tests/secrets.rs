//! Secrets stay with runbook, end to end: `runbook run-job` on a jobs.toml in a temporary
//! folder, with real child processes and a real PostgreSQL that asks for passwords.
//!
//! - A `command` item's program gets a clean environment (none of the daemon's variables but
//!   PATH, HOME, the locale...), plus the run's `RUNBOOK_*` variables and its `env` option;
//!   whatever secret it prints is `[redacted]` in every rendering of the report.
//! - PostgreSQL tools (pg_restore) get a clean environment too, and a target's password only
//!   where the item hands it over (the restore drill, against a server that requires it).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use support::{Setup, item, pg::require_password};

/// Set in runbook's environment only: no child may see it.
const DAEMON_ONLY: (&str, &str) = ("RUNBOOK_TEST_DAEMON_ONLY", "daemon-only-value-5150");

fn runbook(config: &Path) -> Command {
    let mut cmd = support::runbook_std(config, &[]);
    cmd.env(DAEMON_ONLY.0, DAEMON_ONLY.1);
    cmd
}

fn output(mut cmd: Command) -> (i32, String, String) {
    let out = cmd.output().expect("runbook runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `NAME=value` lines of `env` output (the report's `data.output` of a command item).
fn env_lines(item: &serde_json::Value) -> BTreeMap<String, String> {
    item["data"]["output"]
        .as_array()
        .expect("output lines")
        .iter()
        .filter_map(|l| l.as_str()?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_command_gets_a_clean_environment_and_the_secrets_it_prints_never_reach_a_report() {
    let s = Setup::new("");
    let dir = s.dir.path();
    // Secrets of every sort the config has: a target's password (file), a notifier's URL
    // (environment), and the command's own `env` secret (environment).
    std::fs::write(dir.join("db-password"), "db-pw-in-a-file-8086\n").unwrap();
    let script = s.write(
        "show-env.sh",
        "#!/bin/sh\nenv\necho \"token: $API_TOKEN\"\necho \"db password: $(cat db-password)\"\necho \"webhook: $1\"\n",
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let jobs = r#"
[targets.db]
url = "postgres://app@127.0.0.1:1/app"
password = { file = "db-password" }

[notify.chat]
type = "slack"
webhook_url = { env = "RUNBOOK_TEST_WEBHOOK" }

[jobs.env]
notify = []
[[jobs.env.items]]
name = "show"
kind = "command"
argv = ["./show-env.sh", "https://hooks.example/T000/B000/webhook-secret-6502"]
output_lines = 200
read_only = true
env = { API_TOKEN = { env = "RUNBOOK_TEST_API_TOKEN" }, PLAIN = "plain-value", FROM_FILE = { file = "db-password" } }
"#;
    let config = s.write(
        "jobs.toml",
        &(std::fs::read_to_string(dir.join("jobs.toml")).unwrap() + jobs),
    );
    let secrets = [
        "api-token-secret-6809",
        "db-pw-in-a-file-8086",
        "https://hooks.example/T000/B000/webhook-secret-6502",
    ];
    let with_secrets = |args: &[&str]| {
        let mut cmd = runbook(&config);
        cmd.args(args)
            .env("RUNBOOK_TEST_API_TOKEN", secrets[0])
            .env("RUNBOOK_TEST_WEBHOOK", secrets[2]);
        output(cmd)
    };
    let (code, stdout, stderr) =
        with_secrets(&["run-job", "env", "--format", "json", "--no-notify"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    let show = item(&report, "show");
    assert_eq!(show["status"], "pass", "{show:#}");

    let env = env_lines(show);
    // The item's own variables, a plain value as is and secrets handed over (then hidden in
    // what the program printed)...
    assert_eq!(
        env.get("PLAIN").map(String::as_str),
        Some("plain-value"),
        "{env:#?}"
    );
    assert_eq!(
        env.get("API_TOKEN").map(String::as_str),
        Some("[redacted]"),
        "{env:#?}"
    );
    assert_eq!(
        env.get("FROM_FILE").map(String::as_str),
        Some("[redacted]"),
        "{env:#?}"
    );
    assert_eq!(
        env.get("RUNBOOK_JOB").map(String::as_str),
        Some("env"),
        "{env:#?}"
    );
    assert_eq!(
        env.get("RUNBOOK_TRIGGER").map(String::as_str),
        Some("manual"),
        "{env:#?}"
    );
    assert!(
        env.contains_key("RUNBOOK_RUN_ID") && env.contains_key("PATH"),
        "{env:#?}"
    );
    // ... and nothing of the daemon's but the few a program needs (a shell adds PWD & co.).
    let allowed = [
        "PATH",
        "HOME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "USER",
        "LOGNAME",
        "PLAIN",
        "API_TOKEN",
        "FROM_FILE",
        "RUNBOOK_JOB",
        "RUNBOOK_RUN_ID",
        "RUNBOOK_TRIGGER",
        "RUNBOOK_SCHEDULED_FOR",
        "PWD",
        "OLDPWD",
        "SHLVL",
        "_",
    ];
    for name in env.keys() {
        assert!(
            allowed.contains(&name.as_str()) || name.starts_with("LC_"),
            "the command inherited {name} from runbook: {env:#?}"
        );
    }
    assert!(!env.contains_key(DAEMON_ONLY.0), "{env:#?}");
    assert!(!stdout.contains(DAEMON_ONLY.1));

    let lines: Vec<&str> = show["data"]["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    for line in [
        "token: [redacted]",
        "db password: [redacted]",
        "webhook: [redacted]",
    ] {
        assert!(lines.contains(&line), "{line:?} not in {lines:#?}");
    }
    // The summary quotes the last line: hidden there too.
    assert_eq!(
        show["summary"]
            .as_str()
            .unwrap_or_default()
            .split_once(": ")
            .map(|x| x.1),
        Some("webhook: [redacted]"),
        "{show:#}"
    );

    // No rendering of the stored report shows a secret: JSON, text, HTML; nor the log.
    let mut all = format!("{stdout}\n{stderr}");
    for format in ["json", "text", "html"] {
        let (code, out, err) = with_secrets(&["report", "last", "--format", format]);
        assert_eq!(code, 0, "report --format {format}: {out}\n{err}");
        assert!(
            out.contains("[redacted]"),
            "report --format {format}: {out}"
        );
        all += &out;
        all += &err;
    }
    for secret in secrets {
        assert!(
            !all.contains(secret),
            "{secret} appears in runbook's output:\n{all}"
        );
    }
}

#[test]
fn pg_tools_get_a_clean_environment_and_the_password_only_where_the_item_hands_it_over() {
    let pg = support::pg::trading_cluster();
    let password = "drill-pw-scram-1977";
    require_password(&pg, "drill_owner", password);
    let backups = tempfile::tempdir().unwrap();
    let dump = backups.path().join("trading.dump");
    support::pg::pg_dump(&pg, "trading", "c", &dump, &[]);
    support::files::age(&dump, std::time::Duration::from_secs(3600));

    // The real server binaries, with pg_restore wrapped: the wrapper writes the environment it
    // was given to a file, then runs the real pg_restore.
    let bin = tempfile::tempdir().unwrap();
    let envs = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&pg.bin).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "pg_restore" {
            std::os::unix::fs::symlink(e.path(), bin.path().join(e.file_name())).unwrap();
        }
    }
    let wrapper = bin.path().join("pg_restore");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nenv > \"{}/pg_restore.$$.env\"\necho \"ARGS=$*\" >> \"{0}/pg_restore.$$.env\"\nexec \"{}\" \"$@\"\n",
            envs.path().display(),
            pg.tool("pg_restore").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    let targets = format!(
        "[targets.trading]\nurl = \"postgres://drill_owner@127.0.0.1:{}/trading\"\npassword = {{ env = \"RUNBOOK_TEST_DRILL_PW\" }}\nsslmode = \"disable\"\n",
        pg.port
    );
    let dir = support::files::toml_path(backups.path());
    let run = |items: &str| {
        let s = Setup::job_t(&targets, items);
        let mut cmd = s.job_t_command(&[]);
        cmd.env(DAEMON_ONLY.0, DAEMON_ONLY.1)
            .env("RUNBOOK_TEST_DRILL_PW", password)
            .env("PG_BIN", bin.path())
            .env("PGPASSWORD", "the-daemons-own-pgpassword");
        let out = cmd.output().unwrap();
        let all = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!all.contains(password), "{all}");
        let report: serde_json::Value =
            serde_json::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap_or_default();
        let mut seen = vec![];
        for e in std::fs::read_dir(envs.path()).unwrap() {
            let p = e.unwrap().path();
            seen.push(std::fs::read_to_string(&p).unwrap());
            std::fs::remove_file(p).unwrap();
        }
        assert!(!seen.is_empty(), "pg_restore did not run: {all}");
        (out.status.code(), report["items"][0].clone(), seen, all)
    };
    let vars = |env: &str| -> BTreeMap<String, String> {
        env.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };

    // The drill connects as drill_owner, who must give the password, to make its scratch
    // database and the weak role that restores into it; pg_restore logs in as that role with
    // the drill's own one-time password (never the target's, never the daemon's PGPASSWORD):
    // the drill passing proves both were handed over. Nothing else of the daemon's environment
    // went along.
    let (code, drill, seen, all) = run(&format!(
        "[[jobs.t.items]]\nname = \"drill\"\nkind = \"restore_drill\"\ntarget = \"trading\"\ndir = {dir}\npattern = \"*.dump\"\nchecks = [{{ name = \"orders\", query = \"SELECT count(*) FROM orders\", min = 1 }}]\n"
    ));
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(drill["status"], "pass", "{drill:#}");
    for env in &seen {
        let v = vars(env);
        if v.get("ARGS").is_some_and(|a| a.starts_with("-l ")) {
            // Reading the dump's table of contents (for its extensions) connects nowhere.
            assert!(!v.contains_key("PGPASSWORD"), "{v:#?}");
            assert!(!v.contains_key(DAEMON_ONLY.0), "{v:#?}");
            continue;
        }
        let drill_password = v.get("PGPASSWORD").map(String::as_str).unwrap_or_default();
        assert!(
            !drill_password.is_empty()
                && drill_password != password
                && drill_password != "the-daemons-own-pgpassword",
            "{v:#?}"
        );
        assert!(
            v.get("PGUSER")
                .is_some_and(|u| u.starts_with("runbook_drill_")),
            "{v:#?}"
        );
        assert!(!v.contains_key(DAEMON_ONLY.0), "{v:#?}");
        assert!(!v.contains_key("RUNBOOK_TEST_DRILL_PW"), "{v:#?}");
    }

    // Verifying a backup connects nowhere: pg_restore gets no password at all, not even the
    // daemon's own PGPASSWORD.
    let (code, backup, seen, all) = run(&format!(
        "[[jobs.t.items]]\nname = \"backup\"\nkind = \"backup\"\ndir = {dir}\npattern = \"*.dump\"\n"
    ));
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(backup["status"], "pass", "{backup:#}");
    for env in &seen {
        let v = vars(env);
        assert!(!v.contains_key("PGPASSWORD"), "{v:#?}");
        assert!(!v.contains_key(DAEMON_ONLY.0), "{v:#?}");
        assert!(v.contains_key("PATH"), "{v:#?}");
    }
}

#[test]
fn slow_queries_reports_query_texts_without_their_literals() {
    let pg = support::pg::cluster_with_app_db();
    support::pg::q(
        &pg,
        "CREATE EXTENSION pg_stat_statements; CREATE ROLE app_user LOGIN",
    );
    // A utility statement with a password: pg_stat_statements keeps its text as sent.
    support::pg::q(&pg, "ALTER ROLE app_user PASSWORD 'hunter2-in-statements'");
    let raw = support::pg::q(
        &pg,
        "SELECT string_agg(query, ' | ') FROM pg_stat_statements WHERE query LIKE 'ALTER ROLE%'",
    );
    assert!(
        raw.contains("'hunter2-in-statements'"),
        "this test expects a server whose pg_stat_statements keeps the literal: {raw}"
    );
    // Long-running statements with literals in the text and in a comment.
    let _a = support::pg::Holder::start(&pg, "SELECT pg_sleep(120) /* 'secret-literal' */;\n");
    let _b = support::pg::Holder::start(&pg, "SELECT 'hunter2-running', pg_sleep(120);\n");
    support::pg::wait_for(
        &pg,
        "SELECT count(*) = 2 FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT %pg_sleep(120)%' AND now() - query_start > interval '1.5s'",
    );
    let jobs = r#"
[jobs.w]
[[jobs.w.items]]
name = "slow"
kind = "slow_queries"
target = "db"
top = 1000
warn_mean = "1h"
max_running = "1s"
"#;
    let s = Setup::with_db(&pg.url("app"), "", jobs);
    let (code, report, all) = s.run_job("w", &[]);
    assert_eq!(code, 0, "{all}");
    let slow = item(&report, "slow");
    assert_eq!(slow["status"], "warn", "{slow:#}");
    for secret in ["hunter2", "secret-literal"] {
        assert!(!all.contains(secret), "{secret} is in the report:\n{all}");
    }

    // The running sessions: normalised text, and what identifies them.
    let running = slow["data"]["long_running"]
        .as_array()
        .expect("long_running");
    let mut queries: Vec<&str> = running.iter().filter_map(|r| r["query"].as_str()).collect();
    queries.sort();
    assert_eq!(
        queries,
        ["SELECT $1, pg_sleep($2)", "SELECT pg_sleep($1)"],
        "{slow:#}"
    );
    for r in running {
        assert_eq!(r["user"], "postgres", "{r:#}");
        assert_eq!(r["application"], "psql", "{r:#}");
        assert_eq!(r["database"], "app", "{r:#}");
        assert_eq!(r["state"], "active", "{r:#}");
        assert!(r["pid"].as_i64().is_some_and(|p| p > 0), "{r:#}");
        assert!(r["seconds"].as_f64().is_some_and(|s| s >= 1.0), "{r:#}");
        // pg_stat_statements is loaded, so the server computes query ids.
        assert!(r["query_id"].as_i64().is_some(), "{r:#}");
    }
    assert!(
        slow["details"].to_string().contains("(psql) active for"),
        "{slow:#}"
    );

    // The ALTER ROLE from pg_stat_statements, with its password replaced.
    let statements = slow["data"]["statements"].as_array().expect("statements");
    let alter = statements
        .iter()
        .find(|s| {
            s["query"]
                .as_str()
                .is_some_and(|q| q.starts_with("ALTER ROLE"))
        })
        .unwrap_or_else(|| {
            panic!("ALTER ROLE not listed (pg_stat_statements has {raw:?}): {slow:#}")
        });
    assert_eq!(
        alter["query"], "ALTER ROLE app_user PASSWORD $1",
        "{alter:#}"
    );
    assert!(alter["query_id"].as_i64().is_some(), "{alter:#}");
}
