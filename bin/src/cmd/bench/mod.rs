//! `cairn bench`: a closed-loop HTTP load generator for Cairn's REST API and for S3.
//!
//! `--concurrency` client tasks each own one keep-alive HTTP/1.1 connection (client i talks to
//! endpoint i mod k) and issue one request at a time until `--duration` or `--ops` is reached.
//! Operations started during `--warmup` are not measured. Each client keeps its own
//! [`report::Stats`]; they are merged at the end, so the hot path shares only a few atomic
//! counters (the `--ops` budget, fresh key numbers, the progress line's totals).
//!
//! # Layout
//! - `mod.rs`: options, the run phases (probe, create bucket, prefill, measure), progress line.
//! - `client.rs`: endpoints, the hyper connection, request building, outcome classification.
//! - `body.rs`: request bodies, held (up to 8 MiB) or generated while streamed (above).
//! - `s3.rs`: AWS Signature Version 4 (and HMAC-SHA256).
//! - `workload.rs`: sizes, key distributions (uniform, zipfian), key names.
//! - `report.rs`: histogram, the table and the JSON report.
//!
//! # Object sizes and memory
//! Sizes go up to 64 GiB (`--size 1GiB`, `--size 600MiB..2GiB`) and cost no memory: one random
//! buffer of at most 9 MiB is shared by every client. A put body of up to 8 MiB is a 16-byte tag
//! and a slice of it; a larger one is generated while hyper sends it, in frames of at most 1 MiB
//! (a tag from the request's seed and the frame's index, then a slice of the buffer), with an
//! exact `Content-Length` (see `body.rs`). Response bodies are read frame by frame and only
//! counted. So a client holds no more than hyper's own buffers (about 400 KiB each way),
//! whatever the object size. The default `--timeout` bounds a whole transfer, so above
//! 8 MiB it grows with the largest size (10 s plus 1 s per 4 MiB: 266 s for 1 GiB). Prefill retries a put answered 503 (for
//! instance a node's `SlowDown` when its large-object buffers are spent) after its `Retry-After`.
//!
//! Throughput (`mb_per_s`) counts body bytes of successful operations, sent for puts and
//! received for gets, over the measured time. An operation started during warm-up and finished
//! after it adds the share of its bytes that falls in the measured time (its ops are not
//! counted): with objects that take seconds to move, warm-up operations overlap the measurement.
//!
//! Latency is measured per request from just before it is sent until its response body has been
//! read. A closed-loop generator waits for each answer before sending the next request, so a
//! stalled server also stalls the load (coordinated omission): latencies describe the requests
//! that were sent, not the ones a fixed arrival rate would have sent meanwhile.

mod body;
mod client;
mod report;
mod s3;
mod workload;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use rand::{Rng, RngCore, SeedableRng, rngs::StdRng};

use body::Payload;
use client::{Conn, Endpoint, OpKind, Outcome, Protocol, Target};
use report::{Report, Stats};
use workload::{KeyChooser, SizeSpec, Zipfian};

/// Interval of the live progress line.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Runs shorter than this get no progress line unless `--progress` asks for one.
const PROGRESS_MIN_RUN: Duration = Duration::from_secs(2);
/// Longest wait for the start-up reachability check of each endpoint.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `--timeout` for objects of up to [`body::STREAM_THRESHOLD`] bytes.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Larger objects add one second per this many bytes of the largest size to the default timeout.
const TIMEOUT_BYTES_PER_SEC: u64 = 4 << 20;
/// Attempts of one prefill put answered 503 (`SlowDown`, quorum failures) before giving up.
const PREFILL_ATTEMPTS: u32 = 10;
/// Longest wait between prefill attempts (a longer `Retry-After` is capped to it).
const PREFILL_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the clients do.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Writes only. Each put goes to a fresh key (prefix + run id + counter), unless --overwrite.
    Put,
    /// Reads of the key space (prefilled by default).
    Get,
    /// Reads with probability --read-ratio, otherwise overwriting puts to the key space.
    Mixed,
    /// Deletes each key of the (prefilled) key space once, in order; stops when all are gone.
    Delete,
}

