//! The runbook-to-items table (docs/runbook-mapping.md) stays true: every item it names exists
//! in the shipped jobs.toml under that job, and every item of the scheduled jobs is named in it.

use std::collections::BTreeSet;

#[test]
fn mapping_table_and_shipped_config_agree() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/runbook-mapping.md"))
        .expect("docs/runbook-mapping.md");
    let config: toml::Table =
        toml::from_str(&std::fs::read_to_string(root.join("jobs.toml")).expect("jobs.toml"))
            .expect("valid TOML");

    let mut configured = BTreeSet::new();
    let jobs = config["jobs"].as_table().expect("[jobs]");
    for (job, table) in jobs {
        for item in table["items"].as_array().expect("items") {
            configured.insert((
                job.clone(),
                item["name"].as_str().expect("name").to_string(),
            ));
        }
    }

    // Table rows: | runbook line | job | `item` | kind | ... (the last table has no "what").
    let mut named = BTreeSet::new();
    for line in doc.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line
            .split(" | ")
            .map(|c| c.trim_matches(|ch| ch == '|' || ch == ' '))
            .collect();
        if cells.len() < 4 || !cells[2].starts_with('`') {
            continue;
        }
        let job = cells[1].to_string();
        let item = cells[2].trim_matches('`').to_string();
        assert!(
            configured.contains(&(job.clone(), item.clone())),
            "docs/runbook-mapping.md names {item:?} in job {job:?}, which jobs.toml does not have"
        );
        named.insert((job, item));
    }
    for (job, item) in &configured {
        if job == "monthly-dr" {
            continue;
        }
        assert!(
            named.contains(&(job.clone(), item.clone())),
            "jobs.toml item {item:?} of job {job:?} is missing from docs/runbook-mapping.md"
        );
    }
}
