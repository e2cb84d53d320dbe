#!/usr/bin/env bash
# A native cluster on 127.0.0.1 for development and chaos tests: three RabbitMQ nodes in one
# cluster, three etcd members, two PostgreSQL 15 nodes under Patroni (synchronous_mode) and two
# haproxy processes that route to whichever PostgreSQL node Patroni calls primary.
#
#   scripts/cluster.sh start|stop|status|env|purge
#   scripts/cluster.sh pid NAME          # PID of r1..r3 (beam.smp), etcd1..3, pg1|pg2 (Patroni),
#                                        # pg1-postmaster|pg2-postmaster, haproxy1|haproxy2, epmd
#   scripts/cluster.sh role-of ROLE      # queue-leader|queue-follower|primary|standby|etcd-leader
#   scripts/cluster.sh start-node NAME   # restart one killed component (same config and data)
#   scripts/cluster.sh rabbitmqctl [r1|r2|r3] ARGS...  # default: the first node that runs
#   scripts/cluster.sh psql ARGS...      # database sluice through the haproxies, read-write
#
#   eval "$(scripts/cluster.sh env)"     # SLUICE_AMQP_URL (3 URLs), SLUICE_DB_URL, SLUICE_CLUSTER=1,
#                                        # SLUICE_AMQP_URL_API, _INGEST, _PERSISTER, _SSE (3 URLs each)
#
# RabbitMQ users: guest (every right; SLUICE_AMQP_URL) and one user per service with the least
# permissions it needs (scripts/amqp_users.sh), made or updated by every start once the cluster
# has formed (users are cluster-wide); their passwords are made once and kept in
# <state dir>/rmq/amqp-users.env (0600), removed by purge with the nodes' data.
#
# State lives in ${SLUICE_STATE_DIR:-<repo>/.state/cluster} (subdirs rmq, etcd, patroni,
# haproxy, so it does not clash with servers.sh's files if both share a dir). Every port
# follows from SLUICE_CLUSTER_PORT_BASE=B (default 6200, clear of servers.sh's 5672/5433 and
# the test servers' 5682/5443 ... 6082/5843):
#   B+1..B+3    AMQP of r1..r3            B+10        our epmd
#   B+11..B+13  Erlang distribution r1..r3   B+20..B+29  rabbitmqctl's own distribution port
#   B+41, B+42  PostgreSQL pg1, pg2       B+51, B+52  Patroni REST pg1, pg2
#   B+61/62, B+63/64, B+65/66  etcd1..3 client/peer
#   B+71, B+72  haproxy1, haproxy2 (TCP to the node whose Patroni answers 200 on /primary)
# (all on 127.0.0.1; the RabbitMQ node names r1..r3@localhost are the same for every base: each
# cluster has its own epmd.)
#
# Contracts: everything is started with setsid and stopped by PID (graceful, bounded, then
# SIGKILL); nothing is found by name. Patroni runs under a small subreaper (python3, see
# REAPER_PY): Patroni detaches each postmaster to PID 1, which on our machines is not a reliable
# reaper (zombies were seen to linger), and a killed postmaster kept as a zombie would still
# answer kill -0 to Patroni's and the next postmaster's postmaster.pid checks. Under the reaper a
# node's processes are reaped promptly and stay findable as its descendants.
# `status` exits 0 when every component is up and healthy, 3 otherwise.
#
# Patroni timing: ttl 10, loop_wait 2, retry_timeout 4 (Patroni wants loop_wait + 2 *
# retry_timeout <= ttl; SLUICE_PATRONI_TTL/_LOOP_WAIT/_RETRY_TIMEOUT override them). Measured
# here: a whole-node or Patroni-alone kill of the primary costs 10-11 s of writes. With 6/1/2 it
# was 6-7 s, but killing the etcd leader (a new one after 3-4 s: election timeout 2 s) then
# demoted the primary ("DCS is not accessible") and writes failed; with retry_timeout 4 they went
# on without a gap. A dead primary node is replaced after at most ttl + loop_wait + promote;
# haproxy marks a node down 2 s (inter 1s fall 2) after its /primary stops answering 200 and cuts
# its sessions then. The DCS settings (ttl, synchronous_mode, max_connections...) are written to
# etcd at bootstrap only: change them later with patronictl edit-config, or `purge` and start.
#
# Patroni talks to etcd's v2 API (`etcd:`, etcd started with --enable-v2), not v3 (`etcd3:`).
# With Patroni 3.0.2's etcd3 code the leader key stays tied to the lease of the Patroni process
# that made it; a Patroni restarted on the primary ("I am the leader but not owner of the
# lease"), then stopped past the ttl, wrote the key back to itself on resuming although the
# standby had taken it and promoted. The standby was then demoted and rewound, and the commits it
# had acknowledged as primary were lost (seen in chaos.sh --cluster: patroni-kill, then
# pg-pause). The v2 code updates the key with a compare-and-swap on its value and TTL, so a
# primary that resumes after losing the key finds it taken and demotes itself.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SCRIPT_DIR")

