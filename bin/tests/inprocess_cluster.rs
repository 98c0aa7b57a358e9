//! Four nodes in one process over the in-memory network: the node's coordinator, sloppy quorum,
//! hinted handoff, read repair and bucket registry, with crashes and partitions, no sockets.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use cairn_engine::{Engine, Options, SyncPolicy};
use cairn_membership::testing::{InMemoryNetwork, InMemoryTransport};
use cairn_node::node::buckets::ConflictPolicy;
use cairn_node::node::keys::ObjectKey;
use cairn_node::node::messages::{WriteOp, WriteRequest};
use cairn_node::node::store::Store;
use cairn_node::node::{Node, NodeError, Parts, server};
use cairn_replication::{Actor, Body, Meta, NodeId, SiblingSet, VersionVector};
use tokio::sync::watch;

type N = Arc<Node<InMemoryTransport>>;

struct Cluster {
    net: InMemoryNetwork,
    nodes: Vec<N>,
    _dirs: Vec<tempfile::TempDir>,
    _shutdown: watch::Sender<bool>,
}

const IDS: [&str; 4] = ["n1", "n2", "n3", "n4"];

async fn cluster() -> Cluster {
    let net = InMemoryNetwork::new(7);
    net.set_timeout(Duration::from_millis(500));
    let members: Vec<NodeId> = IDS.iter().map(|i| NodeId::new(*i).unwrap()).collect();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    let mut inbound = Vec::new();
    for id in IDS {
        let (transport, rx) = net.register(id);
        inbound.push(Some((transport, rx)));
    }
    for (i, id) in IDS.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let engine =
            Engine::open(dir.path(), Options { sync: SyncPolicy::Never, ..Options::default() })
                .unwrap();
        let mut config = cairn_replication::node::Config::new(
            NodeId::new(*id).unwrap(),
            members.clone(),
            64,
            3,
            2,
            2,
        );
        config.request_timeout_ms = 800;
        config.max_siblings = 16;
        let (transport, rx) = inbound[i].take().unwrap();
        let parts = Parts {
            config,
            actor: Actor::new(NodeId::new(*id).unwrap(), 1),
            store: Store::new(Arc::new(engine), 64).unwrap(),
            transport,
            view: net.view(id).unwrap(),
            events: net.events(id).unwrap(),
            inbound: rx,
            chunks: Default::default(),
        };
        let node = Node::start(parts, shutdown_rx.clone()).unwrap();
        dirs.push(dir);
        nodes.push(node);
    }
    Cluster { net, nodes, _dirs: dirs, _shutdown: shutdown_tx }
}

fn node<'a>(c: &'a Cluster, id: &str) -> &'a N {
    c.nodes.iter().find(|n| n.id().as_str() == id).unwrap()
}

fn put(key: &ObjectKey, body: &[u8], context: Option<VersionVector>) -> WriteRequest {
    WriteRequest {
        key: key.clone(),
        op: WriteOp::Put {
            meta: Meta { size: body.len() as u64, ..Meta::default() },
            body: Body::Bytes(body.to_vec()),
        },
        context,
        overwrite: false,
        w: 2,
        lww: false,
        excluded: vec![],
    }
}

fn values(set: &SiblingSet) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = set
        .values()
        .filter_map(|s| match &s.body {
            Body::Bytes(b) => Some(b.clone()),
            Body::Tombstone | Body::Chunked(_) => None,
        })
        .collect();
    v.sort();
    v
}

/// Waits (bounded) until `f` holds.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting until {what}");
}

