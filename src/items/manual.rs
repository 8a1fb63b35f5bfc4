//! `manual`: a checklist line for a person ("Review incident postmortems"). Always `manual`,
//! shown unchecked in the report, so the human part of the runbook is not forgotten.

use serde::Deserialize;

use super::{ItemCtx, Outcome, Prepare};

/// Options of `kind = "manual"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manual {
    /// Where to do it (a dashboard, a document).
    pub link: Option<String>,
    /// What exactly to do or look at.
    pub note: Option<String>,
}

impl Manual {
    pub fn prepare(&mut self, _p: &mut Prepare) {}

    pub async fn run(&self, _ctx: &ItemCtx) -> Outcome {
        let summary = self
            .note
            .clone()
            .unwrap_or_else(|| "for a person to do and tick off".into());
        let mut out = Outcome::manual(summary);
        if let Some(link) = &self.link {
            out = out
                .detail(format!("link: {link}"))
                .with_data(serde_json::json!({ "link": link }));
        }
        out
    }
}
