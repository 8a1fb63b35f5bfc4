//! `restore_drill` with `mode = "pitr"` end to end: a real primary archiving WAL into a folder,
//! real `pg_basebackup` outputs (tar, tar.gz, plain), `runbook run-job --format json`, a real
//! scratch server replaying the archive; the failure cases; the scratch server gone afterwards,
//! also when runbook is SIGTERMed mid-drill, and a crashed drill's server removed by the next
//! drill and by the daemon when it starts (but never while a live run's drill uses it).

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant, SystemTime};

use runbook::face::pgcluster::TempCluster;
use serde_json::Value;
use support::{
    Setup,
    daemon::Daemon,
    item,
    pg::{cluster_with_app_db, q, wait_for},
    wait_until_or,
};

/// A primary with `archive_mode = on`, copying WAL into `<cluster folder>/archive`.
fn archiving_cluster() -> (TempCluster, PathBuf) {
    let pg = cluster_with_app_db();
    let dir = pg.data.parent().expect("data has a parent").join("archive");
    let d = dir.display();
    let command = format!("mkdir -p \"{d}\" && test ! -f \"{d}/%f\" && cp \"%p\" \"{d}/%f\"");
    pg.restart_with(&format!(
        "archive_mode = on\narchive_command = '{}'",
        command.replace('\'', "''")
    ))
    .expect("restart with archiving");
    (pg, dir)
}

/// `pg_basebackup -D dest args...` against `pg`.
fn base_backup(pg: &TempCluster, dest: &Path, args: &[&str]) {
    let out = StdCommand::new(pg.tool("pg_basebackup"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            "-c",
            "fast",
            "-D",
        ])
        .arg(dest)
        .args(args)
        .output()
        .expect("pg_basebackup (apt-get install postgresql)");
    assert!(
        out.status.success(),
        "pg_basebackup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Switches WAL and waits until the segment is in the archive.
fn switch_and_wait(pg: &TempCluster) {
    let wal = q(pg, "SELECT pg_walfile_name(pg_switch_wal())");
    wait_for(
        pg,
        &format!("SELECT last_archived_wal >= '{wal}' FROM pg_stat_archiver"),
    );
}

/// Name → (size, mtime) of every file in `dir`.
fn listing(dir: &Path) -> BTreeMap<String, (u64, SystemTime)> {
    std::fs::read_dir(dir)
        .expect("read archive")
        .map(|e| {
            let e = e.expect("entry");
            let m = e.metadata().expect("metadata");
            (
                e.file_name().to_string_lossy().into_owned(),
                (m.len(), m.modified().expect("mtime")),
            )
        })
        .collect()
}

/// A config folder the scratch server's user (`postgres`, as we run as root) can reach: the
/// state folder is inside it.
fn setup(pg: &TempCluster, jobs: &str) -> Setup {
    let s = Setup::new(&format!(
        "[targets.db]\nurl = \"{}\"\nsslmode = \"disable\"\n\n{jobs}",
        pg.url("app")
    ));
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    s
}

fn pitr_item(job: &str, name: &str, base: &Path, archive: &Path, extra: &str) -> String {
    format!(
        "[[jobs.{job}.items]]\nname = \"{name}\"\nkind = \"restore_drill\"\nmode = \"pitr\"\ntarget = \"db\"\nbase_backup_dir = \"{}\"\nwal_archive_dir = \"{}\"\n{extra}\n",
        base.display(),
        archive.display()
    )
}

const COUNT_CHECK: &str = "checks = [{ name = \"orders\", query = \"SELECT count(*) FROM orders\", min = 1000, max = 1000 }]";

/// Pids of processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                found.push(format!("{name}: {c}"));
            }
        }
    }
    found
}

