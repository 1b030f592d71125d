#!/usr/bin/env bash
# PostgreSQL logical backup, side by side: `arkiv backup postgres://…`
# against `pg_dump -Fc -f FILE` (pg_dump's default compression), on one
# throw-away cluster with a pgbench database, in one run.
#
#   bash bench/pg_logical.sh [SCALE] [ROUNDS]     (pgbench scale 50 ≈ 750 MB)
#
# Per round, taking turns: pg_dump -Fc to a file, then arkiv into a fresh
# repository (wall seconds and peak RSS from GNU time, sizes from du). Then
# "the second day", on the last round's repository: 1% of pgbench_accounts'
# rows change, once as one contiguous range (recent orders) and once spread
# evenly over the table (every 100th row), and arkiv backs up again; the
# growth of the repository is what the second backup cost.
#
# FILLER=random replaces pgbench_accounts' blank filler column with random
# text first (pgbench's own data is mostly blanks, which gzip compresses
# almost for free), for a dump that costs compression something.
#
# For the second day, restic (when installed) backs up the same
# `pg_dump -Fc -Z0` stream with `--stdin` next to arkiv, to show what a
# chunk-deduplicating peer pays for the same change.
#
# Needs the PostgreSQL server binaries and pgbench, GNU time, and arkiv at
# $ARKIV_BIN (default target/release/arkiv).
set -euo pipefail
SCALE=${1:-50}
ROUNDS=${2:-3}
PGBIN=$(dirname "$(readlink -f "$(command -v pg_ctl || echo /usr/lib/postgresql/15/bin/pg_ctl)")")
[ -x "$PGBIN/pg_ctl" ] || PGBIN=/usr/lib/postgresql/15/bin
INITDB=$(command -v initdb || echo "$PGBIN/initdb")
ARKIV_BIN=$(readlink -f "${ARKIV_BIN:-target/release/arkiv}")
W=${WORK:-/var/tmp/arkiv-pg-logical}
PORT=${PORT:-55433}
export ARKIV_PASSWORD=bench-password-not-secret
run_as() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
# wall seconds and peak RSS (MB) of a command, as "WALL RSS"
timed() {
  /usr/bin/time -f "%e %M" -o "$W/time.out" "$@" >/dev/null 2>>"$W/err.log"
  awk '{printf "%.2f %.0f", $1, $2/1024}' "$W/time.out"
}
mb() { du -sm "$1" | cut -f1; }
kb() { du -sk "$1" | cut -f1; }
mib() { awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}'; }

