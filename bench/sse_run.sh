#!/usr/bin/env bash
# The streaming benchmark in one command: sluice-sse against Nchan, same load, same run
# (docs/benchmarks.md explains the figures).
#
#   bench/sse_run.sh                   # about 4-6 minutes on a 2-core machine
#   SSB_PERF=1 bench/sse_run.sh        # also profiles sluice-sse in the largest run (perf)
#   bench/sse_run.sh --abuse           # history amplification (issue 12), about 3 minutes; below
#
# For each size N in SSB_SIZES (1000 5000 10000) at its publish rate in SSB_RATES (373 40 12
# messages/s, i.e. the deliveries/s Nchan managed here at 1 000 and 10 000 subscribers), for
# SSB_DURATION seconds, on 127.0.0.1 only:
#   sluice    N SSE streams on sluice-sse, POST /v1/messages to sluice-api: the whole path
#             api -> RabbitMQ -> persister -> PostgreSQL -> live exchange -> sse -> clients;
#   sse-only  the same streams, messages published straight to the live exchange as the
#             persister would (RabbitMQ -> sse -> clients), to tell sse's share of the latency;
#   nchan     N EventSource subscribers on Debian's nginx + nchan (one worker), POST /pub.
# Each run starts a fresh server process so that its RSS growth is the subscriptions' alone.
# Prints deliveries/s, publish -> receive latency, memory per connection and sluice/Nchan ratios.
#
# Starts private RabbitMQ and PostgreSQL (state in SLUICE_STATE_DIR, default /tmp/ssb-state;
# ports SLUICE_AMQP_PORT 5752, SLUICE_PG_PORT 5513) unless they already run there, builds
# sluice-api, sluice-persister, sluice-sse and sl_ssebench, installs nginx and
# libnginx-mod-nchan with apt-get when missing, and stops everything it started on exit.
# Output: $SSB_OUT (default $SLUICE_STATE_DIR/sse-bench-out).
#
# --abuse: does connect-and-drop history abuse slow everyone else down? The database first gets
# ABUSE_HISTORY (100000) messages on channel "bench" (sl_bench post through the api); then phases,
# each against a fresh sluice-sse, each ABUSE_DURATION (20) s of the same modest load:
# ABUSE_SUBS (1000) live SSE subscribers of channel "live", ABUSE_RATE (50) posts/s to it through
# the api (publish -> receive latency), and ABUSE_GET_RATE (20) GET /v1/messages?channel=bench&
# limit=20 a second to the api (GET -> answer latency):
#   baseline-K      that load alone;
#   abuse-K         the same while ABUSE_COUNT (3000) clients, spread over the phase and coming
#                   from ABUSE_ADDRS (250) loopback addresses, each ask sse for
#                   /v1/stream?channels=bench&since=1&history=1000 and close at once;
# in ABUSE_ROUNDS (4) rounds, since a shared machine drifts, baseline first in odd rounds and abuse
# first in even ones (ABUSE_SPREAD: the clients come over the phase's first so many seconds, all of
# it by default, 1 for a burst). Prints both p99s of each phase, the history reads sse sent to the
# database and the CPU PostgreSQL and sse used meanwhile, and the medians' ratio abuse / baseline:
# at most 2x.
#
# Environment: SSB_SIZES, SSB_RATES, SSB_DURATION (10), SSB_TARGETS ("sluice sse-only nchan"),
# SSB_THREADS (1, subscriber threads of the load tool), SSB_PUB_CONNS (16), SSB_TEXT_SIZE (100),
# SSB_API_PORT (18680), SSB_PERSISTER_PORT (18683), SSB_SSE_PORT (18681), SSB_NCHAN_PORT
# (18690), SSB_BUILD_DIR (build).
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR"

log() { printf '%s\n' "$*"; }
die() { printf 'bench/sse_run.sh: %s\n' "$*" >&2; exit 1; }
# shellcheck source=../scripts/lib.sh
. "$REPO_DIR/scripts/lib.sh"

MODE=compare
case ${1:-} in
  '') ;;
  --abuse) MODE=abuse ;;
  -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1' (none or --abuse)" ;;
esac

