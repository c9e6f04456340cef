#!/usr/bin/env bash
# Is lifeboat's memory flat in the volume's size? Backs up a 1 GiB and a 10 GiB volume (random
# bytes: the worst case for buffers) to an s3s-fs server on 127.0.0.1 and prints peak RSS,
# wall time and downtime for each, with the part settings that bound the upload buffers.
#
#   bash bench/rss.sh                    # 1 GiB and 10 GiB
#   SIZES_MIB="1024 4096" bash bench/rss.sh
#   ARGS=--dedup bash bench/rss.sh       # deduplicated backups
#   AGAIN=1 ARGS=--dedup bash bench/rss.sh   # and a second backup of the same volume (the
#                                        # nightly case: the previous chunk list, the listing)
#   LIFEBOAT_MAX_PARTS=100 SIZES_MIB=10240 bash bench/rss.sh
#                                        # a store that takes 100 parts per object: at 10 GiB,
#                                        # as many parts as 1 TiB makes with S3's 10,000
#   LIFEBOAT=/path/to/old/lifeboat …     # the same with another build, beside it
#   HEAP=1 …                             # under heaptrack: the peak of the heap instead of
#                                        # RSS (what the data structures hold, without the
#                                        # allocator's slack; wall times are heaptrack's)
#
# Needs ~3× the largest size in free disk (volume, stored objects, spool). Not a test.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES_MIB=${SIZES_MIB:-"1024 10240"}
[ -x /usr/bin/time ] || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null; }
# LIFEBOAT=path measures another build (an older commit's) on the same script.
[ -n "${LIFEBOAT:-}" ] || cargo build --release --quiet
L=${LIFEBOAT:-$PWD/target/release/lifeboat}
work=$(mktemp -d /var/tmp/lifeboat-rss.XXXXXX)
project=lbrss$$
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/s3/rss"
s3s-fs --host 127.0.0.1 --port "$port" --access-key rss --secret-key rss-secret "$work/s3" >/dev/null 2>&1 &
s3pid=$!
cleanup() {
  kill $s3pid 2>/dev/null || true
  docker rm -f "$project-app-1" >/dev/null 2>&1 || true
  docker volume rm -f "${project}_data" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
export AWS_ACCESS_KEY_ID=rss AWS_SECRET_ACCESS_KEY=rss-secret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_EC2_METADATA_DISABLED=true
unset AWS_CA_BUNDLE
IMAGE=lifeboat-test/busybox:1
docker image inspect $IMAGE >/dev/null 2>&1 || cargo test --quiet --test backup_restore no_matching_containers >/dev/null
$L keygen --output "$work/key.txt" --backup-key-output "$work/backup.key" 2> "$work/recipient.txt"
export LIFEBOAT_BACKUP_KEY_FILE=$work/backup.key

docker volume create --label com.docker.compose.project=$project --label com.docker.compose.volume=data "${project}_data" >/dev/null
docker create --name "$project-app-1" --label com.docker.compose.project=$project --label com.docker.compose.service=app \
  -v "${project}_data:/data" $IMAGE sh -c "trap 'exit 0' TERM; while true; do sleep 1; done" >/dev/null
docker start "$project-app-1" >/dev/null

if [ -n "${HEAP:-}" ]; then
  command -v heaptrack >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq heaptrack >/dev/null; }
  echo "| volume | wall s (under heaptrack) | MiB/s | downtime s | peak heap MiB |"
else
  echo "| volume | wall s | MiB/s | downtime s | peak RSS MiB |"
fi
echo "|---:|---:|---:|---:|---:|"
for size in $SIZES_MIB; do
  echo "filling the volume with $size MiB..." >&2
  docker run --rm -v "${project}_data:/v" $IMAGE sh -c "rm -f /v/*; head -c $((size * 1048576)) /dev/urandom > /v/random.bin"
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  for run in first ${AGAIN:+again}; do
    [ "$run" = first ] || { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
    if [ -n "${HEAP:-}" ]; then
      rm -f "$work/heap.zst"
      /usr/bin/time -f "%e %M" -o "$work/time" heaptrack -o "$work/heap" $L backup -p $project --store s3://rss/lifeboat ${ARGS:-} >/dev/null 2>&1
      read -r wall rss < "$work/time"
      # heaptrack_print says e.g. "peak heap memory consumption: 22.42M" (powers of 1000);
      # in KiB, like %M.
      rss=$(heaptrack_print -f "$work/heap.zst" 2>/dev/null | python3 -c '
import re, sys
m = re.search(r"peak heap memory consumption: ([0-9.]+)([KMG]?)", sys.stdin.read())
print(int(float(m.group(1)) * {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[m.group(2)] / 1024))')
    else
      /usr/bin/time -f "%e %M" -o "$work/time" $L backup -p $project --store s3://rss/lifeboat ${ARGS:-} >/dev/null
      read -r wall rss < "$work/time"
    fi
    downtime=$($L list --store s3://rss/lifeboat --json | python3 -c 'import json,sys; print("%.1f" % json.load(sys.stdin)[-1]["downtime_seconds"])')
    label="$size MiB"; [ "$run" = first ] || label="$size MiB, again"
    echo "| $label | $wall | $(python3 -c "print(round($size / $wall))") | $downtime | $((rss / 1024)) |"
  done
  rm -rf "$work/s3/rss/lifeboat"
done
echo
echo "Upload buffers: ${LIFEBOAT_PARTS_IN_FLIGHT:-4} parts in flight × ${LIFEBOAT_PART_SIZE_MIB:-8} MiB; a volume past ${LIFEBOAT_MAX_PARTS:-10000} parts goes on in another object (a segment)."
