#!/usr/bin/env bash
# Installs what the tests need on Debian (run as root): the CNI reference plugins (host-local),
# ping (traffic checks between test pods), Open vSwitch,
# nftables and iproute2; etcd-server (the etcd mirror tests and the benchmarks' anchor), etcd-client
# (etcdctl), openssl (certificates for the etcd TLS test),
# iptables (chaos tests' partitions; Debian's portmap, run by the CNI chain test, writes its
# rules with it); containerd, runc and busybox-static (the CRI suite, node/tests/cri.rs: its
# own containerd with a pause image scripts/pause-image.sh builds from busybox). Idempotent; `apt-get update` runs once, only when something is missing.
set -euo pipefail

packages=(containernetworking-plugins nftables iproute2 iputils-ping openvswitch-switch
    etcd-server etcd-client openssl iptables containerd runc busybox-static chromium)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Python tools for the deploy/ manifest checks (pinned, in a venv).
"$(dirname "$0")/install-py-tools.sh"