export SLUICE_STATE_DIR=${SLUICE_STATE_DIR:-/tmp/ssb-state}
export SLUICE_AMQP_PORT=${SLUICE_AMQP_PORT:-5752}
export SLUICE_PG_PORT=${SLUICE_PG_PORT:-5513}
BUILD_DIR=${SSB_BUILD_DIR:-build}
case $BUILD_DIR in /*) ;; *) BUILD_DIR=$REPO_DIR/$BUILD_DIR ;; esac
OUT=${SSB_OUT:-$SLUICE_STATE_DIR/sse-bench-out}
read -r -a SIZES <<<"${SSB_SIZES:-1000 5000 10000}"
read -r -a RATES <<<"${SSB_RATES:-373 40 12}"
read -r -a TARGETS <<<"${SSB_TARGETS:-sluice sse-only nchan}"
DURATION=${SSB_DURATION:-10}
THREADS=${SSB_THREADS:-1}
PUB_CONNS=${SSB_PUB_CONNS:-16}
TEXT_SIZE=${SSB_TEXT_SIZE:-100}
API_PORT=${SSB_API_PORT:-18680}
PERSISTER_PORT=${SSB_PERSISTER_PORT:-18683}
SSE_PORT=${SSB_SSE_PORT:-18681}
NCHAN_PORT=${SSB_NCHAN_PORT:-18690}
PERF=${SSB_PERF:-0}
DB=sluice_ssebench
NGINX_DIR=$SLUICE_STATE_DIR/nchan
((${#SIZES[@]} == ${#RATES[@]})) || die "SSB_SIZES and SSB_RATES must have as many entries"
ABUSE_HISTORY=${ABUSE_HISTORY:-100000}
ABUSE_DURATION=${ABUSE_DURATION:-20}
ABUSE_SUBS=${ABUSE_SUBS:-1000}
ABUSE_RATE=${ABUSE_RATE:-50}
ABUSE_GET_RATE=${ABUSE_GET_RATE:-20}
ABUSE_COUNT=${ABUSE_COUNT:-3000}
ABUSE_ADDRS=${ABUSE_ADDRS:-250}
ABUSE_ROUNDS=${ABUSE_ROUNDS:-4}
ABUSE_SPREAD=${ABUSE_SPREAD:-$ABUSE_DURATION}
if [[ $MODE == abuse ]]; then
  TARGETS=(sluice)
  SIZES=("$ABUSE_SUBS")
  RATES=("$ABUSE_RATE")
fi

# The bench's own names, so that nothing mixes with another instance's data.
export SLUICE_QUEUE=sluice.ssebench.persist
export SLUICE_LIVE_EXCHANGE=sluice.ssebench.live
export SLUICE_QUEUE_MAX_LENGTH=1000000
export SLUICE_LOG_LEVEL=${SLUICE_LOG_LEVEL:-warn}
export SLUICE_API_PORT=$API_PORT SLUICE_PERSISTER_PORT=$PERSISTER_PORT SLUICE_SSE_PORT=$SSE_PORT
export SLUICE_SSE_MAX_CONNS=20000
export SLUICE_MAX_CONNS_PER_CLIENT=0 # every subscriber comes from 127.0.0.1
export SLUICE_SSE_HISTORY=0

BIN=$BUILD_DIR/bin
SERVERS=$REPO_DIR/scripts/servers.sh
T_START=$SECONDS

servers_started=0
api_pid=''
persister_pid=''
sse_pid=''
nginx_pid=''
perf_pid=''

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n $perf_pid ]] && pid_alive "$perf_pid"; then kill -INT "$perf_pid" 2>/dev/null || true; fi
  stop_nginx || true
  local p=() x
  for x in "$sse_pid" "$api_pid" "$persister_pid"; do [[ -n $x ]] && p+=("$x"); done
  if ((${#p[@]})); then kill_pids services "${p[@]}" || true; fi
  if ((servers_started)); then "$SERVERS" stop >>"$OUT/servers.log" 2>&1 || log "stopping the servers failed (see $OUT/servers.log)"; fi
  log "bench/sse_run.sh: done in $((SECONDS - T_START)) s (output in $OUT)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$OUT"
rm -f "$OUT"/*.txt "$OUT"/*.log "$OUT"/perf-*

# Each subscription is a descriptor, in the tool and in the server: as many as the hard limit.
ulimit -n "$(ulimit -Hn)" || true
NOFILE=$(ulimit -n)
for n in "${SIZES[@]}"; do
  ((n + 100 <= NOFILE)) || die "N=$n needs more open files than the limit $NOFILE"
done

{ date -u '+%F %T UTC'; uptime; nproc; ps -eo pcpu=,etime=,args= --sort=-pcpu | head -15 | cut -c1-160; } >"$OUT/machine.txt"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

for p in "$API_PORT" "$PERSISTER_PORT" "$SSE_PORT" "$NCHAN_PORT"; do
  port_in_use "$p" && die "port $p is in use: set SSB_API_PORT / SSB_PERSISTER_PORT / SSB_SSE_PORT / SSB_NCHAN_PORT"
done

# ---- nginx + nchan -----------------------------------------------------------------------------

NCHAN_MODULE=
find_nchan() {
  local d
  for d in /usr/lib/nginx/modules /usr/share/nginx/modules; do
    [[ -f $d/ngx_nchan_module.so ]] && { NCHAN_MODULE=$d/ngx_nchan_module.so; return 0; }
  done
  return 1
}
if [[ " ${TARGETS[*]} " == *" nchan "* ]]; then
  if ! command -v nginx >/dev/null || ! find_nchan; then
    log "== installing nginx and libnginx-mod-nchan"
    DEBIAN_FRONTEND=noninteractive apt-get install -y nginx libnginx-mod-nchan >"$OUT/apt.log" 2>&1 ||
      { tail -20 "$OUT/apt.log"; die "apt-get install nginx libnginx-mod-nchan failed"; }
    find_nchan || die "ngx_nchan_module.so not found after installing libnginx-mod-nchan"
  fi
fi

start_nginx() {
  mkdir -p "$NGINX_DIR/tmp"
  rm -f "$NGINX_DIR/nginx.pid"
  sed -e "s#@MODULE@#$NCHAN_MODULE#" -e "s#@DIR@#$NGINX_DIR#g" -e "s#@PORT@#$NCHAN_PORT#" \
    -e "s#@CONNS@#$NOFILE#g" "$REPO_DIR/bench/nchan.conf.in" >"$NGINX_DIR/nginx.conf"
  setsid nginx -p "$NGINX_DIR" -c "$NGINX_DIR/nginx.conf" </dev/null >>"$OUT/nginx.log" 2>&1 &
  nginx_pid=$!
  local deadline=$((SECONDS + 10))
  until curl -fs "http://127.0.0.1:$NCHAN_PORT/healthz" >/dev/null; do
    pid_alive "$nginx_pid" || { tail -20 "$NGINX_DIR/error.log" "$OUT/nginx.log" >&2; die "nginx exited"; }
    ((SECONDS < deadline)) || die "nginx not answering on port $NCHAN_PORT"
    sleep 0.1
  done
}
nchan_worker() { ps -o pid= --ppid "$nginx_pid" | head -n1 | tr -d ' '; }
stop_nginx() {
  [[ -n $nginx_pid ]] || return 0
  local w
  w=$(nchan_worker || true)
  kill -QUIT "$nginx_pid" 2>/dev/null || true # graceful: the master ends its worker
  wait_gone 10 "$nginx_pid" ${w:+"$w"} || kill_pids nginx "$nginx_pid" ${w:+"$w"}
  wait "$nginx_pid" 2>/dev/null || true
  nginx_pid=
}

# ---- build, servers, services -------------------------------------------------------------------

log "== build ($BUILD_DIR)"
cmake -S "$REPO_DIR" -B "$BUILD_DIR" >"$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; die "cmake failed"; }
cmake --build "$BUILD_DIR" -j2 --target sluice-api sluice-persister sluice-sse sl_ssebench sl_bench >>"$OUT/build.log" 2>&1 ||
  { tail -30 "$OUT/build.log"; die "build failed"; }

log "== servers ($SLUICE_STATE_DIR, amqp $SLUICE_AMQP_PORT, postgres $SLUICE_PG_PORT)"
servers_with_db "$SERVERS" "$DB" "$OUT/servers.log"

wait_ready() { # wait_ready PORT PID NAME
  local deadline=$((SECONDS + 30))
  until curl -fs "http://127.0.0.1:$1/readyz" >/dev/null; do
    pid_alive "$2" || { tail -20 "$OUT/$3.log" >&2; die "$3 exited"; }
    ((SECONDS < deadline)) || { tail -20 "$OUT/$3.log" >&2; die "$3 not ready on port $1 after 30 s"; }
    sleep 0.1
  done
}
start_sse() {
  setsid "$BIN/sluice-sse" </dev/null >>"$OUT/sse.log" 2>&1 &
  sse_pid=$!
  wait_ready "$SSE_PORT" "$sse_pid" sse
}
stop_sse() {
  [[ -n $sse_pid ]] && kill_pids sse "$sse_pid"
  wait "$sse_pid" 2>/dev/null || true
  sse_pid=
}
if [[ " ${TARGETS[*]} " == *" sluice "* || " ${TARGETS[*]} " == *" sse-only "* ]]; then
  log "== sluice services (api $API_PORT, persister $PERSISTER_PORT, sse $SSE_PORT)"
  setsid "$BIN/sluice-api" </dev/null >>"$OUT/api.log" 2>&1 &
  api_pid=$!
  wait_ready "$API_PORT" "$api_pid" api
  setsid "$BIN/sluice-persister" </dev/null >>"$OUT/persister.log" 2>&1 &
  persister_pid=$!
  wait_ready "$PERSISTER_PORT" "$persister_pid" persister
fi

# ---- runs ---------------------------------------------------------------------------------------

declare -A R # RESULT keys by "<target>.<N>.<key>"

# read_result FILE PREFIX: prints a run's report and keeps its RESULT keys as R[PREFIX.key].
read_result() {
  local kv
  local -a kvs
  grep -v '^RESULT' "$1" | sed 's/^/  /'
  read -r -a kvs <<<"$(sed -n 's/^RESULT //p' "$1")"
  for kv in "${kvs[@]}"; do R[$2.${kv%%=*}]=${kv#*=}; done
}

# run TARGET N RATE: one sl_ssebench run against a fresh server process.
run() {
  local target=$1 n=$2 rate=$3 name=$1-$2 pid args=()
  case $target in
    sluice | sse-only)
      stop_sse
      start_sse
      pid=$sse_pid
      args=(--sub-url "http://127.0.0.1:$SSE_PORT/v1/stream?channels=bench-$n&history=0" --channel "bench-$n")
      if [[ $target == sluice ]]; then
        args+=(--pub-mode sluice --pub-url "http://127.0.0.1:$API_PORT/v1/messages")
      else
        local pos
        pos=$(curl -fs "http://127.0.0.1:$SSE_PORT/readyz" | sed -n 's/.*"position":\([0-9]*\).*/\1/p')
        [[ -n $pos ]] || die "no position in sse's /readyz"
        args+=(--pub-mode amqp --seq-start $((pos + 1)))
      fi
      ;;
    nchan)
      stop_nginx
      start_nginx
      pid=$(nchan_worker)
      args=(--sub-url "http://127.0.0.1:$NCHAN_PORT/sub?id=bench-$n" --pub-mode raw
        --pub-url "http://127.0.0.1:$NCHAN_PORT/pub?id=bench-$n")
      ;;
    *) die "unknown target $target" ;;
  esac
  if ((PERF)) && [[ $target == sluice && $n == "${SIZES[-1]}" ]] && command -v perf >/dev/null; then
    # the publishing window only: after the subscriptions are up
    (sleep "$((n / 2000 + 3))" && exec perf record -F 499 -g -p "$pid" -o "$OUT/perf-$name.data" -- sleep "$DURATION") \
      >"$OUT/perf-$name.log" 2>&1 &
    perf_pid=$!
  fi
  "$BIN/sl_ssebench" "${args[@]}" --label "$name" --conns "$n" --rate "$rate" --duration "$DURATION" \
    --threads "$THREADS" --pub-conns "$PUB_CONNS" --text-size "$TEXT_SIZE" --server-pid "$pid" \
    >"$OUT/$name.txt" 2>"$OUT/$name.log" || { cat "$OUT/$name.txt" "$OUT/$name.log"; die "run $name failed"; }
  read_result "$OUT/$name.txt" "$target.$n"
  if [[ -n $perf_pid ]]; then
    wait "$perf_pid" 2>/dev/null || true
    perf_pid=
    perf report -i "$OUT/perf-$name.data" --no-children --sort dso,sym --stdio 2>/dev/null |
      grep -v '^#' | grep -v '^$' | grep '%' | head -40 >"$OUT/perf-$name.top.txt" || true
    log "  profile of sluice-sse: $OUT/perf-$name.top.txt"
  fi
}

