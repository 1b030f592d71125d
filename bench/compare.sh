#!/usr/bin/env bash
# Side-by-side file-backup benchmark: arkiv against restic, rustic and borg.
#
#   bench/compare.sh [--build] [--tools LIST] [--work DIR] [--name NAME] [--nice N] DATASET
#
# Runs the shared compare.py (init, cold backup, unchanged backup, 1%-changed
# backup, restore compared byte for byte, check --read-data; wall time and peak
# RSS from GNU time) on DATASET and writes
#   bench/results/<YYYY-MM-DD>-<dataset-name>.json   raw figures from compare.py
#   bench/results/<YYYY-MM-DD>-<dataset-name>.md     Markdown table + run context
# (a -HHMM suffix is added to the date when that day's file already exists).
#
# Options:
#   --build        cargo build --release first (otherwise the existing binary is used)
#   --tools LIST   comma list, default arkiv,restic,rustic,borg (missing tools are skipped)
#   --work DIR     scratch directory, default $ARKIV_BENCH_WORK or /var/tmp/arkiv-bench/work
#                  (needs about 3x the dataset size free; emptied per tool)
#   --name NAME    dataset name used in the file names, default basename of DATASET
#   --nice N       run the benchmark under `nice -n N` (not the --build step)
#
# Environment:
#   ARKIV_SHARED   shared bench tools: the dir holding compare.py, or its parent
#                  (default: ../shared/bench relative to the repo root)
#   ARKIV_BIN      arkiv binary, default target/release/arkiv (relative to the repo root)
#   RUSTIC_BIN     rustic binary; defaults to /opt/rustic/bin/rustic when that exists
#
# Works from any directory; paths are resolved against the repo root.
set -euo pipefail

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
ROOT=$(dirname "$(dirname "$SELF")")
usage() { sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

BUILD=0 TOOLS=arkiv,restic,rustic,borg NAME= NICE=
WORK=${ARKIV_BENCH_WORK:-/var/tmp/arkiv-bench/work}
DATASET=
while [ $# -gt 0 ]; do
  case $1 in
    --build) BUILD=1 ;;
    --tools) TOOLS=$2; shift ;;
    --tools=*) TOOLS=${1#*=} ;;
    --work) WORK=$2; shift ;;
    --work=*) WORK=${1#*=} ;;
    --name) NAME=$2; shift ;;
    --name=*) NAME=${1#*=} ;;
    --nice) NICE=$2; shift ;;
    --nice=*) NICE=${1#*=} ;;
    -h|--help) usage 0 ;;
    -*) echo "unknown option: $1" >&2; usage 2 >&2 ;;
    *) [ -z "$DATASET" ] || { echo "only one DATASET" >&2; exit 2; }; DATASET=$1 ;;
  esac
  shift
done
[ -n "$DATASET" ] || { echo "missing DATASET" >&2; usage 2 >&2; }
[ -d "$DATASET" ] || { echo "dataset not a directory: $DATASET" >&2; exit 2; }
DATASET=$(realpath "$DATASET")
WORK=$(realpath -m "$WORK")   # normalised: compare.py locates restored trees by this path
cd "$ROOT"
NAME=${NAME:-$(basename "$DATASET")}

# Shared bench tools.
SHARED=${ARKIV_SHARED:-$ROOT/../shared/bench}
[ -f "$SHARED/compare.py" ] || { [ -f "$SHARED/bench/compare.py" ] && SHARED=$SHARED/bench; }
[ -f "$SHARED/compare.py" ] || { echo "compare.py not found under $SHARED (set ARKIV_SHARED)" >&2; exit 2; }
SHARED=$(cd "$SHARED" && pwd)
[ -x /usr/bin/time ] || { echo "GNU time missing: apt-get install time" >&2; exit 2; }

# Binaries.
if [ -z "${RUSTIC_BIN:-}" ] && [ -x /opt/rustic/bin/rustic ]; then RUSTIC_BIN=/opt/rustic/bin/rustic; fi
[ -n "${RUSTIC_BIN:-}" ] && export RUSTIC_BIN
ARKIV_BIN=${ARKIV_BIN:-target/release/arkiv}
case $ARKIV_BIN in /*) ;; */*) ARKIV_BIN=$ROOT/$ARKIV_BIN ;; esac
export ARKIV_BIN

if [ "$BUILD" = 1 ]; then
  echo "# cargo build --release" >&2
  cargo build --release
fi
if [[ ",$TOOLS," == *,arkiv,* ]] && ! [ -x "$ARKIV_BIN" ] && ! command -v "$ARKIV_BIN" >/dev/null; then
  echo "# warning: $ARKIV_BIN not found; arkiv will be skipped (use --build)" >&2
fi

# Output files.
mkdir -p "$ROOT/bench/results" "$WORK"
STAMP=$(date +%F)
if [ -e "bench/results/$STAMP-$NAME.json" ] || [ -e "bench/results/$STAMP-$NAME.md" ]; then STAMP=$(date +%F-%H%M); fi
JSON=$ROOT/bench/results/$STAMP-$NAME.json
MD=$ROOT/bench/results/$STAMP-$NAME.md

version() {  # first line of a tool's version, or "not installed"
  local bin=$1; shift
  if command -v "$bin" >/dev/null 2>&1 || [ -x "$bin" ]; then "$bin" "$@" 2>&1 | head -1; else echo "not installed"; fi
}
DS_BYTES=$(du -sb "$DATASET" | cut -f1)
DS_FILES=$(find "$DATASET" -type f | wc -l)

CMD=(python3 "$SHARED/compare.py" "$DATASET" --tools "$TOOLS" --work "$WORK" --json "$JSON")
[ -n "$NICE" ] && CMD=(nice -n "$NICE" "${CMD[@]}")
echo "# ${CMD[*]}" >&2
START=$(date -u +%FT%TZ)
TABLE=$("${CMD[@]}")
END=$(date -u +%FT%TZ)
echo "$TABLE"

{
  echo "# Benchmark: $NAME ($STAMP)"
  echo
  echo "- dataset: \`$DATASET\` — $(awk -v b="$DS_BYTES" 'BEGIN{printf "%.1f MiB", b/1048576}'), $DS_FILES files"
  echo "- run: $START → $END on $(hostname), $(nproc) cores, $(uname -r)"
  echo "- command: \`${CMD[*]}\`"
  echo "- arkiv: $(version "$ARKIV_BIN" --version) (\`$ARKIV_BIN\`)"
  echo "- restic: $(version restic version)"
  echo "- rustic: $(version "${RUSTIC_BIN:-rustic}" --version)"
  echo "- borg: $(version borg --version)"
  if REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null); then
    echo "- git: $REV$(git -C "$ROOT" diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || echo ' (uncommitted changes)')"
  else
    echo "- git: no commit yet"
  fi
  echo
  echo "Wall seconds (peak RSS MB) per step; repo MB after the 1%-changed backup;"
  echo "\"restore ok\" = restored tree byte-identical to the source."
  echo
  echo "$TABLE"
  python3 - "$JSON" <<'PY'
import json, sys
try:
    res = json.load(open(sys.argv[1]))
except Exception:
    sys.exit(0)
errs = [(r["tool"], k, v) for r in res for k, v in r.items() if isinstance(v, dict) and v.get("rc")]
if errs:
    print("\nFailures:\n")
    for tool, step, v in errs:
        print(f"- {tool} {step}: rc={v['rc']}: " + " / ".join(v.get("error", []))[:400])
PY
} > "$MD"
echo "# wrote $MD and $JSON" >&2
