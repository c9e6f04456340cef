# Shared set-up of the benchmark scripts (sourced, not run): what they need installed, a
# release build, an s3s-fs S3 server on 127.0.0.1 with its bucket "bench", an app container
# with one compose-labelled volume, and a timer. Each script sources it and then measures.
#
#   bench_setup NAME      installs what is missing (GNU time, restic, docker.io, busybox,
#                         s3s-fs), starts dockerd if needed, builds lifeboat (release) and
#                         starts the S3 server; sets L, work, project, volume and exports the
#                         AWS_* variables; removes everything on exit
#   bench_app             the app container "$project-app-1" mounting $volume, started; it
#                         exits at once on SIGTERM (a sleep it waits for would add 0-1 s at
#                         random to each tool's stop, more than the nights differ by)
#   nightly_volume MIB    fills $volume with the "nightly" data set: a database of random pages
#                         and zero runs, text logs, uploads, 2,000 small files
#   timed NAME CMD...     runs CMD with the page cache dropped first; appends
#                         "NAME wall_s maxrss_kib cpu_s" to $work/results
set -euo pipefail
IMAGE=lifeboat-test/busybox:1

bench_setup() {
  local name=$1 missing=()
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
  work=$(mktemp -d "/var/tmp/lifeboat-$name.XXXXXX")
  project=lb$name$$
  volume=${project}_data
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$work/s3/bench"
  s3s-fs --host 127.0.0.1 --port "$port" --access-key bench --secret-key bench-secret "$work/s3" >/dev/null 2>&1 &
  s3pid=$!
  trap bench_cleanup EXIT
  export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
  export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_EC2_METADATA_DISABLED=true
  unset AWS_CA_BUNDLE
  export RESTIC_PASSWORD=bench-restic-password
  docker image inspect $IMAGE >/dev/null 2>&1 || cargo test --quiet --test backup_restore no_matching_containers >/dev/null
  docker volume create --label com.docker.compose.project="$project" --label com.docker.compose.volume=data "$volume" >/dev/null
  $L keygen --output "$work/key.txt" --backup-key-output "$work/backup.key" 2> "$work/recipient.txt"
  export LIFEBOAT_BACKUP_KEY_FILE=$work/backup.key
}

bench_cleanup() {
  kill "$s3pid" 2>/dev/null || true
  docker rm -f "$project-app-1" >/dev/null 2>&1 || true
  docker volume rm -f "$volume" >/dev/null 2>&1 || true
  rm -rf "$work"
}

bench_app() {
  docker create --name "$project-app-1" --label com.docker.compose.project="$project" --label com.docker.compose.service=app \
    -v "$volume:/data" $IMAGE sh -c "trap 'exit 0' TERM; while true; do sleep 1 & wait \$!; done" >/dev/null
  docker start "$project-app-1" >/dev/null
  volume_dir=$(docker volume inspect -f '{{.Mountpoint}}' "$volume")
}

nightly_volume() {
  local mib=$1
  local db_mib=$((mib / 2)) text_mib=$((mib / 4)) uploads_mib=$((mib / 5))
  echo "building a ${mib} MiB volume..." >&2
  docker run --rm -v "$volume:/v" $IMAGE sh -c "
    set -e; cd /v; mkdir -p uploads small
    i=0; while [ \$i -lt $((db_mib / 2)) ]; do head -c 1048576 /dev/urandom; head -c 1048576 /dev/zero; i=\$((i+1)); done > db.bin
    i=0; while [ \$i -lt $((text_mib / 8)) ]; do seq \$((i*1000000)) \$((i*1000000+1150000)); i=\$((i+1)); done | head -c $((text_mib * 1048576)) > text.log
    i=0; while [ \$i -lt $((uploads_mib / 8)) ]; do head -c 8388608 /dev/urandom > uploads/u\$i; i=\$((i+1)); done
    i=0; while [ \$i -lt 2000 ]; do head -c \$(( (i * 7919) % 9000 + 100 )) /dev/urandom > small/f\$i; i=\$((i+1)); done"
}

timed() {
  local name=$1; shift
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%e %M %U %S" -o "$work/time" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  local wall rss user sys
  read -r wall rss user sys < "$work/time"
  echo "$name $wall $rss $(python3 -c "print($user + $sys)")" >> "$work/results"
}
