//! evio's chaos tests: real `evio-node` processes in network namespaces under partitions,
//! SIGKILL, SIGSTOP and wiped disks, with invariant and linearizability checkers over the
//! recorded history. The harness lands with the multi-node cluster; the single-node
//! durability tests (SIGKILL + restart) live in `node/tests/dev_process.rs`.
