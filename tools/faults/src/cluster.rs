//! The clusters the harness drives: local `cairn node` processes on 127.0.0.1, or the Docker
//! Compose cluster of `deploy/docker-compose.yml`.
//!
//! Both expose the same faults by node index. Processes are signalled by the PID this harness
//! started (`kill -KILL/-STOP/-CONT/-TERM <pid>`), containers by the id compose gives for the
//! service in this harness's own project; nothing is ever stopped by name pattern. Every node
//! remembers which faults are in force so that [`Cluster::heal`] undoes exactly those.
//!
//! Partitions exist only with Docker (`docker network disconnect` / `connect --ip`): on loopback
//! there is no safe way to cut one process from the others without root-wide firewall rules that
//! would touch every other program on the machine, so local runs use kill and pause only.
//!
//! A disk wipe ([`Cluster::wipe`]) kills the node with SIGKILL and deletes what holds its data:
//! locally its `--data-dir` under the run directory; in Docker the container itself (its
//! writable layer) and the named volume mounted on its data directory, which the next
//! [`Cluster::restart`] creates afresh with `compose up --no-deps` of that one service (the same
//! id, environment and address; the image's empty `/data` is copied into the new volume).

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// PIDs of the node processes this harness started and has not reaped yet, and the compose
/// project it brought up (its `down` command), for [`emergency_stop`] when the harness is
/// interrupted while the cluster belongs to another thread. Written by the cluster code, read by
/// the signal handler in `main`; a plain mutex because both sides are synchronous and brief.
static STARTED: Mutex<(Vec<u32>, Option<Vec<String>>)> = Mutex::new((Vec::new(), None));

fn started() -> std::sync::MutexGuard<'static, (Vec<u32>, Option<Vec<String>>)> {
    STARTED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Stops what the harness started, for an interrupted run: SIGKILL to every node process it
/// spawned and has not reaped (by PID), `compose down -v` for its compose project.
pub fn emergency_stop() {
    let (pids, down) = {
        let mut g = started();
        (std::mem::take(&mut g.0), g.1.take())
    };
    for pid in pids {
        let _ = signal(pid, "-KILL");
    }
    if let Some(cmd) = down
        && let Some((prog, args)) = cmd.split_first()
    {
        let _ = run(Command::new(prog).args(args));
    }
}

/// Heartbeat interval of local nodes, in milliseconds (faster failure detection than 1 s).
pub const LOCAL_HEARTBEAT_MS: u64 = 200;
/// Longest wait for a node to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a `docker` / `docker-compose` command may run.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(180);
/// Where the node in the image keeps its data (the Dockerfile's `CAIRN_DATA_DIR`).
const DOCKER_DATA_DIR: &str = "/data";

/// State of one node as the harness left it.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
struct Faults {
    killed: bool,
    paused: bool,
    disconnected: bool,
    /// Killed and its data deleted: the restart starts it on an empty disk (in Docker a new
    /// container and volume).
    wiped: bool,
}

/// A cluster under test.
pub enum Cluster {
    /// Local processes.
    Local(Local),
    /// Docker Compose containers.
    Docker(Docker),
}

/// Local `cairn node` processes.
pub struct Local {
    bin: PathBuf,
    dir: PathBuf,
    ids: Vec<String>,
    http: Vec<String>,
    p2p: Vec<String>,
    extra: Vec<String>,
    procs: Vec<Option<Child>>,
    faults: Vec<Faults>,
    /// Nodes `0..founders` start with `--members`; the others without (they join when added).
    founders: usize,
}

/// A Docker Compose project.
pub struct Docker {
    compose_file: PathBuf,
    /// More compose files layered on top (the spare node of `--membership`).
    overlays: Vec<PathBuf>,
    project: String,
    containers: Vec<String>,
    http: Vec<String>,
    ips: Vec<String>,
    network: String,
    secret: String,
    faults: Vec<Faults>,
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::Setup(format!("port: {e}")))?;
    Ok(l.local_addr().map_err(|e| Error::Setup(format!("port: {e}")))?.port())
}

/// Sends `sig` (e.g. `-KILL`) to `pid` with kill(1).
fn signal(pid: u32, sig: &str) -> Result<()> {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map_err(|e| Error::Fault(format!("kill {sig} {pid}: {e}")))?;
    if ok.success() { Ok(()) } else { Err(Error::Fault(format!("kill {sig} {pid} failed"))) }
}

