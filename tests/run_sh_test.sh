#!/usr/bin/env bash
# End-to-end test of ./run.sh and ./stop.sh, natively (no Docker engine):
#
#   1. ./stop.sh --purge (a fresh .state/run), then SLUICE_RUN_BOT=0 ./run.sh;
#   2. the services answer /readyz; a message POSTed to the api shows up on an SSE stream
#      (curl -N on /v1/stream, bounded by a timeout), on a resumed stream (Last-Event-ID) and in
#      GET /v1/messages and GET /v1/messages/{id};
#   3. with an ingest of our own (run.sh starts one only with SLUICE_MASTODON_URL: here it points
#      at a dead local URL with SLUICE_INGEST_AUTOSTART=0, so only its control endpoint works),
#      scripts/check_openapi.sh checks docs/openapi.yaml against the running services;
#   4. ./stop.sh: every PID of .state/run/pids, the servers' (beam and its helpers, epmd,
#      postgres and its children) and our ingest are gone (a zombie counts as gone), the ports are
#      free; a second ./stop.sh is harmless; ./stop.sh --purge removes .state/run.
#
# Ports: the services' defaults (8080-8083), RabbitMQ SLUICE_AMQP_PORT (5672; epmd on port-1000,
# distribution on port+20000) and PostgreSQL SLUICE_PG_PORT (5433), which run.sh honours. It uses
# (and deletes) .state/run: do not run it while you use ./run.sh yourself.
# Prints one line per check and closes with `N passed, N failed`; exits 1 on any failure.
# shellcheck disable=SC2317  # many functions here run through check and wait_for
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR"

log() { printf '%s\n' "$*"; }
die() { printf 'run_sh_test: %s\n' "$*" >&2; exit 1; }
# pid_alive, read_pid, tree_pids, port_in_use, now_ms, elapsed
# shellcheck source=scripts/lib.sh
. "$REPO_DIR/scripts/lib.sh"

RUN_DIR=$REPO_DIR/.state/run
API=http://127.0.0.1:8080
SSE=http://127.0.0.1:8081
INGEST=http://127.0.0.1:8082
PERSISTER=http://127.0.0.1:8083
AMQP_PORT=${SLUICE_AMQP_PORT:-5672}
PG_PORT=${SLUICE_PG_PORT:-5433}
export SLUICE_AMQP_PORT=$AMQP_PORT SLUICE_PG_PORT=$PG_PORT SLUICE_RUN_BOT=0
# run.sh would start ingest against a real instance with these; this test starts its own.
unset SLUICE_MASTODON_URL SLUICE_MASTODON_TOKEN
# It posts and reads without credentials, as run.sh does by default.
unset SLUICE_API_TOKENS SLUICE_API_TOKENS_FILE SLUICE_ADMIN_TOKEN SLUICE_API_CLIENT_RATE

passed=0
failed=0
check() { # check "description" command...: runs the command, counts the result
  local what=$1
  shift
  if "$@"; then
    passed=$((passed + 1))
    printf 'ok   %s\n' "$what"
  else
    failed=$((failed + 1))
    printf 'FAIL %s\n' "$what"
  fi
}
ok() { passed=$((passed + 1)); printf 'ok   %s\n' "$*"; }
bad() { failed=$((failed + 1)); printf 'FAIL %s\n' "$*"; }
section() { printf '\n== %s\n' "$*"; }

TMP=$(mktemp -d)
stack_up=0     # run.sh was started and ./stop.sh has not run since
ingest_pid=    # our own sluice-ingest
stream_pid=    # the background curl -N
t_start=$(now_ms)

