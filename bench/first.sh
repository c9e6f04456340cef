#!/usr/bin/env bash
# The first deduplicated backup beside a full (format 2) one, on the nightly dataset (≈1.2 GiB:
# a database file, uploads, logs, small files), each into a fresh store, alternating for ROUNDS
# rounds, the page cache dropped before each. With OLD=path, another build (an older commit's)
# runs the same pair in each round, so two commits are compared in one session.
#
#   bash bench/first.sh
#   ROUNDS=3 OLD=/path/to/old/lifeboat bash bench/first.sh
#
# Installs what is missing like bench/run.sh; run as root. Not a test: nothing asserts a time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
. bench/lib.sh
bench_setup first
nightly_volume "${SIZE_MIB:-1200}"
bench_app
builds="new=$L"
[ -z "${OLD:-}" ] || builds="$builds old=$OLD"
for round in $(seq 1 "$ROUNDS"); do
  for build in $builds; do
    name=${build%%=*}; bin=${build#*=}
    timed "$name-dedup-$round" "$bin" backup --dedup -p "$project" --store "s3://bench/$name-dedup-$round"
    timed "$name-full-$round" "$bin" backup -p "$project" --store "s3://bench/$name-full-$round"
  done
done
python3 - "$work/results" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
print("| build | round | first --dedup s | full s | ratio | peak RSS MiB (dedup / full) |")
print("|---|---:|---:|---:|---:|---|")
by = {r[0]: r for r in rows}
for r in rows:
    build, kind, rnd = r[0].rsplit("-", 2)[0], r[0].rsplit("-", 2)[1], r[0].rsplit("-", 2)[2]
    if kind != "dedup":
        continue
    d, f = by[f"{build}-dedup-{rnd}"], by[f"{build}-full-{rnd}"]
    print(f"| {build} | {rnd} | {float(d[1]):.1f} | {float(f[1]):.1f} | {float(d[1]) / float(f[1]):.2f} | {int(d[2]) // 1024} / {int(f[2]) // 1024} |")
PY
