#!/usr/bin/env bash
# Private RabbitMQ and PostgreSQL 15 servers for development and tests.
#
#   scripts/servers.sh start|stop|status|env
#   scripts/servers.sh start-rabbitmq|stop-rabbitmq|start-postgres|stop-postgres
#   scripts/servers.sh rabbitmqctl ARGS...   # rabbitmqctl against this instance
#   scripts/servers.sh psql ARGS...          # psql on database sluice of this instance
#   scripts/servers.sh --cluster start|stop|status|env|...  # the native cluster: scripts/cluster.sh
#
# With --cluster, or SLUICE_CLUSTER=1 in the environment (which `cluster.sh env` exports), every
# subcommand goes to scripts/cluster.sh (three RabbitMQ nodes, Patroni + etcd, haproxy; state in
# ${SLUICE_STATE_DIR:-<repo>/.state/cluster}, ports from SLUICE_CLUSTER_PORT_BASE).
#
# Everything lives in ${SLUICE_STATE_DIR:-<repo>/.state/dev}; both servers listen
# on 127.0.0.1 only. Ports: SLUICE_AMQP_PORT (default 5672), SLUICE_PG_PORT
# (default 5433). From the AMQP port P follow the RabbitMQ node name
# sluice<P>@localhost, the Erlang distribution port P+20000 and a private epmd on
# port P-1000, so instances with different state dirs and ports run side by side.
#
#   eval "$(scripts/servers.sh env)"   # exports SLUICE_AMQP_URL and SLUICE_DB_URL
#
# RabbitMQ users: guest (every right, loopback only; SLUICE_AMQP_URL, for tests and tools) and one
# user per service with the least permissions it needs (scripts/amqp_users.sh), made or updated
# by every start once the node is up; their random passwords are made once per state dir and kept
# in <state dir>/rabbitmq/amqp-users.env (0600). `env` also exports SLUICE_AMQP_URL_API, _INGEST,
# _PERSISTER and _SSE, each naming the service's own user (once that file exists).
#
# `status` exits 0 when both servers run and 3 otherwise.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SCRIPT_DIR")