/// Runs a command to completion within [`DOCKER_TIMEOUT`], returning its stdout.
fn run(cmd: &mut Command) -> Result<String> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Fault(format!("{what}: {e}")))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() > DOCKER_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Fault(format!("{what}: timed out")));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(Error::Fault(format!("{what}: {e}"))),
        }
    }
    let out = child.wait_with_output().map_err(|e| Error::Fault(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Fault(format!(
            "{what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Local {
    /// Prepares (does not start) `n` nodes with data under `dir`, using the `cairn` binary `bin`
    /// and `extra` flags for every node.
    pub fn new(bin: &Path, dir: &Path, n: usize, extra: &[String]) -> Result<Local> {
        Local::with_spares(bin, dir, n, 0, extra)
    }

    /// `founders` members and `spares` nodes started without `--members` (gateways until an
    /// operator adds them).
    pub fn with_spares(
        bin: &Path,
        dir: &Path,
        founders: usize,
        spares: usize,
        extra: &[String],
    ) -> Result<Local> {
        let n = founders + spares;
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Setup(format!("{}: {e}", dir.display())))?;
        std::fs::write(dir.join("secret"), "fault harness cluster secret, local only")
            .map_err(|e| Error::Setup(format!("secret: {e}")))?;
        let ids: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let http =
            (0..n).map(|_| Ok(format!("127.0.0.1:{}", free_port()?))).collect::<Result<_>>()?;
        let p2p = (0..n)
            .map(|_| Ok(format!("/ip4/127.0.0.1/tcp/{}", free_port()?)))
            .collect::<Result<_>>()?;
        Ok(Local {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            ids,
            http,
            p2p,
            extra: extra.to_vec(),
            procs: (0..n).map(|_| None).collect(),
            faults: vec![Faults::default(); n],
            founders,
        })
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", self.ids[i])))
            .map_err(|e| Error::Setup(format!("log: {e}")))?;
        let log2 = log.try_clone().map_err(|e| Error::Setup(format!("log: {e}")))?;
        let bootstrap: Vec<&str> =
            self.p2p.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, a)| a.as_str()).collect();
        let child = Command::new(&self.bin)
            .arg("node")
            .args(["--id", &self.ids[i]])
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .args(["--http", &self.http[i], "--p2p", &self.p2p[i]])
            .args(["--bootstrap", &bootstrap.join(",")])
            .args(if i < self.founders {
                vec!["--members".to_owned(), self.ids[..self.founders].join(",")]
            } else {
                Vec::new()
            })
            .arg("--secret-file")
            .arg(self.dir.join("secret"))
            .args(["--heartbeat-ms", &LOCAL_HEARTBEAT_MS.to_string()])
            .args(&self.extra)
            .env("CAIRN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| Error::Setup(format!("starting {}: {e}", self.bin.display())))?;
        started().0.push(child.id());
        self.procs[i] = Some(child);
        Ok(())
    }

    fn pid(&self, i: usize) -> Result<u32> {
        self.procs[i]
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| Error::Fault(format!("{} is not running", self.ids[i])))
    }

    fn kill9(&mut self, i: usize) -> Result<()> {
        if self.faults[i].paused {
            // A stopped process dies of SIGKILL as well; it is simply no longer paused.
            self.faults[i].paused = false;
        }
        signal(self.pid(i)?, "-KILL")?;
        if let Some(mut c) = self.procs[i].take() {
            let _ = c.wait();
            started().0.retain(|p| *p != c.id());
        }
        self.faults[i].killed = true;
        Ok(())
    }

    /// Node i's data directory.
    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(&self.ids[i])
    }

    /// `kill -9` node i and delete its data directory (the node stays down until restarted).
    fn wipe(&mut self, i: usize) -> Result<()> {
        self.kill9(i)?;
        let dir = self.data_dir(i);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Fault(format!("deleting {}: {e}", dir.display()))),
        }
        self.faults[i].wiped = true;
        Ok(())
    }

    fn stop_all(&mut self) {
        for i in 0..self.procs.len() {
            if self.faults[i].paused
                && let Ok(pid) = self.pid(i)
            {
                let _ = signal(pid, "-CONT");
            }
            if let Ok(pid) = self.pid(i) {
                let _ = signal(pid, "-TERM");
            }
        }
        let start = Instant::now();
        for slot in &mut self.procs {
            if let Some(mut c) = slot.take() {
                while start.elapsed() < STOP_TIMEOUT {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
                started().0.retain(|p| *p != c.id());
            }
        }
    }

    /// The last `lines` lines of node i's log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join(format!("{}.log", self.ids[i])))
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.stop_all();
    }
}

