//! `runbook demo` works from nothing but PostgreSQL's server binaries, and cleans up after
//! itself: the README's first command.

mod support;

fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(cmd);
            }
        }
    }
    found
}

#[test]
fn demo_runs_the_shipped_jobs_against_a_throwaway_cluster_and_cleans_up() {
    let out = support::clean_command().arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for job in ["daily", "weekly", "monthly", "monthly-dr"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("{job} "))),
            "no report header for {job}:\n{stdout}"
        );
    }
    // The real parts did their work: the DR script ran, the manual lines are listed.
    assert!(
        stdout.contains("PASS  Disaster recovery test (application rollback, dry run)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("TODO  Review incident postmortems"),
        "{stdout}"
    );
    let html_dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("HTML reports (as e-mailed): "))
        .expect("the demo says where the HTML is");
    let html: Vec<_> = std::fs::read_dir(html_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "html"))
        .collect();
    assert_eq!(html.len(), 4, "one HTML report per job in {html_dir}");
    let page = std::fs::read_to_string(html[0].path()).unwrap();
    assert!(page.contains("<table") && !page.contains("<script"));
    std::fs::remove_dir_all(html_dir).unwrap();
    assert!(
        stderr.contains("stopped the cluster and removed the temporary folder"),
        "{stderr}"
    );
    let data = stderr
        .split("data in ")
        .nth(1)
        .and_then(|r| r.split(" (binaries").next())
        .expect("the demo names its data folder");
    assert!(!std::path::Path::new(data).exists(), "{data} was removed");
    assert_eq!(
        processes_mentioning(data),
        Vec::<String>::new(),
        "no PostgreSQL left running"
    );
}

#[test]
fn demo_interrupted_with_ctrl_c_stops_the_cluster_and_removes_its_folder() {
    use std::io::{BufRead, BufReader};
    let mut child = support::clean_command()
        .arg("demo")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut data = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.split("data in ").nth(1) {
            data = rest.split(" (binaries").next().map(str::to_string);
        }
        // Interrupt while the database is being loaded: the cluster is up.
        if line.contains("loading the trading database") {
            break;
        }
    }
    let data = data.expect("the demo names its data folder");
    assert!(std::path::Path::new(&data).exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert!(
        rest.iter()
            .any(|l| l.contains("interrupted; stopping the throwaway cluster")),
        "{rest:?}"
    );
    assert!(!std::path::Path::new(&data).exists(), "{data} was removed");
    assert_eq!(
        processes_mentioning(&data),
        Vec::<String>::new(),
        "no PostgreSQL left running"
    );
}
