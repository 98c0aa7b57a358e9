//! Measurements and the final report: per-client statistics, merged into a [`Report`] rendered as
//! a human table or JSON.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::client::Outcome;

/// Highest latency the histogram tracks (µs): one hour; longer values are clamped.
const MAX_LATENCY_US: u64 = 3_600_000_000;

fn histogram() -> Histogram<u64> {
    // 3 significant digits from 1 µs to an hour. The bounds are constants that hdrhistogram
    // accepts, so this cannot fail at run time.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant bounds")
}

/// One operation kind's share of a mixed run.
pub struct OpStats {
    /// Latency of its successful operations, in microseconds.
    pub latency: Histogram<u64>,
    /// Its successful operations.
    pub ok: u64,
    /// Its failed operations.
    pub failed: u64,
    /// Body bytes its successful operations moved.
    pub bytes: u64,
}

impl OpStats {
    fn new() -> Self {
        Self { latency: histogram(), ok: 0, failed: 0, bytes: 0 }
    }
}

/// One client's measurements; clients merge theirs at the end (no sharing in the hot path).
pub struct Stats {
    /// Latency of successful operations, in microseconds.
    pub latency: Histogram<u64>,
    /// Count per outcome name (`ok`, `siblings`, `http_5xx`, ...).
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Body bytes moved by successful operations (sent for puts, received for gets), including
    /// the measured share of warm-up operations that ran into the measured time.
    pub bytes: u64,
    /// Per operation kind (`get`, `put`), when the run mixes kinds; `None` otherwise.
    pub by_op: Option<BTreeMap<&'static str, OpStats>>,
}

impl Stats {
    /// Empty statistics; `split` also keeps them per operation kind.
    pub fn new(split: bool) -> Self {
        Self {
            latency: histogram(),
            outcomes: BTreeMap::new(),
            bytes: 0,
            by_op: split.then(BTreeMap::new),
        }
    }

    /// Records one finished operation of kind `op`.
    pub fn record(&mut self, op: &'static str, outcome: Outcome, latency_us: u64, bytes: u64) {
        *self.outcomes.entry(outcome.name()).or_default() += 1;
        let latency_us = latency_us.clamp(1, MAX_LATENCY_US);
        if outcome.is_success() {
            self.latency.saturating_record(latency_us);
            self.bytes += bytes;
        }
        if let Some(by_op) = &mut self.by_op {
            let s = by_op.entry(op).or_insert_with(OpStats::new);
            if outcome.is_success() {
                s.latency.saturating_record(latency_us);
                s.ok += 1;
                s.bytes += bytes;
            } else {
                s.failed += 1;
            }
        }
    }