/// How keys of the key space are picked.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// YCSB zipfian: key 0 hottest, skew --zipf-theta.
    Zipfian,
}

/// Output format of the report on stdout.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A human table.
    Table,
    /// The JSON report (the same as --json writes).
    Json,
}

/// Arguments of `cairn bench`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Latency is measured per successful request, from just before sending to the end of the response \
body. The generator is closed-loop (each client waits for its answer), so it does not correct \
for coordinated omission. Exit codes: 0 the run completed (errors, if any, are in the report); \
1 every request failed or an endpoint was unreachable at start; 2 bad options. See docs/bench.md.")]
pub struct Args {
    /// Base URL of a node or S3 gateway (http:// only); repeat or comma-separate for several.
    /// Client i uses endpoint i mod k.
    #[arg(
        long = "endpoint",
        value_name = "URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8081"
    )]
    endpoints: Vec<String>,
    /// Wire protocol: cairn (REST: PUT/GET/DELETE /buckets/{bucket}/{key}) or s3 (path-style
    /// /{bucket}/{key}, signed with AWS SigV4).
    #[arg(long, value_enum, default_value_t = Protocol::Cairn)]
    protocol: Protocol,
    /// S3 access key id.
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    s3_access_key: Option<String>,
    /// S3 secret access key.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    s3_secret_key: Option<String>,
    /// S3 region of the signature scope (service "s3"; payloads are sent as UNSIGNED-PAYLOAD in
    /// x-amz-content-sha256, so bodies are not hashed).
    #[arg(long, default_value = "us-east-1")]
    s3_region: String,
    /// Bucket to use.
    #[arg(long, default_value = "bench")]
    bucket: String,
    /// Create the bucket before running (an existing bucket, 409, is fine); --create-bucket=false
    /// to skip.
    #[arg(long, action = clap::ArgAction::Set, default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", require_equals = true)]
    create_bucket: bool,
    /// put | get | mixed | delete. Puts of the put workload go to fresh keys (never creating Cairn
    /// siblings); puts of mixed, of prefill and of put --overwrite go to the key space with
    /// Cairn's ?overwrite=true, replacing what the key holds.
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    workload: Workload,
    /// Share of reads in the mixed workload (0..=1); the rest are puts.
    #[arg(long, default_value_t = 0.9)]
    read_ratio: f64,
    /// Object size for puts: fixed (512, 4096, 4KiB, 1MiB, 600MiB, 1GiB) or a uniform range
    /// (1KiB..64KiB). Units B, K/KB/KiB, M/MB/MiB, G/GB/GiB are all binary (1 KB = 1024 bytes);
    /// up to 64 GiB. Bodies above 8 MiB are generated while streamed, never held in memory.
    #[arg(long, default_value = "4KiB", value_parser = SizeSpec::parse)]
    size: SizeSpec,
    /// Size of the key space used by get, mixed, delete, prefill and put --overwrite.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    keys: u64,
    /// Key choice in the key space: uniform or zipfian.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    distribution: Distribution,
    /// Skew of the zipfian distribution, in (0, 1).
    #[arg(long, default_value_t = 0.99)]
    zipf_theta: f64,
    /// Write every key of the key space once before measuring (default: on for get, mixed and
    /// delete, off for put). --prefill=false to skip.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    prefill: Option<bool>,
    /// put workload: write keys of the key space (replacing them, ?overwrite=true) instead of
    /// fresh keys.
    #[arg(long)]
    overwrite: bool,
    /// Prefix of every key name.
    #[arg(long, default_value = "")]
    key_prefix: String,
    /// Number of concurrent clients, each with its own keep-alive connection.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Measured run time after warm-up (e.g. 10s, 500ms, 2m). Default 10s unless --ops is given
    /// alone.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many measured operations (whichever of --duration and --ops comes first).
    #[arg(long, value_name = "N")]
    ops: Option<u64>,
    /// Warm-up before measuring; operations during it are discarded.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Per-request timeout (connect, send and the whole response body). Default 10s; for sizes
    /// above 8 MiB, 10s plus 1s per 4 MiB of the largest size (1GiB: 266s).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Worker threads of the async runtime (default: the number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Format of the report on stdout.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Draw the progress line on stderr even when it is not a terminal or the run is short.
    #[arg(long, conflicts_with = "quiet")]
    progress: bool,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

