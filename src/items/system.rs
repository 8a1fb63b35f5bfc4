//! `system`: disk use, memory available and load per core.
//!
//! The runbook's "Validate system resources (CPU, memory, disk)" and its ApplicationDown steps
//! (`free -h`, `df -h`) as one check: disk use per path from `statvfs` (the same numbers `df`
//! shows: used = total − free, percent of what non-root users can use), memory used =
//! 1 − MemAvailable/MemTotal from `/proc/meminfo` (MemAvailable, not MemFree: page cache is
//! reclaimable), and the 1- and 5-minute load averages from `sysinfo(2)` (the numbers of
//! `/proc/loadavg`) divided by the cores this process may use (`available_parallelism`, which
//! honours cgroup CPU limits and reads only `/proc/self`).
//!
//! The shipped systemd unit sets `ProcSubset=pid`, which hides `/proc/meminfo`, `/proc/loadavg`
//! and `/proc/stat`. Load never needs them. Memory, when `/proc/meminfo` is hidden, is estimated
//! as the kernel computes MemAvailable, minus its watermarks: MemFree and MemTotal from
//! `sysinfo(2)`, plus the file pages and reclaimable kernel memory of every NUMA node
//! (`/sys/devices/system/node/node*/meminfo`, which the unit leaves readable). The detail line
//! says when memory is estimated, and a number that cannot be had is a warning that says why.

use serde::Deserialize;
use serde_json::json;

use super::{ItemCtx, Outcome, Prepare, Status};
use crate::base::units::{Percent, human_bytes};

/// Options of `kind = "system"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct System {
    /// Mount points (or any path on them) whose disk use is checked. Default `["/"]`.
    #[serde(default = "default_paths")]
    pub paths: Vec<std::path::PathBuf>,
    /// Warn when a file system is used more than this. Default 80% (at most `disk_fail` when
    /// only that is set: explicit beats default).
    #[serde(rename = "disk_warn", default)]
    disk_warn_set: Option<Percent>,
    /// Fail when a file system is used more than this. Default 90% (at least `disk_warn`).
    #[serde(rename = "disk_fail", default)]
    disk_fail_set: Option<Percent>,
    /// Warn when more memory than this is in use (1 − MemAvailable/MemTotal). Default 85%.
    #[serde(rename = "memory_warn", default)]
    memory_warn_set: Option<Percent>,
    /// Fail when more memory than this is in use. Default 95%.
    #[serde(rename = "memory_fail", default)]
    memory_fail_set: Option<Percent>,
    /// The thresholds in effect (set by `prepare` from the above and the defaults).
    #[serde(skip, default = "default_disk_warn")]
    pub disk_warn: Percent,
    #[serde(skip, default = "default_disk_fail")]
    pub disk_fail: Percent,
    #[serde(skip, default = "default_memory_warn")]
    pub memory_warn: Percent,
    #[serde(skip, default = "default_memory_fail")]
    pub memory_fail: Percent,
    /// Warn when the 5-minute load average per core is above this. Default 2.0 (at most
    /// `load_fail_per_core` when only that is set).
    #[serde(rename = "load_warn_per_core", default)]
    load_warn_set: Option<f64>,
    #[serde(skip, default = "default_load")]
    pub load_warn_per_core: f64,
    /// Fail when the 5-minute load average per core is above this. Default: never.
    pub load_fail_per_core: Option<f64>,
}

impl System {
    pub fn prepare(&mut self, p: &mut Prepare) {
        use super::explicit_beats_default as pair;
        (self.disk_warn, self.disk_fail) = pair(
            self.disk_warn_set,
            self.disk_fail_set,
            default_disk_warn(),
            default_disk_fail(),
        );
        (self.memory_warn, self.memory_fail) = pair(
            self.memory_warn_set,
            self.memory_fail_set,
            default_memory_warn(),
            default_memory_fail(),
        );
        self.load_warn_per_core = match (self.load_warn_set, self.load_fail_per_core) {
            (Some(w), _) => w,
            (None, Some(f)) => default_load().min(f),
            (None, None) => default_load(),
        };
        if self.disk_warn.0 > self.disk_fail.0 {
            p.error(
                "disk_warn",
                format!(
                    "disk_warn ({}%) is above disk_fail ({}%)",
                    self.disk_warn.0, self.disk_fail.0
                ),
            );
        }
        if self.memory_warn.0 > self.memory_fail.0 {
            p.error(
                "memory_warn",
                format!(
                    "memory_warn ({}%) is above memory_fail ({}%)",
                    self.memory_warn.0, self.memory_fail.0
                ),
            );
        }
        if self.load_warn_per_core < 0.0 {
            p.error("load_warn_per_core", "must not be negative");
        }
        if let Some(f) = self.load_fail_per_core
            && f < self.load_warn_per_core
        {
            p.error(
                "load_fail_per_core",
                format!(
                    "load_fail_per_core ({f}) is below load_warn_per_core ({})",
                    self.load_warn_per_core
                ),
            );
        }
    }

