//! Node identities and causality actors.
//!
//! A [`NodeId`] names a ring member (chosen by the operator, e.g. `n3`). An [`Actor`] is what
//! appears in dots and version vectors: the node id plus the *epoch* of its data directory. The
//! epoch is chosen once, when the node initialises an empty data directory, so a node that lost
//! its disk and rejoins under the same id issues dots under a new actor and can never reuse a
//! counter it issued before (Riak's KV679 bug: a reused dot makes a newer write look old, and it
//! is silently discarded).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest accepted node id, in bytes.
pub const MAX_NODE_ID_LEN: usize = 64;

/// A validated ring-member name: 1–64 characters of `[A-Za-z0-9_-]`.
///
/// Invariant: the inner string always satisfies the rule above (enforced by [`NodeId::new`] and
/// by deserialisation), so it is safe in logs, JSON keys and the `#`-separated actor syntax.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    /// Validates and wraps a node id.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        let reject = |reason| Error::InvalidNodeId { id: id.chars().take(80).collect(), reason };
        if id.is_empty() {
            return Err(reject("empty"));
        }
        if id.len() > MAX_NODE_ID_LEN {
            return Err(reject("longer than 64 characters"));
        }
        if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(reject("only A-Z a-z 0-9 _ - are allowed"));
        }
        Ok(NodeId(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for NodeId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        NodeId::new(s)
    }
}

impl TryFrom<String> for NodeId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        NodeId::new(s)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

/// The issuer of dots: a node id plus the epoch of its data directory.
///
/// Displayed and serialised as `<node>#<epoch in lowercase hex>`, e.g. `n3#7c1`, so it can be a
/// JSON object key in the `vector_clocks` answers. Ordering is by node id, then epoch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Actor {
    node: NodeId,
    epoch: u32,
}

impl Actor {
    /// An actor for `node` with the data-directory `epoch`.
    pub fn new(node: NodeId, epoch: u32) -> Self {
        Actor { node, epoch }
    }

    /// The node this actor belongs to.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The data-directory epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{:x}", self.node, self.epoch)
    }
}

impl FromStr for Actor {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidActor(s.chars().take(80).collect());
        let (node, epoch) = s.split_once('#').ok_or_else(bad)?;
        let node = NodeId::new(node).map_err(|_| bad())?;
        // Canonical form only (lowercase, no leading zeros), so that text and value are 1:1.
        let epoch_ok = !epoch.is_empty()
            && epoch.len() <= 8
            && epoch.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && (epoch == "0" || !epoch.starts_with('0'));
        if !epoch_ok {
            return Err(bad());
        }
        let epoch = u32::from_str_radix(epoch, 16).map_err(|_| bad())?;
        Ok(Actor { node, epoch })
    }
}

impl TryFrom<String> for Actor {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Actor> for String {
    fn from(a: Actor) -> String {
        a.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_validation() {
        assert!(NodeId::new("n1").is_ok());
        assert!(NodeId::new("node_A-7").is_ok());
        assert!(NodeId::new("a".repeat(64)).is_ok());
        for bad in ["", "n 1", "n#1", "nö", "n/1", &"a".repeat(65)] {
            assert!(NodeId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn actor_display_parse_round_trip() {
        let a = Actor::new(NodeId::new("n3").unwrap(), 0x7c1);
        assert_eq!(a.to_string(), "n3#7c1");
        assert_eq!("n3#7c1".parse::<Actor>().unwrap(), a);
        for bad in ["n3", "n3#", "#7c1", "n3#7C1", "n3#07c1", "n3#123456789", "n3#xyz", "n 3#1"] {
            assert!(bad.parse::<Actor>().is_err(), "{bad:?} accepted");
        }
        assert_eq!("n3#0".parse::<Actor>().unwrap().epoch(), 0);
    }

    #[test]
    fn decoding_validates_ids_and_actors() {
        let bytes = rmp_serde::to_vec(&"n 1".to_string()).unwrap();
        assert!(rmp_serde::from_slice::<NodeId>(&bytes).is_err());
        assert!(rmp_serde::from_slice::<Actor>(&bytes).is_err());
        let ok = rmp_serde::to_vec(&"n1#7c1".to_string()).unwrap();
        assert_eq!(rmp_serde::from_slice::<Actor>(&ok).unwrap().to_string(), "n1#7c1");
    }
}
