//! Measurement and results: HDR latency histograms shared by many client tasks, per-second
//! timelines, and the JSON report every scenario writes.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;

/// Highest latency a histogram tracks (values above are clamped): 10 minutes in µs.
const MAX_LATENCY_US: u64 = 600_000_000;

/// A latency recorder in microseconds, sharded so that thousands of client tasks on several
/// worker threads rarely contend on one lock.
#[derive(Debug)]
pub struct LatencyRecorder {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl LatencyRecorder {
    /// A recorder with `shards` histograms (3 significant figures, 1 µs .. 10 min).
    pub fn new(shards: usize) -> Result<LatencyRecorder> {
        let shards = (0..shards.max(1))
            .map(|_| new_histogram().map(Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        Ok(LatencyRecorder { shards })
    }

    /// Records one latency (clamped into the tracked range) in the shard of `client`.
    pub fn record(&self, client: usize, micros: u64) {
        let n = self.shards.len();
        if let Some(shard) = self.shards.get(client % n.max(1)) {
            shard
                .lock()
                .saturating_record(micros.clamp(1, MAX_LATENCY_US));
        }
    }

    /// All shards merged.
    pub fn merged(&self) -> Result<Histogram<u64>> {
        let mut all = new_histogram()?;
        for shard in &self.shards {
            all.add(&*shard.lock())
                .context("merging latency histograms")?;
        }
        Ok(all)
    }
}

fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).context("creating histogram")
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Smallest sample.
    pub min_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summarizes a histogram of microseconds.
    pub fn from_micros(h: &Histogram<u64>) -> LatencySummary {
        let ms = |us: u64| round3(us as f64 / 1000.0);
        let empty = h.is_empty();
        let q = |quantile: f64| {
            if empty {
                0.0
            } else {
                ms(h.value_at_quantile(quantile))
            }
        };
        LatencySummary {
            count: h.len(),
            min_ms: if empty { 0.0 } else { ms(h.min()) },
            mean_ms: if empty {
                0.0
            } else {
                round3(h.mean() / 1000.0)
            },
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: if empty { 0.0 } else { ms(h.max()) },
        }
    }
}

/// Rounds to three decimals (for readable JSON).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Event counts per second since a start instant (the last bucket absorbs overflow).
#[derive(Debug)]
pub struct Timeline {
    start: Instant,
    buckets: Vec<AtomicU64>,
}

impl Timeline {
    /// A timeline of `seconds` buckets starting at `start`.
    pub fn new(start: Instant, seconds: usize) -> Timeline {
        Timeline {
            start,
            buckets: (0..seconds.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Counts `n` events at `at`.
    pub fn add(&self, at: Instant, n: u64) {
        let second = at.saturating_duration_since(self.start).as_secs();
        let last = self.buckets.len().saturating_sub(1);
        let index = usize::try_from(second).unwrap_or(last).min(last);
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The counts, with trailing empty seconds removed.
    pub fn counts(&self) -> Vec<u64> {
        let mut counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        while counts.last() == Some(&0) {
            counts.pop();
        }
        counts
    }
}

/// Microseconds since the Unix epoch on the wall clock.
pub fn unix_micros(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// Parses a Realtime `commit_timestamp` (`YYYY-MM-DDTHH:MM:SS[.fff...]Z`, UTC) into
/// microseconds since the Unix epoch.
pub fn parse_commit_timestamp(text: &str) -> Option<i64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date_parts = date.splitn(3, '-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: i64 = date_parts.next()?.parse().ok()?;
    let day: i64 = date_parts.next()?.parse().ok()?;
    let (hms, fraction) = match time.split_once('.') {
        Some((hms, fraction)) => (hms, fraction),
        None => (time, ""),
    };
    let mut hms_parts = hms.splitn(3, ':');
    let hour: i64 = hms_parts.next()?.parse().ok()?;
    let minute: i64 = hms_parts.next()?.parse().ok()?;
    let second: i64 = hms_parts.next()?.parse().ok()?;
    let mut micros: i64 = 0;
    let mut scale = 100_000;
    for digit in fraction.bytes().take(6) {
        if !digit.is_ascii_digit() {
            return None;
        }
        micros += i64::from(digit - b'0') * scale;
        scale /= 10;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute) * 60_000_000 + second * 1_000_000 + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Facts about the machine the run happened on.
pub fn machine_info() -> Value {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_owned());
    let mem_total_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        });
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu_model": cpu_model,
        "kernel": kernel,
        "mem_total_kb": mem_total_kb,
    })
}

/// Writes `report` as pretty JSON to `path` (parent directories created) or, when `path` is
/// `-`, to stdout.
pub fn write_json(path: &Path, report: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    if path.as_os_str() == "-" {
        println!("{text}");
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commit_timestamps() {
        assert_eq!(parse_commit_timestamp("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_commit_timestamp("2024-02-29T12:34:56.789Z"),
            Some(1_709_210_096_789_000)
        );
        assert_eq!(
            parse_commit_timestamp("2000-01-01T00:00:01Z"),
            Some(946_684_801_000_000)
        );
        assert_eq!(parse_commit_timestamp("2000-01-01 00:00:01"), None);
    }

    #[test]
    fn summarizes_latencies() -> Result<()> {
        let rec = LatencyRecorder::new(4)?;
        for i in 1..=1000u64 {
            rec.record(usize::try_from(i).unwrap_or(0), i * 1000);
        }
        let s = LatencySummary::from_micros(&rec.merged()?);
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 500.0).abs() < 1.0);
        assert!((s.p99_ms - 990.0).abs() < 1.0);
        assert!((s.max_ms - 1000.0).abs() < 1.0);
        Ok(())
    }

    #[test]
    fn timeline_buckets_by_second() {
        let start = Instant::now();
        let t = Timeline::new(start, 3);
        t.add(start, 2);
        t.add(start + std::time::Duration::from_millis(1500), 1);
        t.add(start + std::time::Duration::from_secs(99), 1);
        assert_eq!(t.counts(), vec![2, 1, 1]);
    }
}
