//! Validated names: [`BucketName`], [`ObjectName`], and how they are read from a request path.
//!
//! NAMES ARE KEYS, NEVER PATHS
//! ===========================
//! A bucket name follows Amazon S3's bucket naming rules (the subset that matters here): 3–63
//! characters of `a-z 0-9 . -`, starting and ending with a letter or digit, no `..`, and not
//! shaped like an IPv4 address. So `..`, `../etc`, `Photos` and `192.168.0.1` are refused with
//! 400 `InvalidBucketName` before anything reaches the backend.
//!
//! An object name is any UTF-8 string of 1–1024 bytes without NUL. `/` is allowed and has no
//! meaning (`a/../b` is a three-segment-looking key, stored as is): nothing a user sends ever
//! becomes a filesystem path in Cairn, so there is nothing to traverse.
//!
//! In the URL, the object name is the rest of the path after `/buckets/{bucket}/`, percent-decoded
//! by [`percent_decode`] into bytes and then checked, so a percent-encoded invalid UTF-8 sequence
//! (`%FF`) or NUL (`%00`) is refused with 400 `InvalidObjectName`, never lossily replaced.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ApiError, Result};

/// Shortest bucket name, in characters.
pub const MIN_BUCKET_LEN: usize = 3;
/// Longest bucket name, in characters.
pub const MAX_BUCKET_LEN: usize = 63;
/// Longest object name, in bytes of UTF-8.
pub const MAX_OBJECT_NAME_LEN: usize = 1024;

/// A bucket name that satisfies the rules in the module documentation.
///
/// Invariant: the inner string is valid ([`BucketName::new`] and deserialisation check it), so
/// it is safe in keys, logs and JSON.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BucketName(String);

