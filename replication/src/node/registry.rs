//! Bucket create and delete (the registry is replicated to every member) and listings.
//!
//! BUCKET REGISTRY
//! ===============
//! A create or delete is applied here first (under the registry entry's lock, superseding what
//! this node holds for the name), then sent to every other member; members that are down or
//! fail get a hint stored here. It succeeds once W members (this one included, at most all
//! members) stored it. Concurrent changes resolve deterministically ([`super::buckets::resolve`]).
//!
//! LISTINGS
//! ========
//! A listing page is a scatter-gather union: every member believed up is asked for its live names
//! in the range (names and metadata only), and the answers are merged. Members that were not
//! asked or did not answer are named in the answer (`missing`), so a partial page is never
//! silent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{Answer, BucketOutcome, ClientId, Listing, MsgCont, NodeCore, SendError, StoreCont};
use crate::dvv::SiblingSet;
use crate::error::{Error, Result};
use crate::id::NodeId;
use crate::node::buckets::{self, BucketEntry};
use crate::node::keys::HintKey;
use crate::node::messages::{ListEntry, Request, Response};
use crate::node::store::{BucketChange, HintSet, StoreOp, StoreResult};

/// One bucket create or delete coordinated by this node.
pub(super) struct BucketFlow {
    client: ClientId,
    name: String,
    create: bool,
    set: Option<SiblingSet<BucketEntry>>,
    written: Vec<NodeId>,
    hinted: Vec<NodeId>,
    /// Sends and hint stores not finished.
    open: usize,
    /// Hint stores have been started.
    hinting: bool,
}

/// One listing page being gathered.
pub(super) struct ListFlow {
    client: ClientId,
    limit: usize,
    open: usize,
    answered: usize,
    full_page: bool,
    merged: BTreeMap<String, ListEntry>,
    missing: BTreeSet<NodeId>,
}

impl NodeCore {
    pub(super) fn start_bucket_change(
        &mut self,
        client: ClientId,
        name: String,
        change: BucketChange,
    ) {
        let flow = self.fresh_id();
        let create = matches!(change, BucketChange::Create { .. });
        self.buckets.insert(
            flow,
            BucketFlow {
                client,
                name: name.clone(),
                create,
                set: None,
                written: vec![self.config.id.clone()],
                hinted: Vec::new(),
                open: 0,
                hinting: false,
            },
        );
        let op = StoreOp::ChangeBucket { name, change, actor: self.actor.clone() };
        self.store(op, StoreCont::BucketChanged { flow });
    }

    pub(super) fn bucket_changed(&mut self, flow: u64, result: Result<StoreResult>) {
        let set = match result {
            Ok(StoreResult::Bucket(set)) => set,
            Ok(_) => {
                return self.fail_bucket(flow, Error::Internal("unexpected store result".into()));
            }
            Err(e) => return self.fail_bucket(flow, e),
        };
        let me = self.config.id.clone();
        let mut members: Vec<NodeId> = self.members.iter().filter(|m| **m != me).cloned().collect();
        // Nodes outside the layout that are up (gateways, nodes waiting to be added) get the
        // change too, so they can serve the bucket at once; they are never hinted (they pull
        // the registry when they need it).
        let gateways: Vec<NodeId> =
            self.up.iter().filter(|n| **n != me && !members.contains(n)).cloned().collect();
        members.extend(gateways);
        let up = self.up.clone();
        let Some(b) = self.buckets.get_mut(&flow) else { return };
        b.set = Some(set.clone());
        let msg = Arc::new(Request::BucketReplicate { name: b.name.clone(), set, hint_for: None });
        let mut sends = Vec::new();
        for m in members {
            if up.contains(&m) {
                sends.push(m);
            } else {
                b.hinted.push(m);
            }
        }
        b.open = sends.len();
        for m in sends {
            self.send(m.clone(), Arc::clone(&msg), MsgCont::BucketTarget { flow, node: m });
        }
        self.advance_bucket(flow);
    }

    pub(super) fn bucket_target_reply(
        &mut self,
        flow: u64,
        node: NodeId,
        result: std::result::Result<Response, SendError>,
    ) {
        let Some(b) = self.buckets.get_mut(&flow) else { return };
        b.open = b.open.saturating_sub(1);
        match result {
            Ok(Response::Ack { .. }) => b.written.push(node),
            // A gateway that failed is not hinted: it pulls the registry itself.
            _ if self.members.contains(&node) => b.hinted.push(node),
            _ => {}
        }
        self.advance_bucket(flow);
    }

