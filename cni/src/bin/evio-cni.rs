//! `evio-cni`: the CNI plugin binary kubelet execs (see `evio_cni::shim`).

fn main() {
    evio_cni::shim::main_as(evio_cni::spec::Plugin::EvioCni)
}
