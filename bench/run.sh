#!/usr/bin/env bash
# The write-path benchmark in one command (docs/benchmarks.md explains the figures).
#
#   bench/run.sh                 # about 2-3 minutes on a 2-core machine
#   BENCH_PERF=1 bench/run.sh    # also profiles the drain and the full-speed POSTs with perf
#   bench/run.sh --cluster       # the same steps against the native cluster, then on one node
#                                # right after; one summary with both columns (5-6 minutes)
#   bench/run.sh --cluster-only  # the cluster part alone (its own summary)
#   bench/run.sh --cluster-summary DIR   # the side-by-side table of an earlier --cluster run again
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
#
# --cluster-only runs steps 0-8 against scripts/cluster.sh's cluster (state in
# BENCH_CLUSTER_STATE_DIR, default /tmp/sl-bench-cluster; ports from BENCH_CLUSTER_PORT_BASE,
# default 6500, clear of the dev cluster's 6200 and the chaos cluster's 6300), started unless it
# already runs there and stopped at the end if started: three RabbitMQ nodes with the bench queue
# a three-member quorum queue (checked and printed; the run stops if it has fewer members), and
# PostgreSQL through the two haproxies to the Patroni primary with its synchronous standby (also
# checked). sl_bench and the services get the cluster's three AMQP URLs with the queue leader's
# node first (they connect to the first that answers), so raw publish and the api publish to the
# same node; step 1f measures raw publish through a follower node for information.
# --cluster runs --cluster-only, then the single-node run, each in its own BENCH_OUT subfolder
# (cluster/, single/ under BENCH_OUT, default /tmp/sl-bench-cluster/bench-out), and prints both
# columns and both sets of ratios side by side. BENCH_CLUSTER_* sizes (BENCH_CLUSTER_RAW_COUNT,
# ..._INSERT_ROWS, ..._DRAIN_COUNT, ..._POST_COUNT, ..._LATENCY_SECONDS) override the sizes of the
# cluster part only; the summary prints the sizes of each part.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR"

log() { printf '%s\n' "$*"; }
die() { printf 'bench/run.sh: %s\n' "$*" >&2; exit 1; }
# shellcheck source=../scripts/lib.sh
. "$REPO_DIR/scripts/lib.sh"

MODE=single
case ${1:-} in
  '') ;;
  --cluster) MODE=both ;;
  --cluster-only) MODE=cluster ;;
  --cluster-summary) MODE=summary ;;
  -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1' (none, --cluster or --cluster-only)" ;;
esac
[[ $MODE == summary ]] || (($# <= 1)) || die "one argument at most"

pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b > 0 ? 100 * a / b : 0) }'; }
verdict() { if awk -v a="$1" -v op="$2" -v b="$3" 'BEGIN { exit !(op == ">=" ? a >= b : a <= b) }'; then echo met; else echo "NOT met"; fi; }

# ---- --cluster: the cluster part, then the single-node part, then both columns ----

