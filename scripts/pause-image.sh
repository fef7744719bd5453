#!/usr/bin/env bash
# Builds a pod-sandbox ("pause") image from Debian's busybox-static as an OCI archive, for
# `ctr -n k8s.io images import`: nothing is pulled. The sandbox process is busybox sleeping;
# containerd stops sandboxes with SIGKILL. Usage: pause-image.sh OUT.tar [NAME]
set -euo pipefail
out=$1
name=${2:-localhost/evio-pause:test}
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "$busybox missing: install busybox-static (scripts/install-deps.sh)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin" "$work/image/blobs/sha256"
cp "$busybox" "$work/rootfs/bin/busybox"
ln -s busybox "$work/rootfs/bin/sh"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/rootfs" -cf "$work/layer.tar" bin
blob() { # stores file $1 as a blob; prints "sha256 size"
    local sum size
    sum=$(sha256sum "$1" | cut -d' ' -f1)
    size=$(stat -c %s "$1")
    cp "$1" "$work/image/blobs/sha256/$sum"
    echo "$sum $size"
}
read -r layer_sum layer_size < <(blob "$work/layer.tar")
cat >"$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/busybox","sleep","2147483647"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:$layer_sum"]}}
JSON
read -r config_sum config_size < <(blob "$work/config.json")
cat >"$work/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config_sum","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:$layer_sum","size":$layer_size}]}
JSON
read -r manifest_sum manifest_size < <(blob "$work/manifest.json")
cat >"$work/image/index.json" <<JSON
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest_sum","size":$manifest_size,"annotations":{"io.containerd.image.name":"$name","org.opencontainers.image.ref.name":"$name"}}]}
JSON
echo '{"imageLayoutVersion":"1.0.0"}' >"$work/image/oci-layout"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/image" -cf "$out" .
