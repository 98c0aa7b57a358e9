//! How the node lays its data out in the engine's keyspaces.
//!
//! KEYS
//! ====
//! - Object keyspace: `bucket 0x00 incarnation(u64 BE) name`. Bucket names never contain NUL,
//!   so `bucket 0x00 incarnation` is an exact prefix for listing one bucket incarnation, and a
//!   re-created bucket (new incarnation) never shows the files of the old one. Big-endian keeps
//!   numeric order equal to byte order.
//! - Bucket keyspace: the bucket name; the value is the registry entry's sibling set.
//! - Hint keyspace: `owner 0x00 kind rest`, where kind is `o` (rest = an object key) or `b`
//!   (rest = a bucket name). Node ids never contain NUL, so the hints for one owner are one
//!   prefix range.
//! - Chunk keyspace: `object key 0x00 blob(u64 BE) index(u32 BE)` ([`ChunkKey`]). Object names
//!   never contain NUL, so `object key 0x00` is an exact prefix for one object's chunks and
//!   `object key 0x00 blob` for one blob's, in index order.

use serde::{Deserialize, Serialize};

/// The identity of one object: bucket, bucket incarnation and object name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    /// Bucket name (validated by the API layer).
    pub bucket: String,
    /// Incarnation of the bucket the object belongs to.
    pub incarnation: u64,
    /// Object name (UTF-8, no NUL).
    pub name: String,
}

impl ObjectKey {
    /// The engine key.
    pub fn encode(&self) -> Vec<u8> {
        let mut k = bucket_prefix(&self.bucket, self.incarnation);
        k.extend_from_slice(self.name.as_bytes());
        k
    }

    /// Parses an engine key written by [`ObjectKey::encode`].
    pub fn decode(bytes: &[u8]) -> Option<ObjectKey> {
        let nul = bytes.iter().position(|&b| b == 0)?;
        let bucket = std::str::from_utf8(&bytes[..nul]).ok()?.to_owned();
        let rest = &bytes[nul + 1..];
        let inc: [u8; 8] = rest.get(..8)?.try_into().ok()?;
        let name = std::str::from_utf8(&rest[8..]).ok()?.to_owned();
        Some(ObjectKey { bucket, incarnation: u64::from_be_bytes(inc), name })
    }

    /// The ring hash of this key.
    pub fn hash(&self) -> u64 {
        crate::ring::key_hash(&self.bucket, self.incarnation, &self.name)
    }
}

/// The engine-key prefix of every object of one bucket incarnation.
pub fn bucket_prefix(bucket: &str, incarnation: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(bucket.len() + 9 + 64);
    k.extend_from_slice(bucket.as_bytes());
    k.push(0);
    k.extend_from_slice(&incarnation.to_be_bytes());
    k
}

/// The engine key of one chunk of a large object's content.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChunkKey {
    /// The object.
    pub key: ObjectKey,
    /// The blob (one upload's content, [`crate::dvv::Chunked::blob`]).
    pub blob: u64,
    /// The chunk's index in the blob.
    pub index: u32,
}

/// Bytes after an object key in a chunk key: NUL, blob, index.
const CHUNK_SUFFIX: usize = 1 + 8 + 4;

impl ChunkKey {
    /// The engine key.
    pub fn encode(&self) -> Vec<u8> {
        let mut k = blob_prefix(&self.key, self.blob);
        k.extend_from_slice(&self.index.to_be_bytes());
        k
    }

    /// Parses an engine key written by [`ChunkKey::encode`].
    pub fn decode(bytes: &[u8]) -> Option<ChunkKey> {
        let split = bytes.len().checked_sub(CHUNK_SUFFIX)?;
        let (obj, suffix) = bytes.split_at(split);
        if suffix[0] != 0 {
            return None;
        }
        let key = ObjectKey::decode(obj)?;
        let blob = u64::from_be_bytes(suffix[1..9].try_into().ok()?);
        let index = u32::from_be_bytes(suffix[9..13].try_into().ok()?);
        Some(ChunkKey { key, blob, index })
    }
}

/// The engine-key prefix of every chunk of one object.
pub fn object_chunks_prefix(key: &ObjectKey) -> Vec<u8> {
    let mut k = key.encode();
    k.push(0);
    k
}

