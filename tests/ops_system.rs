//! `system` on the machine running the test, with thresholds chosen so the outcome is known.

mod ops_support;

use ops_support::{Setup, details, item};

#[test]
fn thresholds_decide_the_status_and_the_numbers_are_reported() {
    let dir = tempfile::tempdir().expect("temp");
    let items = format!(
        r#"
[[jobs.t.items]]
name = "always warns on disk"
kind = "system"
paths = [{0:?}]
disk_warn = "0%"
disk_fail = "100%"
memory_warn = "100%"
memory_fail = "100%"
load_warn_per_core = 1000.0

[[jobs.t.items]]
name = "never over"
kind = "system"
paths = ["/", {0:?}]
disk_warn = "100%"
disk_fail = "100%"
memory_warn = "100%"
memory_fail = "100%"
load_warn_per_core = 1000.0

[[jobs.t.items]]
name = "missing path"
kind = "system"
paths = ["/no/such/mount/point"]
"#,
        dir.path()
    );
    let setup = Setup::new(&items);
    let (code, report) = setup.run(&[]);
    assert_eq!(code, 1, "the missing path fails: {report:#}");

    let warn = item(&report, "always warns on disk");
    assert_eq!(warn["status"], "warn", "{warn:#}");
    assert!(
        warn["summary"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("{} ", dir.path().display())),
        "{warn:#}"
    );
    let disk = &warn["data"]["disks"][0];
    assert!(
        disk["size"].as_u64().unwrap_or(0) > 0 && disk["used_percent"].as_f64().is_some(),
        "{disk:#}"
    );
    assert!(warn["data"]["memory"]["total"].as_u64().unwrap_or(0) > 0);
    assert!(warn["data"]["load"]["cores"].as_u64().unwrap_or(0) >= 1);

    let pass = item(&report, "never over");
    assert_eq!(pass["status"], "pass", "{pass:#}");
    let d = details(&pass);
    assert!(
        d.contains("disk /: ") && d.contains("memory: ") && d.contains("per core"),
        "{d}"
    );

    let missing = item(&report, "missing path");
    assert_eq!(missing["status"], "fail");
    assert!(
        missing["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("/no/such/mount/point")
    );
}
