//! evio's chaos tests: real `evio-node run` processes, each in its own network namespace on a
//! private bridge, under partitions, packet loss, SIGKILL, SIGSTOP, wiped and full disks, with
//! a concurrent lease and pod workload whose recorded history is checked for invariants and
//! per-key linearizability. The binary `evio-chaos` runs one seed; `tests/ci_run.rs` runs a
//! few short seeds in CI.

pub mod access;
pub mod checkers;
pub mod cluster;
pub mod faults;
pub mod history;
pub mod linearizability;
pub mod run;
pub mod workload;
