#!/usr/bin/env bash
# Starts ovsdb-server and ovs-vswitchd for the tests (run as root). These machines have no
# openvswitch kernel module: tests create bridges with the userspace `netdev` datapath.
set -euo pipefail
if [ -S /run/openvswitch/db.sock ] && ovs-vsctl --timeout=5 show >/dev/null 2>&1; then
    exit 0
fi
/usr/share/openvswitch/scripts/ovs-ctl start --system-id=random
ovs-vsctl --timeout=10 show >/dev/null
