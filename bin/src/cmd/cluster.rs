//! `cairn cluster`: look at and change the member set of a running cluster through any node's
//! admin API (`GET /cluster`, `POST` / `DELETE /cluster/members/{id}`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cmd::http;
use crate::progress::Progress;

/// Flags of `cairn cluster`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Show the layout (members, the change in progress) and the handoff progress.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print the node's whole JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Add a node: it must be running (started without --members, with the cluster's secret
    /// and a --bootstrap address) and connected. The partitions it gains are copied to it while
    /// the cluster keeps serving.
    Add {
        /// The node's id.
        id: String,
        #[command(flatten)]
        target: Target,
        /// Wait until the data has moved and the change is complete, with a progress bar.
        #[arg(long)]
        wait: bool,
    },
    /// Remove a member: by default decommission it (its partitions stream to their new owners;
    /// once done it leaves the layout and can be stopped with nothing lost). With --force,
    /// remove a node that is gone for good: its partitions are rebuilt from the survivors.
    Remove {
        /// The node's id.
        id: String,
        /// The node is gone for good (a dead disk or VM); do not wait for its data.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        target: Target,
        /// Wait until the data has moved and the change is complete, with a progress bar.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(clap::Args, Debug)]
struct Target {
    /// Any node's REST API, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "CAIRN_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Longest wait with --wait, e.g. 30m, 2h [default: no limit].
    #[arg(long)]
    timeout: Option<String>,
}

impl Target {
    fn addr(&self) -> Result<String> {
        let rest = self
            .url
            .strip_prefix("http://")
            .with_context(|| format!("--url {}: only http:// URLs are supported", self.url))?;
        Ok(rest.trim_end_matches('/').to_owned())
    }

    fn deadline(&self) -> Result<Option<Instant>> {
        match &self.timeout {
            None => Ok(None),
            Some(t) => {
                let d = crate::cmd::bench::parse_duration(t)
                    .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
                Ok(Some(Instant::now() + d))
            }
        }
    }
}

/// Runs the command.
pub fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        Sub::Status { target, json } => {
            let view = cluster(&target.addr()?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print_status(&view);
            }
            Ok(ExitCode::SUCCESS)
        }
        Sub::Add { id, target, wait } => change("POST", &id, false, &target, wait),
        Sub::Remove { id, force, target, wait } => change("DELETE", &id, force, &target, wait),
    }
}

fn cluster(addr: &str) -> Result<Value> {
    let (status, body) = http::get(addr, "/cluster")?;
    let v: Value = serde_json::from_slice(&body).context("GET /cluster: the answer is not JSON")?;
    if status != 200 {
        bail!("GET /cluster answered {status}: {}", error_message(&v));
    }
    Ok(v)
}

fn error_message(v: &Value) -> String {
    v["error"]["message"].as_str().map_or_else(|| v.to_string(), str::to_owned)
}

fn change(method: &str, id: &str, force: bool, target: &Target, wait: bool) -> Result<ExitCode> {
    let addr = target.addr()?;
    let deadline = target.deadline()?;
    let path = if force {
        format!("/cluster/members/{id}?force=true")
    } else {
        format!("/cluster/members/{id}")
    };
    let (status, body) = http::request(method, &addr, &path, Duration::from_secs(60))?;
    let v: Value = serde_json::from_slice(&body).context("the answer is not JSON")?;
    if status != 202 {
        eprintln!(
            "cairn cluster: {} ({status} {})",
            error_message(&v),
            v["error"]["code"].as_str().unwrap_or("")
        );
        return Ok(ExitCode::FAILURE);
    }
    let version = v["layout_version"].as_u64().unwrap_or(0);
    println!(
        "{}: committed as layout version {version}; {} partition replicas to move (minimum {})",
        v["change"].as_str().unwrap_or("change"),
        v["partitions_to_move"],
        v["minimum_moves"],
    );
    if !wait {
        println!("the data moves in the background: `cairn cluster status --url {}`", target.url);
        return Ok(ExitCode::SUCCESS);
    }
    // The change is complete at version + 2 (see docs/operations.md).
    let mut bar = Progress::new("handoff");
    let started = Instant::now();
    loop {
        if deadline.is_some_and(|d| Instant::now() > d) {
            bar.finish();
            eprintln!("cairn cluster: --timeout reached; the change goes on in the background");
            return Ok(ExitCode::FAILURE);
        }
        match cluster(&addr) {
            Ok(view) => {
                let layout = &view["layout"];
                let current = layout["version"].as_u64().unwrap_or(0);
                if current >= version + 2 && layout["transition"].is_null() {
                    bar.finish();
                    let h = &view["handoff"];
                    println!(
                        "complete in {:.1} s: layout version {current}, {} objects ({}) moved",
                        started.elapsed().as_secs_f64(),
                        h["keys_moved"],
                        crate::progress::human_bytes(h["bytes_moved"].as_u64().unwrap_or(0)),
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                // This change's progress only (a node's last finished sync may be an older one).
                let (mut done, mut total, mut bytes) = (0, 0, 0);
                for n in view["handoff"]["per_node"].as_array().into_iter().flatten() {
                    let s = &n["sync"];
                    if s["started"].as_u64() == Some(version) {
                        let d = s["partitions_done"].as_u64().unwrap_or(0);
                        done += d;
                        total += d + s["partitions_pending"].as_u64().unwrap_or(0);
                        bytes += s["bytes_moved"].as_u64().unwrap_or(0);
                    }
                }
                bar.update_count(done, total.max(1), bytes);
            }
            Err(e) => eprintln!("cairn cluster: {e:#}; retrying"),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn print_status(v: &Value) {
    let layout = &v["layout"];
    if layout.is_null() {
        println!("layout: none yet (this node has not learnt the cluster's layout)");
    } else {
        let members: Vec<&str> = layout["members"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        println!("layout version {}: members {}", layout["version"], members.join(", "));
        let t = &layout["transition"];
        if t.is_null() {
            println!("no change in progress");
        } else {
            println!(
                "change in progress: {} (phase {}, {} partition replicas to move, minimum {})",
                t["change"].as_str().unwrap_or("?"),
                t["phase"].as_str().unwrap_or("?"),
                t["partitions_to_move"],
                t["minimum_moves"],
            );
        }
    }
    println!(
        "{:<12} {:<9} {:<8} {:>9} {:>9}  hints",
        "node", "role", "status", "primary", "replica"
    );
    for m in v["members"].as_array().into_iter().flatten() {
        println!(
            "{:<12} {:<9} {:<8} {:>9} {:>9}  {}",
            m["id"].as_str().unwrap_or("?"),
            m["role"].as_str().unwrap_or("?"),
            m["status"].as_str().unwrap_or("?"),
            m["partitions_primary"].as_u64().unwrap_or(0),
            m["partitions_replica"].as_u64().unwrap_or(0),
            m["hints_pending_here"].as_u64().unwrap_or(0),
        );
    }
    let h = &v["handoff"];
    println!(
        "handoff: {} partitions pending, {} done, {} objects ({}) moved",
        h["partitions_pending"],
        h["partitions_done"],
        h["keys_moved"],
        crate::progress::human_bytes(h["bytes_moved"].as_u64().unwrap_or(0)),
    );
}
