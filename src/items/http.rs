//! `http`: an HTTP endpoint: status, latency, JSON assertions.
//!
//! The runbook's health URLs (`/actuator/health`, `/-/healthy`, Grafana's `/api/health`) and its
//! circuit-breaker check (`/actuator/circuitbreakers`, "none OPEN") are this kind. JSON
//! assertions address a value by JSON Pointer (RFC 6901) and compare it with a TOML value; for a
//! collection (an array, or an object keyed by name as Resilience4j returns its breakers),
//! `none`/`all` check every element and name the offending ones. When an assertion fails the
//! report shows what was received, trimmed, so the reader does not have to curl it again.
//!
//! The HTTP helpers it shares with `alertmanager` and `prometheus` are in [`super::support::http`].

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Deserialize;
use serde_json::json;

use super::support::http::{HttpUrl, client, describe_error, load_ca, reason, trim_for_report};
use super::{ItemCtx, Outcome, Prepare, Status};
use crate::base::bounded::{read_body, size_text};
use crate::base::units::Dur;

/// Options of `kind = "http"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// The URL to request (`http://` or `https://`).
    pub url: HttpUrl,
    /// The HTTP method. Default `GET`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Request headers; values may be secrets (`{ env = "VAR" }`, `{ file = "PATH" }`), e.g. an
    /// `Authorization` bearer token. Resolved when the config loads.
    #[serde(default)]
    pub headers: BTreeMap<String, crate::base::secret::SecretSource>,
    /// The headers with their values resolved by `prepare` (never printed).
    #[serde(skip)]
    pub resolved_headers: Vec<(String, crate::base::secret::Secret)>,
    /// Request body (sent as is; set a `Content-Type` header yourself).
    pub body: Option<String>,
    /// The status the response must have. Default 200.
    #[serde(default = "default_status")]
    pub expect_status: u16,
    /// Fail when the whole response (headers and body) takes longer than this.
    pub max_latency: Option<Dur>,
    /// A PEM file with extra CA certificates to trust (besides the built-in web roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// How many redirects to follow. Default 5; 0 reports the redirect response itself (so
    /// `expect_status = 302` can assert it).
    #[serde(default = "default_redirects")]
    pub redirects: usize,
    /// Assertions on the JSON body; all must hold.
    #[serde(default)]
    pub json: Vec<JsonAssertion>,
}

/// One assertion on the JSON body, addressed by a JSON Pointer (`/components/db/status`).
/// Exactly one of `equals`, `not_equals`, `none`, `all` is given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonAssertion {
    /// RFC 6901 JSON Pointer; `""` is the whole document.
    pub pointer: String,
    /// The value at `pointer` equals this (numbers compare by value: `1` equals `1.0`).
    pub equals: Option<toml::Value>,
    /// The value at `pointer` is present and differs from this.
    pub not_equals: Option<toml::Value>,
    /// For a collection (array, or object whose values are the elements): no element has all
    /// these field values. A field name starting with `/` is a JSON Pointer into the element.
    pub none: Option<BTreeMap<String, toml::Value>>,
    /// For a collection: every element has all these field values.
    pub all: Option<BTreeMap<String, toml::Value>>,
}

fn default_method() -> String {
    "GET".into()
}
fn default_status() -> u16 {
    200
}
fn default_redirects() -> usize {
    5
}

/// How many characters of a body the report shows.
const SHOW_CHARS: usize = 400;
/// Bodies larger than this are not read to the end (a health endpoint is small).
const MAX_BODY: usize = crate::base::bounded::API_BODY_CAP;

impl Http {
    /// Header values that are secrets: those read from the environment or a file, and
    /// credential headers (`Authorization`, ...) even when written inline.
    pub fn secrets(&self) -> Vec<&crate::base::secret::Secret> {
        self.resolved_headers
            .iter()
            .filter(|(name, s)| !s.inline || is_credential_header(name))
            .map(|(_, s)| s)
            .collect()
    }