    pub async fn run(&self, ctx: &ItemCtx) -> Outcome {
        let paths: Vec<std::path::PathBuf> = self.paths.iter().map(|p| ctx.path(p)).collect();
        let this = self.clone();
        // statvfs on a hung NFS mount blocks; keep it off the async threads.
        match tokio::task::spawn_blocking(move || this.measure(&paths)).await {
            Ok(o) => o,
            Err(e) => Outcome::fail(format!("measuring failed: {e}")),
        }
    }

    fn measure(&self, paths: &[std::path::PathBuf]) -> Outcome {
        let mut worst = Status::Pass;
        let mut problems = Vec::new();
        let mut details = Vec::new();
        let mut disks = Vec::new();
        let raise = |s: Status, worst: &mut Status| {
            if s.severity() > worst.severity() {
                *worst = s;
            }
        };

        for path in paths {
            match disk_use(path) {
                Ok(d) => {
                    let status = level(d.used_percent, self.disk_warn.0, self.disk_fail.0);
                    raise(status, &mut worst);
                    let line = format!(
                        "disk {}: {:.1}% used ({} of {}, {} free)",
                        path.display(),
                        d.used_percent,
                        human_bytes(d.used),
                        human_bytes(d.size),
                        human_bytes(d.avail)
                    );
                    if status != Status::Pass {
                        let limit = if status == Status::Fail {
                            self.disk_fail.0
                        } else {
                            self.disk_warn.0
                        };
                        problems.push(format!(
                            "{} {:.1}% used (over {limit}%)",
                            path.display(),
                            d.used_percent
                        ));
                        details.push(format!("{line} — {}", status.tag()));
                    } else {
                        details.push(line);
                    }
                    disks.push(
                        json!({"path": path, "size": d.size, "used": d.used, "avail": d.avail,
                        "used_percent": round1(d.used_percent), "status": status.as_str()}),
                    );
                }
                Err(e) => {
                    raise(Status::Fail, &mut worst);
                    problems.push(format!("{}: {e}", path.display()));
                    details.push(format!("disk {}: {e}", path.display()));
                    disks.push(json!({"path": path, "error": e, "status": "fail"}));
                }
            }
        }

        let sysinfo = nix::sys::sysinfo::sysinfo().map_err(|e| format!("sysinfo(2) failed: {e}"));
        let memory = match memory_use(&sysinfo, std::path::Path::new(NODE_DIR)) {
            Ok(m) => {
                let (total, avail) = (m.total, m.available);
                let used_percent = if total == 0 {
                    0.0
                } else {
                    100.0 * (1.0 - avail as f64 / total as f64)
                };
                let status = level(used_percent, self.memory_warn.0, self.memory_fail.0);
                raise(status, &mut worst);
                let mut line = format!(
                    "memory: {used_percent:.1}% used ({} available of {})",
                    human_bytes(avail),
                    human_bytes(total)
                );
                if let Some(why) = &m.estimated_because {
                    line.push_str(&format!(
                        "; estimated from sysinfo(2) and {NODE_DIR}: {why}"
                    ));
                }
                if status != Status::Pass {
                    let limit = if status == Status::Fail {
                        self.memory_fail.0
                    } else {
                        self.memory_warn.0
                    };
                    problems.push(format!("memory {used_percent:.1}% used (over {limit}%)"));
                    details.push(format!("{line} — {}", status.tag()));
                } else {
                    details.push(line);
                }
                json!({"total": total, "available": avail, "used_percent": round1(used_percent),
                    "source": if m.estimated_because.is_some() { "sysinfo" } else { "meminfo" },
                    "status": status.as_str()})
            }
            Err(e) => {
                raise(Status::Warn, &mut worst);
                problems.push(format!("memory unknown: {e}"));
                details.push(format!("memory unknown: {e} — {}", Status::Warn.tag()));
                json!({"error": e, "status": "warn"})
            }
        };

        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let load = match sysinfo.as_ref().map(|si| si.load_average()) {
            Ok((l1, l5, l15)) => {
                // The 5-minute average: the 1-minute one swings with a single cron job.
                let per_core = l5 / cores as f64;
                let status = if self.load_fail_per_core.is_some_and(|f| per_core > f) {
                    Status::Fail
                } else if per_core > self.load_warn_per_core {
                    Status::Warn
                } else {
                    Status::Pass
                };
                raise(status, &mut worst);
                let line = format!(
                    "load: {l1:.2} {l5:.2} {l15:.2} (1/5/15 min) on {cores} core{}, {per_core:.2} per core",
                    if cores == 1 { "" } else { "s" }
                );
                if status != Status::Pass {
                    problems.push(format!(
                        "load {per_core:.2} per core (over {})",
                        self.load_warn_per_core
                    ));
                    details.push(format!("{line} — {}", status.tag()));
                } else {
                    details.push(line);
                }
                json!({"load1": l1, "load5": l5, "load15": l15, "cores": cores, "per_core": round2(per_core), "status": status.as_str()})
            }
            Err(e) => {
                raise(Status::Warn, &mut worst);
                problems.push(format!("load unknown: {e}"));
                details.push(format!("load unknown: {e} — {}", Status::Warn.tag()));
                json!({"error": e, "status": "warn"})
            }
        };

        let summary = if problems.is_empty() {
            let max_disk = disks
                .iter()
                .filter_map(|d| d.get("used_percent").and_then(|v| v.as_f64()))
                .fold(0.0, f64::max);
            let mem = memory
                .get("used_percent")
                .and_then(|v| v.as_f64())
                .unwrap_or(0.0);
            let per_core = load.get("per_core").and_then(|v| v.as_f64()).unwrap_or(0.0);
            format!(
                "disk max {max_disk:.1}% used, memory {mem:.1}% used, load {per_core:.2} per core"
            )
        } else {
            problems.join("; ")
        };
        // The primary number (SPEC 9.3): the used % of the fullest disk that could be measured.
        let value = disks
            .iter()
            .filter_map(|d| d.get("used_percent").and_then(|v| v.as_f64()))
            .reduce(f64::max);
        Outcome::new(worst, summary)
            .with_details(details)
            .with_data(json!({"disks": disks, "memory": memory, "load": load, "value": value}))
    }
}