/// Parses `10s`, `500ms`, `2m`, `1h`, `1.5s`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("duration {s:?}: expected e.g. 10s or 500ms"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("duration {s:?}: unknown unit {other:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("duration {s:?}: out of range"))
}

/// The default `--timeout` for objects of up to `max_size` bytes: it bounds a whole transfer, so
/// it grows with large objects (at least 4 MiB/s per request).
fn default_timeout(max_size: u64) -> Duration {
    if max_size <= body::STREAM_THRESHOLD {
        return DEFAULT_TIMEOUT;
    }
    DEFAULT_TIMEOUT + Duration::from_secs(max_size.div_ceil(TIMEOUT_BYTES_PER_SEC))
}

/// The validated plan of a run.
struct Plan {
    endpoints: Vec<Endpoint>,
    target: Target,
    create_bucket: bool,
    workload: Workload,
    read_ratio: f64,
    size: SizeSpec,
    keys: u64,
    chooser: KeyChooser,
    prefill: bool,
    overwrite: bool,
    key_prefix: String,
    concurrency: usize,
    duration: Option<Duration>,
    ops: Option<u64>,
    warmup: Duration,
    timeout: Duration,
    progress: bool,
    /// Distinguishes this run's fresh keys from earlier runs'.
    run_id: String,
    settings: serde_json::Value,
}

fn usage(msg: impl std::fmt::Display) -> Result<ExitCode> {
    eprintln!("error: {msg}");
    Ok(ExitCode::from(2))
}

