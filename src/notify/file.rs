//! `type = "file"`: writes each report as `.txt`, `.html` and `.json` into `dir`, named
//! `<job>-<started, UTC>-<run_id>`. Writes go to a temporary file renamed into place, so a
//! reader never sees half a report.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::On;
use crate::report::Report;

/// Options of `type = "file"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Folder to write reports into (created when missing).
    pub dir: PathBuf,
    #[serde(default)]
    pub on: On,
}

impl FileConfig {
    pub fn prepare(&mut self, _name: &str, base: &Path) -> Result<Vec<String>, Vec<String>> {
        if self.dir.is_relative() {
            self.dir = base.join(&self.dir);
        }
        Ok(vec![])
    }

    /// The file name stem for a report.
    pub fn stem(report: &Report) -> String {
        format!(
            "{}-{}-{}",
            report.job,
            report
                .started_at
                .with_timezone(&chrono::Utc)
                .format("%Y%m%dT%H%M%SZ"),
            report.run_id
        )
    }

    pub async fn deliver(&self, report: &Report) -> Result<(), String> {
        let dir = self.dir.clone();
        let stem = Self::stem(report);
        let files = [
            ("txt", crate::report::text::render(report)),
            ("html", crate::report::html::render(report)),
            ("json", crate::report::json::render(report)),
        ];
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            for (ext, content) in files {
                let path = dir.join(format!("{stem}.{ext}"));
                let tmp = dir.join(format!(".{stem}.{ext}.tmp"));
                std::fs::write(&tmp, content)
                    .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
                std::fs::rename(&tmp, &path)
                    .map_err(|e| format!("cannot rename to {}: {e}", path.display()))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?
    }
}
