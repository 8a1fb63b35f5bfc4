//! `prometheus`: an instant PromQL query compared with thresholds.
//!
//! The runbook's alert runbooks (HighErrorRate, HighAPILatencyP95, CircuitBreakerOpen,
//! DatabaseConnectionPoolExhaustion) each start with a Prometheus query; this kind runs such a
//! query every morning, before the alert pages someone. `GET {url}/api/v1/query?query=...`;
//! every series of a vector result (or the single value of a scalar) is compared with
//! `warn_above`/`fail_above`/`warn_below`/`fail_below`, and listed with its labels. An error
//! answer (`"status": "error"`, e.g. a PromQL syntax error) fails with Prometheus' own message.
//!
//! With `compare_with = "7d"` the same query is also evaluated as of that long before the run
//! (Prometheus' `time` parameter: its own stored samples, so the comparison works from the
//! first run and does not depend on when runbook last ran), and a series that grew by more than
//! `warn_increase_pct`/`fail_increase_pct` percent warns/fails: "Analyze error trends from past
//! week" as week-over-week, not a fixed count that is wrong for every traffic level.

use serde::Deserialize;
use serde_json::json;

use super::support::http::{HttpUrl, get_text, trim_for_report};
use super::{ItemCtx, Outcome, Prepare, Status};

/// Options of `kind = "prometheus"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prometheus {
    /// Base URL, e.g. `http://localhost:9090`.
    pub url: HttpUrl,
    /// The PromQL expression, evaluated as an instant query at "now".
    pub query: String,
    /// Warn when a series' value is above this.
    pub warn_above: Option<f64>,
    /// Fail when a series' value is above this.
    pub fail_above: Option<f64>,
    /// Warn when a series' value is below this.
    pub warn_below: Option<f64>,
    /// Fail when a series' value is below this.
    pub fail_below: Option<f64>,
    /// What an empty result means. Default warn.
    #[serde(default)]
    pub no_data: NoData,
    /// Also evaluate the query this long before the run (e.g. `"7d"`: the week before) and
    /// compare each series with its value then (matched by labels).
    pub compare_with: Option<crate::base::units::Dur>,
    /// With `compare_with`: warn when a series grew by more than this many percent since then.
    pub warn_increase_pct: Option<f64>,
    /// With `compare_with`: fail when a series grew by more than this many percent since then.
    pub fail_increase_pct: Option<f64>,
    /// With `compare_with`: growth is judged only for a value now of at least this (from 2
    /// errors to 7 is +250% and no trend). Default 0.
    #[serde(default)]
    pub increase_min: f64,
}

/// What an empty query result means.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum NoData {
    #[default]
    Warn,
    Fail,
    Pass,
}

/// How many series the details list (the worst first).
const SHOW_SERIES: usize = 20;

/// One series of the result: its labels and value.
#[derive(Debug, Clone)]
struct Series {
    labels: serde_json::Map<String, serde_json::Value>,
    value: f64,
}

impl Prometheus {
    pub fn prepare(&mut self, p: &mut Prepare) {
        for (key, v) in [
            ("warn_increase_pct", self.warn_increase_pct),
            ("fail_increase_pct", self.fail_increase_pct),
        ] {
            if v.is_some() && self.compare_with.is_none() {
                p.error(
                    key,
                    format!(
                        "{key} needs compare_with (how long before to compare with, e.g. \"7d\")"
                    ),
                );
            }
            if let Some(v) = v
                && !(v >= 0.0 && v.is_finite())
            {
                p.error(
                    key,
                    format!("{key} must be a percentage of 0 or more, not {v}"),
                );
            }
        }
        if let (Some(w), Some(f)) = (self.warn_increase_pct, self.fail_increase_pct)
            && w > f
        {
            p.error(
                "warn_increase_pct",
                format!("warn_increase_pct ({w}) is above fail_increase_pct ({f})"),
            );
        }
        if self.compare_with.is_some_and(|d| d.0.is_zero()) {
            p.error("compare_with", "compare_with must be longer than 0");
        }
        if self.query.trim().is_empty() {
            p.error("query", "the PromQL query is empty");
        }
        if let (Some(w), Some(f)) = (self.warn_above, self.fail_above)
            && w > f
        {
            p.error(
                "warn_above",
                format!("warn_above ({w}) is above fail_above ({f})"),
            );
        }
        if let (Some(w), Some(f)) = (self.warn_below, self.fail_below)
            && w < f
        {
            p.error(
                "warn_below",
                format!("warn_below ({w}) is below fail_below ({f})"),
            );
        }
    }

