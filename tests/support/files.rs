//! Files tests make: backups aged past `settle`, checksum sidecars, fixtures, paths in TOML.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

/// Sets the modification time of a file (or, recursively, of every file and folder of a
/// folder) to `ago`.
pub fn age(path: &Path, ago: Duration) {
    let t = SystemTime::now() - ago;
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            age(&e.unwrap().path(), ago);
        }
        std::fs::File::open(path).unwrap().set_modified(t).unwrap();
    } else {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
}

/// Writes a `sha256sum`-format sidecar for `file`.
pub fn write_sidecar(file: &Path) {
    let out = Command::new("sha256sum")
        .arg(file.file_name().unwrap())
        .current_dir(file.parent().unwrap())
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut side = file.as_os_str().to_owned();
    side.push(".sha256");
    std::fs::write(PathBuf::from(side), out.stdout).unwrap();
}

/// TOML string literal of a path.
pub fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A fixture file's text (`tests/fixtures/NAME`).
pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}