impl Docker {
    /// Describes the compose project (does not start it). `http` are the published addresses
    /// of n1..nN on 127.0.0.1, `ips` their fixed addresses on the compose network `network`.
    pub fn new(compose_file: &Path, project: &str, secret: &str) -> Docker {
        Docker::with_overlays(compose_file, &[], 4, project, secret)
    }

    /// `n` nodes from `compose_file` plus `overlays` (each adds services n5.. with HTTP on
    /// 127.0.0.1:8085.. and address 10.77.0.15..).
    pub fn with_overlays(
        compose_file: &Path,
        overlays: &[PathBuf],
        n: usize,
        project: &str,
        secret: &str,
    ) -> Docker {
        Docker {
            overlays: overlays.to_vec(),
            compose_file: compose_file.to_path_buf(),
            project: project.to_string(),
            containers: Vec::new(),
            http: (1..=n).map(|i| format!("127.0.0.1:{}", 8080 + i)).collect(),
            ips: (1..=n).map(|i| format!("10.77.0.{}", 10 + i)).collect(),
            network: format!("{project}_cairn"),
            secret: secret.to_string(),
            faults: vec![Faults::default(); n],
        }
    }

    fn compose(&self) -> Command {
        // docker-compose 1.x where installed (this machine), else the `docker compose` plugin.
        let v1 = Command::new("docker-compose")
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let mut c = if v1 {
            Command::new("docker-compose")
        } else {
            let mut c = Command::new("docker");
            c.arg("compose");
            c
        };
        c.arg("-p").arg(&self.project).arg("-f").arg(&self.compose_file);
        for o in &self.overlays {
            c.arg("-f").arg(o);
        }
        c.env("CAIRN_CLUSTER_SECRET", &self.secret);
        c
    }

    fn docker(args: &[&str]) -> Result<String> {
        run(Command::new("docker").args(args))
    }

    /// The compose service of node i.
    fn service(i: usize) -> String {
        format!("n{}", i + 1)
    }

    /// Node i's container id, as compose reports it for its service.
    fn container_of(&self, i: usize) -> Result<String> {
        let id = run(self.compose().args(["ps", "-q", &Docker::service(i)]))?;
        if id.is_empty() {
            return Err(Error::Fault(format!(
                "compose service {} has no container",
                Docker::service(i)
            )));
        }
        Ok(id)
    }

    /// `kill -9` node i, then delete its disk: the container (with its writable layer and any
    /// anonymous volume) and the named volume on [`DOCKER_DATA_DIR`]. A bind mount there is
    /// refused before anything is killed: the harness does not delete host directories.
    fn wipe(&mut self, i: usize) -> Result<()> {
        let c = self.containers[i].clone();
        // One mount per line: type, name (volumes only), destination.
        let mounts = Docker::docker(&[
            "inspect",
            "-f",
            "{{range .Mounts}}{{.Type}} {{.Name}} {{.Destination}}{{println}}{{end}}",
            &c,
        ])?;
        let mut volume = None;
        for line in mounts.lines() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                ["volume", name, dest] if *dest == DOCKER_DATA_DIR => {
                    volume = Some(name.to_string())
                }
                [kind, .., dest] if *dest == DOCKER_DATA_DIR => {
                    return Err(Error::Fault(format!(
                        "{}: {DOCKER_DATA_DIR} is a {kind} mount, not a volume: not wiped",
                        Docker::service(i)
                    )));
                }
                _ => {}
            }
        }
        if self.faults[i].paused {
            Docker::docker(&["unpause", &c])?;
            self.faults[i].paused = false;
        }
        Docker::docker(&["kill", "-s", "KILL", &c])?;
        self.faults[i].killed = true;
        Docker::docker(&["rm", "-f", "-v", &c])?;
        self.faults[i].wiped = true;
        // Removed with the container: no longer on the network either.
        self.faults[i].disconnected = false;
        if let Some(v) = volume {
            Docker::docker(&["volume", "rm", &v])?;
        }
        Ok(())
    }

    /// Starts node i's service again after a wipe: compose creates its container and its volume
    /// anew (same id, environment, address), and the harness follows the new container id.
    fn recreate(&mut self, i: usize) -> Result<()> {
        run(self.compose().args(["up", "-d", "--no-deps", &Docker::service(i)]))?;
        self.containers[i] = self.container_of(i)?;
        Ok(())
    }
}

