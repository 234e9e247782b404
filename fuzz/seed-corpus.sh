#!/bin/bash
# Seeds fuzz/corpus/qcow2_image (the corpus `cargo fuzz run qcow2_image` uses by default) with small
# images made by qemu-img, and fuzz/corpus/guest_disk with small guest volumes (below): from an
# empty corpus the fuzzer rarely gets past the header checks.
# Needs qemu-img and qemu-io (Debian: qemu-utils).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/corpus/qcow2_image"
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

# guest_disk: small guest volumes and a partitioned disk, made without mounting. Needs mke2fs
# (e2fsprogs), mkfs.vfat and mcopy (dosfstools, mtools), mkntfs and ntfscp (ntfs-3g), sfdisk
# (fdisk).
out="$here/corpus/guest_disk"
mkdir -p "$out" "$tmp/tree/dir/sub"
echo hello >"$tmp/tree/hello.txt"
head -c 5000 /dev/urandom >"$tmp/tree/dir/sub/data.bin"
ln -s ../hello.txt "$tmp/tree/dir/link"
mke2fs -q -F -t ext2 -b 1024 -N 32 -d "$tmp/tree" ext2.img 128K >/dev/null
mke2fs -q -F -t ext4 -b 1024 -N 32 -O ^has_journal -d "$tmp/tree" ext4.img 256K >/dev/null
mkfs.vfat -C -F 12 fat12.img 128 >/dev/null
MTOOLS_SKIP_CHECK=1 mcopy -s -i fat12.img "$tmp/tree/hello.txt" "$tmp/tree/dir" ::/
truncate -s 2M ntfs.img
mkntfs -F -Q -q ntfs.img >/dev/null 2>&1
ntfscp -q ntfs.img "$tmp/tree/hello.txt" hello.txt
ntfscp -q ntfs.img "$tmp/tree/dir/sub/data.bin" data.bin
truncate -s 512K gpt.img
printf 'label: gpt\nstart=34, size=256, type=linux\n' | sfdisk -q gpt.img
dd if=ext2.img of=gpt.img bs=512 seek=34 conv=notrunc status=none
cp ext2.img ext4.img fat12.img ntfs.img gpt.img "$out/"
echo "seeded 5 disks into $out"
