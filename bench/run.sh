#!/usr/bin/env bash
# The write-path benchmark in one command (docs/benchmarks.md explains the figures).
#
#   bench/run.sh                 # about 2-3 minutes on a 2-core machine
#   BENCH_PERF=1 bench/run.sh    # also profiles the drain and the full-speed POSTs with perf
#
# Starts private RabbitMQ and PostgreSQL servers (state in SLUICE_STATE_DIR, default
# /tmp/sl-bench; ports SLUICE_AMQP_PORT 5702 and SLUICE_PG_PORT 5463) unless they already run
# there, builds sluice-api, sluice-persister and sl_bench, recreates the database sluice_bench and
# the bench queue, then runs in this order, on 127.0.0.1 only:
#   0. disk           the disk's flush latency (8 KiB write + fdatasync) on the quiet machine; it is
#                     probed again during steps 5 and 8, whose tails it bounds from below
#   1. raw-publish    rabbitmq-c publish with confirms into the persist queue, no consumer
#   2. raw-insert     libpq prepared multi-row INSERT, 1 000 rows per transaction
#   3. persister      a sluice-persister draining a pre-filled queue, one post per AMQP message
#   3b.               the same with BENCH_DRAIN_LINES (32) posts per message, as the api sends
#                     the posts of one loop turn together under load
#   4. post (full)    sluice-api + sluice-persister, closed-loop POSTs as fast as answered
#   5. post (half)    open-loop POSTs at half the raw publish rate of step 1: POST -> committed latency
#                     (and a CSV of it per 100 ms, timeline-post-half.csv)
# then, to tell where the gap between 1 and 4 comes from (for information, not targets):
#   6. raw-publish    as step 1, but while the service persister consumes the queue
#   7. post (alone)   as step 4, with the persister stopped (the api alone against the broker)
#   8. post (api/2)   open-loop POSTs at half the api's own rate of step 4
# and prints a summary against the targets. Everything it started is stopped on exit.
# Logs, metrics and each step's output: $BENCH_OUT (default $SLUICE_STATE_DIR/bench-out).
#
# Sizes (environment): BENCH_RAW_COUNT (200000), BENCH_INSERT_ROWS (200000), BENCH_DRAIN_COUNT
# (200000), BENCH_DRAIN_LINES (32), BENCH_POST_COUNT (200000), BENCH_POST_CONNECTIONS (256), BENCH_LATENCY_SECONDS (30),
# BENCH_RATE_CONNECTIONS (4096), BENCH_API_PORT (18480), BENCH_PERSISTER_PORT (18483),
# BENCH_BUILD_DIR (build).
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR"

log() { printf '%s\n' "$*"; }
die() { printf 'bench/run.sh: %s\n' "$*" >&2; exit 1; }
# shellcheck source=../scripts/lib.sh
. "$REPO_DIR/scripts/lib.sh"

export SLUICE_STATE_DIR=${SLUICE_STATE_DIR:-/tmp/sl-bench}
export SLUICE_AMQP_PORT=${SLUICE_AMQP_PORT:-5702}
export SLUICE_PG_PORT=${SLUICE_PG_PORT:-5463}
BUILD_DIR=${BENCH_BUILD_DIR:-build}
OUT=${BENCH_OUT:-$SLUICE_STATE_DIR/bench-out}
API_PORT=${BENCH_API_PORT:-18480}
PERSISTER_PORT=${BENCH_PERSISTER_PORT:-18483}
RAW_COUNT=${BENCH_RAW_COUNT:-200000}
INSERT_ROWS=${BENCH_INSERT_ROWS:-200000}
DRAIN_COUNT=${BENCH_DRAIN_COUNT:-200000}
DRAIN_LINES=${BENCH_DRAIN_LINES:-32}
POST_COUNT=${BENCH_POST_COUNT:-200000}
POST_CONNS=${BENCH_POST_CONNECTIONS:-256}
LAT_SECONDS=${BENCH_LATENCY_SECONDS:-30}
# Open-loop steps: enough connections that the tool never queues a due POST behind its own pool,
# even through a stall of the broker or the disk (at 23 000/s, 4096 connections hold 178 ms of
# POSTs; 2048 ran out in 200 ms stalls and added the tool's own queueing to the figure).
RATE_CONNS=${BENCH_RATE_CONNECTIONS:-4096}
PERF=${BENCH_PERF:-0}
BENCH_DB=sluice_bench

