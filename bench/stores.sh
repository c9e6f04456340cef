#!/usr/bin/env bash
# Benchmark of one backup run into two stores (3-2-1: a local folder and an S3 bucket on the
# s3s-fs server at 127.0.0.1) beside the ways to get the same two copies without it, on the same
# data and machine in one run:
#   - lifeboat --to file --to s3      one run: the app stopped once, each volume read once;
#   - lifeboat --to s3                one store, for the cost of the second;
#   - lifeboat to the folder, then `lifeboat copy` to S3;
#   - restic: one repository in the folder, one in S3, two `restic backup` runs in one stop.
# Wall time, downtime and peak RSS of each. Prints a Markdown table.
#
#   bash bench/stores.sh                 # 1 GiB volume
#   SIZE_MIB=4096 bash bench/stores.sh
#
# Installs what is missing like bench/run.sh; run as root. Not a test: nothing asserts a time.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-1024}
. bench/lib.sh
bench_setup stores
mkdir -p "$work/local"
# The volume: half random, a quarter text, a quarter zeros and random in 1 MiB runs.
echo "building a ${SIZE_MIB} MiB volume..." >&2
docker run --rm -v "$volume:/v" $IMAGE sh -c "
  set -e; cd /v
  head -c $((SIZE_MIB / 2 * 1048576)) /dev/urandom > random.bin
  i=0; while [ \$i -lt $((SIZE_MIB / 32)) ]; do seq \$((i*1000000)) \$((i*1000000+1150000)); i=\$((i+1)); done | head -c $((SIZE_MIB / 4 * 1048576)) > text.log
  i=0; while [ \$i -lt $((SIZE_MIB / 8)) ]; do head -c 1048576 /dev/urandom; head -c 1048576 /dev/zero; i=\$((i+1)); done > db.bin"
bench_app
data_bytes=$(du -sb "$volume_dir" | cut -f1)
restic -q -r "$work/local/restic" init >/dev/null
restic -q -r "s3:$AWS_ENDPOINT_URL/bench/restic" init >/dev/null
cat > "$work/restic_two.sh" <<SH
set -euo pipefail
docker stop -t 10 $project-app-1 >/dev/null
restic -q -r $work/local/restic backup $volume_dir
restic -q -r s3:$AWS_ENDPOINT_URL/bench/restic backup $volume_dir
docker start $project-app-1 >/dev/null
SH
cat > "$work/copy_after.sh" <<SH
set -euo pipefail
$L backup -p $project --to file://$work/local/copied
$L copy -p $project --from file://$work/local/copied --to s3://bench/copied
SH

downtime() { $L list --store "$1" --json | python3 -c 'import json,sys; print("%.1f" % json.load(sys.stdin)[-1]["downtime_seconds"])'; }

timed "lifeboat-two-stores" $L backup -p $project --to "file://$work/local/both" --to s3://bench/both
echo "lifeboat-two-stores $(downtime s3://bench/both)" >> "$work/down"
timed "lifeboat-s3-only" $L backup -p $project --to s3://bench/single
echo "lifeboat-s3-only $(downtime s3://bench/single)" >> "$work/down"
timed "lifeboat-then-copy" bash "$work/copy_after.sh"
echo "lifeboat-then-copy $(downtime "file://$work/local/copied")" >> "$work/down"
timed "restic-two-repos" bash "$work/restic_two.sh"

python3 - "$work/results" "$work/down" "$data_bytes" "$(git rev-parse --short HEAD)" <<'PY'
import sys
res = {l.split()[0]: (float(l.split()[1]), int(l.split()[2])) for l in open(sys.argv[1])}
down = {l.split()[0]: l.split()[1] for l in open(sys.argv[2])}
data = int(sys.argv[3])
print(f"Volume: {data / 2**20:.0f} MiB; a local folder and an S3 server on 127.0.0.1; commit {sys.argv[4]}.\n")
print("| run | wall s | downtime s | peak RSS MiB |")
print("|---|---:|---:|---:|")
names = {
    "lifeboat-two-stores": "lifeboat `--to file --to s3` (one run)",
    "lifeboat-s3-only": "lifeboat `--to s3` (one store)",
    "lifeboat-then-copy": "lifeboat to the folder, then `lifeboat copy` to S3",
    "restic-two-repos": "restic: two `restic backup` runs in one stop",
}
for key, label in names.items():
    w, r = res[key]
    print(f"| {label} | {w:.1f} | {down.get(key, f'{w:.1f} (all)')} | {r / 1024:.0f} |")
PY
