#!/bin/bash
# Seeds fuzz/corpus/qcow2_image (the corpus `cargo fuzz run qcow2_image` uses by default) with small
# images made by qemu-img: from an empty corpus the fuzzer rarely gets past the header checks.
# Needs qemu-img and qemu-io (Debian: qemu-utils).
set -euo pipefail
out="$(cd "$(dirname "$0")" && pwd)/corpus/qcow2_image"
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
io() { qemu-io "$@" >/dev/null; }

# Data, zero clusters and an unallocated tail; 512 B clusters keep the seeds a few KiB.
qemu-img create -q -f qcow2 -o cluster_size=512 data.qcow2 64K
io -c 'write -P 0x5a 0 3k' -c 'write -z 8k 2k' data.qcow2
# An overlay naming a backing file (the fuzz target never opens it).
qemu-img create -q -f qcow2 -o cluster_size=512 -b data.qcow2 -F qcow2 overlay.qcow2 64K
io -c 'write -P 0x11 1k 1k' overlay.qcow2
# Extended L2 entries (subclusters).
qemu-img create -q -f qcow2 -o cluster_size=16k,extended_l2=on ext-l2.qcow2 256K
io -c 'write -P 1 4k 4k' ext-l2.qcow2
# Compressed clusters, deflate and zstd.
head -c 32K /dev/urandom >src.raw
head -c 32K /dev/zero >>src.raw
qemu-img convert -c -O qcow2 -o cluster_size=4k src.raw deflate.qcow2
qemu-img convert -c -O qcow2 -o cluster_size=4k,compression_type=zstd src.raw zstd.qcow2
# Version 2.
qemu-img create -q -f qcow2 -o cluster_size=512,compat=0.10 v2.qcow2 32K
io -c 'write -P 3 0 1k' v2.qcow2

cp ./*.qcow2 "$out/"
echo "seeded $(ls ./*.qcow2 | wc -l) images into $out"
