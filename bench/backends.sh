#!/usr/bin/env bash
# Upload throughput per backend: one lifeboat backup of the same volume (random + text,
# SIZE_MIB, default 600) to s3s-fs, Azurite and a local folder on this machine, ROUNDS each.
# Prints a Markdown table. Needs what .ci/test installs.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-600}
ROUNDS=${ROUNDS:-2}
cargo build --release --quiet
L=$PWD/target/release/lifeboat
work=$(mktemp -d /var/tmp/lifeboat-backends.XXXXXX)
project=lbbackends$$
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
s3port=$(free_port); azport=$(free_port)
mkdir -p "$work/s3/bench" "$work/az" "$work/folder"
s3s-fs --host 127.0.0.1 --port "$s3port" --access-key bench --secret-key bench-secret "$work/s3" >/dev/null 2>&1 & s3pid=$!
azurite-blob --blobHost 127.0.0.1 --blobPort "$azport" --location "$work/az" --skipApiVersionCheck --loose --disableTelemetry >/dev/null 2>&1 & azpid=$!
cleanup() {
  kill $s3pid $azpid 2>/dev/null || true
  docker rm -f "$project-app-1" >/dev/null 2>&1 || true
  docker volume rm -f "${project}_data" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/$azport) 2>/dev/null && break; sleep 0.2; done
python3 tests/images/azurite-create-container.py "http://127.0.0.1:$azport" bench
IMAGE=lifeboat-test/busybox:1
docker volume create --label com.docker.compose.project=$project --label com.docker.compose.volume=data "${project}_data" >/dev/null
docker run --rm -v "${project}_data:/v" $IMAGE sh -c "head -c $((SIZE_MIB / 2 * 1048576)) /dev/urandom > /v/random; seq 1 100000000 | head -c $((SIZE_MIB / 2 * 1048576)) > /v/text"
docker create --name "$project-app-1" --label com.docker.compose.project=$project -v "${project}_data:/data" $IMAGE sh -c "trap 'exit 0' TERM; while true; do sleep 1; done" >/dev/null
docker start "$project-app-1" >/dev/null
$L keygen --output "$work/key.txt" --backup-key-output "$work/backup.key" 2> "$work/recipient.txt"
export LIFEBOAT_BACKUP_KEY_FILE=$work/backup.key

echo "| backend | wall s (median of $ROUNDS) | MiB/s of volume data | stored MiB |"
echo "|---|---:|---:|---:|"
for backend in s3 azure file; do
  case $backend in
    s3) store=s3://bench/lifeboat; envs=(AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1 AWS_ENDPOINT_URL=http://127.0.0.1:$s3port AWS_EC2_METADATA_DISABLED=true) ;;
    azure) store=az://bench/lifeboat; envs=(AZURE_STORAGE_USE_EMULATOR=true AZURITE_BLOB_STORAGE_URL=http://127.0.0.1:$azport) ;;
    file) store=file://$work/folder; envs=() ;;
  esac
  times=()
  for _ in $(seq 1 "$ROUNDS"); do
    start=$(date +%s.%N)
    env "${envs[@]}" $L backup -p $project --store "$store"
    times+=("$(echo "$(date +%s.%N) - $start" | bc)")
  done
  median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  stored=$(env "${envs[@]}" $L list --json --store "$store" | python3 -c 'import json,sys; m=json.load(sys.stdin)[-1]; print(sum(v["stored_size"] for v in m["volumes"])//1048576)')
  printf '| %s | %.2f | %.0f | %s |\n' "$backend" "$median" "$(echo "$SIZE_MIB / $median" | bc -l)" "$stored"
done
