//! CVIPv2: the XeronVision camera video interface protocol, both ends.
//!
//! - [`Header`], [`Packet`], [`PacketCodec`]: the 9-byte header (either
//!   byte order) and a packet codec;
//! - [`Message`], [`Value`], [`parse`], [`write()`]: XML-RPC with the seed's
//!   extensions — a tolerant parser that reports its repairs, a strict
//!   writer (and the analytics documents of metadata streams);
//! - [`ping`]: discovery over UDP and TCP;
//! - [`client`]: many outstanding calls on one connection, pushed events;
//! - [`api`]: typed calls and the seed's enumerations;
//! - [`server`]: a service/property registry and the connection driver a
//!   device, NVR or master server is built on;
//! - [`data`]: the binary data channel (media export, firmware images).

pub mod api;
pub mod client;
pub mod data;
mod header;
pub mod ping;
pub mod server;
mod value;
mod xml;

pub use client::{Client, Error};
pub use header::{Header, Packet, PacketCodec, HEADER_LEN, MAX_PACKET};
pub use value::{canon, parse_int_text, Struct, Value};
pub use xml::{
    parse, parse_analytics, parse_strict, parse_tolerant, parse_value, write, write_analytics, AnalyticsData, Message,
    Parsed, Repair,
};

/// Acknowledge codes (every ack and fault).
pub mod ack {
    pub const SUCCESS: u32 = 0x0100_0000;
    pub const FAIL: u32 = 0x0100_0001;
    pub const BUSY: u32 = 0x0100_0003;
    pub const INVALID: u32 = 0x0100_0004;
    /// `cviEvent.ack` lists its own table, which conflicts with the general
    /// one (busy 0x…02 and invalid 0x…03 there, 0x…03 and 0x…04 here). Both
    /// are kept; `cviEvent.ack` answers with these.
    pub mod event {
        pub const SUCCESS: u32 = 0x0100_0000;
        pub const FAIL: u32 = 0x0100_0001;
        pub const BUSY: u32 = 0x0100_0002;
        pub const INVALID: u32 = 0x0100_0003;
    }

    pub fn name(code: u32) -> &'static str {
        match code {
            SUCCESS => "success",
            FAIL => "fail",
            0x0100_0002 => "busy (event table)",
            BUSY => "busy",
            INVALID => "invalid",
            _ => "unknown code",
        }
    }
}
