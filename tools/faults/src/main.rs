//! `cairn-faults`: the fault-injection run and the crash-durability run (see `docs/testing.md`).
//!
//! A faults run drives the small-object workloads (`workload.rs`) and, unless
//! `--large-objects 0`, the large-object workload (`large.rs`: objects of several 1 MiB chunks,
//! `--large-size`, on `--large-keys` keys) in one history, checked together; the summary adds a
//! line of large-object counts, and any large body read with wrong or missing bytes fails the
//! run.
//!
//! Exit codes: 0 the run passed (for `--lww-control`: a loss was detected, as it must be);
//! 1 the checker found a violation, or the cluster did not converge; 2 bad usage or the cluster
//! could not be set up.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_faults::client::Client;
use cairn_faults::cluster::{self, Cluster, Docker, Local};
use cairn_faults::history::{self, Op, Verdict, View};
use cairn_faults::large::{self, LargeReport, LargeSettings, LargeStats};
use cairn_faults::schedule::{FaultKind, Schedule, Settings};
use cairn_faults::wipe::{self, WipeReport};
use cairn_faults::workload::{self, ClientStats, Executed, OpCounts, WorkloadSettings};
use cairn_faults::{Error, crash};
use clap::{Parser, ValueEnum};
use serde::Serialize;