    /// The status of one value against the thresholds, and why.
    fn judge(&self, v: f64) -> (Status, Option<String>) {
        if v.is_nan() {
            return (
                Status::Warn,
                Some("value is NaN (no samples in the window?)".into()),
            );
        }
        if let Some(f) = self.fail_above.filter(|f| v > *f) {
            return (Status::Fail, Some(format!("above {}", num(f))));
        }
        if let Some(f) = self.fail_below.filter(|f| v < *f) {
            return (Status::Fail, Some(format!("below {}", num(f))));
        }
        if let Some(w) = self.warn_above.filter(|w| v > *w) {
            return (Status::Warn, Some(format!("above {}", num(w))));
        }
        if let Some(w) = self.warn_below.filter(|w| v < *w) {
            return (Status::Warn, Some(format!("below {}", num(w))));
        }
        (Status::Pass, None)
    }

    pub async fn run(&self, ctx: &ItemCtx) -> Outcome {
        let (series, warnings) = match self.query_at(ctx, None).await {
            Ok(r) => r,
            Err(o) => return o,
        };
        let Some(ago) = self.compare_with else {
            return self.judge_all(series, warnings);
        };
        let then_at = ctx.started_at - chrono::Duration::from_std(ago.0).unwrap_or_default();
        let (then, mut then_warnings) = match self.query_at(ctx, Some(then_at)).await {
            Ok(r) => r,
            Err(mut o) => {
                o.summary = format!("{} earlier: {}", days_text(ago.0), o.summary);
                return o;
            }
        };
        let mut warnings = warnings;
        warnings.append(&mut then_warnings);
        let mut o = self.judge_all(series.clone(), warnings);
        self.compare(&mut o, &series, &then, ago.0);
        o
    }

    /// Each series against its value `ago` earlier (matched by labels): the change in the
    /// details and data, and `warn_increase_pct`/`fail_increase_pct` applied to growth.
    fn compare(&self, o: &mut Outcome, now: &[Series], then: &[Series], ago: std::time::Duration) {
        let window = days_text(ago);
        let mut lines = Vec::new();
        let mut earlier = Vec::new();
        let mut single: Option<(f64, f64, Option<f64>, String)> = None;
        let absolute = o.status;
        for s in now {
            let before = then.iter().find(|t| t.labels == s.labels).map(|t| t.value);
            let label = labels_text(&s.labels)
                .map(|l| format!("{l}: "))
                .unwrap_or_default();
            let Some(b) = before.filter(|b| b.is_finite()) else {
                lines.push(format!(
                    "{label}{} now, no value {window} earlier",
                    num(s.value)
                ));
                continue;
            };
            let change = (b != 0.0 && s.value.is_finite()).then(|| (s.value - b) / b.abs() * 100.0);
            let mut verdict = String::new();
            let mut why = String::new();
            if let Some(c) = change.filter(|_| s.value >= self.increase_min) {
                let over = |limit: Option<f64>| limit.filter(|l| c > *l);
                if let Some(l) = over(self.fail_increase_pct) {
                    o.escalate(Status::Fail);
                    why = format!("grew more than {}%", num(l));
                    verdict = format!(" — FAIL ({why})");
                } else if let Some(l) = over(self.warn_increase_pct) {
                    o.escalate(Status::Warn);
                    why = format!("grew more than {}%", num(l));
                    verdict = format!(" — WARN ({why})");
                }
            }
            lines.push(format!(
                "{label}{} now, {} {window} earlier ({}){verdict}",
                num(s.value),
                num(b),
                change_text(change, s.value)
            ));
            earlier.push(json!({"labels": s.labels, "value": b, "change_percent": change}));
            if now.len() == 1 {
                single = Some((s.value, b, change, why));
            }
        }
        if let Some((v, b, change, why)) = single {
            // The absolute thresholds' reason when they were crossed, else the growth's.
            let reason = if absolute != Status::Pass {
                format!(": {}", o.summary)
            } else if !why.is_empty() {
                format!(": {why}")
            } else {
                String::new()
            };
            o.summary = format!(
                "{} now, {} {window} earlier ({}){reason}",
                num(v),
                num(b),
                change_text(change, v),
            );
            o.data["earlier_value"] = json!(b);
            o.data["change_percent"] = json!(change);
        }
        o.data["compare_with"] = json!(window);
        o.data["earlier"] = json!(earlier);
        // Before the "query: ..." line.
        let at = o
            .details
            .iter()
            .position(|d| d.starts_with("query: "))
            .unwrap_or(o.details.len());
        for (i, l) in lines.into_iter().enumerate() {
            o.details.insert(at + i, l);
        }
    }

