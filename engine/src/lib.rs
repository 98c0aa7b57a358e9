//! Cairn's storage engine: an append-only, memory-mapped, Bitcask-style log.
//!
//! # Layout
//! (filled in by the engine work)