/// Writes a compose file that sets `env` on the services `n1..n{services}`, to be layered on
/// the cluster's compose files (`Docker::with_overlays`): how the harness gives every node of a
/// run settings the deployment's files leave to their defaults, without editing them.
pub fn write_env_overlay(path: &Path, services: usize, env: &[(&str, &str)]) -> Result<()> {
    let mut text = String::from(
        "# Written by cairn-faults for its runs: settings of every node, layered on the\n\
         # cluster's compose files. Rewritten at each Docker run.\n\
         version: \"2.4\"\nservices:\n",
    );
    for i in 1..=services {
        text.push_str(&format!("  n{i}:\n    environment:\n"));
        for (k, v) in env {
            // A JSON string is a YAML double-quoted scalar.
            let quoted = serde_json::Value::String((*v).to_string()).to_string();
            text.push_str(&format!("      {k}: {quoted}\n"));
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Setup(format!("{}: {e}", dir.display())))?;
    }
    std::fs::write(path, text).map_err(|e| Error::Setup(format!("{}: {e}", path.display())))
}

impl Cluster {
    /// HTTP addresses (`IP:PORT`) of the nodes, reachable from this machine.
    pub fn http(&self) -> &[String] {
        match self {
            Cluster::Local(l) => &l.http,
            Cluster::Docker(d) => &d.http,
        }
    }

    /// Node ids (`n1`..).
    pub fn ids(&self) -> Vec<String> {
        (1..=self.http().len()).map(|i| format!("n{i}")).collect()
    }

    /// Starts every node.
    pub fn start(&mut self) -> Result<()> {
        match self {
            Cluster::Local(l) => {
                for i in 0..l.ids.len() {
                    l.spawn(i)?;
                }
                Ok(())
            }
            Cluster::Docker(d) => {
                // One run per compose project: a second harness would recreate the containers
                // under the first one (another secret, so another config) and break both.
                let running = run(d.compose().args(["ps", "-q"]))?;
                if !running.is_empty() {
                    return Err(Error::Setup(format!(
                        "compose project {} already has containers (another run? one Docker run at a time: \
                         the ports 8081-8084 are fixed); stop it with `docker-compose -p {} -f {} \
                         down -v`",
                        d.project,
                        d.project,
                        d.compose_file.display()
                    )));
                }
                let c = d.compose();
                let mut down: Vec<String> = std::iter::once(c.get_program())
                    .chain(c.get_args())
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                down.extend(["down", "-v", "--timeout", "10"].map(String::from));
                started().1 = Some(down);
                run(d.compose().args(["up", "-d"]))?;
                d.containers = (0..d.http.len())
                    .map(|i| d.container_of(i))
                    .collect::<Result<_>>()
                    .map_err(|e| Error::Setup(e.to_string()))?;
                Ok(())
            }
        }
    }

    /// Whether the cluster can cut nodes off the network.
    pub fn can_partition(&self) -> bool {
        matches!(self, Cluster::Docker(_))
    }

    fn faults_mut(&mut self, i: usize) -> &mut Faults {
        match self {
            Cluster::Local(l) => &mut l.faults[i],
            Cluster::Docker(d) => &mut d.faults[i],
        }
    }

    /// `kill -9` node i (it stays down until [`Cluster::restart`]).
    pub fn kill9(&mut self, i: usize) -> Result<()> {
        match self {
            Cluster::Local(l) => l.kill9(i),
            Cluster::Docker(d) => {
                if d.faults[i].paused {
                    Docker::docker(&["unpause", &d.containers[i]])?;
                    d.faults[i].paused = false;
                }
                Docker::docker(&["kill", "-s", "KILL", &d.containers[i]])?;
                d.faults[i].killed = true;
                Ok(())
            }
        }
    }

