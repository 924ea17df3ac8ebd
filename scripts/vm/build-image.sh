#!/usr/bin/env bash
# Builds what the VM tier boots, from Debian's packages, into a cache folder
# (reused while its inputs do not change):
#   <cache>/vmlinuz          Debian's kernel (linux-image-amd64)
#   <cache>/initramfs.gz     busybox, a static netctl and hostname-http,
#                            iptables (nft) with its libraries, the kernel
#                            modules netctl needs, and /init (scripts/vm/init)
# Usage: build-image.sh CACHE_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=$(mkdir -p "$1" && cd "$1" && pwd)

scripts/packages.sh vm

# The kernel: Debian's own, extracted once.
package=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
if [ ! -f "$cache/kernel/.$package" ]; then
  rm -rf "$cache/kernel" && mkdir -p "$cache/kernel"
  (cd "$cache" && apt-get download "$package" 2>/dev/null && dpkg-deb -x "$package"_*.deb kernel && rm -f "$package"_*.deb)
  version=$(ls "$cache/kernel/lib/modules")
  depmod -b "$cache/kernel" "$version"
  touch "$cache/kernel/.$package"
fi
version=$(ls "$cache/kernel/lib/modules")
cp "$cache/kernel/boot/vmlinuz-$version" "$cache/vmlinuz"

# netctl and the test server, linked statically.
RUSTFLAGS='-C target-feature=+crt-static' cargo build --quiet --release \
  --target x86_64-unknown-linux-gnu --target-dir target/vm --bin netctl --bin hostname-http
bin=target/vm/x86_64-unknown-linux-gnu/release

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,var/lib/netctl,lib/modules,usr/lib}
cp /bin/busybox "$root/bin/busybox"
cp "$bin/netctl" "$bin/hostname-http" "$root/bin/"
cp scripts/vm/init "$root/init"
chmod +x "$root/init"

# iptables-nft, its extensions and the libraries they load.
cp "$(readlink -f "$(command -v xtables-nft-multi)")" "$root/sbin/xtables-nft-multi"
for tool in iptables iptables-restore iptables-save; do ln -s xtables-nft-multi "$root/sbin/$tool"; done
extensions=/usr/lib/x86_64-linux-gnu/xtables
mkdir -p "$root$extensions"
cp "$extensions"/*.so "$root$extensions/"
for file in "$root/sbin/xtables-nft-multi" "$root$extensions"/*.so; do
  ldd "$file" 2>/dev/null | grep -o '/[^ ]*' || true
done | sort -u | while read -r library; do
  mkdir -p "$root$(dirname "$library")"
  cp -L "$library" "$root$library"
done

# The kernel modules netctl needs, with everything they depend on, in load order.
moddir="$cache/kernel/lib/modules/$version"
wanted="e1000 veth bridge vxlan crc32c_generic nf_tables nft_compat nft_chain_nat nf_nat nf_conntrack xt_nat xt_MASQUERADE
  xt_statistic xt_addrtype xt_conntrack xt_tcpudp xt_comment xt_mark iptable_nat iptable_filter sch_ingress cls_bpf"
resolve() {
  local module=$1 path deps
  path=$(awk -F: -v m="/$module.ko" 'index($1, m) && substr($1, length($1) - length(m) + 1) == m {print $1; exit}' "$moddir/modules.dep")
  [ -n "$path" ] || return 0
  grep -qx "$path" "$root/modules.order" 2>/dev/null && return 0
  deps=$(awk -F': ' -v p="$path" '$1 == p {print $2}' "$moddir/modules.dep")
  for dep in $deps; do resolve "$(basename "$dep" .ko)"; done
  echo "$path" >> "$root/modules.order"
}
: > "$root/modules.order"
for module in $wanted; do resolve "$module"; done
# Laid out as /lib/modules/<version>/ with their modules.dep lines, so that
# what the kernel loads on demand (request_module) is found by modprobe too.
while read -r path; do
  mkdir -p "$root/lib/modules/$version/$(dirname "$path")"
  cp "$moddir/$path" "$root/lib/modules/$version/$path"
  grep "^$path:" "$moddir/modules.dep" >> "$root/lib/modules/$version/modules.dep"
done < "$root/modules.order"
mkdir -p "$root/sbin" && ln -sf /bin/busybox "$root/sbin/modprobe"

(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$cache/initramfs.gz"
echo "image: $cache/vmlinuz ($version), $cache/initramfs.gz ($(du -h "$cache/initramfs.gz" | cut -f1))"