impl BucketName {
    /// Validates a bucket name.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let bad = |why: &str| {
            let shown: String = name.chars().take(80).collect();
            Err(ApiError::InvalidBucketName(format!("{shown:?}: {why}")))
        };
        if name.len() < MIN_BUCKET_LEN || name.len() > MAX_BUCKET_LEN {
            return bad("must be 3 to 63 characters long");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        {
            return bad("only lower-case letters, digits, '.' and '-' are allowed");
        }
        let alnum = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !alnum(name.bytes().next()) || !alnum(name.bytes().last()) {
            return bad("must start and end with a letter or digit");
        }
        if name.contains("..") {
            return bad("must not contain '..'");
        }
        if looks_like_ipv4(&name) {
            return bad("must not be an IP address");
        }
        Ok(BucketName(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// True for four dot-separated groups of 1–3 decimal digits (what S3 refuses as "formatted as an
/// IP address", whether or not each group is <= 255).
fn looks_like_ipv4(s: &str) -> bool {
    let groups: Vec<&str> = s.split('.').collect();
    groups.len() == 4
        && groups
            .iter()
            .all(|g| !g.is_empty() && g.len() <= 3 && g.bytes().all(|b| b.is_ascii_digit()))
}

impl fmt::Display for BucketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for BucketName {
    type Error = ApiError;
    fn try_from(s: String) -> Result<Self> {
        BucketName::new(s)
    }
}

impl From<BucketName> for String {
    fn from(b: BucketName) -> String {
        b.0
    }
}

/// An object (file) name: UTF-8, 1–1024 bytes, no NUL. `/` is an ordinary character.
///
/// Invariant: the inner string is valid ([`ObjectName::new`], [`ObjectName::from_bytes`] and
/// deserialisation check it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ObjectName(String);

impl ObjectName {
    /// Validates an object name.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        if name.is_empty() {
            return Err(ApiError::InvalidObjectName("the name is empty".into()));
        }
        if name.len() > MAX_OBJECT_NAME_LEN {
            return Err(ApiError::InvalidObjectName(format!(
                "{} bytes, the limit is {MAX_OBJECT_NAME_LEN}",
                name.len()
            )));
        }
        if name.contains('\0') {
            return Err(ApiError::InvalidObjectName("the name contains a NUL character".into()));
        }
        Ok(ObjectName(name))
    }

    /// Validates raw bytes (a percent-decoded path): they must be UTF-8, then as [`ObjectName::new`].
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        match String::from_utf8(bytes) {
            Ok(s) => ObjectName::new(s),
            Err(e) => Err(ApiError::InvalidObjectName(format!(
                "not UTF-8 (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ))),
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ObjectName {
    type Error = ApiError;
    fn try_from(s: String) -> Result<Self> {
        ObjectName::new(s)
    }
}

impl From<ObjectName> for String {
    fn from(o: ObjectName) -> String {
        o.0
    }
}

/// Decodes `%XY` escapes into bytes. `None` when a `%` is not followed by two hex digits.
/// `+` is kept as `+` (this is a path, not a form).
pub fn percent_decode(raw: &str) -> Option<Vec<u8>> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).and_then(|b| (*b as char).to_digit(16))?;
            let lo = bytes.get(i + 2).and_then(|b| (*b as char).to_digit(16))?;
            // Two hex digits make at most 255: the cast cannot truncate.
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Splits a request path `/buckets/{bucket}[/{object...}]` into the validated bucket and the
/// still-raw (percent-encoded) rest. Used by every bucket and object handler, so the rules above
/// apply to the path as the client sent it, before any router decoding.
pub fn bucket_from_path(path: &str) -> Result<(BucketName, Option<&str>)> {
    let rest = path.strip_prefix("/buckets/").unwrap_or_default();
    let (raw_bucket, raw_object) = match rest.split_once('/') {
        Some((b, o)) => (b, Some(o)),
        None => (rest, None),
    };
    let bucket = percent_decode(raw_bucket)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ApiError::InvalidBucketName("not a valid percent-encoded name".into()))?;
    Ok((BucketName::new(bucket)?, raw_object))
}

/// Decodes and validates the object part of a path (see [`bucket_from_path`]).
pub fn object_from_raw(raw: &str) -> Result<ObjectName> {
    let bytes = percent_decode(raw)
        .ok_or_else(|| ApiError::InvalidObjectName("bad percent-encoding".into()))?;
    ObjectName::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_rules() {
        for ok in ["abc", "my-bucket.v2", "a1b", "0aa", &"a".repeat(63), "1.2.3", "1.2.3.4a"] {
            assert!(BucketName::new(ok).is_ok(), "{ok:?} refused");
        }
        for bad in [
            "..",
            "../etc",
            "ab",
            "Abc",
            "abC",
            "a_b",
            "-ab",
            "ab-",
            ".ab",
            "a..b",
            "192.168.0.1",
            "999.1.1.1",
            &"a".repeat(64),
            "ab c",
            "abé",
            "",
        ] {
            let e = BucketName::new(bad).unwrap_err();
            assert_eq!(e.code(), "InvalidBucketName", "{bad:?}");
        }
    }

    #[test]
    fn object_rules() {
        assert!(ObjectName::new("a").is_ok());
        assert!(ObjectName::new("dir/sub/../file.txt").is_ok());
        assert!(ObjectName::new("é".repeat(512)).is_ok()); // 1024 bytes
        assert!(ObjectName::new("é".repeat(512) + "x").is_err());
        assert!(ObjectName::new("").is_err());
        assert!(ObjectName::new("a\0b").is_err());
        assert!(ObjectName::from_bytes(vec![b'a', 0xff]).is_err());
        assert!(serde_json::from_str::<ObjectName>("\"\"").is_err());
        assert!(serde_json::from_str::<BucketName>("\"Nope\"").is_err());
    }

    #[test]
    fn percent_decoding_and_path_split() {
        assert_eq!(percent_decode("a%2Fb+c%41").unwrap(), b"a/b+cA");
        assert!(percent_decode("a%2").is_none());
        assert!(percent_decode("a%zz").is_none());
        let (b, rest) = bucket_from_path("/buckets/photos/a/b%20c").unwrap();
        assert_eq!(b.as_str(), "photos");
        assert_eq!(object_from_raw(rest.unwrap()).unwrap().as_str(), "a/b c");
        assert!(bucket_from_path("/buckets/..%2Fetc").is_err());
        assert!(object_from_raw("%FF").is_err());
        assert!(object_from_raw("a%00").is_err());
    }
}
