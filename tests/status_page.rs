//! The daemon's status page and HTTP server as a team uses them: real runs of two jobs in
//! different zones (made by `runbook run-job`), the page rendered from that state store, a
//! started server answering `/`, `/runs/<id>` and `/healthz`, and what the server does when the
//! store fails, when a client is slow, and when it listens beyond loopback. No timing
//! assertions: the limits are set short and only what the client receives is checked.

mod support;

use std::path::{Path, PathBuf};

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use runbook::config::Config;
use runbook::daemon::server::{AppState, Limits, Metrics};
use runbook::store::{RunSummary, Store};
use support::http::header;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_runbook");

/// Two jobs in two zones; names and descriptions with HTML's special characters.
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"[runbook]
timezone = "UTC"
state_dir = "{state}"
hostname = "ops-1"
{extra}
[jobs.mumbai]
description = "Morning <script>alert(1)</script> & \"checks\""
schedule = "0 10 * * *"
timezone = "Asia/Kolkata"

[[jobs.mumbai.items]]
name = "Backups <b>fine</b> & done"
kind = "command"
argv = ["true"]
read_only = true

[jobs.newyork]
description = "After the close"
schedule = "30 7 * * *"
timezone = "America/New_York"

[[jobs.newyork.items]]
name = "Positions match the broker"
kind = "command"
argv = ["sh", "-c", "echo 'AAPL: ours 1200, broker 1150'; exit 1"]
read_only = true
"#,
        state = dir.join("state").display()
    );
    let path = dir.join("jobs.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run_job(config: &Path, job: &str) {
    let out = support::runbook_std(config, &["run-job", job])
        .output()
        .unwrap();
    // 0 = passed, 1 = an item failed (newyork does, on purpose); anything else is a fault.
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "run-job {job}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A state folder with two runs of each job.
fn with_runs(dir: &Path, extra: &str) -> (Config, Store) {
    let path = write_config(dir, extra);
    for job in ["mumbai", "newyork", "mumbai", "newyork"] {
        run_job(&path, job);
    }
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let store = Store::open(&config.state_dir, &config.hostname).unwrap();
    (config, store)
}

fn in_zone(r: &RunSummary, tz: Tz) -> String {
    DateTime::parse_from_rfc3339(&r.started_at)
        .unwrap()
        .with_timezone(&tz)
        .format("%Y-%m-%d %H:%M %Z")
        .to_string()
}

#[test]
fn status_page_shows_each_jobs_runs_and_next_runs_in_its_own_zone() {
    let dir = tempfile::tempdir().unwrap();
    let (config, store) = with_runs(dir.path(), "");
    let runs = store.history(None, 50).unwrap();
    assert_eq!(runs.len(), 4);
    // The page is rendered as if three days later, so its own "updated" time (in the default
    // zone, UTC here) cannot coincide with a run's time in UTC.
    let now = Utc::now() + chrono::Duration::days(3);
    let html = runbook::daemon::server::status::render_from_store(&config, &store, now).unwrap();

    for r in &runs {
        let tz = config.jobs[&r.job].tz;
        let shown = in_zone(r, tz);
        assert!(
            html.contains(&shown),
            "{} run at {} is shown as {shown}:\n{html}",
            r.job,
            r.started_at
        );
        let utc = in_zone(r, Tz::UTC);
        assert!(
            !html.contains(&utc),
            "no time is shown in UTC (the default zone), {utc} is:\n{html}"
        );
        assert!(
            html.contains(&format!("href=\"runs/{}\"", r.run_id)),
            "the chip of run {} links to its report:\n{html}",
            r.run_id
        );
    }
    assert!(html.contains("IST") && html.contains("Asia/Kolkata"));
    assert!(html.contains("America/New_York"));
    // The next slots, in the job's zone: 10:00 in Mumbai, 07:30 in New York (EST or EDT).
    let next_ny = config.jobs["newyork"]
        .schedule
        .as_ref()
        .unwrap()
        .next_after(config.jobs["newyork"].tz, now)
        .unwrap()
        .format("%Y-%m-%d 07:30 %Z")
        .to_string();
    assert!(html.contains(" 10:00 IST"), "{html}");
    assert!(html.contains(&next_ny), "{next_ny} in:\n{html}");
    // Chips say what happened, and the failing job leads the banner.
    assert!(html.contains(">PASS</span>") && html.contains(">FAIL</span>"));
    assert!(
        html.contains("FAIL &mdash; 1 job failing: newyork"),
        "{html}"
    );
    // Every value is escaped.
    assert!(!html.contains("<script>"), "{html}");
    assert!(
        html.contains("Morning &#60;script&#62;alert(1)&#60;/script&#62; &#38; &#34;checks&#34;"),
        "{html}"
    );
    // No scripts and no remote resources: the page is as mail-client safe as the report.
    assert!(!html.contains("<link") && !html.contains("<img") && !html.contains("src="));
}

/// A server on a port-0 listener, as the daemon starts it.
struct Server {
    port: u16,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _config: tokio::sync::watch::Sender<Arc<Config>>,
}

async fn start(config: Config, store: Store, limits: Limits) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(config));
    let state = AppState {
        metrics: Arc::new(Metrics::new()),
        store,
        config: rx,
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(runbook::daemon::server::serve_with(
        listener,
        state,
        stop.clone(),
        limits,
    ));
    Server {
        port,
        stop,
        task,
        _config: tx,
    }
}

