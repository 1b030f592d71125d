#!/usr/bin/env bash
# Per-core throughput of each stage of Arkiv's write path (criterion), next to
# the reference tools on the same bytes: `b3sum --num-threads 1` for hashing
# and `zstd -3 -T1` for compression.
#
#   bench/stages.sh [DATASET]     (default /var/tmp/arkiv-bench/data-1g)
#
# Builds a 64 MiB sample by concatenating the dataset's files in name order,
# times the reference tools on it (best of 3), then runs
# `cargo bench -p arkiv-repo --bench throughput` on the same sample.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATASET=${1:-/var/tmp/arkiv-bench/data-1g}
SAMPLE=${ARKIV_BENCH_SAMPLE:-/var/tmp/arkiv-bench/sample-64m.bin}
command -v b3sum >/dev/null && command -v zstd >/dev/null || {
  echo "needs b3sum and zstd: apt-get install b3sum zstd" >&2; exit 1; }
if [ ! -s "$SAMPLE" ]; then
  # head closes the pipe at 64 MiB; the writers' SIGPIPE is expected there.
  { find "$DATASET" -type f -print0 | sort -z | xargs -0 cat 2>/dev/null || true; } | head -c $((64 << 20)) > "$SAMPLE"
fi
size=$(stat -c %s "$SAMPLE")
best() { # best wall time of 3 runs of "$@", in seconds
  local b=999 t f
  f=$(mktemp)
  for _ in 1 2 3; do
    /usr/bin/time -f %e -o "$f" "$@" >/dev/null 2>&1
    t=$(tail -1 "$f")
    b=$(python3 -c "print(min($b, $t))")
  done
  rm -f "$f"
  echo "$b"
}
cat "$SAMPLE" >/dev/null # warm the page cache
b3=$(best b3sum --num-threads 1 "$SAMPLE")
zs=$(best zstd -3 -T1 -c -f "$SAMPLE")
python3 - "$size" "$b3" "$zs" <<'PY'
import sys
size, b3, zs = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
mb = size / 1e6
print(f"sample: {mb:.0f} MB")
print(f"reference b3sum --num-threads 1: {mb / max(b3, 1e-3):.0f} MB/s ({b3:.2f} s)")
print(f"reference zstd -3 -T1:           {mb / max(zs, 1e-3):.0f} MB/s ({zs:.2f} s)")
PY
cd "$ROOT"
ARKIV_BENCH_FILE="$SAMPLE" cargo bench -p arkiv-repo --bench throughput -- --noplot 2>&1 | grep -E '^stage/|thrpt'
