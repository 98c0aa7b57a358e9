//! `cairn compact`: offline compaction of a data directory.
//!
//! Opens the directory through the engine, which takes its exclusive lock (so this refuses to run
//! against a live node and names the holder), rewrites the live records of the sealed segments, and
//! prints a summary. A crash or Ctrl-C at any point loses nothing: the engine switches to the new
//! segments atomically.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use cairn_engine::{Engine, Options, SyncPolicy};

use crate::progress::{Progress, human_bytes};

/// Arguments of `cairn compact`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The node's data directory.
    #[arg(long, env = "CAIRN_DATA_DIR")]
    data_dir: PathBuf,
    /// Engine-level delete records (tombstones) older than this many seconds may be dropped.
    #[arg(long, default_value_t = 86_400)]
    tombstone_grace_secs: u64,
}

/// Runs the command.
pub fn run(args: Args) -> Result<ExitCode> {
    let dir = crate::cmd::node::engine_dir_of(&args.data_dir)?;
    let opts = Options {
        sync: SyncPolicy::Always,
        tombstone_grace: Duration::from_secs(args.tombstone_grace_secs),
        background_compaction: None,
        ..Options::default()
    };
    let engine = Engine::open(&dir, opts).with_context(|| format!("opening {}", dir.display()))?;
    let mut progress = Progress::new("compacting");
    let report = engine
        .compact(&mut |p| progress.update(p.bytes_done, p.bytes_total))
        .context("compaction failed; the data directory is unchanged")?;
    progress.finish();
    engine.sync().context("final sync")?;

    let saved = report.bytes_before.saturating_sub(report.bytes_after);
    println!("compaction of {} finished in {:.2?}", dir.display(), report.duration);
    println!("  segments rewritten   {}", report.segments_rewritten);
    println!(
        "  bytes                {} -> {} ({} reclaimed)",
        human_bytes(report.bytes_before),
        human_bytes(report.bytes_after),
        human_bytes(saved)
    );
    println!("  records              {} -> {}", report.records_before, report.records_after);
    println!("  superseded dropped   {}", report.superseded_dropped);
    println!("  tombstones dropped   {}", report.tombstones_dropped);
    Ok(ExitCode::SUCCESS)
}