impl Server {
    async fn shutdown(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

/// A plain HTTP/1.0 GET; returns (status code, body).
async fn get(port: u16, path: &str) -> (u16, String) {
    let path = path.to_string();
    let (code, _, body) = support::http::blocking(move || support::http::get(port, &path, &[]))
        .await
        .expect("the server answers");
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_page_is_its_report_and_errors_never_name_a_path() {
    let dir = tempfile::tempdir().unwrap();
    let (config, store) = with_runs(dir.path(), "");
    let runs = store.history(Some("mumbai"), 10).unwrap();
    let run_id = runs[0].run_id.clone();
    let server = start(config, store.clone(), Limits::default()).await;

    let (code, page) = get(server.port, "/").await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains(&format!("href=\"runs/{run_id}\"")), "{page}");
    let (code, html) = get(server.port, &format!("/runs/{run_id}")).await;
    assert_eq!(code, 200, "{html}");
    let report = store.report(&run_id).unwrap().unwrap();
    assert_eq!(
        html,
        runbook::report::html::render(&report),
        "a run's page is its HTML report, as e-mailed"
    );
    assert!(html.contains("Backups &#60;b&#62;fine&#60;/b&#62; &#38; done"));
    assert_eq!(get(server.port, "/runs/nosuchrun").await.0, 404);
    assert_eq!(get(server.port, "/healthz").await, (200, "ok\n".into()));

    // The state database breaks (here: its tables are gone). Every page says so without
    // naming a file: the page has no authentication, and the log has the details.
    let db = rusqlite::Connection::open(dir.path().join("state/state.db")).unwrap();
    db.execute_batch("DROP TABLE runs; DROP TABLE outbox;")
        .unwrap();
    let root = dir.path().display().to_string();
    for path in ["/", "/healthz", &format!("/runs/{run_id}")] {
        let (code, body) = get(server.port, path).await;
        assert_eq!(code, 503, "GET {path}: {body}");
        assert!(
            body.contains("state store unavailable"),
            "GET {path}: {body}"
        );
        assert!(
            !body.contains(&root) && !body.contains("state.db") && !body.contains('/'),
            "GET {path} names no path: {body}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_disconnected_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::load(&write_config(dir.path(), "")).unwrap_or_else(|e| panic!("{e}"));
    let store = Store::open(&config.state_dir, &config.hostname).unwrap();
    let limits = Limits {
        header_read_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let server = start(config, store, limits).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    // Headers that never end (a slowloris client).
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the server still holds the connection of a client that never sent its headers"
    );
    // A kept-alive connection that stays idle after its answer is closed the same way.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut answer)).await;
    assert!(closed.is_ok(), "an idle kept-alive connection is held open");
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_state_database_gets_an_answer_within_the_request_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::load(&write_config(dir.path(), "")).unwrap_or_else(|e| panic!("{e}"));
    let store = Store::open(&config.state_dir, &config.hostname).unwrap();
    let limits = Limits {
        request_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let server = start(config, store.clone(), limits).await;
    // Another process (a manual `run-job`) holds the write lock; the daemon's own write waits
    // for it (SQLite's busy timeout, 10 s) while holding the store. A page request meanwhile
    // is answered at the request timeout instead of hanging.
    let locker = rusqlite::Connection::open(dir.path().join("state/state.db")).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE;").unwrap();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || store.outbox_enqueue("01STUCK", "mail"))
    };
    let mut answers = Vec::new();
    while !writer.is_finished() {
        let (code, body) = get(server.port, "/").await;
        if code == 503 {
            assert!(body.contains("took too long"), "{body}");
            assert!(!body.contains('/'), "no path: {body}");
            break;
        }
        answers.push(code);
    }
    assert!(
        !writer.is_finished(),
        "while the store was stuck every answer waited for it: {answers:?}"
    );
    locker.execute_batch("ROLLBACK;").unwrap();
    writer.join().unwrap().unwrap();
    server.shutdown().await;
}

#[test]
fn listening_beyond_loopback_is_warned_about() {
    use runbook::daemon::server::exposure_warning;
    for quiet in ["127.0.0.1:9187", "[::1]:9187"] {
        for token_set in [false, true] {
            assert_eq!(
                exposure_warning(quiet.parse().unwrap(), token_set),
                None,
                "{quiet}"
            );
        }
    }
    for loud in ["0.0.0.0:9187", "10.1.2.3:9187", "[::]:9187"] {
        let w = exposure_warning(loud.parse().unwrap(), false).expect(loud);
        assert!(
            w.contains(loud) && w.contains("no authentication") && w.contains("unauthenticated"),
            "{w}"
        );
        // With a token the pages are protected: the warning is about plain HTTP only.
        let w = exposure_warning(loud.parse().unwrap(), true).expect(loud);
        assert!(
            w.contains(loud)
                && w.contains("plain HTTP")
                && !w.contains("unauthenticated")
                && !w.contains("no authentication"),
            "{w}"
        );
    }

    // The daemon logs it at start.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[server]\nlisten = \"0.0.0.0:0\"\n");
    let log_path = dir.path().join("daemon.log");
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("daemon")
        .env("RUNBOOK_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut log = String::new();
    while Instant::now() < deadline && !log.contains("no authentication") {
        std::thread::sleep(Duration::from_millis(200));
        log = std::fs::read_to_string(&log_path).unwrap_or_default();
    }
    stop_daemon(&mut child, &log);
    assert!(
        log.contains("WARN")
            && log.contains("listen = 0.0.0.0:")
            && log.contains("no authentication"),
        "{log}"
    );
}

fn stop_daemon(child: &mut std::process::Child, log: &str) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{log}");
}

/// One HTTP/1.0 request (`GET path` plus `headers`, each a `Name: value` line); returns
/// (status code, head, body).
fn http(port: u16, path: &str, headers: &[&str]) -> (u16, String, String) {
    support::http::get(port, path, headers).expect("the server answers")
}

#[test]
fn a_token_guards_every_page_but_healthz_and_metrics() {
    const TOKEN: &str = "Zq7+status/page token";
    const TOKEN_IN_URL: &str = "Zq7%2Bstatus%2Fpage+token";
    let dir = tempfile::tempdir().unwrap();
    // The token from a file, as systemd's LoadCredential= hands it over.
    std::fs::write(dir.path().join("server-token"), format!("{TOKEN}\n")).unwrap();
    let (_config, store) = with_runs(
        dir.path(),
        "[server]\nlisten = \"127.0.0.1:0\"\ntoken = { file = \"server-token\" }\n",
    );
    let run_id = store.history(Some("mumbai"), 1).unwrap()[0].run_id.clone();
    let log_path = dir.path().join("daemon.log");
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(dir.path().join("jobs.toml"))
        .arg("daemon")
        .env("RUNBOOK_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut port = None;
    while Instant::now() < deadline && port.is_none() {
        std::thread::sleep(Duration::from_millis(200));
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        port = log
            .split("listen=127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse::<u16>().ok());
    }
    let port = port.unwrap_or_else(|| {
        panic!(
            "the daemon logs its address:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        )
    });
    let mut bodies = Vec::new();
    let run_page = format!("/runs/{run_id}");

    // Without the token: 401 naming what to do, for the page and a run.
    for path in ["/", run_page.as_str()] {
        let (code, head, body) = http(port, path, &[]);
        assert_eq!(code, 401, "GET {path}: {head}\n{body}");
        assert_eq!(header(&head, "www-authenticate"), Some("Bearer"), "{head}");
        assert!(body.contains("Authorization: Bearer"), "{body}");
        bodies.push(head + &body);
    }
    // A wrong token, in the header or the query: 401 too.
    let (code, head, body) = http(port, "/", &["Authorization: Bearer Zq7+status/page"]);
    assert_eq!(code, 401, "{head}\n{body}");
    bodies.push(head + &body);
    let (code, head, body) = http(port, "/?token=nope", &[]);
    assert_eq!(code, 401, "{head}\n{body}");
    assert!(header(&head, "set-cookie").is_none(), "{head}");
    bodies.push(head + &body);

    // Probes and Prometheus need no token.
    let (code, _, body) = http(port, "/healthz", &[]);
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, _, body) = http(port, "/metrics", &[]);
    assert_eq!(code, 200);
    assert!(body.contains("runbook_build_info"), "{body}");

    // The bearer header opens the pages.
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let (code, head, page) = http(port, "/", &[&bearer]);
    assert_eq!(code, 200, "{head}\n{page}");
    assert!(page.contains(&format!("href=\"runs/{run_id}\"")), "{page}");
    bodies.push(head + &page);
    let (code, head, body) = http(port, &run_page, &[&bearer]);
    assert_eq!(code, 200, "{head}\n{body}");
    bodies.push(head + &body);

    // A browser: ?token= once sets the cookie and sends it on to the address without the token.
    let (code, head, body) = http(port, &format!("/?token={TOKEN_IN_URL}"), &[]);
    assert_eq!(code, 303, "{head}\n{body}");
    assert_eq!(header(&head, "location"), Some("./"), "{head}");
    let set_cookie = header(&head, "set-cookie").expect("a cookie").to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attr), "{set_cookie}");
    }
    assert!(
        !set_cookie.contains("Secure"),
        "plain HTTP: a Secure cookie would never come back: {set_cookie}"
    );
    bodies.push(head.clone() + &body);
    let cookie = format!("Cookie: {}", set_cookie.split(';').next().unwrap());
    let (code, head, page) = http(port, "/", &[&cookie]);
    assert_eq!(code, 200, "{head}\n{page}");
    bodies.push(head + &page);
    let (code, head, body) = http(port, &run_page, &["Cookie: theme=dark", &cookie]);
    assert_eq!(
        code, 200,
        "the page's relative link works with the cookie: {head}\n{body}"
    );
    bodies.push(head + &body);
    // Behind a TLS proxy the cookie is Secure; other query parameters are kept.
    let (code, head, body) = http(
        port,
        &format!("{run_page}?token={TOKEN_IN_URL}&view=full"),
        &["X-Forwarded-Proto: https"],
    );
    assert_eq!(code, 303, "{head}\n{body}");
    assert_eq!(
        header(&head, "location"),
        Some(format!("{run_id}?view=full").as_str()),
        "{head}"
    );
    assert!(
        header(&head, "set-cookie").unwrap().contains("Secure"),
        "{head}"
    );
    bodies.push(head + &body);
    // With the cookie already set, ?token= still leaves the address.
    let (code, head, body) = http(port, &format!("/?token={TOKEN_IN_URL}"), &[&cookie]);
    assert_eq!(code, 303, "{head}\n{body}");
    assert_eq!(header(&head, "location"), Some("./"), "{head}");
    bodies.push(head + &body);
    // A forged cookie does not pass.
    let (code, head, body) = http(port, "/", &[&format!("Cookie: runbook_token={TOKEN}")]);
    assert_eq!(code, 401, "{head}\n{body}");
    bodies.push(head + &body);

    let log = std::fs::read_to_string(&log_path).unwrap();
    stop_daemon(&mut child, &log);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("WARN") && log.contains("refused"),
        "refusals are logged: {log}"
    );
    for (what, text) in bodies
        .iter()
        .map(|b| ("a response", b))
        .chain([("the log", &log)])
    {
        for secret in [TOKEN, TOKEN_IN_URL, "Zq7"] {
            assert!(!text.contains(secret), "{what} shows the token:\n{text}");
        }
    }
}
