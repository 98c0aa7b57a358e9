//! Version vectors and dots.
//!
//! VERSION VECTORS
//! ===============
//! A version vector maps each [`Actor`] to the highest counter of that actor whose event is
//! known. Here it is always *downward closed*: `vv[a] = n` means every event `(a, 1..=n)` is known
//! (held, or known to be overwritten). That is what makes a single integer per actor enough and
//! what DVV sets rely on (see [`crate::dvv`]). Two vectors are ordered pointwise; when neither
//! descends from the other they are concurrent.
//!
//! Invariants of [`VersionVector`]:
//! - no entry has counter 0 (an absent actor means 0), so equal histories have equal encodings;
//! - entries are sorted by actor (a `BTreeMap`), so encoding and JSON rendering are deterministic.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::Actor;

/// One event: the `counter`-th write coordinated by `actor` (for one key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// Who issued the event.
    pub actor: Actor,
    /// The actor's per-key counter, starting at 1.
    pub counter: u64,
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.actor, self.counter)
    }
}

impl std::str::FromStr for Dot {
    type Err = Error;
    /// Parses the display form `<actor>:<counter>`, e.g. `n3#7c1:15` (a sibling id in the API).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::InvalidContext(format!(
                "bad sibling id {:?}",
                s.chars().take(80).collect::<String>()
            ))
        };
        let (actor, counter) = s.rsplit_once(':').ok_or_else(bad)?;
        let actor: Actor = actor.parse().map_err(|_| bad())?;
        // Canonical decimal only (no sign, no leading zero), so text and value are 1:1.
        if counter.is_empty()
            || counter.starts_with('0')
            || !counter.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let counter: u64 = counter.parse().map_err(|_| bad())?;
        Ok(Dot { actor, counter })
    }
}

/// A downward-closed version vector (actor -> highest known counter).
///
/// Serialises as a map from actor text (`n3#7c1`) to counter, which is the JSON shape the API
/// returns as `vector_clocks`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<Actor, u64>", into = "BTreeMap<Actor, u64>")]
pub struct VersionVector(BTreeMap<Actor, u64>);

impl VersionVector {
    /// The empty vector (no events known).
    pub fn new() -> Self {
        VersionVector(BTreeMap::new())
    }

    /// Highest known counter of `actor` (0 when unknown).
    pub fn get(&self, actor: &Actor) -> u64 {
        self.0.get(actor).copied().unwrap_or(0)
    }

    /// Raises `actor`'s entry to at least `counter`.
    pub fn witness(&mut self, actor: &Actor, counter: u64) {
        if counter == 0 {
            return;
        }
        let entry = self.0.entry(actor.clone()).or_insert(0);
        if *entry < counter {
            *entry = counter;
        }
    }

    /// True when the event `dot` is part of this history.
    pub fn contains(&self, dot: &Dot) -> bool {
        dot.counter <= self.get(&dot.actor)
    }

    /// True when every event of `other` is part of this history (`self >= other`, equal included).
    pub fn descends(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(a, &c)| self.get(a) >= c)
    }

    /// True when neither vector descends from the other.
    pub fn concurrent(&self, other: &VersionVector) -> bool {
        !self.descends(other) && !other.descends(self)
    }

    /// Pointwise maximum with `other`, in place.
    pub fn merge(&mut self, other: &VersionVector) {
        for (a, &c) in &other.0 {
            self.witness(a, c);
        }
    }

    /// Number of actors with a non-zero counter.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no event is known.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries in actor order.
    pub fn iter(&self) -> impl Iterator<Item = (&Actor, u64)> {
        self.0.iter().map(|(a, &c)| (a, c))
    }
}

impl TryFrom<BTreeMap<Actor, u64>> for VersionVector {
    type Error = Error;
    fn try_from(map: BTreeMap<Actor, u64>) -> Result<Self> {
        if let Some((a, _)) = map.iter().find(|(_, c)| **c == 0) {
            return Err(Error::InvalidContext(format!("zero counter for actor {a}")));
        }
        Ok(VersionVector(map))
    }
}

impl From<VersionVector> for BTreeMap<Actor, u64> {
    fn from(vv: VersionVector) -> Self {
        vv.0
    }
}

impl FromIterator<(Actor, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (Actor, u64)>>(iter: I) -> Self {
        let mut vv = VersionVector::new();
        for (a, c) in iter {
            vv.witness(&a, c);
        }
        vv
    }
}

impl fmt::Display for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (a, c)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{a}: {c}")?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::NodeId;

    fn actor(n: &str) -> Actor {
        Actor::new(NodeId::new(n).unwrap(), 1)
    }

    #[test]
    fn ordering_and_merge() {
        let a: VersionVector = [(actor("a"), 2), (actor("b"), 1)].into_iter().collect();
        let b: VersionVector = [(actor("a"), 1), (actor("b"), 3)].into_iter().collect();
        assert!(a.concurrent(&b));
        let mut m = a.clone();
        m.merge(&b);
        assert!(m.descends(&a) && m.descends(&b));
        assert_eq!(m.get(&actor("a")), 2);
        assert_eq!(m.get(&actor("b")), 3);
        assert!(VersionVector::new().descends(&VersionVector::new()));
        assert!(m.contains(&Dot { actor: actor("b"), counter: 3 }));
        assert!(!m.contains(&Dot { actor: actor("b"), counter: 4 }));
        assert_eq!(m.to_string(), "{a#1: 2, b#1: 3}");
    }

    #[test]
    fn dot_display_parse_round_trip() {
        let d = Dot { actor: actor("n3"), counter: 15 };
        assert_eq!(d.to_string(), "n3#1:15");
        assert_eq!("n3#1:15".parse::<Dot>().unwrap(), d);
        for bad in ["n3#1", "n3#1:0", "n3#1:x", "n3:15", ":15", "n3#1:+5", "n3#1:-5"] {
            assert!(bad.parse::<Dot>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn zero_counters_are_never_stored_or_accepted() {
        let mut vv = VersionVector::new();
        vv.witness(&actor("a"), 0);
        assert!(vv.is_empty());
        let raw: BTreeMap<Actor, u64> = [(actor("a"), 0)].into_iter().collect();
        let bytes = rmp_serde::to_vec(&raw).unwrap();
        assert!(rmp_serde::from_slice::<VersionVector>(&bytes).is_err());
    }
}