async fn make_bucket(c: &Cluster, name: &str) -> u64 {
    let out = node(c, "n1").create_bucket(name, ConflictPolicy::Siblings).await.unwrap();
    let inc = out.bucket.unwrap().incarnation;
    for n in &c.nodes {
        assert_eq!(n.bucket(name).unwrap().incarnation, inc, "{} lacks the bucket", n.id());
    }
    inc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_anywhere_read_anywhere() {
    let c = cluster().await;
    let inc = make_bucket(&c, "photos").await;
    for (i, entry) in IDS.iter().enumerate() {
        let key = ObjectKey { bucket: "photos".into(), incarnation: inc, name: format!("f{i}") };
        let out = node(&c, entry).write(put(&key, format!("v{i}").as_bytes(), None)).await.unwrap();
        assert!(out.report.replicas_written.len() >= 2);
        assert!(
            out.report.pref_list.iter().any(|p| p.as_str() == out.node),
            "coordinator is an owner"
        );
        for reader in IDS {
            let got = node(&c, reader).read(key.clone(), 2, false, false).await.unwrap();
            assert_eq!(values(&got.set), vec![format!("v{i}").into_bytes()]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_owner_gets_its_writes_by_hinted_handoff() {
    let c = cluster().await;
    let inc = make_bucket(&c, "b").await;
    let key = ObjectKey { bucket: "b".into(), incarnation: inc, name: "k".into() };
    let owners = node(&c, "n1").extended(&key);
    let victim = owners[0].clone();
    let entry = IDS.iter().find(|i| **i != victim.as_str()).unwrap();
    c.net.crash(victim.as_str());

    let out = node(&c, entry).write(put(&key, b"during outage", None)).await.unwrap();
    // A fallback holds the write for the victim (the answer may be sent before the fallback's
    // acknowledgement arrives, so look at the nodes' hint books).
    let nodes = c.nodes.clone();
    let v = victim.clone();
    eventually("a fallback holds a hint for the victim", async || {
        nodes.iter().any(|n| n.hints_pending().get(&v).copied().unwrap_or(0) > 0)
    })
    .await;
    assert!(!out.report.replicas_written.contains(&victim));
    // Reads during the outage see the write (held by a fallback as a hint).
    let got = node(&c, entry).read(key.clone(), 2, false, false).await.unwrap();
    assert_eq!(values(&got.set), vec![b"during outage".to_vec()]);

    // The owner comes back (same data): the hint is delivered and removed everywhere.
    let (_t, rx) = c.net.register(victim.as_str());
    tokio::spawn(server::serve(Arc::clone(node(&c, victim.as_str())), rx));
    let v = node(&c, victim.as_str()).clone();
    let k = key.clone();
    eventually("the owner has the write in its own replica", async || {
        let set = v.read(k.clone(), 1, false, true).await.unwrap();
        values(&set.set) == vec![b"during outage".to_vec()]
    })
    .await;
    let nodes = c.nodes.clone();
    eventually("no hints remain", async || nodes.iter().all(|n| n.hints_pending().is_empty()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_owners_down_the_write_succeeds_on_a_fallback_and_both_converge() {
    let c = cluster().await;
    let inc = make_bucket(&c, "b").await;
    let key = ObjectKey { bucket: "b".into(), incarnation: inc, name: "two-down".into() };
    let ext = node(&c, "n1").extended(&key);
    let (a, b, alive, spare) = (ext[0].clone(), ext[1].clone(), ext[2].clone(), ext[3].clone());
    c.net.crash(a.as_str());
    c.net.crash(b.as_str());
    let out = node(&c, spare.as_str()).write(put(&key, b"x", None)).await.unwrap();
    assert_eq!(out.node, alive.as_str(), "the remaining owner coordinates");
    let mut written = out.report.replicas_written.clone();
    written.sort();
    let mut expect = vec![alive.clone(), spare.clone()];
    expect.sort();
    assert_eq!(written, expect);
    // The fallback stands in for the first missing owner; the coordinator keeps the hint for the
    // second, for which no fallback was left.
    let mut hinted: Vec<(String, String)> =
        out.report.hinted.iter().map(|h| (h.owner.to_string(), h.holder.to_string())).collect();
    hinted.sort();
    let mut expect_hints =
        vec![(a.to_string(), spare.to_string()), (b.to_string(), alive.to_string())];
    expect_hints.sort();
    assert_eq!(hinted, expect_hints);

    for down in [&a, &b] {
        let (_t, rx) = c.net.register(down.as_str());
        tokio::spawn(server::serve(Arc::clone(node(&c, down.as_str())), rx));
    }
    for down in [a, b] {
        let n = node(&c, down.as_str()).clone();
        let k = key.clone();
        eventually("both owners converge", async || {
            values(&n.read(k.clone(), 1, false, true).await.unwrap().set) == vec![b"x".to_vec()]
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_blind_writes_become_siblings_and_a_context_write_resolves_them() {
    let c = cluster().await;
    let inc = make_bucket(&c, "b").await;
    let key = ObjectKey { bucket: "b".into(), incarnation: inc, name: "hot".into() };
    let mut tasks = Vec::new();
    for (i, entry) in IDS.iter().enumerate() {
        let n = node(&c, entry).clone();
        let k = key.clone();
        tasks.push(tokio::spawn(async move { n.write(put(&k, &[b'a' + i as u8], None)).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let read = node(&c, "n3").read(key.clone(), 2, false, false).await.unwrap();
    assert_eq!(values(&read.set), vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]);
    let ctx = read.set.join();
    node(&c, "n4").write(put(&key, b"merged", Some(ctx))).await.unwrap();
    let read = node(&c, "n2").read(key.clone(), 2, false, false).await.unwrap();
    assert_eq!(values(&read.set), vec![b"merged".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_minority_write_fails_with_a_report_and_buckets_reach_a_returning_node() {
    let c = cluster().await;
    c.net.isolate("n4");
    // n4 alone cannot reach W=2 for anything.
    let inc = make_bucket_on(&c, "n1", "late").await;
    let key = ObjectKey { bucket: "late".into(), incarnation: inc, name: "k".into() };
    let err = node(&c, "n4").write(put(&key, b"v", None)).await.unwrap_err();
    match err {
        NodeError::WriteQuorum { acked, required, report, .. } => {
            assert_eq!((acked, required), (1, 2), "{report:?}");
        }
        other => panic!("expected a write quorum failure, got {other}"),
    }
    assert!(node(&c, "n4").bucket("late").is_err(), "n4 was cut off when it was created");
    c.net.heal();
    let n4 = node(&c, "n4").clone();
    eventually("n4 learns the bucket", async || n4.bucket("late").is_ok()).await;
}

async fn make_bucket_on(c: &Cluster, via: &str, name: &str) -> u64 {
    node(c, via)
        .create_bucket(name, ConflictPolicy::Siblings)
        .await
        .unwrap()
        .bucket
        .unwrap()
        .incarnation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_that_may_have_been_applied_is_not_sent_to_a_second_coordinator() {
    let c = cluster().await;
    let inc = make_bucket(&c, "fwd").await;
    let key = ObjectKey { bucket: "fwd".into(), incarnation: inc, name: "once".into() };
    let ext = node(&c, "n1").extended(&key);
    let entry = ext[3].clone(); // not an owner: it must forward
    // Every message now arrives after the requester gave up: the coordinator applies the write,
    // the entry node sees a timeout.
    c.net.set_delay(Duration::from_millis(700));
    let err = node(&c, entry.as_str()).write(put(&key, b"only once", None)).await.unwrap_err();
    assert!(matches!(err, NodeError::Unavailable(_)), "{err}");
    c.net.set_delay(Duration::ZERO);
    let n = node(&c, ext[0].as_str()).clone();
    let k = key.clone();
    eventually("the delayed write is applied", async || {
        n.read(k.clone(), 1, false, true).await.is_ok_and(|r| !r.set.is_empty())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let read = node(&c, "n2").read(key.clone(), 3, false, false).await.unwrap();
    assert_eq!(values(&read.set), vec![b"only once".to_vec()], "one write, one version");
    assert_eq!(read.set.len(), 1, "a retried forward stored a duplicate: {:?}", read.set);
}
