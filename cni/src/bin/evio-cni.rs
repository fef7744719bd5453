//! `evio-cni`: the CNI plugin binary kubelet execs (see `evio_cni::shim`).

use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => evio_cni::shim::run(&evio_cni::shim::cni_env(), &stdin),
        Err(e) => evio_cni::shim::stdin_error(&e),
    };
    let mut stdout = std::io::stdout();
    // Nothing more can be reported if stdout itself is gone.
    let _ = stdout.write_all(outcome.stdout.as_bytes());
    let _ = stdout.flush();
    std::process::exit(outcome.exit_code);
}
