//! `alertmanager`: firing alerts from Alertmanager's API v2.
//!
//! The runbook's morning line "Check firing alerts (should be 0)" is this kind. It asks
//! `GET {url}/api/v2/alerts?active=true&silenced=false&inhibited=false` (with
//! `include_silenced = true`, silenced and inhibited alerts count too), passes the `matchers`
//! as Alertmanager's own `filter=` parameters (so `severity=critical`, `alertname=~High.*` mean
//! exactly what they mean in amtool), and fails when more than `max_firing` alerts fire. Each
//! alert is listed with its name, severity, since when (in the job's zone) and summary.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::support::http::{HttpUrl, get_text, trim_for_report};
use super::{ItemCtx, Outcome, Prepare, Status};

/// Options of `kind = "alertmanager"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alertmanager {
    /// Base URL, e.g. `http://localhost:9093`.
    pub url: HttpUrl,
    /// Fail when more alerts fire. Default 0.
    #[serde(default)]
    pub max_firing: usize,
    /// Only alerts matching all of these (`severity=critical`, `alertname=~High.*`), in
    /// Alertmanager's matcher syntax; sent as `filter` parameters.
    #[serde(default)]
    pub matchers: Vec<String>,
    /// Count silenced and inhibited alerts too. Default false.
    #[serde(default)]
    pub include_silenced: bool,
}

/// How many alerts the details list (the count is always complete).
const SHOW_ALERTS: usize = 25;

/// One alert as API v2 returns it (`gettableAlert`); only the fields we show.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Alert {
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
    starts_at: Option<DateTime<Utc>>,
    status: Option<AlertStatus>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AlertStatus {
    state: Option<String>,
    #[serde(default)]
    silenced_by: Vec<String>,
    #[serde(default)]
    inhibited_by: Vec<String>,
}

impl Alertmanager {
    pub fn prepare(&mut self, p: &mut Prepare) {
        for m in &self.matchers {
            if !m.contains('=') && !m.contains('~') {
                p.error("matchers", format!("{m:?} is not a matcher (examples: \"severity=critical\", \"alertname=~High.*\")"));
            }
        }
    }

    /// The API URL with its query.
    pub fn api_url(&self) -> reqwest::Url {
        let mut url = self.url.endpoint("/api/v2/alerts");
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("active", "true");
            let hide = if self.include_silenced {
                "true"
            } else {
                "false"
            };
            q.append_pair("silenced", hide);
            q.append_pair("inhibited", hide);
            for m in &self.matchers {
                q.append_pair("filter", m);
            }
        }
        url
    }

    pub async fn run(&self, ctx: &ItemCtx) -> Outcome {
        let url = self.api_url();
        let (status, body) =
            match get_text(ctx, "Alertmanager", self.url.as_str(), url.clone()).await {
                Ok(r) => r,
                Err(e) => return Outcome::fail(e.to_string()),
            };
        if !status.is_success() {
            return Outcome::fail(format!(
                "Alertmanager answered {} to {url}",
                status.as_u16()
            ))
            .detail(format!("received: {}", trim_for_report(&body, 400)));
        }
        let mut alerts: Vec<Alert> = match serde_json::from_str(&body) {
            Ok(a) => a,
            Err(e) => {
                return Outcome::fail(format!("Alertmanager's answer is not an alert list: {e}"))
                    .detail(format!("received: {}", trim_for_report(&body, 400)));
            }
        };
        // Oldest first: the alert that has been firing longest is the one to read first.
        alerts.sort_by_key(|a| a.starts_at);

        let firing = alerts.len();
        let filter = if self.matchers.is_empty() {
            String::new()
        } else {
            format!(" matching {}", self.matchers.join(", "))
        };
        let scope = if self.include_silenced {
            ""
        } else {
            " (not silenced or inhibited)"
        };
        let mut out = if firing > self.max_firing {
            Outcome::fail(format!(
                "{firing} alert{} firing{filter}{scope}, max {}",
                plural(firing),
                self.max_firing
            ))
        } else if firing == 0 {
            Outcome::pass(format!("no alerts firing{filter}{scope}"))
        } else {
            Outcome::pass(format!(
                "{firing} alert{} firing{filter}{scope}, within max {}",
                plural(firing),
                self.max_firing
            ))
        };
        let mut listed = Vec::new();
        for a in &alerts {
            let name = a
                .labels
                .get("alertname")
                .cloned()
                .unwrap_or_else(|| "(no alertname)".into());
            let severity = a
                .labels
                .get("severity")
                .cloned()
                .unwrap_or_else(|| "-".into());
            let since = a.starts_at.map(|t| {
                t.with_timezone(&ctx.tz)
                    .format("%Y-%m-%d %H:%M %Z")
                    .to_string()
            });
            let summary = a
                .annotations
                .get("summary")
                .or_else(|| a.annotations.get("description"))
                .cloned();
            let state = a
                .status
                .as_ref()
                .and_then(|s| s.state.clone())
                .unwrap_or_else(|| "active".into());
            let silenced = a.status.as_ref().is_some_and(|s| !s.silenced_by.is_empty());
            let inhibited = a
                .status
                .as_ref()
                .is_some_and(|s| !s.inhibited_by.is_empty());
            if listed.len() < SHOW_ALERTS {
                let mut line = format!("{name} [{severity}]");
                if let Some(s) = &since {
                    line.push_str(&format!(" since {s}"));
                }
                if silenced {
                    line.push_str(" (silenced)");
                } else if inhibited {
                    line.push_str(" (inhibited)");
                }
                if let Some(s) = &summary {
                    line.push_str(&format!(": {}", trim_for_report(s, 160)));
                }
                out.details.push(line);
            }
            listed.push(json!({
                "alertname": name, "severity": severity, "starts_at": a.starts_at.map(|t| t.to_rfc3339()),
                "summary": summary, "state": state, "labels": a.labels,
            }));
        }
        if firing > SHOW_ALERTS {
            out.details
                .push(format!("… and {} more", firing - SHOW_ALERTS));
        }
        if firing > self.max_firing {
            out.escalate(Status::Fail);
        }
        out.data = json!({"url": self.url, "firing": firing, "max_firing": self.max_firing, "matchers": self.matchers, "alerts": listed});
        out
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_url_hides_silenced_and_passes_matchers_as_filters() {
        let am = Alertmanager {
            url: HttpUrl::try_from("http://am:9093/".to_string()).expect("valid"),
            max_firing: 0,
            matchers: vec!["severity=critical".into()],
            include_silenced: false,
        };
        let u = am.api_url();
        assert_eq!(u.path(), "/api/v2/alerts");
        assert_eq!(
            u.query(),
            Some("active=true&silenced=false&inhibited=false&filter=severity%3Dcritical")
        );
    }
}
