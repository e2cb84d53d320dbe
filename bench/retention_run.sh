#!/usr/bin/env bash
# The persister's write rate with and without the retention job deleting old rows, in one run
# (docs/benchmarks.md, "Retention while writing").
#
#   bench/retention_run.sh        # about 1-2 minutes on a 2-core machine
#
# Starts private RabbitMQ and PostgreSQL servers (state in SLUICE_STATE_DIR, default
# /tmp/sl-bench-retention; ports SLUICE_AMQP_PORT 5712 and SLUICE_PG_PORT 5473) unless they
# already run there, builds sluice-persister and sl_bench, recreates the database sluice_bench,
# then, on 127.0.0.1 only:
#   1. stores BENCH_OLD_ROWS (500000) messages in channel "old", created 30 days ago (straight
#      into the database, numbered on from sluice_feed as the persister would), with an update
#      event for one in BENCH_OLD_EVENT_EVERY (50) of them, then VACUUM ANALYZE;
#   2. drains BENCH_DRAIN_COUNT (200000) posts (BENCH_DRAIN_LINES, 32, per AMQP message) with a
#      persister without retention: "off";
#   3. the same with SLUICE_RETENTION=old=1d: its job deletes the old rows (and their events)
#      while the persister writes, SLUICE_RETENTION_BATCH (1000) per transaction,
#      SLUICE_RETENTION_PAUSE_MS (10) apart: "on";
#   4. and 5. steps 2 and 3 again (the job goes on from where it stopped), for the noise;
# and prints the rates side by side, with the rows the job deleted during each "on" drain (from
# the persister's /metrics at the drain's end) and its time per transaction.
# Output: $BENCH_OUT (default $SLUICE_STATE_DIR/bench-out).
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR"

log() { printf '%s\n' "$*"; }
die() { printf 'bench/retention_run.sh: %s\n' "$*" >&2; exit 1; }
# shellcheck source=../scripts/lib.sh
. "$REPO_DIR/scripts/lib.sh"

case ${1:-} in
  '') ;;
  -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) die "no arguments (see --help)" ;;
esac

unset SLUICE_CLUSTER
export SLUICE_STATE_DIR=${SLUICE_STATE_DIR:-/tmp/sl-bench-retention}
export SLUICE_AMQP_PORT=${SLUICE_AMQP_PORT:-5712}
export SLUICE_PG_PORT=${SLUICE_PG_PORT:-5473}
BUILD_DIR=${BENCH_BUILD_DIR:-build}
OUT=${BENCH_OUT:-$SLUICE_STATE_DIR/bench-out}
PERSISTER_PORT=${BENCH_PERSISTER_PORT:-18493}
OLD_ROWS=${BENCH_OLD_ROWS:-500000}
OLD_EVENT_EVERY=${BENCH_OLD_EVENT_EVERY:-50}
DRAIN_COUNT=${BENCH_DRAIN_COUNT:-200000}
DRAIN_LINES=${BENCH_DRAIN_LINES:-32}
export SLUICE_RETENTION_BATCH=${SLUICE_RETENTION_BATCH:-1000}
export SLUICE_RETENTION_PAUSE_MS=${SLUICE_RETENTION_PAUSE_MS:-10}
export SLUICE_RETENTION_INTERVAL_MS=1000
BENCH_DB=sluice_bench
export SLUICE_BENCH_QUEUE=sluice.bench.persist
export SLUICE_BENCH_LIVE_EXCHANGE=sluice.bench.live
export SLUICE_QUEUE=$SLUICE_BENCH_QUEUE
export SLUICE_LIVE_EXCHANGE=$SLUICE_BENCH_LIVE_EXCHANGE
export SLUICE_QUEUE_MAX_LENGTH=1000000
export SLUICE_LOG_LEVEL=${SLUICE_LOG_LEVEL:-info}
BIN=$REPO_DIR/$BUILD_DIR/bin
SERVERS=$REPO_DIR/scripts/servers.sh
T_BEGIN=$(date -u '+%F %T UTC')

servers_started=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((servers_started)); then "$SERVERS" stop >>"$OUT/servers.log" 2>&1 || log "stopping the servers failed"; fi
  log "bench/retention_run.sh: done (output in $OUT)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$OUT"
