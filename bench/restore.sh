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
. bench/lib.sh
bench_setup restore
nightly_volume "$SIZE_MIB"
bench_app
data_bytes=$(du -sb "$volume_dir" | cut -f1)
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
    name, wall, rss, cpu = line.split()
    rows[name].append((float(wall), int(rss), float(cpu)))
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