    pub fn prepare(&mut self, p: &mut Prepare) {
        if reqwest::Method::from_bytes(self.method.to_ascii_uppercase().as_bytes()).is_err() {
            p.error("method", format!("invalid HTTP method {:?}", self.method));
        }
        if !(100..=599).contains(&self.expect_status) {
            p.error(
                "expect_status",
                format!("{} is not an HTTP status", self.expect_status),
            );
        }
        self.resolved_headers.clear();
        for (name, source) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                p.error("headers", format!("invalid header name {name:?}"));
                continue;
            }
            // A literal `Accept = "application/json"` is not a secret: only header names that
            // carry credentials get check-config's "written inline" warning.
            if let crate::base::secret::SecretSource::Literal(v) = source
                && !is_credential_header(name)
            {
                self.resolved_headers
                    .push((name.clone(), crate::base::secret::Secret::literal(v)));
                continue;
            }
            if let Some(secret) = p.secret(&format!("headers.{name}"), source) {
                self.resolved_headers.push((name.clone(), secret));
            }
        }
        if let Some(ca) = &self.ca_file
            && let Err(e) = load_ca(&p.path(ca))
        {
            p.error("ca_file", e.to_string());
        }
        for a in &self.json {
            let given = [
                a.equals.is_some(),
                a.not_equals.is_some(),
                a.none.is_some(),
                a.all.is_some(),
            ];
            if given.iter().filter(|g| **g).count() != 1 {
                p.error(
                    "json",
                    format!(
                        "assertion on {:?} needs exactly one of equals, not_equals, none, all",
                        a.pointer
                    ),
                );
            }
            if !a.pointer.is_empty() && !a.pointer.starts_with('/') {
                p.error(
                    "json",
                    format!(
                        "{:?} is not a JSON Pointer (it starts with \"/\", e.g. \"/status\")",
                        a.pointer
                    ),
                );
            }
        }
    }

    pub async fn run(&self, ctx: &ItemCtx) -> Outcome {
        let ca = match &self.ca_file {
            Some(path) => match load_ca(&ctx.path(path)) {
                Ok(c) => c,
                Err(e) => return Outcome::fail(e.to_string()),
            },
            None => Vec::new(),
        };
        let policy = if self.redirects == 0 {
            reqwest::redirect::Policy::none()
        } else {
            reqwest::redirect::Policy::limited(self.redirects)
        };
        let client = match client(ctx, &ca, policy) {
            Ok(c) => c,
            Err(e) => return Outcome::fail(e.to_string()),
        };
        let method = reqwest::Method::from_bytes(self.method.to_ascii_uppercase().as_bytes())
            .unwrap_or(reqwest::Method::GET);
        let mut req = client.request(method.clone(), self.url.url().clone());
        for (name, value) in &self.resolved_headers {
            req = req.header(name.as_str(), value.expose());
        }
        if let Some(body) = &self.body {
            req = req.body(body.clone());
        }

        let started = Instant::now();
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return Outcome::fail(format!("{method} {}: {}", self.url, describe_error(&e)));
            }
        };
        let status = resp.status();
        let final_url = resp.url().to_string();
        let crate::base::bounded::Body { bytes: body, cut } = match read_body(resp, MAX_BODY).await
        {
            Ok(b) => b,
            Err(e) => {
                return Outcome::fail(format!(
                    "{method} {}: reading the body: {}",
                    self.url,
                    describe_error(&e)
                ));
            }
        };
        let latency = started.elapsed();
        let latency_ms = latency.as_millis() as u64;
        let text = String::from_utf8_lossy(&body);

        let mut out = Outcome::pass(format!(
            "{} {} in {latency_ms} ms",
            status.as_u16(),
            reason(status)
        ));
        out.details.push(format!(
            "{method} {} → {} in {latency_ms} ms",
            self.url,
            status.as_u16()
        ));
        if final_url != self.url.as_str() {
            out.details.push(format!("redirected to {final_url}"));
        }
        let mut problems: Vec<String> = Vec::new();
        let mut show_body = false;

        if status.as_u16() != self.expect_status {
            out.escalate(Status::Fail);
            problems.push(format!(
                "status {} (expected {})",
                status.as_u16(),
                self.expect_status
            ));
            show_body = true;
        }
        if let Some(max) = self.max_latency
            && latency > max.get()
        {
            out.escalate(Status::Fail);
            problems.push(format!("took {latency_ms} ms (max_latency {max})"));
        }

        let mut assertions = Vec::new();
        let cut_note = format!(
            "the body is larger than {}: only its first {} were read",
            size_text(MAX_BODY),
            size_text(MAX_BODY)
        );
        if cut {
            out.details.push(cut_note.clone());
        }
        if !self.json.is_empty() && cut {
            // A JSON document cut short cannot be parsed: say why rather than "not JSON".
            out.escalate(Status::Fail);
            problems.push(format!(
                "{cut_note}, so the JSON assertions cannot be checked"
            ));
            show_body = true;
        } else if !self.json.is_empty() {
            match serde_json::from_slice::<serde_json::Value>(&body) {
                Err(e) => {
                    out.escalate(Status::Fail);
                    problems.push(format!("the body is not JSON ({e})"));
                    show_body = true;
                }
                Ok(doc) => {
                    for a in &self.json {
                        let (ok, message) = check_assertion(a, &doc);
                        if !ok {
                            out.escalate(Status::Fail);
                            problems.push(message.clone());
                        }
                        out.details
                            .push(format!("{} {message}", if ok { "ok:" } else { "FAILED:" }));
                        assertions
                            .push(json!({"pointer": a.pointer, "ok": ok, "message": message}));
                    }
                }
            }
        }
        if show_body {
            out.details
                .push(format!("received: {}", trim_for_report(&text, SHOW_CHARS)));
        }
        if !problems.is_empty() {
            out.summary = format!("{}: {}", self.url, problems.join("; "));
        } else if !self.json.is_empty() {
            out.summary = format!(
                "{} {} in {latency_ms} ms, {} JSON assertion{} hold",
                status.as_u16(),
                reason(status),
                self.json.len(),
                if self.json.len() == 1 { "" } else { "s" }
            );
        }
        out.data = json!({
            "url": self.url,
            "method": method.as_str(),
            "status": status.as_u16(),
            "latency_ms": latency_ms,
            "body_bytes_read": body.len(),
            "body_cut": cut,
            "final_url": final_url,
            "assertions": assertions,
        });
        out
    }
}