STATE_DIR=${SLUICE_STATE_DIR:-$REPO_DIR/.state/cluster}
case $STATE_DIR in
  /*) ;;
  *) STATE_DIR=$PWD/$STATE_DIR ;;
esac
BASE=${SLUICE_CLUSTER_PORT_BASE:-6200}

RMQ_BIN=/usr/lib/rabbitmq/bin
PG_BIN=/usr/lib/postgresql/15/bin
PY=/usr/bin/python3 # the system python that Patroni runs on (not a pyenv shim)
PG_DB=sluice
QUEUE=sluice.persist

# Patroni's DCS timing (see the header); overridable to measure, read at bootstrap only.
TTL=${SLUICE_PATRONI_TTL:-10}
LOOP_WAIT=${SLUICE_PATRONI_LOOP_WAIT:-2}
RETRY_TIMEOUT=${SLUICE_PATRONI_RETRY_TIMEOUT:-4}

RMQ_DIR=$STATE_DIR/rmq
RMQ_HOME=$RMQ_DIR/home
AMQP_USERS_FILE=$RMQ_DIR/amqp-users.env # the services' passwords (scripts/amqp_users.sh)
EPMD_PID_FILE=$RMQ_DIR/epmd.pid
ETCD_DIR=$STATE_DIR/etcd
PAT_DIR=$STATE_DIR/patroni
HAP_DIR=$STATE_DIR/haproxy

log() { printf '%s\n' "$*"; }
die() { printf 'cluster.sh: %s\n' "$*" >&2; exit 1; }
# shellcheck source=lib.sh
. "$SCRIPT_DIR/lib.sh"
# shellcheck source=amqp_users.sh
. "$SCRIPT_DIR/amqp_users.sh"

check_config() {
  [[ $BASE =~ ^[0-9]+$ ]] || die "SLUICE_CLUSTER_PORT_BASE '$BASE' is not a number"
  ((BASE >= 1024 && BASE + 80 <= 65535)) || die "SLUICE_CLUSTER_PORT_BASE=$BASE: need 1024..65455"
  [[ $STATE_DIR != *[[:space:]]* ]] || die "SLUICE_STATE_DIR must not contain whitespace: '$STATE_DIR'"
  [[ $TTL =~ ^[0-9]+$ && $LOOP_WAIT =~ ^[0-9]+$ && $RETRY_TIMEOUT =~ ^[0-9]+$ ]] ||
    die "SLUICE_PATRONI_TTL/LOOP_WAIT/RETRY_TIMEOUT must be whole seconds"
  ((LOOP_WAIT + 2 * RETRY_TIMEOUT <= TTL)) ||
    die "Patroni needs loop_wait + 2 * retry_timeout <= ttl (got $LOOP_WAIT + 2 * $RETRY_TIMEOUT > $TTL)"
}

EPMD_PORT=$((BASE + 10))
amqp_port() { echo $((BASE + $1)); }
dist_port() { echo $((BASE + 10 + $1)); }
pg_port() { echo $((BASE + 40 + $1)); }
rest_port() { echo $((BASE + 50 + $1)); }
etcd_client_port() { echo $((BASE + 59 + 2 * $1)); }
etcd_peer_port() { echo $((BASE + 60 + 2 * $1)); }
hap_port() { echo $((BASE + 70 + $1)); }

# Parallel launches write into one stdout; a line is one write.
say() { printf '%-9s %s\n' "$1:" "${*:2}"; }

# curl_code URL: the HTTP status, 000 when nothing answers within 2 s.
curl_code() { curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true; }

# ---------------------------------------------------------------- RabbitMQ

# rmq_env N: the environment of node rN and of every rabbitmqctl aimed at it, in RENV.
rmq_env() {
  local d=$RMQ_DIR/r$1
  RENV=(
    "HOME=$RMQ_HOME" "LANG=C.UTF-8" "LC_ALL=C.UTF-8"
    "ERL_EPMD_PORT=$EPMD_PORT" "ERL_EPMD_ADDRESS=127.0.0.1"
    "RABBITMQ_NODENAME=r$1@localhost"
    "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1"
    "RABBITMQ_NODE_PORT=$(amqp_port "$1")"
    "RABBITMQ_DIST_PORT=$(dist_port "$1")"
    "RABBITMQ_CTL_DIST_PORT_MIN=$((BASE + 20))"
    "RABBITMQ_CTL_DIST_PORT_MAX=$((BASE + 29))"
    "RABBITMQ_BASE=$d"
    "RABBITMQ_MNESIA_BASE=$d/mnesia"
    "RABBITMQ_LOG_BASE=$d/log"
    "RABBITMQ_PID_FILE=$d/beam.pid"
    "RABBITMQ_CONFIG_FILE=$d/rabbitmq.conf"
    "RABBITMQ_ADVANCED_CONFIG_FILE=$d/advanced.config"
    "RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins"
    "RABBITMQ_CONF_ENV_FILE=$d/rabbitmq-env.conf"
    "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}"
  )
}

# rmqctl N ARGS...: rabbitmqctl against node rN (our epmd must be up).
rmqctl() {
  local n=$1
  shift
  rmq_env "$n"
  env "${RENV[@]}" "$RMQ_BIN/rabbitmqctl" -n "r$n@localhost" "$@"
}

rmq_pid() {
  local p
  p=$(read_pid "$RMQ_DIR/r$1/beam.pid")
  if pid_is "$p" beam; then echo "$p"; fi
}

epmd_pid() {
  local p
  p=$(read_pid "$EPMD_PID_FILE")
  if pid_is "$p" epmd; then echo "$p"; fi
}

# Our own epmd, stopped by PID (Erlang's auto-started one daemonizes and lingers). rabbitmqctl
# starts one itself when none listens on ERL_EPMD_PORT: call this before any rabbitmqctl.
ensure_epmd() {
  [[ -n $(epmd_pid) ]] && return 0
  port_in_use "$EPMD_PORT" && die "epmd: port $EPMD_PORT is used by another process"
  mkdir -p "$RMQ_DIR"
  local epmd p deadline=$((SECONDS + 10))
  epmd=$(command -v epmd) || die "epmd not found (is rabbitmq-server installed? run scripts/deps.sh)"
  ERL_EPMD_PORT=$EPMD_PORT ERL_EPMD_ADDRESS=127.0.0.1 \
    setsid "$epmd" -port "$EPMD_PORT" -address 127.0.0.1 </dev/null >>"$RMQ_DIR/epmd.log" 2>&1 &
  p=$!
  echo "$p" >"$EPMD_PID_FILE"
  until port_in_use "$EPMD_PORT"; do
    pid_alive "$p" || { tail_file "$RMQ_DIR/epmd.log"; die "epmd on port $EPMD_PORT exited"; }
    ((SECONDS < deadline)) || die "epmd did not listen on port $EPMD_PORT within 10 s"
    sleep 0.05
  done
}

rmq_prepare() {
  local n=$1 d=$RMQ_DIR/r$1
  mkdir -p "$RMQ_HOME" "$d/mnesia" "$d/log"
  cat >"$d/rabbitmq.conf" <<EOF
# Written by scripts/cluster.sh; rewritten on every start.
loopback_users.guest = true
disk_free_limit.absolute = 50MB
log.file = $d/log/rabbit.log
log.file.level = info
log.console = false
cluster_formation.peer_discovery_backend = classic_config
cluster_formation.classic_config.nodes.1 = r1@localhost
cluster_formation.classic_config.nodes.2 = r2@localhost
cluster_formation.classic_config.nodes.3 = r3@localhost
EOF
  [[ -f $d/enabled_plugins ]] || echo '[].' >"$d/enabled_plugins"
  : >"$d/rabbitmq-env.conf"
  # One cookie for all nodes and every rabbitmqctl, written before any of them starts.
  if [[ ! -s $RMQ_HOME/.erlang.cookie ]]; then
    (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$RMQ_HOME/.erlang.cookie")
    chmod 400 "$RMQ_HOME/.erlang.cookie"
  fi
}

# rmq_launch N: starts node rN without waiting (a no-op when it runs).
rmq_launch() {
  local n=$1 d=$RMQ_DIR/r$1 port
  [[ -n $(rmq_pid "$n") ]] && { say "r$n" "already running (pid $(rmq_pid "$n"))"; return 0; }
  rmq_kill_leftovers "$n"
  for port in "$(amqp_port "$n")" "$(dist_port "$n")"; do
    port_in_use "$port" && die "r$n: port $port is already in use by another process"
  done
  rmq_prepare "$n"
  rm -f "$d/beam.pid"
  rmq_env "$n"
  printf '=== %s starting rabbitmq-server\n' "$(date '+%F %T')" >>"$d/server.out"
  (cd "$d" && exec setsid nohup env "${RENV[@]}" "$RMQ_BIN/rabbitmq-server" \
    </dev/null >>"$d/server.out" 2>&1) &
  echo $! >"$d/server.pid"
}

# rmq_wait_node N SECONDS: 0 once rN has fully booted.
rmq_wait_node() {
  local n=$1 d=$RMQ_DIR/r$1 waiter deadline=$((SECONDS + $2)) wrapper
  wrapper=$(read_pid "$d/server.pid")
  rmqctl "$n" --timeout "$2" wait "$d/beam.pid" >>"$d/server.out" 2>&1 &
  waiter=$!
  while pid_alive "$waiter"; do
    if ! pid_alive "$wrapper" || ((SECONDS >= deadline)); then
      kill "$waiter" 2>/dev/null || true
      wait "$waiter" 2>/dev/null || true
      return 1
    fi
    sleep 0.2
  done
  wait "$waiter" && [[ -n $(rmq_pid "$n") ]]
}

# rmq_running_nodes N: the running cluster members as seen by rN, one per line.
rmq_running_nodes() {
  rmqctl "$1" --timeout 10 -q cluster_status --formatter json 2>/dev/null |
    grep -o '"running_nodes":\[[^]]*\]' | grep -o 'r[0-9]@localhost' || true
}

# rmq_queue_info N: "LEADER MEMBER..." of the quorum queue sluice.persist as seen by rN
# ("none" when it does not exist, empty when rN does not answer).
rmq_queue_info() {
  local out line
  out=$(rmqctl "$1" --timeout 10 -q list_queues --no-table-headers name type leader members 2>/dev/null) || return 0
  line=$(awk -v q="$QUEUE" '$1 == q' <<<"$out")
  if [[ -z $line ]]; then echo none; return 0; fi
  [[ $line == *quorum* ]] || { echo "classic"; return 0; }
  # name type leader [m1, m2, m3]
  tr -d '[],' <<<"$line" | awk '{ $1 = ""; $2 = ""; print }' | sed 's/^ *//'
}

