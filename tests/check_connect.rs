//! `check-config --connect` reaches every target for real.

mod db_support;

use assert_cmd::Command;
use runbook::face::pgcluster::TempCluster;

#[test]
fn connect_reports_reachable_and_unreachable_targets_without_secrets() {
    let pg = TempCluster::start().unwrap();
    // The live target must log in with its password (scram-sha-256): "reachable" proves
    // runbook sent it.
    db_support::require_password(&pg, "checker", "live-pw-that-must-not-leak");
    let dir = tempfile::tempdir().unwrap();
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // An explicit state folder, as in every test: the default would be /var/lib/runbook on a
    // machine where the package is installed.
    let config = format!(
        "[runbook]\nstate_dir = \"state\"\n\n[targets.live]\nurl = \"postgres://checker@127.0.0.1:{}/postgres\"\npassword = {{ env = \"RUNBOOK_TEST_LIVE_PW\" }}\nsslmode = \"disable\"\n\n[targets.down]\nurl = \"postgres://app@127.0.0.1:{dead_port}/app\"\npassword = {{ env = \"RUNBOOK_TEST_DB_PW\" }}\nsslmode = \"disable\"\nconnect_timeout = \"2s\"\n",
        pg.port
    );
    std::fs::write(dir.path().join("jobs.toml"), config).unwrap();
    let out = Command::cargo_bin("runbook")
        .unwrap()
        .current_dir(dir.path())
        .args(["check-config", "--connect"])
        .env("RUNBOOK_TEST_DB_PW", "pw-that-must-not-leak")
        .env("RUNBOOK_TEST_LIVE_PW", "live-pw-that-must-not-leak")
        .output()
        .unwrap();
    let all =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("target live: reachable"), "{all}");
    assert!(
        all.contains("target down: UNREACHABLE: cannot connect to target down (app@127.0.0.1:"),
        "{all}"
    );
    assert!(!all.contains("pw-that-must-not-leak"), "{all}");

    // With a wrong password the live target is unreachable, and says why.
    let out = Command::cargo_bin("runbook")
        .unwrap()
        .current_dir(dir.path())
        .args(["check-config", "--connect"])
        .env("RUNBOOK_TEST_DB_PW", "pw-that-must-not-leak")
        .env("RUNBOOK_TEST_LIVE_PW", "wrong-pw-that-must-not-leak")
        .output()
        .unwrap();
    let all =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("target live: UNREACHABLE") && all.contains("password authentication failed"),
        "{all}"
    );
    assert!(!all.contains("pw-that-must-not-leak"), "{all}");

    // Without --connect nothing is contacted: the file itself is fine.
    let out = Command::cargo_bin("runbook")
        .unwrap()
        .current_dir(dir.path())
        .arg("check-config")
        .env("RUNBOOK_TEST_DB_PW", "x")
        .env("RUNBOOK_TEST_LIVE_PW", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}
