//! Throwaway PostgreSQL clusters (`runbook::face::pgcluster::TempCluster`, started as
//! `postgres` when we are root) and what tests do on them: SQL, lock holders, dumps,
//! passwords.

use std::path::Path;
use std::process::{Child, Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use runbook::face::pgcluster::TempCluster;

/// Queries the `app` database: runs `sql` with psql; its trimmed output.
pub fn q(pg: &TempCluster, sql: &str) -> String {
    pg.psql("app", sql, &[]).expect("psql").trim().to_string()
}

/// A throwaway cluster (initdb/pg_ctl; run as `postgres` when we are root).
pub fn cluster() -> TempCluster {
    TempCluster::start().expect(
        "PostgreSQL server binaries (initdb, pg_ctl) are needed for these tests (Debian: apt-get install postgresql)",
    )
}

/// A throwaway cluster with an empty `app` database.
pub fn cluster_with_app_db() -> TempCluster {
    let pg = cluster();
    pg.create_db("app").expect("create db");
    pg
}

/// A psql session that holds a lock (or runs a statement) until dropped.
pub struct Holder(Child);

impl Holder {
    pub fn start(pg: &TempCluster, sql: &str) -> Holder {
        Holder::start_in(pg, "app", sql)
    }

    /// As [`Holder::start`], in database `db`.
    pub fn start_in(pg: &TempCluster, db: &str, sql: &str) -> Holder {
        let mut child = StdCommand::new(pg.tool("psql"))
            .args([
                "-X",
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("psql");
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(sql.as_bytes()).expect("write");
        // Keep stdin open (moved into a thread) so psql waits instead of exiting.
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(120));
            drop(stdin);
        });
        Holder(child)
    }

    /// A session holding ACCESS EXCLUSIVE on `table` (as written in SQL), once it is granted.
    pub fn lock(pg: &TempCluster, table: &str) -> Holder {
        Holder::lock_then(pg, table, "SELECT pg_sleep(120);")
    }

    /// A session that takes ACCESS EXCLUSIVE on `table` in a transaction and then runs `then`
    /// (which may end the transaction); returns once the lock is granted.
    pub fn lock_then(pg: &TempCluster, table: &str, then: &str) -> Holder {
        let h = Holder::start(
            pg,
            &format!("BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; {then}\n"),
        );
        wait_for(
            pg,
            &format!(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE relation = '{table}'::regclass AND mode = 'AccessExclusiveLock' AND granted)"
            ),
        );
        h
    }
}

/// Ends the session holding ACCESS EXCLUSIVE on `table` (dropping a [`Holder`] does not: its
/// backend, asleep, would not notice psql going away); asserts there was exactly one.
pub fn end_lock_holder(pg: &TempCluster, table: &str) {
    assert_eq!(
        q(
            pg,
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'relation' AND relation = '{table}'::regclass AND mode = 'AccessExclusiveLock' AND granted"
            )
        ),
        "1"
    );
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (30 s at most) until `sql` returns `t`.
pub fn wait_for(pg: &TempCluster, sql: &str) {
    let start = Instant::now();
    while q(pg, sql) != "t" {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {sql}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Makes `role` (a superuser) log in over TCP only with `password`, by scram-sha-256: a
/// `host` line for it goes first in pg_hba.conf (the other roles keep `trust`, so the
/// tests' psql still works), then the server reloads. Returns once a connection without the
/// password is refused and one with it accepted: a target that reaches this server as `role`
/// proves runbook sent the password.
pub fn require_password(pg: &TempCluster, role: &str, password: &str) {
    pg.psql(
        "postgres",
        &format!(
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE \"{role}\" LOGIN SUPERUSER PASSWORD :'pw'"
        ),
        &[("pw", password)],
    )
    .expect("create the password role");
    let hba = pg.data.join("pg_hba.conf");
    let text = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let first_host = lines
        .iter()
        .position(|l| l.trim_start().starts_with("host"))
        .unwrap_or(lines.len());
    for (i, cidr) in ["127.0.0.1/32", "::1/128"].iter().enumerate() {
        lines.insert(
            first_host + i,
            format!("host all \"{role}\" {cidr} scram-sha-256"),
        );
    }
    std::fs::write(&hba, lines.join("\n") + "\n").expect("write pg_hba.conf");
    pg.psql("postgres", "SELECT pg_reload_conf()", &[])
        .expect("reload");
    let login = |pw: Option<&str>| {
        let mut cmd = StdCommand::new(pg.tool("psql"));
        cmd.arg(format!(
            "host=127.0.0.1 port={} user={role} dbname=postgres sslmode=disable",
            pg.port
        ))
        .args(["-X", "-w", "-At", "-c", "SELECT 1"])
        .env_remove("PGPASSWORD")
        .env("PGPASSFILE", "/dev/null");
        if let Some(pw) = pw {
            cmd.env("PGPASSWORD", pw);
        }
        cmd.output().expect("psql").status.success()
    };
    let start = Instant::now();
    while login(None) || !login(Some(password)) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the server did not start asking {role} for a password"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a cluster and loads `trading` with orders, positions and transactions.
pub fn trading_cluster() -> TempCluster {
    let c = cluster();
    c.create_db("trading").unwrap();
    c.psql(
        "trading",
        "CREATE TABLE orders (id bigserial PRIMARY KEY, symbol text NOT NULL, qty int NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE positions (account int, symbol text, qty int, PRIMARY KEY (account, symbol));
         CREATE TABLE transactions (id bigserial PRIMARY KEY, order_id bigint REFERENCES orders(id), amount numeric(18,2));
         INSERT INTO orders (symbol, qty) SELECT 'SYM' || (g % 50), g % 100 FROM generate_series(1, 20000) g;
         INSERT INTO positions SELECT g, 'SYM' || g, g FROM generate_series(1, 500) g;
         INSERT INTO transactions (order_id, amount) SELECT g, g * 1.5 FROM generate_series(1, 20000) g;",
        &[],
    )
    .unwrap();
    c
}

/// Runs the cluster's client `tool` (`pg_dump`, `pg_basebackup`) against it as the
/// superuser with `args`; panics when it fails.
pub fn pg_tool(c: &TempCluster, tool: &str, args: &[&str]) {
    let st = StdCommand::new(c.tool(tool))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &c.port.to_string(),
            "-U",
            &c.superuser,
        ])
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{tool} does not run: {e}"));
    assert!(st.success(), "{tool} failed");
}

/// `pg_dump` of `db` in `format` (`c`, `d`, `p`) to `out`.
pub fn pg_dump(c: &TempCluster, db: &str, format: &str, out: &Path, extra: &[&str]) {
    let out = out.to_str().expect("a UTF-8 path");
    let mut args = vec!["-F", format, "-f", out];
    args.extend(extra);
    args.push(db);
    pg_tool(c, "pg_dump", &args);
}

/// The scratch databases left on a cluster.
pub fn drill_databases(c: &TempCluster) -> Vec<String> {
    c.psql(
        "postgres",
        "SELECT datname FROM pg_database WHERE datname LIKE 'runbook\\_drill\\_%'",
        &[],
    )
    .unwrap()
    .lines()
    .map(str::to_string)
    .filter(|l| !l.is_empty())
    .collect()
}

/// Polls `sql` on `pg`'s `postgres` database until it prints `want` (60 s at most).
pub fn wait_until_gives(pg: &TempCluster, sql: &str, want: &str) {
    let start = Instant::now();
    loop {
        let got = pg.psql("postgres", sql, &[]).expect("psql");
        if got.trim() == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{sql} still gives {got:?}, not {want:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
