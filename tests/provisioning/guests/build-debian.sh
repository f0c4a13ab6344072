#!/usr/bin/env bash
# Builds the "debian12" test guest: Debian 12 with real cloud-init (NoCloud) and OpenSSH, its
# kernel and initrd copied out to boot directly. Prints the directory holding base.qcow2,
# vmlinuz and initrd.img, kept in ${XDG_CACHE_HOME:-~/.cache}/gpu-portal/ under a hash of this
# script, so it is built once per machine (about two minutes, 160 MiB). Needs root, debootstrap,
# e2fsprogs and qemu-img, and Debian's package mirror.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
hash=$(sha256sum "$here/build-debian.sh" | cut -c1-16)
out="${XDG_CACHE_HOME:-$HOME/.cache}/gpu-portal/debian12-$hash"
if [ -f "$out/base.qcow2" ]; then echo "$out"; exit 0; fi

work=$(mktemp -d /var/tmp/portal-debian12.XXXXXX)
trap 'rm -rf "$work"' EXIT
R="$work/root"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
debootstrap --variant=minbase \
    --include=systemd-sysv,udev,linux-image-cloud-amd64,openssh-server,cloud-init,sudo,dbus,python3-cffi-backend,ifupdown,isc-dhcp-client,iproute2,netbase,ca-certificates \
    bookworm "$R" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
rm -f "$R"/etc/ssh/ssh_host_*
: > "$R/etc/machine-id"
echo '/dev/vda / ext4 defaults,discard 0 1' > "$R/etc/fstab"
printf 'auto lo\niface lo inet loopback\nsource /etc/network/interfaces.d/*\n' > "$R/etc/network/interfaces"
printf 'datasource_list: [ NoCloud, None ]\nssh_genkeytypes: [ ed25519 ]\nlocale: C.UTF-8\n' > "$R/etc/cloud/cloud.cfg.d/99-portal-test.cfg"
rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/*

mkdir -p "$work/out"
cp "$R"/boot/vmlinuz-* "$work/out/vmlinuz"
cp "$R"/boot/initrd.img-* "$work/out/initrd.img"
mkfs.ext4 -q -F -L root -d "$R" "$work/image.raw" 2G >/dev/null
qemu-img convert -c -O qcow2 "$work/image.raw" "$work/out/base.qcow2"
mkdir -p "$(dirname "$out")"
rm -rf "$out.tmp" && mv "$work/out" "$out.tmp" && mv "$out.tmp" "$out"
echo "$out"
