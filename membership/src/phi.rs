//! The phi-accrual failure detector, one instance per remote member.
//!
//! FAILURE DETECTION
//! =================
//!
//! A binary detector ("down after 5 s of silence") forces one trade-off for every network and
//! every load. The phi-accrual detector (Hayashibara, Défago, Yared, Katayama: "The φ Accrual
//! Failure Detector", SRDS 2004; as used by Cassandra and Akka) instead outputs a *suspicion
//! level* that grows continuously while a member stays silent, scaled by how regular that
//! member's heartbeats have been:
//!
//! ```text
//! phi(now) = -log10( P(next heartbeat arrives later than now - last_arrival) )
//! ```
//!
//! where the probability comes from a normal distribution fitted to the last [`PhiConfig::window`]
//! inter-arrival times. `phi = 1` means about a 10 % chance that declaring the member dead is a
//! mistake, `phi = 8` (the default threshold) about 10⁻⁸.
//!
//! Three adjustments, all from Akka's refinement of the paper, make it usable in practice:
//!
//! - **Standard-deviation floor** ([`PhiConfig::min_std_dev`]). Perfectly steady heartbeats
//!   (on loopback the standard deviation is a few milliseconds) would make phi explode a few
//!   milliseconds after the expected arrival; the floor keeps it proportionate.
//! - **Acceptable pause** ([`PhiConfig::acceptable_pause`]) is added to the mean, so a GC pause,
//!   a busy CPU or a lost heartbeat does not count as evidence of death.
//! - **Bootstrap** with the configured heartbeat interval as the first sample, so a detector
//!   that has seen one heartbeat already has a sensible estimate.
//!
//! The normal CDF is computed with the logistic approximation used by Akka
//! (`1 / (1 + e^(-y (1.5976 + 0.070566 y²)))`, error below 10⁻⁴), which needs no `erf`.
//!
//! With the defaults (1 s heartbeats, 1 s acceptable pause, 200 ms floor, threshold 8) a member
//! that stops is declared down about `1 + 1 + 5.2 × 0.2 ≈ 3.0 s` after its last heartbeat; the
//! measured figures are in `docs/membership.md`.
//!
//! INVARIANT: phi is a non-decreasing function of `now` between two heartbeats, and it is 0
//! before the first heartbeat. It is never NaN; it is capped at [`PHI_MAX`].
//!
//! The detector is plain synchronous code: the caller passes `now` in, so tests drive it with a
//! fake clock and never sleep.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Upper bound on the reported phi (the exact value is infinite once the probability underflows;
/// a finite cap keeps it printable as JSON).
pub const PHI_MAX: f64 = 1000.0;

/// Default number of inter-arrival samples kept per member (100 s of history at 1 s heartbeats).
pub const DEFAULT_WINDOW: usize = 100;

/// Default floor on the standard deviation of inter-arrival times.
pub const DEFAULT_MIN_STD_DEV: Duration = Duration::from_millis(200);

/// Default pause tolerated on top of the mean inter-arrival time.
pub const DEFAULT_ACCEPTABLE_PAUSE: Duration = Duration::from_millis(1000);

/// Tuning of a [`PhiAccrual`] detector.
#[derive(Debug, Clone, PartialEq)]
pub struct PhiConfig {
    /// Expected heartbeat interval: the bootstrap sample before real samples exist.
    pub expected_interval: Duration,
    /// Number of inter-arrival samples kept (oldest dropped first). At least 1.
    pub window: usize,
    /// Floor on the standard deviation used in the phi computation.
    pub min_std_dev: Duration,
    /// Pause added to the mean: silence shorter than `mean + acceptable_pause` keeps phi low.
    pub acceptable_pause: Duration,
}

impl PhiConfig {
    /// Defaults for heartbeats sent every `expected_interval`.
    pub fn new(expected_interval: Duration) -> Self {
        PhiConfig {
            expected_interval,
            window: DEFAULT_WINDOW,
            min_std_dev: DEFAULT_MIN_STD_DEV,
            acceptable_pause: DEFAULT_ACCEPTABLE_PAUSE,
        }
    }
}

/// A phi-accrual detector over the heartbeat arrivals of one member.
///
/// Invariants:
/// - `sum` and `sum_sq` are the sum and sum of squares of `intervals` (milliseconds);
/// - `intervals.len() <= config.window` and, once a heartbeat was seen, `>= 1`.
#[derive(Debug, Clone)]
pub struct PhiAccrual {
    config: PhiConfig,
    intervals: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    last: Option<Instant>,
}

impl PhiAccrual {
    /// A detector that has seen no heartbeat yet (phi is 0 until it does).
    pub fn new(config: PhiConfig) -> Self {
        let mut config = config;
        config.window = config.window.max(1);
        PhiAccrual { config, intervals: VecDeque::new(), sum: 0.0, sum_sq: 0.0, last: None }
    }

