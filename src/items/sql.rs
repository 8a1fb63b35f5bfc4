//! `sql`: runs a query and asserts on its first row.
//!
//! The runbook's alert checks (connections in use, wraparound age, replication lag) are one
//! query and a threshold each. The query runs in a READ ONLY transaction (so a check can never
//! change the database, `--dry-run` or not) under a `statement_timeout` that ends before the
//! item's deadline. Parameters are bound (`$1`, `$2`, ...), never pasted into the text: each TOML
//! value is converted to the type the server inferred for its placeholder.

use serde::Deserialize;
use serde_json::json;
use tokio_postgres::types::{FromSql, ToSql, Type};

use super::{ItemCtx, Outcome, Prepare, Status};
use crate::base::pg;

/// Options of `kind = "sql"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sql {
    pub target: String,
    /// The query (one statement; it runs in a READ ONLY transaction).
    pub query: String,
    /// Bound parameters ($1, $2, ...), never pasted into the text. Strings, integers, floats,
    /// booleans, dates/datetimes, arrays/tables (as json) — converted to the placeholder's type.
    #[serde(default)]
    pub params: Vec<toml::Value>,
    /// The query must return exactly this many rows.
    pub expect_rows: Option<u64>,
    /// Fail when the first column of the first row is above this.
    pub max: Option<f64>,
    /// Fail when the first column of the first row is below this.
    pub min: Option<f64>,
    /// Warn when the first column of the first row is above this.
    pub warn_max: Option<f64>,
    /// Warn when the first column of the first row is below this.
    pub warn_min: Option<f64>,
    /// The first column of the first row must be this boolean (usually `true`).
    pub expect: Option<bool>,
}

impl Sql {
    pub fn prepare(&mut self, p: &mut Prepare) {
        if self.query.trim().is_empty() {
            p.error("query", "query is empty");
        }
        if let (Some(w), Some(m)) = (self.warn_max, self.max)
            && w > m
        {
            p.error(
                "warn_max",
                format!("warn_max ({w}) is above max ({m}): the warning could never show"),
            );
        }
        if let (Some(w), Some(m)) = (self.warn_min, self.min)
            && w < m
        {
            p.error(
                "warn_min",
                format!("warn_min ({w}) is below min ({m}): the warning could never show"),
            );
        }
    }

    fn needs_number(&self) -> bool {
        self.max.is_some()
            || self.min.is_some()
            || self.warn_max.is_some()
            || self.warn_min.is_some()
    }

