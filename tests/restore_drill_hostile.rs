//! A backup file is untrusted input: hostile dumps, plain and custom, each trying to run a
//! program (a marker file appears) or to change a database other than the drill's scratch one.
//! After every drill: no marker file, every other database and role exactly as before, the item
//! failed with the reason, and no scratch database or role left behind.
//! (Real `pg_dump` output of the fixture still restores: tests/restore_drill.rs.)

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use runbook::face::pgcluster::TempCluster;
use support::{
    Setup,
    files::{age, toml_path},
    pg::{drill_databases, pg_dump, trading_cluster},
};

const HOUR: Duration = Duration::from_secs(3600);

/// A cluster with `trading` and a `victim` database holding one table, and a folder where
/// anyone (the server runs as `postgres`) may create marker files.
struct World {
    c: TempCluster,
    markers: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let c = trading_cluster();
        c.create_db("victim").unwrap();
        c.psql(
            "victim",
            "CREATE TABLE precious (x int); INSERT INTO precious VALUES (1)",
            &[],
        )
        .unwrap();
        let markers = tempfile::tempdir().unwrap();
        std::fs::set_permissions(markers.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        World { c, markers }
    }

    fn marker(&self, name: &str) -> String {
        self.markers.path().join(name).display().to_string()
    }

    /// Everything a drill must not change outside its scratch database: databases (owner,
    /// comment, settings), roles, and the tables of `victim` and `trading`.
    fn fingerprint(&self) -> String {
        let shared = self
            .c
            .psql(
                "postgres",
                r"SELECT d.datname || '|' || pg_get_userbyid(d.datdba) || '|' || coalesce(shobj_description(d.oid, 'pg_database'), '') || '|' || coalesce((SELECT string_agg(array_to_string(setconfig, ','), ';') FROM pg_db_role_setting s WHERE s.setdatabase = d.oid), '')
                  FROM pg_database d WHERE d.datname NOT LIKE 'runbook\_drill\_%'
                  UNION ALL SELECT 'role ' || rolname || ' super=' || rolsuper FROM pg_roles WHERE rolname NOT LIKE 'runbook\_drill\_%'
                  ORDER BY 1",
                &[],
            )
            .unwrap();
        let tables = |db: &str| {
            self.c
                .psql(
                    db,
                    "SELECT string_agg(relname || ':' || relkind::text, ',' ORDER BY relname) FROM pg_class WHERE relnamespace = 'public'::regnamespace",
                    &[],
                )
                .unwrap()
        };
        format!(
            "{shared}\nvictim: {}\ntrading: {}\nprecious rows: {}",
            tables("victim"),
            tables("trading"),
            self.c
                .psql("victim", "SELECT count(*) FROM precious", &[])
                .unwrap()
        )
    }