# ---- --abuse ------------------------------------------------------------------------------------

# CPU ticks of PostgreSQL: the postmaster, its children, and the children it has reaped (backends
# of connections closed meanwhile).
pg_ticks() {
  local pm
  pm=$(head -n1 "$SLUICE_STATE_DIR/pg/postmaster.pid" 2>/dev/null) || { echo 0; return; }
  # without "(comm)": pid state ppid ...; utime, stime, cutime, cstime are then fields 13-16
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | sed 's/^\([0-9]*\) ([^)]*) /\1 /' | # (some end meanwhile)
    awk -v pm="$pm" '$1 == pm { t += $13 + $14 + $15 + $16 } $3 == pm { t += $13 + $14 } END { print t + 0 }'
}

# abuse_phase NAME [sl_ssebench args]: the modest load against a fresh sse, plus what is given.
abuse_phase() {
  local name=$1 pg0 pg1 t0 t1
  shift
  stop_sse
  start_sse
  pg0=$(pg_ticks)
  t0=$(date +%s.%N)
  log "== $name: $ABUSE_SUBS subscribers, $ABUSE_RATE posts/s and $ABUSE_GET_RATE GETs/s for $ABUSE_DURATION s${1:+, with connect-and-drop clients}"
  "$BIN/sl_ssebench" --sub-url "http://127.0.0.1:$SSE_PORT/v1/stream?channels=live&history=0" --channel live \
    --pub-mode sluice --pub-url "http://127.0.0.1:$API_PORT/v1/messages" \
    --get-url "http://127.0.0.1:$API_PORT/v1/messages?channel=bench&limit=20" --get-rate "$ABUSE_GET_RATE" \
    --label "$name" --conns "$ABUSE_SUBS" --rate "$ABUSE_RATE" --duration "$ABUSE_DURATION" --threads "$THREADS" \
    --pub-conns "$PUB_CONNS" --text-size "$TEXT_SIZE" --server-pid "$sse_pid" "$@" \
    >"$OUT/$name.txt" 2>"$OUT/$name.log" || { cat "$OUT/$name.txt" "$OUT/$name.log"; die "run $name failed"; }
  pg1=$(pg_ticks)
  t1=$(date +%s.%N)
  R[$name.pg_cpu_pct]=$(awk -v a="$pg0" -v b="$pg1" -v s="$t0" -v e="$t1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.0f", (b - a) / hz / (e - s) * 100 }')
  read_result "$OUT/$name.txt" "$name"
  curl -fs "http://127.0.0.1:$SSE_PORT/metrics" >"$OUT/$name.metrics.txt" || true
  R[$name.history_refused]=$(awk '/^sluice_sse_history_refused_total/ { s += $2 } END { print s + 0 }' "$OUT/$name.metrics.txt")
  R[$name.history_failures]=$(awk '/^sluice_sse_history_failures_total / { print $2 }' "$OUT/$name.metrics.txt")
  R[$name.streams_opened]=$(awk '/^sluice_sse_connections_total / { print $2 }' "$OUT/$name.metrics.txt")
  R[$name.db_reads]=$(awk '/^sluice_sse_history_db_reads_total / { print $2 }' "$OUT/$name.metrics.txt")
  log "  sse: ${R[$name.streams_opened]:-?} streams opened, ${R[$name.db_reads]:-?} history reads from the database, ${R[$name.history_refused]} refused history_busy, ${R[$name.history_failures]:-?} failed"
}

