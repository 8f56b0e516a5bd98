//! IVR RPC: the JSON-over-WebSocket protocol between IVT (devices on site)
//! and IVC (the video cloud), from `../shared/seeds/004_…` (English with
//! ivr's decisions: `../shared/docs/ivr-rpc.md`).
//!
//! This crate is the sans-IO core: [`message`] (the four packets),
//! [`peer`] (one end of a connection, enforcing the five disconnect rules)
//! and [`catalogue`] (every method and event, typed and validated). The
//! WebSocket adapters come with the cloud and the edge.

pub mod catalogue;
pub mod message;
pub mod peer;

pub use message::{Message, RpcError};
pub use peer::{Action, CallId, Close, Peer, Rule};