# The bench's own names, so that nothing mixes with another instance's data.
export SLUICE_BENCH_QUEUE=sluice.bench.persist
export SLUICE_BENCH_LIVE_EXCHANGE=sluice.bench.live
export SLUICE_QUEUE=$SLUICE_BENCH_QUEUE
export SLUICE_LIVE_EXCHANGE=$SLUICE_BENCH_LIVE_EXCHANGE
# Room for every phase's messages: no 429 from a full queue while the persister catches up.
export SLUICE_QUEUE_MAX_LENGTH=1000000
# Every load connection comes from 127.0.0.1 (BENCH_RATE_CONNECTIONS: 4096).
export SLUICE_MAX_CONNS_PER_CLIENT=0
export SLUICE_LOG_LEVEL=${SLUICE_LOG_LEVEL:-info}

BIN=$REPO_DIR/$BUILD_DIR/bin
SERVERS=$REPO_DIR/scripts/servers.sh
T_START=$SECONDS

servers_started=0
svc_pids=()
perf_pid=
disk_pid=

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n $perf_pid ]] && pid_alive "$perf_pid"; then kill -INT "$perf_pid" 2>/dev/null || true; fi
  if [[ -n $disk_pid ]] && pid_alive "$disk_pid"; then kill "$disk_pid" 2>/dev/null || true; fi
  if ((${#svc_pids[@]})); then kill_pids services "${svc_pids[@]}" || true; fi
  if ((servers_started)); then "$SERVERS" stop >>"$OUT/servers.log" 2>&1 || log "stopping the servers failed (see $OUT/servers.log)"; fi
  log "bench/run.sh: done in $((SECONDS - T_START)) s (output in $OUT)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$OUT"
rm -f "$OUT"/*.txt "$OUT"/*.log "$OUT"/*.prom "$OUT"/*.time "$OUT"/perf-*

{ date -u '+%F %T UTC'; uptime; nproc; ps -eo pcpu=,etime=,args= --sort=-pcpu | head -15 | cut -c1-160; } >"$OUT/machine.txt"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# What the rest of the machine does before we start (other people's servers and tests share it).
b0=$(awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat)
sleep 3
b1=$(awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat)
BUSY_BEFORE=$(((b1 - b0) * 100 / $(getconf CLK_TCK) / 3))
log "machine busy before the run: $BUSY_BEFORE % of one core (of 200 %) over 3 s"

for p in "$API_PORT" "$PERSISTER_PORT"; do
  port_in_use "$p" && die "port $p is in use: set BENCH_API_PORT / BENCH_PERSISTER_PORT"
done

log "== build ($BUILD_DIR)"
cmake -S "$REPO_DIR" -B "$REPO_DIR/$BUILD_DIR" >"$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; die "cmake failed"; }
cmake --build "$REPO_DIR/$BUILD_DIR" -j2 --target sluice-api sluice-persister sl_bench >>"$OUT/build.log" 2>&1 ||
  { tail -30 "$OUT/build.log"; die "build failed"; }

log "== servers ($SLUICE_STATE_DIR, amqp $SLUICE_AMQP_PORT, postgres $SLUICE_PG_PORT)"
if ! "$SERVERS" status >/dev/null 2>&1; then
  servers_started=1
  "$SERVERS" start | tee -a "$OUT/servers.log"
fi
eval "$("$SERVERS" env)"
export SLUICE_DB_URL=postgresql://postgres@127.0.0.1:$SLUICE_PG_PORT/$BENCH_DB
"$SERVERS" psql -d postgres -q -v ON_ERROR_STOP=1 \
  -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" -c "CREATE DATABASE $BENCH_DB" >>"$OUT/servers.log" 2>&1 ||
  die "could not create database $BENCH_DB"
"$BIN/sl_bench" reset >>"$OUT/servers.log" 2>&1 || true # a first run has nothing to delete

# ---- CPU accounting: ticks of each component between two snapshots ----

HZ=$(getconf CLK_TCK)
# utime+stime (+cutime+cstime with a second argument) of a PID, 0 when gone.
ticks() {
  local f
  f=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  # shellcheck disable=SC2086
  set -- $f
  if [[ ${2:-} ]]; then echo $((${12} + ${13} + ${14} + ${15})); else echo $((${12} + ${13})); fi
}
total_busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }
# PostgreSQL: the postmaster with its reaped children, plus the live ones.
pg_ticks() {
  local pm sum c
  pm=$(read_pid "$SLUICE_STATE_DIR/pg/postmaster.pid")
  [[ -n $pm ]] || { echo 0; return; }
  sum=$(ticks "$pm" children)
  for c in $(ps -o pid= --ppid "$pm"); do sum=$((sum + $(ticks "$c"))); done
  echo "$sum"
}
beam_ticks() { ticks "$(read_pid "$SLUICE_STATE_DIR/rabbitmq/rabbitmq.pid")"; }
api_pid=
persister_pid=
snapshot() {
  echo "$(total_busy) $(beam_ticks) $(pg_ticks) $(ticks "${api_pid:-0}") $(ticks "${persister_pid:-0}") $(date +%s%N)"
}
# cpu_line BEFORE AFTER TOOL_CPU_SECONDS: one line of % of one core (200 = both cores busy).
cpu_line() {
  local -a a b
  read -r -a a <<<"$1"
  read -r -a b <<<"$2"
  awk -v hz="$HZ" -v tool="$3" -v t0="${a[5]}" -v t1="${b[5]}" \
    -v tot=$((b[0] - a[0])) -v beam=$((b[1] - a[1])) -v pg=$((b[2] - a[2])) -v api=$((b[3] - a[3])) \
    -v per=$((b[4] - a[4])) 'BEGIN {
      wall = (t1 - t0) / 1e9; f = 100 / hz / wall
      other = tot * f - (beam + pg + api + per) * f - tool * 100 / wall
      printf "cpu, %% of one core over %.1f s: machine %.0f | rabbitmq %.0f | postgres %.0f | api %.0f | persister %.0f | sl_bench %.0f | rest %.0f\n",
        wall, tot * f, beam * f, pg * f, api * f, per * f, tool * 100 / wall, (other < 0 ? 0 : other)
    }'
}

declare -A R # every RESULT key of every step, prefixed by the step's name

# step NAME ARGS...: runs sl_bench ARGS, keeps its output in $OUT/NAME.txt, its RESULT keys in R.
step() {
  local name=$1 before after tool k v line kv
  local -a kvs
  shift
  before=$(snapshot)
  local TIMEFORMAT='%U %S'
  { time "$BIN/sl_bench" "$@" >"$OUT/$name.txt" 2>"$OUT/$name.log"; } 2>"$OUT/$name.time" ||
    { cat "$OUT/$name.txt"; tail -20 "$OUT/$name.log"; die "step $name failed"; }
  after=$(snapshot)
  tool=$(awk '{print $1 + $2}' "$OUT/$name.time")
  grep -v '^RESULT' "$OUT/$name.txt" | sed 's/^/  /'
  line=$(cpu_line "$before" "$after" "$tool")
  log "  $line"
  echo "$line" >>"$OUT/$name.txt"
  read -r -a kvs <<<"$(sed -n 's/^RESULT //p' "$OUT/$name.txt" | tr '\n' ' ')"
  for kv in "${kvs[@]}"; do
    k=${kv%%=*}
    v=${kv#*=}
    R[$name.$k]=$v
  done
}

perf_start() { # perf_start NAME: system-wide profile until perf_stop
  ((PERF)) || return 0
  command -v perf >/dev/null || { log "  (perf not installed: no profile)"; return 0; }
  perf record -a -g -F 299 -o "$OUT/perf-$1.data" >"$OUT/perf-$1.log" 2>&1 &
  perf_pid=$!
  sleep 0.5
}
perf_stop() { # perf_stop NAME
  [[ -n $perf_pid ]] || return 0
  kill -INT "$perf_pid" 2>/dev/null || true
  wait "$perf_pid" 2>/dev/null || true
  perf_pid=
  perf report -i "$OUT/perf-$1.data" --no-children --sort comm,dso,sym --stdio 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -60 >"$OUT/perf-$1.top.txt" || true
  log "  profile: $OUT/perf-$1.top.txt"
}

# The disk's flush latency (8 KiB write + fdatasync every 10 ms on the servers' filesystem): every
# commit and every quorum-queue confirm waits for one, so a stall of the disk is a stall of every
# POST in flight, whatever sluice does. Probed once on the quiet machine, and during steps 5 and 8.
DISK_PROBE=$SLUICE_STATE_DIR/bench-disk.probe
disk_start() { # disk_start NAME SECONDS: probe in the background until disk_end
  "$BIN/sl_bench" disk --path "$DISK_PROBE" --seconds "$2" >"$OUT/disk-$1.txt" 2>"$OUT/disk-$1.log" &
  disk_pid=$!
}
disk_end() { # disk_end NAME: waits for the probe, prints its line, keeps its RESULT keys in R
  local kv
  wait "$disk_pid" || log "  (the disk probe failed: $OUT/disk-$1.log)"
  disk_pid=
  grep -v '^RESULT' "$OUT/disk-$1.txt" | sed 's/^/  /'
  for kv in $(sed -n 's/^RESULT //p' "$OUT/disk-$1.txt"); do R[disk-$1.${kv%%=*}]=${kv#*=}; done
}

log "== 0. the disk's flush latency on the quiet machine (5 s)"
disk_start quiet 5
disk_end quiet

log "== 1. raw publish with confirms ($RAW_COUNT messages, window 1000, 200 B)"
step raw-publish raw-publish --count "$RAW_COUNT" --window 1000 --size 200

log "== 2. raw INSERT ($INSERT_ROWS rows, 1 000 per transaction)"
step raw-insert raw-insert --rows "$INSERT_ROWS"

log "== 3. persister drain ($DRAIN_COUNT posts, one per AMQP message)"
perf_start drain
step persister persister --count "$DRAIN_COUNT" --persister-bin "$BIN/sluice-persister" \
  --persister-port "$PERSISTER_PORT" --metrics-out "$OUT/metrics-persister-drain.prom"
perf_stop drain

log "== 3b. persister drain ($DRAIN_COUNT posts, $DRAIN_LINES per AMQP message, as the api batches a loop turn's posts)"
step persister-batched persister --count "$DRAIN_COUNT" --lines "$DRAIN_LINES" --persister-bin "$BIN/sluice-persister" \
  --persister-port "$PERSISTER_PORT" --metrics-out "$OUT/metrics-persister-drain-batched.prom"

start_persister() {
  SLUICE_PERSISTER_PORT=$PERSISTER_PORT setsid "$BIN/sluice-persister" </dev/null >>"$OUT/persister.log" 2>&1 &
  persister_pid=$!
  svc_pids+=("$persister_pid")
}
stop_persister() {
  kill_pids persister "$persister_pid"
  persister_pid=
}
wait_ready() { # wait_ready URL...
  local deadline=$((SECONDS + 30)) u
  for u in "$@"; do
    until curl -fs "$u/readyz" >/dev/null; do
      pid_alive "$api_pid" || { tail "$OUT/api.log"; die "sluice-api exited"; }
      [[ -z $persister_pid ]] || pid_alive "$persister_pid" || { tail "$OUT/persister.log"; die "sluice-persister exited"; }
      ((SECONDS < deadline)) || die "$u was not ready within 30 s"
      sleep 0.2
    done
  done
}
# scrape NAME: the services' metrics now (counters are cumulative since their start).
scrape() {
  curl -fs "http://127.0.0.1:$API_PORT/metrics" >"$OUT/metrics-api-after-$1.prom" || true
  [[ -z $persister_pid ]] || curl -fs "http://127.0.0.1:$PERSISTER_PORT/metrics" >"$OUT/metrics-persister-after-$1.prom" || true
}

log "== starting sluice-api (:$API_PORT) and sluice-persister (:$PERSISTER_PORT)"
SLUICE_API_PORT=$API_PORT setsid "$BIN/sluice-api" </dev/null >"$OUT/api.log" 2>&1 &
api_pid=$!
svc_pids+=("$api_pid")
start_persister
wait_ready "http://127.0.0.1:$API_PORT" "http://127.0.0.1:$PERSISTER_PORT"

log "== 4. POST at full speed ($POST_COUNT POSTs, $POST_CONNS connections, closed loop)"
perf_start post
step post-full post --url "http://127.0.0.1:$API_PORT" --count "$POST_COUNT" --connections "$POST_CONNS" --timeout 120
perf_stop post
scrape post-full

# wait_drained STEP: until the persist queue is empty (a latency step starts from an empty queue).
wait_drained() {
  local deadline=$((SECONDS + 120))
  until [[ $("$SERVERS" rabbitmqctl list_queues -q name messages 2>/dev/null |
    awk -v q="$SLUICE_BENCH_QUEUE" '$1 == q {print $2}') == 0 ]]; do
    ((SECONDS < deadline)) || die "the persister did not drain step $1's posts within 120 s"
    sleep 1
  done
}
wait_drained 4

half=$((${R[raw-publish.raw_publish_per_s]} / 2))
log "== 5. POST at half the raw publish rate: $half/s for ${LAT_SECONDS} s, open loop"
disk_start post-half "$LAT_SECONDS"
step post-half post --url "http://127.0.0.1:$API_PORT" --count $((half * LAT_SECONDS)) --rate "$half" \
  --connections "$RATE_CONNS" --timeout $((LAT_SECONDS * 3)) --timeline "$OUT/timeline-post-half.csv"
disk_end post-half
scrape post-half

log "== 6. raw publish with confirms while the persister consumes ($RAW_COUNT messages; for information)"
step raw-publish-busy raw-publish --count "$RAW_COUNT" --window 1000 --size 200

log "== 7. POST at full speed with the persister stopped: the api alone ($POST_COUNT POSTs; for information)"
stop_persister
step post-alone post --url "http://127.0.0.1:$API_PORT" --count "$POST_COUNT" --connections "$POST_CONNS" \
  --timeout 120 --live-wait 0
scrape post-alone
start_persister
wait_ready "http://127.0.0.1:$PERSISTER_PORT"
# Step 7 left its POSTs in the queue: let the persister store them before measuring latency again.
wait_drained 7
scrape before-apihalf

api_half=$((${R[post-full.post_accepted_per_s]} / 2))
log "== 8. POST at half the api's own rate: $api_half/s for ${LAT_SECONDS} s, open loop (for information)"
disk_start post-apihalf "$LAT_SECONDS"
step post-apihalf post --url "http://127.0.0.1:$API_PORT" --count $((api_half * LAT_SECONDS)) --rate "$api_half" \
  --connections "$RATE_CONNS" --timeout $((LAT_SECONDS * 3)) --timeline "$OUT/timeline-post-apihalf.csv"
disk_end post-apihalf
scrape post-apihalf

# ---- summary ----

pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b > 0 ? 100 * a / b : 0) }'; }
# slow SERVICE HISTOGRAM BEFORE AFTER: observations over 50 ms between two scrapes of a service's
# metrics (a histogram of seconds with a 0.05 bucket), e.g. confirms or commits that waited on the
# disk during one step. "?" when a scrape is missing.
slow() {
  local a=$OUT/metrics-$1-after-$3.prom b=$OUT/metrics-$1-after-$4.prom
  [[ -s $b ]] || { echo "?"; return; }
  [[ -s $a ]] || a=/dev/null
  awk -v h="$2" -v b="$b" '
    $1 == h "_bucket{le=\"0.05\"}" { le[FILENAME == b] = $2 }
    $1 == h "_count" { n[FILENAME == b] = $2 }
    END { printf "%d", (n[1] - le[1]) - (n[0] - le[0]) }' "$a" "$b"
}
verdict() { if awk -v a="$1" -v op="$2" -v b="$3" 'BEGIN { exit !(op == ">=" ? a >= b : a <= b) }'; then echo met; else echo "NOT met"; fi; }

raw=${R[raw-publish.raw_publish_per_s]}
ins=${R[raw-insert.raw_insert_per_s]}
acc=${R[post-full.post_accepted_per_s]}
per=${R[persister.persister_per_s]}
perb=${R[persister-batched.persister_per_s]}
# posts per AMQP message the api sent at full speed (step 4), from its metrics
ppm=$(awk '/^sluice_api_publishes_total\{outcome="published"\}/ {p = $2} /^sluice_api_publish_batches_total / {b = $2}
  END { if (b > 0) printf "%.1f", p / b; else print "n/a" }' "$OUT/metrics-api-after-post-full.prom" 2>/dev/null || echo n/a)
p99=${R[post-half.commit_p99_ms]}
r_post=$(pct "$acc" "$raw")
r_per=$(pct "$per" "$ins")
r_perb=$(pct "$perb" "$ins")
{
  echo
  echo "== summary ($(date -u '+%F %T UTC'), $(nproc) cores, tree $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO_DIR" diff --quiet HEAD -- internal cmd 2>/dev/null || echo '+uncommitted changes'))"
  echo "machine busy before the run: $BUSY_BEFORE % of one core; load average $LOAD_BEFORE; 'rest' in the cpu lines is everything not ours"
  printf '%-46s %12s   %s\n' "figure" "value" "target"
  printf '%-46s %12s   %s\n' "raw publish with confirms (msg/s)" "$raw" ""
  printf '%-46s %12s   %s\n' "api accepted POSTs (202/s, closed loop)" "$acc" ""
  printf '%-46s %11s%%   >= 70 %% of raw publish: %s\n' "  ratio accepted / raw publish" "$r_post" "$(verdict "$r_post" '>=' 70)"
  printf '%-46s %12s   %s\n' "raw prepared INSERT, 1000/tx (rows/s)" "$ins" ""
  printf '%-46s %12s   %s\n' "persister drain, $DRAIN_LINES posts/message (rows/s)" "$perb" ""
  printf '%-46s %11s%%   >= 60 %% of raw INSERT: %s\n' "  ratio persister / raw INSERT" "$r_perb" "$(verdict "$r_perb" '>=' 60)"
  printf '%-46s %12s   %s\n' "  posts per message the api sent in step 4" "$ppm" "(a backlog the api builds is batched so)"
  printf '%-46s %12s   %s\n' "persister drain, 1 post/message (rows/s)" "$per" "(for information: $r_per % of raw INSERT)"
  printf '%-46s %12s   %s\n' "POST -> committed at $half/s (half raw): p50 ms" "${R[post-half.commit_p50_ms]}" ""
  printf '%-46s %12s   %s\n' "                                     p99 ms" "$p99" "<= 50 ms: $(verdict "$p99" '<=' 50)"
  printf '%-46s %12s   %s\n' "  accepted/s actually achieved at that rate" "${R[post-half.post_accepted_per_s]}" "(offered $half/s; never sent: ${R[post-half.post_unsent]})"
  printf '%-46s %12s   %s\n' "  disk flush during that step: p99 / max ms" "${R[disk-post-half.disk_p99_ms]} / ${R[disk-post-half.disk_max_ms]}" \
    "(quiet machine: ${R[disk-quiet.disk_p99_ms]} / ${R[disk-quiet.disk_max_ms]}; flushes over 20 ms: ${R[disk-post-half.disk_slow]})"
  printf '%-46s %12s   %s\n' "  broker confirms / commits over 50 ms" \
    "$(slow api sluice_api_publish_confirm_seconds post-full post-half) / $(slow persister sluice_persister_commit_seconds post-full post-half)" \
    "(both wait for a disk flush)"
  printf '%-46s %12s\n' "POST -> committed, full speed: p50 / p99 ms" "${R[post-full.commit_p50_ms]} / ${R[post-full.commit_p99_ms]}"
  echo "for information (where the gap comes from):"
  printf '%-46s %12s   %s\n' "raw publish while the persister consumes" "${R[raw-publish-busy.raw_publish_per_s]}" \
    "accepted/s of step 4 = $(pct "$acc" "${R[raw-publish-busy.raw_publish_per_s]}") % of it"
  printf '%-46s %12s   %s\n' "api alone, persister stopped (202/s)" "${R[post-alone.post_accepted_per_s]}" \
    "$(pct "${R[post-alone.post_accepted_per_s]}" "$raw") % of raw publish"
  printf '%-46s %12s   %s\n' "POST -> committed at $api_half/s (half api): p50 ms" "${R[post-apihalf.commit_p50_ms]}" ""
  printf '%-46s %12s   %s\n' "                                     p99 ms" "${R[post-apihalf.commit_p99_ms]}" "(<= 50 ms: $(verdict "${R[post-apihalf.commit_p99_ms]}" '<=' 50))"
  printf '%-46s %12s   %s\n' "  sends behind schedule (tool), p99 ms" "${R[post-apihalf.send_lag_p99_ms]}" ""
  printf '%-46s %12s   %s\n' "  disk flush during that step: p99 / max ms" "${R[disk-post-apihalf.disk_p99_ms]} / ${R[disk-post-apihalf.disk_max_ms]}" \
    "(flushes over 20 ms: ${R[disk-post-apihalf.disk_slow]})"
  printf '%-46s %12s\n' "  broker confirms / commits over 50 ms" \
    "$(slow api sluice_api_publish_confirm_seconds before-apihalf post-apihalf) / $(slow persister sluice_persister_commit_seconds before-apihalf post-apihalf)"
  local_missing=$((${R[post-full.commit_missing]} + ${R[post-half.commit_missing]} + ${R[post-apihalf.commit_missing]}))
  refused=0
  for s in post-full post-half post-alone post-apihalf; do
    refused=$((refused + ${R[$s.post_429]} + ${R[$s.post_503]} + ${R[$s.post_other]} + ${R[$s.post_errors]}))
  done
  echo "accepted but never seen committed: $local_missing; POSTs not accepted (429, 503, other, errors): $refused"
  echo "per 100 ms of steps 5 and 8 (to match a tail with the disk's slow flushes in disk-*.log): $OUT/timeline-*.csv"
} | tee "$OUT/summary.txt"
