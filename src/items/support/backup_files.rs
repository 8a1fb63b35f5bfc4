//! Backup folders: which files are backups, their sizes and ages, and which is the newest
//! *complete* one. `backup` and `restore_drill` must agree on that file (a drill that restores a
//! different file than the one the daily check verified would prove nothing), so both pick it
//! here.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::base::units::human_bytes;

/// One file or folder in the backup folder that matches the pattern.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub path: PathBuf,
    pub is_dir: bool,
    /// Bytes (a folder: the sum of its files).
    pub size: u64,
    /// Last modification (a folder: the newest of its files).
    pub mtime: SystemTime,
}

impl Entry {
    /// Seconds since the last modification (0 for a time in the future).
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.mtime).unwrap_or_default()
    }

    /// A JSON object for the report's `data`.
    pub fn json(&self, now: SystemTime) -> serde_json::Value {
        let mtime: chrono::DateTime<chrono::Utc> = self.mtime.into();
        serde_json::json!({
            "name": self.name,
            "path": self.path,
            "dir": self.is_dir,
            "size": self.size,
            "size_human": human_bytes(self.size),
            "modified": mtime.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "age_s": self.age(now).as_secs(),
        })
    }

    /// One line of the newest-5 listing, like `ls -lh`: size, time, name, age.
    pub fn listing_line(&self, now: SystemTime, tz: chrono_tz::Tz, note: &str) -> String {
        let mtime: chrono::DateTime<chrono::Utc> = self.mtime.into();
        let local = mtime.with_timezone(&tz);
        format!(
            "{:>6}  {}  {}{}  ({} ago){}",
            human_bytes(self.size),
            local.format("%Y-%m-%d %H:%M %Z"),
            self.name,
            if self.is_dir { "/" } else { "" },
            human_age(self.age(now)),
            if note.is_empty() {
                String::new()
            } else {
                format!("  [{note}]")
            }
        )
    }
}

/// `3d 4h`, `2h 13m`, `5m 10s`, `42s`: an age a person reads at a glance.
pub fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86400, (s % 86400) / 3600, (s % 3600) / 60, s % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {mins}m")
    } else if mins > 0 {
        format!("{mins}m {secs}s")
    } else {
        format!("{secs}s")
    }
}

/// Names that are never backups themselves: checksum sidecars and in-progress markers.
fn is_sidecar(name: &str) -> bool {
    [".sha256", ".sha256sum", ".md5", ".partial", ".tmp", ".lock"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// Why a backup folder could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("backup folder {} does not exist", .0.display())]
    Missing(PathBuf),
    #[error("backup folder {} is not readable by this user: {source}", .dir.display())]
    NotReadable {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read backup folder {}: {source}", .dir.display())]
    Read {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// The listing task died (a panic).
    #[error("internal error: {0}")]
    Internal(String),
}

/// The files and folders of `dir` whose names match `pattern`, newest first.
pub fn list_backups(dir: &Path, pattern: &globset::GlobMatcher) -> Result<Vec<Entry>, ListError> {
    let read = |source| ListError::Read {
        dir: dir.to_path_buf(),
        source,
    };
    let rd = std::fs::read_dir(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ListError::Missing(dir.to_path_buf()),
        std::io::ErrorKind::PermissionDenied => ListError::NotReadable {
            dir: dir.to_path_buf(),
            source: e,
        },
        _ => read(e),
    })?;
    let mut out = Vec::new();
    for de in rd {
        let de = de.map_err(read)?;
        let name = de.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || is_sidecar(&name) || !pattern.is_match(&name) {
            continue;
        }
        let path = de.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let entry = if meta.is_dir() {
            let (size, mtime) =
                dir_size_and_mtime(&path, meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
            Entry {
                name,
                path,
                is_dir: true,
                size,
                mtime,
            }
        } else if meta.is_file() {
            Entry {
                name,
                path,
                is_dir: false,
                size: meta.len(),
                mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            }
        } else {
            continue;
        };
        out.push(entry);
    }
    out.sort_by(|a, b| b.mtime.cmp(&a.mtime).then_with(|| b.name.cmp(&a.name)));
    Ok(out)
}

/// Total size and newest modification time of a folder's files (recursively).
fn dir_size_and_mtime(dir: &Path, own: SystemTime) -> (u64, SystemTime) {
    let mut size = 0;
    let mut newest = own;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for de in rd.flatten() {
            let Ok(meta) = de.metadata() else { continue };
            if let Ok(m) = meta.modified() {
                newest = newest.max(m);
            }
            if meta.is_dir() {
                stack.push(de.path());
            } else {
                size += meta.len();
            }
        }
    }
    (size, newest)
}

/// Stats one entry again (to see whether it is still growing).
pub fn restat(e: &Entry) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(&e.path).ok()?;
    if meta.is_dir() {
        Some(dir_size_and_mtime(&e.path, meta.modified().ok()?))
    } else {
        Some((meta.len(), meta.modified().ok()?))
    }
}

/// A `pattern` option (`backup`, `restore_drill`): a shell glob matched against the names in
/// the backup folder, compiled when the config is read, so a bad one is a configuration error
/// with its line and column and never a run-time failure.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct BackupPattern {
    text: String,
    matcher: globset::GlobMatcher,
}

