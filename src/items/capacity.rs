//! `capacity`: the automatic companion of the runbook's monthly "Capacity planning review".
//! For each configured series (an item's number in another job's stored runs: a disk's use, the
//! connections in use, the database size) a straight line is fitted through the last `window`
//! (30 days) of values, and the item says when it reaches its limit at that rate: "disk / full
//! in ~41 days at the 30-day rate". It warns when a limit is nearer than `warn_within`, fails
//! nearer than `fail_within` (or when a value is at its limit already).
//!
//! The item reads no store itself (items sit below the store): the runner hands each series'
//! points in ([`Capacity::history`], filled by `runner::capacity_inputs`), so the forecast here is
//! pure and tested with numbers.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::{Outcome, Prepare, Status};
use crate::base::units::Dur;

/// One number to forecast.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacitySeries {
    /// The item of `job` whose number it is ("System resources (CPU, memory, disk)").
    pub item: String,
    /// The number under that item's `data` (`runbook trend --field`): default `value`;
    /// `disks.1.used_percent` is the second disk of a `system` item.
    #[serde(default = "default_field")]
    pub field: String,
    /// The value at which it is full (100 for a percentage).
    pub limit: f64,
    /// How the report names it ("disk /var/lib/postgresql"). Default: item and field.
    pub label: Option<String>,
    /// Its unit, shown after numbers ("%", " GB"). Default none.
    #[serde(default)]
    pub unit: String,
}

fn default_field() -> String {
    "value".into()
}

/// Options of `kind = "capacity"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// The job whose stored runs hold the series. Default: this item's job.
    pub job: Option<String>,
    /// The numbers to forecast.
    pub series: Vec<CapacitySeries>,
    /// How far back the rate is fitted. Default 30d.
    #[serde(default = "default_window")]
    pub window: Dur,
    /// Warn when a limit is reached within this at the fitted rate (the planning horizon).
    /// Default 90d.
    #[serde(default = "default_warn")]
    pub warn_within: Dur,
    /// Fail when a limit is reached within this. Default 14d.
    #[serde(default = "default_fail")]
    pub fail_within: Dur,
    /// Each series' points within `window` (oldest first), or why there are none: filled by the
    /// runner from the store before the item runs; never in the config.
    #[serde(skip)]
    pub history: Vec<Result<Points, String>>,
}

/// A series' (time, value) points, oldest first.
pub type Points = Vec<(DateTime<Utc>, f64)>;

fn default_window() -> Dur {
    Dur::from_secs(30 * 86400)
}
fn default_warn() -> Dur {
    Dur::from_secs(90 * 86400)
}
fn default_fail() -> Dur {
    Dur::from_secs(14 * 86400)
}

/// Fewest points, and shortest span, a rate is fitted from.
const MIN_POINTS: usize = 3;
const MIN_SPAN_DAYS: f64 = 2.0;

/// What one series does: its latest value, its rate, when it is full.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    pub latest: f64,
    /// Change per day of the least-squares line through the points.
    pub per_day: f64,
    /// Days until `limit` at that rate from the latest value: 0 when at or over it, None when
    /// not growing.
    pub days_left: Option<f64>,
    pub points: usize,
}

/// Fits a line through `points` (least squares on days) and extrapolates to `limit`. None with
/// fewer than [`MIN_POINTS`] or spanning less than [`MIN_SPAN_DAYS`].
pub fn forecast(points: &[(DateTime<Utc>, f64)], limit: f64) -> Option<Forecast> {
    if points.len() < MIN_POINTS {
        return None;
    }
    let t0 = points[0].0;
    let xs: Vec<f64> = points
        .iter()
        .map(|(t, _)| (*t - t0).num_milliseconds() as f64 / 86_400_000.0)
        .collect();
    let span = xs.iter().copied().fold(0.0, f64::max);
    if span < MIN_SPAN_DAYS {
        return None;
    }
    let n = points.len() as f64;
    let mx = xs.iter().sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = xs
        .iter()
        .zip(points)
        .map(|(x, p)| (x - mx) * (p.1 - my))
        .sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    let per_day = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let latest = points[points.len() - 1].1;
    let days_left = if latest >= limit {
        Some(0.0)
    } else if per_day > 0.0 {
        Some((limit - latest) / per_day)
    } else {
        None
    };
    Some(Forecast {
        latest,
        per_day,
        days_left,
        points: points.len(),
    })
}