rmq_live_node() { # the first rN whose beam runs
  local n
  for n in 1 2 3; do [[ -n $(rmq_pid "$n") ]] && { echo "$n"; return 0; }; done
  return 1
}

# Kills whatever is left of rN's process tree (after a SIGKILL of beam, or a failed start).
rmq_kill_leftovers() {
  local tree
  mapfile -t tree < <(rmq_tree "$1")
  ((${#tree[@]} == 0)) || kill_pids "r$1-leftovers" "${tree[@]}"
}

# rmq_tree N: the rabbitmq-server shell of rN and its live descendants (none when the recorded
# PID is no longer that shell).
rmq_tree() {
  local w
  w=$(read_pid "$RMQ_DIR/r$1/server.pid")
  pid_is "$w" rabbitmq-server || return 0
  tree_pids "$w"
}

rmq_stop_node() {
  local n=$1 d=$RMQ_DIR/r$1 p tree
  p=$(rmq_pid "$n")
  mapfile -t tree < <(rmq_tree "$n")
  if [[ -n $p ]]; then
    # `stop PIDFILE` returns once beam has exited; bounded in case it hangs.
    rmq_env "$n"
    timeout 60 env "${RENV[@]}" "$RMQ_BIN/rabbitmqctl" -n "r$n@localhost" stop "$d/beam.pid" \
      >>"$d/server.out" 2>&1 || say "r$n" "'rabbitmqctl stop' failed; killing pid $p"
    kill_pids "r$n" "$p"
  fi
  ((${#tree[@]} == 0)) || kill_pids "r$n-helpers" "${tree[@]}"
  rm -f "$d/beam.pid" "$d/server.pid"
}

# ---------------------------------------------------------------- etcd

etcd_pid() {
  local p
  p=$(read_pid "$ETCD_DIR/etcd$1.pid")
  if pid_is "$p" etcd; then echo "$p"; fi
}

etcd_initial_cluster() {
  local n s=
  for n in 1 2 3; do s+="${s:+,}etcd$n=http://127.0.0.1:$(etcd_peer_port "$n")"; done
  echo "$s"
}

etcd_launch() {
  local n=$1 c p port etcd
  [[ -n $(etcd_pid "$n") ]] && { say "etcd$n" "already running (pid $(etcd_pid "$n"))"; return 0; }
  c=$(etcd_client_port "$n")
  p=$(etcd_peer_port "$n")
  for port in "$c" "$p"; do
    port_in_use "$port" && die "etcd$n: port $port is already in use by another process"
  done
  etcd=$(command -v etcd) || die "etcd not found: run scripts/deps.sh (package etcd-server)"
  mkdir -p "$ETCD_DIR"
  # Heartbeat and election timeout above the defaults (100/1000 ms): two shared cores stall
  # processes for longer than 1 s, and a needless etcd election costs Patroni its leader key.
  # --initial-cluster-state is only read while the data dir is empty: a restarted member rejoins.
  (cd "$ETCD_DIR" && exec setsid "$etcd" --name "etcd$n" --data-dir "$ETCD_DIR/etcd$n.data" \
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster "$(etcd_initial_cluster)" --initial-cluster-state new \
    --initial-cluster-token "sluice-$BASE" \
    --heartbeat-interval 200 --election-timeout 2000 \
    --auto-compaction-mode periodic --auto-compaction-retention 1h \
    --enable-v2=true --logger zap --log-outputs stderr \
    </dev/null >>"$ETCD_DIR/etcd$n.log" 2>&1) &
  echo $! >"$ETCD_DIR/etcd$n.pid"
}

etcd_healthy() { [[ $(curl -s -m 2 "http://127.0.0.1:$(etcd_client_port "$1")/health" 2>/dev/null) == *'"health":"true"'* ]]; }

# etcd_is_leader N: 0 when etcdN says it is the raft leader.
etcd_is_leader() {
  local js me lead
  js=$(curl -s -m 2 -X POST -d '{}' "http://127.0.0.1:$(etcd_client_port "$1")/v3/maintenance/status" 2>/dev/null) || return 1
  me=$(grep -o '"member_id":"[0-9]*"' <<<"$js" | head -n1 | tr -dc 0-9) || true
  lead=$(grep -o '"leader":"[0-9]*"' <<<"$js" | head -n1 | tr -dc 0-9) || true
  [[ -n $me && $me == "$lead" ]]
}

etcd_stop_node() {
  local p
  p=$(etcd_pid "$1")
  [[ -z $p ]] || kill_pids "etcd$1" "$p"
  rm -f "$ETCD_DIR/etcd$1.pid"
}

# ---------------------------------------------------------------- Patroni + PostgreSQL

# A subreaper: runs ARGV[3:] as its child (the PID goes to ARGV[1]) in directory ARGV[2],
# forwards SIGTERM/SIGINT to that child, reaps every orphan of its subtree (Patroni's detached
# postmasters included) and exits once the subtree is empty.
REAPER_PY='
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
pidfile, cwd, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
child = os.fork()
if child == 0:
    os.chdir(cwd)
    os.execvp(argv[0], argv)
with open(pidfile + ".tmp", "w") as f:
    f.write("%d\n" % child)
os.rename(pidfile + ".tmp", pidfile)
def forward(sig, _frame):
    try:
        os.kill(child, sig)
    except OSError:
        pass
signal.signal(signal.SIGTERM, forward)
signal.signal(signal.SIGINT, forward)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
    except InterruptedError:
        pass
'

patroni_pid() {
  local p
  p=$(read_pid "$PAT_DIR/pg$1/patroni.pid")
  if pid_is "$p" patroni; then echo "$p"; fi
}

postmaster_pid() {
  local p
  p=$(read_pid "$PAT_DIR/pg$1/data/postmaster.pid")
  if pid_is "$p" postgres; then echo "$p"; fi
}

patroni_config() {
  local n=$1 d=$PAT_DIR/pg$1 m hosts=
  for m in 1 2 3; do hosts+="    - 127.0.0.1:$(etcd_client_port "$m")"$'\n'; done
  cat <<EOF
# Written by scripts/cluster.sh; rewritten on every start.
scope: sluice-$BASE
namespace: /sluice/
name: pg$n
log:
  level: INFO
restapi:
  listen: 127.0.0.1:$(rest_port "$n")
  connect_address: 127.0.0.1:$(rest_port "$n")
etcd:
  hosts:
$hosts  protocol: http
bootstrap:
  dcs:
    ttl: $TTL
    loop_wait: $LOOP_WAIT
    retry_timeout: $RETRY_TIMEOUT
    maximum_lag_on_failover: 1048576
    # Not strict: with the standby gone the primary drops it from synchronous_standby_names
    # and keeps taking writes.
    synchronous_mode: true
    synchronous_mode_strict: false
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        max_connections: 200
        wal_level: replica
        hot_standby: "on"
        wal_log_hints: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 256MB
  initdb:
    - encoding: UTF8
    - no-locale
    - auth: trust
postgresql:
  listen: 127.0.0.1:$(pg_port "$n")
  connect_address: 127.0.0.1:$(pg_port "$n")
  data_dir: $d/data
  bin_dir: $PG_BIN
  pgpass: $d/pgpass
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
    rewind:
      username: postgres
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
  # servers.sh's write-heavy settings, with a smaller buffer pool: two nodes share the machine.
  parameters:
    unix_socket_directories: $d
    shared_buffers: 256MB
    max_wal_size: 4GB
    checkpoint_timeout: 10min
    wal_compression: lz4
    logging_collector: "on"
    log_directory: $d/log
    log_filename: postgresql.log
    log_file_mode: "0644"
  remove_data_directory_on_rewind_failure: true
  remove_data_directory_on_diverged_timelines: true
watchdog:
  mode: "off"
tags:
  nofailover: false
  noloadbalance: false
  clonefrom: false
  nosync: false
EOF
}

as_postgres() { (cd / && runuser -u postgres -- "$@"); }

patroni_launch() {
  local n=$1 d=$PAT_DIR/pg$1 port pat old
  [[ -n $(patroni_pid "$n") ]] && { say "pg$n" "already running (Patroni pid $(patroni_pid "$n"))"; return 0; }
  pat=$(command -v patroni) || die "patroni not found: run scripts/deps.sh"
  [[ -x $PG_BIN/postgres ]] || die "PostgreSQL 15 is not installed: run scripts/deps.sh"
  port_in_use "$(rest_port "$n")" && die "pg$n: Patroni REST port $(rest_port "$n") is in use by another process"
  # A postmaster left running by a killed Patroni is ours and Patroni picks it up again.
  if [[ -z $(postmaster_pid "$n") ]] && port_in_use "$(pg_port "$n")"; then
    die "pg$n: port $(pg_port "$n") is already in use by another process"
  fi
  install -d -o postgres -g postgres -m 700 "$d"
  install -d -o postgres -g postgres -m 755 "$d/log"
  patroni_config "$n" >"$d/patroni.yml"
  chown postgres:postgres "$d/patroni.yml"
  touch "$d/patroni.log"
  # Reapers from an earlier run may still hold a live orphan postmaster: keep their PIDs.
  old=()
  if [[ -f $d/reaper.pids ]]; then
    local r
    while read -r r; do pid_is "$r" PR_SET_CHILD_SUBREAPER && old+=("$r"); done <"$d/reaper.pids"
  fi
  printf '%s\n' "${old[@]}" >"$d/reaper.pids.new"
  rm -f "$d/patroni.pid"
  printf '=== %s starting patroni\n' "$(date '+%F %T')" >>"$d/patroni.log"
  # The code's PR_SET_CHILD_SUBREAPER marks the reaper for pid_is; setpriv and env exec, so
  # the reaper's child is Patroni.
  (exec setsid "$PY" -c "$REAPER_PY" "$d/patroni.pid" "$d" \
    setpriv --reuid=postgres --regid=postgres --init-groups env HOME="$d" "$PY" "$pat" "$d/patroni.yml" \
    </dev/null >>"$d/patroni.log" 2>&1) &
  echo $! >>"$d/reaper.pids.new"
  grep -v '^$' "$d/reaper.pids.new" >"$d/reaper.pids" || true
  rm -f "$d/reaper.pids.new"
}

rest_code() { curl_code "http://127.0.0.1:$(rest_port "$1")/$2"; }

# The node (1|2) whose Patroni answers 200 on /primary, or nothing.
pg_primary() {
  local n
  for n in 1 2; do [[ $(rest_code "$n" primary) == 200 ]] && { echo "$n"; return 0; }; done
  return 0
}

pg_sync() {
  local n
  for n in 1 2; do [[ $(rest_code "$n" sync) == 200 ]] && { echo "$n"; return 0; }; done
  return 0
}

reaper_pids() {
  local r
  [[ -f $PAT_DIR/pg$1/reaper.pids ]] || return 0
  while read -r r; do pid_is "$r" PR_SET_CHILD_SUBREAPER && echo "$r"; done <"$PAT_DIR/pg$1/reaper.pids"
  return 0
}

# pg_stop_node N: Patroni first (SIGTERM: it stops PostgreSQL with a fast shutdown), then any
# postmaster that outlived it (one left behind by a killed Patroni), then the subreaper.
pg_stop_node() {
  local n=$1 d=$PAT_DIR/pg$1 p pm reapers
  p=$(patroni_pid "$n")
  pm=$(postmaster_pid "$n")
  mapfile -t reapers < <(reaper_pids "$n")
  if [[ -n $p ]]; then
    kill -TERM "$p" 2>/dev/null || true
    wait_gone 40 "$p" || { say "pg$n" "Patroni still running after 40 s, SIGKILL"; kill -KILL "$p" 2>/dev/null || true; }
  fi
  [[ -n $pm ]] || pm=$(postmaster_pid "$n")
  if [[ -n $pm ]] && pid_alive "$pm"; then
    kill -INT "$pm" 2>/dev/null || true # fast shutdown
    if ! wait_gone 15 "$pm"; then
      say "pg$n" "postmaster $pm still running after fast shutdown, SIGKILL"
      kill -KILL "$pm" 2>/dev/null || true
    fi
  fi
  # The reaper exits with its subtree; whatever remains (backends of a killed postmaster).
  if ((${#reapers[@]})) && ! wait_gone 5 "${reapers[@]}"; then
    local r tree=()
    for r in "${reapers[@]}"; do mapfile -t -O "${#tree[@]}" tree < <(tree_pids "$r"); done
    ((${#tree[@]} == 0)) || kill_pids "pg$n-leftovers" "${tree[@]}"
    kill_pids "pg$n-reaper" "${reapers[@]}"
  fi
  rm -f "$d/patroni.pid" "$d/reaper.pids"
}

# ---------------------------------------------------------------- haproxy

hap_pid() {
  local p
  p=$(read_pid "$HAP_DIR/haproxy$1.pid")
  if pid_is "$p" haproxy; then echo "$p"; fi
}

hap_config() {
  cat <<EOF
# Written by scripts/cluster.sh; rewritten on every start.
# TCP to the PostgreSQL node whose Patroni answers 200 on /primary. OPTIONS, not GET: Patroni
# then sends the status line alone, which haproxy reads in full before it resets the check
# connection (with GET, Patroni logs a ConnectionResetError traceback for every check). A node is out 2 s after its
# Patroni stops saying so (a demoted primary, or a primary whose Patroni died and that will
# hang in SyncRep once the standby has taken over), and its sessions are cut then.
global
    maxconn 1000
defaults
    mode tcp
    timeout connect 3s
    timeout client 30m
    timeout server 30m
    timeout check 2s
    option clitcpka
    option srvtcpka
listen postgres
    bind 127.0.0.1:$(hap_port "$1")
    option httpchk OPTIONS /primary
    http-check expect status 200
    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
    server pg1 127.0.0.1:$(pg_port 1) check port $(rest_port 1)
    server pg2 127.0.0.1:$(pg_port 2) check port $(rest_port 2)
EOF
}

hap_launch() {
  local n=$1 cfg hap
  [[ -n $(hap_pid "$n") ]] && { say "haproxy$n" "already running (pid $(hap_pid "$n"))"; return 0; }
  hap=$(command -v haproxy) || die "haproxy not found: run scripts/deps.sh"
  port_in_use "$(hap_port "$n")" && die "haproxy$n: port $(hap_port "$n") is already in use by another process"
  mkdir -p "$HAP_DIR"
  cfg=$HAP_DIR/haproxy$n.cfg
  hap_config "$n" >"$cfg"
  "$hap" -c -q -f "$cfg" >>"$HAP_DIR/haproxy$n.log" 2>&1 ||
    { tail_file "$HAP_DIR/haproxy$n.log"; die "haproxy$n: invalid configuration $cfg"; }
  # -db: foreground, so $! is haproxy itself and we own its PID.
  printf '=== %s starting haproxy\n' "$(date '+%F %T')" >>"$HAP_DIR/haproxy$n.log"
  (exec setsid "$hap" -db -f "$cfg" </dev/null >>"$HAP_DIR/haproxy$n.log" 2>&1) &
  echo $! >"$HAP_DIR/haproxy$n.pid"
}

hap_stop_node() {
  local p
  p=$(hap_pid "$1")
  [[ -z $p ]] || kill_pids "haproxy$1" "$p"
  rm -f "$HAP_DIR/haproxy$1.pid"
}

# conninfo through haproxy N (or both when N is empty), read-write sessions only.
db_url() {
  local hosts
  if [[ -n ${1:-} ]]; then hosts=127.0.0.1:$(hap_port "$1"); else hosts=127.0.0.1:$(hap_port 1),127.0.0.1:$(hap_port 2); fi
  echo "postgresql://postgres@$hosts/${2:-$PG_DB}?target_session_attrs=read-write&connect_timeout=3"
}

# hap_write N [DB]: a committed write through haproxyN (txid_current assigns a transaction id,
# so the commit goes through synchronous replication); prints the serving node's port.
hap_write() {
  timeout 10 "$PG_BIN/psql" -X -q -tA -d "$(db_url "$1" "${2:-$PG_DB}")" \
    -c 'SELECT txid_current()' -c 'SELECT inet_server_port()' 2>/dev/null | tail -n1
}

# ---------------------------------------------------------------- start / stop / status

all_pids() { # every PID we recorded that is alive, one per line
  local n
  epmd_pid
  for n in 1 2 3; do rmq_pid "$n"; etcd_pid "$n"; done
  for n in 1 2; do patroni_pid "$n"; postmaster_pid "$n"; reaper_pids "$n"; hap_pid "$n"; done
}

all_ports() {
  local n
  echo "$EPMD_PORT"
  for n in 1 2 3; do amqp_port "$n"; dist_port "$n"; etcd_client_port "$n"; etcd_peer_port "$n"; done
  for n in 1 2; do pg_port "$n"; rest_port "$n"; hap_port "$n"; done
}

# wait_until SECONDS WHAT CMD...: polls CMD every 0.5 s; 1 when it has not succeeded after
# SECONDS (WHAT only names the wait for the reader).
wait_until() {
  local deadline=$((SECONDS + $1))
  shift 2
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

rmq_cluster_of_3() { [[ $(rmq_running_nodes "$1" | sort -u | wc -l) == 3 ]]; }
etcd_all_healthy() { etcd_healthy 1 && etcd_healthy 2 && etcd_healthy 3; }
pg_has_primary() { [[ -n $(pg_primary) ]]; }
pg_has_sync() { [[ -n $(pg_sync) ]]; }
hap_writes() { [[ -n $(hap_write "$1" "${2:-$PG_DB}") ]]; }

fail_start() { # fail_start WHAT LOG...: the logs' tails, then die
  local what=$1 f
  shift
  for f in "$@"; do tail_file "$f" 30; done
  die "$what (components left running for inspection: scripts/cluster.sh stop ends them)"
}

start_rabbitmq_part() {
  local t0=$1 n ok=1 deadline=$((SECONDS + 150))
  for n in 1 2 3; do
    if ! rmq_wait_node "$n" $((deadline - SECONDS > 5 ? deadline - SECONDS : 5)); then
      ok=0
      tail_file "$RMQ_DIR/r$n/server.out" 20
      tail_file "$RMQ_DIR/r$n/log/rabbit.log" 20
      say "r$n" "did not boot within 150 s"
    fi
  done
  ((ok)) || return 1
  say rabbitmq "3 nodes booted after $(elapsed "$t0")"
  wait_until 60 "cluster" rmq_cluster_of_3 1 || { say rabbitmq "r1 does not see 3 running nodes after 60 s: $(rmq_running_nodes 1 | tr '\n' ' ')"; return 1; }
  say rabbitmq "cluster of 3 running nodes after $(elapsed "$t0") (amqp $(amqp_port 1),$(amqp_port 2),$(amqp_port 3))"
  # Users are cluster-wide: made (or updated) once, through r1, now that the cluster formed.
  if ! amqp_users_apply "$AMQP_USERS_FILE" rmqctl 1 >>"$RMQ_DIR/r1/server.out" 2>&1; then
    tail_file "$RMQ_DIR/r1/server.out" 10
    say rabbitmq "could not create the services' users"
    return 1
  fi
  say rabbitmq "service users (${AMQP_USERS[*]}) ready after $(elapsed "$t0") (passwords in $AMQP_USERS_FILE)"
}

# Refuses to start anything when a port of a component that is not running is taken.
preflight_ports() {
  local n busy=() port
  check_free() { for port; do port_in_use "$port" && busy+=("$port"); done; return 0; }
  [[ -n $(epmd_pid) ]] || check_free "$EPMD_PORT"
  for n in 1 2 3; do
    [[ -n $(rmq_pid "$n") ]] || check_free "$(amqp_port "$n")" "$(dist_port "$n")"
    [[ -n $(etcd_pid "$n") ]] || check_free "$(etcd_client_port "$n")" "$(etcd_peer_port "$n")"
  done
  for n in 1 2; do
    [[ -n $(patroni_pid "$n") ]] || check_free "$(rest_port "$n")"
    [[ -n $(postmaster_pid "$n") ]] || check_free "$(pg_port "$n")"
    [[ -n $(hap_pid "$n") ]] || check_free "$(hap_port "$n")"
  done
  ((${#busy[@]} == 0)) ||
    die "ports in use by other processes: ${busy[*]} (choose another SLUICE_CLUSTER_PORT_BASE; now $BASE)"
}

cmd_start() {
  local n t0 rpid
  mkdir -p "$STATE_DIR"
  # PostgreSQL (user postgres) must be able to enter the state dir (mktemp -d makes it 0700).
  as_postgres test -x "$STATE_DIR" || chmod a+x "$STATE_DIR"
  as_postgres test -x "$STATE_DIR" ||
    die "user postgres cannot enter $STATE_DIR (make it and its parents world-searchable, e.g. chmod o+x)"
  [[ -x $RMQ_BIN/rabbitmq-server ]] || die "rabbitmq-server is not installed: run scripts/deps.sh"
  preflight_ports
  t0=$(now_ms)
  ensure_epmd
  for n in 1 2 3; do rmq_launch "$n"; done
  for n in 1 2 3; do etcd_launch "$n"; done
  for n in 1 2; do patroni_launch "$n"; done
  for n in 1 2; do hap_launch "$n"; done
  say cluster "launched in $(elapsed "$t0") (state $STATE_DIR, port base $BASE)"

  # RabbitMQ boots on its own; the rest is a chain: etcd -> Patroni -> haproxy -> database.
  start_rabbitmq_part "$t0" &
  rpid=$!
  # On a failure below, end the waiter and its rabbitmqctl calls (not the nodes: setsid).
  # shellcheck disable=SC2064  # rpid is fixed now
  trap "kill \$(tree_pids $rpid) $rpid 2>/dev/null || true" EXIT

  wait_until 60 etcd etcd_all_healthy ||
    fail_start "etcd: not all 3 members healthy after 60 s" "$ETCD_DIR"/etcd{1,2,3}.log
  say etcd "3 members healthy after $(elapsed "$t0") (client $(etcd_client_port 1),$(etcd_client_port 2),$(etcd_client_port 3))"
  wait_until 120 primary pg_has_primary ||
    fail_start "patroni: no primary after 120 s" "$PAT_DIR"/pg{1,2}/patroni.log "$PAT_DIR"/pg{1,2}/log/postgresql.log
  say patroni "primary pg$(pg_primary) after $(elapsed "$t0")"
  wait_until 150 "sync standby" pg_has_sync ||
    fail_start "patroni: no sync standby after 150 s" "$PAT_DIR"/pg{1,2}/patroni.log "$PAT_DIR"/pg{1,2}/log/postgresql.log
  say patroni "sync standby pg$(pg_sync) after $(elapsed "$t0") (postgres $(pg_port 1),$(pg_port 2); rest $(rest_port 1),$(rest_port 2))"
  for n in 1 2; do
    wait_until 30 "haproxy$n" hap_writes "$n" postgres ||
      fail_start "haproxy$n: no write through port $(hap_port "$n") within 30 s" "$HAP_DIR/haproxy$n.log"
  done
  if [[ $(timeout 15 "$PG_BIN/psql" -X -tA -d "$(db_url "" postgres)" -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'") != 1 ]]; then
    timeout 30 "$PG_BIN/psql" -X -q -d "$(db_url "" postgres)" -c "CREATE DATABASE $PG_DB" || die "could not create database $PG_DB"
    say postgres "created database $PG_DB"
  fi
  for n in 1 2; do
    wait_until 15 "haproxy$n" hap_writes "$n" || fail_start "haproxy$n: no write to $PG_DB through port $(hap_port "$n")" "$HAP_DIR/haproxy$n.log"
  done
  say haproxy "writes through $(hap_port 1) and $(hap_port 2) after $(elapsed "$t0")"

  if ! wait "$rpid"; then
    trap - EXIT
    die "rabbitmq: cluster did not form (state in $RMQ_DIR; components left running: scripts/cluster.sh stop ends them)"
  fi
  trap - EXIT
  say cluster "ready after $(elapsed "$t0")"
}

cmd_stop() {
  local t0 n pids=() left
  t0=$(now_ms)
  mapfile -t pids < <(all_pids)
  if ((${#pids[@]} == 0)); then
    log "cluster: not running"
  fi
  # In parallel: RabbitMQ nodes; Patroni standbys before the primary (a primary stopping first
  # hands leadership to a standby that is about to stop too); haproxy.
  local jobs_=()
  for n in 1 2 3; do
    if [[ -n $(rmq_pid "$n") || -n $(read_pid "$RMQ_DIR/r$n/server.pid") ]]; then
      ensure_epmd
      rmq_stop_node "$n" &
      jobs_+=($!)
    fi
  done
  (
    prim=$(pg_primary)
    for n in 1 2; do [[ $n == "$prim" ]] || pg_stop_node "$n"; done
    [[ -z $prim ]] || pg_stop_node "$prim"
  ) &
  jobs_+=($!)
  for n in 1 2; do hap_stop_node "$n"; done
  local j rc=0
  for j in "${jobs_[@]}"; do wait "$j" || rc=1; done
  for n in 1 2 3; do etcd_stop_node "$n"; done
  local p
  p=$(epmd_pid)
  [[ -z $p ]] || kill_pids epmd "$p"
  rm -f "$EPMD_PID_FILE"
  mapfile -t left < <(all_pids)
  if ((${#left[@]})); then
    log "cluster: still running after stop: ${left[*]}" >&2
    return 1
  fi
  ((${#pids[@]} == 0)) || log "cluster: stopped in $(elapsed "$t0") (was ${#pids[@]} processes)"
  return "$rc"
}

cmd_status() {
  local rc=0 n p live running=() qinfo leader members role pm port
  # RabbitMQ: membership and queue leadership as seen by the first node that runs.
  live=$(rmq_live_node || true)
  if [[ -n $live ]]; then
    ensure_epmd
    mapfile -t running < <(rmq_running_nodes "$live")
    qinfo=$(rmq_queue_info "$live")
  fi
  leader=
  members=
  case ${qinfo:-} in
    '') ;;
    none | classic) ;;
    *) leader=${qinfo%% *}; members=${qinfo#* } ;;
  esac
  for n in 1 2 3; do
    p=$(rmq_pid "$n")
    if [[ -z $p ]]; then
      printf 'rabbitmq  r%s  %-8s amqp %s dist %s  down\n' "$n" - "$(amqp_port "$n")" "$(dist_port "$n")"
      rc=3
      continue
    fi
    if [[ " ${running[*]} " == *" r$n@localhost "* ]]; then
      role="running, in cluster of ${#running[@]}"
    else
      role="not running in the cluster seen by r$live"
      rc=3
    fi
    case ${qinfo:-} in
      '') role+="; $QUEUE: r$live did not answer" ;;
      none) role+="; $QUEUE does not exist yet" ;;
      classic) role+="; $QUEUE is not a quorum queue" ;;
      *)
        if [[ $leader == "r$n@localhost" ]]; then role+="; $QUEUE leader"
        elif [[ " $members " == *" r$n@localhost "* ]]; then role+="; $QUEUE follower"
        else role+="; not a $QUEUE member"; fi
        ;;
    esac
    printf 'rabbitmq  r%s  %-8s amqp %s dist %s  %s\n' "$n" "$p" "$(amqp_port "$n")" "$(dist_port "$n")" "$role"
  done
  p=$(epmd_pid)
  printf 'epmd      -   %-8s port %s\n' "${p:--}" "$EPMD_PORT"

  for n in 1 2 3; do
    p=$(etcd_pid "$n")
    if [[ -z $p ]]; then role=down; rc=3
    elif ! etcd_healthy "$n"; then role=unhealthy; rc=3
    elif etcd_is_leader "$n"; then role="healthy, leader"
    else role="healthy, follower"; fi
    printf 'etcd      etcd%s %-8s client %s peer %s  %s\n' "$n" "${p:--}" "$(etcd_client_port "$n")" "$(etcd_peer_port "$n")" "$role"
  done

  for n in 1 2; do
    p=$(patroni_pid "$n")
    pm=$(postmaster_pid "$n")
    if [[ -z $p ]]; then
      role="Patroni down"
      [[ -z $pm ]] || role+=" (its postmaster still runs: stale, out of haproxy)"
      rc=3
    elif [[ $(rest_code "$n" primary) == 200 ]]; then role=primary
    elif [[ $(rest_code "$n" sync) == 200 ]]; then role="sync standby"
    elif [[ $(rest_code "$n" replica) == 200 ]]; then role=replica
    else
      role="no role ($(curl -s -m 2 "http://127.0.0.1:$(rest_port "$n")/patroni" 2>/dev/null | grep -o '"state": *"[a-z ]*"' || echo 'REST does not answer'))"
      rc=3
    fi
    printf 'postgres  pg%s %-8s postgres %s rest %s postmaster %s  %s\n' "$n" "${p:--}" "$(pg_port "$n")" "$(rest_port "$n")" "${pm:--}" "$role"
  done

  for n in 1 2; do
    p=$(hap_pid "$n")
    if [[ -z $p ]]; then role=down; rc=3
    else
      port=$(hap_write "$n" postgres) || port=
      case $port in
        "$(pg_port 1)") role="routes to pg1 (writable)" ;;
        "$(pg_port 2)") role="routes to pg2 (writable)" ;;
        *) role="up, no writable backend"; rc=3 ;;
      esac
    fi
    printf 'haproxy   haproxy%s %-8s port %s  %s\n' "$n" "${p:--}" "$(hap_port "$n")" "$role"
  done
  return "$rc"
}

cmd_env() {
  echo "export SLUICE_AMQP_URL=amqp://guest:guest@127.0.0.1:$(amqp_port 1)/,amqp://guest:guest@127.0.0.1:$(amqp_port 2)/,amqp://guest:guest@127.0.0.1:$(amqp_port 3)/"
  amqp_users_env "$AMQP_USERS_FILE" "127.0.0.1:$(amqp_port 1)" "127.0.0.1:$(amqp_port 2)" "127.0.0.1:$(amqp_port 3)"
  echo "export SLUICE_DB_URL='$(db_url)'"
  echo "export SLUICE_CLUSTER=1"
}

cmd_pid() {
  local p="" n
  case ${1:-} in
    r[123]) p=$(rmq_pid "${1#r}") ;;
    etcd[123]) p=$(etcd_pid "${1#etcd}") ;;
    pg[12]) p=$(patroni_pid "${1#pg}") ;;
    pg[12]-postmaster) n=${1#pg}; p=$(postmaster_pid "${n%-postmaster}") ;;
    haproxy[12]) p=$(hap_pid "${1#haproxy}") ;;
    epmd) p=$(epmd_pid) ;;
    *) die "pid: unknown component '${1:-}' (r1..r3, etcd1..3, pg1|pg2, pg1-postmaster|pg2-postmaster, haproxy1|haproxy2, epmd)" ;;
  esac
  [[ -n $p ]] || { log "${1}: not running" >&2; return 1; }
  echo "$p"
}

cmd_role_of() {
  local n live qinfo leader m
  case ${1:-} in
    queue-leader | queue-follower)
      live=$(rmq_live_node) || die "no RabbitMQ node runs"
      ensure_epmd
      qinfo=$(rmq_queue_info "$live")
      case $qinfo in
        '') die "r$live did not answer list_queues" ;;
        none) die "queue $QUEUE does not exist" ;;
        classic) die "queue $QUEUE is not a quorum queue" ;;
      esac
      leader=${qinfo%% *}
      if [[ $1 == queue-leader ]]; then echo "${leader%@localhost}"; return 0; fi
      for m in ${qinfo#* }; do
        [[ $m != "$leader" && -n $(rmq_pid "$(tr -dc 0-9 <<<"${m%@*}")") ]] && { echo "${m%@localhost}"; return 0; }
      done
      die "no running follower of $QUEUE"
      ;;
    primary) n=$(pg_primary); [[ -n $n ]] || die "no primary"; echo "pg$n" ;;
    standby)
      n=$(pg_sync)
      if [[ -z $n ]]; then for m in 1 2; do [[ $(rest_code "$m" replica) == 200 ]] && n=$m && break; done; fi
      [[ -n $n ]] || die "no standby"
      echo "pg$n"
      ;;
    etcd-leader)
      for n in 1 2 3; do etcd_is_leader "$n" && { echo "etcd$n"; return 0; }; done
      die "no etcd leader"
      ;;
    *) die "role-of: unknown role '${1:-}' (queue-leader, queue-follower, primary, standby, etcd-leader)" ;;
  esac
}

# start-node NAME: one component again, with the configuration and data it had; returns once
# it is up (RabbitMQ: booted and in the cluster; etcd: healthy; Patroni: REST answers with a
# role; haproxy: listening).
cmd_start_node() {
  local name=${1:-} n t0
  t0=$(now_ms)
  case $name in
    r[123])
      n=${name#r}
      ensure_epmd
      rmq_launch "$n"
      rmq_wait_node "$n" 150 || fail_start "r$n did not boot within 150 s" "$RMQ_DIR/r$n/server.out" "$RMQ_DIR/r$n/log/rabbit.log"
      wait_until 60 cluster rmq_cluster_of_3 "$n" || die "r$n: not in a cluster of 3 running nodes after 60 s"
      ;;
    etcd[123])
      n=${name#etcd}
      etcd_launch "$n"
      wait_until 60 etcd etcd_healthy "$n" || fail_start "etcd$n not healthy within 60 s" "$ETCD_DIR/etcd$n.log"
      ;;
    pg[12])
      n=${name#pg}
      patroni_launch "$n"
      pg_node_has_role() { local c; for c in primary replica; do [[ $(rest_code "$1" "$c") == 200 ]] && return 0; done; return 1; }
      wait_until 120 "pg$n" pg_node_has_role "$n" ||
        fail_start "pg$n has no role after 120 s" "$PAT_DIR/pg$n/patroni.log" "$PAT_DIR/pg$n/log/postgresql.log"
      ;;
    haproxy[12])
      n=${name#haproxy}
      hap_launch "$n"
      wait_until 10 "haproxy$n" port_in_use "$(hap_port "$n")" || fail_start "haproxy$n does not listen" "$HAP_DIR/haproxy$n.log"
      ;;
    *) die "start-node: unknown component '$name' (r1..r3, etcd1..3, pg1|pg2, haproxy1|haproxy2)" ;;
  esac
  say "$name" "up after $(elapsed "$t0")"
}

usage() {
  cat >&2 <<'EOF'
usage: scripts/cluster.sh {start|stop|status|env|purge}
       scripts/cluster.sh pid NAME | role-of ROLE | start-node NAME
       scripts/cluster.sh rabbitmqctl [r1|r2|r3] ARGS... | psql ARGS...
env: SLUICE_STATE_DIR (default <repo>/.state/cluster), SLUICE_CLUSTER_PORT_BASE (default 6200)
EOF
  exit 2
}

main() {
  (($# >= 1)) || usage
  local cmd=$1
  shift
  check_config
  case $cmd in
    start) cmd_start ;;
    stop) cmd_stop ;;
    purge) cmd_stop && rm -rf "$RMQ_DIR" "$ETCD_DIR" "$PAT_DIR" "$HAP_DIR" && log "cluster: removed its state in $STATE_DIR" ;;
    status) cmd_status ;;
    env) cmd_env ;;
    pid) cmd_pid "$@" ;;
    role-of) cmd_role_of "$@" ;;
    start-node) cmd_start_node "$@" ;;
    rabbitmqctl)
      local n
      if [[ ${1:-} =~ ^r[123]$ ]]; then
        n=${1#r}
        shift
      else
        n=$(rmq_live_node) || die "rabbitmqctl: no RabbitMQ node runs (name one: r1, r2 or r3)"
      fi
      # rabbitmqctl starts an epmd of its own when none listens on our port: keep ours up for
      # the call, and end it again when no node runs.
      local rc=0
      ensure_epmd
      rmqctl "$n" "$@" || rc=$?
      rmq_live_node >/dev/null || { kill_pids epmd "$(epmd_pid)"; rm -f "$EPMD_PID_FILE"; }
      return "$rc"
      ;;
    psql) exec "$PG_BIN/psql" -X -d "$(db_url)" "$@" ;;
    -h | --help | help) usage ;;
    *) usage ;;
  esac
}

main "$@"
