pub mod client;
pub mod dev;
