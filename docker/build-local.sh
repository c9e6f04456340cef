#!/usr/bin/env bash
# Builds the lifeboat image offline (no registry) from the release binary of this checkout:
#   bash docker/build-local.sh [TAG]        (default tag: lifeboat:local)
# BINARY=path uses an existing binary instead of building one (the tests do).
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-lifeboat:local}
if [ -z "${BINARY:-}" ]; then
  cargo build --release --locked --quiet
  BINARY=${CARGO_TARGET_DIR:-target}/release/lifeboat
fi
binary=$BINARY
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/usr/local/bin" "$root/tmp" "$root/var/lib/lifeboat" "$root/etc/ssl/certs"
install -m 755 "$binary" "$root/usr/local/bin/lifeboat"
strip "$root/usr/local/bin/lifeboat" 2>/dev/null || true
# The shared libraries the binary links, at the same paths.
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
chmod 1777 "$root/tmp"
cp docker/Dockerfile.local "$ctx/Dockerfile"
docker build -q -t "$tag" "$ctx" >/dev/null
echo "$tag"