/// The scratch folders of the drills under the state folder (empty when all are gone).
fn scratch_left(s: &Setup) -> Vec<PathBuf> {
    std::fs::read_dir(s.dir.path().join("state").join("pitr-drill"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn assert_no_scratch(s: &Setup) {
    assert_eq!(
        scratch_left(s),
        Vec::<PathBuf>::new(),
        "scratch folder left"
    );
    let scratch = s.dir.path().join("state").join("pitr-drill");
    let procs = processes_with(&scratch.display().to_string());
    assert!(procs.is_empty(), "scratch server still running: {procs:?}");
}

/// Writes 100 rows, takes base backups into `backups/older` and `backups/newest` (`args`),
/// writes 900 more, switches WAL and waits for the archive.
fn primary_with_backups(args: &[&str]) -> (TempCluster, PathBuf, tempfile::TempDir) {
    let (pg, archive) = archiving_cluster();
    q(
        &pg,
        "CREATE TABLE orders (id int PRIMARY KEY, note text); INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, 100) g",
    );
    let backups = tempfile::tempdir().expect("tempdir");
    base_backup(&pg, &backups.path().join("older"), args);
    // A distinct mtime for the newer backup.
    std::thread::sleep(Duration::from_millis(1100));
    base_backup(&pg, &backups.path().join("newest"), args);
    q(
        &pg,
        "INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(101, 1000) g",
    );
    switch_and_wait(&pg);
    (pg, archive, backups)
}

/// The summary of item `name`, which must have failed (`all`: the run's output, for the message).
fn failed<'a>(report: &'a Value, name: &str, all: &str) -> &'a str {
    let it = item(report, name);
    assert_eq!(it["status"], "fail", "{name}: {all}");
    it["summary"].as_str().unwrap()
}

fn assert_restored(it: &Value, all: &str) {
    assert_eq!(it["status"], "pass", "{all}");
    let data = &it["data"];
    assert_eq!(data["mode"], "pitr", "{data}");
    assert_eq!(data["base_backup"]["name"], "newest", "{data}");
    assert_eq!(data["checks"][0]["ok"], true, "{data}");
    assert_eq!(data["checks"][0]["value"], "1000", "{data}");
    let rto = data["value"].as_f64().expect("data.value is the RTO");
    assert!(rto > 0.0, "{data}");
    assert_eq!(data["value"], data["rto_seconds"], "{data}");
    let rpo = data["rpo_seconds"].as_f64().expect("data.rpo_seconds");
    assert!((0.0..600.0).contains(&rpo), "{data}");
    assert!(data["replayed_until"].is_string(), "{data}");
    assert_eq!(data["scratch_removed"], true, "{data}");
    let summary = it["summary"].as_str().unwrap();
    assert!(
        summary.contains("(RTO)") && summary.contains("RPO"),
        "{summary}"
    );
}

#[test]
fn a_tar_base_backup_and_the_archive_restore_the_newest_rows_with_rto_and_rpo() {
    let (pg, archive, backups) = primary_with_backups(&["-Ft", "-X", "stream"]);
    assert!(backups.path().join("newest/base.tar").is_file());
    assert!(backups.path().join("newest/pg_wal.tar").is_file());
    let before = listing(&archive);
    let s = setup(
        &pg,
        &format!(
            "[jobs.drill]\n{}",
            pitr_item(
                "drill",
                "pitr",
                backups.path(),
                &archive,
                &format!("{COUNT_CHECK}\nrto_fail = \"10m\"\nrpo_warn = \"1h\"")
            )
        ),
    );

    let (code, report, all) = s.run_job("drill", &[]);
    assert_eq!(code, 0, "{all}");
    let it = item(&report, "pitr");
    assert_restored(it, &all);
    assert_eq!(it["data"]["base_backup"]["format"], "tar", "{all}");

    // The archive was only read: same files, same sizes, same mtimes (a promoted scratch
    // server that archived would have added its timeline history and a partial segment).
    assert_eq!(listing(&archive), before, "the archive changed");
    // The source is untouched and still the only writer of its archive.
    assert_eq!(q(&pg, "SELECT count(*) FROM orders"), "1000");
    assert_eq!(q(&pg, "SELECT pg_is_in_recovery()"), "f");
    assert_no_scratch(&s);

    // A second drill: data.value gives the trend.
    let (code, _report, all) = s.run_job("drill", &[]);
    assert_eq!(code, 0, "{all}");
    let out = s
        .runbook(&["trend", "drill", "pitr", "--format", "json"])
        .output()
        .unwrap();
    let trend: Value = serde_json::from_slice(&out.stdout).expect("trend json");
    assert_eq!(
        trend["points"].as_array().map(|a| a.len()),
        Some(2),
        "{trend}"
    );
    assert_no_scratch(&s);
}

#[test]
fn an_item_over_two_targets_drills_them_side_by_side_in_their_own_folders() {
    let (pg, archive, backups) = primary_with_backups(&["-Ft", "-X", "stream"]);
    let item_toml = pitr_item("drill", "pitr", backups.path(), &archive, COUNT_CHECK)
        .replace("target = \"db\"", "target = [\"db\", \"db2\"]");
    let s = setup(
        &pg,
        &format!(
            "[targets.db2]\nurl = \"{}\"\nsslmode = \"disable\"\n\n[jobs.drill]\n{item_toml}",
            pg.url("app")
        ),
    );
    let (code, report, all) = s.run_job("drill", &[]);
    assert_eq!(code, 0, "{all}");
    let it = item(&report, "pitr");
    assert_eq!(it["summary"], "2 targets: 2 pass", "{all}");
    for t in it["targets"].as_array().unwrap() {
        assert_eq!(t["data"]["checks"][0]["value"], "1000", "{t}");
        assert_eq!(t["data"]["scratch_removed"], true, "{t}");
    }
    assert_no_scratch(&s);
}

#[test]
fn plain_and_gzipped_tar_base_backups_restore_too() {
    let (pg, archive, plain) = primary_with_backups(&["-Fp", "-X", "fetch"]);
    // A configuration that points at the source's folders (Debian's keeps data_directory in
    // /etc; copied into a data folder it would aim the scratch server at the source).
    let conf = plain.path().join("newest/postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
    let source_pid = pg.data.parent().unwrap().join("source-external.pid");
    text.push_str(&format!(
        "\ndata_directory = '{}'\nexternal_pid_file = '{}'\n",
        pg.data.display(),
        source_pid.display()
    ));
    std::fs::write(&conf, text).expect("write postgresql.conf");
    let gz = tempfile::tempdir().expect("tempdir");
    base_backup(
        &pg,
        &gz.path().join("newest"),
        &["-Ft", "-z", "-X", "stream"],
    );
    assert!(gz.path().join("newest/base.tar.gz").is_file());
    q(
        &pg,
        "CREATE TABLE later (x int); INSERT INTO later SELECT generate_series(1, 10)",
    );
    switch_and_wait(&pg);
    let s = setup(
        &pg,
        &format!(
            "[jobs.drill]\n{}{}",
            pitr_item("drill", "plain", plain.path(), &archive, COUNT_CHECK),
            pitr_item("drill", "gz", gz.path(), &archive, COUNT_CHECK),
        ),
    );
    let (code, report, all) = s.run_job("drill", &[]);
    assert_eq!(code, 0, "{all}");
    let it = item(&report, "plain");
    assert_restored(it, &all);
    assert_eq!(it["data"]["base_backup"]["format"], "plain", "{all}");
    let it = item(&report, "gz");
    assert_restored(it, &all);
    assert_eq!(it["data"]["base_backup"]["format"], "tar.gz", "{all}");
    assert!(
        !source_pid.exists(),
        "the scratch server wrote into the source's folder"
    );
    assert_eq!(q(&pg, "SELECT count(*) FROM orders"), "1000");
    // The plain backup itself is unchanged (copied, never started in place).
    assert!(!plain.path().join("newest/postmaster.pid").exists());
    assert!(plain.path().join("newest/backup_label").exists());
    assert_no_scratch(&s);
}

#[test]
fn missing_archive_missing_backup_missing_wal_and_a_server_that_cannot_start_fail_clearly() {
    let (pg, archive) = archiving_cluster();
    q(
        &pg,
        "CREATE TABLE orders (id int); INSERT INTO orders VALUES (1)",
    );
    let root = tempfile::tempdir().expect("tempdir");
    let empty = root.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let empty_archive = root.path().join("empty-archive");
    std::fs::create_dir(&empty_archive).unwrap();
    // A backup without its WAL (-X none), replayed from an archive that does not have it.
    let no_wal = root.path().join("no-wal");
    base_backup(&pg, &no_wal.join("b"), &["-Ft", "-X", "none"]);
    // A plain backup whose control file is gone: the server cannot start.
    let broken = root.path().join("broken");
    base_backup(&pg, &broken.join("b"), &["-Fp", "-X", "fetch"]);
    std::fs::remove_file(broken.join("b/global/pg_control")).unwrap();
    switch_and_wait(&pg);
    let good = root.path().join("good");
    base_backup(&pg, &good.join("b"), &["-Ft", "-X", "stream"]);
    let before = listing(&archive);

    let s = setup(
        &pg,
        &format!(
            "[jobs.drill]\n{}{}{}{}{}[[jobs.drill.items]]\nname = \"still runs\"\nkind = \"sql\"\ntarget = \"db\"\nquery = \"SELECT count(*) FROM orders\"\n",
            pitr_item("drill", "no archive", &good, &root.path().join("nope"), ""),
            pitr_item("drill", "no backup", &empty, &archive, ""),
            pitr_item("drill", "no wal", &no_wal, &empty_archive, ""),
            pitr_item("drill", "broken", &broken, &archive, ""),
            pitr_item(
                "drill",
                "before the backup",
                &good,
                &archive,
                "recovery_target = \"now - 1h\""
            ),
        ),
    );
    let (code, report, all) = s.run_job("drill", &[]);
    assert_ne!(code, 0, "{all}");

    let summary = failed(&report, "no archive", &all);
    assert!(
        summary.contains("WAL archive folder") && summary.contains("does not exist"),
        "{summary}"
    );

    let summary = failed(&report, "no backup", &all);
    assert!(summary.contains("no base backup in"), "{summary}");

    let summary = failed(&report, "no wal", &all);
    assert!(
        summary.contains("needs WAL that is neither in it nor in the archive"),
        "{summary}"
    );
    // The server's own reason, from its log.
    assert!(
        summary.contains("FATAL") || summary.contains("PANIC"),
        "{summary}"
    );

    let summary = failed(&report, "broken", &all);
    assert!(
        summary.contains("the scratch server stopped") && summary.contains("pg_control"),
        "{summary}"
    );

    // A target older than every backup: recovery only goes forward from one.
    let summary = failed(&report, "before the backup", &all);
    assert!(
        summary.contains("was finished before the recovery target"),
        "{summary}"
    );

    let it = item(&report, "still runs");
    assert_eq!(it["status"], "pass", "{all}");
    assert_eq!(listing(&archive), before, "the archive changed");
    assert_no_scratch(&s);
}

/// A runbook process, killed (if still running) when the test ends however it ends.
struct Runbook(std::process::Child);

impl Drop for Runbook {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `run-job drill` in the background and waits until its scratch server accepts
/// connections; returns the process and the server's pid.
fn start_drill_and_wait_for_server(s: &Setup) -> (Runbook, i32) {
    let child = Runbook(
        s.std_command()
            .arg("--config")
            .arg(s.config())
            .args(["run-job", "drill", "--format", "json", "--no-notify"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runbook"),
    );
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the scratch server did not come up"
        );
        if let Some(dir) = scratch_left(s).first() {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            let pid = std::fs::read_to_string(dir.join("drill-server.pid"))
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.parse::<i32>().ok()));
            if let Some(pid) = pid
                && log.contains("database system is ready to accept connections")
            {
                // The check (a long sleep) is running by now.
                std::thread::sleep(Duration::from_millis(1500));
                return (child, pid);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").trim_start().to_string();
            !state.starts_with('Z')
        })
        .unwrap_or(false)
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "runbook did not exit"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const SLOW_CHECK: &str =
    "checks = [{ name = \"slow\", query = \"SELECT count(*) FROM pg_sleep(120)\", min = 1 }]";

/// A primary with base backups and a job `drill` whose pitr drill's check takes two minutes
/// (`schedule`: TOML lines for the job, `more`: TOML after it). Keep the cluster and the
/// backups alive as long as the setup.
fn slow_drill(schedule: &str, more: &str) -> (TempCluster, tempfile::TempDir, Setup) {
    let (pg, archive, backups) = primary_with_backups(&["-Ft", "-X", "stream"]);
    let s = setup(
        &pg,
        &format!(
            "[jobs.drill]\n{schedule}{}{more}",
            pitr_item("drill", "pitr", backups.path(), &archive, SLOW_CHECK)
        ),
    );
    (pg, backups, s)
}

#[test]
fn sigterm_mid_drill_stops_the_scratch_server_and_removes_its_folder() {
    let (_pg, _backups, s) = slow_drill("", "");
    let (mut child, pid) = start_drill_and_wait_for_server(&s);
    assert!(alive(pid), "the scratch server runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    wait_exit(&mut child.0);
    let mut stdout = String::new();
    use std::io::Read;
    child
        .0
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    assert!(!alive(pid), "the scratch server outlived the drill");
    assert_no_scratch(&s);
    assert!(stdout.contains("interrupted"), "{stdout}");
}

#[test]
fn a_scratch_server_left_by_a_killed_runbook_is_stopped_and_removed_by_the_next_drill() {
    let (_pg, _backups, s) = slow_drill("", "");
    let (mut child, pid) = start_drill_and_wait_for_server(&s);
    child.0.kill().expect("SIGKILL runbook");
    wait_exit(&mut child.0);
    // Nobody stopped it: a crash leaves the server behind.
    assert!(alive(pid), "expected the killed drill's server to be left");

    let jobs = s.dir.path().join("jobs.toml");
    let text = std::fs::read_to_string(&jobs).unwrap();
    std::fs::write(&jobs, text.replace(SLOW_CHECK, COUNT_CHECK)).unwrap();
    let (code, report, all) = s.run_job("drill", &[]);
    assert_eq!(code, 0, "{all}");
    let it = item(&report, "pitr");
    assert_restored(it, &all);
    let details = it["details"].to_string();
    assert!(
        details.contains("left by an earlier drill") && details.contains(&format!("pid {pid}")),
        "{details}"
    );
    assert!(!alive(pid), "the leftover server still runs");
    assert_no_scratch(&s);
}

/// A schedule that does not fire while a test runs (1 January, midnight).
const NEVER_DURING_THE_TEST: &str = "schedule = \"0 0 1 1 *\"\n";

#[test]
fn the_daemon_stops_and_removes_a_scratch_server_a_killed_run_left_when_it_starts() {
    let (_pg, _backups, s) = slow_drill(
        NEVER_DURING_THE_TEST,
        "[jobs.other]\n[[jobs.other.items]]\nname = \"one\"\nkind = \"sql\"\ntarget = \"db\"\nquery = \"SELECT 1\"\n",
    );
    let (mut child, pid) = start_drill_and_wait_for_server(&s);
    let folder = scratch_left(&s).remove(0);
    child.0.kill().expect("SIGKILL runbook");
    wait_exit(&mut child.0);
    assert!(alive(pid), "expected the killed drill's server to be left");

    // `run-job` of another job at a shell leaves it: only the daemon sweeps.
    let (code, _report, all) = s.run_job("other", &[]);
    assert_eq!(code, 0, "{all}");
    assert!(
        alive(pid) && folder.exists(),
        "run-job of another job touched the drill's folder"
    );

    let mut d = Daemon::start(&s.config());
    wait_until_or(
        "the daemon stops the leftover scratch server and removes its folder",
        || !alive(pid) && !folder.exists(),
        || d.log(),
    );
    wait_until_or(
        "the daemon logs what it removed",
        || d.log().contains("left by an earlier drill"),
        || d.log(),
    );
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("left by an earlier drill"))
        .unwrap();
    assert!(
        line.contains("WARN")
            && line.contains(&folder.display().to_string())
            && line.contains(&format!("pid {pid}")),
        "{line}"
    );
    assert_no_scratch(&s);
    assert!(d.alive(), "the daemon stopped: {}", d.log());
    wait_until_or(
        "the daemon schedules",
        || d.log().contains("daemon started"),
        || d.log(),
    );
    assert!(d.alive(), "the daemon stopped: {}", d.log());
}

#[test]
fn the_daemon_leaves_the_scratch_server_of_a_running_drill_alone() {
    let (pg, archive, backups) = primary_with_backups(&["-Ft", "-X", "stream"]);
    // A check that waits until the test creates `release` (the scratch server has the function
    // by replaying the archive).
    q(
        &pg,
        "CREATE FUNCTION wait_for_file(path text) RETURNS int LANGUAGE plpgsql AS $$ BEGIN WHILE pg_stat_file(path, true) IS NULL LOOP PERFORM pg_sleep(0.1); END LOOP; RETURN 1; END $$",
    );
    switch_and_wait(&pg);
    let s = setup(&pg, "");
    let release = s.dir.path().join("release");
    s.write_body(&format!(
        "[targets.db]\nurl = \"{}\"\nsslmode = \"disable\"\n\n[jobs.drill]\n{NEVER_DURING_THE_TEST}{}",
        pg.url("app"),
        pitr_item(
            "drill",
            "pitr",
            backups.path(),
            &archive,
            &format!(
                "checks = [{{ name = \"wait\", query = \"SELECT wait_for_file('{}')\", min = 1 }}]",
                release.display()
            )
        )
    ));
    let (mut child, pid) = start_drill_and_wait_for_server(&s);
    let folder = scratch_left(&s).remove(0);

    let mut d = Daemon::start(&s.config());
    // It sweeps before it starts scheduling.
    wait_until_or(
        "the daemon starts",
        || d.log().contains("daemon started"),
        || d.log(),
    );
    assert!(alive(pid), "the daemon stopped a running drill's server");
    assert!(
        folder.exists(),
        "the daemon removed a running drill's folder"
    );
    let log = d.log();
    assert!(
        log.contains("left alone") && log.contains(&folder.display().to_string()),
        "{log}"
    );

    std::fs::write(&release, "").expect("release the check");
    let status = wait_exit(&mut child.0);
    let mut stdout = String::new();
    use std::io::Read;
    child
        .0
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    let report: Value = serde_json::from_str(&stdout).expect("run-job json");
    let it = item(&report, "pitr");
    assert_eq!(it["status"], "pass", "{stdout}");
    assert_eq!(it["data"]["checks"][0]["ok"], true, "{stdout}");
    assert!(status.success(), "{stdout}");
    assert!(!alive(pid));
    assert_no_scratch(&s);
    assert!(d.alive(), "the daemon stopped: {}", d.log());
}

#[test]
fn a_time_target_stops_before_the_transactions_after_it() {
    let (pg, archive) = archiving_cluster();
    q(
        &pg,
        "CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders SELECT generate_series(1, 100)",
    );
    let backups = tempfile::tempdir().expect("tempdir");
    base_backup(&pg, &backups.path().join("b"), &["-Ft", "-X", "stream"]);
    q(&pg, "INSERT INTO orders SELECT generate_series(101, 500)");
    // A point between two committed transactions, in the server's own clock.
    let point = q(
        &pg,
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    std::thread::sleep(Duration::from_millis(1100));
    q(&pg, "INSERT INTO orders SELECT generate_series(501, 1000)");
    switch_and_wait(&pg);
    let s = setup(
        &pg,
        &format!(
            "[jobs.drill]\n{}",
            pitr_item(
                "drill",
                "pitr",
                backups.path(),
                &archive,
                &format!(
                    "recovery_target = \"{point}\"\nchecks = [{{ name = \"orders\", query = \"SELECT count(*) FROM orders\" }}]"
                )
            )
        ),
    );
    let (code, report, all) = s.run_job("drill", &[]);
    assert_eq!(code, 0, "{all}");
    let it = item(&report, "pitr");
    assert_eq!(it["status"], "pass", "{all}");
    // The 400 rows before the point, not the 500 after it.
    assert_eq!(it["data"]["checks"][0]["value"], "500", "{all}");
    assert_eq!(it["data"]["recovery_target"], point.as_str(), "{all}");
    let replayed = it["data"]["replayed_until"]
        .as_str()
        .expect("replayed_until");
    let replayed = chrono::DateTime::parse_from_rfc3339(replayed).expect("rfc3339");
    let point_t = chrono::DateTime::parse_from_rfc3339(&point).expect("rfc3339");
    assert!(replayed <= point_t, "{replayed} after {point_t}");
    assert_no_scratch(&s);
}

#[test]
fn a_drill_past_its_timeout_fails_and_leaves_no_server() {
    let (pg, archive, backups) = primary_with_backups(&["-Ft", "-X", "stream"]);
    let s = setup(
        &pg,
        &format!(
            "[jobs.drill]\n{}timeout = \"8s\"\n",
            pitr_item("drill", "pitr", backups.path(), &archive, SLOW_CHECK)
        ),
    );
    let (code, report, all) = s.run_job("drill", &[]);
    assert_ne!(code, 0, "{all}");
    let it = item(&report, "pitr");
    assert_eq!(it["status"], "fail", "{all}");
    assert!(
        it["summary"].as_str().unwrap().contains("timed out"),
        "{all}"
    );
    assert_no_scratch(&s);
}
