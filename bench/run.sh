#!/usr/bin/env bash
# Benchmark: lifeboat backup/restore beside its peers, on the same data, machine and S3 server
# (s3s-fs on 127.0.0.1), alternating, ROUNDS times each:
#   - the shell pipeline a user of the CVAT guide would write, with the aws CLI
#     (docker cp | zstd -3 -T0 | age | aws s3 cp -) and with rclone (… | rclone rcat);
#   - restic backup of the volume's directory on the host (a fresh repository each round, so
#     every run is a first, full backup), and restic restore;
#   - the local stages alone into /dev/null, the limit without a store.
# Then the downtime with the uplink throttled to a fifth of the compression speed (lifeboat
# with its spool, and the aws pipeline). Prints Markdown tables.
#
#   bash bench/run.sh            # ≈1.2 GiB dataset, 3 rounds
#   SIZE_MIB=4096 ROUNDS=2 bash bench/run.sh
#   OLD=/path/to/an/older/lifeboat bash bench/run.sh   # also that binary, in the same run
#
# Installs what is missing (GNU time, restic, rclone, Docker, age, zstd, the aws CLI, s3s-fs)
# and starts dockerd if none answers; run as root. Not a test: nothing asserts a time.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-1200}
ROUNDS=${ROUNDS:-3}
SMALL_FILES=${SMALL_FILES:-20000}
missing=()
[ -x /usr/bin/time ] || missing+=(time)
command -v restic >/dev/null || missing+=(restic)
command -v rclone >/dev/null || missing+=(rclone)
command -v bc >/dev/null || missing+=(bc)
command -v dockerd >/dev/null || missing+=(docker.io)
command -v age >/dev/null || missing+=(age)
command -v zstd >/dev/null || missing+=(zstd)
[ -x /bin/busybox ] || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; fi
command -v aws >/dev/null || python3 -m pip install --quiet awscli
command -v s3s-fs >/dev/null || cargo install s3s-fs@0.14.1 --features binary --locked --quiet
if ! docker info >/dev/null 2>&1; then
  nohup dockerd >/var/log/lifeboat-bench-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
