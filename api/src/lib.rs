//! Cairn's REST/JSON API: the axum router, error mapping and request validation.
//!
//! # Layout
//! (filled in by the node work)
