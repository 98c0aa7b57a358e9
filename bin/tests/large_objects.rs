//! Large objects on real `cairn node` processes: a 600 MiB object streamed in and out through
//! different nodes (SHA-256 equal), ranged reads at chunk boundaries, a coordinator killed in
//! the middle of an upload (no object appears; its chunks are collected after the grace), and
//! concurrent large versions kept as siblings.
//!
//! Content is a pure function of the byte position (4 KiB blocks of a seeded generator), so a
//! test can stream gigabytes without holding them and check any range against the expected
//! bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::Cluster;

const MIB: u64 = 1 << 20;
/// The node's chunk size.
const CHUNK: u64 = MIB;
const BLOCK: u64 = 4096;

/// The 4 KiB block `b` of the content with seed `seed` (splitmix64).
fn block(seed: u64, b: u64) -> [u8; BLOCK as usize] {
    let mut out = [0u8; BLOCK as usize];
    let mut x = seed ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for w in out.chunks_exact_mut(8) {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        w.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}

/// Bytes `start..end` of the content.
fn content(seed: u64, start: u64, end: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity((end - start) as usize);
    let mut pos = start;
    while pos < end {
        let b = block(seed, pos / BLOCK);
        let off = (pos % BLOCK) as usize;
        let take = ((BLOCK as usize - off) as u64).min(end - pos) as usize;
        out.extend_from_slice(&b[off..off + take]);
        pos += take as u64;
    }
    out
}

/// The content as a request body streamed in 256 KiB pieces.
fn body(seed: u64, size: u64) -> reqwest::Body {
    const PIECE: u64 = 256 << 10;
    let pieces = futures::stream::iter((0..size.div_ceil(PIECE)).map(move |i| {
        let (a, z) = (i * PIECE, ((i + 1) * PIECE).min(size));
        Ok::<Bytes, std::io::Error>(Bytes::from(content(seed, a, z)))
    }));
    reqwest::Body::wrap_stream(pieces)
}

fn sha256_of(seed: u64, size: u64) -> String {
    let mut h = Sha256::new();
    let mut pos = 0;
    while pos < size {
        let end = (pos + MIB).min(size);
        h.update(content(seed, pos, end));
        pos = end;
    }
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Streams a GET's body through SHA-256: (status, bytes received, digest).
async fn get_sha256(c: &Cluster, node: usize, path: &str) -> (u16, u64, String) {
    let r = c.client.get(c.url(node, path)).timeout(Duration::from_secs(300)).send().await.unwrap();
    let status = r.status().as_u16();
    let mut stream = r.bytes_stream();
    let (mut h, mut n) = (Sha256::new(), 0u64);
    while let Some(piece) = stream.next().await {
        let piece = piece.unwrap();
        n += piece.len() as u64;
        h.update(&piece);
    }
    (status, n, hex(&h.finalize()))
}

async fn put_stream(c: &Cluster, node: usize, path: &str, seed: u64, size: u64) -> (u16, Value) {
    let r = c
        .client
        .put(c.url(node, path))
        .timeout(Duration::from_secs(300))
        .body(body(seed, size))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// Chunks stored on node `i` (its `/metrics`).
async fn metric(c: &Cluster, i: usize, name: &str) -> f64 {
    let text = c.client.get(c.url(i, "/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_600_mib_object_round_trips_through_every_node_and_serves_ranges_at_chunk_edges() {
    let c = Cluster::start(4, &[]).await;
    c.create_bucket(0, "big", "").await;
    let (seed, size) = (7, 600 * MIB + 12_345);
    let started = Instant::now();
    let (s, w) = put_stream(&c, 0, "/buckets/big/disk.img", seed, size).await;
    assert_eq!(s, 200, "{w}");
    eprintln!("600 MiB PUT took {:?}", started.elapsed());
    assert_eq!(w["size"], size);
    assert!(w["replicas_written"].as_array().unwrap().len() >= 2, "{w}");
    let want = sha256_of(seed, size);
    for node in 1..4 {
        let started = Instant::now();
        let (s, n, digest) = get_sha256(&c, node, "/buckets/big/disk.img").await;
        assert_eq!((s, n), (200, size), "GET through n{}", node + 1);
        assert_eq!(digest, want, "content read through n{}", node + 1);
        eprintln!("600 MiB GET through n{} took {:?}", node + 1, started.elapsed());
    }

    // HEAD: the size and ranges, no body.
    let r = c.client.head(c.url(2, "/buckets/big/disk.img")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-length"], size.to_string().as_str());
    assert_eq!(r.headers()["accept-ranges"], "bytes");

    // Ranges at and across chunk boundaries, through each node.
    let cases: Vec<(String, u64, u64)> = vec![
        ("bytes=0-0".into(), 0, 1),
        (format!("bytes={}-{}", CHUNK - 1, CHUNK), CHUNK - 1, CHUNK + 1),
        (format!("bytes={}-{}", CHUNK, 2 * CHUNK - 1), CHUNK, 2 * CHUNK),
        (format!("bytes={}-{}", 3 * CHUNK - 10, 6 * CHUNK + 9), 3 * CHUNK - 10, 6 * CHUNK + 10),
        (format!("bytes={}-", size - 100), size - 100, size),
        ("bytes=-12346".into(), size - 12_346, size),
        (format!("bytes={}-{}", 599 * CHUNK, size + 1_000_000), 599 * CHUNK, size),
    ];
    for (i, (range, a, z)) in cases.iter().enumerate() {
        let node = i % 4;
        let r = c
            .client
            .get(c.url(node, "/buckets/big/disk.img"))
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 206, "{range}");
        let cr = r.headers()["content-range"].to_str().unwrap().to_owned();
        assert_eq!(cr, format!("bytes {a}-{}/{size}", z - 1), "{range}");
        let got = r.bytes().await.unwrap();
        assert_eq!(got.len() as u64, z - a, "{range}");
        assert!(got[..] == content(seed, *a, *z)[..], "bytes of {range} through n{}", node + 1);
    }
    // Past the end: 416 with the size.
    let r = c
        .client
        .get(c.url(1, "/buckets/big/disk.img"))
        .header("range", format!("bytes={size}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 416);
    assert_eq!(r.headers()["content-range"], format!("bytes */{size}").as_str());
    let j: Value = r.json().await.unwrap();
    assert_eq!(j["error"]["code"], "InvalidRange");
    // If-Range with another ETag: the whole object (checked by length only).
    let r = c
        .client
        .head(c.url(3, "/buckets/big/disk.img"))
        .header("range", "bytes=0-9")
        .header("if-range", "\"not-this-version\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-length"], size.to_string().as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_mid_upload_leaves_no_object_and_its_chunks_are_collected() {
    let mut c = Cluster::start(4, &["--chunk-grace", "3s"]).await;
    c.create_bucket(0, "big", "").await;
    // A slow upload to n1: 8 MiB quickly, then a trickle, so it is in flight when n1 dies.
    let url = c.url(0, "/buckets/big/half.bin");
    let client = c.client.clone();
    let upload = tokio::spawn(async move {
        let pieces = futures::stream::iter(0..64u64).then(|i| async move {
            if i >= 8 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok::<Bytes, std::io::Error>(Bytes::from(content(3, i * MIB, (i + 1) * MIB)))
        });
        client.put(url).body(reqwest::Body::wrap_stream(pieces)).send().await
    });
    // Wait until chunks of it are stored on the replicas, then kill -9 the receiving node.
    c.eventually("chunks of the upload stored", async |c| {
        let mut stored = 0.0;
        for i in 1..4 {
            stored += metric(c, i, "cairn_chunks_stored_total").await;
        }
        stored >= 8.0
    })
    .await;
    c.kill9(0);
    let r = upload.await.unwrap();
    assert!(r.is_err() || !r.unwrap().status().is_success(), "the upload cannot have succeeded");
    // No node shows the object.
    for i in 1..4 {
        let (s, _, _) = c.read(i, "/buckets/big/half.bin").await;
        assert_eq!(s, 404, "n{} shows a partial object", i + 1);
    }
    let (s, list) = c.get(&c.http[1], "/buckets/big").await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(list["files"].as_array().unwrap().len(), 0, "{list}");
    // After the grace the orphaned chunks are deleted on every surviving node.
    c.eventually("orphaned chunks collected", async |c| {
        let mut held = 0.0;
        for i in 1..4 {
            held += metric(c, i, "cairn_chunks_held").await;
        }
        held == 0.0
    })
    .await;
    for i in 1..4 {
        assert_eq!(metric(&c, i, "cairn_chunks_held").await, 0.0);
    }
    let collected: f64 = {
        let mut n = 0.0;
        for i in 1..4 {
            n += metric(&c, i, "cairn_chunks_collected_total").await;
        }
        n
    };
    assert!(collected >= 8.0, "collected {collected}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_versions_are_siblings_and_both_read_back_and_a_resolving_write_frees_them()
 {
    let c = Cluster::start(4, &["--chunk-grace", "2s"]).await;
    c.create_bucket(0, "big", "").await;
    let size = 5 * MIB + 3;
    let (a, b) = tokio::join!(
        put_stream(&c, 0, "/buckets/big/twin", 11, size),
        put_stream(&c, 2, "/buckets/big/twin", 12, size + 1),
    );
    assert_eq!(a.0, 200, "{}", a.1);
    assert_eq!(b.0, 200, "{}", b.1);
    let r = c.client.get(c.url(1, "/buckets/big/twin")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 300, "two concurrent versions");
    let ctx = r.headers()["x-cairn-context"].to_str().unwrap().to_owned();
    let j: Value = r.json().await.unwrap();
    let siblings = j["siblings"].as_array().unwrap();
    assert_eq!(siblings.len(), 2, "{j}");
    let mut digests = Vec::new();
    for s in siblings {
        let id = s["id"].as_str().unwrap();
        let (st, n, d) = get_sha256(&c, 3, &format!("/buckets/big/twin?sibling={id}")).await;
        assert_eq!(st, 200);
        assert_eq!(n, s["size"].as_u64().unwrap());
        digests.push(d);
    }
    digests.sort();
    let mut want = vec![sha256_of(11, size), sha256_of(12, size + 1)];
    want.sort();
    assert_eq!(digests, want, "both versions read back whole");

    // A write with the read's context supersedes both; their chunks are collected.
    let r = c
        .client
        .put(c.url(3, "/buckets/big/twin"))
        .header("x-cairn-context", ctx)
        .body(body(13, 2 * MIB))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    c.eventually("one version, superseded chunks collected", async |c| {
        let mut held = 0.0;
        for i in 0..4 {
            held += metric(c, i, "cairn_chunks_held").await;
        }
        held <= 3.0 * 2.0
    })
    .await;
    let (s, n, d) = get_sha256(&c, 0, "/buckets/big/twin").await;
    assert_eq!((s, n), (200, 2 * MIB));
    assert_eq!(d, sha256_of(13, 2 * MIB));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_follow_hinted_handoff_to_a_returning_owner_and_anti_entropy_to_a_replaced_disk() {
    let mut c = Cluster::start(4, &["--anti-entropy-interval", "2s"]).await;
    c.create_bucket(0, "big", "").await;
    assert!(c.stop(3).success());
    c.wait_status(3, "down").await;
    // Objects of 3-4 chunks, written while n4 is down: those n4 owns go to a fallback with a
    // hint (the chunks with them).
    let mut n4_chunks = 0;
    let mut hinted = 0;
    for i in 0..8u64 {
        let size = 3 * MIB + i;
        let (s, w) =
            put_stream(&c, (i % 3) as usize, &format!("/buckets/big/o{i}"), 100 + i, size).await;
        assert_eq!(s, 200, "{w}");
        if w["pref_list"].as_array().unwrap().iter().any(|n| n == "n4") {
            n4_chunks += size.div_ceil(MIB);
            hinted += w["hinted"].as_array().unwrap().len();
        }
    }
    assert!(n4_chunks > 0 && hinted > 0, "some objects are n4's (hinted {hinted})");
    c.restart(3).await;
    c.wait_all_up().await;
    c.wait_no_hints().await;
    c.eventually("n4 holds the chunks of its objects", async |c| {
        metric(c, 3, "cairn_chunks_held").await == n4_chunks as f64
    })
    .await;
    assert!(metric(&c, 3, "cairn_chunks_fetched_total").await >= n4_chunks as f64);

    // Replace n4's disk: anti-entropy brings manifests back, and with them the chunks.
    assert!(c.stop(3).success());
    std::fs::remove_dir_all(c.data_dir(3)).unwrap();
    c.restart(3).await;
    c.eventually("n4's chunks restored by anti-entropy", async |c| {
        metric(c, 3, "cairn_chunks_held").await == n4_chunks as f64
    })
    .await;
    for i in 0..8u64 {
        let size = 3 * MIB + i;
        let (s, n, d) = get_sha256(&c, 3, &format!("/buckets/big/o{i}")).await;
        assert_eq!((s, n), (200, size));
        assert_eq!(d, sha256_of(100 + i, size), "o{i} through n4");
    }
}