/// Longest wait for every node to see every other up (start, and after healing).
const UP_LIMIT: Duration = Duration::from_secs(180);
/// Longest wait for the bucket to exist on every node.
const BUCKET_LIMIT: Duration = Duration::from_secs(30);
/// Read-back rounds (each repairs what it reads) before replicas must agree.
const CONVERGE_ROUNDS: usize = 4;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
enum ClusterKind {
    /// `cairn node` processes on 127.0.0.1.
    Local,
    /// The compose cluster of deploy/docker-compose.yml (ports 8081-8084 on 127.0.0.1).
    Docker,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
enum Mode {
    /// Concurrent clients under a seeded fault schedule, then the no-lost-writes check.
    Faults,
    /// kill -9 one node many times under `--sync always` and check its replica (local only).
    Crash,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
enum Kind {
    /// `kill -9`, restart on its data.
    Kill,
    /// SIGSTOP / `docker pause`, then resume.
    Pause,
    /// Cut one or two nodes off the network (Docker only).
    Partition,
    /// `kill -9`, delete the node's data, restart it on an empty disk: one per run (not with
    /// --membership or --lww-control).
    Wipe,
}

/// Fault-injection harness for Cairn.
#[derive(Parser, Debug, Serialize)]
#[command(name = "cairn-faults", about, long_about = None)]
struct Args {
    /// Where the cluster runs.
    #[arg(long, value_enum, default_value_t = ClusterKind::Local)]
    cluster: ClusterKind,
    /// What to run.
    #[arg(long, value_enum, default_value_t = Mode::Faults)]
    mode: Mode,
    /// Seconds of workload (and faults).
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Seed of the fault schedule and the clients (default: drawn from the clock, and printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent clients (client i runs workload i mod 3: hot, unique, delete/re-create).
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// Hot keys (read-modify-write) per epoch.
    #[arg(long, default_value_t = 2)]
    hot_keys: usize,
    /// Pause between one client's operations, in milliseconds.
    #[arg(long, default_value_t = 20)]
    think_ms: u64,
    /// Timeout of each HTTP request, in milliseconds (above the nodes' request timeout, so a
    /// quorum failure comes back as 503 rather than a client timeout).
    #[arg(long, default_value_t = 8_000)]
    op_timeout_ms: u64,
    /// Fault kinds (partition needs --cluster docker; wipe, one per run at a seeded time in the
    /// first half of the fault window, needs anti-entropy and is left out with --membership and
    /// --lww-control). Default: all the cluster and the run support.
    #[arg(long, value_enum, value_delimiter = ',')]
    faults: Vec<Kind>,
    /// Run on a `?conflict=lww` bucket: the checker must then REPORT lost writes (exit 0 if it
    /// does, 1 if it does not).
    #[arg(long)]
    lww_control: bool,
    /// Replay: take the schedule (and seed) from a run record written by --out.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Where to write the run record (JSON: settings, seed, schedule, executed faults, counts,
    /// verdict).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Working directory of local nodes (data, logs).
    #[arg(long, default_value = "target/faults")]
    work_dir: PathBuf,
    /// The `cairn` binary for local nodes (default: next to this program).
    #[arg(long)]
    cairn_bin: Option<PathBuf>,
    /// Extra flag for every local node (repeatable), e.g. `--node-arg=--sync=always` (not
    /// `--anti-entropy-interval`: see --anti-entropy-interval-ms).
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
    /// Anti-entropy interval of every node the harness starts, in milliseconds (local nodes:
    /// `--anti-entropy-interval`; Docker: `CAIRN_ANTI_ENTROPY_INTERVAL` through a compose file
    /// the harness writes next to its records and layers on the others). Short, so that a
    /// wiped node's keys are back before the read-back; 0 turns it off (and the wipe with it).
    #[arg(long, default_value_t = 2_000)]
    anti_entropy_interval_ms: u64,
    /// Tombstone grace of every node the harness starts, in milliseconds (local:
    /// `--tombstone-grace`; Docker: `CAIRN_TOMBSTONE_GRACE`): short, so that deletes are
    /// collected while the faults run, and after the read-back the harness waits for the last
    /// ones, reads everything again and checks that nothing deleted came back; 0: never collect.
    #[arg(long, default_value_t = 5_000)]
    tombstone_grace_ms: u64,
    /// Longest wait, after the heal and the hints, for the wiped node's keys to be back on
    /// every owner before the run fails [default: two anti-entropy intervals + 20 s].
    #[arg(long)]
    restore_limit_secs: Option<u64>,
    /// Compose file of the Docker cluster.
    #[arg(long, default_value = "deploy/docker-compose.yml")]
    compose_file: PathBuf,
    /// Compose project name of the Docker cluster (its containers, network and volumes).
    #[arg(long, default_value = "cairnfaults")]
    project: String,
    /// Longest wait for hints to drain after healing, in seconds.
    #[arg(long, default_value_t = 180)]
    settle_secs: u64,
    /// Kill/restart rounds of --mode crash.
    #[arg(long, default_value_t = 25)]
    kills: usize,
    /// Report views with more versions than writers (duplicate siblings) without failing the
    /// run; lost, phantom, resurrected, markers shown and unreadable still fail it.
    #[arg(long)]
    siblings_advisory: bool,
    /// Leave the cluster running at the end (for inspection).
    #[arg(long)]
    keep: bool,
    /// Large-object operations per faults run (overwrites with the read's context, blind
    /// sibling writes, deletes/re-creates) on objects several 1 MiB chunks long, shared by two
    /// more clients and spread over the run; every body read is checked byte for byte
    /// (`large.rs`). 0: no large objects.
    #[arg(long, default_value_t = 32, value_parser = parse_large_objects)]
    large_objects: usize,
    /// Length of the large objects in MiB: `MIN-MAX` or one value (a length that is a multiple
    /// of 1 MiB is moved off it by a byte, so the last chunk is always partial).
    #[arg(long, default_value = "2.5-4.5", value_parser = large::parse_size_range)]
    large_size: (u64, u64),
    /// Keys of the large-object workload (`large-0` ..).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    large_keys: u64,
    /// Chunk grace of every node the harness starts, in milliseconds (local: `--chunk-grace`;
    /// Docker: `CAIRN_CHUNK_GRACE`): short, so that the chunks of superseded and deleted large
    /// versions are collected while the faults run; 0: the node's default (10 minutes).
    #[arg(long, default_value_t = 10_000)]
    chunk_grace_ms: u64,
    /// Membership changes during the run: a 5th node started without --members (local; in
    /// Docker the service n5 of docker-compose.spare.yml next to the compose file) is added a few
    /// seconds in, then n4 is decommissioned, while faults run on every node; the run fails
    /// unless both changes complete.
    #[arg(long)]
    membership: bool,
}

/// The run record written by --out.
#[derive(Serialize)]
struct Record<'a> {
    args: &'a Args,
    seed: u64,
    bucket: String,
    schedule: Option<&'a Schedule>,
    executed: &'a [Executed],
    counts: OpCounts,
    client_stats: &'a [ClientStats],
    verdict: Option<&'a Verdict>,
    converged: bool,
    disagreeing_keys: usize,
    crash: Option<&'a crash::CrashReport>,
    /// Final views (every node) of the keys the checker has findings on.
    finding_views: BTreeMap<String, BTreeMap<String, View>>,
    /// The full history (every write and delete sent, with what its read saw and its outcome).
    ops: &'a [Op],
    passed: bool,
    wall_secs: u64,
    /// What the membership driver did (`--membership`).
    membership: Option<&'a cairn_faults::membership::Log>,
    /// The disk wipe and whether the wiped node's keys came back (runs with one).
    wipe: Option<&'a WipeReport>,
    /// The large-object workload's counts (faults runs with `--large-objects` above 0).
    large: Option<&'a LargeReport>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: tokio runtime: {e}");
                return ExitCode::from(2);
            }
        };
    let outcome = rt.block_on(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            r = run(args) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
            _ = terminated => None,
        }
    });
    let Some(result) = outcome else {
        eprintln!("interrupted: stopping the nodes this harness started");
        cairn_faults::cluster::emergency_stop();
        return ExitCode::from(130);
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn build_cluster(args: &Args, seed: u64) -> Result<Cluster, Error> {
    match args.cluster {
        ClusterKind::Local => {
            let bin = match &args.cairn_bin {
                Some(b) => b.clone(),
                None => std::env::current_exe()
                    .map_err(|e| Error::Setup(format!("locating this program: {e}")))?
                    .with_file_name("cairn"),
            };
            if !bin.exists() {
                return Err(Error::Setup(format!(
                    "no cairn binary at {} (build it: cargo build -p cairn, or pass --cairn-bin)",
                    bin.display()
                )));
            }
            let dir = args.work_dir.join(format!("run-{seed}-{}", std::process::id()));
            let mut extra = args.node_args.clone();
            extra.extend([
                "--anti-entropy-interval".to_string(),
                format!("{}ms", args.anti_entropy_interval_ms),
                "--tombstone-grace".to_string(),
                grace_flag(args.tombstone_grace_ms),
            ]);
            if args.chunk_grace_ms > 0 {
                extra.extend(["--chunk-grace".to_string(), format!("{}ms", args.chunk_grace_ms)]);
            }
            if args.mode == Mode::Crash {
                extra.extend(["--sync".to_string(), "always".to_string()]);
            }
            eprintln!("local cluster in {}", dir.display());
            if args.membership {
                return Ok(Cluster::Local(Local::with_spares(&bin, &dir, 4, 1, &extra)?));
            }
            Ok(Cluster::Local(Local::new(&bin, &dir, 4, &extra)?))
        }
        ClusterKind::Docker => {
            let secret = format!("fault harness secret {seed:016x}");
            let mut overlays = Vec::new();
            if args.membership {
                let spare = args.compose_file.with_file_name("docker-compose.spare.yml");
                if !spare.exists() {
                    return Err(Error::Setup(format!("{} is missing", spare.display())));
                }
                overlays.push(spare);
            }
            let n = if args.membership { 5 } else { 4 };
            let env = args.work_dir.join(format!("compose-env-{}.yml", args.project));
            let interval = format!("{}ms", args.anti_entropy_interval_ms);
            let grace = grace_flag(args.tombstone_grace_ms);
            let chunk_grace = format!("{}ms", args.chunk_grace_ms);
            let mut env_vars = vec![
                ("CAIRN_ANTI_ENTROPY_INTERVAL", interval.as_str()),
                ("CAIRN_TOMBSTONE_GRACE", grace.as_str()),
            ];
            if args.chunk_grace_ms > 0 {
                env_vars.push(("CAIRN_CHUNK_GRACE", chunk_grace.as_str()));
            }
            cluster::write_env_overlay(&env, n, &env_vars)?;
            overlays.push(env);
            Ok(Cluster::Docker(Docker::with_overlays(
                &args.compose_file,
                &overlays,
                n,
                &args.project,
                &secret,
            )))
        }
    }
}

async fn wait_up(client: &Client, cluster: &Cluster) -> bool {
    let (nodes, ids) = (cluster.http().to_vec(), cluster.ids());
    workload::eventually(UP_LIMIT, Duration::from_millis(250), || {
        workload::all_up(client, &nodes, &ids)
    })
    .await
}

fn dump_logs(cluster: &Cluster) {
    for (i, id) in cluster.ids().iter().enumerate() {
        eprintln!("--- {id} (last lines) ---\n{}", cluster.log_tail(i, 12));
    }
}

async fn create_bucket(client: &Client, nodes: &[String], lww: bool) -> Result<(), Error> {
    let q = if lww { "?conflict=lww" } else { "" };
    let path = format!("/buckets/{}{q}", client.bucket);
    let created = workload::eventually(BUCKET_LIMIT, Duration::from_millis(250), || async {
        matches!(client.post_json(&nodes[0], &path).await, Ok((200 | 409, _)))
    })
    .await;
    let everywhere = created
        && workload::eventually(BUCKET_LIMIT, Duration::from_millis(250), || async {
            for n in nodes {
                let p = format!("/buckets/{}", client.bucket);
                if !matches!(client.get_json(n, &p).await, Ok((200, _))) {
                    return false;
                }
            }
            true
        })
        .await;
    if everywhere {
        Ok(())
    } else {
        Err(Error::Setup(format!("bucket {} not visible on every node", client.bucket)))
    }
}

async fn run(args: Args) -> Result<ExitCode, Error> {
    let wall = Instant::now();
    let replay: Option<Schedule> = match &args.replay {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Error::Setup(format!("{}: {e}", p.display())))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::Setup(format!("{}: {e}", p.display())))?;
            Some(
                serde_json::from_value(v["schedule"].clone())
                    .map_err(|e| Error::Setup(format!("{}: no schedule: {e}", p.display())))?,
            )
        }
    };
    let seed = replay.as_ref().map(|s| s.settings.seed).or(args.seed).unwrap_or_else(|| {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    let bucket = if args.lww_control { "faults-lww" } else { "faults" };
    eprintln!(
        "cairn-faults: seed {seed}, {:?} cluster, mode {:?}, bucket {bucket}",
        args.cluster, args.mode
    );

    // Refuse a wipe this run cannot have before anything is started.
    let wipe = if args.mode != Mode::Faults {
        false
    } else if let Some(s) = &replay {
        // A replayed record may hold a wipe the flags of this run do not allow.
        s.wipe().is_none() || wipe_allowed(&args, true)?
    } else {
        let explicit = args.faults.contains(&Kind::Wipe);
        (explicit || args.faults.is_empty()) && wipe_allowed(&args, explicit)?
    };

    if args.chunk_grace_ms > 0 && args.chunk_grace_ms < 1_000 {
        return Err(Error::Setup(
            "--chunk-grace-ms must be 0 or at least 1000 (the node's minimum)".into(),
        ));
    }
    let mut cluster = build_cluster(&args, seed)?;
    let client = Client::new(bucket, Duration::from_millis(args.op_timeout_ms))?;
    cluster.start()?;
    if !wait_up(&client, &cluster).await {
        eprintln!("error: the cluster did not come up within {UP_LIMIT:?}");
        dump_logs(&cluster);
        let _ = cluster.stop();
        return Ok(ExitCode::from(2));
    }
    eprintln!("cluster up: every node sees every other");
    create_bucket(&client, cluster.http(), args.lww_control).await?;

    if args.mode == Mode::Crash {
        if args.cluster != ClusterKind::Local {
            return Err(Error::Setup("--mode crash runs on --cluster local".into()));
        }
        let report = crash::run(&mut cluster, &client, args.kills, seed, true).await;
        println!("crash durability (seed {seed}, --sync always, victim n1)");
        println!("  kills           {}", report.kills);
        println!(
            "  restarts ok     {} (slowest {} ms to /health 200)",
            report.restarts_ok, report.max_restart_ms
        );
        println!("  writes          sent {}  acknowledged {}", report.writes, report.writes_ok);
        println!("  victim acked    {} (as an owner replica)", report.victim_acked);
        println!("  lost            {}", report.lost.len());
        println!("  unreadable      {}", report.unreadable.len());
        for k in report.lost.iter().chain(&report.unreadable).take(20) {
            println!("    {k}");
        }
        let passed = report.passed();
        println!("  verdict         {}", if passed { "PASS" } else { "FAIL" });
        write_record(
            &args,
            &Record {
                args: &args,
                seed,
                bucket: bucket.into(),
                schedule: None,
                executed: &[],
                counts: OpCounts::default(),
                client_stats: &[],
                verdict: None,
                converged: true,
                disagreeing_keys: 0,
                crash: Some(&report),
                finding_views: BTreeMap::new(),
                ops: &[],
                passed,
                wall_secs: wall.elapsed().as_secs(),
                membership: None,
                wipe: None,
                large: None,
            },
        )?;
        if !passed {
            dump_logs(&cluster);
        }
        if !args.keep {
            cluster.stop()?;
        }
        return Ok(if passed { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }

    // The fault schedule.
    let schedule = match replay {
        Some(s) => s,
        None => {
            let asked: Vec<Kind> = if args.faults.is_empty() {
                vec![Kind::Kill, Kind::Pause, Kind::Partition]
            } else {
                args.faults.clone()
            };
            let mut kinds: Vec<FaultKind> = asked
                .into_iter()
                .filter_map(|k| match k {
                    Kind::Kill => Some(FaultKind::Kill),
                    Kind::Pause => Some(FaultKind::Pause),
                    Kind::Partition => Some(FaultKind::Partition),
                    Kind::Wipe => None,
                })
                .collect();
            if !cluster.can_partition() {
                kinds.retain(|k| *k != FaultKind::Partition);
            }
            Schedule::generate(Settings {
                seed,
                duration_ms: args.duration * 1000,
                nodes: cluster.http().len(),
                kinds,
                warmup_ms: 3_000,
                cooldown_ms: 5_000,
                gap_ms: (1_000, 4_000),
                length_ms: (1_500, 8_000),
                wipe,
            })
        }
    };
    if schedule.faults.iter().any(|f| f.kind == FaultKind::Partition) && !cluster.can_partition() {
        return Err(Error::Setup("the schedule partitions nodes: use --cluster docker".into()));
    }
    let faults_by_kind = |k: FaultKind| schedule.faults.iter().filter(|f| f.kind == k).count();
    let duration = Duration::from_millis(schedule.settings.duration_ms);
    eprintln!(
        "{} faults scheduled over {duration:?} (kill {}, pause {}, partition {}, wipe {}); workload starts",
        schedule.faults.len(),
        faults_by_kind(FaultKind::Kill),
        faults_by_kind(FaultKind::Pause),
        faults_by_kind(FaultKind::Partition),
        faults_by_kind(FaultKind::Wipe),
    );
    let ids = cluster.ids();
    let mut wipe_report = schedule.wipe().and_then(|w| {
        let node = w.targets.first().and_then(|i| ids.get(*i))?;
        eprintln!(
            "disk wipe: {node} at {:.1} s, restarted on an empty disk at {:.1} s",
            w.start_ms as f64 / 1000.0,
            (w.start_ms + w.duration_ms) as f64 / 1000.0
        );
        Some(WipeReport { node: node.clone(), planned_ms: w.start_ms, ..WipeReport::default() })
    });

    // Workload and faults, concurrently.
    let nodes = Arc::new(cluster.http().to_vec());
    let started = Instant::now();
    let deadline = started + duration;
    let stop = Arc::new(AtomicBool::new(false));
    let actions = schedule.actions();
    let stop2 = stop.clone();
    let executor = std::thread::spawn(move || {
        let log = workload::execute(&mut cluster, &actions, started, &stop2);
        (cluster, log)
    });
    let wsettings = WorkloadSettings {
        clients: args.clients,
        hot_keys: args.hot_keys,
        think_ms: args.think_ms,
        seed,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..args.clients {
        tasks.spawn(workload::client_loop(
            id,
            client.clone(),
            nodes.clone(),
            wsettings.clone(),
            started,
            deadline,
        ));
    }
    // The large-object clients, numbered after the small ones in the history.
    let mut large_tasks = tokio::task::JoinSet::new();
    if args.large_objects > 0 {
        let ls = LargeSettings {
            operations: args.large_objects,
            keys: args.large_keys as usize,
            size: args.large_size,
            seed,
            first_client: args.clients,
        };
        eprintln!(
            "large objects: {} operations on {} keys, {:.2}-{:.2} MiB, by {} clients",
            ls.operations,
            ls.keys,
            ls.size.0 as f64 / large::MIB as f64,
            ls.size.1 as f64 / large::MIB as f64,
            large::LARGE_CLIENTS
        );
        for j in 0..large::LARGE_CLIENTS {
            large_tasks.spawn(large::client_loop(
                j,
                client.clone(),
                nodes.clone(),
                ls.clone(),
                started,
                deadline,
            ));
        }
    }
    // The membership driver runs past the workload (a change may complete after the faults).
    let driver = args.membership.then(|| {
        let limit = deadline + Duration::from_secs(args.settle_secs);
        tokio::spawn(cairn_faults::membership::drive(
            client.clone(),
            nodes.to_vec(),
            started,
            limit,
        ))
    });
    let mut ops: Vec<Op> = Vec::new();
    let mut stats: Vec<ClientStats> = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok((o, s)) = r {
            ops.extend(o);
            stats.push(s);
        }
    }
    let mut large_stats: Vec<LargeStats> = Vec::new();
    while let Some(r) = large_tasks.join_next().await {
        if let Ok((o, s)) = r {
            ops.extend(o);
            large_stats.push(s);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (mut cluster, executed) =
        executor.join().map_err(|_| Error::Fault("the fault executor panicked".into()))?;
    let counts = OpCounts::of(&ops);
    eprintln!(
        "workload done: {} ops ({} ok, {} failed, {} indeterminate); {} fault actions; healing",
        ops.len(),
        counts.ok,
        counts.failed,
        counts.indeterminate,
        executed.len()
    );

    // Heal, settle, read back.
    for e in cluster.heal() {
        eprintln!("heal: {e}");
    }
    let healed = Instant::now();
    let nodes = cluster.http().to_vec();
    let mut converged = wait_up(&client, &cluster).await;
    let membership = match driver {
        Some(d) => Some(d.await.unwrap_or_default()),
        None => None,
    };
    if let Some(m) = &membership
        && !m.completed
    {
        eprintln!("the membership changes did not complete");
        converged = false;
    }
    if !converged {
        eprintln!("after healing, not every node sees every other up within {UP_LIMIT:?}");
    }
    let settle = Duration::from_secs(args.settle_secs);
    let hints_drained = workload::eventually(settle, Duration::from_millis(500), || {
        workload::no_hints(&client, &nodes)
    })
    .await;
    if !hints_drained {
        eprintln!("hints still pending after {settle:?}");
    }
    converged &= hints_drained;
    // Before anything reads through a coordinator (the preference lists' `?meta=true` reads
    // repair too): the wiped node's keys must be back on every owner by anti-entropy alone.
    let required = history::required(&ops);
    let mut restore = wipe::Restore::default();
    if let Some(w) = wipe_report.as_mut() {
        w.note_actions(&executed, &ids);
        let limit = match args.restore_limit_secs {
            Some(s) => Duration::from_secs(s),
            None => wipe::restore_limit(Duration::from_millis(args.anti_entropy_interval_ms)),
        };
        eprintln!(
            "restore check: up to {limit:?} for {} live keys to be on {} nodes (local reads, \
             no repair), {:.1} s after the heal",
            required.len(),
            wipe::REPLICAS,
            healed.elapsed().as_secs_f64()
        );
        restore = wipe::wait_restored(&client, &nodes, &ids, &required, limit).await;
        w.note_restore(&restore, required.len(), limit, healed);
        [w.aae_keys_repaired, w.aae_exchanges] = wipe::cluster_sums(
            &client,
            &nodes,
            [&["anti_entropy", "keys_repaired"], &["anti_entropy", "exchanges"]],
        )
        .await;
    }
    let keys: BTreeSet<String> = ops.iter().map(|o| o.key.clone()).collect();
    let pref = workload::pref_lists(&client, &nodes[0], &keys).await;
    if let Some(w) = wipe_report.as_mut() {
        (w.owned, w.owned_missing) = wipe::owned_by(&w.node, &required, &restore.holders, &pref);
        eprintln!("disk wipe: {}", w.describe());
    }
    let mut views = BTreeMap::new();
    let mut disagreeing = keys.len();
    for round in 0..CONVERGE_ROUNDS {
        // A coordinated read of every key through every node repairs stale replicas.
        views = workload::read_all(&client, &nodes, &ids, &keys, false).await;
        let _ = workload::eventually(settle, Duration::from_millis(500), || {
            workload::no_hints(&client, &nodes)
        })
        .await;
        let local = workload::read_all(&client, &nodes, &ids, &keys, true).await;
        let bad = workload::disagreements(&local, &pref);
        disagreeing = bad.len();
        eprintln!(
            "read-back round {}: {} keys, replicas disagree on {}",
            round + 1,
            keys.len(),
            bad.len()
        );
        if bad.is_empty() {
            break;
        }
    }
    converged &= disagreeing == 0;
    let verdict = history::check(&ops, &views);
    // Collection: the last deletes' tombstones go once the grace has passed; then everything
    // is read again, and nothing deleted may have come back.
    let mut after_collection = None;
    if args.tombstone_grace_ms > 0 && !args.lww_control {
        let wait = Duration::from_millis(args.tombstone_grace_ms) + COLLECTION_SLACK;
        eprintln!(
            "collection: waiting {wait:?} for the last tombstones, then reading everything again"
        );
        tokio::time::sleep(wait).await;
        let again = workload::read_all(&client, &nodes, &ids, &keys, false).await;
        let v = history::check(&ops, &again);
        let [collected, reclaimed] = wipe::cluster_sums(
            &client,
            &nodes,
            [&["tombstones", "collected"], &["tombstones", "objects_reclaimed"]],
        )
        .await;
        after_collection = Some((v, collected, reclaimed));
    }
    // After every read (the collection's included): the body checks' counts are complete.
    let mut large_report =
        (args.large_objects > 0).then(|| LargeReport::of(&ops, &views, &large_stats, &client));
    if let Some(l) = large_report.as_mut() {
        l.node_chunks = large::NodeChunks::of(&client, &nodes).await;
    }
    let fault_errors = executed.iter().filter(|e| e.error.is_some()).count();
    for e in executed.iter().filter(|e| e.error.is_some()).take(10) {
        eprintln!(
            "fault action failed: {:?} at {} ms: {}",
            e.action,
            e.at_ms,
            e.error.as_deref().unwrap_or("")
        );
    }

    let siblings_ok = verdict.sibling_excess == 0 || args.siblings_advisory;
    let safe = verdict.lost == 0
        && verdict.phantom == 0
        && verdict.failed_visible == 0
        && verdict.resurrected == 0
        && verdict.markers_shown == 0
        && verdict.unreadable == 0;
    let wipe_ok = wipe_report.as_ref().is_none_or(WipeReport::passed);
    let collection_ok = after_collection.as_ref().is_none_or(|(v, _, _)| {
        v.lost == 0 && v.phantom == 0 && v.resurrected == 0 && v.markers_shown == 0
    });
    // A wrong byte is never acceptable, not even in the lww control.
    let bytes_ok = large_report.as_ref().is_none_or(|l| l.corrupt == 0);
    let passed = bytes_ok
        && if args.lww_control {
            verdict.lost > 0
        } else {
            safe && siblings_ok && converged && wipe_ok && collection_ok
        };
    let reads_failed: u64 = stats.iter().map(|s| s.reads_failed).sum();
    let max_read = stats.iter().map(|s| s.max_versions_read).max().unwrap_or(0);
    let markers_read: u64 = stats.iter().map(|s| s.markers_read).sum();
    println!(
        "cairn-faults summary: seed {seed}, {:?} cluster, {} bucket, {} s, {} clients",
        args.cluster,
        if args.lww_control { "lww (control)" } else { "siblings" },
        duration.as_secs(),
        args.clients
    );
    println!(
        "  operations      ok {}  failed {}  indeterminate {}  (reads failed before sending: {reads_failed})",
        counts.ok, counts.failed, counts.indeterminate
    );
    println!(
        "  faults          kill {}  pause {}  partition {}  wipe {}  (actions {}, failed actions {fault_errors})",
        faults_by_kind(FaultKind::Kill),
        faults_by_kind(FaultKind::Pause),
        faults_by_kind(FaultKind::Partition),
        faults_by_kind(FaultKind::Wipe),
        executed.len()
    );
    if let Some(w) = &wipe_report {
        println!("  disk wipe       {}", w.describe());
    }
    println!("  keys            {}  acknowledged writes {}", verdict.keys, verdict.acknowledged);
    println!(
        "  indeterminate   present {}  absent {}",
        verdict.indeterminate_present, verdict.indeterminate_absent
    );
    println!(
        "  versions        max in a final view {}, max read during the run {max_read}, over the bound {}",
        verdict.max_versions, verdict.sibling_excess
    );
    println!(
        "  delete markers  shown in final views {}  (reads during the run that listed one: {markers_read})",
        verdict.markers_shown
    );
    println!("  lost            {}", verdict.lost);
    match &large_report {
        None => println!("  large objects   off (--large-objects 0)"),
        Some(l) => {
            println!(
                "  large objects   written {}  acknowledged {}  verified {}  lost {}  corrupt {}  \
                 ({:.1}-{:.1} MiB, {} keys, {} MiB sent)",
                l.writes,
                l.acknowledged,
                l.verified,
                l.lost,
                l.corrupt,
                args.large_size.0 as f64 / large::MIB as f64,
                args.large_size.1 as f64 / large::MIB as f64,
                l.keys,
                l.stats.bytes_written >> 20
            );
            println!(
                "                  failed {}  indeterminate {}  deleted {} (deletes {}, {} \
                 acknowledged)  reads failed {}  cut short {}  slow-downs {} (nodes: {})",
                l.failed,
                l.indeterminate,
                l.deleted,
                l.deletes,
                l.deletes_acknowledged,
                l.stats.reads_failed,
                l.cut_short,
                l.stats.slow_downs,
                l.node_chunks.slow_downs
            );
            println!(
                "                  checked: {} versions in the final views ({} unreadable), {} \
                 bodies ({} MiB), {} ranges ({} skipped); nodes: {} chunks fetched, {} blobs \
                 collected",
                l.versions_checked,
                l.unreadable,
                l.bodies_checked,
                l.bytes_checked >> 20,
                l.stats.ranges_checked,
                l.stats.ranges_skipped,
                l.node_chunks.fetched,
                l.node_chunks.blobs_collected
            );
            for e in &l.corrupt_examples {
                println!("    CORRUPT {e}");
            }
        }
    }
    println!(
        "  other           phantom {}  failed-visible {}  resurrected {}  markers-shown {}  unreadable {}",
        verdict.phantom,
        verdict.failed_visible,
        verdict.resurrected,
        verdict.markers_shown,
        verdict.unreadable
    );
    if let Some((v, collected, reclaimed)) = &after_collection {
        println!(
            "  collection      grace {} ms: {collected} tombstones collected, {reclaimed} replicas \
             reclaimed; read again after: lost {} resurrected {} phantom {} markers-shown {}",
            args.tombstone_grace_ms, v.lost, v.resurrected, v.phantom, v.markers_shown
        );
    }
    println!(
        "  converged       {} (hints drained: {hints_drained}; replicas disagree on {disagreeing} keys)",
        if converged { "yes" } else { "NO" }
    );
    if let Some(m) = &membership {
        println!(
            "  membership      {}",
            if m.completed { "both changes complete" } else { "NOT complete" }
        );
        for e in &m.events {
            println!("    {e}");
        }
    }
    for f in verdict.findings.iter().take(15) {
        println!("    {} @{} {}: {}", f.key, f.node, f.elem, f.what);
    }
    if args.lww_control {
        println!(
            "  verdict         {}",
            if passed {
                "PASS: the control run's lost writes were detected"
            } else {
                "FAIL: the lww control lost nothing the checker could see"
            }
        );
    } else {
        println!("  verdict         {}", if passed { "PASS" } else { "FAIL" });
    }
    println!(
        "  table row       | {:?} | {} | {} | {} | {} / {} / {} | {} | {} | {} |",
        args.cluster,
        if args.lww_control { "lww" } else { "siblings" },
        duration.as_secs(),
        seed,
        counts.ok,
        counts.failed,
        counts.indeterminate,
        schedule.faults.len(),
        verdict.lost,
        if passed { "pass" } else { "FAIL" }
    );
    write_record(
        &args,
        &Record {
            args: &args,
            seed,
            bucket: bucket.into(),
            schedule: Some(&schedule),
            executed: &executed,
            counts,
            client_stats: &stats,
            verdict: Some(&verdict),
            converged,
            disagreeing_keys: disagreeing,
            crash: None,
            finding_views: verdict
                .findings
                .iter()
                .filter_map(|f| views.get(&f.key).map(|v| (f.key.clone(), v.clone())))
                .collect(),
            ops: &ops,
            passed,
            wall_secs: wall.elapsed().as_secs(),
            membership: membership.as_ref(),
            wipe: wipe_report.as_ref(),
            large: large_report.as_ref(),
        },
    )?;
    if !passed {
        dump_logs(&cluster);
    }
    if !args.keep {
        cluster.stop()?;
    }
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Whether this run may wipe a disk; an error when it may not and the wipe was asked for
/// explicitly (`explicit`), false when it was only the default.
fn wipe_allowed(args: &Args, explicit: bool) -> Result<bool, Error> {
    let why = if args.membership {
        // A wiped node restarts with its founding --members, which a changed layout no longer
        // matches.
        Some("--membership (a wiped node would restart with its founding members)")
    } else if args.lww_control {
        Some("--lww-control (the control run's losses are the point; keep its faults as they were)")
    } else if args.anti_entropy_interval_ms == 0 {
        Some("--anti-entropy-interval-ms 0 (nothing would restore the wiped disk)")
    } else {
        None
    };
    match why {
        None => Ok(true),
        Some(why) if explicit => Err(Error::Setup(format!("no disk wipe with {why}"))),
        Some(_) => Ok(false),
    }
}

fn write_record(args: &Args, record: &Record<'_>) -> Result<(), Error> {
    let path = args.out.clone().unwrap_or_else(|| {
        args.work_dir.join(
            format!(
                "record-{:?}-{:?}-{}{}{}.json",
                args.mode,
                args.cluster,
                record.seed,
                if args.lww_control { "-lww" } else { "" },
                if args.membership { "-membership" } else { "" }
            )
            .to_lowercase(),
        )
    });
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let text = serde_json::to_string(record)
        .map_err(|e| Error::Setup(format!("encoding the record: {e}")))?;
    std::fs::write(&path, text).map_err(|e| Error::Setup(format!("{}: {e}", path.display())))?;
    eprintln!("run record (seed, schedule, settings, results): {}", path.display());
    Ok(())
}

/// Time after the grace that the last tombstones get to be collected (scans every grace/4,
/// rounds, the read-back's own repairs).
const COLLECTION_SLACK: Duration = Duration::from_secs(10);

/// `--large-objects`: 0 ..= [`large::MAX_LARGE_OBJECTS`].
fn parse_large_objects(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("{s:?} is not a count"))?;
    if n > large::MAX_LARGE_OBJECTS {
        return Err(format!("at most {} large-object operations", large::MAX_LARGE_OBJECTS));
    }
    Ok(n)
}

/// `--tombstone-grace` for `ms` milliseconds (0: off).
fn grace_flag(ms: u64) -> String {
    if ms == 0 { "off".to_string() } else { format!("{ms}ms") }
}
