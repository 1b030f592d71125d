#!/usr/bin/env bash
# PostgreSQL WAL archiving and PITR replay, side by side: arkiv against
# pgBackRest (zst level 3, 2 processes, aes-256-cbc, as pg_compare.sh sets it
# up), on one throw-away cluster, in one run.
#
#   bash bench/pg_pitr.sh [WAL_MB] [SCALE]     (default 1024 MB of WAL, pgbench scale 20)
#
# 1. A cluster archives every segment to both tools at once
#    (archive_command = 'arkiv pg wal-push … %p && pgbackrest … archive-push %p')
#    after a base backup by each tool.
# 2. pgbench runs until WAL_MB of WAL has been written, then the segment is
#    switched and the archive drains.
# 3. Each tool restores its base backup with no target (replay everything
#    archived) into a fresh directory; the time measured is restore + start
#    + replay until the server has promoted and answers — PITR replay with
#    each tool's restore_command (pgbackrest archive-get, arkiv wal-fetch).
# 4. Archive throughput: the segments left in the primary's pg_wal are copied
#    aside and pushed into fresh repositories, segment by segment as
#    PostgreSQL's archiver does (synchronous), and by the asynchronous
#    archiver (arkiv pg archiver over a copy with .ready files); segments/s.
#
# Needs the PostgreSQL server binaries, pgbench, pgbackrest, and arkiv at
# $ARKIV_BIN (default target/release/arkiv).
set -euo pipefail
WAL_MB=${1:-1024}
SCALE=${2:-20}
PGBIN=/usr/lib/postgresql/15/bin
ARKIV_BIN=$(readlink -f "${ARKIV_BIN:-target/release/arkiv}")
W=${WORK:-/tmp/pg-pitr-bench}
PORT=${PORT:-55442}
export ARKIV_PASSWORD=bench-password-not-secret
run_as() { runuser -u postgres -- "$@"; }
now() { date +%s.%N; }
psqlc() { run_as psql -X -h "$W" -p "$1" -U postgres -Atc "$2" postgres; }

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
ARK="$ARKIV_BIN pg wal-push --repo $W/arkiv --password-file $W/pw"

run_as $PGBIN/initdb -D "$W/data" -A trust -U postgres >/dev/null
cat >> "$W/data/postgresql.conf" <<CONF
port = $PORT
unix_socket_directories = '$W'
listen_addresses = ''
wal_level = replica
archive_mode = on
archive_command = '$ARK %p && $PGBR archive-push %p'
max_wal_size = 4GB
checkpoint_timeout = 30min
# WAL volume, not commit latency, is what this measures: commits need not
# wait for their flush while the load runs.
synchronous_commit = off
CONF
run_as $PGBIN/pg_ctl -D "$W/data" -l "$W/pg.log" -w start >/dev/null
run_as pgbench -h "$W" -p $PORT -U postgres -i -s "$SCALE" -q postgres 2>/dev/null
run_as $PGBR stanza-create >/dev/null
run_as $PGBR --type=full backup >/dev/null
"$ARKIV_BIN" pg backup --repo "$W/arkiv" --pgdata "$W/data" --host "$W" --port $PORT >/dev/null

start_lsn=$(psqlc $PORT "select pg_current_wal_lsn()")
while :; do
  run_as pgbench -h "$W" -p $PORT -U postgres -n -c 4 -T 10 postgres >/dev/null 2>&1
  mb=$(psqlc $PORT "select (pg_current_wal_lsn() - '$start_lsn'::pg_lsn) / 1048576")
  mb=${mb%.*}
  [ "$mb" -ge "$WAL_MB" ] && break
done
last=$(psqlc $PORT "select pg_walfile_name(pg_current_wal_lsn())")
psqlc $PORT "select pg_switch_wal()" >/dev/null
for _ in $(seq 1 600); do
  a=$(psqlc $PORT "select coalesce(last_archived_wal, '') from pg_stat_archiver")
  [[ "$a" > "$last" || "$a" == "$last" ]] && break
  sleep 1