    pub(super) fn bucket_hint_stored(
        &mut self,
        flow: u64,
        owner: NodeId,
        result: Result<StoreResult>,
    ) {
        let Some(b) = self.buckets.get_mut(&flow) else { return };
        b.open = b.open.saturating_sub(1);
        let name = b.name.clone();
        if let Ok(StoreResult::Merged(vv)) = result {
            self.hints.record(HintKey::Bucket(name), owner, &vv);
            self.stats.hints_stored += 1;
        }
        self.advance_bucket(flow);
    }

    fn advance_bucket(&mut self, flow: u64) {
        let Some(b) = self.buckets.get_mut(&flow) else { return };
        if b.open > 0 {
            return;
        }
        if !b.hinting {
            b.hinting = true;
            let (name, set, hinted) = (b.name.clone(), b.set.clone(), b.hinted.clone());
            let Some(set) = set else { return };
            b.open = hinted.len();
            for owner in hinted {
                let op = StoreOp::StoreHint {
                    owner: owner.clone(),
                    key: HintKey::Bucket(name.clone()),
                    set: HintSet::Bucket(set.clone()),
                };
                self.store(op, StoreCont::BucketHint { flow, owner });
            }
            if self.buckets.get(&flow).is_some_and(|b| b.open > 0) {
                return;
            }
        }
        let Some(b) = self.buckets.remove(&flow) else { return };
        let required = self.config.w.min(self.members.len());
        let written = b.written.iter().filter(|n| self.members.contains(n)).count();
        let result = if written < required {
            Err(Error::Unavailable(format!(
                "{written} of {required} required members stored the bucket change; the others \
                 get it when they return"
            )))
        } else {
            let bucket = if b.create {
                b.set.as_ref().and_then(|s| buckets::resolve(&b.name, s))
            } else {
                None
            };
            Ok(Answer::Bucket(BucketOutcome {
                node: self.config.id.to_string(),
                bucket,
                replicas_written: b.written.iter().map(|m| m.to_string()).collect(),
                hinted: b.hinted.iter().map(|m| m.to_string()).collect(),
            }))
        };
        self.answer(b.client, result);
    }

    fn fail_bucket(&mut self, flow: u64, e: Error) {
        if let Some(b) = self.buckets.remove(&flow) {
            self.answer(b.client, Err(e));
        }
    }

    pub(super) fn start_list(
        &mut self,
        client: ClientId,
        bucket: String,
        incarnation: u64,
        prefix: String,
        start_after: Option<String>,
        limit: usize,
    ) {
        let limit = limit.clamp(1, super::MAX_LIST_LIMIT);
        let flow = self.fresh_id();
        let asked: Vec<NodeId> = self.up.iter().cloned().collect();
        self.lists.insert(
            flow,
            ListFlow {
                client,
                limit,
                open: asked.len(),
                answered: 0,
                full_page: false,
                merged: BTreeMap::new(),
                missing: self.members.iter().cloned().collect(),
            },
        );
        let msg = Arc::new(Request::List {
            bucket: bucket.clone(),
            incarnation,
            prefix: prefix.clone(),
            start_after: start_after.clone(),
            limit: limit as u32,
        });
        for m in asked {
            if m == self.config.id {
                let op = StoreOp::List {
                    bucket: bucket.clone(),
                    incarnation,
                    prefix: prefix.clone(),
                    start_after: start_after.clone(),
                    limit,
                };
                self.store(op, StoreCont::LocalList { flow });
            } else {
                self.send(m.clone(), Arc::clone(&msg), MsgCont::ListTarget { flow, node: m });
            }
        }
    }

    /// One member's part of a listing (`None`: it failed).
    pub(super) fn list_reply(&mut self, flow: u64, node: NodeId, entries: Option<Vec<ListEntry>>) {
        let Some(l) = self.lists.get_mut(&flow) else { return };
        l.open = l.open.saturating_sub(1);
        if let Some(part) = entries {
            l.missing.remove(&node);
            l.answered += 1;
            l.full_page |= part.len() >= l.limit;
            for e in part {
                match l.merged.get_mut(&e.name) {
                    Some(have) => {
                        have.versions = have.versions.max(e.versions);
                        if e.meta.timestamp_ms > have.meta.timestamp_ms {
                            have.meta = e.meta;
                        }
                    }
                    None => {
                        l.merged.insert(e.name.clone(), e);
                    }
                }
            }
        }
        if l.open > 0 {
            return;
        }
        let Some(l) = self.lists.remove(&flow) else { return };
        let result = if l.answered == 0 {
            Err(Error::Unavailable("no member answered the listing".into()))
        } else {
            let more = l.full_page || l.merged.len() > l.limit;
            Ok(Answer::Listing(Listing {
                entries: l.merged.into_values().take(l.limit).collect(),
                more,
                missing: l.missing.into_iter().map(|m| m.to_string()).collect(),
            }))
        };
        self.answer(l.client, result);
    }
}
