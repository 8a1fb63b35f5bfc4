//! `log_scan` driven through the CLI several times with one state folder, with the log rotated
//! (plain and compressed) and truncated between runs, as logrotate does it.

mod support;

use std::io::Write;
use std::path::Path;

use support::{Setup, details, item};

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log");
    f.write_all(text.as_bytes()).expect("append");
}

fn matches(report: &serde_json::Value) -> u64 {
    item(report, "app errors")["data"]["matches"]
        .as_u64()
        .expect("matches")
}

const ITEM: &str = r#"
[[jobs.t.items]]
name = "app errors"
kind = "log_scan"
files = ["logs/*.log"]
pattern = "ERROR"
warn_count = 1
fail_count = 5
top = 3
"#;

#[test]
fn counts_only_new_lines_across_rotation_truncation_and_compression() {
    let setup = Setup::job_t("", ITEM);
    let logs = setup.path().join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let log = logs.join("trading-service.log");
    append(
        &log,
        "2026-01-05 10:00:01.100 INFO  [main] Started TradingServiceApplication in 4.2 seconds\n\
         2026-01-05 10:01:02.200 ERROR [http-nio-8080-exec-1] Order 81723 rejected: insufficient margin\n\
         2026-01-05 10:01:03.300 ERROR [http-nio-8080-exec-2] Order 81724 rejected: insufficient margin\n\
         2026-01-05 10:02:00.000 ERROR [kafka-consumer-1] Failed to deserialize event 3f2a9c1e-8b7d-4c1a-9e2f-1a2b3c4d5e6f\n\
         2026-01-05 10:03:00.000 ERROR [still being writ",
    );

    // Run 1 (first run: the whole file). The line still being written is not counted yet.
    let (code, report) = setup.report_t(&[]);
    assert_eq!(code, 0, "3 matches is a warning, exit 0: {report:#}");
    let it = item(&report, "app errors");
    assert_eq!(it["status"], "warn");
    assert_eq!(matches(&report), 3);
    assert_eq!(
        it["data"]["top"][0]["message"],
        "ERROR [http-nio-<n>-exec-<n>] Order <n> rejected: insufficient margin"
    );
    assert_eq!(it["data"]["top"][0]["count"], 2);
    assert_eq!(
        it["data"]["top"][1]["message"],
        "ERROR [kafka-consumer-<n>] Failed to deserialize event <id>"
    );
    assert!(
        details(it).contains("     2× ERROR [http-nio-<n>-exec-<n>] Order <n> rejected"),
        "{it:#}"
    );

    // Run 2 with nothing new: nothing counted.
    let (code, report) = setup.report_t(&[]);
    assert_eq!((code, matches(&report)), (0, 0), "{report:#}");
    assert_eq!(item(&report, "app errors")["status"], "pass");

    // The partial line is finished, one more error, then logrotate renames the file and the
    // service opens a new one.
    append(
        &log,
        "ten] Broker timeout after 3000 ms\n2026-01-05 10:04:00.000 ERROR [x] Broker timeout after 3001 ms\n",
    );
    std::fs::rename(&log, logs.join("trading-service.log.1")).expect("rotate");
    append(
        &log,
        "2026-01-05 10:05:00.000 ERROR [y] Redis connection reset\n",
    );
    let (_, report) = setup.report_t(&[]);
    assert_eq!(
        matches(&report),
        3,
        "the rest of the rotated file (2) and the new file (1): {report:#}"
    );
    let it = item(&report, "app errors");
    assert!(details(it).contains("rotated: read the rest of"), "{it:#}");
    assert_eq!(
        it["data"]["files"].as_array().map(|f| f.len()),
        Some(1),
        "the rotated sibling is not scanned as a file of its own"
    );

    // A dry run scans but does not move the offsets: the next real run sees the same lines.
    append(
        &log,
        "2026-01-05 10:06:00.000 ERROR [z] Kafka producer fenced\n",
    );
    let (_, report) = setup.report_t(&["--dry-run"]);
    assert_eq!(matches(&report), 1);
    let (_, report) = setup.report_t(&[]);
    assert_eq!(
        matches(&report),
        1,
        "the dry run did not consume the line: {report:#}"
    );

    // Truncated in place (shorter than the remembered offset): read from the start.
    std::fs::write(&log, "ERROR short\n").expect("truncate");
    let (_, report) = setup.report_t(&[]);
    assert_eq!(matches(&report), 1, "{report:#}");
    assert!(details(item(&report, "app errors")).contains("truncated"));

    // Rotation with compression: the old file is gzipped (a new inode) and a new one started.
    append(&log, "ERROR before rotation\nINFO fine\n");
    std::fs::rename(
        logs.join("trading-service.log.1"),
        logs.join("trading-service.log.2"),
    )
    .expect("shift");
    let old = std::fs::read(&log).expect("read");
    let gz = std::fs::File::create(logs.join("trading-service.log.1.gz")).expect("create gz");
    let mut enc = flate2::write::GzEncoder::new(gz, flate2::Compression::default());
    enc.write_all(&old).expect("gzip");
    enc.finish().expect("gzip");
    std::fs::remove_file(&log).expect("remove");
    append(&log, "ERROR after rotation one\nERROR after rotation two\n");
    let (_, report) = setup.report_t(&[]);
    assert_eq!(
        matches(&report),
        3,
        "the compressed rest (1) and the new file (2): {report:#}"
    );

    // Over fail_count: fail.
    append(&log, &"ERROR burst\n".repeat(6));
    let (code, report) = setup.report_t(&[]);
    assert_eq!((code, matches(&report)), (1, 6));
    assert_eq!(item(&report, "app errors")["status"], "fail");
}