    /// `kill -9` node i and delete its data (it stays down until [`Cluster::restart`], which
    /// starts it with the same id and flags on an empty disk).
    pub fn wipe(&mut self, i: usize) -> Result<()> {
        match self {
            Cluster::Local(l) => l.wipe(i),
            Cluster::Docker(d) => d.wipe(i),
        }
    }

    /// Starts node i again on its data (after a wipe: on an empty disk).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        match self {
            Cluster::Local(l) => l.spawn(i)?,
            Cluster::Docker(d) if d.faults[i].wiped => d.recreate(i)?,
            Cluster::Docker(d) => {
                Docker::docker(&["start", &d.containers[i]])?;
            }
        }
        let f = self.faults_mut(i);
        f.killed = false;
        f.wiped = false;
        Ok(())
    }

    /// SIGSTOP / docker pause.
    pub fn pause(&mut self, i: usize) -> Result<()> {
        match self {
            Cluster::Local(l) => signal(l.pid(i)?, "-STOP")?,
            Cluster::Docker(d) => {
                Docker::docker(&["pause", &d.containers[i]])?;
            }
        }
        self.faults_mut(i).paused = true;
        Ok(())
    }

    /// SIGCONT / docker unpause.
    pub fn resume(&mut self, i: usize) -> Result<()> {
        match self {
            Cluster::Local(l) => signal(l.pid(i)?, "-CONT")?,
            Cluster::Docker(d) => {
                Docker::docker(&["unpause", &d.containers[i]])?;
            }
        }
        self.faults_mut(i).paused = false;
        Ok(())
    }

    /// Cuts node i off the cluster network (Docker only).
    pub fn disconnect(&mut self, i: usize) -> Result<()> {
        match self {
            Cluster::Local(_) => {
                return Err(Error::Fault("partitions need --cluster docker".into()));
            }
            Cluster::Docker(d) => {
                Docker::docker(&["network", "disconnect", &d.network, &d.containers[i]])?;
            }
        }
        self.faults_mut(i).disconnected = true;
        Ok(())
    }

    /// Reconnects node i with its fixed address (Docker only).
    pub fn connect(&mut self, i: usize) -> Result<()> {
        match self {
            Cluster::Local(_) => {
                return Err(Error::Fault("partitions need --cluster docker".into()));
            }
            Cluster::Docker(d) => {
                Docker::docker(&[
                    "network",
                    "connect",
                    "--ip",
                    &d.ips[i],
                    &d.network,
                    &d.containers[i],
                ])?;
            }
        }
        self.faults_mut(i).disconnected = false;
        Ok(())
    }

    /// Undoes every fault in force; returns the errors met (each undo is tried).
    pub fn heal(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        for i in 0..self.http().len() {
            let f = *self.faults_mut(i);
            if f.paused
                && let Err(e) = self.resume(i)
            {
                errors.push(e.to_string());
            }
            if f.disconnected
                && let Err(e) = self.connect(i)
            {
                errors.push(e.to_string());
            }
            if f.killed
                && let Err(e) = self.restart(i)
            {
                errors.push(e.to_string());
            }
        }
        errors
    }

    /// Stops everything the harness started (local: SIGTERM by PID; Docker: `compose down -v`).
    pub fn stop(&mut self) -> Result<()> {
        self.heal();
        match self {
            Cluster::Local(l) => {
                l.stop_all();
                Ok(())
            }
            Cluster::Docker(d) => {
                run(d.compose().args(["down", "-v", "--timeout", "10"])).map(drop)
            }
        }
    }

    /// The tail of node i's log (local: its log file; Docker: `docker logs`).
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        match self {
            Cluster::Local(l) => l.log_tail(i, lines),
            Cluster::Docker(d) => d
                .containers
                .get(i)
                .and_then(|c| {
                    // The node logs to stderr, which `docker logs` replays on its own stderr.
                    Command::new("docker")
                        .args(["logs", "--tail", &lines.to_string(), c])
                        .output()
                        .ok()
                })
                .map(|o| {
                    let mut text = String::from_utf8_lossy(&o.stdout).to_string();
                    text.push_str(&String::from_utf8_lossy(&o.stderr));
                    text
                })
                .unwrap_or_default(),
        }
    }
}
