//! The `cairn` binary: runs a Cairn node and the operator commands around it.
//!
//! # Layout
//! - `main.rs`: command-line parsing (clap), logging setup, exit codes.
//! - `cmd/compact.rs`: `cairn compact`, offline log compaction of a data directory.
//! - `cmd/bench/`: `cairn bench`, the HTTP load generator (Cairn REST and S3).
//! - `cmd/bench_target.rs`: `cairn bench-target`, a do-nothing server for the generator's ceiling.
//! - `cmd/inspect.rs`: `cairn inspect`, record listing and CRC verification of a data directory.
//! - `progress.rs`: the progress line drawn by long commands.
//!
//! Exit codes: 0 success, 1 the command ran and failed (for example corruption found or the data
//! directory is locked by a running node), 2 bad usage or settings.

mod cmd;
mod progress;

/// mimalloc instead of glibc malloc: perf of a 4-node cluster under 4 KiB puts put ~16% of all CPU
/// in glibc's malloc/free (arena locks, consolidation) across the runtime and blocking-pool
/// threads; `docs/decisions.md` has the before/after, and why v2 rather than v3.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Cairn: a Dynamo-style distributed object store.
#[derive(Parser, Debug)]
#[command(name = "cairn", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "CAIRN_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

/// Output format of the logs (stderr).
#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one node of a cluster: the REST API, replication and the failure detector.
    Node(Box<cmd::node::Args>),
    /// Start a local cluster of real `cairn node` processes on 127.0.0.1 (for trying Cairn out
    /// and for tests); Ctrl-C stops them all.
    DevCluster(cmd::dev_cluster::Args),
    /// Compact a data directory offline: rewrite live records, drop superseded ones and reapable
    /// tombstones. Takes the directory's exclusive lock, so it refuses to run against a live node.
    Compact(cmd::compact::Args),
    /// Print the records of a data directory (offset, type, key, sizes, CRC status), or verify every
    /// checksum with --verify. Reads without taking the lock; safe on a live node's directory.
    Inspect(cmd::inspect::Args),
    /// Show or change the cluster's members: status, add ID, remove ID [--force] (through any
    /// node's admin API).
    Cluster(cmd::cluster::Args),
    /// Exit 0 if a node's /health answers 200 (for container health checks), 1 otherwise.
    Healthcheck(cmd::healthcheck::Args),
    /// Load-test an object store (Cairn's REST API or S3) with concurrent keep-alive clients and
    /// report throughput, errors and latency percentiles.
    Bench(Box<cmd::bench::Args>),
    /// A trivial HTTP server for measuring `cairn bench`'s own ceiling: fixed body for GET, 200
    /// for everything else.
    BenchTarget(cmd::bench_target::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Node(args) => cmd::node::run(*args),
        Command::DevCluster(args) => cmd::dev_cluster::run(args),
        Command::Compact(args) => cmd::compact::run(args),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Healthcheck(args) => cmd::healthcheck::run(args),
        Command::Cluster(args) => cmd::cluster::run(args),
        Command::Bench(args) => cmd::bench::run(*args),
        Command::BenchTarget(args) => cmd::bench_target::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CAIRN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