/// Header names whose values are credentials (`Authorization`, `Cookie`, `X-Api-Key`, ...).
fn is_credential_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "authorization",
        "cookie",
        "token",
        "secret",
        "key",
        "password",
        "auth",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// Checks one assertion against the document; returns (holds, a sentence saying what was found).
pub fn check_assertion(a: &JsonAssertion, doc: &serde_json::Value) -> (bool, String) {
    let p = &a.pointer;
    let found = doc.pointer(p);
    if let Some(expected) = &a.equals {
        return match found {
            None => (
                false,
                format!("{p} is missing (expected {})", show_toml(expected)),
            ),
            Some(v) if values_equal(expected, v) => (true, format!("{p} = {}", show_json(v))),
            Some(v) => (
                false,
                format!("{p} = {} (expected {})", show_json(v), show_toml(expected)),
            ),
        };
    }
    if let Some(unwanted) = &a.not_equals {
        return match found {
            None => (false, format!("{p} is missing")),
            Some(v) if values_equal(unwanted, v) => {
                (false, format!("{p} = {} (must not be)", show_json(v)))
            }
            Some(v) => (
                true,
                format!("{p} = {} (not {})", show_json(v), show_toml(unwanted)),
            ),
        };
    }
    let (fields, want_none) = match (&a.none, &a.all) {
        (Some(f), _) => (f, true),
        (None, Some(f)) => (f, false),
        (None, None) => return (false, format!("assertion on {p} has nothing to check")),
    };
    let wanted = fields
        .iter()
        .map(|(k, v)| format!("{k} = {}", show_toml(v)))
        .collect::<Vec<_>>()
        .join(", ");
    let elements: Vec<(String, &serde_json::Value)> = match found {
        None => return (false, format!("{p} is missing")),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                // An element that carries its own name (`{"name": "brokerService", ...}`) is
                // named by it; otherwise by its index.
                let label = v
                    .get("name")
                    .and_then(|n| n.as_str())
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("[{i}]"));
                (label, v)
            })
            .collect(),
        Some(serde_json::Value::Object(map)) => map.iter().map(|(k, v)| (k.clone(), v)).collect(),
        Some(other) => {
            return (
                false,
                format!(
                    "{p} is {}, not an array or object: {}",
                    kind_of(other),
                    show_json(other)
                ),
            );
        }
    };
    let matches = |el: &serde_json::Value| {
        fields
            .iter()
            .all(|(k, want)| field(el, k).is_some_and(|v| values_equal(want, v)))
    };
    let describe = |el: &serde_json::Value| {
        fields
            .keys()
            .map(|k| {
                format!(
                    "{k} = {}",
                    field(el, k)
                        .map(show_json)
                        .unwrap_or_else(|| "missing".into())
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let offending: Vec<String> = elements
        .iter()
        .filter(|(_, el)| matches(el) == want_none)
        .map(|(label, el)| format!("{label} ({})", describe(el)))
        .collect();
    let n = elements.len();
    if offending.is_empty() {
        let how = if want_none { "none has" } else { "all have" };
        (true, format!("{p}: {how} {wanted} ({n} checked)"))
    } else if want_none {
        (
            false,
            format!(
                "{p}: {} of {n} with {wanted}: {}",
                offending.len(),
                offending.join("; ")
            ),
        )
    } else {
        (
            false,
            format!(
                "{p}: {} of {n} without {wanted}: {}",
                offending.len(),
                offending.join("; ")
            ),
        )
    }
}

/// A field of an element: a plain key, or a JSON Pointer when it starts with `/`.
fn field<'a>(el: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    if key.starts_with('/') {
        el.pointer(key)
    } else {
        el.get(key)
    }
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Compares a value from the config with one from a JSON body. Numbers compare by value (an
/// integer equals the same float); strings are case-sensitive; a TOML datetime equals the JSON
/// string it is written as; tables and arrays compare element by element.
pub fn values_equal(expected: &toml::Value, got: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    use toml::Value as T;
    match (expected, got) {
        (T::String(a), J::String(b)) => a == b,
        (T::Boolean(a), J::Bool(b)) => a == b,
        (T::Integer(a), J::Number(b)) => match (b.as_i64(), b.as_f64()) {
            (Some(i), _) => *a == i,
            (None, Some(f)) => (*a as f64) == f,
            _ => false,
        },
        (T::Float(a), J::Number(b)) => b.as_f64().is_some_and(|f| *a == f),
        (T::Datetime(a), J::String(b)) => a.to_string() == *b,
        (T::Array(a), J::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| values_equal(x, y))
        }
        (T::Table(a), J::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, x)| b.get(k).is_some_and(|y| values_equal(x, y)))
        }
        _ => false,
    }
}

