//! `backup` end to end: real `pg_dump` output, real files, `runbook run-job --format json`.

mod support;

use std::io::Write;
use std::time::Duration;

use support::{
    Setup,
    files::{age, toml_path, write_sidecar},
    pg::{pg_dump, pg_tool, trading_cluster},
};

const HOUR: Duration = Duration::from_secs(3600);

fn item(dir: &std::path::Path, extra: &str) -> String {
    format!(
        "[[jobs.t.items]]\nname = \"Backup completed\"\nkind = \"backup\"\ndir = {}\n{extra}\n",
        toml_path(dir)
    )
}

fn details(item: &serde_json::Value) -> String {
    item["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn healthy_custom_dump_passes_with_listing_checksum_and_tables() {
    let c = trading_cluster();
    let backups = tempfile::tempdir().unwrap();
    let older = backups.path().join("trading-2026-11-23.dump");
    let newest = backups.path().join("trading-2026-11-24.dump");
    pg_dump(&c, "trading", "c", &older, &[]);
    pg_dump(&c, "trading", "c", &newest, &[]);
    write_sidecar(&newest);
    age(&older, 25 * HOUR);
    age(&newest, HOUR);
    let s = Setup::job_t(
        "",
        &item(
            backups.path(),
            "pattern = \"*.dump\"\nrequire_tables = [\"orders\", \"public.positions\", \"transactions\"]",
        ),
    );
    let (code, it) = s.first_item_t(&[]);
    assert_eq!(code, 0, "{it:#}");
    assert_eq!(it["status"], "pass", "{it:#}");
    assert_eq!(it["data"]["newest"]["name"], "trading-2026-11-24.dump");
    // The trend's number (SPEC 9.3): the newest backup's size in bytes.
    assert_eq!(
        it["data"]["value"].as_u64(),
        Some(std::fs::metadata(&newest).unwrap().len()),
        "{it:#}"
    );
    assert_eq!(it["data"]["checksum"], "ok");
    assert_eq!(
        it["data"]["verified"],
        "pg_restore -f /dev/null (full read)"
    );
    assert_eq!(
        it["data"]["files"].as_array().unwrap().len(),
        2,
        "the .sha256 sidecar is not a backup"
    );
    assert_eq!(it["data"]["previous"]["name"], "trading-2026-11-23.dump");
    let d = details(&it);
    assert!(d.contains("required tables present"), "{d}");
    assert!(
        d.contains("trading-2026-11-23.dump") && d.contains("ago)"),
        "listing like ls -lh: {d}"
    );
}

#[test]
fn empty_missing_and_non_folder_dirs_fail() {
    let empty = tempfile::tempdir().unwrap();
    let s = Setup::job_t("", &item(empty.path(), ""));
    let (code, it) = s.first_item_t(&[]);
    assert_eq!(code, 1);
    assert_eq!(it["status"], "fail");
    assert!(
        it["summary"]
            .as_str()
            .unwrap()
            .contains("no backup matching"),
        "{it:#}"
    );

    let missing = empty.path().join("nope");
    let s = Setup::job_t("", &item(&missing, ""));
    let (code, it) = s.first_item_t(&[]);
    assert_eq!(code, 1);
    assert!(
        it["summary"].as_str().unwrap().contains("does not exist"),
        "{it:#}"
    );

    let file = empty.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let s = Setup::job_t("", &item(&file, ""));
    let (code, it) = s.first_item_t(&[]);
    assert_eq!(code, 1);
    assert!(
        it["summary"]
            .as_str()
            .unwrap()
            .contains("cannot read backup folder"),
        "{it:#}"
    );
}

#[test]
fn corrupt_custom_and_directory_dumps_fail() {
    let c = trading_cluster();

    // Truncated: pg_restore --list would still pass it; the full read does not.
    let d1 = tempfile::tempdir().unwrap();
    let f = d1.path().join("t.dump");
    pg_dump(&c, "trading", "c", &f, &[]);
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len * 2 / 3)
        .unwrap();
    age(&f, HOUR);
    let (code, it) = Setup::job_t("", &item(d1.path(), "")).first_item_t(&[]);
    assert_eq!(code, 1, "{it:#}");
    assert_eq!(it["status"], "fail");
    assert!(
        it["summary"]
            .as_str()
            .unwrap()
            .contains("corrupt or incomplete"),
        "{it:#}"
    );

    // One byte flipped inside the compressed data.
    let d2 = tempfile::tempdir().unwrap();
    let f = d2.path().join("t.dump");
    pg_dump(&c, "trading", "c", &f, &[]);
    let mut bytes = std::fs::read(&f).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&f, bytes).unwrap();
    age(&f, HOUR);
    let (code, it) = Setup::job_t("", &item(d2.path(), "")).first_item_t(&[]);
    assert_eq!(code, 1, "{it:#}");
    assert!(
        it["summary"].as_str().unwrap().contains("corrupt"),
        "{it:#}"
    );

    // A directory dump with one data file deleted.
    let d3 = tempfile::tempdir().unwrap();
    let dd = d3.path().join("t.dir");
    pg_dump(&c, "trading", "d", &dd, &[]);
    let data_file = std::fs::read_dir(&dd)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap() != "toc.dat")
        .unwrap();
    std::fs::remove_file(&data_file).unwrap();
    age(&dd, HOUR);
    let (code, it) = Setup::job_t("", &item(d3.path(), "")).first_item_t(&[]);
    assert_eq!(code, 1, "{it:#}");
    assert_eq!(it["data"]["format"], "directory dump");
    assert!(
        it["summary"]
            .as_str()
            .unwrap()
            .contains("corrupt or incomplete"),
        "{it:#}"
    );
}

