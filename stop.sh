#!/usr/bin/env bash
# Stops what ./run.sh started: the services (SIGTERM, up to 10 s, then SIGKILL),
# then the private RabbitMQ and PostgreSQL. `--purge` also deletes .state/run
# (databases, queues, logs). With a working Docker engine: `docker compose down`.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$REPO_DIR"

log() { printf '%s\n' "$*"; }
die() { printf 'stop.sh: %s\n' "$*" >&2; exit 1; }
# shellcheck source=scripts/lib.sh
. "$REPO_DIR/scripts/lib.sh"

purge=0
for arg in "$@"; do
  case $arg in
    --purge) purge=1 ;;
    -h | --help) echo "usage: ./stop.sh [--purge]"; exit 0 ;;
    *) die "unknown argument '$arg' (usage: ./stop.sh [--purge])" ;;
  esac
done

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  down=(down)
  if ((purge)); then down+=(--volumes); fi
  if docker compose version >/dev/null 2>&1; then
    docker compose "${down[@]}"
  else
    docker-compose "${down[@]}"
  fi
fi

RUN_DIR=$REPO_DIR/.state/run
# Reverse start order: the api goes before the persister that drains its queue.
SERVICES=(ingest bot sse2 sse api persister)

if [[ -d $RUN_DIR/pids ]]; then
  for name in "${SERVICES[@]}"; do
    pid_file=$RUN_DIR/pids/$name.pid
    [[ -f $pid_file ]] || continue
    pid=$(read_pid "$pid_file")
    if pid_is "$pid" "sluice-${name%2}"; then
      kill_pids "sluice-$name" "$pid"
      log "sluice-$name: stopped (was pid $pid)"
    else
      log "sluice-$name: not running"
    fi
    rm -f "$pid_file"
  done
fi

if [[ -d $RUN_DIR ]]; then
  export SLUICE_STATE_DIR=$RUN_DIR
  # run.sh --cluster: the cluster's nodes (cluster.sh keeps its state in subfolders of RUN_DIR)
  if [[ -d $RUN_DIR/rmq || -d $RUN_DIR/patroni || -d $RUN_DIR/etcd ]]; then
    scripts/cluster.sh stop
  fi
  if [[ -f $RUN_DIR/ports.env ]]; then
    SLUICE_AMQP_PORT=$(sed -n 's/^SLUICE_AMQP_PORT=//p' "$RUN_DIR/ports.env")
    SLUICE_PG_PORT=$(sed -n 's/^SLUICE_PG_PORT=//p' "$RUN_DIR/ports.env")
    export SLUICE_AMQP_PORT SLUICE_PG_PORT
  fi
  scripts/servers.sh stop
else
  log "nothing to stop: no $RUN_DIR"
fi

if ((purge)); then
  rm -rf "$RUN_DIR"
  log "removed $RUN_DIR"
fi
