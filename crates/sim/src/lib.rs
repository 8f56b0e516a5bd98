//! Simulated devices: real implementations of the device side of each
//! protocol that keep state and answer like the hardware, fed by the
//! embedded fixture media.

pub mod clips;
pub mod cvip;
pub mod dvrip;
pub mod probe;