impl Capacity {
    pub fn prepare(&mut self, p: &mut Prepare) {
        if self.series.is_empty() {
            p.error("series", "capacity needs at least one entry in `series`");
        }
        for s in &self.series {
            let field_ok = s.field.split('.').all(|seg| {
                !seg.is_empty()
                    && seg
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
            if !field_ok {
                p.error(
                    "series",
                    format!(
                        "field {:?} of {:?}: use names of letters, digits, `_` or `-` joined by dots (as `runbook trend --field`)",
                        s.field, s.item
                    ),
                );
            }
            if !s.limit.is_finite() {
                p.error(
                    "series",
                    format!("the limit of {:?} is not a number", s.item),
                );
            }
        }
        if self.window.0.as_secs() < 86400 {
            p.error("window", "window must be at least 1d (the rate is per day)");
        }
        p.within_order(self.warn_within, self.fail_within);
    }

    /// The name of series `i` in the report.
    fn label(&self, i: usize) -> String {
        let s = &self.series[i];
        s.label.clone().unwrap_or_else(|| {
            if s.field == "value" {
                s.item.clone()
            } else {
                format!("{} {}", s.item, s.field)
            }
        })
    }

    pub fn run(&self) -> Outcome {
        let window_days = self.window.0.as_secs() / 86400;
        let warn_days = self.warn_within.0.as_secs_f64() / 86400.0;
        let fail_days = self.fail_within.0.as_secs_f64() / 86400.0;
        let mut rows: Vec<(Status, f64, String, String, serde_json::Value)> = Vec::new();
        for (i, s) in self.series.iter().enumerate() {
            let label = self.label(i);
            let u = &s.unit;
            let points = match self.history.get(i) {
                Some(Ok(p)) => p.as_slice(),
                Some(Err(e)) => {
                    rows.push((
                        Status::Warn,
                        f64::INFINITY,
                        format!("{label}: cannot read its history: {e}"),
                        format!("{label}: no history"),
                        json!({"label": label, "item": s.item, "field": s.field, "error": e, "status": "warn"}),
                    ));
                    continue;
                }
                None => &[],
            };
            let Some(f) = forecast(points, s.limit) else {
                let line = format!(
                    "{label}: not enough history for a rate yet ({} value{} in the last {window_days} days; {MIN_POINTS} over {MIN_SPAN_DAYS:.0} days needed)",
                    points.len(),
                    if points.len() == 1 { "" } else { "s" }
                );
                rows.push((
                    Status::Pass,
                    f64::INFINITY,
                    line,
                    String::new(),
                    json!({"label": label, "item": s.item, "field": s.field, "points": points.len(), "limit": s.limit, "status": "pass"}),
                ));
                continue;
            };
            let (status, when) = match f.days_left {
                Some(d) if d <= 0.0 => {
                    (Status::Fail, format!("at its limit ({}{u})", num(s.limit)))
                }
                Some(d) => {
                    let status = if d < fail_days {
                        Status::Fail
                    } else if d < warn_days {
                        Status::Warn
                    } else {
                        Status::Pass
                    };
                    (
                        status,
                        format!(
                            "reaches {}{u} in ~{} days at the {window_days}-day rate",
                            num(s.limit),
                            d.round() as i64
                        ),
                    )
                }
                None => (Status::Pass, format!("not growing over {window_days} days")),
            };
            let line = format!(
                "{label}: {}{u} now, {}{u}/day; {when}",
                num(f.latest),
                signed(f.per_day),
            );
            let short = format!("{label} {when}");
            rows.push((
                status,
                f.days_left.unwrap_or(f64::INFINITY),
                line,
                short,
                json!({"label": label, "item": s.item, "field": s.field, "latest": f.latest,
                       "per_day": f.per_day, "limit": s.limit, "days_left": f.days_left,
                       "points": f.points, "status": status.as_str()}),
            ));
        }
        // The nearest limit first: that is the one to plan for.
        rows.sort_by(|a, b| {
            b.0.severity()
                .cmp(&a.0.severity())
                .then(a.1.total_cmp(&b.1))
        });
        let worst = rows
            .iter()
            .map(|r| r.0)
            .max_by_key(|s| s.severity())
            .unwrap_or(Status::Pass);
        let nearest = rows.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
        let summary = if worst != Status::Pass {
            let bad: Vec<&str> = rows
                .iter()
                .filter(|r| r.0 != Status::Pass)
                .map(|r| r.3.as_str())
                .collect();
            bad.join("; ")
        } else if let Some(r) = rows.iter().find(|r| r.1.is_finite()) {
            format!("no limit within {}: the nearest, {}", days(warn_days), r.3)
        } else if rows.iter().all(|r| r.3.is_empty()) {
            format!(
                "not enough history for a forecast yet ({} series)",
                rows.len()
            )
        } else {
            format!("{} series, none growing toward its limit", rows.len())
        };
        let mut o = Outcome::new(worst, summary).with_details(
            rows.iter()
                .map(|r| format!("{} {}", r.0.tag(), r.2))
                .collect(),
        );
        o.data = json!({
            "window_days": window_days,
            "series": rows.iter().map(|r| r.4.clone()).collect::<Vec<_>>(),
        });
        // The primary number (SPEC 9.3): days until the nearest limit, when one is in sight.
        if nearest.is_finite() {
            o.data["value"] = json!((nearest * 10.0).round() / 10.0);
        }
        o
    }
}

fn days(d: f64) -> String {
    format!("{} days", d.round() as i64)
}

/// A number for people: up to 2 decimals, no trailing zeros.
fn num(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

fn signed(v: f64) -> String {
    let n = num(v);
    if v > 0.0 && n != "0" {
        format!("+{n}")
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daily(values: &[f64]) -> Vec<(DateTime<Utc>, f64)> {
        let t0 = DateTime::parse_from_rfc3339("2026-11-01T04:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        values
            .iter()
            .enumerate()
            .map(|(i, v)| (t0 + chrono::Duration::days(i as i64), *v))
            .collect()
    }

    #[test]
    fn a_straight_line_reaches_its_limit_when_expected() {
        // 50% growing 0.5%/day: 100% in 100 days from 50... the last value is 64.5 after 29 days.
        let values: Vec<f64> = (0..30).map(|i| 50.0 + 0.5 * i as f64).collect();
        let f = forecast(&daily(&values), 100.0).unwrap();
        assert!((f.per_day - 0.5).abs() < 1e-9, "{f:?}");
        assert!((f.days_left.unwrap() - 71.0).abs() < 1e-9, "{f:?}");
        assert_eq!(forecast(&daily(&[1.0, 2.0]), 10.0), None, "two points");
        let flat = forecast(&daily(&[5.0, 5.0, 5.0, 4.0]), 10.0).unwrap();
        assert_eq!(flat.days_left, None, "not growing");
        assert_eq!(
            forecast(&daily(&[90.0, 95.0, 100.0]), 100.0)
                .unwrap()
                .days_left,
            Some(0.0)
        );
    }
}
