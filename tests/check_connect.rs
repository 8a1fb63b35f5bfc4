//! `check-config --connect` reaches every target for real.

mod support;

use support::Setup;

#[test]
fn connect_reports_reachable_and_unreachable_targets_without_secrets() {
    let pg = support::pg::cluster();
    // The live target must log in with its password (scram-sha-256): "reachable" proves
    // runbook sent it.
    support::pg::require_password(&pg, "checker", "live-pw-that-must-not-leak");
    let dead_port = support::free_port();
    // An explicit state folder, as in every test: the default would be /var/lib/runbook on a
    // machine where the package is installed.
    let dir = Setup::new(&format!(
        "[targets.live]\nurl = \"postgres://checker@127.0.0.1:{}/postgres\"\npassword = {{ env = \"RUNBOOK_TEST_LIVE_PW\" }}\nsslmode = \"disable\"\n\n[targets.down]\nurl = \"postgres://app@127.0.0.1:{dead_port}/app\"\npassword = {{ env = \"RUNBOOK_TEST_DB_PW\" }}\nsslmode = \"disable\"\nconnect_timeout = \"2s\"\n",
        pg.port
    ));
    let out = dir
        .cmd()
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
    let out = dir
        .cmd()
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
    let out = dir
        .cmd()
        .arg("check-config")
        .env("RUNBOOK_TEST_DB_PW", "x")
        .env("RUNBOOK_TEST_LIVE_PW", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}
