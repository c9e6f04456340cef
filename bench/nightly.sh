#!/usr/bin/env bash
# Benchmark of nightly backups: lifeboat --dedup beside restic, on the same data, machine and
# S3 server (s3s-fs on 127.0.0.1), over NIGHTS nights with about 1% churn each night:
#   - "database pages" rewritten in place: PAGES random 8 KiB pages of a DB_MIB file;
#   - one new 8 MiB upload;
#   - 20 small files edited.
# Per night: bytes and objects each tool adds to the bucket, wall time, CPU time, lifeboat's
# downtime and peak RSS; the same lifeboat build reading the volume through Docker's archive API
# (`--read-through-docker`, into a store of its own) instead of from its directory; and the
# floors of both reads: `docker cp` of a stopped helper container that mounts the volume, and
# `tar | cat` of its directory, to /dev/null. Then: the first night against a full (not deduplicated) lifeboat backup, and the
# restore of the last night by both. Prints Markdown tables.
#
#   bash bench/nightly.sh                      # ≈1.2 GiB volume, 4 nights
#   SIZE_MIB=10240 NIGHTS=2 bash bench/nightly.sh
#
# Installs what is missing like bench/run.sh; run as root. Not a test: nothing asserts a time.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-1200}
NIGHTS=${NIGHTS:-4}
PAGES=${PAGES:-100}
. bench/lib.sh
bench_setup nightly
nightly_volume "$SIZE_MIB"
bench_app
data_bytes=$(du -sb "$volume_dir" | cut -f1)
restic -q -r "s3:$AWS_ENDPOINT_URL/bench/restic" init >/dev/null
cat > "$work/restic_backup.sh" <<SH
set -euo pipefail
docker stop -t 10 $project-app-1 >/dev/null
restic -q -r s3:$AWS_ENDPOINT_URL/bench/restic backup $volume_dir
docker start $project-app-1 >/dev/null
SH
cat > "$work/restic_restore.sh" <<SH
set -euo pipefail
docker stop -t 10 $project-app-1 >/dev/null
find $volume_dir -mindepth 1 -delete
restic -q -r s3:$AWS_ENDPOINT_URL/bench/restic restore latest --target /
docker start $project-app-1 >/dev/null
SH

cat > "$work/floor.sh" <<SH
set -euo pipefail
helper=\$(docker create -v $volume:/volume:ro \$(docker images --format '{{.Repository}}:{{.Tag}}' lifeboat-helper | head -1) x)
docker cp \$helper:/volume - > /dev/null
docker rm \$helper > /dev/null
SH

cat > "$work/tar_floor.sh" <<SH
set -euo pipefail
tar -cf - -C $volume_dir . | cat > /dev/null
SH

bytes() { if [ -d "$work/s3/bench/$1" ]; then du -sb "$work/s3/bench/$1" | cut -f1; else echo 0; fi; }
objects() { if [ -d "$work/s3/bench/$1" ]; then find "$work/s3/bench/$1" -type f | wc -l; else echo 0; fi; }

churn() {
  docker run --rm -v "$volume:/v" -e NIGHT="$1" $IMAGE sh -c "
    set -e; cd /v
    size=\$(stat -c %s db.bin); pages=\$((size / 8192)); i=0
    while [ \$i -lt $PAGES ]; do
      page=\$(( (NIGHT * 7919 + i * 104729) * 2654435761 % pages ))
      head -c 8192 /dev/urandom | dd of=db.bin bs=8192 seek=\$page conv=notrunc 2>/dev/null
      i=\$((i+1)); done
    head -c 8388608 /dev/urandom > uploads/night\$NIGHT
    i=0; while [ \$i -lt 20 ]; do echo \"edit \$NIGHT\" >> small/f\$(( (NIGHT * 31 + i * 97) % 2000 )); i=\$((i+1)); done"
}