#[test]
fn a_dump_without_a_required_table_fails() {
    let c = trading_cluster();
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("t.dump");
    pg_dump(&c, "trading", "c", &f, &["--exclude-table=positions"]);
    age(&f, HOUR);
    let (code, it) = Setup::job_t(
        "",
        &item(d.path(), "require_tables = [\"orders\", \"positions\"]"),
    )
    .first_item_t(&[]);
    assert_eq!(code, 1);
    assert!(
        it["summary"]
            .as_str()
            .unwrap()
            .contains("required table missing from the dump: positions"),
        "{it:#}"
    );
}

#[test]
fn plain_dumps_need_their_completion_marker_also_inside_multi_member_gzip() {
    let c = trading_cluster();
    let d = tempfile::tempdir().unwrap();
    let sql = d.path().join("t.sql");
    pg_dump(&c, "trading", "p", &sql, &[]);
    let text = std::fs::read(&sql).unwrap();
    std::fs::remove_file(&sql).unwrap();

    // Two gzip members, as pigz writes: all must be read, the marker is in the second.
    let gz = d.path().join("t.sql.gz");
    let (a, b) = text.split_at(text.len() / 2);
    let mut out = Vec::new();
    for part in [a, b] {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(part).unwrap();
        out.extend(e.finish().unwrap());
    }
    std::fs::write(&gz, &out).unwrap();
    age(&gz, HOUR);
    let s = Setup::job_t(
        "",
        &item(d.path(), "require_tables = [\"orders\", \"transactions\"]"),
    );
    let (code, it) = s.first_item_t(&[]);
    assert_eq!(code, 0, "{it:#}");
    assert_eq!(
        it["data"]["verified"],
        "gzip (all members) + completion marker"
    );

    // Cut short before the marker (pg_dump died): the gzip stream itself is intact.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&text[..text.len() - 200]).unwrap();
    std::fs::write(&gz, e.finish().unwrap()).unwrap();
    age(&gz, HOUR);
    let (code, it) = s.first_item_t(&[]);
    assert_eq!(code, 1, "{it:#}");
    assert!(
        it["summary"]
            .as_str()
            .unwrap()
            .contains("plain dump is incomplete"),
        "{it:#}"
    );
}

#[test]
fn corrupt_gzip_fails() {
    let d = tempfile::tempdir().unwrap();
    let gz = d.path().join("t.sql.gz");
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for i in 0..20000 {
        writeln!(
            e,
            "INSERT INTO t VALUES ({i}, 'some text to compress {}');",
            i * 7
        )
        .unwrap();
    }
    let mut bytes = e.finish().unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&gz, bytes).unwrap();
    age(&gz, HOUR);
    let (code, it) = Setup::job_t("", &item(d.path(), "")).first_item_t(&[]);
    assert_eq!(code, 1, "{it:#}");
    assert!(
        it["summary"]
            .as_str()
            .unwrap()
            .contains("gzip stream is corrupt"),
        "{it:#}"
    );
}

#[test]
fn checksum_mismatch_fails() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("base.tar");
    std::fs::write(&f, vec![7u8; 100_000]).unwrap();
    write_sidecar(&f);
    std::fs::write(&f, vec![8u8; 100_000]).unwrap();
    age(&f, HOUR);
    let (code, it) = Setup::job_t("", &item(d.path(), "")).first_item_t(&[]);
    assert_eq!(code, 1, "{it:#}");
    assert_eq!(it["data"]["checksum"], "mismatch");
    assert!(
        it["summary"]
            .as_str()
            .unwrap()
            .contains("checksum mismatch"),
        "{it:#}"
    );
}

