#!/usr/bin/env bash
# Restore throughput: a deduplicated (format 3) backup beside a full (format 2) one and restic,
# on the same volume, machine and S3 server (s3s-fs on 127.0.0.1), ROUNDS rounds alternating,
# the page cache dropped before each restore. The volume is bench/nightly.sh's: a "database" of
# random pages and zero runs, text logs, uploads, small files.
#
#   bash bench/restore.sh                   # ≈1.2 GiB, 2 rounds
#   SIZE_MIB=4096 ROUNDS=3 bash bench/restore.sh
#
# Installs what is missing like bench/run.sh; run as root. Not a test: nothing asserts a time.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-1200}
ROUNDS=${ROUNDS:-2}
missing=()
[ -x /usr/bin/time ] || missing+=(time)
command -v restic >/dev/null || missing+=(restic)
command -v dockerd >/dev/null || missing+=(docker.io)
[ -x /bin/busybox ] || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; fi
command -v s3s-fs >/dev/null || cargo install s3s-fs@0.14.1 --features binary --locked --quiet
if ! docker info >/dev/null 2>&1; then
  nohup dockerd >/var/log/lifeboat-bench-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
cargo build --release --quiet
L=$PWD/target/release/lifeboat
work=$(mktemp -d /var/tmp/lifeboat-restore.XXXXXX)
project=lbrestore$$
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/s3/bench"
s3s-fs --host 127.0.0.1 --port "$port" --access-key bench --secret-key bench-secret "$work/s3" >/dev/null 2>&1 &
s3pid=$!
cleanup() {
  kill $s3pid 2>/dev/null || true
  docker rm -f "$project-app-1" >/dev/null 2>&1 || true
  docker volume rm -f "${project}_data" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_EC2_METADATA_DISABLED=true
unset AWS_CA_BUNDLE
export RESTIC_PASSWORD=bench-restic-password
IMAGE=lifeboat-test/busybox:1
docker image inspect $IMAGE >/dev/null 2>&1 || cargo test --quiet --test backup_restore no_matching_containers >/dev/null

db_mib=$((SIZE_MIB / 2)); text_mib=$((SIZE_MIB / 4)); uploads_mib=$((SIZE_MIB / 5))
docker volume create --label com.docker.compose.project=$project --label com.docker.compose.volume=data "${project}_data" >/dev/null
echo "building a ${SIZE_MIB} MiB volume..." >&2
docker run --rm -v "${project}_data:/v" $IMAGE sh -c "
  set -e; cd /v; mkdir -p uploads small
  i=0; while [ \$i -lt $((db_mib / 2)) ]; do head -c 1048576 /dev/urandom; head -c 1048576 /dev/zero; i=\$((i+1)); done > db.bin
  i=0; while [ \$i -lt $((text_mib / 8)) ]; do seq \$((i*1000000)) \$((i*1000000+1150000)); i=\$((i+1)); done | head -c $((text_mib * 1048576)) > text.log
  i=0; while [ \$i -lt $((uploads_mib / 8)) ]; do head -c 8388608 /dev/urandom > uploads/u\$i; i=\$((i+1)); done
  i=0; while [ \$i -lt 2000 ]; do head -c \$(( (i * 7919) % 9000 + 100 )) /dev/urandom > small/f\$i; i=\$((i+1)); done"
docker create --name "$project-app-1" --label com.docker.compose.project=$project --label com.docker.compose.service=app \
  -v "${project}_data:/data" $IMAGE sh -c "trap 'exit 0' TERM; while true; do sleep 1; done" >/dev/null
docker start "$project-app-1" >/dev/null
volume_dir=$(docker volume inspect -f '{{.Mountpoint}}' "${project}_data")
data_bytes=$(du -sb "$volume_dir" | cut -f1)
$L keygen --output "$work/key.txt" --backup-key-output "$work/backup.key" 2>/dev/null
export LIFEBOAT_BACKUP_KEY_FILE=$work/backup.key
$L backup --dedup -p $project --store s3://bench/dedup
$L backup -p $project --store s3://bench/full
restic -q -r "s3:$AWS_ENDPOINT_URL/bench/restic" init >/dev/null
restic -q -r "s3:$AWS_ENDPOINT_URL/bench/restic" backup "$volume_dir" >/dev/null
cat > "$work/restic_restore.sh" <<SH
set -euo pipefail
docker stop -t 10 $project-app-1 >/dev/null
find $volume_dir -mindepth 1 -delete
restic -q -r s3:$AWS_ENDPOINT_URL/bench/restic restore latest --target /
docker start $project-app-1 >/dev/null
SH

timed() {
  local name=$1; shift
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%e %M %U %S" -o "$work/time" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  read -r wall rss user sys < "$work/time"
  echo "$name $wall $rss $user $sys" >> "$work/results"
}
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  timed lifeboat-dedup $L restore --no-safety-copy -p $project --store s3://bench/dedup -i "$work/key.txt"
  timed lifeboat-full $L restore --no-safety-copy -p $project --store s3://bench/full -i "$work/key.txt"
  timed restic bash "$work/restic_restore.sh"
done

python3 - "$work/results" "$data_bytes" "$(git rev-parse --short HEAD)" <<'PY'
import sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, wall, rss, user, sys_ = line.split()
    rows[name].append((float(wall), int(rss), float(user) + float(sys_)))
data = int(sys.argv[2]) / 2**20
print(f"Volume: {data:.0f} MiB; S3 server on 127.0.0.1; commit {sys.argv[3]}; each restore run {len(rows['restic'])} times, alternating.\n")
print("| restore | wall s (each run) | MiB/s (best) | CPU s (best) | peak RSS MiB |")
print("|---|---|---:|---:|---:|")
labels = {"lifeboat-dedup": "lifeboat, deduplicated (format 3)", "lifeboat-full": "lifeboat, full (format 2)", "restic": "restic (`restic restore`, no verification pass)"}
for key, label in labels.items():
    runs = rows[key]
    best = min(r[0] for r in runs)
    print(f"| {label} | {', '.join(f'{r[0]:.1f}' for r in runs)} | {data / best:.0f} | {min(r[2] for r in runs):.1f} | {max(r[1] for r in runs) / 1024:.0f} |")
PY