# both_summary OUT: the table of both parts' results.txt.
both_summary() {
  local out=$1 f
  declare -A C=() S=()
  if [[ -s $out/cluster/results.txt ]]; then
    while IFS= read -r f; do C[${f%%=*}]=${f#*=}; done <"$out/cluster/results.txt"
  fi
  if [[ -s $out/single/results.txt ]]; then
    while IFS= read -r f; do S[${f%%=*}]=${f#*=}; done <"$out/single/results.txt"
  fi
  # row LABEL KEY [NOTE]: both values, and the cluster's as % of one node's for rates
  row() {
    local c=${C[$2]:-?} s=${S[$2]:-?} rel=
    [[ ${4:-} != rate || $c == \? || $s == \? ]] || rel="$(pct "$c" "$s") %"
    printf '%-50s %15s %15s %8s   %s\n' "$1" "$c" "$s" "$rel" "${3:-}"
  }
  # ratio LABEL NUM_KEY DEN_KEY OP TARGET: each part's ratio, and the verdicts (OP "info": none)
  ratio() {
    local rc="?" rs="?" vc="?" vs="?" note
    [[ -z ${C[$2]:-} || -z ${C[$3]:-} ]] || { rc=$(pct "${C[$2]}" "${C[$3]}"); vc=$(verdict "$rc" "$4" "${5:-0}"); }
    [[ -z ${S[$2]:-} || -z ${S[$3]:-} ]] || { rs=$(pct "${S[$2]}" "${S[$3]}"); vs=$(verdict "$rs" "$4" "${5:-0}"); }
    note="$4 ${5:-} %: cluster $vc, one node $vs"
    [[ $4 != info ]] || note="(for information)"
    printf '%-50s %14s%% %14s%% %8s   %s\n' "$1" "$rc" "$rs" "" "$note"
  }
  # two LABEL KEY1 KEY2 [NOTE]: "a / b" per part
  two() {
    printf '%-50s %15s %15s %8s   %s\n' "$1" "${C[$2]:-?} / ${C[$3]:-?}" "${S[$2]:-?} / ${S[$3]:-?}" "" "${4:-}"
  }
  echo
  echo "== summary, cluster beside one node (tree ${S[meta.tree]:-${C[meta.tree]:-?}})"
  echo "cluster:  ${C[meta.t_begin]:-?} - ${C[meta.t_end]:-?}; ${C[meta.topology]:-(no results: the cluster part failed)}"
  echo "one node: ${S[meta.t_begin]:-?} - ${S[meta.t_end]:-?}; RabbitMQ and PostgreSQL, one process each"
  echo "machine busy before each part (% of one core, of 200): cluster ${C[meta.busy_before]:-?}, one node ${S[meta.busy_before]:-?}; load average ${C[meta.load_before]:-?} / ${S[meta.load_before]:-?}"
  echo "sizes: cluster ${C[meta.sizes]:-?}; one node ${S[meta.sizes]:-?}"
  printf '%-50s %15s %15s %8s   %s\n' "figure" "cluster" "one node" "cl/one" "target"
  row "raw publish with confirms (msg/s)" raw-publish.raw_publish_per_s "(cluster: to the queue leader's node)" rate
  row "api accepted POSTs (202/s, closed loop)" post-full.post_accepted_per_s "" rate
  ratio "  ratio accepted / raw publish" post-full.post_accepted_per_s raw-publish.raw_publish_per_s '>=' 70
  row "raw prepared INSERT, 1000/tx (rows/s)" raw-insert.raw_insert_per_s "(cluster: primary via haproxy, sync standby)" rate
  row "persister drain, 32 posts/message (rows/s)" persister-batched.persister_per_s "" rate
  ratio "  ratio persister / raw INSERT" persister-batched.persister_per_s raw-insert.raw_insert_per_s '>=' 60
  row "  posts per message the api sent in step 4" meta.ppm
  row "persister drain, 1 post/message (rows/s)" persister.persister_per_s "(for information)" rate
  ratio "  ratio persister 1/message / raw INSERT" persister.persister_per_s raw-insert.raw_insert_per_s info
  row "POST -> committed at half raw publish: rate/s" meta.half "(open loop)"
  row "  accepted/s achieved at that rate" post-half.post_accepted_per_s
  row "  p50 ms" post-half.commit_p50_ms
  row "  p99 ms" post-half.commit_p99_ms "<= 50 ms: cluster $(verdict "${C[post-half.commit_p99_ms]:-1e9}" '<=' 50), one node $(verdict "${S[post-half.commit_p99_ms]:-1e9}" '<=' 50)"
  row "  max ms" post-half.commit_max_ms
  two "  disk flush during that step: p99 / max ms" disk-post-half.disk_p99_ms disk-post-half.disk_max_ms
  two "POST -> committed, full speed: p50 / p99 ms" post-full.commit_p50_ms post-full.commit_p99_ms
  echo "for information:"
  S[raw-publish-follower.raw_publish_per_s]=-
  row "raw publish through a follower node (msg/s)" raw-publish-follower.raw_publish_per_s "(cluster only: to a node that is not the leader)"
  row "raw publish while the persister consumes" raw-publish-busy.raw_publish_per_s "" rate
  row "api alone, persister stopped (202/s)" post-alone.post_accepted_per_s "" rate
  row "POST -> committed at half the api's rate: rate/s" meta.api_half
  two "  p50 / p99 ms" post-apihalf.commit_p50_ms post-apihalf.commit_p99_ms
  two "accepted never seen committed / not accepted" meta.missing meta.refused
  echo "ratios are the figures to compare: the machine is shared, absolute rates move by +-30 % between runs"
  echo "each part's own summary and step outputs: $out/cluster/summary.txt, $out/single/summary.txt"
}

if [[ $MODE == summary ]]; then # --cluster-summary DIR: the table of an earlier --cluster run again
  [[ -s ${2:-}/cluster/results.txt || -s ${2:-}/single/results.txt ]] || die "--cluster-summary DIR: no DIR/cluster/results.txt or DIR/single/results.txt"
  both_summary "$2"
  exit 0
fi
if [[ $MODE == both ]]; then
  BOTH_OUT=${BENCH_OUT:-${BENCH_CLUSTER_STATE_DIR:-/tmp/sl-bench-cluster}/bench-out}
  mkdir -p "$BOTH_OUT/cluster" "$BOTH_OUT/single"
  rm -f "$BOTH_OUT/summary.txt" "$BOTH_OUT"/{cluster,single}/results.txt
  t0=$SECONDS
  rc_c=0
  rc_s=0
  log "==== part 1 of 2: the cluster (output in $BOTH_OUT/cluster)"
  BENCH_OUT=$BOTH_OUT/cluster "${BASH_SOURCE[0]}" --cluster-only || rc_c=$?
  log "==== part 2 of 2: one node (output in $BOTH_OUT/single)"
  BENCH_OUT=$BOTH_OUT/single "${BASH_SOURCE[0]}" || rc_s=$?
  both_summary "$BOTH_OUT" | tee "$BOTH_OUT/summary.txt"
  log "bench/run.sh --cluster: done in $((SECONDS - t0)) s (cluster part exit $rc_c, one-node part exit $rc_s)"
  ((rc_c == 0 && rc_s == 0)) || exit 1
  exit 0
fi

CLUSTER=0
if [[ $MODE == cluster ]]; then
  CLUSTER=1
  # Not SLUICE_STATE_DIR: in a --cluster run that names the single-node part's dir.
  export SLUICE_STATE_DIR=${BENCH_CLUSTER_STATE_DIR:-/tmp/sl-bench-cluster}
  export SLUICE_CLUSTER_PORT_BASE=${BENCH_CLUSTER_PORT_BASE:-6500}
  for v in RAW_COUNT INSERT_ROWS DRAIN_COUNT POST_COUNT LATENCY_SECONDS; do
    c=BENCH_CLUSTER_$v
    [[ -z ${!c:-} ]] || export "BENCH_$v=${!c}"
  done
else
  unset SLUICE_CLUSTER # servers.sh would hand every command to cluster.sh
  export SLUICE_STATE_DIR=${SLUICE_STATE_DIR:-/tmp/sl-bench}
  export SLUICE_AMQP_PORT=${SLUICE_AMQP_PORT:-5702}
  export SLUICE_PG_PORT=${SLUICE_PG_PORT:-5463}
fi
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
((!CLUSTER)) || SERVERS=$REPO_DIR/scripts/cluster.sh
PG_BIN=/usr/lib/postgresql/15/bin
T_BEGIN=$(date -u '+%F %T UTC')
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

if ((CLUSTER)); then
  log "== cluster ($SLUICE_STATE_DIR, port base $SLUICE_CLUSTER_PORT_BASE)"
  if ! "$SERVERS" status >/dev/null 2>&1; then
    servers_started=1
    "$SERVERS" start 2>&1 | tee -a "$OUT/servers.log" || die "the cluster did not start (see $OUT/servers.log)"
  fi
  eval "$("$SERVERS" env)"
  # The haproxies' multi-host URL, read-write: what the services see. Database swapped for ours.
  ADMIN_URL=$(sed 's|/sluice?|/postgres?|' <<<"$SLUICE_DB_URL")
  SLUICE_DB_URL=$(sed "s|/sluice?|/$BENCH_DB?|" <<<"$SLUICE_DB_URL")
  [[ $ADMIN_URL == */postgres\?* && $SLUICE_DB_URL == */$BENCH_DB\?* ]] || die "unexpected SLUICE_DB_URL from cluster.sh env: $SLUICE_DB_URL"
  export SLUICE_DB_URL
  timeout 60 "$PG_BIN/psql" -X -d "$ADMIN_URL" -q -v ON_ERROR_STOP=1 \
    -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" -c "CREATE DATABASE $BENCH_DB" >>"$OUT/servers.log" 2>&1 ||
    die "could not create database $BENCH_DB"
else
  log "== servers ($SLUICE_STATE_DIR, amqp $SLUICE_AMQP_PORT, postgres $SLUICE_PG_PORT)"
  servers_with_db "$SERVERS" "$BENCH_DB" "$OUT/servers.log"
fi
"$BIN/sl_bench" reset >>"$OUT/servers.log" 2>&1 || true # a first run has nothing to delete

TOPOLOGY=
FOLLOWER_URL=
if ((CLUSTER)); then
  # Declare the bench queue (1 000 confirmed messages, then purged: also a warm-up) and check that
  # it is a quorum queue on all three nodes. Its leader is where the declaring connection was
  # (queue_leader_locator client-local): the first node of the list.
  "$BIN/sl_bench" raw-publish --count 1000 --window 1000 --size 200 >"$OUT/declare.txt" 2>&1 ||
    { cat "$OUT/declare.txt"; die "could not declare $SLUICE_BENCH_QUEUE on the cluster"; }
  # (cluster.sh role-of queue-leader knows only sluice.persist: ask list_queues for ours.)
  qline=$("$SERVERS" rabbitmqctl -q list_queues --no-table-headers name type leader members 2>>"$OUT/servers.log" |
    awk -v q="$SLUICE_BENCH_QUEUE" '$1 == q') || true
  read -r -a qf <<<"$(tr -d '[],' <<<"$qline")"
  [[ ${qf[1]:-} == quorum ]] || die "$SLUICE_BENCH_QUEUE is not a quorum queue on the cluster: '$qline'"
  q_leader=${qf[2]}
  q_members=("${qf[@]:3}")
  log "  quorum queue $SLUICE_BENCH_QUEUE: leader $q_leader, members ${q_members[*]} (${#q_members[@]})"
  ((${#q_members[@]} == 3)) || die "$SLUICE_BENCH_QUEUE has ${#q_members[@]} members, not 3"
  ln=${q_leader#r}
  ln=${ln%%@*}
  [[ $ln =~ ^[123]$ ]] || die "unexpected queue leader '$q_leader'"
  url_of() { echo "amqp://guest:guest@127.0.0.1:$((SLUICE_CLUSTER_PORT_BASE + $1))/"; }
  urls=$(url_of "$ln")
  for n in 1 2 3; do
    if ((n != ln)); then
      urls+=",$(url_of "$n")"
      [[ -n $FOLLOWER_URL ]] || { FOLLOWER_URL=$(url_of "$n"); follower=r$n; }
    fi
  done
  # Leader first: sl_bench, the persister it starts and the services connect to the first that answers.
  export SLUICE_AMQP_URL=$urls
  log "  SLUICE_AMQP_URL (leader first): $SLUICE_AMQP_URL"
  pg_primary=$("$SERVERS" role-of primary) || die "no PostgreSQL primary"
  repl=$(timeout 15 "$PG_BIN/psql" -X -tA -F' ' -d "$ADMIN_URL" \
    -c "SELECT application_name, sync_state FROM pg_stat_replication" 2>>"$OUT/servers.log" | tr '\n' ' ') || true
  [[ $repl == *" sync"* ]] || die "the primary $pg_primary has no synchronous standby (pg_stat_replication: '$repl')"
  sync_commit=$(timeout 15 "$PG_BIN/psql" -X -tA -d "$SLUICE_DB_URL" -c "SHOW synchronous_commit" 2>/dev/null) || true
  log "  PostgreSQL: primary $pg_primary, standbys (name, state): $repl; synchronous_commit $sync_commit; via haproxy $SLUICE_DB_URL"
  TOPOLOGY="quorum queue on ${q_members[*]} (leader $q_leader); PostgreSQL primary $pg_primary with standby ${repl% } (synchronous_commit $sync_commit), through haproxy"
fi

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
# The servers' PIDs: one beam and one postmaster, or on the cluster three beams, two postmasters
# and the HA processes (etcd x3, Patroni x2, haproxy x2), found once (no failover during a run).
BEAM_PIDS=()
PM_PIDS=()
HA_PIDS=()
if ((CLUSTER)); then
  for c in r1 r2 r3; do BEAM_PIDS+=("$("$SERVERS" pid "$c")"); done
  for c in pg1-postmaster pg2-postmaster; do PM_PIDS+=("$("$SERVERS" pid "$c")"); done
  for c in etcd1 etcd2 etcd3 pg1 pg2 haproxy1 haproxy2; do HA_PIDS+=("$("$SERVERS" pid "$c")"); done
fi
# PostgreSQL: each postmaster with its reaped children, plus the live ones.
pg_ticks() {
  local pm sum=0 c
  local -a pms=("${PM_PIDS[@]}")
  ((CLUSTER)) || pms=("$(read_pid "$SLUICE_STATE_DIR/pg/postmaster.pid")")
  for pm in "${pms[@]}"; do
    [[ -n $pm ]] || continue
    sum=$((sum + $(ticks "$pm" children)))
    for c in $(ps -o pid= --ppid "$pm"); do sum=$((sum + $(ticks "$c"))); done
  done
  echo "$sum"
}
sum_ticks() { local s=0 p; for p; do s=$((s + $(ticks "$p"))); done; echo "$s"; }
beam_ticks() {
  if ((CLUSTER)); then sum_ticks "${BEAM_PIDS[@]}"; else ticks "$(read_pid "$SLUICE_STATE_DIR/rabbitmq/rabbitmq.pid")"; fi
}
ha_ticks() { if ((CLUSTER)); then sum_ticks "${HA_PIDS[@]}"; else echo 0; fi; }
api_pid=
persister_pid=
snapshot() {
  echo "$(total_busy) $(beam_ticks) $(pg_ticks) $(ticks "${api_pid:-0}") $(ticks "${persister_pid:-0}") $(ha_ticks) $(date +%s%N)"
}
# cpu_line BEFORE AFTER TOOL_CPU_SECONDS: one line of % of one core (200 = both cores busy).
cpu_line() {
  local -a a b
  read -r -a a <<<"$1"
  read -r -a b <<<"$2"
  awk -v hz="$HZ" -v tool="$3" -v t0="${a[6]}" -v t1="${b[6]}" -v cluster="$CLUSTER" \
    -v tot=$((b[0] - a[0])) -v beam=$((b[1] - a[1])) -v pg=$((b[2] - a[2])) -v api=$((b[3] - a[3])) \
    -v per=$((b[4] - a[4])) -v ha=$((b[5] - a[5])) 'BEGIN {
      wall = (t1 - t0) / 1e9; f = 100 / hz / wall
      other = tot * f - (beam + pg + api + per + ha) * f - tool * 100 / wall
      if (cluster)
        printf "cpu, %% of one core over %.1f s: machine %.0f | rabbitmq x3 %.0f | postgres x2 %.0f | etcd+patroni+haproxy %.0f | api %.0f | persister %.0f | sl_bench %.0f | rest %.0f\n",
          wall, tot * f, beam * f, pg * f, ha * f, api * f, per * f, tool * 100 / wall, (other < 0 ? 0 : other)
      else
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

if ((CLUSTER)); then
  log "== 1f. raw publish with confirms through a follower node, $follower ($RAW_COUNT messages; for information)"
  step raw-publish-follower raw-publish --amqp-url "$FOLLOWER_URL" --count "$RAW_COUNT" --window 1000 --size 200
fi

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
local_missing=$((${R[post-full.commit_missing]} + ${R[post-half.commit_missing]} + ${R[post-apihalf.commit_missing]}))
refused=0
for s in post-full post-half post-alone post-apihalf; do
  refused=$((refused + ${R[$s.post_429]} + ${R[$s.post_503]} + ${R[$s.post_other]} + ${R[$s.post_errors]}))
done
TREE=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO_DIR" diff --quiet HEAD -- internal cmd 2>/dev/null || echo '+uncommitted changes')
T_END=$(date -u '+%F %T UTC')
{
  echo
  echo "== summary ($T_END, $(nproc) cores, tree $TREE)"
  ((!CLUSTER)) || echo "cluster: $TOPOLOGY"
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
  echo "accepted but never seen committed: $local_missing; POSTs not accepted (429, 503, other, errors): $refused"
  echo "per 100 ms of steps 5 and 8 (to match a tail with the disk's slow flushes in disk-*.log): $OUT/timeline-*.csv"
} | tee "$OUT/summary.txt"

# Every figure of the run, one KEY=VALUE a line, for --cluster's table beside the other part.
{
  for k in "${!R[@]}"; do echo "$k=${R[$k]}"; done
  echo "meta.mode=$MODE"
  echo "meta.t_begin=$T_BEGIN"
  echo "meta.t_end=$T_END"
  echo "meta.tree=$TREE"
  echo "meta.busy_before=$BUSY_BEFORE"
  echo "meta.load_before=$LOAD_BEFORE"
  echo "meta.half=$half"
  echo "meta.api_half=$api_half"
  echo "meta.ppm=$ppm"
  echo "meta.missing=$local_missing"
  echo "meta.refused=$refused"
  echo "meta.topology=$TOPOLOGY"
  echo "meta.sizes=raw $RAW_COUNT, insert $INSERT_ROWS, drain $DRAIN_COUNT x$DRAIN_LINES, post $POST_COUNT/$POST_CONNS conns, latency ${LAT_SECONDS} s/$RATE_CONNS conns"
} | sort >"$OUT/results.txt"
