//! Medians, spreads and latency histograms.

use std::time::Duration;

use hdrhistogram::Histogram;

/// A latency histogram in nanoseconds (1 ns .. 60 s, 3 significant digits).
pub struct Hist(Histogram<u64>);

impl Hist {
    /// An empty histogram.
    pub fn new() -> Self {
        // The bounds are constants within hdrhistogram's documented limits.
        Self(Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid constant bounds"))
    }

    /// Records one latency (saturating at the top bound).
    pub fn record(&mut self, d: Duration) {
        self.0.saturating_record(d.as_nanos().clamp(1, u64::MAX as u128) as u64);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Hist) {
        // Same bounds by construction, so `add` cannot fail.
        let _ = self.0.add(&other.0);
    }
}

/// One timed run.
#[derive(Clone, Debug)]
pub struct Point {
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Payload megabytes (10^6) per second.
    pub mb_per_sec: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
}

impl Point {
    /// A point from a histogram of operation latencies over `secs` seconds, each moving `size` bytes.
    pub fn from_hist(h: &Hist, secs: f64, size: usize) -> Self {
        let ops = h.0.len() as f64 / secs.max(1e-9);
        Self {
            ops_per_sec: ops,
            mb_per_sec: ops * size as f64 / 1e6,
            p50: Duration::from_nanos(h.0.value_at_quantile(0.50)),
            p99: Duration::from_nanos(h.0.value_at_quantile(0.99)),
        }
    }
}

/// The repeats of one measurement point.
pub struct Summary {
    points: Vec<Point>,
}

impl Summary {
    /// Summarises the runs.
    pub fn of(points: Vec<Point>) -> Self {
        Self { points }
    }

    fn stat(&self, f: impl Fn(&Point) -> f64) -> (f64, f64, f64) {
        let mut v: Vec<f64> = self.points.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return (0.0, 0.0, 0.0);
        }
        let mid = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        (mid, v[0], v[v.len() - 1])
    }

    /// Median operations per second.
    pub fn median_ops(&self) -> f64 {
        self.stat(|p| p.ops_per_sec).0
    }

    /// "median [min..max]" of operations per second.
    pub fn ops_cell(&self) -> String {
        let (m, lo, hi) = self.stat(|p| p.ops_per_sec);
        format!("{} [{}..{}]", count(m), count(lo), count(hi))
    }

    /// "median [min..max]" of MB/s.
    pub fn mbps_cell(&self) -> String {
        let (m, lo, hi) = self.stat(|p| p.mb_per_sec);
        format!("{m:.1} [{lo:.1}..{hi:.1}]")
    }

    /// Median p50 latency with spread.
    pub fn p50_cell(&self) -> String {
        let (m, lo, hi) = self.stat(|p| p.p50.as_secs_f64());
        format!("{} [{}..{}]", dur(m), dur(lo), dur(hi))
    }

    /// Median p99 latency with spread.
    pub fn p99_cell(&self) -> String {
        let (m, lo, hi) = self.stat(|p| p.p99.as_secs_f64());
        format!("{} [{}..{}]", dur(m), dur(lo), dur(hi))
    }
}

fn count(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn dur(secs: f64) -> String {
    if secs >= 1e-3 { format!("{:.2}ms", secs * 1e3) } else { format!("{:.1}us", secs * 1e6) }
}
