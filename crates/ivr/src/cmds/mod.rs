pub mod bench;
pub mod dvrip;
pub mod sim;
