#!/usr/bin/env bash
# Browser test of the live page (web/index.html, served by sluice-sse at /), in headless Debian
# Chromium driven by playwright-core (never a downloaded browser).
#
# Installs chromium with apt-get if missing and the pinned playwright-core with npm, starts the
# stack with `SLUICE_RUN_BOT=0 ./run.sh` unless the api and sse already answer /readyz (and then
# stops it with ./stop.sh at the end, only if it started it), and runs live.test.mjs.
# Prints "N passed, N failed"; exits non-zero on a failure. Screenshots: tests/browser/out/.
#
# Mastodon posts reach the page for real: the test runs a fake Mastodon instance (fake-mastodon,
# built from tests/) and a sluice-ingest of its own that publishes into the stack's queue, and
# changes one stored message with psql. On ./run.sh's stack it finds the RabbitMQ (ingest user)
# and PostgreSQL URLs in .state/run; for another stack, give them.
#
#   SLUICE_API_URL (http://127.0.0.1:8080), SLUICE_SSE_URL (http://127.0.0.1:8081),
#   SLUICE_AMQP_URL or SLUICE_INGEST_AMQP_URL, SLUICE_DB_URL (the stack's servers; see above),
#   SLUICE_BIN_DIR (<repo>/build/bin: fake-mastodon and sluice-ingest, built if missing there),
#   SLUICE_BROWSER_MASTODON=0 (skip the Mastodon checks), SLUICE_BROWSER_INGEST_PORT (free one),
#   CHROMIUM (/usr/bin/chromium), WAIT_MS (15000: the bound of every wait in the test)
# A stack on other ports, e.g. one started by hand with SLUICE_API_PORT / SLUICE_SSE_PORT (and
# SLUICE_SSE_API_URL naming that api): SLUICE_API_URL=http://127.0.0.1:5520
#   SLUICE_SSE_URL=http://127.0.0.1:5522 SLUICE_AMQP_URL=… SLUICE_DB_URL=… tests/browser/run.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$HERE/../.." && pwd)
export SLUICE_API_URL=${SLUICE_API_URL:-http://127.0.0.1:8080}
export SLUICE_SSE_URL=${SLUICE_SSE_URL:-http://127.0.0.1:8081}
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
export OUT_DIR=$HERE/out

log() { printf 'browser: %s\n' "$*"; }
die() { printf 'browser: %s\n' "$*" >&2; printf '0 passed, 1 failed\n'; exit 1; }

ready() { [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "$1/readyz" || true) == 200 ]]; }

if [[ ! -x $CHROMIUM ]]; then
  log "installing chromium (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq chromium >/dev/null || die "apt-get install chromium failed"
fi
command -v node >/dev/null || die "node is not installed"
command -v npm >/dev/null || die "npm is not installed"

cd "$HERE"
if [[ -f package-lock.json ]]; then
  npm ci --no-audit --no-fund --loglevel=error >/dev/null || die "npm ci failed"
else
  npm install --no-audit --no-fund --loglevel=error >/dev/null || die "npm install failed"
fi

started=0
# shellcheck disable=SC2317  # invoked from the EXIT trap
stop_stack() {
  if ((started)); then
    log "stopping the stack it started (./stop.sh)"
    "$REPO_DIR/stop.sh" >"$OUT_DIR/stop.log" 2>&1 || log "./stop.sh failed (see $OUT_DIR/stop.log)"
  fi
}
trap stop_stack EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/*.png
api_up=0 sse_up=0
if ready "$SLUICE_API_URL"; then api_up=1; fi
if ready "$SLUICE_SSE_URL"; then sse_up=1; fi
if ((api_up && sse_up)); then
  log "the stack is already up: using it"
else
  if ((api_up || sse_up)); then
    # Part of it is someone else's: start what is missing, stop nothing at the end.
    log "the stack is partly up: SLUICE_RUN_BOT=0 ./run.sh starts the rest (left running at the end)"
  else
    log "starting the stack: SLUICE_RUN_BOT=0 ./run.sh (log: $OUT_DIR/run.log)"
    started=1
  fi
  if ! (cd "$REPO_DIR" && SLUICE_RUN_BOT=0 ./run.sh) >"$OUT_DIR/run.log" 2>&1; then
    tail -n 30 "$OUT_DIR/run.log" >&2
    die "./run.sh failed (see $OUT_DIR/run.log)"
  fi
fi

if [[ ${SLUICE_BROWSER_MASTODON:-1} != 0 ]]; then
  # ./run.sh's stack (the default URLs): its servers, as ./run.sh gives them to its own ingest.
  if [[ -z ${SLUICE_AMQP_URL:-}${SLUICE_INGEST_AMQP_URL:-} && $SLUICE_API_URL == http://127.0.0.1:8080 &&
        $SLUICE_SSE_URL == http://127.0.0.1:8081 && -f $REPO_DIR/.state/run/ports.env ]]; then
    # shellcheck disable=SC1091  # written by ./run.sh
    eval "$(set -a && . "$REPO_DIR/.state/run/ports.env" && SLUICE_STATE_DIR=$REPO_DIR/.state/run "$REPO_DIR/scripts/servers.sh" env)"
    export SLUICE_AMQP_URL SLUICE_DB_URL
    if [[ -n ${SLUICE_AMQP_URL_INGEST:-} ]]; then export SLUICE_INGEST_AMQP_URL=$SLUICE_AMQP_URL_INGEST; fi
  fi
  bin=${SLUICE_BIN_DIR:-$REPO_DIR/build/bin}
  if [[ -z ${SLUICE_BIN_DIR:-} && (! -x $bin/fake-mastodon || ! -x $bin/sluice-ingest) ]]; then
    log "building fake-mastodon and sluice-ingest (cmake, $REPO_DIR/build)"
    { cmake -S "$REPO_DIR" -B "$REPO_DIR/build" && cmake --build "$REPO_DIR/build" -j2 --target fake-mastodon sluice-ingest; } \
      >"$OUT_DIR/build.log" 2>&1 || die "building fake-mastodon failed (see $OUT_DIR/build.log)"
  fi
fi

status=0
node "$HERE/live.test.mjs" || status=$?
exit "$status"
