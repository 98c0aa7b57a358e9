//! `cairn bench` end to end: against `cairn bench-target` (the generator's ceiling server) and
//! against a real single Cairn node. Every process is started here and stopped by its handle.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::Cluster;

fn cairn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `cairn bench ARGS --format json --quiet` and returns its exit status and report.
fn bench(args: &[&str]) -> (Output, Value) {
    let out =
        cairn().arg("bench").args(args).args(["--format", "json", "--quiet"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): stdout {stdout}\nstderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, report)
}

fn assert_clean(out: &Output, report: &Value) {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report["ops_ok"].as_u64().unwrap() > 0, "{report:#}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report:#}");
    assert!(report["ops_per_s"].as_f64().unwrap() > 0.0);
    let l = &report["latency_ms"];
    assert!(l["p50"].as_f64().unwrap() <= l["p99"].as_f64().unwrap());
    assert!(l["p99"].as_f64().unwrap() <= l["max"].as_f64().unwrap());
}

/// The bench-target process; SIGTERM by PID on drop.
struct Target(Child);

impl Drop for Target {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
            let _ = self.0.wait();
        }
    }
}

fn start_target() -> (Target, String) {
    start_target_with(4096)
}

/// A bench-target whose GETs answer `body_size` bytes.
fn start_target_with(body_size: usize) -> (Target, String) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = cairn()
        .args(["bench-target", "--listen", &addr, "--threads", "1"])
        .args(["--body-size", &body_size.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let target = Target(child);
    let start = Instant::now();
    while TcpStream::connect(&addr).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "bench-target did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    (target, format!("http://{addr}"))
}

#[test]
fn bench_against_bench_target_succeeds_and_reports_json() {
    let (mut target, url) = start_target();
    let (out, report) = bench(&[
        "--endpoint",
        &url,
        "--workload",
        "get",
        "--prefill=false",
        "--duration",
        "2s",
        "--warmup",
        "0s",
        "--concurrency",
        "4",
        "--threads",
        "1",
    ]);
    assert_clean(&out, &report);
    assert_eq!(report["settings"]["workload"], "get");
    assert_eq!(report["settings"]["concurrency"], 4);
    // Every GET read the target's 4096-byte body.
    let mb = report["mb_per_s"].as_f64().unwrap() * report["elapsed_s"].as_f64().unwrap();
    let expected = report["ops_ok"].as_u64().unwrap() as f64 * 4096.0 / 1e6;
    assert!((mb - expected).abs() < 1e-6 * expected.max(1.0), "{mb} vs {expected}");

    // --ops bounds a put run exactly; a range of sizes and the S3 protocol are accepted.
    let (out, report) = bench(&[
        "--endpoint",
        &url,
        "--protocol",
        "s3",
        "--s3-access-key",
        "AK",
        "--s3-secret-key",
        "SK",
        "--size",
        "1KiB..4KiB",
        "--ops",
        "300",
        "--warmup",
        "0s",
        "--concurrency",
        "3",
    ]);
    assert_clean(&out, &report);
    assert_eq!(report["ops_ok"], 300);

    // SIGTERM stops the target cleanly.
    let _ = Command::new("kill").args(["-TERM", &target.0.id().to_string()]).status();
    let status = target.0.wait().unwrap();
    assert!(status.success(), "bench-target exit {status:?}");
}

/// Checks that `report` moved `ops_ok * per_op` body bytes and that `mb_per_s` is that over the
/// elapsed time.
fn assert_bytes(report: &Value, per_op: u64) {
    let ops = report["ops_ok"].as_u64().unwrap();
    assert_eq!(report["bytes"].as_u64().unwrap(), ops * per_op, "{report:#}");
    let mb = report["mb_per_s"].as_f64().unwrap() * report["elapsed_s"].as_f64().unwrap();
    let expected = (ops * per_op) as f64 / 1e6;
    assert!((mb - expected).abs() < 1e-6 * expected, "{mb} vs {expected}");
}

#[test]
fn large_bodies_are_streamed_both_ways_with_exact_byte_counts() {
    // Puts above 8 MiB are generated while sent; bench-target reads and discards them.
    let (_target, url) = start_target_with(12 << 20);
    let (out, report) = bench(&[
        "--endpoint",
        &url,
        "--workload",
        "put",
        "--size",
        "20MiB",
        "--ops",
        "6",
        "--warmup",
        "0s",
        "--concurrency",
        "2",
        "--threads",
        "1",
    ]);
    assert_clean(&out, &report);
    assert_eq!(report["ops_ok"], 6, "{report:#}");
    assert_eq!(report["settings"]["size"], "20971520");
    // The default timeout grows with the size: 10 s + 1 s per 4 MiB.
    assert_eq!(report["settings"]["timeout_s"], 15.0);
    assert_bytes(&report, 20 << 20);

    // Gets of a 12 MiB body are read frame by frame and counted.
    let (out, report) = bench(&[
        "--endpoint",
        &url,
        "--workload",
        "get",
        "--prefill=false",
        "--ops",
        "6",
        "--warmup",
        "0s",
        "--concurrency",
        "2",
        "--threads",
        "1",
    ]);
    assert_clean(&out, &report);
    assert_eq!(report["ops_ok"], 6, "{report:#}");
    assert_bytes(&report, 12 << 20);
}

#[test]
fn unreachable_endpoint_and_bad_options_fail_clearly() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = cairn().args(["bench", "--endpoint", &url, "--duration", "1s"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&url) && stderr.contains("unreachable"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    for bad in [
        &["--size", "4XB"][..],
        &["--size", "65GiB"],
        &["--read-ratio", "1.5"],
        &["--workload", "scan"],
        &["--protocol", "s3", "--s3-access-key", "", "--duration", "1s"],
    ] {
        let out = cairn()
            .arg("bench")
            .args(bad)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_against_a_single_cairn_node_puts_and_gets_without_errors() {
    let c =
        Cluster::start(1, &["--replicas", "1", "--read-quorum", "1", "--write-quorum", "1"]).await;
    let url = format!("http://{}", c.http[0]);
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            bench(&args)
        })
    };
    let common = |workload: &str| -> Vec<String> {
        [
            "--endpoint",
            &url,
            "--workload",
            workload,
            "--keys",
            "200",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--concurrency",
            "4",
            "--threads",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    // Fresh keys (creates the bucket); then gets on a prefilled key space, then mixed with
    // overwriting puts. Two overwrites of one key at once may both replace the same context and
    // leave siblings (even on one node); a read of those answers 300, counted as success.
    let (out, report) = run(common("put")).await.unwrap();
    assert_clean(&out, &report);
    let (out, report) = run(common("get")).await.unwrap();
    assert_clean(&out, &report);
    assert_eq!(report["settings"]["prefill"], true);
    let (out, report) = run(common("mixed")).await.unwrap();
    assert_clean(&out, &report);
    assert!(report["outcomes"]["ok"].as_u64().unwrap() > 0, "{report:#}");
    assert!(report["by_op"]["get"]["ops_ok"].as_u64().unwrap() > 0, "{report:#}");
    assert!(report["by_op"]["put"]["ops_ok"].as_u64().unwrap() > 0, "{report:#}");
    // Delete: each prefilled key exactly once, then the run ends on its own.
    let (out, report) = run(common("delete")).await.unwrap();
    assert_clean(&out, &report);
    assert_eq!(report["ops_ok"], 200, "{report:#}");

    // Large objects (stored in chunks by the node): a streamed prefill, then streamed gets of
    // it, each read whole.
    let large = |workload: &str| -> Vec<String> {
        [
            "--endpoint",
            &url,
            "--workload",
            workload,
            "--bucket",
            "large",
            "--keys",
            "2",
            "--size",
            "12MiB",
            "--ops",
            "4",
            "--warmup",
            "0s",
            "--concurrency",
            "2",
            "--threads",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (out, report) = run(large("get")).await.unwrap();
    assert_clean(&out, &report);
    assert_eq!(report["ops_ok"], 4, "{report:#}");
    assert_bytes(&report, 12 << 20);
    let (out, report) = run(large("put")).await.unwrap();
    assert_clean(&out, &report);
    assert_eq!(report["ops_ok"], 4, "{report:#}");
    assert_bytes(&report, 12 << 20);
}
