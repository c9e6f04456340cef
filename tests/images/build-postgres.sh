#!/usr/bin/env bash
# Builds the PostgreSQL test image for the disaster drill without a registry: a Debian rootfs
# made by debootstrap with postgresql, imported with `docker import`. Skipped when the image
# exists already, built by this very script (it is cached between runs on one machine, and
# labelled with a hash of this file: a changed recipe builds it again).
set -euo pipefail
IMAGE=lifeboat-test/postgres:15
recipe=$(sha256sum "$0" | cut -c1-16)
built=$(docker image inspect -f '{{index .Config.Labels "io.lifeboat.test.recipe"}}' "$IMAGE" 2>/dev/null || true)
if [ "$built" = "$recipe" ]; then exit 0; fi
command -v debootstrap >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}
root=$(mktemp -d /var/tmp/lifeboat-pg-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "==> debootstrap bookworm + postgresql-15 from $mirror (a few minutes, once)" >&2
debootstrap --variant=minbase --include=postgresql-15 bookworm "$root" "$mirror" >/var/tmp/lifeboat-debootstrap.log 2>&1 \
  || { tail -20 /var/tmp/lifeboat-debootstrap.log >&2; exit 1; }
cat > "$root/usr/local/bin/pg-start" <<'SCRIPT'
#!/bin/sh
# Initializes the data directory on first start (a fresh install), then runs the server.
set -e
PGDATA=/var/lib/postgresql/data
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  /usr/lib/postgresql/15/bin/initdb -D "$PGDATA" --auth=trust -U postgres >/dev/null
fi
exec /usr/lib/postgresql/15/bin/postgres -D "$PGDATA" -k /tmp -c listen_addresses=''
SCRIPT
chmod 755 "$root/usr/local/bin/pg-start"
mkdir -p "$root/var/lib/postgresql/data"
chroot "$root" chown -R postgres:postgres /var/lib/postgresql
chmod 700 "$root/var/lib/postgresql/data"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import -c 'USER postgres' -c 'CMD ["/usr/local/bin/pg-start"]' \
  -c "LABEL io.lifeboat.test.recipe=$recipe" - "$IMAGE" >/dev/null
echo "==> built $IMAGE" >&2
