#!/usr/bin/env bash
# Runs sluice locally.
#
# With a working Docker engine: `docker compose up -d --build`.
# Otherwise: installs the Debian packages, builds into build/, starts private
# RabbitMQ and PostgreSQL (state in .state/run, ports SLUICE_AMQP_PORT=5672 and
# SLUICE_PG_PORT=5433 unless set) and every service binary that was built, in the
# background. Logs: .state/run/logs/<name>.log, PIDs: .state/run/pids/<name>.pid.
# Running it again starts only what is not running. Stop with ./stop.sh.
#
# The bot posts at SLUICE_BOT_RATE messages/s (default 1; SLUICE_BOT_DELAY before the first;
# SLUICE_RUN_BOT=0: no bot). Ingest starts only when SLUICE_MASTODON_URL names an instance.
#
# ./run.sh --cluster runs natively on a cluster instead (scripts/cluster.sh): three RabbitMQ
# nodes, PostgreSQL under Patroni (primary + synchronous standby) with three etcd members, two
# haproxies in front of the primary, and every service given every node; two sse instances
# (8081, 8084). State in .state/run as well (one mode at a time: ./stop.sh to switch).
#
# Each service logs in to RabbitMQ as its own user (sluice-api, -ingest, -persister, -sse, made
# by the scripts with the least permissions it needs; README, "Access control"). The persister
# starts first and declares the topology; api, ingest and sse run with SLUICE_AMQP_DECLARE=passive
# and wait (503 until then) for it.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$REPO_DIR"

log() { printf '%s\n' "$*"; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }
# shellcheck source=scripts/lib.sh
. "$REPO_DIR/scripts/lib.sh"

API_URL=http://127.0.0.1:8080
SSE_URL=http://127.0.0.1:8081
SERVICES=(persister api sse bot ingest)
CLUSTER=0
for arg in "$@"; do
  case $arg in
    --cluster) CLUSTER=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$arg' (usage: ./run.sh [--cluster])" ;;
  esac
done
((CLUSTER)) && SERVICES=(persister api sse sse2 bot ingest)

print_usage_hints() {
  cat <<EOF

sluice API: $API_URL   (readiness: $API_URL/readyz)
streams:    $SSE_URL   (the live page: $SSE_URL/)

  # watch the feed live (Ctrl-C to stop)
  curl -N '$SSE_URL/v1/stream?channels=general'
  # post a message
  curl -X POST -H 'Content-Type: application/json' -d '{"channel":"general","author":"alice","text":"hello"}' $API_URL/v1/messages
  # read a channel's history
  curl '$API_URL/v1/messages?channel=general'

Stop everything with ./stop.sh (./stop.sh --purge also deletes .state/run).
EOF
}

if ((!CLUSTER)) && command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  log "Docker engine found: docker compose up -d --build"
  if docker compose version >/dev/null 2>&1; then
    docker compose up -d --build
  else
    docker-compose up -d --build
  fi
  print_usage_hints
  exit 0
fi

log "No Docker engine: running natively."
scripts/deps.sh
cmake -S "$REPO_DIR" -B "$REPO_DIR/build" -DSLUICE_SANITIZE=OFF >/dev/null
cmake --build "$REPO_DIR/build" -j2

