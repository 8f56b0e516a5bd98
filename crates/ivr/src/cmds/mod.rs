pub mod bench;
pub mod dvrip;
pub mod edge;
pub mod sim;
