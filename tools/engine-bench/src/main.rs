//! Engine benchmark: Cairn's log engine measured in one run beside the disk's own limits and beside fjall.
//!
//! Every figure is the median of `--repeats` runs, with the spread (min..max) next to it, because the
//! machines this runs on are shared and noisy. Run it through `scripts/bench-engine.sh`, which builds in
//! release mode with the fjall baseline and rewrites the engine section of `docs/benchmarks.md`.
//!
//! # Layout
//! - `main.rs`: command line, the measurement plan, the report.
//! - `disk.rs`: the disk's ceilings (fdatasync rate of small appends, sequential write bandwidth).
//! - `store.rs`: the `Store` trait and its Cairn and fjall implementations.
//! - `stats.rs`: medians, spreads and latency histograms.

mod disk;
mod stats;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use rand::Rng;

use stats::{Point, Summary};
use store::{Durability, Store, StoreKind};

/// Benchmarks Cairn's engine against the disk's ceilings and fjall, side by side in one run.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Directory for the benchmark's files (a fresh temporary directory inside it per measurement).
    /// Use a directory on the disk you want to measure.
    #[arg(long, default_value = "target/bench-tmp")]
    dir: PathBuf,
    /// Runs per measurement point; the report shows the median and the spread.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Duration of each timed run, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    duration_ms: u64,
    /// Number of keys for the startup (recovery) measurement.
    #[arg(long, default_value_t = 1_000_000)]
    startup_keys: usize,
    /// Number of keys preloaded for the point-get measurement.
    #[arg(long, default_value_t = 100_000)]
    get_keys: usize,
    /// Write the report as Markdown to this file (the table is always printed to stdout).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Run only these sections (comma-separated: disk, put-always, put-never, get, startup);
    /// all of them by default. For profiling one workload.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also measure fjall (needs the `fjall` feature).
    #[arg(long, default_value_t = cfg!(feature = "fjall"))]
    fjall: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let mut report = Report::default();
    let dur = Duration::from_millis(args.duration_ms);
    let kinds: Vec<StoreKind> =
        if args.fjall { vec![StoreKind::Cairn, StoreKind::Fjall] } else { vec![StoreKind::Cairn] };
    if args.fjall && !cfg!(feature = "fjall") {
        anyhow::bail!("--fjall needs the binary built with `--features fjall`");
    }

    let want = |section: &str| args.only.is_empty() || args.only.iter().any(|o| o == section);
    eprintln!("== disk ceilings");
    let fsync = repeat(args.repeats, || disk::fdatasync_rate(&args.dir, 1024, dur))?;
    if want("disk") {
        report.row("disk", "fdatasync of 1 KiB appends, 1 writer", &fsync, None);
        let seq = repeat(args.repeats, || disk::sequential_write(&args.dir, 256 << 20))?;
        report.row("disk", "sequential write 256 MiB + fdatasync", &seq, None);
    }

    let mut cairn_always = Vec::new();
    for &writers in &[1usize, 8, 64] {
        if !want("put-always") {
            break;
        }
        eprintln!("== puts, sync always, {writers} writers, 1 KiB");
        let mut by_kind = Vec::new();
        for &kind in &kinds {
            let s = repeat(args.repeats, || {
                timed_puts(&args.dir, kind, Durability::Always, writers, 1024, dur)
            })?;
            by_kind.push((kind, s));
        }
        cairn_always.push((writers, by_kind[0].1.median_ops()));
        let noun = if writers == 1 { "writer" } else { "writers" };
        report.compare(&format!("put 1 KiB, sync always, {writers} {noun}"), &by_kind);
    }
    if let (Some(&(_, one)), Some(&(many, top))) = (cairn_always.first(), cairn_always.last()) {
        report.notes.push(format!(
            "Group commit: Cairn with {many} writers reaches {:.1}x its single-writer put rate \
             (target: at least 20x); the disk's own fdatasync rate is {}/s.",
            top / one.max(f64::MIN_POSITIVE),
            fsync.ops_cell()
        ));
    }
    for &(size, label) in &[(1024usize, "1 KiB"), (1 << 20, "1 MiB")] {
        if !want("put-never") {
            break;
        }
        eprintln!("== puts, sync never, {label}");
        let mut by_kind = Vec::new();
        for &kind in &kinds {
            let s = repeat(args.repeats, || {
                timed_puts(&args.dir, kind, Durability::Never, 1, size, dur)
            })?;
            by_kind.push((kind, s));
        }
        report.compare(&format!("put {label}, sync never, 1 writer"), &by_kind);
    }
    if want("get") {
        eprintln!("== point gets of cached keys, 1 KiB, 1 thread");
        let mut by_kind = Vec::new();
        for &kind in &kinds {
            let s = repeat(args.repeats, || timed_gets(&args.dir, kind, args.get_keys, 1024, dur))?;
            by_kind.push((kind, s));
        }
        report.compare("get 1 KiB (cached), 1 thread", &by_kind);
    }
    if want("startup") {
        eprintln!("== startup with {} keys", args.startup_keys);
        report.startup = Some(store::startup(&args.dir, args.startup_keys)?);
    }

    report.print(&args)?;
    Ok(())
}

/// Runs `f` `n` times and summarises the points.
fn repeat(n: usize, mut f: impl FnMut() -> Result<Point>) -> Result<Summary> {
    let mut points = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        points.push(f()?);
    }
    Ok(Summary::of(points))
}

