//! DVRIP / "Sofia": the protocol of Xiongmai (XMeye) cameras, DVRs and NVRs
//! on TCP 34567, both ends.
//!
//! - sans-IO core: [`Header`], [`DvripCodec`] and [`Packet`],
//!   [`sofia_hash`] and [`Encryption`], and the namespaces [`json`], [`ids`],
//!   [`ret`], [`media`], [`messages`];
//! - tokio layer: [`client`] (the camera's user), [`server`] (the camera's
//!   side, for simulators and gateways), [`discovery`], [`alarm_center`].
//!
//! Facts about real devices and the quirks tolerated are in
//! `docs/dvrip.md`; every tolerance has a named test.

pub mod alarm_center;
pub mod client;
mod codec;
pub mod discovery;
mod hash;
mod header;
pub mod ids;
pub mod json;
pub mod media;
pub mod messages;
pub mod ret;
pub mod server;

pub use codec::{CodecError, DvripCodec, Packet, Skipped, DEFAULT_MAX_LEN, VENDOR_FRAGMENT};
pub use hash::{sofia_hash, Encryption};
pub use header::{hex_preview, Header, HEADER_LEN, MAGIC};
