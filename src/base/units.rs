//! Value types of the configuration that are written as strings: durations (`"90s"`, `"26h"`,
//! `"1h 30m"`), sizes (`"1MB"`, `"512KiB"`), percentages (`"80%"`) and dates (`2026-09-01`).
//! Each parses when the config loads, so a typo is a config error, never a 3 a.m. failure.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A duration written as a humantime string, e.g. `"90s"`, `"26h"`, `"90d"`, `"1h 30m"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn from_secs(secs: u64) -> Dur {
        Dur(Duration::from_secs(secs))
    }
    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Display for Dur {
    /// Whole days as `14d` (the way people write them in the config), else humantime's form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        if secs > 0 && secs.is_multiple_of(86400) && self.0.subsec_nanos() == 0 {
            write!(f, "{}d", secs / 86400)
        } else {
            write!(f, "{}", humantime::format_duration(self.0))
        }
    }
}

impl std::str::FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            format!("invalid duration {s:?}: {e} (examples: \"90s\", \"26h\", \"1h 30m\")")
        })
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A size in bytes written as a string (`"1MB"`, `"512KiB"`) or a plain integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size(n)),
            Raw::S(s) => parse_size::parse_size(s.trim()).map(Size).map_err(|e| {
                de::Error::custom(format!(
                    "invalid size {s:?}: {e} (examples: \"1MB\", \"512KiB\")"
                ))
            }),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&human_bytes(self.0))
    }
}

/// `1234567` → `"1.2M"`, the way `ls -lh` prints sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}B")
    } else if v < 10.0 {
        format!("{v:.1}{}", UNITS[i])
    } else {
        format!("{v:.0}{}", UNITS[i])
    }
}

/// A percentage written as `"80%"` (or a number, `80`). Stored as 0..=100.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Percent(pub f64);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            I(i64),
            F(f64),
            S(String),
        }
        let v = match Raw::deserialize(d)? {
            Raw::I(i) => i as f64,
            Raw::F(f) => f,
            Raw::S(s) => s
                .trim()
                .trim_end_matches('%')
                .trim()
                .parse::<f64>()
                .map_err(|_| {
                    de::Error::custom(format!("invalid percentage {s:?} (example: \"80%\")"))
                })?,
        };
        if !(0.0..=100.0).contains(&v) {
            return Err(de::Error::custom(format!(
                "percentage {v} is outside 0%..100%"
            )));
        }
        Ok(Percent(v))
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

/// A calendar date: a TOML date (`2026-09-01`) or the string `"2026-09-01"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date(pub chrono::NaiveDate);

impl<'de> Deserialize<'de> for Date {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            D(toml::value::Datetime),
        }
        let s = match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::D(dt) => dt.to_string(),
        };
        chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
            .map(Date)
            .map_err(|_| de::Error::custom(format!("invalid date {s:?} (expected YYYY-MM-DD)")))
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.format("%Y-%m-%d"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        d: Dur,
        s: Size,
        p: Percent,
        date: Date,
    }

    #[test]
    fn parses_the_documented_forms() {
        let t: T = toml::from_str("d = \"1h 30m\"\ns = \"512KiB\"\np = \"80%\"\ndate = 2026-09-01")
            .unwrap();
        assert_eq!(t.d.0, Duration::from_secs(5400));
        assert_eq!(t.s.0, 512 * 1024);
        assert_eq!(t.p.0, 80.0);
        assert_eq!(t.date.to_string(), "2026-09-01");
        let t: T = toml::from_str("d = \"90d\"\ns = 10\np = 5\ndate = \"2026-01-31\"").unwrap();
        assert_eq!(t.d.0, Duration::from_secs(90 * 86400));
        assert_eq!(t.s.0, 10);
    }

    #[test]
    fn rejects_typos_with_an_example() {
        let e = toml::from_str::<T>("d = \"10 minuts\"\ns = 1\np = 1\ndate = 2026-01-01")
            .err()
            .unwrap();
        assert!(e.to_string().contains("invalid duration"), "{e}");
        let e = toml::from_str::<T>("d = \"1s\"\ns = 1\np = \"120%\"\ndate = 2026-01-01")
            .err()
            .unwrap();
        assert!(e.to_string().contains("outside"), "{e}");
    }

    #[test]
    fn human_bytes_like_ls() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5K");
        assert_eq!(human_bytes(300 * 1024 * 1024), "300M");
    }
}
