//! `type = "file"`: writes each report as `.txt`, `.html`, `.json` and `.eml` (the e-mail as it
//! would be sent, openable in any mail client) into `dir`, named
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

/// A built `file` sender: the folder, made absolute against the config file's folder.
#[derive(Debug, Clone)]
pub struct Folder {
    pub dir: PathBuf,
}

impl FileConfig {
    /// Builds the sender. Ok holds warnings.
    pub fn prepare(&self, _name: &str, base: &Path) -> Result<(Folder, Vec<String>), Vec<String>> {
        let dir = if self.dir.is_relative() {
            base.join(&self.dir)
        } else {
            self.dir.clone()
        };
        Ok((Folder { dir }, vec![]))
    }
}

impl Folder {
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

    pub(crate) async fn deliver(&self, report: &Report) -> Result<(), super::DeliveryError> {
        let dir = self.dir.clone();
        let stem = Self::stem(report);
        let files = [
            ("txt", crate::report::text::render(report)),
            ("html", crate::report::html::render(report)),
            ("json", crate::report::json::render(report)),
            ("eml", eml(report)?),
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

/// The extensions [`Folder::deliver`] writes.
const EXTENSIONS: [&str; 4] = ["txt", "html", "json", "eml"];

/// When the run of a file this notifier wrote started: `<job>-<YYYYMMDDTHHMMSSZ>-<ULID>.<ext>`
/// with one of its four extensions, or a `.<that>.tmp` left by an interrupted write. None for
/// any other file: a folder shared with other tools loses nothing of theirs.
pub fn written_at(file_name: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let name = match file_name.strip_prefix('.') {
        Some(hidden) => hidden.strip_suffix(".tmp")?,
        None => file_name,
    };
    let (stem, ext) = name.rsplit_once('.')?;
    if !EXTENSIONS.contains(&ext) {
        return None;
    }
    let (rest, run_id) = stem.rsplit_once('-')?;
    ulid::Ulid::from_string(run_id).ok()?;
    let (job, started) = rest.rsplit_once('-')?;
    if job.is_empty()
        || !job
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return None;
    }
    chrono::NaiveDateTime::parse_from_str(started, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc())
}

/// Deletes the reports this notifier wrote into `dir` for runs that started before `before`
/// (recognised by their names, [`written_at`]); other files are left alone. Returns how many
/// files went; a missing folder has none.
pub fn prune(dir: &Path, before: &chrono::DateTime<chrono::Utc>) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if written_at(&name).is_some_and(|t| t < *before) && entry.file_type()?.is_file() {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// The report as an RFC 5322 message (multipart text + HTML, the contract subject), from and to
/// `runbook@<host>`, dated when the run finished.
fn eml(report: &Report) -> Result<String, String> {
    use lettre::message::{Mailbox, MultiPart};
    let host: String = report
        .host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .collect();
    let host = if host.is_empty() {
        "localhost".to_string()
    } else {
        host
    };
    let me: Mailbox = format!("runbook <runbook@{host}>")
        .parse()
        .map_err(|e| format!("cannot make an address for {host}: {e}"))?;
    let message = lettre::Message::builder()
        .from(me.clone())
        .to(me)
        .subject(report.subject())
        .date(std::time::SystemTime::from(report.finished_at))
        .message_id(Some(format!(
            "<runbook.{}.{}@{host}>",
            report.job, report.run_id
        )))
        .multipart(MultiPart::alternative_plain_html(
            crate::report::text::render(report),
            crate::report::html::render(report),
        ))
        .map_err(|e| format!("cannot build the .eml: {e}"))?;
    Ok(String::from_utf8_lossy(&message.formatted()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_this_notifier_writes_are_recognised() {
        let ok = "monthly-dr-20250101T043000Z-01JGKZ3V8J5Q0X9W2M4N6P7R8S";
        let t = chrono::DateTime::parse_from_rfc3339("2025-01-01T04:30:00Z").unwrap();
        for ext in EXTENSIONS {
            assert_eq!(
                written_at(&format!("{ok}.{ext}")),
                Some(t.to_utc()),
                "{ext}"
            );
        }
        assert_eq!(written_at(&format!(".{ok}.html.tmp")), Some(t.to_utc()));
        for foreign in [
            format!("{ok}.pdf"),
            format!("{ok}.html.tmp"),
            format!(".{ok}.html"),
            "daily-20250101T043000Z-notaulid.txt".to_string(),
            "daily-2025-01-01-01JGKZ3V8J5Q0X9W2M4N6P7R8S.txt".to_string(),
            "-20250101T043000Z-01JGKZ3V8J5Q0X9W2M4N6P7R8S.txt".to_string(),
            "notes.txt".to_string(),
            "README".to_string(),
        ] {
            assert_eq!(written_at(&foreign), None, "{foreign}");
        }
    }
}
