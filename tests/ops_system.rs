//! `system` on the machine running the test, with thresholds chosen so the outcome is known.

mod support;

use support::{Setup, details, item};

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
    let setup = Setup::job_t("", &items);
    let (code, report) = setup.report_t(&[]);
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
    let d = details(pass);
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

/// The shipped unit's `ProcSubset=pid` hides `/proc/meminfo` and `/proc/loadavg`: the item
/// still measures memory and load there. The binary runs in a private mount namespace with
/// `/proc` mounted `subset=pid` (tests run as root).
#[test]
fn memory_and_load_are_measured_when_proc_shows_only_processes() {
    let setup = Setup::job_t(
        "",
        r#"
[[jobs.t.items]]
name = "system"
kind = "system"
disk_warn = "100%"
disk_fail = "100%"
memory_warn = "100%"
memory_fail = "100%"
load_warn_per_core = 1000.0
"#,
    );
    // The script refuses to run the item when the files are still visible, so this test
    // cannot pass by accident on a normal /proc.
    let script = r#"
mount -t proc -o subset=pid,hidepid=invisible proc /proc || exit 96
for f in /proc/meminfo /proc/loadavg /proc/stat; do
    if [ -e "$f" ]; then echo "$f is still visible" >&2; exit 97; fi
done
exec "$1" --config "$2" run-job t --format json --no-notify
"#;
    let out = std::process::Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(env!("CARGO_BIN_EXE_runbook"))
        .arg(setup.config())
        .output()
        .expect("unshare (util-linux) must be installed: apt-get install util-linux");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !matches!(out.status.code(), Some(96 | 97)),
        "cannot set up /proc with subset=pid (tests run as root): exit {:?}\n{stderr}",
        out.status.code()
    );
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {stdout}\n{stderr}"));
    let sys = item(&report, "system");
    assert_eq!(sys["status"], "pass", "{sys:#}");
    let memory = &sys["data"]["memory"];
    let (total, available) = (
        memory["total"].as_u64().unwrap_or(0),
        memory["available"].as_u64().unwrap_or(0),
    );
    assert!(
        total > 0 && available > 0 && available <= total,
        "{memory:#}"
    );
    assert_eq!(memory["source"], "sysinfo", "{memory:#}");
    // The estimate counts the page cache: it is close to the kernel's MemAvailable outside.
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo outside");
    let mem_available = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("MemAvailable")
        * 1024;
    let gap = (available as f64 - mem_available as f64).abs() / total as f64;
    assert!(
        gap < 0.10,
        "estimated {available} available, the kernel says {mem_available} (of {total})"
    );
    let load = &sys["data"]["load"];
    assert!(
        load["load5"].as_f64().is_some() && load["cores"].as_u64().unwrap_or(0) >= 1,
        "{load:#}"
    );
    let d = details(sys);
    assert!(
        d.contains("estimated from sysinfo(2)") && d.contains("ProcSubset=pid"),
        "the detail says where memory comes from: {d}"
    );
}
