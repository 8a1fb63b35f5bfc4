//! The Slack rendering (Block Kit).

use super::Report;

/// Block Kit payload for an incoming webhook.
pub fn render(report: &Report) -> serde_json::Value {
    serde_json::json!({ "text": report.subject() })
}