cleanup() { run_as "$PGBIN/pg_ctl" -D "$W/data" -m immediate -w stop >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
rm -rf "$W"; mkdir -p "$W"; chmod 777 "$W"
run_as "$INITDB" -D "$W/data" -A trust -U postgres >/dev/null
cat >> "$W/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$W'
CONF
run_as "$PGBIN/pg_ctl" -D "$W/data" -l "$W/pg.log" -w start >/dev/null
PSQL=(psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres)
"${PSQL[@]}" -c "create database bench" postgres
pgbench -h 127.0.0.1 -p "$PORT" -U postgres -i -s "$SCALE" -q bench 2>/dev/null
if [ "${FILLER:-}" = random ]; then
  "${PSQL[@]}" -c "update pgbench_accounts set filler = md5(aid::text) || md5((aid * 7)::text) || left(md5((aid * 13)::text), 20)" bench
  "${PSQL[@]}" -c "vacuum full pgbench_accounts" bench
fi
"${PSQL[@]}" -c "vacuum analyze" bench
DB_MB=$("${PSQL[@]}" -Atc "select pg_database_size('bench')/1048576" bench)
URL="postgres://postgres@127.0.0.1:$PORT/bench"
echo "pgbench scale $SCALE: database $DB_MB MB; $(pg_dump --version); $("$ARKIV_BIN" --version)"
echo
echo "| round | pg_dump -Fc s (RSS MB) | dump MiB | arkiv s (RSS MB) | repo MiB |"
echo "|---|---|---|---|---|"
for r in $(seq 1 "$ROUNDS"); do
  rm -rf "$W/repo" "$W/dump.pgdump"
  "$ARKIV_BIN" --repo "$W/repo" init -q >/dev/null
  if [ $((r % 2)) = 1 ]; then
    D=$(timed pg_dump -h 127.0.0.1 -p "$PORT" -U postgres -Fc -f "$W/dump.pgdump" bench)
    A=$(timed "$ARKIV_BIN" --repo "$W/repo" --no-progress backup "$URL")
  else
    A=$(timed "$ARKIV_BIN" --repo "$W/repo" --no-progress backup "$URL")
    D=$(timed pg_dump -h 127.0.0.1 -p "$PORT" -U postgres -Fc -f "$W/dump.pgdump" bench)
  fi
  set -- $D; DW=$1; DR=$2
  set -- $A; AW=$1; AR=$2
  echo "| $r | $DW ($DR) | $(mib "$(kb "$W/dump.pgdump")") | $AW ($AR) | $(mib "$(kb "$W/repo")") |"
done
# A lower bound for any tool that reads pg_dump's output: the dump itself,
# uncompressed, thrown away.
Z0=$(timed sh -c "pg_dump -h 127.0.0.1 -p $PORT -U postgres -Fc -Z0 bench > /dev/null")
echo
echo "pg_dump -Fc -Z0 > /dev/null (no compression, no storage): ${Z0%% *} s"

echo
HAVE_RESTIC=0
if command -v restic >/dev/null; then
  HAVE_RESTIC=1
  export RESTIC_PASSWORD=$ARKIV_PASSWORD
  restic init -q -r "$W/restic" >/dev/null
  restic -q -r "$W/restic" backup --stdin --stdin-filename bench.pgdump \
    < <(pg_dump -h 127.0.0.1 -p "$PORT" -U postgres -Fc -Z0 bench) >/dev/null
fi
echo "Second day, on round $ROUNDS's repository ($(mib "$(kb "$W/repo")") MiB after day one):"
echo
echo "| change | rows changed | arkiv s | arkiv growth MiB | arkiv growth / day one | restic growth / day one |"
echo "|---|---|---|---|---|---|"
ROWS=$((SCALE * 100000))
ONE_PCT=$((ROWS / 100))
FIRST=$(kb "$W/repo")
[ $HAVE_RESTIC = 1 ] && RFIRST=$(kb "$W/restic")
day_two() {  # label, where-clause
  local before after A rb ra rgrowth=n/a
  before=$(kb "$W/repo")
  "${PSQL[@]}" -c "update pgbench_accounts set abalance = abalance + 1 where $2" bench
  A=$(timed "$ARKIV_BIN" --repo "$W/repo" --no-progress backup "$URL")
  after=$(kb "$W/repo")
  if [ $HAVE_RESTIC = 1 ]; then
    rb=$(kb "$W/restic")
    restic -q -r "$W/restic" backup --stdin --stdin-filename bench.pgdump \
      < <(pg_dump -h 127.0.0.1 -p "$PORT" -U postgres -Fc -Z0 bench) >/dev/null
    ra=$(kb "$W/restic")
    rgrowth=$(awk -v g=$((ra - rb)) -v b="$RFIRST" 'BEGIN{printf "%.1f%%", 100*g/b}')
  fi
  echo "| $1 | $ONE_PCT of $ROWS | ${A%% *} | $(mib $((after - before))) | $(awk -v g=$((after - before)) -v b="$FIRST" 'BEGIN{printf "%.1f%%", 100*g/b}') | $rgrowth |"
}
day_two "contiguous (aid <= $ONE_PCT)" "aid <= $ONE_PCT"
day_two "spread (every 100th aid)" "aid % 100 = 7"
"$ARKIV_BIN" --repo "$W/repo" check >/dev/null && echo && echo "check: ok"
