#!/usr/bin/env bash
# Incremental base backups after 1% of rows change, side by side: arkiv
# (file-level incremental: unchanged relation files are not read) against
# pgBackRest `--type=incr` (same settings as pg_compare.sh: zst 3, 2
# processes, aes-256-cbc), on one throw-away cluster, in one run.
#
#   bash bench/pg_incremental.sh [SCALE]     (pgbench scale 100 ≈ 1.5 GB)
#
# Full backup by each tool, then 1% of pgbench_accounts' rows change and
# each takes an incremental; twice: once with the changed rows contiguous
# (the newest 1%, as recent orders are) and once spread evenly (every 100th
# row, which touches most pages of the table). Wall seconds; the ratio
# incremental ÷ full is what the issue's goal (≤ 0.3×) is about.
#
# Needs the PostgreSQL server binaries, pgbench, pgbackrest, and arkiv at
# $ARKIV_BIN (default target/release/arkiv).
set -euo pipefail
SCALE=${1:-100}
PGBIN=/usr/lib/postgresql/15/bin
ARKIV_BIN=$(readlink -f "${ARKIV_BIN:-target/release/arkiv}")
W=${WORK:-/tmp/pg-incr-bench}
PORT=${PORT:-55452}
export ARKIV_PASSWORD=bench-password-not-secret
run_as() { runuser -u postgres -- "$@"; }
t() { local s; s=$(date +%s.%N); "$@" >/dev/null 2>>"$W/err.log"; echo "$(date +%s.%N) - $s" | bc; }
psqlc() { run_as psql -X -h "$W" -p $PORT -U postgres -Atc "$1" postgres; }
# Waits until the archive has caught up with the load, so that neither
# tool's timed backup includes archiving a backlog (arkiv's waits for its own
# WAL to be archived; pgBackRest's, with archive-check=n, does not).
drain() {
  local last; last=$(psqlc "select pg_walfile_name(pg_current_wal_lsn())")
  psqlc "select pg_switch_wal()" >/dev/null
  for _ in $(seq 1 900); do
    local a; a=$(psqlc "select coalesce(last_archived_wal, '') from pg_stat_archiver")
    [[ "$a" > "$last" || "$a" == "$last" ]] && return
    sleep 1
  done
}

rm -rf "$W"; mkdir -p "$W"; chmod 777 "$W"
echo "$ARKIV_PASSWORD" > "$W/pw"; chmod 644 "$W/pw"
"$ARKIV_BIN" init --repo "$W/arkiv" >/dev/null; chmod -R a+rwX "$W/arkiv"
mkdir -p "$W/pgbr" "$W/pgbr-log"; chown -R postgres "$W/pgbr" "$W/pgbr-log"
cat > "$W/pgbackrest.conf" <<CONF
[global]
repo1-path=$W/pgbr
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=bench-password-not-secret
compress-type=zst
compress-level=3
process-max=2
log-path=$W/pgbr-log
lock-path=$W/pgbr-log
start-fast=y
repo1-retention-full=99
archive-check=n
log-level-console=warn
[main]
pg1-path=$W/data
pg1-port=$PORT
pg1-socket-path=$W
CONF
chmod 644 "$W/pgbackrest.conf"
PGBR="pgbackrest --config=$W/pgbackrest.conf --stanza=main"
run_as $PGBIN/initdb -D "$W/data" -A trust -U postgres >/dev/null
cat >> "$W/data/postgresql.conf" <<CONF
port = $PORT
unix_socket_directories = '$W'
listen_addresses = ''
wal_level = replica
archive_mode = on
archive_command = '$ARKIV_BIN pg wal-push --repo $W/arkiv --password-file $W/pw %p && $PGBR archive-push %p'
max_wal_size = 4GB
CONF
run_as $PGBIN/pg_ctl -D "$W/data" -l "$W/pg.log" -w start >/dev/null
run_as pgbench -h "$W" -p $PORT -U postgres -i -s "$SCALE" -q postgres 2>/dev/null
run_as $PGBR stanza-create >/dev/null
ARK=("$ARKIV_BIN" pg backup --repo "$W/arkiv" --pgdata "$W/data" --host "$W" --port $PORT)
# Let the files of the load age past the one-second cut-off before timing.
drain; psqlc "checkpoint" >/dev/null; sleep 2
echo "| step | arkiv s | pgbackrest s |"
echo "|---|---|---|"
A=$(t "${ARK[@]}"); P=$(t run_as $PGBR --type=full backup)
echo "| full | $A | $P |"
ROWS=$((SCALE * 100000))
for kind in contiguous spread; do
  sleep 2
  if [ $kind = contiguous ]; then
    psqlc "update pgbench_accounts set abalance = abalance + 1 where aid > $((ROWS - ROWS / 100))" >/dev/null
  else
    psqlc "update pgbench_accounts set abalance = abalance + 1 where aid % 100 = 0" >/dev/null
  fi
  drain; sleep 2
  A2=$(t "${ARK[@]}"); P2=$(t run_as $PGBR --type=incr backup)
  echo "| incremental, 1% rows $kind | $A2 ($(echo "scale=2; $A2 / $A" | bc)× full) | $P2 ($(echo "scale=2; $P2 / $P" | bc)× full) |"
done
"$ARKIV_BIN" pg info --repo "$W/arkiv" | head -8
run_as $PGBIN/pg_ctl -D "$W/data" -m fast -w stop >/dev/null