#[test]
fn first_run_with_since_skips_older_timestamped_lines_and_reads_recent_rotated_files() {
    let setup = Setup::job_t(
        "",
        r#"
[[jobs.t.items]]
name = "app errors"
kind = "log_scan"
files = ["app.log"]
since = "1d"
"#,
    );
    // Lines without an offset are read in the job's zone (Asia/Kolkata here).
    let ist = chrono::FixedOffset::east_opt(5 * 3600 + 1800).expect("offset");
    let at = |hours_ago: i64| {
        (chrono::Utc::now() - chrono::Duration::hours(hours_ago))
            .with_timezone(&ist)
            .format("%Y-%m-%d %H:%M:%S%.3f")
            .to_string()
    };
    let log = setup.path().join("app.log");
    append(
        &log,
        &format!(
            "{} ERROR old one\n{} ERROR recent one\nERROR no timestamp\n",
            at(48),
            at(2)
        ),
    );
    append(
        &setup.path().join("app.log.1"),
        &format!("{} ERROR rotated recently\n", at(5)),
    );
    let (_, report) = setup.report_t(&[]);
    let it = item(&report, "app errors");
    assert_eq!(
        it["data"]["matches"], 3,
        "recent, untimestamped and the recent rotated line: {it:#}"
    );
    assert_eq!(it["data"]["value"], 3, "the trend's number: {it:#}");
    assert!(!it["data"]["top"].to_string().contains("old one"), "{it:#}");
}

#[test]
fn a_missing_log_file_fails_the_item() {
    let setup = Setup::job_t(
        "",
        "[[jobs.t.items]]\nname = \"app errors\"\nkind = \"log_scan\"\nfiles = [\"missing.log\"]\n",
    );
    let (code, report) = setup.report_t(&[]);
    assert_eq!(code, 1);
    let it = item(&report, "app errors");
    assert_eq!(it["status"], "fail");
    assert!(
        it["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("missing.log does not exist"),
        "{it:#}"
    );
}

/// A log replaced by a new file on the same inode (inodes are reused after logrotate removes a
/// file; rewriting in place is the deterministic way to get that) is read from its start, not
/// from the old file's offset.
#[test]
fn a_new_file_on_the_same_inode_is_read_from_the_start() {
    let setup = Setup::job_t("", ITEM);
    let logs = setup.path().join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let log = logs.join("app.log");
    append(&log, "INFO one\nINFO two\n");
    let (_, report) = setup.report_t(&[]);
    assert_eq!(matches(&report), 0);
    // Same inode, different content, longer than the remembered offset (18 bytes).
    std::fs::write(&log, "ERROR first line of the new file\nERROR second\n").expect("rewrite");
    let (_, report) = setup.report_t(&[]);
    assert_eq!(
        matches(&report),
        2,
        "both lines of the new file: {report:#}"
    );
}
