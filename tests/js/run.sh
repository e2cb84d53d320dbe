#!/usr/bin/env bash
# Tests of the JavaScript client (clients/js/sluice.js) with Node's test runner, against a real
# stack of our own: private RabbitMQ and PostgreSQL (scripts/servers.sh), the persister, the api
# and two sse instances on private ports. The tests (client.test.mjs) kill and restart the sse
# instances themselves, by PID (stack.mjs), and write the PIDs they start into the PID folder, so
# that this script stops whatever runs at the end.
#
# Node 20 has neither WebSocket nor EventSource: the tests run with --experimental-websocket,
# whose global WebSocket (undici's) carries the client's WebSocket transport, and the NDJSON
# transport uses fetch. No npm package is needed.
#
#   SLUICE_BIN_DIR        service binaries (default <repo>/build/bin, built with cmake if missing)
#   SLUICE_JS_STATE_DIR   servers' state and logs (default <repo>/.state/jsclient; wiped)
#   SLUICE_JS_AMQP_PORT / SLUICE_JS_PG_PORT   the servers' ports (5762 / 5523; epmd on amqp-1000,
#                         Erlang distribution on amqp+20000)
#   SLUICE_JS_PORT_BASE   api, persister, sse1, sse2 listen on this port and the next three (18600)
#   SLUICE_JS_TEST_ONLY   a --test-name-pattern for node (default: every test)
#   SLUICE_JS_TESTS       the test files (default tests/js/client.test.mjs)
# Exits non-zero when a test fails; node prints the tests and a summary.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$HERE/../.." && pwd)
SCRIPT_DIR=$REPO_DIR/scripts

log() { printf 'js: %s\n' "$*"; }
die() { printf 'js: %s\n' "$*" >&2; exit 1; }
# shellcheck source=../../scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

BIN_DIR=${SLUICE_BIN_DIR:-$REPO_DIR/build/bin}
STATE=${SLUICE_JS_STATE_DIR:-$REPO_DIR/.state/jsclient}
wipeable_state_dir STATE "$REPO_DIR"
AMQP_PORT=${SLUICE_JS_AMQP_PORT:-5762}
PG_PORT=${SLUICE_JS_PG_PORT:-5523}
declare -A PORT
stack_ports "${SLUICE_JS_PORT_BASE:-18600}"
SERVICES=(persister api sse1 sse2)
LOG_DIR=$STATE/logs
PID_DIR=$STATE/pids

command -v node >/dev/null || die "node is not installed"
node_major=$(node -p 'process.versions.node.split(".")[0]')
((node_major >= 20)) || die "node $(node --version) is too old: 20 or newer"
node --experimental-websocket -e 'if (typeof WebSocket !== "function") process.exit(1)' 2>/dev/null ||
  die "node $(node --version) has no --experimental-websocket (20.10 or newer has)"
if [[ ! -x $BIN_DIR/sluice-sse || ! -x $BIN_DIR/sluice-api || ! -x $BIN_DIR/sluice-persister ]]; then
  [[ -z ${SLUICE_BIN_DIR:-} ]] || die "no sluice binaries in SLUICE_BIN_DIR=$SLUICE_BIN_DIR"
  log "building (cmake, $REPO_DIR/build)"
  cmake -S "$REPO_DIR" -B "$REPO_DIR/build" >/dev/null
  cmake --build "$REPO_DIR/build" -j2 >/dev/null
fi

srv() { SLUICE_STATE_DIR=$STATE SLUICE_AMQP_PORT=$AMQP_PORT SLUICE_PG_PORT=$PG_PORT "$SCRIPT_DIR/servers.sh" "$@"; }

# Our services: those this script started and those the tests (re)started, by their PID files,
# and only while the PID is one of our binaries.
stop_services() {
  stop_pid_files "$PID_DIR" "$BIN_DIR" >/dev/null || true
  rm -f "$PID_DIR"/*
}

# shellcheck disable=SC2317  # invoked from the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_services
  srv stop >>"$LOG_DIR/servers.log" 2>&1 || log "stopping the servers failed (see $LOG_DIR/servers.log)"
  ((rc == 0)) || log "logs in $LOG_DIR"
  exit "$rc"
}

mkdir -p "$STATE"
stop_services
srv stop >/dev/null 2>&1 || true
rm -rf "$STATE"
mkdir -p "$LOG_DIR" "$PID_DIR"
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for name in "${SERVICES[@]}"; do
  port_in_use "${PORT[$name]}" && die "port ${PORT[$name]} ($name) is in use: set SLUICE_JS_PORT_BASE"
done
log "servers: amqp $AMQP_PORT, postgres $PG_PORT (state $STATE)"
srv start >"$LOG_DIR/servers.log" 2>&1 || {
  tail -n 20 "$LOG_DIR/servers.log" >&2
  die "the servers did not start"
}
eval "$(srv env)"
export SLUICE_AMQP_URL SLUICE_DB_URL
export SLUICE_MIGRATE_WAIT=60
export SLUICE_LOG_LEVEL=${SLUICE_LOG_LEVEL:-info}
# A resume that misses more than this gets a reset: small, so that a test can cause one cheaply;
# far above what the kill test's outages leave behind (a few hundred milliseconds of posts).
export SLUICE_SSE_REPLAY_MAX=400
export SLUICE_SSE_API_URL=http://127.0.0.1:${PORT[api]}
# Heartbeats after 1 s of quiet (15 s by default), so that a test may take a client's idle
# timeout down to a few seconds.
export SLUICE_SSE_HEARTBEAT_MS=1000

# start NAME: one service in the background, output appended to $LOG_DIR/NAME.log.
start() {
  local name=$1 log=$LOG_DIR/$1.log
  printf '=== %s start\n' "$(date '+%F %T.%3N')" >>"$log"
  stack_cmd "$name" "$BIN_DIR" js
  "${STACK_CMD[@]}" </dev/null >>"$log" 2>&1 &
  disown
  echo $! >"$PID_DIR/$name"
}
# shellcheck disable=SC2317  # runs through wait_for
ready() { [[ $(http_code "http://127.0.0.1:$1/readyz") == 200 ]]; }

for name in "${SERVICES[@]}"; do start "$name"; done
for name in "${SERVICES[@]}"; do
  wait_for 60 ready "${PORT[$name]}" || {
    tail_file "$LOG_DIR/$name.log"
    die "$name (port ${PORT[$name]}) not ready after 60 s"
  }
done
log "api :${PORT[api]}, persister :${PORT[persister]}, sse :${PORT[sse1]} and :${PORT[sse2]}"

export SLUICE_BIN_DIR=$BIN_DIR
export SLUICE_JS_API=http://127.0.0.1:${PORT[api]}
export SLUICE_JS_SSE1=http://127.0.0.1:${PORT[sse1]}
export SLUICE_JS_SSE2=http://127.0.0.1:${PORT[sse2]}
export SLUICE_JS_SSE1_PORT=${PORT[sse1]} SLUICE_JS_SSE2_PORT=${PORT[sse2]}
export SLUICE_JS_PID_DIR=$PID_DIR SLUICE_JS_LOG_DIR=$LOG_DIR
args=(--experimental-websocket --test --test-reporter=spec --test-concurrency=1)
[[ -z ${SLUICE_JS_TEST_ONLY:-} ]] || args+=(--test-name-pattern="$SLUICE_JS_TEST_ONLY")
rc=0
read -r -a files <<<"${SLUICE_JS_TESTS:-$HERE/client.test.mjs}"
node "${args[@]}" "${files[@]}" || rc=$?
exit "$rc"
