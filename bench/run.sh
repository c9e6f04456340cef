#!/usr/bin/env bash
# Benchmark: lifeboat backup/restore beside the shell pipeline a user of the CVAT guide would
# write (docker cp | zstd -T0 | age | aws s3 cp -), on the same data, machine and S3 server
# (s3s-fs on 127.0.0.1), alternating, ROUNDS times each. Prints a Markdown table.
#
#   bash bench/run.sh            # ≈1.1 GiB dataset, 3 rounds
#   SIZE_MIB=4096 ROUNDS=2 bash bench/run.sh
#
# Needs what .ci/test installs, plus GNU time (apt-get install time). Not a test: nothing
# asserts a time.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-1200}
ROUNDS=${ROUNDS:-3}
SMALL_FILES=${SMALL_FILES:-20000}
command -v /usr/bin/time >/dev/null || { apt-get update -qq; apt-get install -y -qq time >/dev/null; }
cargo build --release --quiet
L=$PWD/target/release/lifeboat
work=$(mktemp -d /var/tmp/lifeboat-bench.XXXXXX)
project=lbbench$$
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
IMAGE=lifeboat-test/busybox:1
docker image inspect $IMAGE >/dev/null 2>&1 || cargo test --quiet --test backup_restore no_matching_containers >/dev/null

# The dataset: 45% random, 45% compressible text, small files (~90 MiB), in one volume.
docker volume create --label com.docker.compose.project=$project --label com.docker.compose.volume=data "${project}_data" >/dev/null
random_mib=$((SIZE_MIB * 45 / 100)); text_mib=$((SIZE_MIB * 45 / 100))
echo "building a ${SIZE_MIB} MiB dataset ($SMALL_FILES small files)..." >&2
docker run --rm -v "${project}_data:/v" $IMAGE sh -c "
  set -e; cd /v
  head -c $((random_mib * 1048576)) /dev/urandom > random.bin
  i=0; while [ \$i -lt $((text_mib / 8)) ]; do seq \$((i*1000000)) \$((i*1000000+1150000)); i=\$((i+1)); done | head -c $((text_mib * 1048576)) > text.log
  mkdir small; cd small; i=0
  while [ \$i -lt $SMALL_FILES ]; do d=\$((i / 1000)); mkdir -p \$d; head -c \$(( (i * 7919) % 9000 + 100 )) /dev/urandom > \$d/f\$i; i=\$((i+1)); done"
docker create --name "$project-app-1" --label com.docker.compose.project=$project --label com.docker.compose.service=app \
  -v "${project}_data:/data" $IMAGE sh -c "trap 'exit 0' TERM; while true; do sleep 1; done" >/dev/null
docker start "$project-app-1" >/dev/null
data_bytes=$(docker run --rm -v "${project}_data:/v" $IMAGE du -sb /v | cut -f1)
$L keygen --output "$work/key.txt" 2> "$work/recipient.txt"
R=$(cat "$work/recipient.txt")

# measure NAME COMMAND...: appends "name wall cpu maxrss_kib" to results
measure() {
  local name=$1; shift
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%e %U %S %M" -o "$work/time" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  read -r wall user sys rss < "$work/time"
  echo "$name $wall $(echo "$user + $sys" | bc) $rss" >> "$work/results"
}

cat > "$work/peer_backup.sh" <<SH
set -euo pipefail
docker stop -t 10 $project-app-1 >/dev/null
docker cp $project-app-1:/data/. - | zstd -3 -T0 -q | age -r $R | aws s3 cp - s3://bench/peer/data.tar.zst.age
docker start $project-app-1 >/dev/null
SH
cat > "$work/peer_restore.sh" <<SH
set -euo pipefail
docker stop -t 10 $project-app-1 >/dev/null
aws s3 cp s3://bench/peer/data.tar.zst.age - | age -d -i $work/key.txt | zstd -d -q | docker cp - $project-app-1:/data
docker start $project-app-1 >/dev/null
SH
cat > "$work/stages_only.sh" <<SH
set -euo pipefail
docker cp $project-app-1:/data/. - | zstd -3 -T0 -q | age -r $R > /dev/null
SH

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  measure "lifeboat-backup" $L backup -p $project --store s3://bench/lifeboat -r "$R"
  measure "shell-pipeline-backup" bash "$work/peer_backup.sh"
  measure "local-stages-to-devnull" bash "$work/stages_only.sh"
  measure "lifeboat-restore" $L restore -p $project --store s3://bench/lifeboat -i "$work/key.txt"
  measure "shell-pipeline-restore" bash "$work/peer_restore.sh"
  measure "lifeboat-restore-no-verify" $L restore --no-verify -p $project --store s3://bench/lifeboat -i "$work/key.txt"
done
stored=$($L list --store s3://bench/lifeboat --json | python3 -c 'import json,sys; m=json.load(sys.stdin)[-1]; print(sum(v["stored_size"] for v in m["volumes"]))')
downtime=$($L list --store s3://bench/lifeboat --json | python3 -c 'import json,sys; ms=json.load(sys.stdin); print("%.1f" % (sum(m["downtime_seconds"] for m in ms)/len(ms)))')

python3 - "$work/results" "$data_bytes" "$stored" "$downtime" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, wall, cpu, rss = line.split()
    rows[name].append((float(wall), float(cpu), int(rss)))
data = int(sys.argv[2]); stored = int(sys.argv[3]); downtime = sys.argv[4]
print(f"Dataset: {data/2**20:.0f} MiB in one volume; lifeboat stored {stored/2**20:.0f} MiB; lifeboat's mean downtime per backup {downtime} s.\n")
print("| run | wall s (median) | MiB/s | CPU s | peak RSS MiB | vs shell pipeline |")
print("|---|---:|---:|---:|---:|---:|")
peer = {"backup": statistics.median(w for w, _, _ in rows["shell-pipeline-backup"]),
        "restore": statistics.median(w for w, _, _ in rows["shell-pipeline-restore"])}
for name, samples in rows.items():
    wall = statistics.median(w for w, _, _ in samples)
    cpu = statistics.median(c for _, c, _ in samples)
    rss = max(r for _, _, r in samples) / 1024
    kind = "restore" if "restore" in name else "backup"
    print(f"| {name} | {wall:.2f} | {data/2**20/wall:.0f} | {cpu:.1f} | {rss:.0f} | {wall/peer[kind]:.2f}× |")
print("\nPeak RSS is GNU time's: for the shell pipeline, the largest single process of it.")
PY
