#!/usr/bin/env bash
# Prune on a repository of many snapshots: wall time and peak memory.
#
#   bench/prune_1000.sh [WORKDIR]
#
# Creates a repository (cheap Argon2 parameters) and backs up a small
# directory 1,000 times, changing one of its 20 files (8 KiB each) and a
# counter before each backup, so every snapshot has its own trees, data and
# index file. Then `forget --keep-last 100` and, measured with GNU time,
# `prune --instant`; prints the wall time and maximum RSS of the prune (and of
# the other steps), what prune did, and the repository's size before and
# after; `check --read-data` must pass at the end.
#
# WORKDIR (default: a new directory under /var/tmp, removed at the end) must
# not exist yet or be empty. Environment:
#   ARKIV_BIN            binary, default target/release/arkiv (build it with
#                        `cargo build --release -p arkiv`)
#   ARKIV_BENCH_SNAPSHOTS  number of snapshots, default 1000
#   ARKIV_BENCH_KEEP       --keep-last for forget, default 100
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${ARKIV_BIN:-$ROOT/target/release/arkiv}
N=${ARKIV_BENCH_SNAPSHOTS:-1000}
KEEP=${ARKIV_BENCH_KEEP:-100}
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release -p arkiv" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "needs GNU time: apt-get install time" >&2; exit 1; }

if [ $# -ge 1 ]; then
  WORK=$1
  mkdir -p "$WORK"
  [ -z "$(ls -A "$WORK")" ] || { echo "$WORK is not empty" >&2; exit 1; }
else
  WORK=$(mktemp -d /var/tmp/arkiv-prune-bench.XXXXXX)
  trap 'rm -rf "$WORK"' EXIT
fi
export ARKIV_REPO=$WORK/repo ARKIV_PASSWORD=prune-bench
unset ARKIV_PASSWORD_FILE ARKIV_KEY_FILE ARKIV_DATA_REPO RUST_LOG
SRC=$WORK/src
mkdir -p "$SRC"
for f in $(seq 0 19); do head -c 8192 /dev/urandom >"$SRC/f$f"; done

# measure LABEL OUT CMD...: runs CMD under GNU time with its standard output
# in OUT; prints the wall time and maximum RSS.
measure() {
  local label=$1 out=$2
  shift 2
  /usr/bin/time -f '%e %M' -o "$WORK/time" "$@" >"$out"
  read -r wall rss <"$WORK/time"
  printf '%-28s wall %7.2f s   max RSS %7.1f MiB\n' "$label" "$wall" "$(echo "$rss / 1024" | bc -l)"
}
repo_size() { du -sb "$ARKIV_REPO" | cut -f1; }

echo "arkiv: $("$BIN" --version)   $N snapshots, forget --keep-last $KEEP, work dir $WORK"
"$BIN" init -q --argon2-memory-kib 1024 --argon2-iterations 1
# Backups get slower as the repository grows (each reads every index file
# and snapshot): the first and last 100 are timed apart.
start=$(date +%s.%N)
for i in $(seq 1 "$N"); do
  [ "$i" -eq 101 ] && first100=$(date +%s.%N)
  [ "$i" -eq $((N - 99)) ] && last100=$(date +%s.%N)
  head -c 8192 /dev/urandom >"$SRC/f$((i % 20))"
  echo "$i" >"$SRC/counter"
  "$BIN" backup -q --no-progress "$SRC"
done
end=$(date +%s.%N)
printf '%-28s wall %7.2f s   (%.0f ms per backup; first 100: %.0f ms, last 100: %.0f ms)\n' "$N backups" \
  "$(echo "$end - $start" | bc -l)" "$(echo "($end - $start) * 1000 / $N" | bc -l)" \
  "$(echo "($first100 - $start) * 10" | bc -l)" "$(echo "($end - $last100) * 10" | bc -l)"
echo "snapshots: $(ls "$ARKIV_REPO/snapshots" | wc -l), index files: $(ls "$ARKIV_REPO/index" | wc -l)," \
  "packs: $(find "$ARKIV_REPO/data" -type f | wc -l), repository: $(($(repo_size) / 1024)) KiB"

measure "snapshots --json (all)" /dev/null "$BIN" snapshots --json
measure "forget --keep-last $KEEP" /dev/null "$BIN" forget -q --keep-last "$KEEP"
measure "prune --dry-run --instant" /dev/null "$BIN" prune -q --no-progress --dry-run --instant
measure "prune --instant" "$WORK/prune.json" "$BIN" prune --no-progress --json --instant
python3 - "$WORK/prune.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
keys = ["snapshots", "packs", "packs_deleted", "bytes_deleted", "packs_repacked", "blobs_repacked",
        "bytes_repacked", "index_files_written", "index_files_removed"]
print("prune report: " + ", ".join(f"{k} {r[k]}" for k in keys))
PY
echo "after: snapshots: $(ls "$ARKIV_REPO/snapshots" | wc -l), index files: $(ls "$ARKIV_REPO/index" | wc -l)," \
  "packs: $(find "$ARKIV_REPO/data" -type f | wc -l), repository: $(($(repo_size) / 1024)) KiB"
measure "prune --instant (again)" /dev/null "$BIN" prune -q --no-progress --instant
measure "check --read-data" /dev/null "$BIN" check -q --no-progress --read-data
measure "backup (after prune)" /dev/null "$BIN" backup -q --no-progress "$SRC"
