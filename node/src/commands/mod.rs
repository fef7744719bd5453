pub mod client;
pub mod dev;
pub mod run;
