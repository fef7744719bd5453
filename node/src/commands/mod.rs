pub mod client;
pub mod config_gen;
pub mod dev;
pub mod import_etcd;
pub mod run;
pub mod status;