cargo build --release --quiet
L=$PWD/target/release/lifeboat
work=$(mktemp -d /var/tmp/lifeboat-bench.XXXXXX)
project=lbbench$$
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/s3/bench"
s3s-fs --host 127.0.0.1 --port "$port" --access-key bench --secret-key bench-secret "$work/s3" >/dev/null 2>&1 &
s3pid=$!
throttle_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
throttle_pid=
cleanup() {
  kill $s3pid 2>/dev/null || true
  [ -z "$throttle_pid" ] || kill $throttle_pid 2>/dev/null || true
  docker rm -f "$project-app-1" >/dev/null 2>&1 || true
  docker volume rm -f "${project}_data" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_EC2_METADATA_DISABLED=true
unset AWS_CA_BUNDLE
# rclone's S3 remote "s3", from the environment; restic's repository password.
export RCLONE_CONFIG_S3_TYPE=s3 RCLONE_CONFIG_S3_PROVIDER=Other RCLONE_CONFIG_S3_ENDPOINT=$AWS_ENDPOINT_URL \
  RCLONE_CONFIG_S3_ACCESS_KEY_ID=bench RCLONE_CONFIG_S3_SECRET_ACCESS_KEY=bench-secret RCLONE_CONFIG_S3_REGION=us-east-1
export RESTIC_PASSWORD=bench-restic-password
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
$L keygen --output "$work/key.txt" --backup-key-output "$work/backup.key" 2> "$work/recipient.txt"
R=$(grep '^age1' "$work/recipient.txt")
export LIFEBOAT_BACKUP_KEY_FILE=$work/backup.key

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
cat > "$work/rclone_backup.sh" <<SH
set -euo pipefail
docker stop -t 10 $project-app-1 >/dev/null
docker cp $project-app-1:/data/. - | zstd -3 -T0 -q | age -r $R | rclone rcat --s3-upload-concurrency 4 s3:bench/rclone/data.tar.zst.age
docker start $project-app-1 >/dev/null
SH
cat > "$work/rclone_restore.sh" <<SH
set -euo pipefail
docker stop -t 10 $project-app-1 >/dev/null
rclone cat s3:bench/rclone/data.tar.zst.age | age -d -i $work/key.txt | zstd -d -q | docker cp - $project-app-1:/data
docker start $project-app-1 >/dev/null
SH
volume_dir=$(docker volume inspect -f '{{.Mountpoint}}' "${project}_data")
cat > "$work/restic_backup.sh" <<SH
set -euo pipefail
docker stop -t 10 $project-app-1 >/dev/null
restic -q -r s3:$AWS_ENDPOINT_URL/bench/restic-\$1 backup $volume_dir
docker start $project-app-1 >/dev/null
SH
cat > "$work/restic_restore.sh" <<SH
set -euo pipefail
docker stop -t 10 $project-app-1 >/dev/null
find $volume_dir -mindepth 1 -delete
restic -q -r s3:$AWS_ENDPOINT_URL/bench/restic-\$1 restore latest --target /
docker start $project-app-1 >/dev/null
SH
cat > "$work/stages_only.sh" <<SH
set -euo pipefail
docker cp $project-app-1:/data/. - | zstd -3 -T0 -q | age -r $R > /dev/null
SH

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  restic -q -r "s3:$AWS_ENDPOINT_URL/bench/restic-$round" init >/dev/null
  measure "lifeboat-backup" $L backup -p $project --store s3://bench/lifeboat
  measure "aws-pipeline-backup" bash "$work/peer_backup.sh"
  measure "rclone-pipeline-backup" bash "$work/rclone_backup.sh"
  measure "restic-backup" bash "$work/restic_backup.sh" "$round"
  measure "local-stages-to-devnull" bash "$work/stages_only.sh"
  measure "lifeboat-restore" $L restore -p $project --store s3://bench/lifeboat -i "$work/key.txt"
  measure "lifeboat-restore-no-safety-copy" $L restore --no-safety-copy -p $project --store s3://bench/lifeboat -i "$work/key.txt"
  if [ -n "${OLD:-}" ]; then
    # A lifeboat from before signed backups (format 1) knows no backup key.
    old_env=(env)
    "$OLD" keygen --help 2>/dev/null | grep -q -- --backup-key-output || old_env=(env -u LIFEBOAT_BACKUP_KEY_FILE)
    measure "old-lifeboat-backup" "${old_env[@]}" "$OLD" backup -p $project --store s3://bench/old -r "$R"
    measure "old-lifeboat-restore" "${old_env[@]}" "$OLD" restore -p $project --store s3://bench/old -i "$work/key.txt"
  fi
  measure "aws-pipeline-restore" bash "$work/peer_restore.sh"
  measure "rclone-pipeline-restore" bash "$work/rclone_restore.sh"
  measure "restic-restore" bash "$work/restic_restore.sh" "$round"
done
restic_stored=$(du -sb "$work/s3/bench/restic-1" | cut -f1)
# Downtime with a slow uplink: a fifth of the rate at which the local stages produce encrypted
# output. lifeboat (spool on, the default) and the aws pipeline, once each, through a proxy.
stages_wall=$(awk '$1=="local-stages-to-devnull"{print $2}' "$work/results" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
last_stored=$($L list --store s3://bench/lifeboat --json | python3 -c 'import json,sys; m=json.load(sys.stdin)[-1]; print(sum(v["stored_size"] for v in m["volumes"]))')
uplink=$(python3 -c "print(int($last_stored / $stages_wall / 5))")
python3 bench/throttle.py "$throttle_port" "$port" "$uplink" &
throttle_pid=$!
sleep 1
echo "throttled uplink: $uplink B/s" >&2
AWS_ENDPOINT_URL=http://127.0.0.1:$throttle_port measure "lifeboat-backup-slow-uplink" $L backup -p $project --store s3://bench/lifeboat-slow
slow_downtime=$(AWS_ENDPOINT_URL=http://127.0.0.1:$throttle_port $L list --store s3://bench/lifeboat-slow --json | python3 -c 'import json,sys; print("%.2f" % json.load(sys.stdin)[-1]["downtime_seconds"])')
AWS_ENDPOINT_URL=http://127.0.0.1:$throttle_port measure "aws-pipeline-backup-slow-uplink" bash "$work/peer_backup.sh"
kill $throttle_pid; throttle_pid=
echo "slow-uplink $uplink $stages_wall $slow_downtime" >> "$work/extra"
echo "restic-stored $restic_stored" >> "$work/extra"

stored=$($L list --store s3://bench/lifeboat --json | python3 -c 'import json,sys; m=json.load(sys.stdin)[-1]; print(sum(v["stored_size"] for v in m["volumes"]))')
downtime=$($L list --store s3://bench/lifeboat --json | python3 -c 'import json,sys; ms=json.load(sys.stdin); print("%.1f" % (sum(m["downtime_seconds"] for m in ms)/len(ms)))')

python3 - "$work/results" "$data_bytes" "$stored" "$downtime" "$work/extra" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, wall, cpu, rss = line.split()
    rows[name].append((float(wall), float(cpu), int(rss)))
data = int(sys.argv[2]); stored = int(sys.argv[3]); downtime = float(sys.argv[4])
extra = {l.split()[0]: l.split()[1:] for l in open(sys.argv[5])}
med = lambda name: statistics.median(w for w, _, _ in rows[name])
print(f"Dataset: {data/2**20:.0f} MiB in one volume; lifeboat stored {stored/2**20:.0f} MiB, "
      f"restic {int(extra['restic-stored'][0])/2**20:.0f} MiB; lifeboat's mean downtime per backup {downtime:.1f} s.\n")
print("| run | wall s (median) | MiB/s | CPU s | peak RSS MiB | downtime s | vs aws pipeline | vs rclone pipeline | vs restic |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for name, samples in rows.items():
    if "slow-uplink" in name:
        continue
    wall = med(name)
    cpu = statistics.median(c for _, c, _ in samples)
    rss = max(r for _, _, r in samples) / 1024
    kind = "restore" if "restore" in name else "backup"
    if name.startswith("local") or kind == "restore":
        down = "–" if name.startswith("local") else f"{wall:.1f}"
    else:
        down = f"{downtime:.1f}" if name == "lifeboat-backup" else f"{wall:.1f}"
    ratios = [f"{wall/med(f'{peer}-{kind}'):.2f}×" for peer in ("aws-pipeline", "rclone-pipeline", "restic")]
    print(f"| {name} | {wall:.2f} | {data/2**20/wall:.0f} | {cpu:.1f} | {rss:.0f} | {down} | " + " | ".join(ratios) + " |")
uplink, stages_wall, slow_downtime = extra["slow-uplink"]
uplink, stages_wall, slow_downtime = int(uplink), float(stages_wall), float(slow_downtime)
print(f"\nSlow uplink: {uplink/2**20:.1f} MiB/s, a fifth of the local stages' output rate; read + compress "
      f"+ encrypt alone took {stages_wall:.2f} s.\n")
print("| run | wall s | downtime s | downtime ÷ local stages |")
print("|---|---:|---:|---:|")
lb = rows["lifeboat-backup-slow-uplink"][0][0]
aws = rows["aws-pipeline-backup-slow-uplink"][0][0]
print(f"| lifeboat-backup (spool) | {lb:.1f} | {slow_downtime:.1f} | {slow_downtime/stages_wall:.2f}× |")
print(f"| aws-pipeline-backup | {aws:.1f} | {aws:.1f} | {aws/stages_wall:.2f}× |")
print("\nPeak RSS is GNU time's: for the pipelines, the largest single process of each.")
PY
