//! A cluster of real `cairn node` processes on 127.0.0.1 for integration tests: start, kill -9,
//! SIGSTOP/SIGCONT, restart, and small HTTP helpers. Processes are stopped by the PID this
//! harness started, and killed when the harness is dropped.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Cluster tests run one at a time: several 4-node clusters at once on 2 cores would make
/// heartbeats late and the failure detector (rightly) suspicious.
static SERIAL: Mutex<()> = Mutex::new(());

/// Heartbeat interval used by test clusters (faster failure detection than the 1 s default).
pub const HEARTBEAT_MS: u64 = 200;

pub struct Cluster {
    _serial: MutexGuard<'static, ()>,
    pub dir: tempfile::TempDir,
    pub ids: Vec<String>,
    pub http: Vec<String>,
    pub p2p: Vec<String>,
    procs: Vec<Option<Child>>,
    pub client: reqwest::Client,
    extra: Vec<String>,
    /// Nodes `0..founders` start with `--members` (the first layout); the others start
    /// without it and join when added.
    founders: usize,
}

/// `count` distinct free ports. Every listener is held until all ports are chosen: a port freed at
/// once can be handed out again by the next `bind(0)`.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..count).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

impl Cluster {
    /// Starts `n` nodes and waits until each sees every other up.
    pub async fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with_spares(n, 0, extra).await
    }

    /// Starts `founders` members and `spares` nodes started without `--members` (gateways
    /// until added), and waits until each sees every other up.
    pub async fn start_with_spares(founders: usize, spares: usize, extra: &[&str]) -> Cluster {
        let n = founders + spares;
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "test cluster secret, not for production")
            .unwrap();
        let ids: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let ports = free_ports(2 * n);
        let http = ports[..n].iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let p2p = ports[n..].iter().map(|p| format!("/ip4/127.0.0.1/tcp/{p}")).collect();
        let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
        let mut c = Cluster {
            _serial: serial,
            dir,
            ids,
            http,
            p2p,
            procs: (0..n).map(|_| None).collect(),
            client,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            founders,
        };
        for i in 0..n {
            c.spawn(i);
        }
        c.wait_all_up().await;
        c
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.ids[i])
    }

    fn spawn(&mut self, i: usize) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", self.ids[i])))
            .unwrap();
        let bootstrap: Vec<&str> =
            self.p2p.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, a)| a.as_str()).collect();
        let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
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
            .arg(self.dir.path().join("secret"))
            .args(["--heartbeat-ms", &HEARTBEAT_MS.to_string()])
            .args(["--request-timeout-ms", "2000"])
            .args(&self.extra)
            .env("CAIRN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs[i] = Some(child);
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.procs[i].as_ref().expect("node running").id()
    }

    fn signal(&self, i: usize, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.pid(i).to_string()]).status().unwrap();
        assert!(ok.success(), "kill {sig} failed");
    }

    /// kill -9 node i.
    pub fn kill9(&mut self, i: usize) {
        self.signal(i, "-KILL");
        let mut child = self.procs[i].take().unwrap();
        let _ = child.wait();
    }

    /// SIGTERM node i and wait for its exit status.
    pub fn stop(&mut self, i: usize) -> std::process::ExitStatus {
        self.signal(i, "-TERM");
        self.procs[i].take().unwrap().wait().unwrap()
    }

    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    /// Starts node i again with the same data directory and addresses.
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i);
        let http = self.http[i].clone();
        self.eventually(&format!("{} answers /health", self.ids[i]), async |c| {
            c.get(&http, "/health").await.is_ok_and(|(s, _)| s == 200)
        })
        .await;
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.ids[i])))
            .unwrap_or_default()
    }

    /// Polls `f` every 100 ms for at most 30 s.
    pub async fn eventually(&self, what: &str, mut f: impl AsyncFnMut(&Cluster) -> bool) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if f(self).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let logs: Vec<String> = (0..self.ids.len())
            .map(|i| {
                let l = self.log(i);
                let tail: Vec<&str> = l.lines().rev().take(15).collect();
                format!(
                    "--- {} ---\n{}",
                    self.ids[i],
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect();
        panic!("timed out waiting until {what}\n{}", logs.join("\n"));
    }

    /// The status of `member` as node `at` sees it.
    pub async fn status(&self, at: usize, member: &str) -> Option<String> {
        let (_, v) = self.get(&self.http[at], "/cluster").await.ok()?;
        v["members"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == member)
            .and_then(|m| m["status"].as_str().map(str::to_owned))
    }

    /// Waits until every running node sees `member` with `status`.
    pub async fn wait_status(&self, member: usize, status: &str) {
        let name = self.ids[member].clone();
        let running: Vec<usize> =
            (0..self.ids.len()).filter(|j| *j != member && self.procs[*j].is_some()).collect();
        self.eventually(&format!("every node sees {name} {status}"), async |c| {
            for &j in &running {
                if c.status(j, &name).await.as_deref() != Some(status) {
                    return false;
                }
            }
            true
        })
        .await;
    }

    pub async fn wait_all_up(&self) {
        let n = self.ids.len();
        self.eventually("every node sees every other up", async |c| {
            for i in 0..n {
                for m in &c.ids {
                    if c.status(i, m).await.as_deref() != Some("up") {
                        return false;
                    }
                }
            }
            true
        })
        .await;
    }

    /// Waits until no running node holds a hint.
    pub async fn wait_no_hints(&self) {
        let running: Vec<usize> =
            (0..self.ids.len()).filter(|j| self.procs[*j].is_some()).collect();
        self.eventually("no hints remain anywhere", async |c| {
            for &j in &running {
                match c.get(&c.http[j], "/cluster").await {
                    Ok((_, v)) if v["hints_pending"].as_object().is_some_and(|h| h.is_empty()) => {}
                    _ => return false,
                }
            }
            true
        })
        .await;
    }

    pub fn url(&self, node: usize, path: &str) -> String {
        format!("http://{}{}", self.http[node], path)
    }

    /// GET returning (status, JSON body or Null).
    pub async fn get(&self, addr: &str, path: &str) -> reqwest::Result<(u16, Value)> {
        let r = self.client.get(format!("http://{addr}{path}")).send().await?;
        let s = r.status().as_u16();
        let v = r.json::<Value>().await.unwrap_or(Value::Null);
        Ok((s, v))
    }

    pub async fn create_bucket(&self, node: usize, name: &str, query: &str) -> Value {
        let r = self
            .client
            .post(self.url(node, &format!("/buckets/{name}{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "create bucket {name}");
        r.json().await.unwrap()
    }

    /// PUT raw bytes; returns (status, JSON answer).
    pub async fn put(
        &self,
        node: usize,
        path: &str,
        body: &[u8],
        context: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self.client.put(self.url(node, path)).body(body.to_vec());
        if let Some(c) = context {
            req = req.header("x-cairn-context", c);
        }
        let r = req.send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// GET an object: (status, body bytes, context header).
    pub async fn read(&self, node: usize, path: &str) -> (u16, Vec<u8>, Option<String>) {
        let r = self.client.get(self.url(node, path)).send().await.unwrap();
        let s = r.status().as_u16();
        let ctx =
            r.headers().get("x-cairn-context").and_then(|v| v.to_str().ok()).map(str::to_owned);
        (s, r.bytes().await.unwrap().to_vec(), ctx)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().flatten() {
            let _ = Command::new("kill").args(["-CONT", &p.id().to_string()]).status();
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// Sends a request line as given (no URL normalisation, unlike an HTTP client library) and
/// returns the status code and the JSON body.
pub fn raw_request(addr: &str, method: &str, path: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}
