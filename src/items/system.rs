//! `system`: disk use, memory available and load per core.
//!
//! The runbook's "Validate system resources (CPU, memory, disk)" and its ApplicationDown steps
//! (`free -h`, `df -h`) as one check: disk use per path from `statvfs` (the same numbers `df`
//! shows: used = total − free, percent of what non-root users can use), memory used =
//! 1 − MemAvailable/MemTotal from `/proc/meminfo` (MemAvailable, not MemFree: page cache is
//! reclaimable), and the 1- and 5-minute load averages of `/proc/loadavg` divided by the cores
//! this process may use (`available_parallelism`, which honours cgroup CPU limits).

use serde::Deserialize;
use serde_json::json;

use super::{ItemCtx, Outcome, Prepare, Status};
use crate::units::{Percent, human_bytes};

/// Options of `kind = "system"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct System {
    /// Mount points (or any path on them) whose disk use is checked. Default `["/"]`.
    #[serde(default = "default_paths")]
    pub paths: Vec<std::path::PathBuf>,
    /// Warn when a file system is used more than this. Default 80%.
    #[serde(default = "default_disk_warn")]
    pub disk_warn: Percent,
    /// Fail when a file system is used more than this. Default 90%.
    #[serde(default = "default_disk_fail")]
    pub disk_fail: Percent,
    /// Warn when more memory than this is in use (1 − MemAvailable/MemTotal). Default 85%.
    #[serde(default = "default_memory_warn")]
    pub memory_warn: Percent,
    /// Fail when more memory than this is in use. Default 95%.
    #[serde(default = "default_memory_fail")]
    pub memory_fail: Percent,
    /// Warn when the 5-minute load average per core is above this. Default 2.0.
    #[serde(default = "default_load")]
    pub load_warn_per_core: f64,
    /// Fail when the 5-minute load average per core is above this. Default: never.
    pub load_fail_per_core: Option<f64>,
}

impl System {
    pub fn prepare(&mut self, p: &mut Prepare) {
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

        let memory = match std::fs::read_to_string("/proc/meminfo")
            .map_err(|e| e.to_string())
            .and_then(|t| parse_meminfo(&t))
        {
            Ok((total, avail)) => {
                let used_percent = if total == 0 {
                    0.0
                } else {
                    100.0 * (1.0 - avail as f64 / total as f64)
                };
                let status = level(used_percent, self.memory_warn.0, self.memory_fail.0);
                raise(status, &mut worst);
                let line = format!(
                    "memory: {used_percent:.1}% used ({} available of {})",
                    human_bytes(avail),
                    human_bytes(total)
                );
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
                json!({"total": total, "available": avail, "used_percent": round1(used_percent), "status": status.as_str()})
            }
            Err(e) => {
                raise(Status::Warn, &mut worst);
                problems.push(format!("memory unknown: {e}"));
                json!({"error": e, "status": "warn"})
            }
        };

        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let load = match std::fs::read_to_string("/proc/loadavg")
            .map_err(|e| e.to_string())
            .and_then(|t| parse_loadavg(&t))
        {
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
        Outcome::new(worst, summary)
            .with_details(details)
            .with_data(json!({"disks": disks, "memory": memory, "load": load}))
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

fn parse_loadavg(text: &str) -> Result<(f64, f64, f64), String> {
    let mut it = text.split_whitespace().map(|s| s.parse::<f64>());
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b)), Some(Ok(c))) => Ok((a, b, c)),
        _ => Err(format!("cannot read /proc/loadavg: {:?}", text.trim())),
    }
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
    fn meminfo_and_loadavg_parse() {
        let m = "MemTotal:       16318420 kB\nMemFree:          512000 kB\nMemAvailable:    8159210 kB\n";
        assert_eq!(parse_meminfo(m), Ok((16318420 * 1024, 8159210 * 1024)));
        assert_eq!(
            parse_loadavg("0.52 1.10 0.90 2/345 12345\n"),
            Ok((0.52, 1.10, 0.90))
        );
        assert!(parse_meminfo("MemTotal: 1 kB\n").is_err());
    }

    #[test]
    fn thresholds_are_strict_but_zero_means_always() {
        assert_eq!(level(80.0, 80.0, 90.0), Status::Pass);
        assert_eq!(level(80.1, 80.0, 90.0), Status::Warn);
        assert_eq!(level(95.0, 80.0, 90.0), Status::Fail);
        assert_eq!(level(0.0, 0.0, 100.0), Status::Warn);
    }
}
