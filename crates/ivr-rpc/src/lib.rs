//! IVR RPC: the JSON-over-WebSocket protocol between IVT (devices on site)
//! and IVC (the video cloud). The protocol in English with ivr's decisions
//! is in `docs/design/protocols.md`.
//!
//! The sans-IO core: [`Message`] (the four packets) with [`Resp`] (an
//! answer kept as its JSON text), [`RpcError`] and
//! its [`codes`], [`Peer`] (one end of a connection, enforcing the five
//! disconnect rules, [`Rule`]) and [`catalogue`]
//! (every method and event, typed and validated). The tokio layer: [`conn`]
//! (runs a peer over frames, with a handler and a handle) and [`ws`]
//! (tungstenite WebSockets as frames, the IVT login URL, dialling ws and
//! wss); [`net`] (connections out, TLS for both ends).

pub mod catalogue;
pub mod conn;
mod message;
pub mod net;
mod peer;
pub mod ws;

pub use message::{codes, Message, Resp, RpcError};
pub use peer::{Action, CallId, Close, Peer, Rule, RESPONSE_TIMEOUT};
