#!/usr/bin/env bash
# The presence benchmark in one command (docs/benchmarks.md, "Presence"): sl_presencebench with
# PB_SUBSCRIBERS subscribers (default 5000) of one channel, half on each of two sse instances,
# entering at PB_RATE per second per instance (2500), PB_REST seconds at rest (10), then a quarter
# leaving, then a kill -9 of one instance. About 25 s.
#
# Starts private RabbitMQ and PostgreSQL (state in SLUICE_STATE_DIR, default /tmp/pb-state; ports
# SLUICE_AMQP_PORT 5754, SLUICE_PG_PORT 5515) unless they already run there, builds
# sl_presencebench (PB_BUILD_DIR, default build), and stops what it started on exit. Extra
# arguments go to sl_presencebench (e.g. --heartbeat-ms=500).
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR"

export SLUICE_STATE_DIR=${SLUICE_STATE_DIR:-/tmp/pb-state}
export SLUICE_AMQP_PORT=${SLUICE_AMQP_PORT:-5754}
export SLUICE_PG_PORT=${SLUICE_PG_PORT:-5515}
BUILD_DIR=${PB_BUILD_DIR:-build}
case $BUILD_DIR in /*) ;; *) BUILD_DIR=$REPO_DIR/$BUILD_DIR ;; esac
SERVERS=$REPO_DIR/scripts/servers.sh

servers_started=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((servers_started)); then "$SERVERS" stop >/dev/null 2>&1 || echo "bench/presence_run.sh: stopping the servers failed" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cmake -S "$REPO_DIR" -B "$BUILD_DIR" >/dev/null
cmake --build "$BUILD_DIR" -j2 --target sl_presencebench >/dev/null
if ! "$SERVERS" status >/dev/null 2>&1; then
  servers_started=1
  "$SERVERS" start
fi
eval "$("$SERVERS" env)"
{ date -u '+%F %T UTC'; uptime; git -C "$REPO_DIR" rev-parse --short HEAD; }
"$BUILD_DIR/bin/sl_presencebench" --subscribers="${PB_SUBSCRIBERS:-5000}" --rate="${PB_RATE:-2500}" \
  --rest-s="${PB_REST:-10}" "$@"