    /// Runs the query (as of `at`, or now): the series and Prometheus' warnings, or the
    /// failed outcome saying why.
    async fn query_at(
        &self,
        ctx: &ItemCtx,
        at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(Vec<Series>, Vec<String>), Outcome> {
        let mut url = self.url.endpoint("/api/v1/query");
        url.query_pairs_mut().append_pair("query", &self.query);
        if let Some(at) = at {
            url.query_pairs_mut()
                .append_pair("time", &at.timestamp().to_string());
        }
        let fail = |o: Outcome| -> Result<(Vec<Series>, Vec<String>), Outcome> { Err(o) };
        let (http_status, body) = match get_text(ctx, "Prometheus", self.url.as_str(), url).await {
            Ok(r) => r,
            Err(e) => return fail(Outcome::fail(e.to_string())),
        };
        let doc: serde_json::Value = match serde_json::from_str(&body) {
            Ok(d) => d,
            Err(_) => {
                return fail(
                    Outcome::fail(format!(
                        "Prometheus answered {} with a body that is not JSON",
                        http_status.as_u16()
                    ))
                    .detail(format!("received: {}", trim_for_report(&body, 400))),
                );
            }
        };
        // Prometheus answers errors (bad PromQL: 400, execution errors: 422/503) with
        // {"status":"error","errorType":...,"error":...}.
        if doc.get("status").and_then(|s| s.as_str()) != Some("success") {
            let kind = doc
                .get("errorType")
                .and_then(|s| s.as_str())
                .unwrap_or("error");
            let msg = doc
                .get("error")
                .and_then(|s| s.as_str())
                .unwrap_or("no message");
            return fail(
                Outcome::fail(format!(
                    "query failed ({kind}): {}",
                    trim_for_report(msg, 300)
                ))
                .detail(format!("query: {}", self.query))
                .detail(format!("HTTP {}", http_status.as_u16()))
                .with_data(
                    json!({"url": self.url, "query": self.query, "error_type": kind, "error": msg}),
                ),
            );
        }
        let series = match parse_result(&doc) {
            Ok(s) => s,
            Err(e) => {
                return fail(
                    Outcome::fail(e).detail(format!("received: {}", trim_for_report(&body, 400))),
                );
            }
        };
        let warnings: Vec<String> = doc
            .get("warnings")
            .and_then(|w| w.as_array())
            .map(|w| {
                w.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        Ok((series, warnings))
    }

    fn judge_all(&self, series: Vec<Series>, warnings: Vec<String>) -> Outcome {
        let thresholds = self.thresholds_text();
        if series.is_empty() {
            let status = match self.no_data {
                NoData::Pass => Status::Pass,
                NoData::Warn => Status::Warn,
                NoData::Fail => Status::Fail,
            };
            let mut o = Outcome::new(status, "no data: the query returned no series")
                .detail(format!("query: {}", self.query));
            o.details
                .extend(warnings.iter().map(|w| format!("Prometheus warning: {w}")));
            o.data = json!({"url": self.url, "query": self.query, "series": [], "no_data": true});
            return o;
        }
        let mut judged: Vec<(Series, Status, Option<String>)> = series
            .into_iter()
            .map(|s| {
                let (st, why) = self.judge(s.value);
                (s, st, why)
            })
            .collect();
        // Worst first, then the largest value (the series most likely to matter).
        judged.sort_by(|a, b| {
            b.1.severity()
                .cmp(&a.1.severity())
                .then(b.0.value.total_cmp(&a.0.value))
        });
        let worst = judged
            .iter()
            .map(|j| j.1)
            .max_by_key(|s| s.severity())
            .unwrap_or(Status::Pass);
        let bad = judged.iter().filter(|j| j.1 != Status::Pass).count();
        let n = judged.len();
        let summary = if n == 1 {
            let (s, _, why) = &judged[0];
            match why {
                Some(w) => format!("value {} is {w}", num(s.value)),
                None => format!("value {}{thresholds}", num(s.value)),
            }
        } else if bad == 0 {
            let max = judged
                .iter()
                .map(|j| j.0.value)
                .fold(f64::NEG_INFINITY, f64::max);
            format!(
                "{n} series, all within thresholds (max {}){thresholds}",
                num(max)
            )
        } else {
            format!("{bad} of {n} series outside thresholds")
        };
        let mut o = Outcome::new(worst, summary);
        for (s, st, why) in judged.iter().take(SHOW_SERIES) {
            let why = why
                .as_ref()
                .map(|w| format!(" — {} ({w})", st.tag()))
                .unwrap_or_default();
            o.details
                .push(format!("{}{why}", series_text(&s.labels, s.value)));
        }
        if n > SHOW_SERIES {
            o.details
                .push(format!("… and {} more series", n - SHOW_SERIES));
        }
        o.details.push(format!("query: {}", self.query));
        o.details
            .extend(warnings.iter().map(|w| format!("Prometheus warning: {w}")));
        o.data = json!({
            "url": self.url,
            "query": self.query,
            "series": judged.iter().map(|(s, st, _)| json!({
                "labels": s.labels,
                "value": if s.value.is_finite() { json!(s.value) } else { json!(s.value.to_string()) },
                "status": st.as_str(),
            })).collect::<Vec<_>>(),
        });
        // The primary number (SPEC 9.3): the result's value when it is a single finite series.
        if let [(s, _, _)] = judged.as_slice()
            && s.value.is_finite()
        {
            o.data["value"] = json!(s.value);
        }
        o
    }

    fn thresholds_text(&self) -> String {
        let mut parts = Vec::new();
        if let Some(v) = self.warn_above {
            parts.push(format!("warn > {}", num(v)));
        }
        if let Some(v) = self.fail_above {
            parts.push(format!("fail > {}", num(v)));
        }
        if let Some(v) = self.warn_below {
            parts.push(format!("warn < {}", num(v)));
        }
        if let Some(v) = self.fail_below {
            parts.push(format!("fail < {}", num(v)));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        }
    }
}

/// The series of a `success` answer: `vector` (one value per series), `scalar`, or `matrix`
/// (the newest sample of each series).
fn parse_result(doc: &serde_json::Value) -> Result<Vec<Series>, String> {
    let data = doc.get("data").ok_or("the answer has no `data`")?;
    let kind = data
        .get("resultType")
        .and_then(|t| t.as_str())
        .unwrap_or("");
    let result = data
        .get("result")
        .ok_or("the answer has no `data.result`")?;
    let sample_value = |sample: &serde_json::Value| -> Result<f64, String> {
        let text = sample
            .get(1)
            .and_then(|v| v.as_str())
            .ok_or("a sample is not [time, \"value\"]")?;
        parse_value(text)
    };
    match kind {
        "vector" => result
            .as_array()
            .ok_or("`data.result` is not a list")?
            .iter()
            .map(|s| {
                let labels = s
                    .get("metric")
                    .and_then(|m| m.as_object())
                    .cloned()
                    .unwrap_or_default();
                let v = s.get("value").ok_or("a series has no `value`")?;
                Ok(Series {
                    labels,
                    value: sample_value(v)?,
                })
            })
            .collect(),
        "matrix" => result
            .as_array()
            .ok_or("`data.result` is not a list")?
            .iter()
            .filter_map(|s| {
                let labels = s
                    .get("metric")
                    .and_then(|m| m.as_object())
                    .cloned()
                    .unwrap_or_default();
                let last = s
                    .get("values")
                    .and_then(|v| v.as_array())
                    .and_then(|v| v.last())?;
                Some(sample_value(last).map(|value| Series { labels, value }))
            })
            .collect(),
        "scalar" => Ok(vec![Series {
            labels: Default::default(),
            value: sample_value(result)?,
        }]),
        other => Err(format!(
            "unsupported result type {other:?} (vector, matrix or scalar)"
        )),
    }
}

/// Prometheus writes sample values as strings, including `"NaN"`, `"+Inf"` and `"-Inf"`.
fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => s
            .parse::<f64>()
            .map_err(|_| format!("sample value {s:?} is not a number")),
    }
}

/// `{uri="/api/orders", status="500"}`, `__name__` first as the metric name.
/// One series for people: `name{k="v"} = 312.5`, or just `312.5` for a result without labels
/// (`sum(...)`, a scalar), where `{} = 312.5` would only be noise.
fn series_text(labels: &serde_json::Map<String, serde_json::Value>, value: f64) -> String {
    match labels_text(labels) {
        None => num(value),
        Some(l) => format!("{l} = {}", num(value)),
    }
}

/// `name{k="v", ...}`; None when there is no label at all.
fn labels_text(labels: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    let name = labels
        .get("__name__")
        .and_then(|n| n.as_str())
        .unwrap_or("");
    let rest: Vec<String> = labels
        .iter()
        .filter(|(k, _)| *k != "__name__")
        .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or_default()))
        .collect();
    if rest.is_empty() && name.is_empty() {
        None
    } else {
        Some(format!("{name}{{{}}}", rest.join(", ")))
    }
}

