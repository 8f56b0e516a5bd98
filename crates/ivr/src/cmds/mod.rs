pub mod bench;
pub mod cloud;
pub mod demo;
pub mod dvrip;
pub mod edge;
pub mod sim;