/// Runs the command.
pub fn run(args: Args) -> Result<ExitCode> {
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map(std::num::NonZeroUsize::get).unwrap_or(1)
    });
    let plan = match plan(&args, threads) {
        Ok(p) => p,
        Err(msg) => return usage(msg),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(execute(Arc::new(plan)))?;
    let json = serde_json::to_string_pretty(&report).context("encoding the report")?;
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    match args.format {
        Format::Table => print!("{}", report.table()),
        Format::Json => println!("{json}"),
    }
    if report.attempted() > 0 && report.ops_ok == 0 {
        let kinds: Vec<String> = report.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        eprintln!("error: every request failed ({})", kinds.join(", "));
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks the options and resolves defaults; an `Err` is a usage error (exit 2).
fn plan(args: &Args, threads: usize) -> Result<Plan, String> {
    let endpoints = args
        .endpoints
        .iter()
        .filter(|e| !e.trim().is_empty())
        .map(|e| Endpoint::parse(e.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    if endpoints.is_empty() {
        return Err("--endpoint: at least one endpoint is needed".into());
    }
    if args.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    if threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    if !(0.0..=1.0).contains(&args.read_ratio) {
        return Err(format!("--read-ratio {}: must be between 0 and 1", args.read_ratio));
    }
    if !(args.zipf_theta > 0.0 && args.zipf_theta < 1.0) {
        return Err(format!("--zipf-theta {}: must be in (0, 1)", args.zipf_theta));
    }
    if args.keys == 0 {
        return Err("--keys must be at least 1".into());
    }
    if args.ops == Some(0) {
        return Err("--ops must be at least 1".into());
    }
    if args.duration.is_some_and(|d| d.is_zero()) {
        return Err("--duration must be positive".into());
    }
    let timeout = args.timeout.unwrap_or_else(|| default_timeout(args.size.max()));
    if timeout.is_zero() {
        return Err("--timeout must be positive".into());
    }
    if args.bucket.is_empty() || args.bucket.contains('/') {
        return Err(format!("--bucket {:?}: must be a non-empty name without '/'", args.bucket));
    }
    let creds = match args.protocol {
        Protocol::Cairn => None,
        Protocol::S3 => match (&args.s3_access_key, &args.s3_secret_key) {
            (Some(a), Some(s)) if !a.is_empty() && !s.is_empty() => Some(s3::Credentials {
                access_key: a.clone(),
                secret_key: s.clone(),
                region: args.s3_region.clone(),
            }),
            _ => {
                return Err("--protocol s3 needs --s3-access-key and --s3-secret-key \
                            (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                    .into());
            }
        },
    };
    let duration = match (args.duration, args.ops) {
        (None, None) => Some(Duration::from_secs(10)),
        (d, _) => d,
    };
    let prefill = args.prefill.unwrap_or(args.workload != Workload::Put);
    let chooser = match args.distribution {
        Distribution::Uniform => KeyChooser::Uniform(args.keys),
        Distribution::Zipfian => KeyChooser::Zipfian(Zipfian::new(args.keys, args.zipf_theta)),
    };
    let long_run = duration.is_none_or(|d| d + args.warmup > PROGRESS_MIN_RUN);
    let progress = !args.quiet && (args.progress || (long_run && std::io::stderr().is_terminal()));
    let mut settings = serde_json::json!({
        "endpoints": endpoints.iter().map(|e| e.url.clone()).collect::<Vec<_>>(),
        "protocol": args.protocol,
        "bucket": args.bucket,
        "create_bucket": args.create_bucket,
        "key_prefix": args.key_prefix,
        "workload": args.workload,
        "size": args.size.to_string(),
        "keys": args.keys,
        "distribution": args.distribution,
        "prefill": prefill,
        "overwrite": args.overwrite,
        "concurrency": args.concurrency,
        "threads": threads,
        "duration_s": duration.map(|d| d.as_secs_f64()),
        "ops": args.ops,
        "warmup_s": args.warmup.as_secs_f64(),
        "timeout_s": timeout.as_secs_f64(),
    });
    if let Some(obj) = settings.as_object_mut() {
        if args.workload == Workload::Mixed {
            obj.insert("read_ratio".into(), args.read_ratio.into());
        }
        if args.distribution == Distribution::Zipfian {
            obj.insert("zipf_theta".into(), args.zipf_theta.into());
        }
        if args.protocol == Protocol::S3 {
            obj.insert("s3_region".into(), args.s3_region.clone().into());
        }
    }
    let run_id: u32 = rand::random();
    Ok(Plan {
        endpoints,
        target: Target { protocol: args.protocol, bucket: args.bucket.clone(), creds },
        create_bucket: args.create_bucket,
        workload: args.workload,
        read_ratio: args.read_ratio,
        size: args.size,
        keys: args.keys,
        chooser,
        prefill,
        overwrite: args.overwrite,
        key_prefix: args.key_prefix.clone(),
        concurrency: args.concurrency,
        duration,
        ops: args.ops,
        warmup: args.warmup,
        timeout,
        progress,
        run_id: format!("{run_id:08x}"),
        settings,
    })
}

impl Plan {
    /// Whether the progress line counts body bytes as they move (objects large enough to take
    /// a while each) rather than when each operation ends (cheaper for small objects).
    fn live_bytes(&self) -> bool {
        self.size.max() > body::STREAM_THRESHOLD
    }
}

/// Counters shared by every client of a phase. Written with relaxed atomics: they only feed the
/// progress line, the `--ops` budget and key numbering, never the measurements.
#[derive(Default)]
struct Shared {
    /// Measured operations claimed so far (the `--ops` budget).
    claimed: AtomicU64,
    /// Next fresh key number (put workload) or key-space index (prefill, delete).
    next_key: AtomicU64,
    /// Operations finished, warm-up included (progress line).
    done: AtomicU64,
    /// Failed operations, warm-up included (progress line).
    failed: AtomicU64,
    /// Body bytes moved so far, warm-up included (progress line): counted as they move for
    /// large objects (failed requests included), else when each successful operation ends.
    bytes: Arc<AtomicU64>,
    /// Set by the Ctrl-C task, read by every client: stop after the current request.
    stop: Arc<AtomicBool>,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn execute(plan: Arc<Plan>) -> Result<Report> {
    for endpoint in &plan.endpoints {
        client::probe(endpoint, PROBE_TIMEOUT.min(plan.timeout)).await?;
    }
    let mut conns: Vec<Conn> = (0..plan.concurrency)
        .map(|i| Conn::new(plan.endpoints[i % plan.endpoints.len()].clone()))
        .collect();
    if plan.create_bucket {
        create_bucket(&plan, &mut conns[0]).await?;
    }
    // One random buffer shared by every put (at most 9 MiB): each put sends random tags and
    // slices of it (`Bytes` clones), held or generated while streamed, see `body.rs`.
    let mut buf = vec![0u8; body::shared_len(plan.size.max())];
    rand::rng().fill_bytes(&mut buf);
    let body = Bytes::from(buf);

    // Ctrl-C stops the clients after their current request; the report covers what ran.
    let stop = Arc::new(AtomicBool::new(false));
    let on_ctrl_c = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, Ordering::Relaxed);
            }
        })
    };
    if plan.prefill {
        let shared = Arc::new(Shared { stop: stop.clone(), ..Shared::default() });
        conns = prefill(&plan, conns, &body, &shared).await?;
    }
    let shared = Arc::new(Shared { stop: stop.clone(), ..Shared::default() });

    let start = Instant::now();
    let measure_start = start + plan.warmup;
    let end = plan.duration.map(|d| measure_start + d);
    let ticker = plan.progress.then(|| spawn_progress("bench", shared.clone(), None));
    let mut tasks = Vec::with_capacity(conns.len());
    for conn in conns {
        let (plan, shared, body) = (plan.clone(), shared.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            client_loop(&plan, conn, &shared, &body, measure_start, end).await
        }));
    }
    let mut stats = Stats::new(plan.workload == Workload::Mixed);
    for task in tasks {
        stats.merge(&task.await.context("a client task panicked")?);
    }
    let finished = Instant::now();
    if let Some(t) = ticker {
        t.abort();
        finish_progress_line();
    }
    on_ctrl_c.abort();
    let elapsed = finished.saturating_duration_since(measure_start).as_secs_f64();
    Ok(Report::new(plan.settings.clone(), &stats, elapsed))
}