for night in $(seq 1 "$NIGHTS"); do
  echo "night $night/$NIGHTS" >&2
  [ "$night" = 1 ] || churn "$night"
  lb0=$(bytes lifeboat); lo0=$(objects lifeboat); rb0=$(bytes restic); ro0=$(objects restic)
  timed "lifeboat-night-$night" $L backup --dedup -p $project --store s3://bench/lifeboat
  timed "restic-night-$night" bash "$work/restic_backup.sh"
  timed "through-docker-night-$night" $L backup --dedup --read-through-docker -p $project --store s3://bench/through
  timed "floor-night-$night" bash "$work/floor.sh"
  timed "tar-floor-night-$night" bash "$work/tar_floor.sh"
  down=$($L list --store s3://bench/lifeboat --json | python3 -c 'import json,sys; print("%.1f" % json.load(sys.stdin)[-1]["downtime_seconds"])')
  echo "night $night $(( $(bytes lifeboat) - lb0 )) $(( $(objects lifeboat) - lo0 )) $(( $(bytes restic) - rb0 )) $(( $(objects restic) - ro0 )) $down" >> "$work/nights"
done
timed "lifeboat-full-backup" $L backup -p $project --store s3://bench/full
timed "lifeboat-dedup-restore" $L restore --no-safety-copy -p $project --store s3://bench/lifeboat -i "$work/key.txt"
timed "lifeboat-full-restore" $L restore --no-safety-copy -p $project --store s3://bench/full -i "$work/key.txt"
timed "restic-restore" bash "$work/restic_restore.sh"
echo "total $(bytes lifeboat) $(objects lifeboat) $(bytes restic) $(objects restic)" >> "$work/nights"

python3 - "$work/results" "$work/nights" "$data_bytes" "$SIZE_MIB" "$PAGES" <<'PY'
import sys
res = {l.split()[0]: (float(l.split()[1]), int(l.split()[2])) for l in open(sys.argv[1])}
cpu = {l.split()[0]: float(l.split()[3]) for l in open(sys.argv[1])}
nights = [l.split() for l in open(sys.argv[2])]
data = int(sys.argv[3]); mib = lambda b: int(b) / 2**20
print(f"Volume: {mib(data):.0f} MiB; churn per night: {sys.argv[5]} random 8 KiB pages rewritten in place, one new 8 MiB upload, 20 small files edited.\n")
print("| night | lifeboat adds MiB | objects | wall s | CPU s | downtime s | peak RSS MiB | restic adds MiB | objects | wall s | CPU s | lifeboat through Docker s | docker cp s | tar of the dir s |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for row in nights:
    if row[0] == "night":
        n = row[1]; lw, lr = res[f"lifeboat-night-{n}"]; rw, _ = res[f"restic-night-{n}"]
        lc, rc = cpu[f"lifeboat-night-{n}"], cpu[f"restic-night-{n}"]; fw, _ = res[f"floor-night-{n}"]
        dw, _ = res[f"through-docker-night-{n}"]; tw, _ = res[f"tar-floor-night-{n}"]
        print(f"| {n} | {mib(row[2]):.1f} | {row[3]} | {lw:.1f} | {lc:.1f} | {row[6]} | {lr/1024:.0f} | {mib(row[4]):.1f} | {row[5]} | {rw:.1f} | {rc:.1f} | {dw:.1f} | {fw:.1f} | {tw:.1f} |")
    else:
        print(f"| total stored | {mib(row[1]):.1f} | {row[2]} | | | | | {mib(row[3]):.1f} | {row[4]} | | | | | |")
fw, fr = res["lifeboat-full-backup"]
print(f"\nFirst night, deduplicated: {res['lifeboat-night-1'][0]:.1f} s; a full (format 2) lifeboat backup of the last night's data: {fw:.1f} s.")
for name in ["lifeboat-dedup-restore", "lifeboat-full-restore", "restic-restore"]:
    w, r = res[name]
    print(f"- {name}: {w:.1f} s, {mib(data)/w:.0f} MiB/s, peak RSS {r/1024:.0f} MiB")
PY
