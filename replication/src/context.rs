//! The causal context as an opaque client token.
//!
//! A read answers with `join()` of the sibling set, encoded as
//! `base64url-nopad(rmp-serde(VersionVector))`; a write or delete sends it back. The token is
//! opaque to clients but not trusted: [`Context::from_token`] bounds its size before decoding,
//! rejects anything that is not a canonical version vector (bad base64, bad msgpack, invalid
//! actor names, zero counters, trailing bytes) with [`Error::InvalidContext`], and never panics.
//! A forged token can only make a write supersede more than the client saw, which a client can do
//! anyway by reading first; it cannot make the coordinator reuse a dot (the new counter is above
//! both the local history and the token).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::{Error, Result};
use crate::vclock::VersionVector;

/// Longest token accepted, in characters (about 100 actors' worth of entries).
pub const MAX_TOKEN_LEN: usize = 4096;

/// A causal context (the version vector a client read), convertible to and from its token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context(pub VersionVector);

impl Context {
    /// Encodes the context as a token. The empty context encodes as a short non-empty token.
    pub fn to_token(&self) -> String {
        // Serialising a map of validated strings to integers cannot fail; fall back to the empty
        // token rather than panicking if a future type change made it fail.
        let bytes = rmp_serde::to_vec(&self.0).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Parses a client-supplied token. The empty string is the empty context ("I read nothing").
    pub fn from_token(token: &str) -> Result<Self> {
        if token.is_empty() {
            return Ok(Context::default());
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(Error::InvalidContext(format!(
                "{} characters, the limit is {MAX_TOKEN_LEN}",
                token.len()
            )));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|e| Error::InvalidContext(format!("not base64url: {e}")))?;
        let mut de = rmp_serde::Deserializer::new(bytes.as_slice());
        let vv: VersionVector = serde::Deserialize::deserialize(&mut de)
            .map_err(|e| Error::InvalidContext(format!("not a version vector: {e}")))?;
        if !de.get_ref().is_empty() {
            return Err(Error::InvalidContext("trailing bytes".into()));
        }
        Ok(Context(vv))
    }
}

impl From<VersionVector> for Context {
    fn from(vv: VersionVector) -> Self {
        Context(vv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{Actor, NodeId};

    #[test]
    fn round_trip_and_rejections() {
        let vv: VersionVector =
            [(Actor::new(NodeId::new("n3").unwrap(), 0x7c1), 15)].into_iter().collect();
        let tok = Context(vv.clone()).to_token();
        assert!(tok.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(Context::from_token(&tok).unwrap().0, vv);
        assert_eq!(Context::from_token("").unwrap(), Context::default());
        let empty = Context::default().to_token();
        assert_eq!(Context::from_token(&empty).unwrap(), Context::default());
        for bad in ["!!!", "AAAA", "gaNuIDEjMQE", &"A".repeat(MAX_TOKEN_LEN + 1)] {
            let e = Context::from_token(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidContext(_)), "{bad}: {e}");
            assert!(e.is_client_error());
        }
        // Trailing garbage after a valid vector is rejected.
        let mut bytes = rmp_serde::to_vec(&vv).unwrap();
        bytes.push(0);
        assert!(Context::from_token(&URL_SAFE_NO_PAD.encode(bytes)).is_err());
    }
}
