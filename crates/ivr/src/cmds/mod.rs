pub mod dvrip;
pub mod sim;