    /// Records a heartbeat arriving at `now`. An arrival earlier than the previous one (a clock
    /// the caller did not keep monotonic) is treated as a zero interval.
    pub fn heartbeat(&mut self, now: Instant) {
        match self.last {
            None => self.push(ms(self.config.expected_interval)),
            Some(last) => self.push(ms(now.saturating_duration_since(last))),
        }
        self.last = Some(now);
    }

    /// Records liveness at `now` without taking the interval since the previous arrival as a
    /// sample (used after an out-of-rhythm heartbeat, whose offset to the next regular one is
    /// arbitrary). Before the first heartbeat this is the same as [`heartbeat`](Self::heartbeat).
    pub fn rebase(&mut self, now: Instant) {
        if self.last.is_none() {
            self.heartbeat(now);
        } else {
            self.last = Some(now);
        }
    }

    /// Forgets the history (used when a member that was down comes back: the silence while it
    /// was down is not a sample of its heartbeat rhythm).
    pub fn reset(&mut self) {
        self.intervals.clear();
        self.sum = 0.0;
        self.sum_sq = 0.0;
        self.last = None;
    }

    /// Time of the last recorded heartbeat.
    pub fn last_heartbeat(&self) -> Option<Instant> {
        self.last
    }

    /// Mean of the recorded inter-arrival times (the bootstrap interval before real samples).
    pub fn mean(&self) -> Duration {
        if self.intervals.is_empty() {
            return self.config.expected_interval;
        }
        Duration::from_secs_f64(self.sum / self.intervals.len() as f64 / 1000.0)
    }

    /// The suspicion level at `now` (see the module documentation). 0 before the first heartbeat.
    pub fn phi(&self, now: Instant) -> f64 {
        let Some(last) = self.last else { return 0.0 };
        let n = self.intervals.len().max(1) as f64;
        let mean = self.sum / n;
        let variance = (self.sum_sq / n - mean * mean).max(0.0);
        let std_dev = variance.sqrt().max(ms(self.config.min_std_dev)).max(1.0);
        let elapsed = ms(now.saturating_duration_since(last));
        phi_of(elapsed, mean + ms(self.config.acceptable_pause), std_dev)
    }

    fn push(&mut self, interval_ms: f64) {
        if self.intervals.len() == self.config.window
            && let Some(old) = self.intervals.pop_front()
        {
            self.sum -= old;
            self.sum_sq -= old * old;
        }
        self.intervals.push_back(interval_ms);
        self.sum += interval_ms;
        self.sum_sq += interval_ms * interval_ms;
    }
}

