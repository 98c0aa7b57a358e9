//! Model test: random sequences of put / update / delete / compact / reopen / clock moves, run against
//! the engine and a `BTreeMap` in lockstep; after every step all keys and a full scan must agree.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_engine::{Engine, Keyspace, ManualClock, Options, SyncPolicy, Update};
use proptest::prelude::*;

const KEYS: u8 = 8;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, Vec<u8>),
    /// Appends a byte to the current value (read-merge-write).
    Append(u8, u8),
    Delete(u8),
    Compact,
    Reopen,
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..KEYS, proptest::collection::vec(any::<u8>(), 0..120)).prop_map(|(k, v)| Op::Put(k, v)),
        3 => (0..KEYS, any::<u8>()).prop_map(|(k, b)| Op::Append(k, b)),
        2 => (0..KEYS).prop_map(Op::Delete),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
        1 => (0..30u64).prop_map(Op::Advance),
    ]
}

fn key(k: u8) -> Vec<u8> {
    format!("key/{k}").into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_a_btreemap(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let opts = || Options {
            sync: SyncPolicy::Never,
            segment_size: 1024,
            tombstone_grace: Duration::from_secs(10),
            clock: clock.clone(),
            ..Options::default()
        };
        let mut e = Engine::open(dir.path(), opts()).unwrap();
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    e.put(Keyspace::Object, &key(k), &v).unwrap();
                    model.insert(key(k), v);
                }
                Op::Append(k, b) => {
                    e.update(Keyspace::Object, &key(k), |old| {
                        let mut v = old.map(<[u8]>::to_vec).unwrap_or_default();
                        v.push(b);
                        Ok::<_, ()>(Update::Put(v))
                    }).unwrap();
                    model.entry(key(k)).or_default().push(b);
                }
                Op::Delete(k) => {
                    let existed = e.delete(Keyspace::Object, &key(k)).unwrap();
                    prop_assert_eq!(existed, model.remove(&key(k)).is_some());
                }
                Op::Compact => { e.compact(&mut |_| {}).unwrap(); }
                Op::Reopen => {
                    drop(e);
                    e = Engine::open(dir.path(), opts()).unwrap();
                }
                Op::Advance(s) => clock.advance(Duration::from_secs(s)),
            }
            for k in 0..KEYS {
                let got = e.get(Keyspace::Object, &key(k)).unwrap().map(|v| v.to_vec());
                prop_assert_eq!(got.as_ref(), model.get(&key(k)));
            }
        }
        let scanned: BTreeMap<Vec<u8>, Vec<u8>> = e
            .scan_prefix(Keyspace::Object, b"key/", None, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.to_vec()))
            .collect();
        prop_assert_eq!(&scanned, &model);
        let before = e.stats();
        prop_assert_eq!(before.keys_in(Keyspace::Object), model.len() as u64);
        drop(e);
        prop_assert!(cairn_engine::verify(dir.path()).unwrap().is_clean());
        let e = Engine::open(dir.path(), opts()).unwrap();
        let reopened: BTreeMap<Vec<u8>, Vec<u8>> = e
            .scan_prefix(Keyspace::Object, b"", None, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.to_vec()))
            .collect();
        prop_assert_eq!(&reopened, &model);
        // The incremental bookkeeping agrees with what a reopen recomputes from disk.
        let after = e.stats();
        prop_assert_eq!(
            (after.live_bytes, after.total_bytes, after.reclaimable_bytes, after.tombstones),
            (before.live_bytes, before.total_bytes, before.reclaimable_bytes, before.tombstones)
        );
    }
}
