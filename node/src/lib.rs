//! What the evio-node daemon shares with its benchmarks (`evio-bench`) and tests.

pub mod etcd_gateway;
