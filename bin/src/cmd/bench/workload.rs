//! What each benchmark operation does: which operation, which key, how many bytes.
//!
//! Pure functions and small generators, no IO: size parsing, the size distribution, the key
//! distributions (uniform and the YCSB zipfian of Gray et al.) and key naming.

use rand::Rng;

/// An object size: fixed, or drawn uniformly from an inclusive range.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SizeSpec {
    /// Every object has this many bytes.
    Fixed(u64),
    /// Each object's size is uniform in `lo..=hi`.
    Range(u64, u64),
}

impl SizeSpec {
    /// Parses `4KiB`, `1MiB`, `1GiB`, `512`, `4096` or a range `1KiB..64KiB`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once("..") {
            Some((lo, hi)) => {
                let lo = parse_size(lo)?;
                let hi = parse_size(hi)?;
                if lo > hi {
                    return Err(format!("size range {s}: the lower bound is above the upper"));
                }
                Ok(if lo == hi { Self::Fixed(lo) } else { Self::Range(lo, hi) })
            }
            None => parse_size(s).map(Self::Fixed),
        }
    }

    /// The largest size this spec can produce.
    pub fn max(&self) -> u64 {
        match *self {
            Self::Fixed(n) | Self::Range(_, n) => n,
        }
    }

    /// Draws one size.
    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        match *self {
            Self::Fixed(n) => n,
            Self::Range(lo, hi) => rng.random_range(lo..=hi),
        }
    }
}

impl std::fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed(n) => write!(f, "{n}"),
            Self::Range(lo, hi) => write!(f, "{lo}..{hi}"),
        }
    }
}

/// Largest object size accepted (64 GiB), against typos: bodies above 8 MiB are generated while
/// streamed, so the size costs no memory (Cairn's default `--max-object-size` is 5 GiB).
pub const MAX_SIZE: u64 = 64 << 30;

/// Parses a byte count: a number with an optional unit `B`, `K`/`KB`/`KiB`, `M`/`MB`/`MiB`,
/// `G`/`GB`/`GiB` (all binary: 1 KB = 1024 bytes), case-insensitive, optionally with a space.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| format!("size {s:?}: expected a number such as 4KiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("size {s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .filter(|b| *b <= MAX_SIZE)
        .ok_or_else(|| format!("size {s:?}: larger than the 64 GiB maximum"))
}

/// The YCSB zipfian generator (Gray et al., "Quickly generating billion-record synthetic
/// databases", SIGMOD 1994): item 0 is the most popular, item i has weight 1 / (i+1)^theta.
#[derive(Clone, Debug)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipfian {
    /// A generator over `0..items` (items ≥ 1) with skew `theta` in (0, 1).
    pub fn new(items: u64, theta: f64) -> Self {
        let items = items.max(1);
        let zetan = zeta(items, theta);
        let zeta2 = zeta(2.min(items), theta);
        let alpha = 1.0 / (1.0 - theta);
        let eta = (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Self { items, theta, alpha, zetan, eta }
    }

    /// Maps a uniform `u` in [0, 1) to an item.
    pub fn item(&self, u: f64) -> u64 {
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.items - 1);
        }
        let v = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        v.min(self.items - 1)
    }
}

/// Σ_{i=1..n} 1 / i^theta. O(n) once at start (10⁷ keys take well under a second).
fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

/// How keys of the key space are chosen for get, mixed and overwriting puts.
#[derive(Clone, Debug)]
pub enum KeyChooser {
    /// Every key equally likely.
    Uniform(u64),
    /// Zipfian, key 0 hottest.
    Zipfian(Zipfian),
}

impl KeyChooser {
    /// Draws a key index.
    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        match self {
            Self::Uniform(n) => rng.random_range(0..(*n).max(1)),
            Self::Zipfian(z) => z.item(rng.random::<f64>()),
        }
    }
}

/// The name of key `i` of the key space.
pub fn space_key(prefix: &str, i: u64) -> String {
    format!("{prefix}k{i:010}")
}

/// The name of the `n`th fresh key of this run (`run` distinguishes runs, so fresh keys never
/// collide with an earlier run's).
pub fn fresh_key(prefix: &str, run: &str, n: u64) -> String {
    format!("{prefix}u-{run}-{n:012}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn sizes_parse_with_binary_units_and_ranges() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1 mb"), Ok(1 << 20));
        assert!(parse_size("").is_err());
        assert!(parse_size("4XB").is_err());
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("600MiB"), Ok(600 << 20));
        assert_eq!(parse_size("5GB"), Ok(5 << 30));
        assert_eq!(parse_size("3 KB"), Ok(3 << 10));
        assert_eq!(parse_size("64GiB"), Ok(64 << 30));
        assert!(parse_size("65GiB").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert_eq!(SizeSpec::parse("1KiB..64KiB"), Ok(SizeSpec::Range(1024, 65536)));
        assert_eq!(SizeSpec::parse("4KiB"), Ok(SizeSpec::Fixed(4096)));
        assert_eq!(SizeSpec::parse("8..8"), Ok(SizeSpec::Fixed(8)));
        assert!(SizeSpec::parse("64KiB..1KiB").is_err());
        assert_eq!(SizeSpec::parse("1KiB..64KiB").unwrap().max(), 65536);
    }

    #[test]
    fn range_sizes_stay_within_bounds() {
        let spec = SizeSpec::Range(10, 20);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let sizes: Vec<u64> = (0..1000).map(|_| spec.sample(&mut rng)).collect();
        assert!(sizes.iter().all(|s| (10..=20).contains(s)));
        assert!(sizes.contains(&10) && sizes.contains(&20));
    }

    #[test]
    fn zipfian_key_zero_is_hottest_and_frequencies_decrease() {
        let z = Zipfian::new(1000, 0.99);
        let mut counts = vec![0u64; 1000];
        let draws = 200_000;
        // A deterministic sweep of u over [0, 1) stands in for random draws.
        for i in 0..draws {
            let u = (i as f64 + 0.5) / draws as f64;
            counts[z.item(u) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c <= counts[0]));
        assert!(counts[0] > counts[1] && counts[1] > counts[2] && counts[2] > counts[10]);
        assert!(counts[10] > counts[100] && counts[100] > counts[900]);
        // With theta 0.99 over 1000 items, item 0 takes about 1/zeta(1000) ≈ 13% of draws.
        let share = counts[0] as f64 / draws as f64;
        assert!((0.10..0.17).contains(&share), "share of key 0: {share}");
        // Every item stays in range, including u just below 1.
        assert!(z.item(0.999_999_9) < 1000);
        assert_eq!(z.item(0.0), 0);
    }

    #[test]
    fn zipfian_handles_tiny_key_spaces() {
        let z = Zipfian::new(1, 0.99);
        assert_eq!(z.item(0.5), 0);
        assert_eq!(z.item(0.99), 0);
        let z = Zipfian::new(2, 0.5);
        assert!(z.item(0.99) < 2);
    }

    #[test]
    fn key_names_are_distinct_and_sortable() {
        assert_eq!(space_key("b/", 42), "b/k0000000042");
        assert_ne!(fresh_key("b/", "r1", 1), fresh_key("b/", "r2", 1));
        assert!(space_key("", 9) < space_key("", 10));
    }
}
