//! Unit tests of the node's state machine: one node driven by hand, its actions checked. The
//! whole-cluster behaviour is the simulator's (`tools/sim`); these pin single rules.

use super::*;
use crate::dvv::Meta;
use crate::node::store::Coordinated;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

const IDS: [&str; 4] = ["n1", "n2", "n3", "n4"];

fn core(me: &str) -> NodeCore {
    core_with(me, 0)
}

/// A node with anti-entropy every `aae_ms` (0: off) and no tombstone collection, so that the
/// tests of single rules see no background traffic.
fn core_with(me: &str, aae_ms: Millis) -> NodeCore {
    let members: Vec<NodeId> = IDS.iter().map(|s| id(s)).collect();
    let mut config = Config::new(id(me), members.clone(), 64, 3, 2, 2);
    config.anti_entropy_interval_ms = aae_ms;
    config.tombstone_grace_ms = None;
    let mut c = NodeCore::new(config, Actor::new(id(me), 7), Vec::new(), None, 1, 0).unwrap();
    c.step(0, Event::View { up: members.into_iter().collect() });
    // The first save of the cluster state (not what these tests look at).
    c.take_actions();
    c
}

/// A key whose extended preference list starts with `first`.
fn key_owned_first_by(c: &NodeCore, first: &str) -> ObjectKey {
    (0..10_000)
        .map(|i| ObjectKey { bucket: "b".into(), incarnation: 1, name: format!("k{i}") })
        .find(|k| c.extended(k)[0].as_str() == first)
        .unwrap()
}

fn put(key: &ObjectKey) -> ClientOp {
    ClientOp::Put {
        key: key.clone(),
        meta: Meta::default(),
        body: crate::Body::Bytes(b"x".to_vec()),
        context: None,
        overwrite: false,
        w: 2,
        lww: false,
    }
}

/// The `Send` actions: (id, peer, request).
type Sends = Vec<(ReqId, NodeId, Arc<Request>)>;

fn sends(actions: &[Action]) -> Sends {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { id, to, request } => Some((*id, to.clone(), Arc::clone(request))),
            _ => None,
        })
        .collect()
}

fn stores(actions: &[Action]) -> Vec<(ReqId, StoreOp)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Store { id, op } => Some((*id, op.clone())),
            _ => None,
        })
        .collect()
}

fn answers(actions: &[Action]) -> Vec<Result<Answer>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Answer { result, .. } => Some(result.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_write_goes_to_the_first_reachable_owner_and_never_to_a_second_after_a_timeout() {
    let mut c = core("n4");
    let key = key_owned_first_by(&c, "n1");
    c.step(1, Event::Client { id: ClientId(1), op: put(&key) });
    let s = sends(&c.take_actions());
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].1.as_str(), "n1", "forwarded to the first owner");
    // A timeout: the write may have been applied there, so no second coordinator.
    c.step(2, Event::Reply { id: s[0].0, result: Err(SendError::Failed("timed out".into())) });
    let a = c.take_actions();
    assert!(sends(&a).is_empty(), "not retried elsewhere: {a:?}");
    assert!(matches!(answers(&a)[..], [Err(Error::Unavailable(_))]), "{a:?}");
}

#[test]
fn a_forward_that_was_never_delivered_goes_to_the_next_candidate_naming_the_skipped() {
    let mut c = core("n4");
    let key = key_owned_first_by(&c, "n1");
    let ext = c.extended(&key);
    c.step(1, Event::Client { id: ClientId(1), op: put(&key) });
    let s = sends(&c.take_actions());
    c.step(2, Event::Reply { id: s[0].0, result: Err(SendError::NotDelivered("refused".into())) });
    let a = c.take_actions();
    let next = ext.iter().find(|n| n.as_str() != "n1").unwrap();
    if next.as_str() == "n4" {
        // This node is the next candidate: it coordinates.
        assert!(matches!(stores(&a)[..], [(_, StoreOp::Coordinate { .. })]), "{a:?}");
    } else {
        let s = sends(&a);
        assert_eq!(s[0].1, *next);
        let Request::Coordinate(w) = &*s[0].2 else { panic!("{s:?}") };
        assert_eq!(w.excluded, vec!["n1".to_string()]);
    }
}