    fn markers_made(&self) -> Vec<String> {
        std::fs::read_dir(self.markers.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn drill_roles(&self) -> String {
        self.c
            .psql(
                "postgres",
                r"SELECT rolname FROM pg_roles WHERE rolname LIKE 'runbook\_drill\_%'",
                &[],
            )
            .unwrap()
    }

    /// Runs a drill of `dump` (a file in a folder of its own) and asserts it did no harm.
    fn assert_refused(&self, case: &str, dump: &Path, reason: &[&str], checks: &str) {
        age(dump, HOUR);
        let before = self.fingerprint();
        let target = format!(
            "[targets.scratch]\nurl = \"{}\"\nsslmode = \"disable\"\n",
            self.c.url("postgres")
        );
        let item = format!(
            "[[jobs.t.items]]\nname = \"Restore drill\"\nkind = \"restore_drill\"\ntarget = \"scratch\"\ndir = {}\n{checks}\n",
            toml_path(dump.parent().unwrap())
        );
        let (code, it) = Setup::job_t(&target, &item).first_item_t(&[]);
        assert_eq!(code, 1, "{case}: {it:#}");
        assert_eq!(it["status"], "fail", "{case}: {it:#}");
        let summary = it["summary"].as_str().unwrap_or_default();
        let all = format!("{summary}\n{}", it["details"]);
        assert!(
            reason.iter().any(|r| all.contains(r)),
            "{case}: the report does not give the reason ({reason:?}): {it:#}"
        );
        assert_eq!(
            self.markers_made(),
            Vec::<String>::new(),
            "{case}: a program ran: {it:#}"
        );
        assert_eq!(
            self.fingerprint(),
            before,
            "{case}: another database changed"
        );
        assert!(drill_databases(&self.c).is_empty(), "{case}: scratch left");
        assert_eq!(self.drill_roles().trim(), "", "{case}: drill role left");
    }
}

fn write_dump(name: &str, content: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join(name);
    std::fs::write(
        &f,
        format!(
            "--\n-- PostgreSQL database dump\n--\n\nSET statement_timeout = 0;\nSET standard_conforming_strings = on;\n{content}\n--\n-- PostgreSQL database dump complete\n--\n"
        ),
    )
    .unwrap();
    (d, f)
}

const ORDERS_CHECK: &str =
    r#"checks = [{ name = "orders restored", query = "SELECT count(*) FROM orders", min = 1 }]"#;

#[test]
fn hostile_plain_dumps_run_no_program_and_touch_no_other_database() {
    let w = World::new();
    let victim = w.c.url("victim").replace("postgres://", "");
    let (user_host, db) = victim.split_once('/').unwrap();
    let (user, hostport) = user_host.split_once('@').unwrap();
    let (host, port) = hostport.split_once(':').unwrap();
    let dblink_conn = format!("dbname={db} user={user} host={host} port={port}");
    let cases: Vec<(&str, String, Vec<&str>, &str)> = vec![
        (
            "backquote in \\set (a shell command on the runbook host)",
            format!("\\set x `touch {}`\nSELECT 1;", w.marker("p1")),
            vec!["\\set"],
            "",
        ),
        (
            "meta-command mid-line",
            format!("SELECT 1; \\! touch {}\n", w.marker("p2")),
            vec!["\\!"],
            "",
        ),
        (
            "lowercase copy from program",
            format!(
                "CREATE TABLE t (x text);\ncopy t from program 'touch {}';",
                w.marker("p3")
            ),
            vec!["PROGRAM"],
            "",
        ),
        (
            "DROP DATABASE after another statement on one line",
            "SELECT 1; DROP DATABASE victim;".into(),
            vec!["DATABASE"],
            "",
        ),
        (
            "\\c to another database, then DDL",
            "SELECT 1; \\c victim\nCREATE TABLE pwned (x int);\nDROP TABLE precious;".into(),
            vec!["\\c"],
            "",
        ),
        (
            "a function the restore calls runs a program and changes another database",
            format!(
                "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$\nBEGIN\n  EXECUTE 'ALTER DATABASE victim SET work_mem = ''77kB''';\n  EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch {}''';\n  RETURN 1;\nEND $$;\nSELECT f();",
                w.marker("p6")
            ),
            vec![
                "must be owner of database victim",
                "pg_execute_server_program",
                "permission denied",
            ],
            "",
        ),
        (
            "dblink into another database",
            format!(
                "CREATE EXTENSION IF NOT EXISTS dblink;\nSELECT dblink_exec('{dblink_conn}', 'CREATE TABLE pwned (x int)');"
            ),
            vec!["dblink"],
            "",
        ),
        (
            "a trap for the checks: orders is a view over a function that runs a program",
            format!(
                "CREATE FUNCTION trap() RETURNS SETOF int LANGUAGE plpgsql AS $$\nBEGIN\n  EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch {}''';\n  EXECUTE 'ALTER DATABASE victim SET work_mem = ''66kB''';\n  RETURN NEXT 1;\nEND $$;\nCREATE VIEW orders AS SELECT * FROM trap() AS x;",
                w.marker("p8")
            ),
            vec!["orders restored"],
            ORDERS_CHECK,
        ),
    ];
    for (case, sql, reason, checks) in &cases {
        let (_d, f) = write_dump("hostile.sql", sql);
        w.assert_refused(case, &f, reason, checks);
    }
}

/// A dump that creates an untrusted extension before its data, as pg_dump writes it, so the
/// drill leaves that extension's statements out of the restore (or creates it first): a
/// statement on it later in the dump must not carry anything else past the filter.
#[test]
fn hostile_lines_riding_on_a_left_out_extension_are_still_refused() {
    let w = World::new();
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "DROP DATABASE on the line of a left-out CREATE EXTENSION",
            "CREATE EXTENSION pg_stat_statements; DROP DATABASE victim;".into(),
            vec!["DATABASE"],
        ),
        (
            "a meta-command after a left-out CREATE EXTENSION over two lines",
            format!(
                "CREATE EXTENSION IF NOT EXISTS\n  pg_stat_statements; \\! touch {}",
                w.marker("e2")
            ),
            vec!["\\!"],
        ),
        (
            "COPY ... PROGRAM after a left-out COMMENT ON EXTENSION",
            format!(
                "COMMENT ON EXTENSION pg_stat_statements IS 'x'; COPY (SELECT 1) TO PROGRAM 'touch {}';",
                w.marker("e3")
            ),
            vec!["PROGRAM"],
        ),
    ];
    for extensions in ["", "extensions = [\"pg_stat_statements\"]"] {
        for (case, sql, reason) in &cases {
            let (_d, f) = write_dump(
                "hostile.sql",
                &format!(
                    "CREATE EXTENSION IF NOT EXISTS pg_stat_statements WITH SCHEMA public;\nCREATE TABLE t (x int);\nCOPY public.t (x) FROM stdin;\n1\n\\.\n{sql}"
                ),
            );
            w.assert_refused(case, &f, reason, extensions);
        }
    }
}

