//! `evio-ipam`: the IPAM plugin other CNI plugins exec (`"ipam": {"type": "evio-ipam"}`). Like
//! `evio-cni` it forwards the request to the node's evio-node, which allocates from the node's
//! leased block (see `evio_cni::dataplane::evio_ipam`).

fn main() {
    evio_cni::shim::main_as(evio_cni::spec::Plugin::EvioIpam)
}