/// Drives a write coordinated by n1 up to the fan-out; returns the core, the fan-out sends and
/// the WaitDurable op id.
fn coordinated_write() -> (NodeCore, Sends, ReqId) {
    let mut c = core("n1");
    let key = key_owned_first_by(&c, "n1");
    c.step(1, Event::Client { id: ClientId(9), op: put(&key) });
    let a = c.take_actions();
    let [(sid, StoreOp::Coordinate { write, .. })] = &stores(&a)[..] else { panic!("{a:?}") };
    let mut set = SiblingSet::new();
    let dot = write.clone().apply(&mut set).unwrap();
    c.step(
        2,
        Event::Stored {
            id: *sid,
            result: Ok(StoreResult::Coordinated(Coordinated {
                set,
                dot,
                hint_versions: vec![],
                lsn: 5,
            })),
        },
    );
    let a = c.take_actions();
    let fanout = sends(&a);
    let [(wid, StoreOp::WaitDurable { lsn: 5 })] = &stores(&a)[..] else { panic!("{a:?}") };
    (c, fanout, *wid)
}

#[test]
fn the_coordinator_counts_itself_only_once_durable() {
    let (mut c, fanout, wait) = coordinated_write();
    assert_eq!(fanout.len(), 2, "the two other owners");
    // One replica acknowledges: with the local copy not yet durable, that is 1 of 2.
    c.step(
        3,
        Event::Reply { id: fanout[0].0, result: Ok(Response::Ack { vv: VersionVector::new() }) },
    );
    c.step(3, Event::Tick);
    assert!(answers(&c.take_actions()).is_empty(), "no answer before the local sync");
    c.step(4, Event::Stored { id: wait, result: Ok(StoreResult::Durable) });
    // Decided at 4 (3 ms after the fan-out): the answer waits the grace for the last replica.
    assert!(answers(&c.take_actions()).is_empty());
    c.step(4 + MIN_GRACE_MS, Event::Tick);
    let a = answers(&c.take_actions());
    let [Ok(Answer::Written(o))] = &a[..] else { panic!("{a:?}") };
    assert_eq!(o.report.replicas_written.len(), 2);
    assert!(c.background() > 0, "the third replica is still awaited");
}

#[test]
fn a_target_that_times_out_gets_a_hint_on_the_coordinator() {
    let (mut c, fanout, wait) = coordinated_write();
    c.step(
        3,
        Event::Reply { id: fanout[0].0, result: Ok(Response::Ack { vv: VersionVector::new() }) },
    );
    c.step(3, Event::Stored { id: wait, result: Ok(StoreResult::Durable) });
    c.step(200, Event::Tick);
    assert!(matches!(answers(&c.take_actions())[..], [Ok(_)]));
    // The last target never answers: at the request timeout, a hint for its owner.
    c.step(DEFAULT_REQUEST_TIMEOUT_MS + 10, Event::Tick);
    let a = c.take_actions();
    let [(hid, StoreOp::StoreHint { owner, .. })] = &stores(&a)[..] else { panic!("{a:?}") };
    assert_eq!(owner, &fanout[1].1);
    let vv = VersionVector::new();
    c.step(
        DEFAULT_REQUEST_TIMEOUT_MS + 11,
        Event::Stored { id: *hid, result: Ok(StoreResult::Merged(vv)) },
    );
    assert_eq!(c.hint_count(), 1);
    assert_eq!(c.background(), 0, "the write's tail is done");
}

#[test]
fn a_delete_of_a_key_nobody_holds_stores_nothing() {
    let mut c = core("n1");
    let key = key_owned_first_by(&c, "n1");
    let op = ClientOp::Delete { key, context: None, w: 2, lww: false, at_ms: 1 };
    c.step(1, Event::Client { id: ClientId(3), op });
    let a = c.take_actions();
    // The quorum read: the local replica and the others (a node's first read asks all N).
    let reads = stores(&a);
    let remote = sends(&a);
    assert_eq!(reads.len(), 1, "{a:?}");
    c.step(2, Event::Stored { id: reads[0].0, result: Ok(StoreResult::Set(None)) });
    c.step(3, Event::Reply { id: remote[0].0, result: Ok(Response::Set { set: None }) });
    let a = c.take_actions();
    assert!(matches!(answers(&a)[..], [Err(Error::NoSuchKey { .. })]), "{a:?}");
    assert!(stores(&a).is_empty() && sends(&a).is_empty(), "nothing written: {a:?}");
}