fn show_toml(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn show_json(v: &serde_json::Value) -> String {
    trim_for_report(&v.to_string(), 120)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assertion(src: &str) -> JsonAssertion {
        toml::from_str(src).expect("valid assertion")
    }

    #[test]
    fn numbers_compare_by_value_and_strings_exactly() {
        assert!(values_equal(&toml::Value::Integer(1), &json!(1.0)));
        assert!(values_equal(&toml::Value::Float(0.5), &json!(0.5)));
        assert!(!values_equal(
            &toml::Value::String("UP".into()),
            &json!("up")
        ));
        assert!(!values_equal(&toml::Value::String("1".into()), &json!(1)));
        assert!(values_equal(&toml::Value::Boolean(true), &json!(true)));
    }

    #[test]
    fn none_over_an_object_keyed_by_name_names_the_open_breaker() {
        let doc = json!({"circuitBreakers": {
            "brokerService": {"state": "OPEN", "failureRate": "62.5%"},
            "marketData": {"state": "CLOSED"}
        }});
        let a = assertion("pointer = \"/circuitBreakers\"\nnone = { state = \"OPEN\" }");
        let (ok, msg) = check_assertion(&a, &doc);
        assert!(!ok);
        assert!(msg.contains("brokerService (state = \"OPEN\")"), "{msg}");
        assert!(!msg.contains("marketData"), "{msg}");
    }

    #[test]
    fn all_over_an_array_uses_element_names() {
        let doc = json!({"items": [{"name": "a", "status": "UP"}, {"name": "b", "status": "DOWN"}, {"status": "UP"}]});
        let a = assertion("pointer = \"/items\"\nall = { status = \"UP\" }");
        let (ok, msg) = check_assertion(&a, &doc);
        assert!(!ok);
        assert!(msg.contains("b (status = \"DOWN\")"), "{msg}");
        let a = assertion("pointer = \"/items/0\"\nall = { status = \"UP\" }");
        let (ok, _) = check_assertion(&a, &doc);
        // An object's values are its elements: "a" and "UP" are strings, not objects with status.
        assert!(!ok);
    }

    #[test]
    fn missing_pointer_fails_and_says_so() {
        let a = assertion("pointer = \"/status\"\nequals = \"UP\"");
        let (ok, msg) = check_assertion(&a, &json!({"state": "UP"}));
        assert!(!ok);
        assert!(msg.contains("missing"), "{msg}");
    }

    #[test]
    fn trimming_keeps_one_line_and_says_how_long() {
        let s = "a\nb".repeat(300);
        let t = trim_for_report(&s, 10);
        assert!(!t.contains('\n'));
        assert!(t.ends_with("(900 characters)"), "{t}");
    }
}
