#!/usr/bin/env bash
# Builds the "tiny" test guest from Debian packages: the cloud kernel and an initramfs with
# busybox, dropbear and tiny-init. Prints the directory holding vmlinuz and initrd.img, kept in
# ${XDG_CACHE_HOME:-~/.cache}/gpu-portal/ under a hash of this script and tiny-init, so it is
# built once per machine (about 6 s). Needs: apt-get, dpkg-deb, gzip, busybox-static (its cpio too),
# dropbear-bin.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
hash=$(cat "$here/build-tiny.sh" "$here/tiny-init" | sha256sum | cut -c1-16)
out="${XDG_CACHE_HOME:-$HOME/.cache}/gpu-portal/tiny-$hash"
if [ -f "$out/initrd.img" ] && [ -f "$out/vmlinuz" ]; then echo "$out"; exit 0; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
(cd "$work" && apt-get download -q "$kernel_pkg" >/dev/null 2>&1)
dpkg-deb -x "$work"/linux-image-*.deb "$work/kernel"
version=$(ls "$work/kernel/lib/modules")

root="$work/root"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,root,tmp,lib/modules,usr/lib,var/log}
cp /bin/busybox "$root/bin/busybox"
for tool in /usr/sbin/dropbear /usr/bin/dropbearkey; do
    cp "$tool" "$root/bin/"
    # the shared libraries dropbear links against, at the paths the loader looks for them
    for lib in $(ldd "$tool" | grep -o '/[^ ]*'); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
done
find "$work/kernel/lib/modules/$version" \( -name 'virtio*.ko' -o -name '*failover.ko' \
    -o -name 'cdrom.ko' -o -name 'isofs.ko' \) -exec cp {} "$root/lib/modules/" \;
cp "$here/tiny-init" "$root/init" && chmod 755 "$root/init"
echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
echo 'root:x:0:' > "$root/etc/group"
echo '/bin/sh' > "$root/etc/shells"

mkdir -p "$work/out"
(cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$work/out/initrd.img"
cp "$work/kernel/boot/vmlinuz-$version" "$work/out/vmlinuz"
mkdir -p "$(dirname "$out")"
rm -rf "$out.tmp" && mv "$work/out" "$out.tmp" && mv "$out.tmp" "$out"
echo "$out"
