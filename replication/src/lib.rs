//! Cairn's replication core: the ring, preference lists, dotted version vectors, quorum and hint
//! bookkeeping, as plain synchronous code with no I/O.
//!
//! # Layout
//! (filled in by the replication work)
