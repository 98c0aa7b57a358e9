//! `cairn dev-cluster`: a local cluster of real `cairn node` processes on 127.0.0.1.
//!
//! Node i (from 1) is `n<i>`, serves HTTP on `--http-port-base + i - 1` and libp2p on
//! `--p2p-port-base + i - 1`, keeps its data in `<data-dir>/n<i>` and its log in
//! `<data-dir>/n<i>.log`. The cluster secret is generated once into `<data-dir>/cluster.secret`.
//! Nothing is restarted behind the user's back: a node that exits is reported and stays down.
//! Ctrl-C or SIGTERM stops every node (SIGTERM, by PID) and waits for them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Longest wait for every node to see every other at start.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a node to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Arguments of `cairn dev-cluster`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Number of nodes (at least 3 for N=3).
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Directory for the nodes' data, logs and the cluster secret.
    #[arg(long, default_value = ".dev-cluster")]
    data_dir: PathBuf,
    /// HTTP port of node 1; node i listens on base + i - 1.
    #[arg(long, default_value_t = 8081)]
    http_port_base: u16,
    /// libp2p port of node 1; node i listens on base + i - 1.
    #[arg(long, default_value_t = 7081)]
    p2p_port_base: u16,
    /// Sync policy of every node: always | interval:MS | never.
    #[arg(long, default_value = "always")]
    sync: String,
    /// Replicas per object (N), read quorum (R), write quorum (W).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Read quorum.
    #[arg(long, default_value_t = 2)]
    read_quorum: usize,
    /// Write quorum.
    #[arg(long, default_value_t = 2)]
    write_quorum: usize,
    /// Extra flags passed to every `cairn node` (e.g. `--node-arg=--heartbeat-ms=200`).
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
}

struct Running {
    id: String,
    child: Child,
    exited: bool,
}

/// Runs the command.
pub fn run(args: Args) -> Result<ExitCode> {
    if args.nodes == 0 || args.nodes > 64 {
        eprintln!("error: --nodes must be between 1 and 64");
        return Ok(ExitCode::from(2));
    }
    let exe = std::env::current_exe().context("locating the cairn binary")?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let secret_path = args.data_dir.join("cluster.secret");
    if !secret_path.exists() {
        let key: [u8; 32] = rand::random();
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        write_private(&secret_path, &hex)?;
    }
    let ids: Vec<String> = (1..=args.nodes).map(|i| format!("n{i}")).collect();
    let port = |base: u16, i: usize| -> Result<u16> {
        base.checked_add(i as u16).context("port out of range")
    };
    let p2p: Vec<String> = (0..args.nodes)
        .map(|i| Ok(format!("/ip4/127.0.0.1/tcp/{}", port(args.p2p_port_base, i)?)))
        .collect::<Result<_>>()?;
    let http: Vec<String> = (0..args.nodes)
        .map(|i| Ok(format!("127.0.0.1:{}", port(args.http_port_base, i)?)))
        .collect::<Result<_>>()?;

    let mut nodes = Vec::new();
    for i in 0..args.nodes {
        let id = &ids[i];
        let log_path = args.data_dir.join(format!("{id}.log"));
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let err = log.try_clone().context("duplicating the log handle")?;
        let bootstrap: Vec<&str> =
            p2p.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, a)| a.as_str()).collect();
        let child = Command::new(&exe)
            .arg("node")
            .args(["--id", id])
            .arg("--data-dir")
            .arg(args.data_dir.join(id))
            .args(["--http", &http[i], "--p2p", &p2p[i]])
            .args(["--bootstrap", &bootstrap.join(",")])
            .args(["--members", &ids.join(",")])
            .arg("--secret-file")
            .arg(&secret_path)
            .args(["--sync", &args.sync])
            .args(["--replicas", &args.replicas.to_string()])
            .args(["--read-quorum", &args.read_quorum.to_string()])
            .args(["--write-quorum", &args.write_quorum.to_string()])
            .args(&args.node_args)
            .env_remove("CAIRN_CONFIG")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting node {id}"))?;
        println!(
            "started {id} (pid {}): http://{}  p2p {}  log {}",
            child.id(),
            http[i],
            p2p[i],
            log_path.display()
        );
        nodes.push(Running { id: id.clone(), child, exited: false });
    }

    let stop = stop_flag()?;
    println!("waiting for every node to see the others ...");
    let ready = wait_ready(&http, &mut nodes, &stop);
    match ready {
        Ok(elapsed) => {
            println!(
                "cluster ready in {:.1}s: {} nodes, N={} R={} W={}, sync {}",
                elapsed.as_secs_f64(),
                args.nodes,
                args.replicas,
                args.read_quorum,
                args.write_quorum,
                args.sync
            );
            println!();
            println!("try it:");
            println!("  curl -X POST http://{}/buckets/photos", http[0]);
            println!(
                "  curl -F file_content=@README.md http://{}/buckets/photos/files",
                http[1 % http.len()]
            );
            println!("  curl -i http://{}/buckets/photos/README.md", http[2 % http.len()]);
            println!("  curl http://{}/cluster", http[0]);
            println!();
            println!("Ctrl-C stops every node.");
        }
        Err(e) => eprintln!("warning: {e:#} (the nodes keep running; see their logs)"),
    }
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        check_exits(&mut nodes);
        if nodes.iter().all(|n| n.exited) {
            eprintln!("every node has exited");
            return Ok(ExitCode::from(1));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("stopping {} nodes ...", nodes.len());
    stop_all(&mut nodes);
    Ok(ExitCode::SUCCESS)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// A flag set by SIGINT or SIGTERM, from a small signal-watching runtime thread.
fn stop_flag() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = std::sync::Arc::clone(&flag);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        rt.block_on(async move {
            let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
            match term {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            f.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    })?;
    Ok(flag)
}

fn check_exits(nodes: &mut [Running]) {
    for n in nodes.iter_mut().filter(|n| !n.exited) {
        if let Ok(Some(status)) = n.child.try_wait() {
            n.exited = true;
            eprintln!("node {} exited ({status}); it is not restarted", n.id);
        }
    }
}

/// Polls every node's `/cluster` until each sees every member up.
fn wait_ready(
    http: &[String],
    nodes: &mut [Running],
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < READY_TIMEOUT {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            anyhow::bail!("interrupted");
        }
        check_exits(nodes);
        let all = http.iter().all(|h| {
            crate::cmd::http::get_json(h, "/cluster").is_ok_and(|v| {
                v["members"].as_array().is_some_and(|ms| {
                    ms.len() == http.len() && ms.iter().all(|m| m["status"] == "up")
                })
            })
        });
        if all {
            return Ok(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    anyhow::bail!("not every node saw every other within {READY_TIMEOUT:?}")
}

fn stop_all(nodes: &mut [Running]) {
    for n in nodes.iter().filter(|n| !n.exited) {
        let _ = Command::new("kill").args(["-TERM", &n.child.id().to_string()]).status();
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    for n in nodes.iter_mut() {
        loop {
            match n.child.try_wait() {
                Ok(Some(status)) => {
                    println!("{} stopped ({status})", n.id);
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => {
                    eprintln!("{} did not stop in time; killing it", n.id);
                    let _ = n.child.kill();
                    let _ = n.child.wait();
                    break;
                }
            }
        }
    }
}