rm -f "$OUT"/*.txt "$OUT"/*.log "$OUT"/*.prom
port_in_use "$PERSISTER_PORT" && die "port $PERSISTER_PORT is in use: set BENCH_PERSISTER_PORT"

log "== build ($BUILD_DIR)"
cmake -S "$REPO_DIR" -B "$REPO_DIR/$BUILD_DIR" >"$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; die "cmake failed"; }
cmake --build "$REPO_DIR/$BUILD_DIR" -j2 --target sluice-persister sl_bench >>"$OUT/build.log" 2>&1 ||
  { tail -30 "$OUT/build.log"; die "build failed"; }

log "== servers ($SLUICE_STATE_DIR, amqp $SLUICE_AMQP_PORT, postgres $SLUICE_PG_PORT)"
servers_with_db "$SERVERS" "$BENCH_DB" "$OUT/servers.log"
"$BIN/sl_bench" reset >>"$OUT/servers.log" 2>&1 || true
psql_bench() { "$SERVERS" psql -d "$BENCH_DB" -q -v ON_ERROR_STOP=1 "$@"; }

# The schema (and a warm-up): a small drain.
"$BIN/sl_bench" persister --count 10000 --lines "$DRAIN_LINES" --persister-bin "$BIN/sluice-persister" \
  >"$OUT/warmup.txt" 2>&1 || { cat "$OUT/warmup.txt"; die "the warm-up drain failed"; }

log "== $OLD_ROWS old rows in channel old (created 30 days ago), an update event every $OLD_EVENT_EVERY"
t0=$(now_ms)
psql_bench >>"$OUT/servers.log" 2>&1 <<SQL || die "could not store the old rows (see $OUT/servers.log)"
BEGIN;
SELECT last_seq FROM sluice_feed WHERE id = 1 FOR UPDATE;
CREATE TEMP TABLE base AS SELECT last_seq AS s FROM sluice_feed WHERE id = 1;
INSERT INTO messages (id, seq, channel, author, body, source, created_at)
  SELECT gen_random_uuid(), b.s + g, 'old', 'bench', repeat('o', 150), 'api', now() - interval '30 days' + g * interval '1 ms'
  FROM base b, generate_series(1, $OLD_ROWS) g;
INSERT INTO message_events (seq, event_id, message_id, channel, type, body, created_at)
  SELECT b.s + $OLD_ROWS + row_number() OVER (ORDER BY m.seq), gen_random_uuid(), m.id, 'old', 'update',
         '{"type":"update","id":"' || m.id || '","channel":"old","text":"edited","seq":' || (b.s + $OLD_ROWS + row_number() OVER (ORDER BY m.seq)) || '}',
         now() - interval '29 days'
  FROM base b, messages m WHERE m.channel = 'old' AND m.seq % $OLD_EVENT_EVERY = 0;
UPDATE sluice_feed SET last_seq = (SELECT max(seq) FROM (SELECT seq FROM messages UNION ALL SELECT seq FROM message_events) t) WHERE id = 1;
COMMIT;
VACUUM ANALYZE messages;
VACUUM ANALYZE message_events;
SQL
old_events=$(psql_bench -tA -c "SELECT count(*) FROM message_events")
log "  stored in $(elapsed "$t0"); $old_events update events; feed at seq $(psql_bench -tA -c "SELECT last_seq FROM sluice_feed WHERE id = 1")"

# drain NAME [env...]: one drain with a fresh persister; its RESULT line and /metrics into $OUT.
drain() {
  local name=$1
  shift
  env "$@" "$BIN/sl_bench" persister --count "$DRAIN_COUNT" --lines "$DRAIN_LINES" \
    --persister-bin "$BIN/sluice-persister" --persister-port "$PERSISTER_PORT" --metrics-out "$OUT/$name.prom" \
    >"$OUT/$name.txt" 2>&1 || { cat "$OUT/$name.txt"; die "drain $name failed"; }
  grep -h '^persister: drained' "$OUT/$name.txt" | sed "s/^persister:/  $name:/"
}
rate() { sed -n 's/^RESULT persister_per_s=\([0-9]*\).*/\1/p' "$OUT/$1.txt"; }
metric() { awk -v m="$2" '$1 == m { print $2 }' "$OUT/$1.prom"; }

log "== drains of $DRAIN_COUNT posts ($DRAIN_LINES per AMQP message): off, on (SLUICE_RETENTION=old=1d), off, on"
old0=$(psql_bench -tA -c "SELECT count(*) FROM messages WHERE channel = 'old'")
drain off1 SLUICE_RETENTION=
drain on1 SLUICE_RETENTION=old=1d
old1=$(psql_bench -tA -c "SELECT count(*) FROM messages WHERE channel = 'old'")
drain off2 SLUICE_RETENTION=
drain on2 SLUICE_RETENTION=old=1d
old2=$(psql_bench -tA -c "SELECT count(*) FROM messages WHERE channel = 'old'")
mark=$(psql_bench -tA -c "SELECT coalesce(max(low_seq), 0) FROM sluice_retention")

{
  log ""
  log "== summary ($T_BEGIN; $OLD_ROWS old rows, drains of $DRAIN_COUNT, retention batch $SLUICE_RETENTION_BATCH, pause $SLUICE_RETENTION_PAUSE_MS ms)"
  printf '  %-5s %14s %18s %16s %16s %22s\n' drain "rows/s stored" "old rows deleted" "deleted/s" "events deleted" \
    "per transaction (avg)"
  for d in off1 on1 off2 on2; do
    del=$(metric "$d" 'sluice_persister_retention_deleted_total{table="messages"}')
    ev=$(metric "$d" 'sluice_persister_retention_deleted_total{table="events"}')
    sum=$(metric "$d" sluice_persister_retention_batch_seconds_sum)
    cnt=$(metric "$d" sluice_persister_retention_batch_seconds_count)
    # the job starts with the persister: its time is the drain's including start-up
    secs=$(sed -n 's/.*including start-up (\([0-9.]*\) s).*/\1/p' "$OUT/$d.txt")
    per=- dps=-
    [[ -n $cnt && $cnt != 0 ]] && per=$(awk -v s="$sum" -v c="$cnt" 'BEGIN { printf "%.1f ms", 1000 * s / c }')
    [[ -n $del && -n $secs ]] && dps=$(awk -v d="$del" -v s="$secs" 'BEGIN { printf "%.0f", d / s }')
    printf '  %-5s %14s %18s %16s %16s %22s\n' "$d" "$(rate "$d")" "${del:--}" "$dps" "${ev:--}" "$per"
  done
  log "  old rows: $old0 before, $old1 after on1, $old2 after on2; low-water mark of old: $mark"
  r_off=$(( ($(rate off1) + $(rate off2)) / 2 ))
  r_on=$(( ($(rate on1) + $(rate on2)) / 2 ))
  log "  mean: off $r_off rows/s, on $r_on rows/s ($(awk -v a="$r_on" -v b="$r_off" 'BEGIN { printf "%.0f", 100 * a / b }') %)"
} | tee "$OUT/summary.txt"
