#!/usr/bin/env bash
# Prepare a Debian kernel for the kernel lane (--udpsend-kernel), as root:
#   udpsend prepare-kernel VERSION [DEST]   (or ci/prepare-kernel.sh in this project)
#   e.g. udpsend prepare-kernel 6.1.0-56-amd64
# Installs qemu, busybox, kmod, bcc (python3-bpfcc) and the kernel's headers with
# apt-get; fetches linux-image-VERSION with `apt-get download` and unpacks it with
# `dpkg -x` under DEST (default .kernels/VERSION in the project), runs depmod
# there and links build/source to the headers so bcc finds them in the guest.
# VERSION ending in +deb12-amd64 (6.12 and later) comes from bookworm-backports,
# which is added as an apt source using the mirror the machine already uses.
# Prints the path of the kernel image on its last line.
set -euo pipefail
version=${1:?usage: prepare-kernel.sh VERSION [DEST]}
python=${UDPSEND_PYTHON:-python3}  # the interpreter whose environment gets virtme-ng
case "$version" in *[!A-Za-z0-9.+_-]*) echo "bad kernel version: $version" >&2; exit 2;; esac
case "$version" in [0-9]*) ;; *) echo "bad kernel version: $version (a Debian release such as 6.1.0-56-amd64)" >&2; exit 2;; esac
# not under /var/cache or /tmp: virtme-ng mounts fresh tmpfs there in the guest
dest=${2:-$PWD/.kernels/$version}
export DEBIAN_FRONTEND=noninteractive

add_backports() {
  local list=/etc/apt/sources.list.d/pytest-udpsend-backports.list uri
  [ -f "$list" ] && return 0
  # the URI of the machine's own bookworm main suite, in either sources format
  uri=$(grep -rhoE '^deb +(\[[^]]*\] +)?[a-z]+://[^ ]+ +bookworm +main' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
          | awk '{for(i=2;i<=NF;i++) if ($i ~ /:\/\//) {print $i; exit}}' | head -n1 || true)
  if [ -z "$uri" ]; then
    uri=$(awk '/^URIs:/{u=$2} /^Suites:/ && / bookworm( |$)/{print u; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  fi
  [ -n "$uri" ] || { echo "cannot find the bookworm apt source to derive bookworm-backports from" >&2; exit 1; }
  echo "deb $uri bookworm-backports main" > "$list"
  apt-get update -q
}

pkgs=(qemu-system-x86 busybox-static kmod python3-bpfcc "linux-headers-$version")
case "$version" in
  *+deb12-amd64|*bpo*) add_backports ;;
esac
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q || true
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

if [ ! -e "$dest/root/boot/vmlinuz-$version" ]; then
  mkdir -p "$dest"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -q "linux-image-$version" >&2)
  dpkg -x "$tmp"/linux-image-"$version"_*.deb "$dest/root"
  rm -rf "$tmp"
fi
moddir="$dest/root/lib/modules/$version"
depmod -b "$dest/root" "$version"
common="/usr/src/linux-headers-${version%-amd64}-common"  # Debian splits arch and common headers
[ -d "$common" ] || { echo "missing $common (linux-headers-$version should pull it in)" >&2; exit 1; }
ln -sfn "/usr/src/linux-headers-$version" "$moddir/build"
ln -sfn "$common" "$moddir/source"
"$python" -m pip install -q --disable-pip-version-check 'virtme-ng>=1.42' >&2
echo "$dest/root/boot/vmlinuz-$version"