# median KIND KEY: the median over the rounds of R[KIND-k.KEY]
median() {
  local k
  for ((k = 1; k <= ABUSE_ROUNDS; k++)); do echo "${R[$1-$k.$2]:-}"; done | grep -v '^$' | sort -g |
    awk '{ v[NR] = $1 } END { if (NR == 0) print ""; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

abuse_main() {
  log "== history: $ABUSE_HISTORY messages on channel bench through the api (sl_bench post)"
  "$BIN/sl_bench" post --url "http://127.0.0.1:$API_PORT" --count "$ABUSE_HISTORY" --connections 32 \
    --queue "$SLUICE_QUEUE" --live-exchange "$SLUICE_LIVE_EXCHANGE" --live-wait 60 >"$OUT/history.txt" 2>&1 ||
    { tail -20 "$OUT/history.txt"; die "filling the history failed"; }
  local rows k ph
  rows=$("$SERVERS" psql -d "$DB" -Atc "SELECT count(*) FROM messages WHERE channel = 'bench'")
  log "  $rows messages stored on channel bench"
  ((rows >= ABUSE_HISTORY)) || die "only $rows of $ABUSE_HISTORY messages stored"
  "$SERVERS" psql -d "$DB" -qc "VACUUM ANALYZE" >>"$OUT/servers.log" 2>&1 || true

  # baseline and abuse alternate, ABUSE_ROUNDS times (the machine's drift shows between rounds),
  # baseline first in odd rounds and abuse first in even ones: what comes first in a round (after
  # the history's writes, say) must not weigh on one side only
  local phases=()
  for ((k = 1; k <= ABUSE_ROUNDS; k++)); do
    ((k % 2 == 0)) || abuse_phase "baseline-$k"
    abuse_phase "abuse-$k" --abuse-url "http://127.0.0.1:$SSE_PORT/v1/stream?channels=bench&since=1&history=1000" \
      --abuse-count "$ABUSE_COUNT" --abuse-addrs "$ABUSE_ADDRS" --abuse-seconds "$ABUSE_SPREAD"
    ((k % 2 == 1)) || abuse_phase "baseline-$k"
    if ((k % 2)); then phases+=("baseline-$k" "abuse-$k"); else phases+=("abuse-$k" "baseline-$k"); fi
  done
  stop_sse

  get() { echo "${R[$1]:-}"; }
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
  verdict() { awk -v r="$1" 'BEGIN { if (r == "-") print "?"; else if (r + 0 <= 2) print "met (<= 2x)"; else print "NOT met (> 2x)" }'; }
  log ""
  log "== summary ($(date -u '+%F %T UTC'); $(nproc) cores shared by the servers and the load tool; load before: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg))"
  log "history $rows messages; $ABUSE_SUBS live subscribers, $ABUSE_RATE posts/s, $ABUSE_GET_RATE GETs/s, $ABUSE_DURATION s a phase;"
  log "abuse: $ABUSE_COUNT connect-and-drop /v1/stream?channels=bench&since=1&history=1000 a phase, from $ABUSE_ADDRS addresses, over its first $ABUSE_SPREAD s"
  printf '%-12s %9s %9s %9s %8s %9s %9s %9s %8s %8s %9s %10s %7s %7s %8s\n' phase "live p50" "live p99" "live max" \
    missing "GET p50" "GET p99" "GET max" "GET err" dropped "busy 503" "db reads" "pg CPU" "sse CPU" machine
  for ph in "${phases[@]}"; do
    printf '%-12s %9s %9s %9s %8s %9s %9s %9s %8s %8s %9s %10s %7s %7s %8s\n' "$ph" "$(get "$ph.p50_ms")" \
      "$(get "$ph.p99_ms")" "$(get "$ph.max_ms")" "$(get "$ph.missing")" "$(get "$ph.get_p50_ms")" \
      "$(get "$ph.get_p99_ms")" "$(get "$ph.get_max_ms")" "$(get "$ph.get_errors")" "$(get "$ph.abuse_sent")" \
      "$(get "$ph.history_refused")" "$(get "$ph.db_reads")" "$(get "$ph.pg_cpu_pct")" "$(get "$ph.server_cpu_pct")" \
      "$(get "$ph.machine_cpu_pct")"
  done
  local bl bg al ag rl rg
  bl=$(median baseline p99_ms)
  al=$(median abuse p99_ms)
  bg=$(median baseline get_p99_ms)
  ag=$(median abuse get_p99_ms)
  rl=$(ratio "$al" "$bl")
  rg=$(ratio "$ag" "$bg")
  log "(ms; live: post -> event at each subscriber; dropped: connect-and-drop clients sent; busy 503: streams"
  log " refused history_busy; db reads: history reads sse sent to the database; CPU: % of one core, over the"
  log " phase: PostgreSQL's processes, sse, the whole machine (of $(($(nproc) * 100))))"
  log "live delivery p99, median of $ABUSE_ROUNDS: baseline $bl ms, abuse $al ms: abuse / baseline $rl, $(verdict "$rl")"
  log "api GET p99,       median of $ABUSE_ROUNDS: baseline $bg ms, abuse $ag ms: abuse / baseline $rg, $(verdict "$rg")"
}

if [[ $MODE == abuse ]]; then
  abuse_main
  exit 0
fi

for i in "${!SIZES[@]}"; do
  n=${SIZES[$i]}
  rate=${RATES[$i]}
  for target in "${TARGETS[@]}"; do
    log "== $target: $n subscribers, $rate messages/s for $DURATION s (target $((n * rate)) deliveries/s)"
    run "$target" "$n" "$rate"
  done
done
stop_sse
stop_nginx

# ---- summary ------------------------------------------------------------------------------------

get() { echo "${R[$1]:-}"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
log ""
log "== summary ($(date -u '+%F %T UTC'); $(nproc) cores shared by the servers and the load tool; load before: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg))"
log "(msg/s: the rate actually sent; late: how far the open-loop sends fell behind schedule, p99 ms, not part of"
log " the latency columns; CPU: % of one core over the publishing window for the server process, the load tool"
log " and the whole machine, whose total is $(($(nproc) * 100)))"
printf '%-7s %-9s %6s %9s %13s %8s %8s %8s %8s %10s %11s %8s %8s %8s\n' N target msg/s late deliveries/s "p50 ms" \
  "p99 ms" "max ms" missing "B/sub idle" "B/sub after" "srv CPU" "tool CPU" "machine"
for i in "${!SIZES[@]}"; do
  n=${SIZES[$i]}
  for t in "${TARGETS[@]}"; do
    [[ -n $(get "$t.$n.label") ]] || continue
    printf '%-7s %-9s %6s %9s %13s %8s %8s %8s %8s %10s %11s %8s %8s %8s\n' "$n" "$t" "$(get "$t.$n.sent_rate")" \
      "$(get "$t.$n.late_p99_ms")" "$(get "$t.$n.deliveries_per_s")" "$(get "$t.$n.p50_ms")" "$(get "$t.$n.p99_ms")" "$(get "$t.$n.max_ms")" \
      "$(get "$t.$n.missing")" "$(get "$t.$n.bytes_per_conn")" "$(get "$t.$n.bytes_per_conn_after")" \
      "$(get "$t.$n.server_cpu_pct")" "$(get "$t.$n.tool_cpu_pct")" "$(get "$t.$n.machine_cpu_pct")"
  done
done
if [[ " ${TARGETS[*]} " == *" nchan "* ]]; then
  log ""
  log "ratios to Nchan (deliveries/s: higher is better; p50, p99 and memory: lower is better)"
  printf '%-7s %-9s %13s %9s %9s %10s\n' N target deliveries/s "p50" "p99" "B/sub idle"
  for i in "${!SIZES[@]}"; do
    n=${SIZES[$i]}
    for t in sluice sse-only; do
      [[ -n $(get "$t.$n.label") && -n $(get "nchan.$n.label") ]] || continue
      printf '%-7s %-9s %13s %9s %9s %10s\n' "$n" "$t" \
        "$(ratio "$(get "$t.$n.deliveries_per_s")" "$(get "nchan.$n.deliveries_per_s")")" \
        "$(ratio "$(get "$t.$n.p50_ms")" "$(get "nchan.$n.p50_ms")")" \
        "$(ratio "$(get "$t.$n.p99_ms")" "$(get "nchan.$n.p99_ms")")" \
        "$(ratio "$(get "$t.$n.bytes_per_conn")" "$(get "nchan.$n.bytes_per_conn")")"
    done
  done
fi