STATE_DIR=${SLUICE_STATE_DIR:-$REPO_DIR/.state/dev}
case $STATE_DIR in
  /*) ;;
  *) STATE_DIR=$PWD/$STATE_DIR ;;
esac
AMQP_PORT=${SLUICE_AMQP_PORT:-5672}
PG_PORT=${SLUICE_PG_PORT:-5433}

RMQ_BIN=/usr/lib/rabbitmq/bin
PG_BIN=/usr/lib/postgresql/15/bin

RMQ_DIR=$STATE_DIR/rabbitmq
RMQ_HOME=$RMQ_DIR/home
RMQ_CONF=$RMQ_DIR/rabbitmq.conf
RMQ_PID_FILE=$RMQ_DIR/rabbitmq.pid        # beam.smp, written by RabbitMQ
RMQ_WRAPPER_PID_FILE=$RMQ_DIR/server.pid  # the rabbitmq-server shell (session leader)
RMQ_OUT=$RMQ_DIR/server.out               # stdout/stderr of rabbitmq-server
RMQ_LOG=$RMQ_DIR/log/rabbit.log           # RabbitMQ's own log
EPMD_PID_FILE=$RMQ_DIR/epmd.pid
EPMD_LOG=$RMQ_DIR/epmd.log

PG_DATA=$STATE_DIR/pg
PG_SOCK=$STATE_DIR/pgsock
PG_LOG=$STATE_DIR/postgres.log
PG_DB=sluice

log() { printf '%s\n' "$*"; }
die() { printf 'servers.sh: %s\n' "$*" >&2; exit 1; }
# shellcheck source=lib.sh
. "$SCRIPT_DIR/lib.sh"
# shellcheck source=amqp_users.sh
. "$SCRIPT_DIR/amqp_users.sh"
AMQP_USERS_FILE=$(amqp_users_file "$STATE_DIR/rabbitmq")

check_config() {
  local p
  for p in "$AMQP_PORT" "$PG_PORT"; do
    [[ $p =~ ^[0-9]+$ ]] || die "port '$p' is not a number"
  done
  ((AMQP_PORT - 1000 >= 1024 && AMQP_PORT + 20000 <= 65535)) ||
    die "SLUICE_AMQP_PORT=$AMQP_PORT: need 2024..45535 (epmd on port-1000, distribution on port+20000)"
  ((PG_PORT >= 1024 && PG_PORT <= 65535)) || die "SLUICE_PG_PORT=$PG_PORT out of range"
  ((AMQP_PORT != PG_PORT)) || die "SLUICE_AMQP_PORT and SLUICE_PG_PORT are both $PG_PORT"
  [[ $STATE_DIR != *[[:space:]]* ]] || die "SLUICE_STATE_DIR must not contain whitespace: '$STATE_DIR'"
}

NODENAME=sluice${AMQP_PORT}@localhost
EPMD_PORT=$((AMQP_PORT - 1000))
DIST_PORT=$((AMQP_PORT + 20000))

# The environment of every RabbitMQ / Erlang command for this instance.
RABBIT_ENV=(
  "HOME=$RMQ_HOME"
  "LANG=C.UTF-8"
  "LC_ALL=C.UTF-8"
  "ERL_EPMD_PORT=$EPMD_PORT"
  "ERL_EPMD_ADDRESS=127.0.0.1"
  "RABBITMQ_NODENAME=$NODENAME"
  "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1"
  "RABBITMQ_NODE_PORT=$AMQP_PORT"
  "RABBITMQ_DIST_PORT=$DIST_PORT"
  "RABBITMQ_BASE=$RMQ_DIR"
  "RABBITMQ_MNESIA_BASE=$RMQ_DIR/mnesia"
  "RABBITMQ_LOG_BASE=$RMQ_DIR/log"
  "RABBITMQ_PID_FILE=$RMQ_PID_FILE"
  "RABBITMQ_CONFIG_FILE=$RMQ_CONF"
  "RABBITMQ_ADVANCED_CONFIG_FILE=$RMQ_DIR/advanced.config"
  "RABBITMQ_ENABLED_PLUGINS_FILE=$RMQ_DIR/enabled_plugins"
  "RABBITMQ_CONF_ENV_FILE=$RMQ_DIR/rabbitmq-env.conf"
  "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}"
)

# --- RabbitMQ ---

rabbit_pid() {
  local p
  p=$(read_pid "$RMQ_PID_FILE")
  if pid_is "$p" beam; then echo "$p"; fi
}

epmd_pid() {
  local p
  p=$(read_pid "$EPMD_PID_FILE")
  if pid_is "$p" epmd; then echo "$p"; fi
}

rabbitmqctl_() { env "${RABBIT_ENV[@]}" "$RMQ_BIN/rabbitmqctl" "$@"; }

rabbit_prepare() {
  mkdir -p "$RMQ_HOME" "$RMQ_DIR/mnesia" "$RMQ_DIR/log"
  cat >"$RMQ_CONF" <<EOF
# Written by scripts/servers.sh; rewritten on every start.
loopback_users.guest = true
disk_free_limit.absolute = 50MB
log.file = $RMQ_LOG
log.file.level = info
log.console = false
EOF
  [[ -f $RMQ_DIR/enabled_plugins ]] || echo '[].' >"$RMQ_DIR/enabled_plugins"
  : >"$RMQ_DIR/rabbitmq-env.conf"
  # One cookie for the server and every rabbitmqctl call, written before either
  # starts so that they cannot race to create different ones.
  if [[ ! -s $RMQ_HOME/.erlang.cookie ]]; then
    (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$RMQ_HOME/.erlang.cookie")
    chmod 400 "$RMQ_HOME/.erlang.cookie"
  fi
}

# Our own epmd, so that it can be stopped by PID (Erlang's auto-started one
# daemonizes and would linger). rabbitmqctl starts an epmd itself when none
# listens on ERL_EPMD_PORT, so this must run before any rabbitmqctl call.
ensure_epmd() {
  [[ -n $(epmd_pid) ]] && return 0
  port_in_use "$EPMD_PORT" && die "port $EPMD_PORT (epmd for AMQP port $AMQP_PORT) is used by another process"
  mkdir -p "$RMQ_DIR"
  local epmd
  epmd=$(command -v epmd) || die "epmd not found (is rabbitmq-server installed? run scripts/deps.sh)"
  ERL_EPMD_PORT=$EPMD_PORT ERL_EPMD_ADDRESS=127.0.0.1 \
    setsid "$epmd" -port "$EPMD_PORT" -address 127.0.0.1 </dev/null >>"$EPMD_LOG" 2>&1 &
  echo $! >"$EPMD_PID_FILE"
  local deadline=$((SECONDS + 10))
  until port_in_use "$EPMD_PORT"; do
    pid_alive "$!" || { tail_file "$EPMD_LOG"; die "epmd on port $EPMD_PORT exited"; }
    ((SECONDS < deadline)) || die "epmd did not listen on port $EPMD_PORT within 10 s"
    sleep 0.05
  done
}

stop_epmd() {
  local p
  p=$(epmd_pid)
  [[ -n $p ]] && kill_pids epmd "$p"
  rm -f "$EPMD_PID_FILE"
}

start_rabbitmq() {
  local p
  p=$(rabbit_pid)
  if [[ -n $p ]]; then
    log "rabbitmq: already running (node $NODENAME, pid $p, amqp 127.0.0.1:$AMQP_PORT)"
    ensure_users
    return 0
  fi
  if ! command -v epmd >/dev/null || [[ ! -x $RMQ_BIN/rabbitmq-server ]]; then
    die "rabbitmq-server is not installed: run scripts/deps.sh"
  fi
  # Leftovers of an earlier run that died (e.g. only epmd still up).
  stop_rabbitmq_quiet
  local port
  for port in "$AMQP_PORT" "$DIST_PORT"; do
    port_in_use "$port" && die "rabbitmq: port $port is already in use by another process"
  done
  rabbit_prepare
  rm -f "$RMQ_PID_FILE"
  ensure_epmd

  local t0 wrapper waiter
  t0=$(now_ms)
  printf '=== %s starting rabbitmq-server\n' "$(date '+%F %T')" >>"$RMQ_OUT"
  (cd "$RMQ_DIR" && exec setsid nohup env "${RABBIT_ENV[@]}" "$RMQ_BIN/rabbitmq-server" \
    </dev/null >>"$RMQ_OUT" 2>&1) &
  wrapper=$!
  echo "$wrapper" >"$RMQ_WRAPPER_PID_FILE"

  rabbitmqctl_ --timeout 60 wait "$RMQ_PID_FILE" >>"$RMQ_OUT" 2>&1 &
  waiter=$!
  local deadline=$((SECONDS + 75)) ok=0
  while :; do
    if ! pid_alive "$waiter"; then
      wait "$waiter" && ok=1
      break
    fi
    if ! pid_alive "$wrapper"; then
      log "rabbitmq: rabbitmq-server exited during startup" >&2
      kill "$waiter" 2>/dev/null || true
      break
    fi
    if ((SECONDS >= deadline)); then
      log "rabbitmq: not ready after 75 s" >&2
      kill "$waiter" 2>/dev/null || true
      break
    fi
    sleep 0.1
  done
  wait "$waiter" 2>/dev/null || true
  if ((!ok)) || [[ -z $(rabbit_pid) ]]; then
    tail_file "$RMQ_OUT" 30
    tail_file "$RMQ_LOG" 30
    stop_rabbitmq_quiet
    die "rabbitmq did not start (state in $RMQ_DIR)"
  fi
  log "rabbitmq: ready in $(elapsed "$t0") (node $NODENAME, pid $(rabbit_pid), amqp 127.0.0.1:$AMQP_PORT, epmd $EPMD_PORT, dist $DIST_PORT)"
  ensure_users
}

# The services' users (scripts/amqp_users.sh), on the running node.
ensure_users() {
  local t0
  t0=$(now_ms)
  ensure_epmd
  amqp_users_apply "$AMQP_USERS_FILE" rabbitmqctl_ >>"$RMQ_OUT" 2>&1 ||
    { tail_file "$RMQ_OUT" 10; die "rabbitmq: could not create the services' users"; }
  log "rabbitmq: service users (${AMQP_USERS[*]}) ready in $(elapsed "$t0") (passwords in $AMQP_USERS_FILE)"
}

# Stop the node and make sure nothing it or we started stays up.
stop_rabbitmq_quiet() {
  local p wrapper tree
  p=$(rabbit_pid)
  wrapper=$(read_pid "$RMQ_WRAPPER_PID_FILE")
  # Remember the whole tree now: once beam exits its helpers are reparented.
  mapfile -t tree < <(tree_pids "$wrapper")
  if [[ -n $p ]]; then
    ensure_epmd
    # `stop PIDFILE` returns once the beam process has exited (its parent, the
    # rabbitmq-server shell, reaps it); bounded in case it hangs.
    if ! timeout 60 env "${RABBIT_ENV[@]}" "$RMQ_BIN/rabbitmqctl" stop "$RMQ_PID_FILE" >>"$RMQ_OUT" 2>&1; then
      log "rabbitmq: 'rabbitmqctl stop' failed; killing pid $p"
    fi
    kill_pids rabbitmq "$p"
  fi
  # Anything left of the server's tree (the shell, erl_child_setup, inet_gethost).
  ((${#tree[@]} == 0)) || kill_pids rabbitmq-helpers "${tree[@]}"
  stop_epmd
  rm -f "$RMQ_PID_FILE" "$RMQ_WRAPPER_PID_FILE"
}

stop_rabbitmq() {
  local p
  p=$(rabbit_pid)
  if [[ -z $p && -z $(epmd_pid) ]]; then
    log "rabbitmq: not running"
    stop_rabbitmq_quiet
    return 0
  fi
  local t0
  t0=$(now_ms)
  stop_rabbitmq_quiet
  log "rabbitmq: stopped in $(elapsed "$t0")${p:+ (was pid $p)}"
}

status_rabbitmq() {
  local p
  p=$(rabbit_pid)
  if [[ -n $p ]]; then
    if port_in_use "$AMQP_PORT"; then
      log "rabbitmq: running (node $NODENAME, pid $p, amqp 127.0.0.1:$AMQP_PORT, state $RMQ_DIR)"
    else
      log "rabbitmq: starting or unhealthy (pid $p, amqp port $AMQP_PORT not listening)"
      return 1
    fi
  else
    log "rabbitmq: stopped (node $NODENAME, state $RMQ_DIR)"
    return 1
  fi
}

# --- PostgreSQL ---

pg_pid() {
  local p
  p=$(read_pid "$PG_DATA/postmaster.pid")
  if pid_is "$p" postgres; then echo "$p"; fi
}

as_postgres() { (cd / && runuser -u postgres -- "$@"); }

psql_() { "$PG_BIN/psql" -X -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }

start_postgres() {
  local p
  p=$(pg_pid)
  if [[ -n $p ]]; then
    log "postgres: already running (pid $p, 127.0.0.1:$PG_PORT, database $PG_DB)"
    return 0
  fi
  [[ -x $PG_BIN/pg_ctl ]] || die "PostgreSQL 15 is not installed: run scripts/deps.sh"
  port_in_use "$PG_PORT" && die "postgres: port $PG_PORT is already in use by another process"
  mkdir -p "$STATE_DIR"
  # PostgreSQL runs as user postgres, which must be able to enter the state dir
  # (mktemp -d makes it 0700).
  as_postgres test -x "$STATE_DIR" || chmod a+x "$STATE_DIR"
  as_postgres test -x "$STATE_DIR" ||
    die "user postgres cannot enter $STATE_DIR (make it and its parents world-searchable, e.g. chmod o+x)"

  if [[ ! -f $PG_DATA/PG_VERSION ]]; then
    local ti
    ti=$(now_ms)
    rm -rf "$PG_DATA"
    install -d -o postgres -g postgres -m 700 "$PG_DATA"
    if ! as_postgres "$PG_BIN/initdb" -D "$PG_DATA" --auth=trust -U postgres \
      --encoding=UTF8 --no-locale >"$STATE_DIR/initdb.log" 2>&1; then
      tail_file "$STATE_DIR/initdb.log"
      die "initdb failed"
    fi
    log "postgres: initdb in $(elapsed "$ti")"
  fi
  install -d -o postgres -g postgres -m 700 "$PG_SOCK"
  touch "$PG_LOG"
  chown postgres:postgres "$PG_LOG"

  local t0
  t0=$(now_ms)
  # A write-heavy server's settings: checkpoints by time rather than every 1 GB of WAL (each one
  # ends in a burst of data-file flushes that stalls commits behind it), full-page images
  # compressed, and a buffer pool that holds the working set of the tests and the bench.
  if ! as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=$PG_SOCK -c max_connections=200 \
        -c shared_buffers=512MB -c max_wal_size=4GB -c checkpoint_timeout=10min -c wal_compression=lz4" \
    start >/dev/null; then
    tail_file "$PG_LOG"
    die "postgres did not start (data in $PG_DATA)"
  fi
  local ready
  ready=$(elapsed "$t0")
  if [[ $(psql_ -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'") != 1 ]]; then
    psql_ -d postgres -q -c "CREATE DATABASE $PG_DB" || die "could not create database $PG_DB"
    log "postgres: created database $PG_DB"
  fi
  log "postgres: ready in $ready (pid $(pg_pid), 127.0.0.1:$PG_PORT, database $PG_DB)"
}

stop_postgres() {
  local p
  p=$(pg_pid)
  if [[ -z $p ]]; then
    log "postgres: not running"
    return 0
  fi
  local t0
  t0=$(now_ms)
  if ! as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -w -t 60 stop -m fast >/dev/null; then
    log "postgres: pg_ctl stop failed; killing pid $p"
  fi
  # pg_ctl returns once postmaster.pid is gone; make sure the process is too.
  kill_pids postgres "$p"
  log "postgres: stopped in $(elapsed "$t0") (was pid $p)"
}

status_postgres() {
  local p
  p=$(pg_pid)
  if [[ -n $p ]]; then
    log "postgres: running (pid $p, 127.0.0.1:$PG_PORT, database $PG_DB, data $PG_DATA)"
  else
    log "postgres: stopped (data $PG_DATA)"
    return 1
  fi
}

print_env() {
  echo "export SLUICE_AMQP_URL=amqp://guest:guest@127.0.0.1:$AMQP_PORT/"
  amqp_users_env "$AMQP_USERS_FILE" "127.0.0.1:$AMQP_PORT"
  echo "export SLUICE_DB_URL=postgresql://postgres@127.0.0.1:$PG_PORT/$PG_DB"
}

usage() {
  cat >&2 <<'EOF'
usage: scripts/servers.sh {start|stop|status|env|start-rabbitmq|stop-rabbitmq|start-postgres|stop-postgres}
       scripts/servers.sh rabbitmqctl ARGS...
       scripts/servers.sh psql ARGS...
       scripts/servers.sh --cluster ARGS...   (or SLUICE_CLUSTER=1): scripts/cluster.sh ARGS...
env: SLUICE_STATE_DIR (default <repo>/.state/dev), SLUICE_AMQP_PORT (5672), SLUICE_PG_PORT (5433)
EOF
  exit 2
}

main() {
  if [[ ${1:-} == --cluster ]]; then
    shift
    exec "$SCRIPT_DIR/cluster.sh" "$@"
  fi
  [[ ${SLUICE_CLUSTER:-0} != 1 ]] || exec "$SCRIPT_DIR/cluster.sh" "$@"
  (($# >= 1)) || usage
  local cmd=$1
  shift
  check_config
  case $cmd in
    start)
      # Refuse early when a port we are about to listen on is taken.
      local port
      if [[ -z $(rabbit_pid) ]]; then
        for port in "$AMQP_PORT" "$DIST_PORT"; do
          port_in_use "$port" && die "rabbitmq: port $port is already in use by another process"
        done
        if [[ -z $(epmd_pid) ]] && port_in_use "$EPMD_PORT"; then
          die "rabbitmq: epmd port $EPMD_PORT is already in use by another process"
        fi
      fi
      if [[ -z $(pg_pid) ]] && port_in_use "$PG_PORT"; then
        die "postgres: port $PG_PORT is already in use by another process"
      fi
      mkdir -p "$STATE_DIR"
      start_rabbitmq
      start_postgres
      ;;
    stop)
      local rc=0
      stop_rabbitmq || rc=1
      stop_postgres || rc=1
      return "$rc"
      ;;
    status)
      local rc=0
      status_rabbitmq || rc=3
      status_postgres || rc=3
      return "$rc"
      ;;
    env) print_env ;;
    start-rabbitmq) start_rabbitmq ;;
    stop-rabbitmq) stop_rabbitmq ;;
    start-postgres) start_postgres ;;
    stop-postgres) stop_postgres ;;
    rabbitmqctl)
      # rabbitmqctl starts an epmd of its own when none listens on our port;
      # keep ours for the call and end it again if the node is not running.
      local rc=0 had_epmd
      had_epmd=$(epmd_pid)
      ensure_epmd
      rabbitmqctl_ "$@" || rc=$?
      [[ -n $had_epmd || -n $(rabbit_pid) ]] || stop_epmd
      return "$rc"
      ;;
    psql) exec "$PG_BIN/psql" -X -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$PG_DB" "$@" ;;
    -h | --help | help) usage ;;
    *) usage ;;
  esac
}

main "$@"
