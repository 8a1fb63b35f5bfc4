//! Checksums of backups: SHA-256 streamed with a fixed-size buffer (a 2 GB dump is hashed in a
//! few MB), and the `sha256sum`-format sidecar (`<file>.sha256`) that states the expected one.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::backup_files::Entry;

/// Read buffer for hashing and decompressing: large reads keep the per-call overhead negligible.
pub const READ_BUF: usize = 1 << 20;

/// The `<file>.sha256` sidecar of a backup file, if there is one.
pub fn sidecar(e: &Entry) -> Option<PathBuf> {
    if e.is_dir {
        return None;
    }
    let mut p = e.path.clone().into_os_string();
    p.push(".sha256");
    let p = PathBuf::from(p);
    p.is_file().then_some(p)
}

/// Why a checksum sidecar gives no digest.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("cannot read checksum file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checksum file {} is not in sha256sum format (\"<64 hex digits>  <file>\")", .0.display())]
    Format(PathBuf),
}

/// Reads the expected digest from a `sha256sum`-format sidecar (`HEX  NAME` or `HEX *NAME`).
pub fn read_sidecar(path: &Path) -> Result<String, SidecarError> {
    let cannot = |source| SidecarError::Read {
        path: path.to_path_buf(),
        source,
    };
    // Line by line, each cut at 64 KiB: a sidecar is one short line, whatever the file holds.
    let mut r = std::io::BufReader::new(std::fs::File::open(path).map_err(cannot)?);
    let mut line = Vec::new();
    let mut first = String::new();
    while crate::base::bounded::read_line_capped(&mut r, &mut line, crate::base::bounded::LINE_CAP)
        .map_err(cannot)?
        .is_some()
    {
        if !line.trim_ascii().is_empty() {
            first = String::from_utf8_lossy(&line).into_owned();
            break;
        }
    }
    let hex = first.split_whitespace().next().unwrap_or("");
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(SidecarError::Format(path.to_path_buf()));
    }
    Ok(hex.to_ascii_lowercase())
}

/// Hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens a file for one sequential read (and tells the kernel so: larger readahead).
pub(super) fn open_sequential(path: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::File::open(path)?;
    let _ = nix::fcntl::posix_fadvise(
        &f,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
    );
    Ok(f)
}

/// Why a streaming read stopped early.
#[derive(Debug)]
pub enum StreamError {
    Cancelled,
    Io(String),
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::Cancelled => f.write_str("interrupted"),
            StreamError::Io(m) => f.write_str(m),
        }
    }
}

/// SHA-256 of a file, streamed (`sha2` uses the CPU's SHA extensions when present).
pub fn sha256_file(path: &Path, cancel: &CancellationToken) -> Result<String, StreamError> {
    let mut f = open_sequential(path)
        .map_err(|e| StreamError::Io(format!("cannot read {}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_BUF];
    loop {
        if cancel.is_cancelled() {
            return Err(StreamError::Cancelled);
        }
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(StreamError::Io(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// A reader that hashes what passes through it (one pass for checksum and decompression).
pub(super) struct HashingReader<R> {
    pub(super) inner: R,
    pub(super) hasher: Option<Sha256>,
    pub(super) cancel: CancellationToken,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "cancelled",
            ));
        }
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sidecar_format() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.sha256");
        std::fs::write(&p, format!("{}  x\n", "AB".repeat(32))).unwrap();
        assert_eq!(read_sidecar(&p).unwrap(), "ab".repeat(32));
        std::fs::write(&p, "nope\n").unwrap();
        assert!(read_sidecar(&p).is_err());
    }
}