# shellcheck disable=SC2317  # runs from the EXIT trap
cleanup() {
  local rc=$?
  if [[ -n $stream_pid ]] && pid_alive "$stream_pid"; then kill "$stream_pid" 2>/dev/null || true; fi
  if [[ -n $ingest_pid ]] && pid_alive "$ingest_pid"; then kill_pids sluice-ingest "$ingest_pid" || true; fi
  if ((stack_up)); then
    log "run_sh_test: stopping what run.sh started (./stop.sh)"
    timeout 120 ./stop.sh >"$TMP/cleanup-stop.out" 2>&1 || cat "$TMP/cleanup-stop.out"
  fi
  if ((failed > 0 || rc != 0)); then
    log "run_sh_test: logs kept in $TMP"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

finish() {
  printf '\nrun_sh_test: took %s\n' "$(elapsed "$t_start")"
  printf '%d passed, %d failed\n' "$passed" "$failed"
  if ((failed > 0)); then exit 1; fi
  exit 0
}
# fatal MESSAGE: a failure after which the rest cannot run.
fatal() {
  bad "$*"
  finish
}

show() { # show FILE [N]: the last lines of a file, indented
  [[ -f $1 ]] && tail -n "${2:-20}" "$1" | sed 's/^/    | /'
  return 0
}



# The start time of a process (field 22 of /proc/PID/stat), to tell it from a later one with the
# same PID.
proc_start() {
  local stat rest fields
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  rest=${stat##*) }
  read -ra fields <<<"$rest"
  printf '%s\n' "${fields[19]:-}"
}
# still_running PID START: the same process is alive and not a zombie.
still_running() {
  pid_alive "$1" && [[ $(proc_start "$1") == "$2" ]]
}
gone() { ! still_running "$1" "$2"; }
not_alive() { ! pid_alive "${1:-x}"; }
not_grep() { ! grep "$@"; }
ports_busy() { # ports_busy PORT...: prints those in use
  local p busy=()
  for p; do if port_in_use "$p"; then busy+=("$p"); fi; done
  printf '%s' "${busy[*]}"
}

# ---------------------------------------------------------------------------------------------
section "fresh state"
EPMD_PORT=$((AMQP_PORT - 1000))
DIST_PORT=$((AMQP_PORT + 20000))
PORTS=(8080 8081 8082 8083 "$AMQP_PORT" "$PG_PORT" "$EPMD_PORT" "$DIST_PORT")
t0=$(now_ms)
rc=0
timeout 120 ./stop.sh --purge >"$TMP/purge0.out" 2>&1 || rc=$?
check "./stop.sh --purge (whatever an earlier run left) exits 0 (in $(elapsed "$t0"))" test "$rc" = 0
((rc == 0)) || show "$TMP/purge0.out"
check ".state/run does not exist before run.sh" test ! -e "$RUN_DIR"
busy_ports=$(ports_busy "${PORTS[@]}")
if [[ -z $busy_ports ]]; then
  ok "ports ${PORTS[*]} are free"
else
  fatal "ports in use by something else: $busy_ports (another ./run.sh? SLUICE_AMQP_PORT/SLUICE_PG_PORT move the servers; 8080-8083 must be free)"
fi

section "./run.sh (SLUICE_RUN_BOT=0, servers on $AMQP_PORT/$PG_PORT)"
t0=$(now_ms)
stack_up=1
run_rc=0
timeout 900 ./run.sh >"$TMP/run.out" 2>&1 </dev/null || run_rc=$?
run_time=$(elapsed "$t0")
if ((run_rc == 0)); then
  ok "./run.sh exits 0 (in $run_time)"
else
  show "$TMP/run.out" 40
  fatal "./run.sh exited $run_rc after $run_time"
fi
grep -E '^(rabbitmq|postgres|sluice-[a-z]+):' "$TMP/run.out" | sed 's/^/    | /' || true

for svc in persister api sse; do
  pid=$(read_pid "$RUN_DIR/pids/$svc.pid")
  check "sluice-$svc runs (pid ${pid:-none} from .state/run/pids/$svc.pid)" pid_is "${pid:-x}" "sluice-$svc"
done
bot_pid=$(read_pid "$RUN_DIR/pids/bot.pid")
check "the bot is not running (SLUICE_RUN_BOT=0)" not_alive "$bot_pid"
check "ingest was not started by run.sh (no SLUICE_MASTODON_URL)" test ! -e "$RUN_DIR/pids/ingest.pid"
for url in "$API/readyz" "$SSE/readyz" "$PERSISTER/readyz"; do
  code=$(http_code "$url")
  check "GET $url answers 200 (got $code)" test "$code" = 200
done
# Each service is connected to RabbitMQ as its own user, none as guest.
SLUICE_STATE_DIR=$RUN_DIR timeout 60 scripts/servers.sh rabbitmqctl -q list_connections --no-table-headers user \
  >"$TMP/amqp-users.txt" 2>&1 || true
for user in sluice-persister sluice-api sluice-sse; do
  check "a RabbitMQ connection of user $user" grep -qx "$user" "$TMP/amqp-users.txt"
done
check "no RabbitMQ connection of user guest ($(sort -u "$TMP/amqp-users.txt" | tr '\n' ' '))" \
  not_grep -qx guest "$TMP/amqp-users.txt"

# ---------------------------------------------------------------------------------------------
section "a message through the stack"
channel=runsh-$$-$RANDOM
text="run.sh test $channel $(date +%s%N)"
stream_out=$TMP/stream.sse
: >"$stream_out"
curl -sN -m 60 "$SSE/v1/stream?channels=$channel&history=0" >"$stream_out" 2>"$TMP/stream.err" &
stream_pid=$!
check "the SSE stream of channel $channel opens (retry: line within 10 s)" \
  wait_for 10 grep -q '^retry: ' "$stream_out"

post_code=$(curl -s -o "$TMP/post.json" -m 10 -w '%{http_code}' -X POST "$API/v1/messages" \
  -H 'Content-Type: application/json' -H "Idempotency-Key: runsh-$channel" \
  --data "{\"channel\":\"$channel\",\"author\":\"run_sh_test\",\"text\":\"$text\"}" || true)
id=$(sed -n 's/.*"id":"\([0-9a-f-]*\)".*/\1/p' "$TMP/post.json" 2>/dev/null || true)
check "POST /v1/messages answers 202 with an id (got $post_code: $(head -c 160 "$TMP/post.json" 2>/dev/null))" \
  test "$post_code" = 202 -a -n "$id"
[[ -n $id ]] || fatal "no message id: the rest needs it"

t0=$(now_ms)
if wait_for 15 grep -qF "\"id\":\"$id\"" "$stream_out"; then
  ok "the message appears on the SSE stream (after $(elapsed "$t0"))"
else
  bad "the message did not appear on the SSE stream within 15 s"
  show "$stream_out"
fi
seq=$(grep -B2 -F "\"id\":\"$id\"" "$stream_out" | sed -n 's/^id: \([0-9]*\)$/\1/p' | head -1)
sse_event_ok() {
  [[ $seq =~ ^[0-9]+$ ]] &&
    grep -B1 -F "\"id\":\"$id\"" "$stream_out" | grep -qx "event: message" &&
    grep -F "\"id\":\"$id\"" "$stream_out" | grep -qF "\"text\":\"$text\""
}
check "its SSE event has id: <seq> (${seq:-none}), event: message and the text" sse_event_ok
kill "$stream_pid" 2>/dev/null || true
wait "$stream_pid" 2>/dev/null || true
stream_pid=

in_history() {
  curl -s -m 5 "$API/v1/messages?channel=$channel&limit=10" >"$TMP/history.json" 2>/dev/null &&
    grep -qF "\"id\":\"$id\"" "$TMP/history.json"
}
check "GET /v1/messages?channel=$channel lists it" wait_for 15 in_history
history_ok() { grep -qF "\"text\":\"$text\"" "$TMP/history.json" && grep -q "\"seq\":${seq}[,}]" "$TMP/history.json"; }
check "... with its text and seq ${seq:-none}" history_ok
code=$(http_code "$API/v1/messages/$id" "$TMP/one.json")
one_ok() { [[ $code == 200 ]] && grep -qF "\"id\":\"$id\"" "$TMP/one.json"; }
check "GET /v1/messages/$id answers 200 with it (got $code)" one_ok
if [[ $seq =~ ^[0-9]+$ ]]; then
  curl -sN -m 3 -H "Last-Event-ID: $((seq - 1))" "$SSE/v1/stream?channels=$channel&history=0" >"$TMP/resume.sse" 2>/dev/null || true
  check "a stream resumed with Last-Event-ID: $((seq - 1)) replays it" grep -qF "\"id\":\"$id\"" "$TMP/resume.sse"
fi

# ---------------------------------------------------------------------------------------------
section "ingest (our own: dead source, autostart 0) and scripts/check_openapi.sh"
eval "$(SLUICE_STATE_DIR=$RUN_DIR scripts/servers.sh env)"
SLUICE_MASTODON_URL=http://127.0.0.1:1 SLUICE_INGEST_AUTOSTART=0 SLUICE_AMQP_URL=$SLUICE_AMQP_URL_INGEST \
  SLUICE_AMQP_DECLARE=passive setsid "$REPO_DIR/build/bin/sluice-ingest" </dev/null >"$TMP/ingest.log" 2>&1 &
ingest_pid=$!
ingest_start=$(proc_start "$ingest_pid")
ingest_up() { [[ $(http_code "$INGEST/readyz") == 200 ]]; }
if wait_for 15 ingest_up; then
  ok "sluice-ingest (pid $ingest_pid) answers $INGEST/readyz 200"
else
  bad "sluice-ingest did not answer $INGEST/readyz 200 within 15 s"
  show "$TMP/ingest.log"
fi
code=$(http_code "$INGEST/v1/ingest" "$TMP/ingest.json")
ingest_state_ok() { [[ $code == 200 ]] && grep -q '"state":"stopped"' "$TMP/ingest.json"; }
check "GET /v1/ingest answers 200, state stopped (got $code: $(head -c 120 "$TMP/ingest.json" 2>/dev/null))" ingest_state_ok

t0=$(now_ms)
openapi_rc=0
scripts/check_openapi.sh --api="$API" --sse="$SSE" --ingest="$INGEST" --persister="$PERSISTER" \
  >"$TMP/openapi.out" 2>&1 || openapi_rc=$?
sed 's/^/    openapi| /' "$TMP/openapi.out"
check "scripts/check_openapi.sh passes against the running stack (in $(elapsed "$t0"))" test "$openapi_rc" = 0

kill -TERM "$ingest_pid" 2>/dev/null || true
check "our sluice-ingest stops on SIGTERM within 15 s" wait_gone 15 "$ingest_pid"
wait "$ingest_pid" 2>/dev/null || true

# ---------------------------------------------------------------------------------------------
section "./stop.sh"
# What run.sh started: the services of .state/run/pids and the servers with their helpers.
declare -A START=() WHAT=()
remember() { # remember PID LABEL
  if [[ $1 =~ ^[0-9]+$ ]] && pid_alive "$1" && [[ -z ${WHAT[$1]:-} ]]; then
    START[$1]=$(proc_start "$1")
    WHAT[$1]=$2
  fi
}
for f in "$RUN_DIR"/pids/*.pid; do
  [[ -f $f ]] || continue
  name=$(basename "$f" .pid)
  remember "$(read_pid "$f")" "sluice-$name"
done
beam=$(read_pid "$RUN_DIR/rabbitmq/rabbitmq.pid")
wrapper=$(read_pid "$RUN_DIR/rabbitmq/server.pid")
epmd=$(read_pid "$RUN_DIR/rabbitmq/epmd.pid")
postmaster=$(read_pid "$RUN_DIR/pg/postmaster.pid")
all_numbers() { local p; for p; do [[ $p =~ ^[0-9]+$ ]] || return 1; done; }
check "found the servers' PIDs (beam ${beam:-?}, rabbitmq-server ${wrapper:-?}, epmd ${epmd:-?}, postgres ${postmaster:-?})" \
  all_numbers "$beam" "$wrapper" "$epmd" "$postmaster"
remember "$beam" "beam.smp (RabbitMQ)"
remember "$wrapper" "rabbitmq-server"
remember "$epmd" "epmd"
remember "$postmaster" "postgres"
for p in $(tree_pids "$wrapper"); do remember "$p" "RabbitMQ helper $(ps -o comm= -p "$p" 2>/dev/null || true)"; done
for p in $(tree_pids "$postmaster"); do remember "$p" "postgres child"; done
log "  $((${#WHAT[@]})) processes to watch: $(for p in "${!WHAT[@]}"; do printf '%s(%s) ' "$p" "${WHAT[$p]}"; done)"

t0=$(now_ms)
stop_rc=0
timeout 120 ./stop.sh >"$TMP/stop1.out" 2>&1 || stop_rc=$?
stop_time=$(elapsed "$t0")
stack_up=0
sed 's/^/    | /' "$TMP/stop1.out"
check "./stop.sh exits 0 (in $stop_time)" test "$stop_rc" = 0
left=()
helpers_left=0
n_helpers=0
for p in "${!WHAT[@]}"; do
  case ${WHAT[$p]} in
    "postgres child" | "RabbitMQ helper"*)
      n_helpers=$((n_helpers + 1))
      if still_running "$p" "${START[$p]}"; then helpers_left=$((helpers_left + 1)); left+=("$p(${WHAT[$p]})"); fi
      ;;
    *) check "${WHAT[$p]} (pid $p) is gone" gone "$p" "${START[$p]}" ;;
  esac
done
check "the servers' $n_helpers helper processes are gone" test "$helpers_left" = 0
((${#left[@]} == 0)) || log "  still running: ${left[*]}"
check "our sluice-ingest (pid $ingest_pid) is gone" gone "$ingest_pid" "$ingest_start"
busy_ports=$(ports_busy "${PORTS[@]}")
check "ports ${PORTS[*]} are free again${busy_ports:+ (in use: $busy_ports)}" test -z "$busy_ports"
no_pid_files() { ! compgen -G "$RUN_DIR/pids/*.pid" >/dev/null; }
check "no PID files are left in .state/run/pids" no_pid_files

t0=$(now_ms)
stop2_rc=0
timeout 120 ./stop.sh >"$TMP/stop2.out" 2>&1 || stop2_rc=$?
sed 's/^/    | /' "$TMP/stop2.out"
check "a second ./stop.sh exits 0 (in $(elapsed "$t0"))" test "$stop2_rc" = 0
stop2_quiet() {
  grep -q "rabbitmq: not running" "$TMP/stop2.out" && grep -q "postgres: not running" "$TMP/stop2.out" &&
    ! grep -qiE "SIGKILL|could not|error|stopped in|stopped \(was" "$TMP/stop2.out"
}
check "... and reports nothing running, kills nothing" stop2_quiet
check "... and keeps .state/run (no --purge)" test -d "$RUN_DIR"

t0=$(now_ms)
purge_rc=0
timeout 120 ./stop.sh --purge >"$TMP/purge.out" 2>&1 || purge_rc=$?
check "./stop.sh --purge exits 0 (in $(elapsed "$t0"))" test "$purge_rc" = 0
check ".state/run is gone" test ! -e "$RUN_DIR"

finish