/// One file system's numbers, as `df` computes them.
struct DiskUse {
    size: u64,
    used: u64,
    avail: u64,
    used_percent: f64,
}

fn disk_use(path: &std::path::Path) -> Result<DiskUse, String> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| format!("statvfs failed: {e}"))?;
    let frsize = st.fragment_size() as u64;
    let size = st.blocks() as u64 * frsize;
    let free = st.blocks_free() as u64 * frsize;
    let avail = st.blocks_available() as u64 * frsize;
    let used = size.saturating_sub(free);
    // df's Use%: used / (used + available to non-root), rounded up.
    let denom = used + avail;
    let used_percent = if denom == 0 {
        0.0
    } else {
        100.0 * used as f64 / denom as f64
    };
    Ok(DiskUse {
        size,
        used,
        avail,
        used_percent,
    })
}

/// (MemTotal, MemAvailable) in bytes.
fn parse_meminfo(text: &str) -> Result<(u64, u64), String> {
    let field = |name: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kb * 1024)
        })
    };
    let total = field("MemTotal").ok_or("/proc/meminfo has no MemTotal")?;
    let avail = field("MemAvailable")
        .ok_or("/proc/meminfo has no MemAvailable (kernel older than 3.14)")?;
    Ok((total, avail))
}

/// Where the NUMA nodes' memory counters are (sysfs, visible under `ProcSubset=pid`).
const NODE_DIR: &str = "/sys/devices/system/node";

/// Memory in bytes.
struct MemoryUse {
    total: u64,
    available: u64,
    /// Why `/proc/meminfo` was not used (the numbers are then an estimate).
    estimated_because: Option<String>,
}

