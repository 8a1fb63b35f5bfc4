//! The JSON report (a contract: SPEC section 4).

use super::Report;

pub fn render(report: &Report) -> String {
    serde_json::to_string_pretty(report).expect("a report always serializes")
}