    pub async fn run(&self, ctx: &ItemCtx) -> Outcome {
        let (target, mut client) = match ctx.check_connection(&self.target).await {
            Ok(c) => c,
            Err(e) => return Outcome::fail(e.to_string()),
        };
        let tx = match client.build_transaction().read_only(true).start().await {
            Ok(t) => t,
            Err(e) => {
                return Outcome::fail(format!("target {}: {}", target.name, pg::pg_error(&e)));
            }
        };
        let timeout = target.check_timeout_ms(ctx.deadline);
        if let Err(e) = tx
            .batch_execute(&format!("SET LOCAL statement_timeout = {timeout}"))
            .await
        {
            return Outcome::fail(format!("target {}: {}", target.name, pg::pg_error(&e)));
        }
        let stmt = match tx.prepare(&self.query).await {
            Ok(s) => s,
            Err(e) => return Outcome::fail(format!("query failed: {}", pg::pg_error(&e))),
        };
        if stmt.params().len() != self.params.len() {
            return Outcome::fail(format!(
                "the query has {} placeholder(s) but params has {} value(s)",
                stmt.params().len(),
                self.params.len()
            ));
        }
        // Placeholders the server typed as numeric are bound as float8 (the server casts).
        let stmt = if stmt.params().contains(&Type::NUMERIC) {
            let types: Vec<Type> = stmt
                .params()
                .iter()
                .map(|t| {
                    if *t == Type::NUMERIC {
                        Type::FLOAT8
                    } else {
                        t.clone()
                    }
                })
                .collect();
            match tx.prepare_typed(&self.query, &types).await {
                Ok(s) => s,
                Err(e) => return Outcome::fail(format!("query failed: {}", pg::pg_error(&e))),
            }
        } else {
            stmt
        };
        let mut bound: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        for (i, (v, ty)) in self.params.iter().zip(stmt.params()).enumerate() {
            match bind(v, ty) {
                Ok(b) => bound.push(b),
                Err(e) => return Outcome::fail(format!("params[{i}] (${}): {e}", i + 1)),
            }
        }
        let refs: Vec<&(dyn ToSql + Sync)> = bound
            .iter()
            .map(|b| b.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let rows = match tx.query(&stmt, &refs).await {
            Ok(r) => r,
            Err(e) => return Outcome::fail(format!("query failed: {}", pg::pg_error(&e))),
        };
        let _ = tx.rollback().await;
        self.judge(&rows)
    }

    fn judge(&self, rows: &[tokio_postgres::Row]) -> Outcome {
        let first = rows.first();
        let shown = first.map(|r| {
            (0..r.len())
                .map(|i| display(r, i))
                .collect::<Vec<_>>()
                .join(" | ")
        });
        let mut data = json!({ "rows": rows.len(), "first_row": shown });
        // The primary number (SPEC 9.3): the first column of the first row when it is a number
        // (the checked value when min/max are set, see below).
        if let Some(row) = first
            && !row.is_empty()
            && let Ok(v) = number(row, 0)
        {
            data["value"] = json!(v);
        }
        let mut problems: Vec<(Status, String)> = Vec::new();
        if let Some(n) = self.expect_rows
            && rows.len() as u64 != n
        {
            problems.push((Status::Fail, format!("{} row(s), expected {n}", rows.len())));
        }
        if self.needs_number() || self.expect.is_some() {
            let Some(row) = first else {
                return Outcome::fail("the query returned no rows").with_data(data);
            };
            if row.is_empty() {
                return Outcome::fail("the query returned no columns").with_data(data);
            }
            if let Some(want) = self.expect {
                match row.try_get::<_, Option<bool>>(0) {
                    Ok(Some(b)) if b == want => {}
                    Ok(Some(b)) => problems.push((
                        Status::Fail,
                        format!("first column is {b}, expected {want}"),
                    )),
                    Ok(None) => problems.push((
                        Status::Fail,
                        format!("first column is NULL, expected {want}"),
                    )),
                    Err(_) => problems.push((
                        Status::Fail,
                        format!(
                            "first column is {}, not a boolean",
                            row.columns()[0].type_()
                        ),
                    )),
                }
            }
            if self.needs_number() {
                match number(row, 0) {
                    Err(e) => problems.push((Status::Fail, e)),
                    Ok(v) => {
                        data["value"] = json!(v);
                        if let Some(m) = self.max.filter(|m| v > *m) {
                            problems.push((Status::Fail, format!("{v} is above max {m}")));
                        } else if let Some(m) = self.warn_max.filter(|m| v > *m) {
                            problems.push((Status::Warn, format!("{v} is above warn_max {m}")));
                        }
                        if let Some(m) = self.min.filter(|m| v < *m) {
                            problems.push((Status::Fail, format!("{v} is below min {m}")));
                        } else if let Some(m) = self.warn_min.filter(|m| v < *m) {
                            problems.push((Status::Warn, format!("{v} is below warn_min {m}")));
                        }
                    }
                }
            }
        }
        let status = problems
            .iter()
            .map(|p| p.0)
            .max_by_key(|s| s.severity())
            .unwrap_or(Status::Pass);
        let summary = match (problems.first(), &shown) {
            (Some(_), _) => problems
                .iter()
                .map(|p| p.1.clone())
                .collect::<Vec<_>>()
                .join("; "),
            (None, Some(s)) => format!("{s} ({} row(s))", rows.len()),
            (None, None) => "no rows".to_string(),
        };
        let details = rows
            .iter()
            .take(5)
            .map(|r| {
                (0..r.len())
                    .map(|i| display(r, i))
                    .collect::<Vec<_>>()
                    .join(" | ")
            })
            .collect();
        Outcome::new(status, summary)
            .with_details(details)
            .with_data(data)
    }
}

/// Converts a TOML value to the placeholder's type.
fn bind(v: &toml::Value, ty: &Type) -> Result<Box<dyn ToSql + Sync + Send>, String> {
    use toml::Value as V;
    let mismatch = || {
        format!(
            "cannot bind {} as {ty}; add a cast in the query (e.g. $1::text)",
            v.type_str()
        )
    };
    Ok(match (v, ty) {
        (V::Boolean(b), &Type::BOOL) => Box::new(*b),
        (V::Integer(i), &Type::INT2) => {
            Box::new(i16::try_from(*i).map_err(|_| format!("{i} does not fit in smallint"))?)
        }
        (V::Integer(i), &Type::INT4) => {
            Box::new(i32::try_from(*i).map_err(|_| format!("{i} does not fit in integer"))?)
        }
        (V::Integer(i), &Type::INT8) => Box::new(*i),
        (V::Integer(i), &Type::OID) => {
            Box::new(u32::try_from(*i).map_err(|_| format!("{i} is not an oid"))?)
        }
        (V::Integer(i), &Type::FLOAT4) => Box::new(*i as f32),
        (V::Integer(i), &Type::FLOAT8) => Box::new(*i as f64),
        (V::Float(f), &Type::FLOAT4) => Box::new(*f as f32),
        (V::Float(f), &Type::FLOAT8) => Box::new(*f),
        (V::String(s), t)
            if [
                Type::TEXT,
                Type::VARCHAR,
                Type::BPCHAR,
                Type::NAME,
                Type::UNKNOWN,
            ]
            .contains(t) =>
        {
            Box::new(s.clone())
        }
        (V::Integer(i), t) if [Type::TEXT, Type::VARCHAR].contains(t) => Box::new(i.to_string()),
        (V::String(s), &Type::INTERVAL) => {
            return Err(format!(
                "interval placeholders cannot be bound directly: write make_interval(secs => $n) or $n::text::interval (got {s:?})"
            ));
        }
        (V::Datetime(_), &Type::DATE) | (V::String(_), &Type::DATE) => {
            let s = match v {
                V::String(s) => s.clone(),
                V::Datetime(d) => d_to_string(d),
                _ => unreachable!("matched above"),
            };
            Box::new(
                chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d")
                    .map_err(|e| format!("{s:?} is not a date: {e}"))?,
            )
        }
        (V::Datetime(_), &Type::TIMESTAMPTZ) | (V::String(_), &Type::TIMESTAMPTZ) => {
            let s = match v {
                V::String(s) => s.clone(),
                V::Datetime(d) => d_to_string(d),
                _ => unreachable!("matched above"),
            };
            Box::new(
                chrono::DateTime::parse_from_rfc3339(&s)
                    .map_err(|e| format!("{s:?} is not an RFC3339 time: {e}"))?
                    .with_timezone(&chrono::Utc),
            )
        }
        (_, t) if *t == Type::JSON || *t == Type::JSONB => {
            Box::new(serde_json::to_value(v).map_err(|e| e.to_string())?)
        }
        _ => return Err(mismatch()),
    })
}

fn d_to_string(d: &toml::value::Datetime) -> String {
    d.to_string()
}

/// PostgreSQL `numeric` (binary format) as f64.
struct Numeric(f64);

impl<'a> FromSql<'a> for Numeric {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let word = |i: usize| -> Result<i16, Box<dyn std::error::Error + Sync + Send>> {
            raw.get(i..i + 2)
                .map(|b| i16::from_be_bytes([b[0], b[1]]))
                .ok_or_else(|| "short numeric".into())
        };
        let ndigits = word(0)? as usize;
        let weight = word(2)? as i32;
        let sign = word(4)? as u16;
        if sign == 0xC000 {
            return Ok(Numeric(f64::NAN));
        }
        let mut v = 0f64;
        for i in 0..ndigits {
            v += word(8 + 2 * i)? as f64 * 10000f64.powi(weight - i as i32);
        }
        Ok(Numeric(if sign == 0x4000 { -v } else { v }))
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

/// The column as a number, or why it is not one.
fn number(row: &tokio_postgres::Row, i: usize) -> Result<f64, String> {
    let ty = row.columns()[i].type_().clone();
    let v: Option<f64> = match ty {
        Type::INT2 => row.try_get::<_, Option<i16>>(i).map(|v| v.map(f64::from)),
        Type::INT4 => row.try_get::<_, Option<i32>>(i).map(|v| v.map(f64::from)),
        Type::INT8 => row
            .try_get::<_, Option<i64>>(i)
            .map(|v| v.map(|x| x as f64)),
        Type::OID => row.try_get::<_, Option<u32>>(i).map(|v| v.map(f64::from)),
        Type::FLOAT4 => row.try_get::<_, Option<f32>>(i).map(|v| v.map(f64::from)),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i),
        Type::NUMERIC => row.try_get::<_, Option<Numeric>>(i).map(|v| v.map(|n| n.0)),
        _ => {
            return Err(format!(
                "first column is {ty}, not a number (cast it, e.g. ::float8)"
            ));
        }
    }
    .map_err(|e| e.to_string())?;
    v.ok_or_else(|| "first column is NULL, expected a number".to_string())
}

/// A column for people to read.
fn display(row: &tokio_postgres::Row, i: usize) -> String {
    let ty = row.columns()[i].type_().clone();
    let s: Option<String> = match ty {
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)
            .ok()
            .flatten()
            .map(|b| b.to_string()),
        Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => {
            row.try_get::<_, Option<String>>(i).ok().flatten()
        }
        Type::TIMESTAMPTZ => row
            .try_get::<_, Option<chrono::DateTime<chrono::Utc>>>(i)
            .ok()
            .flatten()
            .map(|t| t.to_rfc3339()),
        Type::DATE => row
            .try_get::<_, Option<chrono::NaiveDate>>(i)
            .ok()
            .flatten()
            .map(|t| t.to_string()),
        Type::JSON | Type::JSONB => row
            .try_get::<_, Option<serde_json::Value>>(i)
            .ok()
            .flatten()
            .map(|t| t.to_string()),
        _ => match number(row, i) {
            Ok(v) => Some(v.to_string()),
            Err(e) if e.contains("NULL") => None,
            Err(_) => Some(format!("<{ty}>")),
        },
    };
    s.unwrap_or_else(|| "NULL".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_binary_decodes() {
        // 12345.67: ndigits 3, weight 1, sign +, dscale 2, digits 1 2345 6700.
        let raw: Vec<u8> = [3i16, 1, 0, 2, 1, 2345, 6700]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        let n = Numeric::from_sql(&Type::NUMERIC, &raw).expect("decodes").0;
        assert!((n - 12345.67).abs() < 1e-9, "{n}");
        let neg: Vec<u8> = [1i16, 0, 0x4000, 0, 42]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert_eq!(
            Numeric::from_sql(&Type::NUMERIC, &neg).expect("decodes").0,
            -42.0
        );
    }

    #[test]
    fn binds_by_the_placeholder_type() {
        assert!(bind(&toml::Value::Integer(5), &Type::INT4).is_ok());
        assert!(bind(&toml::Value::Integer(1 << 40), &Type::INT4).is_err());
        assert!(bind(&toml::Value::String("x".into()), &Type::TEXT).is_ok());
        let e = bind(&toml::Value::String("x".into()), &Type::UUID).expect_err("refused");
        assert!(e.contains("add a cast"), "{e}");
    }
}