#[test]
fn a_read_asks_r_replicas_first_and_the_rest_after_the_speculation_delay() {
    let mut c = core("n1");
    let key = key_owned_first_by(&c, "n1");
    // The first read of a node is a full read (one in `full_read_every`); take the second.
    for client in [1, 2] {
        c.step(
            1,
            Event::Client {
                id: ClientId(client),
                op: ClientOp::Get { key: key.clone(), r: 2, lww: false, local: false },
            },
        );
    }
    let a = c.take_actions();
    assert_eq!(sends(&a).len(), 2 + 1, "full read: two remote; quorum-first read: one remote");
    c.step(1 + DEFAULT_READ_SPECULATE_MS, Event::Tick);
    let later = sends(&c.take_actions());
    assert_eq!(later.len(), 1, "the held-back replica is asked after the delay");
}

#[test]
fn a_replicate_for_another_owner_is_kept_as_a_hint_and_acknowledged() {
    let mut c = core("n4");
    let key = key_owned_first_by(&c, "n1");
    let mut set = SiblingSet::new();
    set.update(&VersionVector::new(), crate::dvv::Sibling::tombstone(1), &Actor::new(id("n2"), 1));
    let req = Request::Replicate { key, set: Arc::new(set), hint_for: Some("n1".into()) };
    c.step(1, Event::Inbound { id: InboundId(5), from: id("n2"), request: req });
    let a = c.take_actions();
    let [(sid, StoreOp::StoreHint { owner, .. })] = &stores(&a)[..] else { panic!("{a:?}") };
    assert_eq!(owner.as_str(), "n1");
    let mut vv = VersionVector::new();
    vv.witness(&Actor::new(id("n2"), 1), 1);
    c.step(2, Event::Stored { id: *sid, result: Ok(StoreResult::Merged(vv.clone())) });
    let a = c.take_actions();
    assert!(matches!(
        &a[..],
        [Action::Respond { id: InboundId(5), response: Response::Ack { .. } }]
    ));
    assert_eq!(c.hints_pending().get(&id("n1")), Some(&1));
    // n1 comes back: its hint is read and sent to it.
    c.step(3, Event::MemberUp { node: id("n1") });
    let a = c.take_actions();
    assert!(stores(&a).iter().any(|(_, op)| matches!(op, StoreOp::ReadHint { .. })), "{a:?}");
}

#[test]
fn epochs_change_after_an_unclean_stop_only() {
    let mut n = 10;
    let mut draw = || {
        n += 1;
        n
    };
    assert_eq!(start_epoch(Some(5), true, &mut draw, None), 5);
    assert_eq!(start_epoch(Some(5), false, &mut draw, None), 11);
    assert_eq!(start_epoch(None, false, &mut draw, None), 12);
    let same = || 7;
    let mut calls = 0;
    let mut seq = || {
        calls += 1;
        if calls == 1 { 7 } else { same() + 1 }
    };
    assert_eq!(start_epoch(Some(7), false, &mut seq, None), 8, "never the previous epoch");
}