/// MemTotal and MemAvailable from `/proc/meminfo`, or, where it is hidden, estimated from
/// `sysinfo(2)` and the NUMA nodes' counters in `node_dir`.
fn memory_use(
    sysinfo: &Result<nix::sys::sysinfo::SysInfo, String>,
    node_dir: &std::path::Path,
) -> Result<MemoryUse, String> {
    let hidden = match std::fs::read_to_string("/proc/meminfo") {
        Ok(text) => {
            let (total, available) = parse_meminfo(&text)?;
            return Ok(MemoryUse {
                total,
                available,
                estimated_because: None,
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "/proc/meminfo is hidden (systemd's ProcSubset=pid)".to_string()
        }
        Err(e) => format!("cannot read /proc/meminfo: {e}"),
    };
    let si = sysinfo.as_ref().map_err(|e| format!("{hidden}, and {e}"))?;
    let (total, free) = (si.ram_total(), si.ram_unused());
    let reclaimable = node_reclaimable(node_dir).map_err(|e| {
        format!(
            "{hidden}, and the page cache is unknown ({e}): {} free of {} (sysinfo(2)) \
             leaves out reclaimable memory",
            human_bytes(free),
            human_bytes(total)
        )
    })?;
    Ok(MemoryUse {
        total,
        available: (free + reclaimable).min(total),
        estimated_because: Some(hidden),
    })
}

/// Reclaimable memory of all NUMA nodes in bytes: file pages (active and inactive) and
/// reclaimable kernel memory, the parts of MemAvailable besides MemFree.
fn node_reclaimable(node_dir: &std::path::Path) -> Result<u64, String> {
    let entries =
        std::fs::read_dir(node_dir).map_err(|e| format!("{}: {e}", node_dir.display()))?;
    let mut sum = 0;
    let mut nodes = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(n) = name.to_str().and_then(|n| n.strip_prefix("node")) else {
            continue;
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let path = entry.path().join("meminfo");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        sum += parse_node_meminfo(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        nodes += 1;
    }
    if nodes == 0 {
        return Err(format!("{} lists no node", node_dir.display()));
    }
    Ok(sum)
}

/// Active(file) + Inactive(file) + KReclaimable (SReclaimable on kernels before 4.20) of one
/// node's `meminfo` ("Node 0 Active(file):  6664860 kB"), in bytes.
fn parse_node_meminfo(text: &str) -> Result<u64, String> {
    let field = |name: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            // "Node <n> <field>: <value> kB"
            let rest = l.strip_prefix("Node ")?;
            let (_, rest) = rest.split_once(' ')?;
            let rest = rest.trim_start().strip_prefix(name)?.strip_prefix(':')?;
            let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kb * 1024)
        })
    };
    let active = field("Active(file)").ok_or("no Active(file)")?;
    let inactive = field("Inactive(file)").ok_or("no Inactive(file)")?;
    let slab = field("KReclaimable")
        .or_else(|| field("SReclaimable"))
        .ok_or("no KReclaimable or SReclaimable")?;
    Ok(active + inactive + slab)
}

/// `fail` over `fail`, `warn` over `warn`. "Over" is strict, except that a threshold of 0%
/// means "always" (so `disk_warn = "0%"` warns even on an empty file system).
fn level(v: f64, warn: f64, fail: f64) -> Status {
    if v > fail || fail == 0.0 {
        Status::Fail
    } else if v > warn || warn == 0.0 {
        Status::Warn
    } else {
        Status::Pass
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}
fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn default_paths() -> Vec<std::path::PathBuf> {
    vec!["/".into()]
}
fn default_disk_warn() -> Percent {
    Percent(80.0)
}
fn default_disk_fail() -> Percent {
    Percent(90.0)
}
fn default_memory_warn() -> Percent {
    Percent(85.0)
}
fn default_memory_fail() -> Percent {
    Percent(95.0)
}
fn default_load() -> f64 {
    2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_parses() {
        let m = "MemTotal:       16318420 kB\nMemFree:          512000 kB\nMemAvailable:    8159210 kB\n";
        assert_eq!(parse_meminfo(m), Ok((16318420 * 1024, 8159210 * 1024)));
        assert!(parse_meminfo("MemTotal: 1 kB\n").is_err());
    }

    #[test]
    fn node_meminfo_counts_file_pages_and_reclaimable_slab() {
        let node = "Node 0 MemTotal:       24683792 kB\nNode 0 MemFree:          221688 kB\n\
                    Node 0 Active(file):    6664860 kB\nNode 0 Inactive(file): 16124844 kB\n\
                    Node 0 KReclaimable:     780132 kB\nNode 0 SReclaimable:     780000 kB\n";
        assert_eq!(
            parse_node_meminfo(node),
            Ok((6664860 + 16124844 + 780132) * 1024)
        );
        let old =
            "Node 1 Active(file): 10 kB\nNode 1 Inactive(file): 20 kB\nNode 1 SReclaimable: 5 kB\n";
        assert_eq!(parse_node_meminfo(old), Ok(35 * 1024));
        assert!(parse_node_meminfo("Node 0 MemFree: 1 kB\n").is_err());
    }

    #[test]
    fn thresholds_are_strict_but_zero_means_always() {
        assert_eq!(level(80.0, 80.0, 90.0), Status::Pass);
        assert_eq!(level(80.1, 80.0, 90.0), Status::Warn);
        assert_eq!(level(95.0, 80.0, 90.0), Status::Fail);
        assert_eq!(level(0.0, 0.0, 100.0), Status::Warn);
    }
}