/// The engine-key prefix of every chunk of one blob of an object.
pub fn blob_prefix(key: &ObjectKey, blob: u64) -> Vec<u8> {
    let mut k = object_chunks_prefix(key);
    k.extend_from_slice(&blob.to_be_bytes());
    k
}

/// What a hint holds data for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum HintKey {
    /// An object's sibling set.
    Object(ObjectKey),
    /// A bucket registry entry.
    Bucket(String),
}

impl HintKey {
    /// The engine key of this hint for `owner`.
    pub fn encode(&self, owner: &str) -> Vec<u8> {
        let mut k = owner_prefix(owner);
        match self {
            HintKey::Object(o) => {
                k.push(b'o');
                k.extend_from_slice(&o.encode());
            }
            HintKey::Bucket(b) => {
                k.push(b'b');
                k.extend_from_slice(b.as_bytes());
            }
        }
        k
    }

    /// Parses an engine hint key: the owner and what the hint is for.
    pub fn decode(bytes: &[u8]) -> Option<(String, HintKey)> {
        let nul = bytes.iter().position(|&b| b == 0)?;
        let owner = std::str::from_utf8(&bytes[..nul]).ok()?.to_owned();
        let rest = &bytes[nul + 1..];
        let key = match rest.first()? {
            b'o' => HintKey::Object(ObjectKey::decode(&rest[1..])?),
            b'b' => HintKey::Bucket(std::str::from_utf8(&rest[1..]).ok()?.to_owned()),
            _ => return None,
        };
        Some((owner, key))
    }
}

/// The engine-key prefix of every hint held for `owner`.
pub fn owner_prefix(owner: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(owner.len() + 1);
    k.extend_from_slice(owner.as_bytes());
    k.push(0);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(bucket: &str, inc: u64, name: &str) -> ObjectKey {
        ObjectKey { bucket: bucket.into(), incarnation: inc, name: name.into() }
    }

    #[test]
    fn chunk_keys_round_trip_and_group_by_object_and_blob() {
        let k = key("photos", 0x0000_0100_0000_0000, "2024/cat.jpg");
        let c = ChunkKey { key: k.clone(), blob: 0x00ff_0000_0000_0001, index: 7 };
        assert_eq!(ChunkKey::decode(&c.encode()), Some(c.clone()));
        assert!(c.encode().starts_with(&blob_prefix(&k, c.blob)));
        assert!(c.encode().starts_with(&object_chunks_prefix(&k)));
        let other = key("photos", 0x0000_0100_0000_0000, "2024/cat.jpg2");
        assert!(
            !ChunkKey { key: other, blob: 1, index: 0 }
                .encode()
                .starts_with(&object_chunks_prefix(&k))
        );
        let next = ChunkKey { index: 8, ..c.clone() };
        assert!(c.encode() < next.encode(), "chunks list in index order");
        assert_eq!(ChunkKey::decode(b"short"), None);
    }

    #[test]
    fn object_keys_round_trip_and_group_by_bucket_incarnation() {
        let k = key("photos", 7, "2024/cat.jpg");
        assert_eq!(ObjectKey::decode(&k.encode()), Some(k.clone()));
        assert!(k.encode().starts_with(&bucket_prefix("photos", 7)));
        assert!(!k.encode().starts_with(&bucket_prefix("photos", 8)));
        // A bucket whose name extends another's is a different prefix range.
        assert!(!key("photos2", 7, "x").encode().starts_with(&bucket_prefix("photos", 7)));
    }

    #[test]
    fn hint_keys_round_trip_and_group_by_owner() {
        let o = HintKey::Object(key("b", 1, "n/a\u{e9}"));
        let b = HintKey::Bucket("b".into());
        for h in [o, b] {
            let enc = h.encode("n2");
            assert!(enc.starts_with(&owner_prefix("n2")));
            assert!(!enc.starts_with(&owner_prefix("n")));
            assert_eq!(HintKey::decode(&enc), Some(("n2".to_owned(), h)));
        }
        assert_eq!(HintKey::decode(b"n2\0zzz"), None);
        assert_eq!(HintKey::decode(b"no-nul"), None);
    }
}