/// Regression (found by the whole-cluster simulator, `tools/sim`, seed 1): a read coordinated
/// by a node that is the read's fallback target (an owner is down) repairs its own copy under
/// a hint for that owner. The hint must be recorded in the book, or it is never delivered (not
/// before a restart rebuilds the book from the store) and stays in the store forever.
#[test]
fn a_read_repair_stored_as_a_local_hint_is_recorded_for_delivery() {
    let mut c = core("n4");
    // n4 holds nothing for a key n1, n2, n3 own; n1 is down: n4 stands in for it.
    let key = (0..10_000)
        .map(|i| ObjectKey { bucket: "b".into(), incarnation: 1, name: format!("k{i}") })
        .find(|k| c.extended(k)[0].as_str() == "n1" && c.extended(k)[3].as_str() == "n4")
        .unwrap();
    c.step(0, Event::View { up: ["n2", "n3", "n4"].into_iter().map(id).collect() });
    let mut held = SiblingSet::new();
    held.update(&VersionVector::new(), crate::dvv::Sibling::tombstone(1), &Actor::new(id("n2"), 1));
    let get = ClientOp::Get { key, r: 2, lww: false, local: false };
    c.step(1, Event::Client { id: ClientId(1), op: get });
    let a = c.take_actions();
    for (rid, op) in stores(&a) {
        assert!(matches!(op, StoreOp::Read { .. }), "{op:?}");
        c.step(2, Event::Stored { id: rid, result: Ok(StoreResult::Set(None)) });
    }
    for (rid, ..) in sends(&a) {
        let response = Response::Set { set: Some(held.clone()) };
        c.step(3, Event::Reply { id: rid, result: Ok(response) });
    }
    let a = c.take_actions();
    assert!(matches!(answers(&a)[..], [Ok(Answer::Read(_))]), "{a:?}");
    let [(hid, StoreOp::StoreHint { owner, .. })] = &stores(&a)[..] else { panic!("{a:?}") };
    assert_eq!(owner.as_str(), "n1", "the repair of n4's copy is a hint for n1");
    c.step(4, Event::Stored { id: *hid, result: Ok(StoreResult::Merged(held.join())) });
    assert_eq!(c.hints_pending().get(&id("n1")), Some(&1), "and the book knows it");
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn anti_entropy_compares_each_owned_partition_with_another_owner_and_descends_only_on_a_difference()
{
    let mut c = core_with("n1", 64_000);
    // Within one spacing (64 s over the ~48 partitions n1 owns), an exchange starts: our
    // branch hashes from the store, the peer's by a `Tree` request to another owner.
    c.step(2_000, Event::Tick);
    let a = c.take_actions();
    let [(local, StoreOp::TreeHashes { partition, branches })] = &stores(&a)[..] else {
        panic!("{a:?}")
    };
    assert!(branches.is_empty());
    let trees = |a: &[Action]| -> Sends {
        sends(a).into_iter().filter(|(_, _, r)| matches!(&**r, Request::Tree { .. })).collect()
    };
    let [(remote, peer, req)] = &trees(&a)[..] else { panic!("{a:?}") };
    let Request::Tree { partition: p2, branches: b2, .. } = &**req else { panic!("{req:?}") };
    assert_eq!((p2, b2.len()), (partition, 0));
    let owners = c.ring().unwrap().preference_list(*partition).to_vec();
    assert!(owners.contains(&id("n1")) && owners.contains(peer) && peer.as_str() != "n1");

    // Equal trees: done, nothing more asked.
    let hashes = vec![7u64; crate::aae::BRANCHES];
    c.step(2_001, Event::Stored { id: *local, result: Ok(StoreResult::Hashes(hashes.clone())) });
    c.step(2_002, Event::Reply { id: *remote, result: Ok(Response::Hashes { hashes }) });
    let a = c.take_actions();
    assert!(stores(&a).is_empty() && trees(&a).is_empty(), "{a:?}");
    assert_eq!((c.stats.aae_exchanges, c.stats.aae_in_sync), (1, 1));

    // The next exchange: one branch differs, so only its segments are asked for.
    let mut at = 2_002;
    let (local, remote) = loop {
        at += 100;
        c.step(at, Event::Tick);
        let a = c.take_actions();
        if let ([(l, StoreOp::TreeHashes { .. })], [(r, _, _)]) = (&stores(&a)[..], &trees(&a)[..])
        {
            break (*l, *r);
        }
        assert!(at < 10_000, "no second exchange");
    };
    let ours = vec![0u64; crate::aae::BRANCHES];
    let mut theirs = ours.clone();
    theirs[5] = 99;
    c.step(at, Event::Stored { id: local, result: Ok(StoreResult::Hashes(ours)) });
    c.step(at, Event::Reply { id: remote, result: Ok(Response::Hashes { hashes: theirs }) });
    let a = c.take_actions();
    let [(_, StoreOp::TreeHashes { branches, .. })] = &stores(&a)[..] else { panic!("{a:?}") };
    assert_eq!(branches, &vec![5]);
    let [(_, _, req)] = &trees(&a)[..] else { panic!("{a:?}") };
    assert!(matches!(&**req, Request::Tree { branches, .. } if branches == &vec![5]));
}