done
rows=$(psqlc $PORT "select sum(abalance) from pgbench_accounts")
echo "WAL written: ${mb} MB ($(psqlc $PORT "select count(*) from pg_ls_waldir()") files in pg_wal); checksum sum(abalance) = $rows"

replay() {  # $1 = name, $2 = dir, $3 = restore command (run as postgres for pgbackrest)
  local d=$2 p=$((PORT + 1)) t0 t1
  t0=$(now)
  eval "$3" >/dev/null
  chown -R postgres "$d"; chmod 700 "$d"
  run_as $PGBIN/pg_ctl -D "$d" -o "-p $p -k $W -c archive_mode=off" -l "$W/$1.log" -w -t 3600 start >/dev/null
  until [ "$(psqlc $p "select pg_is_in_recovery()")" = "f" ]; do sleep 0.2; done
  t1=$(now)
  local got; got=$(psqlc $p "select sum(abalance) from pgbench_accounts")
  run_as $PGBIN/pg_ctl -D "$d" -m fast -w stop >/dev/null
  echo "| $1 | $(echo "$t1 - $t0" | bc) | $([ "$got" = "$rows" ] && echo same || echo "DIFFERENT ($got)") |"
}
echo
echo "| tool | restore + replay ${mb} MB of WAL, s | data |"
echo "|---|---|---|"
mkdir -p "$W/pgbr-restore"; chown postgres "$W/pgbr-restore"
replay pgbackrest "$W/pgbr-restore" "run_as $PGBR --pg1-path=$W/pgbr-restore --type=default restore"
replay arkiv "$W/arkiv-restore" "$ARKIV_BIN pg restore --repo $W/arkiv --password-file $W/pw --pgdata $W/arkiv-restore"

# Archive throughput on the segments still in pg_wal.
mkdir -p "$W/segs/archive_status"
for f in "$W"/data/pg_wal/0000000*; do
  n=$(basename "$f"); [ ${#n} -eq 24 ] || continue
  cp "$f" "$W/segs/"; touch "$W/segs/archive_status/$n.ready"
done
n=$(ls "$W/segs" | grep -c '^0')
run_as $PGBIN/pg_ctl -D "$W/data" -m fast -w stop >/dev/null
echo
echo "| archiving $n segments | segments/s |"
echo "|---|---|"
"$ARKIV_BIN" init --repo "$W/sync" >/dev/null
t0=$(now); for f in "$W"/segs/0*; do "$ARKIV_BIN" pg wal-push --repo "$W/sync" "$f"; done; t1=$(now)
echo "| arkiv wal-push, one process per segment | $(echo "scale=1; $n / ($t1 - $t0)" | bc) |"
"$ARKIV_BIN" init --repo "$W/async" >/dev/null
t0=$(now); "$ARKIV_BIN" pg archiver --repo "$W/async" --spool "$W/spool" --pg-wal "$W/segs" --idle-exit 1 --parallel 4; t1=$(now)
echo "| arkiv pg archiver (async, 4 parallel) | $(echo "scale=1; $n / ($t1 - $t0 - 1)" | bc) |"
mkdir -p "$W/pgbr2"; chown postgres "$W/pgbr2" "$W/segs" -R
sed "s#repo1-path=$W/pgbr#repo1-path=$W/pgbr2#" "$W/pgbackrest.conf" > "$W/pgbackrest2.conf"; chmod 644 "$W/pgbackrest2.conf"
run_as pgbackrest --config="$W/pgbackrest2.conf" --stanza=main --no-online stanza-create >/dev/null 2>&1 || true
t0=$(now); for f in "$W"/segs/0*; do run_as pgbackrest --config="$W/pgbackrest2.conf" --stanza=main archive-push "$f" >/dev/null 2>&1 || echo "pgbackrest archive-push failed" >&2; done; t1=$(now)
echo "| pgbackrest archive-push, one process per segment | $(echo "scale=1; $n / ($t1 - $t0)" | bc) |"