    /// Adds body bytes of kind `op` moved during the measured time by an operation that is not
    /// counted (one started during warm-up).
    pub fn add_bytes(&mut self, op: &'static str, bytes: u64) {
        self.bytes += bytes;
        if let Some(by_op) = &mut self.by_op {
            by_op.entry(op).or_insert_with(OpStats::new).bytes += bytes;
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Stats) {
        // All histograms have the same bounds; a failed add could only mean a value out of
        // range, which `saturating_record` already prevents.
        let _ = self.latency.add(&other.latency);
        for (k, v) in &other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        self.bytes += other.bytes;
        if let (Some(mine), Some(theirs)) = (&mut self.by_op, &other.by_op) {
            for (op, s) in theirs {
                let m = mine.entry(op).or_insert_with(OpStats::new);
                let _ = m.latency.add(&s.latency);
                m.ok += s.ok;
                m.failed += s.failed;
                m.bytes += s.bytes;
            }
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Serialize, Debug, Default, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }

    fn line(&self) -> String {
        format!(
            "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
            self.p50, self.p90, self.p99, self.p999, self.max, self.mean
        )
    }
}

/// One operation kind's part of the report (mixed runs).
#[derive(Serialize, Debug)]
pub struct OpReport {
    /// Its successful operations.
    pub ops_ok: u64,
    /// Its failed operations.
    pub errors: u64,
    /// Its successful operations per second.
    pub ops_per_s: f64,
    /// Body megabytes (10⁶ bytes) per second its successful operations moved.
    pub mb_per_s: f64,
    /// Latency of its successful operations.
    pub latency_ms: Latency,
}

/// The run's result, as printed and as written to `--json`.
#[derive(Serialize, Debug)]
pub struct Report {
    /// The settings of the run (endpoints, workload, sizes, concurrency, bounds).
    pub settings: serde_json::Value,
    /// Successful operations measured (2xx and, for reads, 300 siblings).
    pub ops_ok: u64,
    /// Failed operations by kind (`not_found`, `http_4xx`, `http_5xx`, `timeout`, `connect`, `io`).
    pub errors: BTreeMap<String, u64>,
    /// Every outcome by kind, including `ok` and `siblings`.
    pub outcomes: BTreeMap<String, u64>,
    /// Measured time (after warm-up), in seconds.
    pub elapsed_s: f64,
    /// Successful operations per second.
    pub ops_per_s: f64,
    /// Body bytes moved by successful operations: sent for puts, received for gets (streamed
    /// bodies included, counted as they are generated or read).
    pub bytes: u64,
    /// Body megabytes (10⁶ bytes) per second moved by successful operations: `bytes` over
    /// `elapsed_s`.
    pub mb_per_s: f64,
    /// Latency of successful operations.
    pub latency_ms: Latency,
    /// Per operation kind (`get`, `put`), only for runs that mix kinds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_op: Option<BTreeMap<String, OpReport>>,
}

impl Report {
    /// Builds the report from merged statistics over `elapsed_s` seconds.
    pub fn new(settings: serde_json::Value, stats: &Stats, elapsed_s: f64) -> Self {
        let outcomes: BTreeMap<String, u64> =
            stats.outcomes.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let ok_names = [Outcome::Ok.name(), Outcome::Siblings.name()];
        let ops_ok = ok_names.iter().filter_map(|n| stats.outcomes.get(n)).sum();
        let errors = outcomes
            .iter()
            .filter(|(k, _)| !ok_names.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let secs = elapsed_s.max(1e-9);
        let by_op = stats.by_op.as_ref().map(|m| {
            m.iter()
                .map(|(op, s)| {
                    let r = OpReport {
                        ops_ok: s.ok,
                        errors: s.failed,
                        ops_per_s: s.ok as f64 / secs,
                        mb_per_s: s.bytes as f64 / 1e6 / secs,
                        latency_ms: Latency::of(&s.latency),
                    };
                    (op.to_string(), r)
                })
                .collect()
        });
        Report {
            settings,
            ops_ok,
            errors,
            outcomes,
            elapsed_s,
            ops_per_s: ops_ok as f64 / secs,
            bytes: stats.bytes,
            mb_per_s: stats.bytes as f64 / 1e6 / secs,
            latency_ms: Latency::of(&stats.latency),
            by_op,
        }
    }

    /// Operations attempted (every outcome).
    pub fn attempted(&self) -> u64 {
        self.outcomes.values().sum()
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{k:<14} {v}\n"));
        if let Some(settings) = self.settings.as_object() {
            for (k, v) in settings.iter().filter(|(_, v)| !v.is_null()) {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Array(a) => a
                        .iter()
                        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                        .collect::<Vec<_>>()
                        .join(","),
                    other => other.to_string(),
                };
                line(k, v);
            }
        }
        line("", String::new());
        line("elapsed", format!("{:.2} s", self.elapsed_s));
        line("ops ok", self.ops_ok.to_string());
        let siblings = self.outcomes.get("siblings").copied().unwrap_or(0);
        if siblings > 0 {
            line("  siblings", format!("{siblings} (reads answered 300)"));
        }
        let errors: u64 = self.errors.values().sum();
        let detail: Vec<String> = self.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        line(
            "errors",
            if errors == 0 { "0".into() } else { format!("{errors} ({})", detail.join(", ")) },
        );
        line("ops/s", format!("{:.1}", self.ops_per_s));
        line("MB/s", format!("{:.2}  ({} bytes of bodies)", self.mb_per_s, self.bytes));
        line("latency ms", self.latency_ms.line());
        for (op, r) in self.by_op.iter().flatten() {
            line(
                &format!("  {op}"),
                format!(
                    "ops ok {}  errors {}  ops/s {:.1}  MB/s {:.2}",
                    r.ops_ok, r.errors, r.ops_per_s, r.mb_per_s
                ),
            );
            line(&format!("  {op} ms"), r.latency_ms.line());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut a = Stats::new(false);
        for us in 1..=1000u64 {
            a.record("get", Outcome::Ok, us * 10, 100);
        }
        let mut b = Stats::new(false);
        b.record("get", Outcome::Siblings, 5_000, 0);
        b.record("get", Outcome::Http5xx, 99_999_999, 0);
        b.record("get", Outcome::Timeout, 0, 0);
        a.merge(&b);
        let settings =
            serde_json::json!({"workload": "get", "endpoints": ["http://a:1"], "ops": null});
        Report::new(settings, &a, 2.0)
    }

    #[test]
    fn report_counts_successes_errors_and_rates() {
        let r = sample();
        assert_eq!(r.ops_ok, 1001);
        assert_eq!(r.attempted(), 1003);
        assert_eq!(r.errors.get("http_5xx"), Some(&1));
        assert_eq!(r.errors.get("timeout"), Some(&1));
        assert!(!r.errors.contains_key("siblings"));
        assert_eq!(r.outcomes.get("siblings"), Some(&1));
        assert!((r.ops_per_s - 500.5).abs() < 1e-9);
        assert!((r.mb_per_s - 0.05).abs() < 1e-9);
        assert_eq!(r.bytes, 100_000);
        // Failed operations do not enter the latency histogram (the 5xx took 100 s).
        assert!((r.latency_ms.max - 10.0).abs() < 0.05, "max {}", r.latency_ms.max);
        assert!((r.latency_ms.p50 - 5.0).abs() < 0.05, "p50 {}", r.latency_ms.p50);
        assert!(r.latency_ms.p50 <= r.latency_ms.p90 && r.latency_ms.p99 <= r.latency_ms.p999);
    }

    #[test]
    fn report_json_has_the_documented_shape() {
        let v = serde_json::to_value(sample()).unwrap();
        for key in
            ["settings", "ops_ok", "errors", "outcomes", "elapsed_s", "ops_per_s", "mb_per_s"]
        {
            assert!(v.get(key).is_some(), "{key} missing");
        }
        for key in ["p50", "p90", "p99", "p999", "max", "mean"] {
            assert!(v["latency_ms"][key].is_f64(), "latency_ms.{key}");
        }
        assert!(v.get("by_op").is_none(), "by_op only for mixed runs");
    }

    #[test]
    fn mixed_runs_report_each_operation_kind() {
        let mut a = Stats::new(true);
        a.record("get", Outcome::Ok, 1_000, 10);
        a.record("get", Outcome::NotFound, 1_000, 0);
        let mut b = Stats::new(true);
        b.record("put", Outcome::Ok, 9_000, 10);
        b.record("get", Outcome::Ok, 3_000, 10);
        a.merge(&b);
        let r = Report::new(serde_json::json!({}), &a, 1.0);
        let by_op = r.by_op.as_ref().unwrap();
        assert_eq!((by_op["get"].ops_ok, by_op["get"].errors), (2, 1));
        assert_eq!((by_op["put"].ops_ok, by_op["put"].errors), (1, 0));
        assert!((by_op["put"].latency_ms.max - 9.0).abs() < 0.01);
        assert!((by_op["get"].latency_ms.max - 3.0).abs() < 0.01);
        let t = r.table();
        assert!(t.contains("  get          ops ok 2  errors 1  ops/s 2.0  MB/s 0.00\n"), "{t}");
        assert!(t.contains("  put ms       p50 9.0"), "{t}");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["by_op"]["put"]["ops_ok"], 1);
        assert_eq!(v["by_op"]["get"]["mb_per_s"], 20e-6);
        assert_eq!(v["bytes"], 30);
    }

    #[test]
    fn warm_up_bytes_count_for_throughput_but_not_as_operations() {
        // A 1 GB get finished in the measured time, another's second half overlapped it.
        let mut s = Stats::new(true);
        s.record("get", Outcome::Ok, 10_000_000, 1_000_000_000);
        s.add_bytes("get", 500_000_000);
        let r = Report::new(serde_json::json!({}), &s, 10.0);
        assert_eq!((r.ops_ok, r.bytes), (1, 1_500_000_000));
        assert!((r.mb_per_s - 150.0).abs() < 1e-9 && (r.ops_per_s - 0.1).abs() < 1e-12);
        let get = &r.by_op.as_ref().unwrap()["get"];
        assert!((get.mb_per_s - 150.0).abs() < 1e-9 && get.ops_ok == 1);
    }

    #[test]
    fn table_lists_settings_errors_and_latency() {
        let t = sample().table();
        assert!(t.contains("workload       get\n"), "{t}");
        assert!(t.contains("endpoints      http://a:1\n"), "{t}");
        assert!(!t.contains("ops            null"), "unset settings are left out: {t}");
        assert!(t.contains("errors         2 (http_5xx=1, timeout=1)\n"), "{t}");
        assert!(t.contains("ops/s          500.5\n"), "{t}");
        assert!(t.contains("MB/s           0.05  (100000 bytes of bodies)\n"), "{t}");
        assert!(t.contains("latency ms     p50 5.003"), "{t}");
        let empty = Report::new(serde_json::json!({}), &Stats::new(false), 1.0);
        assert!(empty.table().contains("errors         0\n"));
        assert_eq!(empty.latency_ms, Latency::default());
    }
}
