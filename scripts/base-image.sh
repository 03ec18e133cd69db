#!/usr/bin/env bash
# Registries of container images are out of reach here, so make `python:3.11-slim` locally, once
# per machine: a minimal Debian bookworm with Python 3.11 (debootstrap), imported into the engine.
# Elsewhere the real image is pulled and this script is never needed.
set -euo pipefail

IMAGE=${BASE_IMAGE:-python:3.11-slim}
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base-image: $IMAGE present"
  exit 0
fi
command -v debootstrap >/dev/null || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}
# The machine's own Debian mirror (deb822 `URIs:` or one-line `deb` entries), not the security one.
mirror=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
  | awk '/^URIs:/ {print $2} /^deb / {print $2}' | grep -v security | sed -n 1p || true)
rootfs=$(mktemp -d /tmp/base-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "base-image: debootstrap bookworm from ${mirror:-http://deb.debian.org/debian}"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >/dev/null
rm -f "$rootfs"/usr/lib/python3.11/EXTERNALLY-MANAGED
ln -sf python3 "$rootfs/usr/bin/python"
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import - "$IMAGE" >/dev/null
echo "base-image: imported $IMAGE"
