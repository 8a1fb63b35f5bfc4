//! `key_rotation`: API keys and credentials that must be rotated on a cadence. Each key has the
//! date it was last rotated and a maximum age; the item says how many days remain, warns within
//! `remind_before` and fails when a key is overdue.

use serde::Deserialize;

use super::{ItemCtx, Outcome, Prepare, Status};
use crate::base::units::{Date, Dur};

/// One key to track.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    /// What the key is ("Zerodha API key").
    pub name: String,
    /// When it was last rotated.
    pub rotated: Date,
    /// How long a key may live, e.g. `"90d"`.
    pub max_age: Dur,
    /// Who rotates it.
    pub owner: Option<String>,
}

/// Options of `kind = "key_rotation"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRotation {
    pub keys: Vec<Key>,
    /// Warn this long before a key is due. Default 14d.
    #[serde(default = "default_remind")]
    pub remind_before: Dur,
}

fn default_remind() -> Dur {
    Dur::from_secs(14 * 86400)
}

impl KeyRotation {
    pub fn prepare(&mut self, p: &mut Prepare) {
        if self.keys.is_empty() {
            p.error("keys", "key_rotation needs at least one entry in `keys`");
        }
    }

    pub async fn run(&self, ctx: &ItemCtx) -> Outcome {
        let today = ctx.started_at.with_timezone(&ctx.tz).date_naive();
        let remind_days = (self.remind_before.0.as_secs() / 86400) as i64;
        let mut worst = Status::Pass;
        let mut details = Vec::new();
        let mut data = Vec::new();
        let (mut overdue, mut soon) = (0, 0);
        let mut keys: Vec<(&Key, chrono::NaiveDate, i64)> = self
            .keys
            .iter()
            .map(|k| {
                let due =
                    k.rotated.0 + chrono::Duration::days((k.max_age.0.as_secs() / 86400) as i64);
                (k, due, (due - today).num_days())
            })
            .collect();
        keys.sort_by_key(|(_, _, left)| *left);
        for (k, due, left) in keys {
            let status = if left < 0 {
                overdue += 1;
                Status::Fail
            } else if left <= remind_days {
                soon += 1;
                Status::Warn
            } else {
                Status::Pass
            };
            if status.severity() > worst.severity() {
                worst = status;
            }
            let when = match left {
                l if l < 0 => format!("OVERDUE by {} day{}", -l, if l == -1 { "" } else { "s" }),
                0 => "due today".to_string(),
                1 => "due tomorrow".to_string(),
                l => format!("due in {l} days"),
            };
            let owner = k
                .owner
                .as_deref()
                .map(|o| format!(" (owner: {o})"))
                .unwrap_or_default();
            details.push(format!(
                "{}{owner}: rotated {}, due {} — {when}",
                k.name,
                k.rotated,
                due.format("%Y-%m-%d")
            ));
            data.push(serde_json::json!({
                "name": k.name, "rotated": k.rotated.to_string(), "due": due.format("%Y-%m-%d").to_string(),
                "days_left": left, "owner": k.owner, "status": status.as_str(),
            }));
        }
        let summary = match (overdue, soon) {
            (0, 0) => format!(
                "{} key{} within their rotation period",
                self.keys.len(),
                if self.keys.len() == 1 { "" } else { "s" }
            ),
            (0, s) => format!(
                "{s} key{} due for rotation within {}",
                if s == 1 { "" } else { "s" },
                self.remind_before
            ),
            (o, s) => format!(
                "{o} key{} overdue for rotation{}",
                if o == 1 { "" } else { "s" },
                if s > 0 {
                    format!(", {s} due soon")
                } else {
                    String::new()
                }
            ),
        };
        Outcome::new(worst, summary)
            .with_details(details)
            .with_data({
                // The trend (SPEC 9.3): the fewest days any key has until its rotation is due.
                let value = data.iter().filter_map(|k| k["days_left"].as_i64()).min();
                serde_json::json!({ "keys": data, "value": value })
            })
    }
}
