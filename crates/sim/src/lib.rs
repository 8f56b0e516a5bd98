//! Simulated devices: real implementations of the device side of each
//! protocol that keep state and answer like the hardware, fed by the
//! embedded fixture media.

/// The fixture clips (the `ivr-fixtures` crate, shared with the edge).
pub use ivr_fixtures as clips;
pub mod cvip;
pub mod dvrip;
