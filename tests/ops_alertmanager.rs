//! `alertmanager` against Debian's real `prometheus-alertmanager` started by the test: alerts
//! are posted through its API v2, the item counts them, one is silenced through the API, and
//! the item counts again. `.ci/run` installs the package; without it this test fails loudly.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Setup, details, item};

/// A running Alertmanager; killed when dropped.
struct Alertmanager {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> PathBuf {
    for candidate in [
        "/usr/bin/prometheus-alertmanager",
        "/usr/local/bin/alertmanager",
        "/usr/bin/alertmanager",
    ] {
        let p = PathBuf::from(candidate);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "Alertmanager is not installed: apt-get install -y prometheus-alertmanager (.ci/run does this)"
    );
}

fn start() -> Alertmanager {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("alertmanager.yml");
    std::fs::write(
        &config,
        "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n",
    )
    .expect("write config");
    let port = support::free_port();
    let child = Command::new(binary())
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        // No gossip: a single instance, nothing listening on 9094.
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus-alertmanager");
    let am = Alertmanager {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = api::blocking_get(&format!("{}/-/ready", am.url))
            && r == 200
        {
            return am;
        }
        assert!(
            Instant::now() < deadline,
            "Alertmanager did not become ready on {}",
            am.url
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Tiny blocking HTTP helpers on a throwaway runtime (the tests themselves are synchronous).
mod api {
    pub fn blocking_get(url: &str) -> Result<u16, String> {
        rt().block_on(async {
            reqwest::get(url)
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string())
        })
    }
    pub fn get_json(url: &str) -> serde_json::Value {
        rt().block_on(async {
            reqwest::get(url)
                .await
                .expect("GET")
                .json()
                .await
                .expect("JSON")
        })
    }
    pub fn post_json(url: &str, body: serde_json::Value) -> serde_json::Value {
        rt().block_on(async {
            let r = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .expect("POST");
            assert!(r.status().is_success(), "POST {url}: {}", r.status());
            r.json().await.unwrap_or(serde_json::Value::Null)
        })
    }
    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }
}

fn rfc3339(offset_secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(offset_secs)).to_rfc3339()
}

/// Waits until the API lists `n` unsilenced active alerts (alerts and silences apply quickly,
/// but not necessarily before the POST returns).
fn wait_for_active(am: &Alertmanager, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let list = api::get_json(&format!(
            "{}/api/v2/alerts?active=true&silenced=false&inhibited=false",
            am.url
        ));
        if list.as_array().map(|a| a.len()) == Some(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} active alerts, Alertmanager lists {list:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn firing_alerts_are_counted_listed_and_silences_respected() {
    let am = start();
    let items = format!(
        r#"
[[jobs.t.items]]
name = "all firing"
kind = "alertmanager"
url = "{0}"

[[jobs.t.items]]
name = "critical only"
kind = "alertmanager"
url = "{0}"
matchers = ["severity=critical"]
max_firing = 1

[[jobs.t.items]]
name = "with silenced"
kind = "alertmanager"
url = "{0}"
include_silenced = true
"#,
        am.url
    );
    let setup = Setup::job_t("", &items);

    // Nothing fires yet.
    let (code, report) = setup.report_t(&[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        item(&report, "all firing")["summary"],
        "no alerts firing (not silenced or inhibited)"
    );

    api::post_json(
        &format!("{}/api/v2/alerts", am.url),
        serde_json::json!([
            {"labels": {"alertname": "HighErrorRate", "severity": "critical", "service": "trading"},
             "annotations": {"summary": "5xx error rate above 1% for 5 minutes"},
             "startsAt": "2026-01-05T04:00:00Z", "endsAt": rfc3339(3600)},
            {"labels": {"alertname": "HighAPILatencyP95", "severity": "warning", "service": "trading"},
             "annotations": {"summary": "p95 latency above 200 ms"},
             "startsAt": rfc3339(-600), "endsAt": rfc3339(3600)}
        ]),
    );
    wait_for_active(&am, 2);

    let (code, report) = setup.report_t(&[]);
    assert_eq!(code, 1, "alerts firing over max_firing fail the run");
    let all = item(&report, "all firing");
    assert_eq!(all["status"], "fail");
    assert_eq!(all["data"]["firing"], 2);
    let d = details(all);
    // Oldest first, with severity, since when in the job's zone (IST) and the summary.
    assert!(
        d.starts_with("HighErrorRate [critical] since 2026-01-05 09:30 IST: 5xx error rate above 1% for 5 minutes"),
        "{d}"
    );
    assert!(d.contains("HighAPILatencyP95 [warning]"), "{d}");
    let critical = item(&report, "critical only");
    assert_eq!(
        critical["status"], "pass",
        "one critical alert is within max_firing = 1: {critical:#}"
    );
    assert_eq!(critical["data"]["firing"], 1);

    // Silence the critical one through the API.
    api::post_json(
        &format!("{}/api/v2/silences", am.url),
        serde_json::json!({
            "matchers": [{"name": "alertname", "value": "HighErrorRate", "isRegex": false, "isEqual": true}],
            "startsAt": rfc3339(-5), "endsAt": rfc3339(3600), "createdBy": "runbook test", "comment": "maintenance"
        }),
    );
    wait_for_active(&am, 1);

    let (_, report) = setup.report_t(&[]);
    let all = item(&report, "all firing");
    assert_eq!(all["data"]["firing"], 1, "{all:#}");
    assert!(
        !details(all).contains("HighErrorRate"),
        "a silenced alert is not listed"
    );
    assert_eq!(item(&report, "critical only")["data"]["firing"], 0);
    let with = item(&report, "with silenced");
    assert_eq!(
        with["data"]["firing"], 2,
        "include_silenced counts silenced alerts: {with:#}"
    );
    assert!(
        details(with).contains("HighErrorRate [critical] since 2026-01-05 09:30 IST (silenced)"),
        "{with:#}"
    );
}