/// `-log10(P(X > elapsed))` for `X ~ Normal(mean, std_dev)`, logistic approximation, capped.
fn phi_of(elapsed: f64, mean: f64, std_dev: f64) -> f64 {
    let y = (elapsed - mean) / std_dev;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let p_later = if elapsed > mean { e / (1.0 + e) } else { 1.0 - 1.0 / (1.0 + e) };
    let phi = -p_later.log10();
    if phi.is_nan() { PHI_MAX } else { phi.clamp(0.0, PHI_MAX) }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn detector() -> PhiAccrual {
        PhiAccrual::new(PhiConfig::new(SECOND))
    }

    /// Feeds `n` heartbeats with the given gaps (cycled) starting at `t0`; returns the last arrival.
    fn feed(d: &mut PhiAccrual, t0: Instant, gaps_ms: &[u64], n: usize) -> Instant {
        let mut t = t0;
        d.heartbeat(t);
        for i in 0..n {
            t += Duration::from_millis(gaps_ms[i % gaps_ms.len()]);
            d.heartbeat(t);
        }
        t
    }

    /// First time (10 ms resolution) after `last` at which phi reaches `threshold`.
    fn time_to(d: &PhiAccrual, last: Instant, threshold: f64) -> Duration {
        (0..100_000u64)
            .map(|i| Duration::from_millis(i * 10))
            .find(|&dt| d.phi(last + dt) >= threshold)
            .unwrap_or(Duration::MAX)
    }

    #[test]
    fn zero_before_first_heartbeat() {
        let d = detector();
        assert_eq!(d.phi(Instant::now()), 0.0);
        assert!(d.last_heartbeat().is_none());
    }

    #[test]
    fn steady_heartbeats_keep_phi_low() {
        let mut d = detector();
        let t0 = Instant::now();
        let last = feed(&mut d, t0, &[1000], 50);
        // Right on schedule and even a full interval late, phi stays far below the threshold.
        assert!(d.phi(last + SECOND) < 1.0, "phi {}", d.phi(last + SECOND));
        assert!(d.phi(last + 2 * SECOND) < 8.0, "phi {}", d.phi(last + 2 * SECOND));
    }

    #[test]
    fn silence_crosses_threshold_after_expected_time() {
        let mut d = detector();
        let t0 = Instant::now();
        let last = feed(&mut d, t0, &[1000], 50);
        let t = time_to(&d, last, 8.0);
        // mean 1 s + pause 1 s + ~5.2 × 200 ms floor ≈ 3.04 s.
        assert!(t >= Duration::from_millis(2900) && t <= Duration::from_millis(3200), "{t:?}");
        // And it keeps growing: monotonic in time.
        let mut prev = 0.0;
        for i in 0..100 {
            let phi = d.phi(last + Duration::from_millis(i * 100));
            assert!(phi >= prev, "phi decreased at step {i}");
            prev = phi;
        }
        assert!(prev >= 8.0);
    }

    #[test]
    fn jittery_heartbeats_do_not_cross_threshold() {
        let mut d = detector();
        let t0 = Instant::now();
        // Heartbeats that arrive anywhere between 0.4 s and 1.9 s apart (heavy scheduling jitter).
        let gaps = [400, 1900, 700, 1500, 1000, 1800, 500, 1200];
        let mut t = t0;
        d.heartbeat(t);
        let mut worst: f64 = 0.0;
        for i in 0..200 {
            let gap = Duration::from_millis(gaps[i % gaps.len()]);
            // Phi just before the next (late) heartbeat arrives is the worst case.
            worst = worst.max(d.phi(t + gap));
            t += gap;
            d.heartbeat(t);
        }
        assert!(worst < 8.0, "jitter produced phi {worst}");
        // The wider distribution also widens tolerance: detection is slower than for steady beats.
        assert!(time_to(&d, t, 8.0) > Duration::from_millis(3200));
    }

    #[test]
    fn bootstrap_uses_expected_interval() {
        let mut d = detector();
        let t0 = Instant::now();
        d.heartbeat(t0);
        assert_eq!(d.mean(), SECOND);
        // After one heartbeat only, a stop is still detected within a few seconds.
        let t = time_to(&d, t0, 8.0);
        assert!(t > Duration::from_secs(2) && t < Duration::from_secs(4), "{t:?}");
    }

    #[test]
    fn window_forgets_old_samples() {
        let mut d = PhiAccrual::new(PhiConfig { window: 10, ..PhiConfig::new(SECOND) });
        let t0 = Instant::now();
        let t = feed(&mut d, t0, &[5000], 20);
        let t = feed(&mut d, t + SECOND, &[1000], 20);
        let mean = d.mean();
        assert!(
            mean >= Duration::from_millis(999) && mean <= Duration::from_millis(1001),
            "{mean:?}"
        );
        assert!(d.phi(t + Duration::from_secs(5)) >= 8.0);
    }

    #[test]
    fn rebase_takes_no_sample() {
        let mut d = detector();
        let t0 = Instant::now();
        let last = feed(&mut d, t0, &[1000], 10);
        d.rebase(last + Duration::from_millis(30));
        assert_eq!(d.mean(), SECOND);
        assert_eq!(d.last_heartbeat(), Some(last + Duration::from_millis(30)));
    }

    #[test]
    fn reset_forgets_everything() {
        let mut d = detector();
        let t0 = Instant::now();
        let last = feed(&mut d, t0, &[1000], 5);
        d.reset();
        assert_eq!(d.phi(last + Duration::from_secs(60)), 0.0);
    }

    #[test]
    fn phi_is_finite_and_capped() {
        let mut d = detector();
        let t0 = Instant::now();
        let last = feed(&mut d, t0, &[1000], 5);
        let phi = d.phi(last + Duration::from_secs(3600));
        assert!(phi.is_finite() && (8.0..=PHI_MAX).contains(&phi));
        // A caller clock going backwards gives phi 0, not NaN.
        assert_eq!(d.phi(t0), d.phi(t0).clamp(0.0, 1.0));
    }

    proptest::proptest! {
        #[test]
        fn phi_monotonic_between_heartbeats(gaps in proptest::collection::vec(1u64..5000, 1..50),
                                            a in 0u64..20_000, b in 0u64..20_000) {
            let mut d = detector();
            let t0 = Instant::now();
            let last = feed(&mut d, t0, &gaps, gaps.len());
            let (lo, hi) = (a.min(b), a.max(b));
            let p_lo = d.phi(last + Duration::from_millis(lo));
            let p_hi = d.phi(last + Duration::from_millis(hi));
            proptest::prop_assert!(p_lo.is_finite() && p_hi.is_finite());
            proptest::prop_assert!(p_lo <= p_hi, "phi({lo})={p_lo} > phi({hi})={p_hi}");
        }
    }
}