/// A `pattern` that is not a glob.
#[derive(Debug, thiserror::Error)]
#[error("invalid glob {pattern:?}: {source}")]
pub struct InvalidGlob {
    pattern: String,
    source: globset::Error,
}

impl TryFrom<String> for BackupPattern {
    type Error = InvalidGlob;
    fn try_from(text: String) -> Result<BackupPattern, InvalidGlob> {
        match globset::GlobBuilder::new(&text)
            .literal_separator(true)
            .build()
        {
            Ok(g) => Ok(BackupPattern {
                matcher: g.compile_matcher(),
                text,
            }),
            Err(source) => Err(InvalidGlob {
                pattern: text,
                source,
            }),
        }
    }
}

impl Default for BackupPattern {
    /// Every name (`"*"`).
    fn default() -> BackupPattern {
        BackupPattern::try_from("*".to_string()).expect("`*` is a glob")
    }
}

impl BackupPattern {
    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matcher(&self) -> &globset::GlobMatcher {
        &self.matcher
    }
}

/// The newest complete backup and what was skipped on the way.
pub struct Selection {
    /// Every matching entry, newest first.
    pub all: Vec<Entry>,
    /// Index in `all` of the newest complete entry.
    pub newest: Option<usize>,
    /// Indexes in `all` of entries still being written (with why).
    pub in_progress: Vec<(usize, String)>,
}

/// Picks the newest entry that is not being written: modified longer than `settle` ago, and
/// unchanged on a re-stat `restat_after` later.
/// `restat_after` zero skips the re-stat (the caller re-stats after its verification instead);
/// entries in `exclude` were found growing by such a caller and count as being written.
pub async fn select_newest(
    dir: &Path,
    pattern: &globset::GlobMatcher,
    settle: Duration,
    restat_after: Duration,
    exclude: &[(PathBuf, String)],
) -> Result<Selection, ListError> {
    let (dir2, pattern2) = (dir.to_path_buf(), pattern.clone());
    let all = tokio::task::spawn_blocking(move || list_backups(&dir2, &pattern2))
        .await
        .map_err(|e| ListError::Internal(e.to_string()))??;
    let now = SystemTime::now();
    let mut in_progress = Vec::new();
    let mut newest = None;
    for (i, e) in all.iter().enumerate() {
        if e.age(now) < settle || e.mtime > now {
            in_progress.push((
                i,
                format!(
                    "still being written: modified {} ago, within settle ({})",
                    human_age(e.age(now)),
                    crate::base::units::Dur(settle)
                ),
            ));
            continue;
        }
        if let Some((_, why)) = exclude.iter().find(|(p, _)| *p == e.path) {
            in_progress.push((i, why.clone()));
            continue;
        }
        if restat_after.is_zero() {
            newest = Some(i);
            break;
        }
        tokio::time::sleep(restat_after).await;
        let e2 = e.clone();
        let again = tokio::task::spawn_blocking(move || restat(&e2))
            .await
            .ok()
            .flatten();
        match again {
            Some((size, mtime)) if size == e.size && mtime == e.mtime => {
                newest = Some(i);
                break;
            }
            Some((size, _)) => {
                in_progress.push((
                    i,
                    format!(
                        "still being written: its size changed from {} to {} while we looked",
                        e.size, size
                    ),
                ));
            }
            None => in_progress.push((i, "disappeared while we looked".into())),
        }
    }
    Ok(Selection {
        all,
        newest,
        in_progress,
    })
}

impl Selection {
    /// The complete entry written before the newest one (for the size comparison).
    pub fn previous(&self) -> Option<&Entry> {
        let n = self.newest?;
        self.all[n + 1..].first()
    }

    /// The newest-5 listing, oldest last like `ls -lt | head`.
    pub fn listing(&self, now: SystemTime, tz: chrono_tz::Tz) -> Vec<String> {
        self.all
            .iter()
            .enumerate()
            .take(5)
            .map(|(i, e)| {
                let note = if Some(i) == self.newest {
                    "newest complete".to_string()
                } else {
                    self.in_progress
                        .iter()
                        .find(|(j, _)| *j == i)
                        .map(|(_, why)| why.clone())
                        .unwrap_or_default()
                };
                e.listing_line(now, tz, &note)
            })
            .collect()
    }

    pub fn listing_json(&self, now: SystemTime) -> Vec<serde_json::Value> {
        self.all.iter().take(5).map(|e| e.json(now)).collect()
    }
}
