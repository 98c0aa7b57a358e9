//! `cairn-sim`: runs seeds of the whole-cluster simulation and reports failures with the command
//! that replays each (see the crate documentation and `docs/testing.md`).

use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use cairn_replication::node::Mutant;
use cairn_sim::{Params, Report, run};
use clap::Parser;

/// Seeds of a default run: sized so that a debug build takes about a minute on a 2-core
/// machine with both cores (`docs/testing.md`).
const DEFAULT_SEEDS: u64 = 140;
/// Long runs report progress every this many seeds (on stderr).
const PROGRESS_EVERY: u64 = 1000;

/// Deterministic whole-cluster simulation of Cairn.
#[derive(Parser, Debug)]
#[command(name = "cairn-sim")]
struct Args {
    /// Number of seeds to run (seeds FIRST..FIRST+N-1).
    #[arg(long, default_value_t = DEFAULT_SEEDS)]
    seeds: u64,
    /// Run (replay) this one seed only.
    #[arg(long)]
    seed: Option<u64>,
    /// First seed of a multi-seed run.
    #[arg(long, default_value_t = 1)]
    first: u64,
    /// Number of nodes.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Run with this planted bug (needs the `mutants` feature: scripts/simulate.sh).
    #[arg(long)]
    mutant: Option<String>,
    /// Print the mutants' names, one a line.
    #[arg(long)]
    list_mutants: bool,
    /// The control run: every request asks for last-writer-wins resolution, which loses
    /// concurrent writes by design; the run must fail (the checker sees a loss).
    #[arg(long)]
    lww_control: bool,
    /// Membership changes during the run: the last node starts outside the layout and is added,
    /// then another is decommissioned or force-removed, while faults run.
    #[arg(long)]
    membership: bool,
    /// One line per seed.
    #[arg(long)]
    verbose: bool,
    /// Seeds run in parallel (default: the machine's cores). Output does not depend on it.
    #[arg(long)]
    jobs: Option<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.list_mutants {
        for m in Mutant::ALL {
            println!("{}", m.name());
        }
        return ExitCode::SUCCESS;
    }
    let mutant = match args.mutant.as_deref() {
        None => None,
        Some(name) => match Mutant::from_name(name) {
            None => {
                let names: Vec<&str> = Mutant::ALL.iter().map(|m| m.name()).collect();
                eprintln!("unknown mutant {name:?}; mutants: {}", names.join(", "));
                return ExitCode::from(2);
            }
            Some(_) if !cfg!(feature = "mutants") => {
                eprintln!(
                    "this build has no mutants compiled in: build with `--features mutants` \
                     (scripts/simulate.sh does)"
                );
                return ExitCode::from(2);
            }
            Some(m) => Some(m),
        },
    };
    if !(2..=64).contains(&args.nodes) {
        eprintln!("--nodes must be 2..=64 (R = W = 2)");
        return ExitCode::from(2);
    }
    if args.membership && args.nodes < 4 {
        eprintln!("--membership needs --nodes 4 or more (3 founders, N = 3, and a spare)");
        return ExitCode::from(2);
    }
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.first..args.first.saturating_add(args.seeds)).collect(),
    };
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        .clamp(1, 64);
    let started = Instant::now();
    let reports = run_all(&seeds, args.nodes, mutant, args.lww_control, args.membership, jobs);
    let mut mutant_arg = mutant.map(|m| format!(" --mutant {}", m.name())).unwrap_or_default();
    if args.lww_control {
        mutant_arg.push_str(" --lww-control");
    }
    if args.membership {
        mutant_arg.push_str(" --membership");
    }
    let mut failures = 0;
    let (mut ok, mut failed, mut indet, mut events, mut sim_ms) = (0, 0, 0, 0, 0);
    for r in &reports {
        (ok, failed, indet) = (ok + r.ops.0, failed + r.ops.1, indet + r.ops.2);
        events += r.events;
        sim_ms += r.sim_ms;
        if args.verbose {
            let status = if r.failures.is_empty() { "ok" } else { "FAIL" };
            println!("seed {}: {status}: {}", r.seed, r.line);
        }
        if !r.failures.is_empty() {
            failures += 1;
            println!("FAILED seed {} ({} nodes, mutant {}):", r.seed, args.nodes, name(mutant));
            for f in &r.failures {
                println!("  - {f}");
            }
            if !r.line.is_empty() {
                println!("  world: {}", r.line);
            }
            println!(
                "  replay: scripts/simulate.sh --seed {} --nodes {}{mutant_arg}",
                r.seed, args.nodes
            );
        }
    }
    println!(
        "cairn-sim: {} nodes{}, mutant {}: {} writes and deletes ({ok} acknowledged, {failed} \
         failed, {indet} indeterminate), {events} events, {} simulated s; seeds: {}, failures: \
         {failures}",
        args.nodes,
        if args.membership { " with membership changes" } else { "" },
        name(mutant),
        ok + failed + indet,
        sim_ms / 1000,
        reports.len()
    );
    eprintln!("({:.1} s wall, {jobs} jobs)", started.elapsed().as_secs_f64());
    if failures > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn name(m: Option<Mutant>) -> &'static str {
    m.map(Mutant::name).unwrap_or("none")
}

/// Runs every seed on `jobs` threads; reports in seed order.
fn run_all(
    seeds: &[u64],
    nodes: usize,
    mutant: Option<Mutant>,
    lww: bool,
    membership: bool,
    jobs: usize,
) -> Vec<Report> {
    let next = AtomicU64::new(0);
    let (done, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let out = Mutex::new(Vec::with_capacity(seeds.len()));
    std::thread::scope(|s| {
        for _ in 0..jobs.min(seeds.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(&seed) = seeds.get(i) else { break };
                    let report = run(&Params { seed, nodes, mutant, lww, membership });
                    let bad = u64::from(!report.failures.is_empty());
                    let f = failed.fetch_add(bad, Ordering::Relaxed) + bad;
                    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if seeds.len() as u64 >= 2 * PROGRESS_EVERY && d % PROGRESS_EVERY == 0 {
                        // Long runs: progress on stderr (stdout stays the seed-ordered report).
                        eprintln!("... {d} of {} seeds run, {f} failed so far", seeds.len());
                    }
                    if let Ok(mut o) = out.lock() {
                        o.push(report);
                    }
                }
            });
        }
    });
    let mut reports = out.into_inner().unwrap_or_default();
    reports.sort_by_key(|r| r.seed);
    reports
}