/// A custom dump of a database holding a placeholder comment, whose TOC entry is then
/// rewritten (same length, so the archive stays valid) to `payload`.
fn custom_dump_with_toc_entry(w: &World, payload: &str) -> (tempfile::TempDir, PathBuf) {
    let placeholder = "A".repeat(300);
    let _ =
        w.c.psql("postgres", "DROP DATABASE IF EXISTS hostile_src", &[]);
    w.c.create_db("hostile_src").unwrap();
    w.c.psql(
        "hostile_src",
        &format!("CREATE TABLE t (x int); COMMENT ON TABLE t IS '{placeholder}';"),
        &[],
    )
    .unwrap();
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("hostile.dump");
    pg_dump(&w.c, "hostile_src", "c", &f, &[]);
    w.c.psql("postgres", "DROP DATABASE hostile_src", &[])
        .unwrap();
    let mut bytes = std::fs::read(&f).unwrap();
    let old = format!("COMMENT ON TABLE public.t IS '{placeholder}';");
    assert!(payload.len() <= old.len());
    let new = format!("{payload:<width$}", width = old.len());
    let at = bytes
        .windows(old.len())
        .position(|w| w == old.as_bytes())
        .expect("the placeholder comment is in the TOC");
    bytes[at..at + old.len()].copy_from_slice(new.as_bytes());
    std::fs::write(&f, bytes).unwrap();
    (d, f)
}

#[test]
fn hostile_custom_dumps_run_no_program_and_touch_no_other_database() {
    let w = World::new();

    // TOC entries are SQL: rewritten ones try to drop another database and to run a program.
    let (_d, f) = custom_dump_with_toc_entry(&w, "DROP DATABASE victim;");
    w.assert_refused(
        "TOC entry drops another database",
        &f,
        &["must be owner of database victim"],
        "",
    );
    let (_d, f) = custom_dump_with_toc_entry(
        &w,
        &format!("COPY (SELECT 1) TO PROGRAM 'touch {}';", w.marker("c2")),
    );
    w.assert_refused(
        "TOC entry runs a program",
        &f,
        &["pg_execute_server_program"],
        "",
    );
    let (_d, f) = custom_dump_with_toc_entry(
        &w,
        "ALTER DATABASE victim SET work_mem = '64kB'; ALTER ROLE postgres NOLOGIN;",
    );
    w.assert_refused(
        "TOC entry changes another database and a role",
        &f,
        &["must be owner of database victim", "permission denied"],
        "",
    );

    // A real pg_dump of a database whose objects carry the hostile SQL: a CHECK constraint
    // calls a function that runs a program and changes another database when the restore loads
    // the table's rows (only in a drill's database, so the source itself stays quiet).
    w.c.create_db("hostile_src").unwrap();
    w.c.psql(
        "hostile_src",
        &format!(
            "CREATE FUNCTION ok(x int) RETURNS bool LANGUAGE plpgsql AS $$
             BEGIN
               IF current_database() LIKE 'runbook%' THEN
                 EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch {}''';
                 EXECUTE 'ALTER DATABASE victim SET work_mem = ''65kB''';
               END IF;
               RETURN true;
             END $$;
             CREATE TABLE t (x int CHECK (ok(x)));
             INSERT INTO t VALUES (1), (2);",
            w.marker("c4")
        ),
        &[],
    )
    .unwrap();
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("hostile.dump");
    pg_dump(&w.c, "hostile_src", "c", &f, &[]);
    w.c.psql("postgres", "DROP DATABASE hostile_src", &[])
        .unwrap();
    w.assert_refused(
        "a CHECK constraint's function runs during the restore",
        &f,
        &[
            "pg_execute_server_program",
            "must be owner of database victim",
        ],
        "",
    );
}