/// `writers` threads put values of `size` bytes under distinct keys for `dur`.
fn timed_puts(
    root: &Path,
    kind: StoreKind,
    durability: Durability,
    writers: usize,
    size: usize,
    dur: Duration,
) -> Result<Point> {
    let dir = tempfile::tempdir_in(root)?;
    let store: Arc<dyn Store> = store::open(kind, dir.path(), durability)?;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut handles = Vec::new();
    for w in 0..writers {
        let store = Arc::clone(&store);
        let stop = Arc::clone(&stop);
        handles.push(std::thread::spawn(move || -> Result<stats::Hist> {
            let mut hist = stats::Hist::new();
            let mut value = vec![0u8; size];
            rand::rng().fill(&mut value[..]);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{w:03}/k{i:012}");
                let t = Instant::now();
                store.put(key.as_bytes(), &value)?;
                hist.record(t.elapsed());
                i += 1;
            }
            Ok(hist)
        }));
    }
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    let mut hist = stats::Hist::new();
    for h in handles {
        let part = h.join().map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
        hist.merge(&part);
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(Point::from_hist(&hist, secs, size))
}

/// Preloads `keys` values of `size` bytes, then one thread gets random keys for `dur`.
fn timed_gets(
    root: &Path,
    kind: StoreKind,
    keys: usize,
    size: usize,
    dur: Duration,
) -> Result<Point> {
    let dir = tempfile::tempdir_in(root)?;
    let store = store::open(kind, dir.path(), Durability::Never)?;
    let mut value = vec![0u8; size];
    rand::rng().fill(&mut value[..]);
    for i in 0..keys {
        store.put(format!("k{i:012}").as_bytes(), &value)?;
    }
    store.flush()?;
    // Warm the page cache and the store's own caches.
    for i in 0..keys {
        store.get(format!("k{i:012}").as_bytes())?;
    }
    let mut rng = rand::rng();
    let mut hist = stats::Hist::new();
    let started = Instant::now();
    let mut n = 0u64;
    let mut key = String::with_capacity(16);
    while started.elapsed() < dur {
        // Time batches of 64 gets: a clock read per get would dominate a sub-microsecond operation.
        let t = Instant::now();
        for _ in 0..64 {
            key.clear();
            use std::fmt::Write as _;
            let _ = write!(key, "k{:012}", rng.random_range(0..keys));
            let v = store.get(key.as_bytes())?;
            if v != Some(size) {
                anyhow::bail!("get returned {v:?} bytes, expected {size}");
            }
        }
        hist.record(t.elapsed() / 64);
        n += 64;
    }
    let secs = started.elapsed().as_secs_f64();
    let mut p = Point::from_hist(&hist, secs, size);
    p.ops_per_sec = n as f64 / secs;
    p.mb_per_sec = p.ops_per_sec * size as f64 / 1e6;
    Ok(p)
}

/// The collected rows, printed as a table.
#[derive(Default)]
struct Report {
    rows: Vec<String>,
    ratios: Vec<String>,
    notes: Vec<String>,
    startup: Option<store::StartupReport>,
}

impl Report {
    fn row(&mut self, engine: &str, what: &str, s: &Summary, note: Option<&str>) {
        self.rows.push(format!(
            "| {what} | {engine} | {} | {} | {} | {} | {} |",
            s.ops_cell(),
            s.mbps_cell(),
            s.p50_cell(),
            s.p99_cell(),
            note.unwrap_or("")
        ));
    }

    fn compare(&mut self, what: &str, by_kind: &[(StoreKind, Summary)]) {
        for (kind, s) in by_kind {
            self.row(kind.name(), what, s, None);
        }
        if let [(_, cairn), (_, fjall)] = by_kind {
            self.ratios.push(format!(
                "| {what} | {:.2}x |",
                cairn.median_ops() / fjall.median_ops().max(f64::MIN_POSITIVE)
            ));
        }
    }

    fn print(&self, args: &Args) -> Result<()> {
        let mut out = String::new();
        out.push_str(&format!(
            "Each cell: median of {} runs of {} ms, spread min..max in brackets.\n\n",
            args.repeats, args.duration_ms
        ));
        out.push_str("| workload | engine | ops/s | MB/s | p50 | p99 | note |\n");
        out.push_str("|---|---|---|---|---|---|---|\n");
        for r in &self.rows {
            out.push_str(r);
            out.push('\n');
        }
        if !self.ratios.is_empty() {
            out.push_str("\n| workload | Cairn / fjall (ops/s, medians) |\n|---|---|\n");
            for r in &self.ratios {
                out.push_str(r);
                out.push('\n');
            }
        }
        for n in &self.notes {
            out.push('\n');
            out.push_str(n);
            out.push('\n');
        }
        if let Some(s) = &self.startup {
            out.push_str(&format!(
                "\nStartup with {} keys ({} on disk): {:.0} ms with hint files, {:.0} ms without \
                 (segment scan); keydir {:.1} bytes per key beyond the key bytes ({:.1} with them).\n",
                s.keys,
                s.disk_bytes_human(),
                s.with_hints_ms,
                s.without_hints_ms,
                s.keydir_overhead_per_key,
                s.keydir_bytes_per_key
            ));
        }
        print!("{out}");
        if let Some(path) = &args.markdown {
            std::fs::write(path, &out).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}