#[test]
fn stale_small_and_shrunken_backups() {
    let d = tempfile::tempdir().unwrap();
    let prev = d.path().join("b-1.bin");
    let newest = d.path().join("b-2.bin");
    std::fs::write(&prev, vec![1u8; 1_000_000]).unwrap();
    std::fs::write(&newest, vec![1u8; 200_000]).unwrap();
    age(&prev, 30 * HOUR);
    age(&newest, 2 * HOUR);
    // 80% smaller than the previous backup: a warning.
    let (code, it) = Setup::job_t("", &item(d.path(), "")).first_item_t(&[]);
    assert_eq!(code, 0, "warnings do not fail the run: {it:#}");
    assert_eq!(it["status"], "warn", "{it:#}");
    assert_eq!(it["data"]["shrink_pct"], 80.0);
    assert!(
        it["summary"].as_str().unwrap().contains("shrank 80%"),
        "{it:#}"
    );
    // ... which --strict turns into exit 1.
    let (code, _) = Setup::job_t("", &item(d.path(), "")).first_item_t(&["--strict"]);
    assert_eq!(code, 1);

    // Older than max_age: fail.
    age(&newest, 27 * HOUR);
    let (code, it) = Setup::job_t("", &item(d.path(), "max_shrink = \"90%\"")).first_item_t(&[]);
    assert_eq!(code, 1);
    assert!(
        it["summary"]
            .as_str()
            .unwrap()
            .contains("older than max_age"),
        "{it:#}"
    );

    // Smaller than min_size: fail.
    age(&newest, HOUR);
    let (code, it) = Setup::job_t(
        "",
        &item(d.path(), "max_shrink = \"90%\"\nmin_size = \"1MB\""),
    )
    .first_item_t(&[]);
    assert_eq!(code, 1);
    assert!(
        it["summary"]
            .as_str()
            .unwrap()
            .contains("smaller than min_size"),
        "{it:#}"
    );
}

#[test]
fn a_file_still_being_written_is_not_the_newest() {
    let d = tempfile::tempdir().unwrap();
    let done = d.path().join("b-1.bin");
    std::fs::write(&done, vec![1u8; 100_000]).unwrap();
    age(&done, HOUR);
    // Modified just now: within `settle`.
    let writing = d.path().join("b-2.bin");
    std::fs::write(&writing, vec![1u8; 10_000]).unwrap();
    let (code, it) = Setup::job_t("", &item(d.path(), "max_shrink = \"100%\"")).first_item_t(&[]);
    assert_eq!(code, 0, "{it:#}");
    assert_eq!(it["data"]["newest"]["name"], "b-1.bin");
    assert_eq!(it["data"]["in_progress"][0], "b-2.bin");
    assert!(
        details(&it).contains("skipped b-2.bin: still being written"),
        "{it:#}"
    );

    // Growing while we look (settle = 0s): a writer appends to it during the check.
    let d2 = tempfile::tempdir().unwrap();
    let done2 = d2.path().join("b-1.bin");
    std::fs::write(&done2, vec![1u8; 100_000]).unwrap();
    age(&done2, HOUR);
    let growing = d2.path().join("b-2.bin");
    std::fs::write(&growing, vec![1u8; 10_000]).unwrap();
    age(&growing, HOUR);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, growing) = (stop.clone(), growing.clone());
        std::thread::spawn(move || {
            let mut f = std::fs::File::options()
                .append(true)
                .open(&growing)
                .unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(&[2u8; 1000]).unwrap();
                f.set_modified(std::time::SystemTime::now() - HOUR).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let (code, it) = Setup::job_t(
        "",
        &item(d2.path(), "settle = \"0s\"\nmax_shrink = \"100%\""),
    )
    .first_item_t(&[]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(code, 0, "{it:#}");
    assert_eq!(it["data"]["newest"]["name"], "b-1.bin", "{it:#}");
    assert!(details(&it).contains("changed while we read it"), "{it:#}");
}

/// A base backup (`pg_basebackup`, which writes a `backup_manifest`) is verified with
/// `pg_verifybackup`; a file changed after the backup fails it.
#[test]
fn base_backup_with_manifest_is_verified_and_a_changed_file_fails() {
    let c = trading_cluster();
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base-20261124");
    let to = base.to_str().unwrap();
    pg_tool(
        &c,
        "pg_basebackup",
        &["-X", "fetch", "-c", "fast", "-D", to],
    );
    assert!(base.join("backup_manifest").exists());
    age(&base, HOUR);
    let setup = Setup::job_t(
        "",
        &item(d.path(), "pattern = \"base-*\"\nverify = \"manifest\""),
    );
    let (code, it) = setup.first_item_t(&[]);
    assert_eq!(code, 0, "{it:#}");
    assert_eq!(it["status"], "pass", "{it:#}");

    // Change a data file's bytes after the backup: the manifest's checksum no longer matches.
    std::fs::write(base.join("PG_VERSION"), "99\n").unwrap();
    age(&base, HOUR);
    let (code, it) = setup.first_item_t(&[]);
    assert_eq!(code, 1, "{it:#}");
    assert_eq!(it["status"], "fail");
    assert!(
        details(&it).contains("PG_VERSION")
            || it["summary"].as_str().unwrap().contains("PG_VERSION"),
        "the changed file is named: {it:#}"
    );
}
