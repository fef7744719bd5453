#!/usr/bin/env bash
# Installs what the tests need on Debian (run as root): the CNI reference plugins (host-local),
# ping (traffic checks between test pods), Open vSwitch,
# nftables and iproute2. Idempotent; `apt-get update` runs once, only when something is missing.
set -euo pipefail

packages=(containernetworking-plugins nftables iproute2 iputils-ping openvswitch-switch iptables)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