async fn create_bucket(plan: &Plan, conn: &mut Conn) -> Result<()> {
    let req = plan.target.request(
        conn.endpoint(),
        OpKind::CreateBucket,
        "",
        Payload::empty(),
        false,
        unix_now(),
    )?;
    let answer = conn.send(req, plan.timeout).await;
    match (answer.outcome, answer.status) {
        (Outcome::Ok, _) => Ok(()),
        (_, Some(s)) if s.as_u16() == 409 => Ok(()),
        (_, Some(s)) => bail!(
            "creating bucket {:?} on {} answered {s}",
            plan.target.bucket,
            conn.endpoint().url
        ),
        (outcome, None) => bail!(
            "creating bucket {:?} on {} failed: {}",
            plan.target.bucket,
            conn.endpoint().url,
            outcome.name()
        ),
    }
}

/// Writes every key of the key space once (`?overwrite=true`), with every connection.
async fn prefill(
    plan: &Arc<Plan>,
    conns: Vec<Conn>,
    body: &Bytes,
    shared: &Arc<Shared>,
) -> Result<Vec<Conn>> {
    let total = plan.keys;
    let ticker = plan.progress.then(|| spawn_progress("prefill", shared.clone(), Some(total)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(conns.len());
    for mut conn in conns {
        let (plan, shared, body) = (plan.clone(), shared.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::from_rng(&mut rand::rng());
            conn.set_meter(plan.live_bytes().then(|| shared.bytes.clone()));
            while !shared.stop.load(Ordering::Relaxed) {
                let i = shared.next_key.fetch_add(1, Ordering::Relaxed);
                if i >= plan.keys {
                    break;
                }
                let key = workload::space_key(&plan.key_prefix, i);
                let len = plan.size.sample(&mut rng);
                if prefill_one(&plan, &mut conn, &key, len, &body, &mut rng, &shared).await {
                    if !plan.live_bytes() {
                        shared.bytes.fetch_add(len, Ordering::Relaxed);
                    }
                } else {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                }
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
            conn.set_meter(None);
            conn
        }));
    }
    let mut conns = Vec::with_capacity(tasks.len());
    for task in tasks {
        conns.push(task.await.context("a prefill task panicked")?);
    }
    if let Some(t) = ticker {
        t.abort();
        finish_progress_line();
    }
    let done = shared.done.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    if done > 0 && failed == done {
        bail!("prefill: all {done} writes failed (is the bucket there? see --create-bucket)");
    }
    if failed > 0 {
        eprintln!("warning: prefill: {failed} of {done} writes failed");
    }
    if plan.progress {
        eprintln!("prefill: {done} keys in {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(conns)
}

/// Writes one key of the key space; a 503 (a node's `SlowDown`, a quorum failure) is retried
/// after its `Retry-After` (1 s if none, at most [`PREFILL_MAX_BACKOFF`]), up to
/// [`PREFILL_ATTEMPTS`] attempts in all. Whether the write succeeded.
async fn prefill_one(
    plan: &Plan,
    conn: &mut Conn,
    key: &str,
    len: u64,
    body: &Bytes,
    rng: &mut StdRng,
    shared: &Shared,
) -> bool {
    for attempt in 1..=PREFILL_ATTEMPTS {
        let payload = body::put_payload(body, len, rng);
        let Ok(req) =
            plan.target.request(conn.endpoint(), OpKind::Put, key, payload, true, unix_now())
        else {
            return false;
        };
        let answer = conn.send(req, plan.timeout).await;
        if answer.outcome.is_success() {
            return true;
        }
        if !answer.is_retryable()
            || attempt == PREFILL_ATTEMPTS
            || shared.stop.load(Ordering::Relaxed)
        {
            return false;
        }
        let wait = answer.retry_after.unwrap_or(Duration::from_secs(1)).min(PREFILL_MAX_BACKOFF);
        tokio::time::sleep(wait).await;
    }
    false
}

/// One client: issue requests until the deadline, the `--ops` budget or Ctrl-C.
async fn client_loop(
    plan: &Plan,
    mut conn: Conn,
    shared: &Shared,
    body: &Bytes,
    measure_start: Instant,
    end: Option<Instant>,
) -> Stats {
    let mut stats = Stats::new(plan.workload == Workload::Mixed);
    let mut rng = StdRng::from_rng(&mut rand::rng());
    conn.set_meter(plan.live_bytes().then(|| shared.bytes.clone()));
    loop {
        let now = Instant::now();
        if shared.stop.load(Ordering::Relaxed) || end.is_some_and(|e| now >= e) {
            break;
        }
        let measuring = now >= measure_start;
        if measuring
            && let Some(limit) = plan.ops
            && shared.claimed.fetch_add(1, Ordering::Relaxed) >= limit
        {
            break;
        }
        let (op, key, overwrite) = match plan.workload {
            Workload::Put if plan.overwrite => (
                OpKind::Put,
                workload::space_key(&plan.key_prefix, plan.chooser.next(&mut rng)),
                true,
            ),
            Workload::Put => {
                let n = shared.next_key.fetch_add(1, Ordering::Relaxed);
                (OpKind::Put, workload::fresh_key(&plan.key_prefix, &plan.run_id, n), false)
            }
            Workload::Get => (
                OpKind::Get,
                workload::space_key(&plan.key_prefix, plan.chooser.next(&mut rng)),
                false,
            ),
            Workload::Mixed => {
                let key = workload::space_key(&plan.key_prefix, plan.chooser.next(&mut rng));
                if rng.random::<f64>() < plan.read_ratio {
                    (OpKind::Get, key, false)
                } else {
                    (OpKind::Put, key, true)
                }
            }
            Workload::Delete => {
                let i = shared.next_key.fetch_add(1, Ordering::Relaxed);
                if i >= plan.keys {
                    break;
                }
                (OpKind::Delete, workload::space_key(&plan.key_prefix, i), false)
            }
        };
        let payload = if op == OpKind::Put {
            body::put_payload(body, plan.size.sample(&mut rng), &mut rng)
        } else {
            Payload::empty()
        };
        let sent = payload.len();
        let Ok(req) =
            plan.target.request(conn.endpoint(), op, &key, payload, overwrite, unix_now())
        else {
            // Only an invalid key prefix can make a request unbuildable; count it as a 4xx.
            shared.failed.fetch_add(1, Ordering::Relaxed);
            stats.record(op.name(), Outcome::Http4xx, 0, 0);
            continue;
        };
        let t0 = Instant::now();
        let answer = conn.send(req, plan.timeout).await;
        let t1 = Instant::now();
        let latency_us = t1.duration_since(t0).as_micros().min(u128::from(u64::MAX)) as u64;
        let bytes = match op {
            OpKind::Put if answer.outcome.is_success() => sent,
            OpKind::Get if answer.outcome == Outcome::Ok => answer.body_bytes,
            _ => 0,
        };
        shared.done.fetch_add(1, Ordering::Relaxed);
        if !plan.live_bytes() {
            shared.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        if !answer.outcome.is_success() {
            shared.failed.fetch_add(1, Ordering::Relaxed);
        }
        if measuring {
            stats.record(op.name(), answer.outcome, latency_us, bytes);
        } else if t1 > measure_start && answer.outcome.is_success() {
            // A warm-up operation that ran into the measured time: the share of its bytes
            // moved since the measurement began (a large object can take seconds).
            stats.add_bytes(op.name(), overlap_share(bytes, t0, t1, measure_start));
        }
    }
    stats
}

/// The share of `bytes`, moved evenly from `t0` to `t1`, that was moved after `from`.
fn overlap_share(bytes: u64, t0: Instant, t1: Instant, from: Instant) -> u64 {
    let total = t1.saturating_duration_since(t0).as_secs_f64();
    let after = t1.saturating_duration_since(from.max(t0)).as_secs_f64();
    if total <= 0.0 {
        return if t0 >= from { bytes } else { 0 };
    }
    (bytes as f64 * (after / total).clamp(0.0, 1.0)).round() as u64
}

/// Draws `label: 12 s  ops 123456  ops/s 10234  MB/s 12.3  errors 0` on stderr every second:
/// redrawn in place on a terminal, one line per second otherwise.
fn spawn_progress(
    label: &'static str,
    shared: Arc<Shared>,
    total: Option<u64>,
) -> tokio::task::JoinHandle<()> {
    let tty = std::io::stderr().is_terminal();
    tokio::spawn(async move {
        let started = Instant::now();
        let (mut last, mut last_bytes) = (0u64, 0u64);
        let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
        tick.tick().await;
        loop {
            tick.tick().await;
            let done = shared.done.load(Ordering::Relaxed);
            let failed = shared.failed.load(Ordering::Relaxed);
            let bytes = shared.bytes.load(Ordering::Relaxed);
            let secs = PROGRESS_INTERVAL.as_secs_f64();
            let rate = (done - last.min(done)) as f64 / secs;
            let mb_rate = (bytes - last_bytes.min(bytes)) as f64 / 1e6 / secs;
            (last, last_bytes) = (done, bytes);
            let of = total.map(|t| format!("/{t}")).unwrap_or_default();
            let line = format!(
                "{label}: {:>4.0} s  ops {done}{of}  ops/s {rate:.0}  MB/s {mb_rate:.1}  \
                 errors {failed}",
                started.elapsed().as_secs_f64()
            );
            let mut err = std::io::stderr().lock();
            // Progress output is best effort: a closed stderr must not fail the run.
            let _ = if tty { write!(err, "\r{line}\x1b[K") } else { writeln!(err, "{line}") };
            let _ = err.flush();
        }
    })
}

fn finish_progress_line() {
    if std::io::stderr().is_terminal() {
        let _ = writeln!(std::io::stderr());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn plan_of(argv: &[&str]) -> Result<Plan, String> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))
            .map_err(|e| e.to_string())?;
        plan(&cli.args, 2)
    }

    #[test]
    fn defaults_follow_the_workload() {
        let p = plan_of(&[]).unwrap();
        assert_eq!(p.workload, Workload::Put);
        assert!(!p.prefill && p.create_bucket && !p.overwrite);
        assert_eq!(p.duration, Some(Duration::from_secs(10)));
        assert_eq!((p.concurrency, p.keys, p.size), (16, 10_000, SizeSpec::Fixed(4096)));
        assert_eq!(p.endpoints[0].authority, "127.0.0.1:8081");
        for w in ["get", "mixed", "delete"] {
            assert!(plan_of(&["--workload", w]).unwrap().prefill, "{w}");
        }
        assert!(!plan_of(&["--workload", "get", "--prefill=false"]).unwrap().prefill);
        assert!(plan_of(&["--prefill"]).unwrap().prefill);
        assert!(!plan_of(&["--create-bucket=false"]).unwrap().create_bucket);
        // --ops alone lifts the default time bound; both bounds may be given.
        let p = plan_of(&["--ops", "100"]).unwrap();
        assert_eq!((p.ops, p.duration), (Some(100), None));
        let p = plan_of(&["--ops", "100", "--duration", "5s"]).unwrap();
        assert_eq!((p.ops, p.duration), (Some(100), Some(Duration::from_secs(5))));
    }

    #[test]
    fn large_sizes_are_accepted_and_lengthen_the_default_timeout() {
        assert_eq!(plan_of(&[]).unwrap().timeout, Duration::from_secs(10));
        assert_eq!(plan_of(&["--size", "8MiB"]).unwrap().timeout, Duration::from_secs(10));
        let p = plan_of(&["--size", "1GiB"]).unwrap();
        assert_eq!((p.size, p.timeout), (SizeSpec::Fixed(1 << 30), Duration::from_secs(266)));
        assert_eq!(p.settings["timeout_s"], 266.0);
        let p = plan_of(&["--size", "600MiB", "--timeout", "30s"]).unwrap();
        assert_eq!((p.size.max(), p.timeout), (600 << 20, Duration::from_secs(30)));
        let p = plan_of(&["--size", "1KiB..5GB"]).unwrap();
        assert_eq!(p.size, SizeSpec::Range(1024, 5 << 30));
        assert!(plan_of(&["--size", "65GiB"]).is_err());
    }

    #[test]
    fn warm_up_operations_count_the_bytes_after_the_measurement_starts() {
        let t0 = Instant::now();
        let s = |a: u64, b: u64, from: u64| {
            let at = |ms| t0 + Duration::from_millis(ms);
            overlap_share(1000, at(a), at(b), at(from))
        };
        assert_eq!(s(0, 1000, 250), 750);
        assert_eq!(s(0, 1000, 1000), 0);
        assert_eq!(s(500, 1000, 0), 1000);
        assert_eq!(s(500, 500, 500), 1000);
        assert_eq!(s(400, 400, 500), 0);
    }

    #[test]
    fn endpoints_repeat_or_comma_separate() {
        let p =
            plan_of(&["--endpoint", "http://a:1,http://b:2", "--endpoint", "http://c:3"]).unwrap();
        let got: Vec<&str> = p.endpoints.iter().map(|e| e.authority.as_str()).collect();
        assert_eq!(got, ["a:1", "b:2", "c:3"]);
    }

    #[test]
    fn bad_options_are_refused() {
        for argv in [
            &["--concurrency", "0"][..],
            &["--read-ratio", "-0.1"],
            &["--zipf-theta", "1"],
            &["--keys", "0"],
            &["--ops", "0"],
            &["--duration", "0s"],
            &["--timeout", "0s"],
            &["--endpoint", "https://x:1"],
            &["--bucket", "a/b"],
            &["--protocol", "s3", "--s3-access-key", "a", "--s3-secret-key", ""],
        ] {
            assert!(plan_of(argv).is_err(), "{argv:?} accepted");
        }
        let p =
            plan_of(&["--protocol", "s3", "--s3-access-key", "a", "--s3-secret-key", "b"]).unwrap();
        assert!(p.target.creds.is_some());
        assert_eq!(p.settings["s3_region"], "us-east-1");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
