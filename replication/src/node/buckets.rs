//! The bucket registry: which buckets exist, their incarnation and conflict policy.
//!
//! BUCKET REGISTRY
//! ===============
//! Every node holds the whole registry (any node validates a request locally). Each bucket name
//! maps to a DVV sibling set of [`BucketEntry`] values, versioned and merged exactly like objects,
//! replicated to every member, with hints for members that are down and a periodic pull from a
//! random peer (registry anti-entropy), so a node that was down learns of buckets created or
//! deleted meanwhile.
//!
//! Deleting a bucket writes an entry with `deleted = true` under the context of what the deleting
//! node saw. The bucket's files are not touched: object keys carry the bucket's *incarnation*
//! (a random 64-bit id chosen at creation), so a re-created bucket starts empty in O(1) and the old
//! incarnation's records are garbage for compaction.
//!
//! Concurrent creates of one name on two sides of a partition leave two live siblings. Every node
//! resolves them the same way ([`resolve`]): the earliest creation wins, ties broken by dot, so all
//! nodes agree on the incarnation; the loser's files stay unreachable (documented limitation).

use crate::dvv::{Dotted, SiblingSet};
use serde::{Deserialize, Serialize};

/// How a bucket resolves concurrent writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConflictPolicy {
    /// Keep concurrent versions as siblings; the client resolves (the default).
    #[default]
    Siblings,
    /// Last write (by timestamp) wins; lossy under concurrency.
    Lww,
}

/// One version of a bucket's registry entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketEntry {
    /// Random id of this incarnation of the bucket; part of every object key.
    pub incarnation: u64,
    /// Conflict policy.
    pub policy: ConflictPolicy,
    /// Creation time at the creating node, ms since the Unix epoch.
    pub created_ms: u64,
    /// True for a delete marker.
    pub deleted: bool,
}

/// A live bucket as resolved from its registry set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BucketInfo {
    /// Name.
    pub name: String,
    /// Incarnation.
    pub incarnation: u64,
    /// Conflict policy.
    pub policy: ConflictPolicy,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
}

/// The live incarnation of a bucket, if any: among live (non-deleted) siblings, the earliest
/// creation, ties broken by the smaller dot. Deterministic on every node.
pub fn resolve(name: &str, set: &SiblingSet<BucketEntry>) -> Option<BucketInfo> {
    set.siblings()
        .iter()
        .filter(|s| !s.value.deleted)
        .min_by(|a: &&Dotted<BucketEntry>, b| {
            (a.value.created_ms, &a.dot).cmp(&(b.value.created_ms, &b.dot))
        })
        .map(|s| BucketInfo {
            name: name.to_owned(),
            incarnation: s.value.incarnation,
            policy: s.value.policy,
            created_ms: s.value.created_ms,
        })
}

#[cfg(test)]
mod tests {
    use crate::{Actor, NodeId, VersionVector};

    use super::*;

    fn actor(n: &str) -> Actor {
        Actor::new(NodeId::new(n).unwrap(), 1)
    }

    fn entry(inc: u64, created: u64, deleted: bool) -> BucketEntry {
        BucketEntry {
            incarnation: inc,
            policy: ConflictPolicy::Siblings,
            created_ms: created,
            deleted,
        }
    }

    #[test]
    fn delete_then_recreate_gives_a_new_incarnation() {
        let mut set = SiblingSet::new();
        set.update(&VersionVector::new(), entry(1, 10, false), &actor("n1"));
        assert_eq!(resolve("b", &set).unwrap().incarnation, 1);
        let ctx = set.join();
        set.update(&ctx, entry(0, 20, true), &actor("n2"));
        assert_eq!(resolve("b", &set), None);
        let ctx = set.join();
        set.update(&ctx, entry(2, 30, false), &actor("n3"));
        assert_eq!(resolve("b", &set).unwrap().incarnation, 2);
    }

    #[test]
    fn concurrent_creates_resolve_the_same_way_on_every_node() {
        let mut a = SiblingSet::new();
        a.update(&VersionVector::new(), entry(7, 100, false), &actor("n1"));
        let mut b = SiblingSet::new();
        b.update(&VersionVector::new(), entry(9, 50, false), &actor("n2"));
        let ab = SiblingSet::sync(&a, &b);
        let ba = SiblingSet::sync(&b, &a);
        assert_eq!(resolve("x", &ab).unwrap().incarnation, 9);
        assert_eq!(resolve("x", &ba), resolve("x", &ab));
    }
}
