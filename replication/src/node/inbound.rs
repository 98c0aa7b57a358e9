//! Answering peers' requests (the receiving side of [`crate::node::messages`]).
//!
//! Each request becomes one store operation (or, for `Coordinate`, a coordinated write) and one
//! response. A `Replicate` or `BucketReplicate` with `hint_for` naming another node is stored as
//! a hint for that node and recorded in the hint book, so it is delivered when the owner is back.

use std::sync::Arc;

use super::{InboundId, NodeCore, StoreCont};
use crate::error::{Error, Result};
use crate::id::NodeId;
use crate::node::keys::HintKey;
use crate::node::messages::{Request, Response};
use crate::node::store::{HintSet, StoreOp, StoreResult};

impl NodeCore {
    /// A request from `from`.
    pub(super) fn on_inbound(&mut self, id: InboundId, from: NodeId, request: Request) {
        let _ = from;
        match request {
            Request::Replicate { key, set, hint_for } => match self.hint_owner(hint_for) {
                Ok(Some(owner)) => {
                    let hk = HintKey::Object(key);
                    let op = StoreOp::StoreHint {
                        owner: owner.clone(),
                        key: hk.clone(),
                        set: HintSet::Object(Arc::unwrap_or_clone(set)),
                    };
                    self.store(op, StoreCont::Inbound { id, hint: Some((owner, hk)) });
                }
                Ok(None) => {
                    let op = StoreOp::Apply { key, set };
                    self.store(op, StoreCont::Inbound { id, hint: None });
                }
                Err(e) => self.respond_error(id, e),
            },
            Request::Read { key } => {
                let op = StoreOp::Read { key, owners: Arc::clone(&self.members) };
                self.store(op, StoreCont::Inbound { id, hint: None });
            }
            Request::Coordinate(w) => self.coordinate_forwarded(id, w),
            Request::BucketReplicate { name, set, hint_for } => match self.hint_owner(hint_for) {
                Ok(Some(owner)) => {
                    let hk = HintKey::Bucket(name);
                    let op = StoreOp::StoreHint {
                        owner: owner.clone(),
                        key: hk.clone(),
                        set: HintSet::Bucket(set),
                    };
                    self.store(op, StoreCont::Inbound { id, hint: Some((owner, hk)) });
                }
                Ok(None) => self.store(
                    StoreOp::ApplyBucket { name, set },
                    StoreCont::Inbound { id, hint: None },
                ),
                Err(e) => self.respond_error(id, e),
            },
            Request::BucketRegistry => {
                self.store(StoreOp::Registry, StoreCont::Inbound { id, hint: None });
            }
            Request::List { bucket, incarnation, prefix, start_after, limit } => {
                let limit = (limit as usize).min(super::MAX_LIST_LIMIT);
                let op = StoreOp::List { bucket, incarnation, prefix, start_after, limit };
                self.store(op, StoreCont::Inbound { id, hint: None });
            }
            Request::Tree { partitions_total, partition, branches } => {
                if let Err(e) = self.check_partitions(partitions_total) {
                    return self.respond_error(id, e);
                }
                let op = StoreOp::TreeHashes { partition, branches };
                self.store(op, StoreCont::Inbound { id, hint: None });
            }
            Request::SegmentKeys { partitions_total, partition, segments } => {
                if let Err(e) = self.check_partitions(partitions_total) {
                    return self.respond_error(id, e);
                }
                let op = StoreOp::SegmentKeys { partition, segments };
                self.store(op, StoreCont::Inbound { id, hint: None });
            }
            Request::TombstoneCheck { version, keys } => self.on_tombstone_check(id, version, keys),
            Request::CollectTombstones { version, keys } => self.on_collect(id, version, keys),
            Request::Repair { entries, want } => {
                self.store(
                    StoreOp::Repair { entries, want },
                    StoreCont::Inbound { id, hint: None },
                );
            }
            // Chunks are bytes the executor serves from its store; a core never sees them.
            Request::PutChunk { .. } | Request::GetChunk { .. } => self.respond_error(
                id,
                Error::Internal("chunk requests are served by the executor".into()),
            ),
            r @ (Request::Status { .. }
            | Request::Prepare { .. }
            | Request::Accept { .. }
            | Request::Commit { .. }
            | Request::SyncPage { .. }) => self.on_cluster_inbound(id, r),
        }
    }

    /// The owner a `hint_for` names, unless it is this node (then the data is its own).
    fn hint_owner(&self, hint_for: Option<String>) -> Result<Option<NodeId>> {
        match hint_for.filter(|o| o != self.config.id.as_str()) {
            Some(o) => Ok(Some(NodeId::new(o)?)),
            None => Ok(None),
        }
    }

    /// The store operation of a peer request is done: respond.
    pub(super) fn inbound_stored(
        &mut self,
        id: InboundId,
        hint: Option<(NodeId, HintKey)>,
        result: Result<StoreResult>,
    ) {
        let response = match result {
            Ok(StoreResult::Merged(vv)) => {
                if let Some((owner, key)) = hint {
                    self.hints.record(key, owner, &vv);
                    self.stats.hints_stored += 1;
                }
                Response::Ack { vv }
            }
            Ok(StoreResult::Bucket(set)) => Response::Ack { vv: set.join() },
            Ok(StoreResult::Set(set)) => Response::Set { set },
            Ok(StoreResult::Registry(entries)) => Response::Registry { entries },
            Ok(StoreResult::Listing(entries)) => Response::Listing { entries },
            Ok(StoreResult::Page(page)) => {
                Response::Page { entries: page.entries, next: page.next }
            }
            Ok(StoreResult::Hashes(hashes)) => Response::Hashes { hashes },
            Ok(StoreResult::Digests(entries)) => Response::Digests { entries },
            Ok(_) => {
                return self.respond_error(id, Error::Internal("unexpected store result".into()));
            }
            Err(e) => return self.respond_error(id, e),
        };
        self.respond(id, response);
    }

    /// Refuses a peer's anti-entropy request made for a ring of another size.
    fn check_partitions(&self, partitions_total: u32) -> Result<()> {
        if partitions_total != self.config.partitions {
            return Err(Error::InvalidRing(format!(
                "the sender's ring has {partitions_total} partitions, this node's {}",
                self.config.partitions
            )));
        }
        Ok(())
    }

    fn respond_error(&mut self, id: InboundId, e: Error) {
        self.respond(id, Response::Error { code: e.code().to_owned(), message: e.to_string() });
    }
}