export SLUICE_STATE_DIR=$REPO_DIR/.state/run
RUN_DIR=$SLUICE_STATE_DIR
mode=single
((CLUSTER)) && mode=cluster
if [[ -f $RUN_DIR/mode ]] && [[ $(<"$RUN_DIR/mode") != "$mode" ]] && ls "$RUN_DIR"/pids/*.pid >/dev/null 2>&1; then
  die "sluice already runs in $RUN_DIR as '$(<"$RUN_DIR/mode")': ./stop.sh first"
fi
mkdir -p "$RUN_DIR"
echo "$mode" >"$RUN_DIR/mode"
if ((CLUSTER)); then
  scripts/cluster.sh start
  eval "$(scripts/cluster.sh env)"
fi
# The ports of this instance are kept in ports.env (stop.sh reads them too). If
# its servers are up, keep using their ports.
amqp_port=${SLUICE_AMQP_PORT:-5672}
pg_port=${SLUICE_PG_PORT:-5433}
if [[ -f $RUN_DIR/ports.env ]]; then
  rec_amqp=$(sed -n 's/^SLUICE_AMQP_PORT=//p' "$RUN_DIR/ports.env")
  rec_pg=$(sed -n 's/^SLUICE_PG_PORT=//p' "$RUN_DIR/ports.env")
  st=$(SLUICE_AMQP_PORT=$rec_amqp SLUICE_PG_PORT=$rec_pg scripts/servers.sh status 2>/dev/null || true)
  if [[ $st == *": running"* ]]; then
    if [[ ${SLUICE_AMQP_PORT:-$rec_amqp} != "$rec_amqp" || ${SLUICE_PG_PORT:-$rec_pg} != "$rec_pg" ]]; then
      die "servers in $RUN_DIR already run on ports $rec_amqp/$rec_pg: ./stop.sh first to change ports"
    fi
    amqp_port=$rec_amqp
    pg_port=$rec_pg
  fi
fi
mkdir -p "$RUN_DIR/logs" "$RUN_DIR/pids"
if ((!CLUSTER)); then
  export SLUICE_AMQP_PORT=$amqp_port SLUICE_PG_PORT=$pg_port
  printf 'SLUICE_AMQP_PORT=%s\nSLUICE_PG_PORT=%s\n' "$SLUICE_AMQP_PORT" "$SLUICE_PG_PORT" >"$RUN_DIR/ports.env"
  scripts/servers.sh start
  eval "$(scripts/servers.sh env)"
fi
for var in SLUICE_AMQP_URL_API SLUICE_AMQP_URL_INGEST SLUICE_AMQP_URL_PERSISTER SLUICE_AMQP_URL_SSE; do
  [[ -n ${!var:-} ]] || die "$var is not set by the servers' env: their RabbitMQ users are missing"
done

started=()
have_api=0
n_bins=0
for name in "${SERVICES[@]}"; do
  bin=$REPO_DIR/build/bin/sluice-${name%2}
  [[ -x $bin ]] || continue
  n_bins=$((n_bins + 1))
  if [[ $name == bot && ${SLUICE_RUN_BOT:-1} == 0 ]]; then
    log "sluice-bot: not started (SLUICE_RUN_BOT=0)"
    continue
  fi
  if [[ $name == ingest && -z ${SLUICE_MASTODON_URL:-} ]]; then
    log "sluice-ingest: not started (set SLUICE_MASTODON_URL, and SLUICE_MASTODON_TOKEN, to read a Mastodon instance)"
    continue
  fi
  if [[ $name == api ]]; then have_api=1; fi
  pid_file=$RUN_DIR/pids/$name.pid
  log_file=$RUN_DIR/logs/$name.log
  pid=$(read_pid "$pid_file")
  if pid_is "$pid" "sluice-${name%2}"; then
    log "sluice-$name: already running (pid $pid)"
    continue
  fi
  printf '=== %s starting %s\n' "$(date '+%F %T')" "$bin" >>"$log_file"
  extra=()
  [[ $name == sse2 ]] && extra=(SLUICE_SSE_PORT=8084)
  # Its own RabbitMQ user (the bot speaks HTTP only).
  case ${name%2} in
    persister) extra+=("SLUICE_AMQP_URL=$SLUICE_AMQP_URL_PERSISTER") ;;
    api) extra+=("SLUICE_AMQP_URL=$SLUICE_AMQP_URL_API" SLUICE_AMQP_DECLARE=passive) ;;
    ingest) extra+=("SLUICE_AMQP_URL=$SLUICE_AMQP_URL_INGEST" SLUICE_AMQP_DECLARE=passive) ;;
    sse) extra+=("SLUICE_AMQP_URL=$SLUICE_AMQP_URL_SSE" SLUICE_AMQP_DECLARE=passive) ;;
  esac
  # Not a process group leader, so setsid does not fork: $! is the service.
  setsid env "${extra[@]}" "$bin" </dev/null >>"$log_file" 2>&1 &
  echo $! >"$pid_file"
  started+=("$name")
  log "sluice-$name: started (pid $!, log $log_file)"
done

((n_bins > 0)) || log "No service binaries in build/bin yet: only the servers are running."

# A service that dies right away (bad config, port taken) should fail run.sh.
sleep 0.5
for name in "${started[@]}"; do
  pid=$(read_pid "$RUN_DIR/pids/$name.pid")
  if ! pid_alive "$pid"; then
    tail_file "$RUN_DIR/logs/$name.log" 30
    die "sluice-$name exited right after starting (see $RUN_DIR/logs/$name.log)"
  fi
done

if ((have_api)); then
  t0=$(now_ms)
  deadline=$((SECONDS + 60))
  until [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "$API_URL/readyz" || true) == 200 ]]; do
    pid=$(read_pid "$RUN_DIR/pids/api.pid")
    if ! pid_alive "$pid"; then
      tail_file "$RUN_DIR/logs/api.log" 30
      die "sluice-api exited (see $RUN_DIR/logs/api.log)"
    fi
    if ((SECONDS >= deadline)); then
      tail_file "$RUN_DIR/logs/api.log" 30
      die "$API_URL/readyz did not answer 200 within 60 s"
    fi
    sleep 0.2
  done
  log "sluice-api: ready in $(elapsed "$t0") ($API_URL/readyz answered 200)"
fi
sse_urls=("$SSE_URL")
((CLUSTER)) && sse_urls+=(http://127.0.0.1:8084)
for url in "${sse_urls[@]}"; do
  [[ -x $REPO_DIR/build/bin/sluice-sse ]] || break
  t0=$(now_ms)
  deadline=$((SECONDS + 60))
  until [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url/readyz" || true) == 200 ]]; do
    if ((SECONDS >= deadline)); then
      tail_file "$RUN_DIR/logs/sse.log" 30
      die "$url/readyz did not answer 200 within 60 s"
    fi
    sleep 0.2
  done
  log "sluice-sse: ready in $(elapsed "$t0") ($url/readyz answered 200)"
done

cat <<EOF

RabbitMQ:   $SLUICE_AMQP_URL (guest; each service logs in as its own user)
PostgreSQL: $SLUICE_DB_URL
Logs:       $RUN_DIR/logs/
EOF
if ((CLUSTER)); then
  scripts/cluster.sh status || true
  printf '\nThe cluster survives the death of any one node: see README ("A cluster").\n'
fi
print_usage_hints