/// "+53%", "-12%", "none before" (0 then), "no change".
fn change_text(change: Option<f64>, now: f64) -> String {
    match change {
        Some(0.0) => "no change".into(),
        Some(c) if c.abs() < 9.95 => format!("{c:+.1}%"),
        Some(c) => format!("{c:+.0}%"),
        None if now == 0.0 => "no change".into(),
        None => "none before".into(),
    }
}

/// `7d`, `36h`: a `compare_with` for people.
fn days_text(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    if secs.is_multiple_of(86400) {
        format!("{}d", secs / 86400)
    } else if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else {
        crate::base::units::Dur(d).to_string()
    }
}

/// A number for people: up to 4 decimals, no trailing zeros.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_thresholds() {
        let p = Prometheus {
            url: HttpUrl::try_from("http://p".to_string()).expect("valid"),
            query: "x".into(),
            warn_above: Some(80.0),
            fail_above: Some(95.0),
            warn_below: None,
            fail_below: Some(1.0),
            no_data: NoData::Warn,
            compare_with: None,
            warn_increase_pct: None,
            fail_increase_pct: None,
            increase_min: 0.0,
        };
        assert_eq!(p.judge(50.0).0, Status::Pass);
        assert_eq!(p.judge(81.0).0, Status::Warn);
        assert_eq!(p.judge(96.0).0, Status::Fail);
        assert_eq!(p.judge(0.5).0, Status::Fail);
        assert_eq!(p.judge(f64::NAN).0, Status::Warn);
        assert_eq!(num(0.00123456), "0.0012");
        assert_eq!(num(200.0), "200");
        assert_eq!(parse_value("+Inf"), Ok(f64::INFINITY));
    }

    #[test]
    fn a_series_without_labels_is_shown_as_its_value() {
        let labels = |v: serde_json::Value| v.as_object().unwrap().clone();
        assert_eq!(series_text(&labels(json!({})), 312.5), "312.5");
        assert_eq!(
            series_text(&labels(json!({"__name__": "up", "job": "api"})), 1.0),
            "up{job=\"api\"} = 1"
        );
        assert_eq!(
            series_text(&labels(json!({"route": "/orders"})), 0.25),
            "{route=\"/orders\"} = 0.25"
        );
    }
}
