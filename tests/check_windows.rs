//! `check-config` warns when a job's runs can be further apart than an item's look-ahead
//! window (a certificate or key could pass the whole window between two runs unwarned).

mod support;

use support::{Setup, text};

/// `runbook check-config` on `config`: (exit code, stdout and stderr).
fn check(s: &Setup) -> (i32, String) {
    let out = s.run(&["--config", "jobs.toml", "check-config"]);
    (
        support::code(&out),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

const CONFIG: &str = r#"
[runbook]
timezone = "Asia/Kolkata"

[jobs.monthly]
schedule = "0 2 1-7 * MON"

[[jobs.monthly.items]]
name = "TLS certificates"
kind = "tls_cert"
files = ["cert.pem"]
warn_within = "30d"

[[jobs.monthly.items]]
name = "API keys"
kind = "key_rotation"
remind_before = "42d"
keys = [{ name = "Broker", rotated = 2026-09-07, max_age = "90d" }]

[jobs.weekly]
schedule = "0 11 * * MON"

[[jobs.weekly.items]]
name = "Weekly keys"
kind = "key_rotation"
keys = [{ name = "Broker", rotated = 2026-09-07, max_age = "90d" }]
"#;

#[test]
fn a_window_shorter_than_the_longest_gap_between_runs_is_a_warning() {
    let s = Setup::raw(CONFIG);
    let (code, out) = check(&s);
    assert_eq!(code, 0, "a warning, not an error: {out}");
    let warnings: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("longest gap between its slots"))
        .collect();
    assert_eq!(warnings.len(), 1, "{out}");
    let w = warnings[0];
    assert!(
        w.starts_with("warning: ") && w.contains("jobs.toml:"),
        "names the file and line: {w}"
    );
    assert!(
        w.contains("job \"monthly\", item \"TLS certificates\"")
            && w.contains("can be 35d apart")
            && w.contains("warn_within (30d)"),
        "names job, item, gap and window: {w}"
    );
    // 42 days cover first Mondays; 14 days (the default) cover a weekly job.
    assert!(
        !out.contains("item \"API keys\"") && !out.contains("Weekly keys"),
        "{out}"
    );
}

#[test]
fn the_shipped_config_covers_its_windows() {
    let s = Setup::builder()
        .env("TRADING_DB_PASSWORD", "x")
        .env(
            "SLACK_WEBHOOK_URL",
            "https://hooks.slack.invalid/services/T/B/x",
        )
        .build();
    s.write("smtp", "x");
    // The shipped file in place (it refers to sql/ and scripts/ beside it), its secrets given.
    let out = s
        .cmd()
        .env("CREDENTIALS_DIRECTORY", s.path())
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/jobs.toml"),
            "check-config",
        ])
        .output()
        .unwrap();
    let text = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("longest gap between its slots"), "{text}");
}