/// The drill's role logs in with its own random password: under `scram-sha-256` (only the
/// target's superuser is trusted here), real `pg_dump` output of the fixture, custom and plain,
/// restores and passes its checks, and nothing is left behind. A configured `restore_role`
/// logs in with its configured password.
#[test]
fn real_dumps_restore_as_an_unprivileged_role_with_its_password_under_scram() {
    let c = trading_cluster();
    let hba = c.data.join("pg_hba.conf");
    std::fs::write(
        &hba,
        "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    c.psql(
        "postgres",
        "SET password_encryption = 'scram-sha-256'; SELECT pg_reload_conf()",
        &[],
    )
    .unwrap();
    let target = format!(
        "[targets.scratch]\nurl = \"{}\"\nsslmode = \"disable\"\n",
        c.url("postgres")
    );
    for (format, name) in [("c", "trading.dump"), ("p", "trading.sql")] {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join(name);
        pg_dump(&c, "trading", format, &f, &[]);
        age(&f, HOUR);
        let item = format!(
            "[[jobs.t.items]]\nname = \"Restore drill\"\nkind = \"restore_drill\"\ntarget = \"scratch\"\ndir = {}\n{ORDERS_CHECK}\n",
            toml_path(d.path())
        );
        let (code, it) = Setup::job_t(&target, &item).first_item_t(&[]);
        assert_eq!(code, 0, "{name}: {it:#}");
        assert_eq!(it["status"], "pass", "{name}: {it:#}");
        assert!(
            it["data"]["restore_role"]
                .as_str()
                .unwrap()
                .starts_with("runbook_drill_"),
            "{it:#}"
        );
        assert!(drill_databases(&c).is_empty());
        let roles = c
            .psql(
                "postgres",
                r"SELECT count(*) FROM pg_roles WHERE rolname LIKE 'runbook\_drill\_%'",
                &[],
            )
            .unwrap();
        assert_eq!(roles.trim(), "0", "drill role left behind");
    }

    // A configured restore_role (for a target user that may not create roles) is used as it is
    // and kept; one that could leave the scratch database is refused before anything runs.
    c.psql(
        "postgres",
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE drill_restorer LOGIN PASSWORD 'Restorer-pw-1'",
        &[],
    )
    .unwrap();
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("trading.dump");
    pg_dump(&c, "trading", "c", &f, &[]);
    age(&f, HOUR);
    let item = |role: &str| {
        format!(
            "[[jobs.t.items]]\nname = \"Restore drill\"\nkind = \"restore_drill\"\ntarget = \"scratch\"\ndir = {}\nrestore_role = \"{role}\"\nrestore_password = \"Restorer-pw-1\"\n{ORDERS_CHECK}\n",
            toml_path(d.path())
        )
    };
    let (code, it) = Setup::job_t(&target, &item("drill_restorer")).first_item_t(&[]);
    assert_eq!(code, 0, "{it:#}");
    assert_eq!(it["data"]["restore_role"], "drill_restorer", "{it:#}");
    assert!(drill_databases(&c).is_empty());
    let (code, it) = Setup::job_t(&target, &item("postgres")).first_item_t(&[]);
    assert_eq!(code, 1, "{it:#}");
    assert!(
        it["summary"].as_str().unwrap().contains("SUPERUSER"),
        "{it:#}"
    );
    assert!(drill_databases(&c).is_empty());
    assert_eq!(
        c.psql(
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname = 'drill_restorer'",
            &[]
        )
        .unwrap()
        .trim(),
        "1",
        "a configured role is kept"
    );
}
