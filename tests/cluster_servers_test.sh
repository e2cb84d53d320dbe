#!/usr/bin/env bash
# End-to-end test of scripts/cluster.sh (heavy: not in ctest; about 2-4 minutes):
#
#   1. start: 3 RabbitMQ nodes in one cluster, 3 healthy etcd members, a primary and a sync
#      standby, a write through each haproxy; a quorum queue sluice.persist on all 3 nodes;
#   2. SIGKILL the primary's whole node (Patroni + postmaster): time until a write through the
#      haproxies works again; start-node brings it back as a (sync) standby;
#   3. SIGKILL Patroni alone on the new primary, with a session writing through haproxy: writes
#      move to the other node within ttl + 15 s, haproxy never routes to the stale primary
#      again, every write acknowledged to the session is on the new primary; the stale node
#      rejoins as a standby with start-node;
#   4. SIGKILL the etcd leader: a new one is elected, the primary stays, writes go on;
#      SIGKILL the primary's postmaster alone: Patroni brings PostgreSQL back (time the outage);
#      SIGKILL haproxy1: the two-host URL still writes through haproxy2; start-node haproxy1;
#   5. SIGKILL the RabbitMQ node leading sluice.persist: the other two still form the cluster and
#      elect a new leader; start-node brings the node back into the cluster of 3;
#   6. stop: no PID we recorded is alive (a zombie counts as gone), no port of ours listens; a
#      second stop is harmless.
#
# Its own state dir (mktemp) and ports from SLUICE_CLUSTER_TEST_PORT_BASE (default 6300: clear of
# cluster.sh's default 6200 and of servers.sh's test ports). Prints one line per check, the
# timings, and closes with `N passed, N failed`; exits 1 on any failure. KEEP=1 keeps the state.
# shellcheck disable=SC2317  # functions here run through check and wait_for
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR"

log() { printf '%s\n' "$*"; }
die() { printf 'cluster_servers_test: %s\n' "$*" >&2; exit 1; }
# shellcheck source=scripts/lib.sh
. "$REPO_DIR/scripts/lib.sh"

BASE=${SLUICE_CLUSTER_TEST_PORT_BASE:-6300}
STATE=$(mktemp -d /tmp/sluice-cluster-test.XXXXXX)
chmod 755 "$STATE"
export SLUICE_STATE_DIR=$STATE SLUICE_CLUSTER_PORT_BASE=$BASE
unset SLUICE_CLUSTER
CL=$REPO_DIR/scripts/cluster.sh
PSQL=/usr/lib/postgresql/15/bin/psql
TTL=${SLUICE_PATRONI_TTL:-10} # cluster.sh's Patroni ttl

passed=0
failed=0
check() { # check "description" command...
  local what=$1
  shift
  if "$@"; then ok "$what"; else bad "$what"; fi
}
ok() { passed=$((passed + 1)); printf 'ok   %s\n' "$*"; }
bad() { failed=$((failed + 1)); printf 'FAIL %s\n' "$*"; }
section() { printf '\n== %s\n' "$*"; }
timing() { printf 'time %s\n' "$*"; TIMINGS+=("$*"); }
TIMINGS=()

cluster_up=0
probe_pid=
t_start=$(now_ms)

cleanup() {
  local rc=$?
  if [[ -n $probe_pid ]] && pid_alive "$probe_pid"; then kill "$probe_pid" 2>/dev/null || true; fi
  if ((cluster_up)); then
    log "cluster_servers_test: stopping the cluster"
    timeout 150 "$CL" stop >"$STATE/cleanup-stop.out" 2>&1 || cat "$STATE/cleanup-stop.out"
  fi
  if ((failed > 0 || rc != 0)) || [[ ${KEEP:-0} == 1 ]]; then
    log "cluster_servers_test: state and logs kept in $STATE"
  else
    rm -rf "$STATE"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

finish() {
  printf '\ncluster_servers_test: took %s\n' "$(elapsed "$t_start")"
  local t
  for t in "${TIMINGS[@]}"; do printf '  %s\n' "$t"; done
  printf '%d passed, %d failed\n' "$passed" "$failed"
  if ((failed > 0)); then exit 1; fi
  exit 0
}
fatal() { bad "$*"; finish; }


pg_port() { echo $((BASE + 40 + ${1#pg})); }
rest_port() { echo $((BASE + 50 + ${1#pg})); }
hap_port() { echo $((BASE + 70 + $1)); }
other_pg() { if [[ $1 == pg1 ]]; then echo pg2; else echo pg1; fi; }
DB_URL="postgresql://postgres@127.0.0.1:$(hap_port 1),127.0.0.1:$(hap_port 2)/sluice?target_session_attrs=read-write&connect_timeout=3"

# sql URL SQL: one statement, bounded; prints the result.
sql() { timeout 8 "$PSQL" -X -q -tA -d "$1" -c "$2" 2>/dev/null; }
via_hap() { echo "postgresql://postgres@127.0.0.1:$(hap_port "$1")/sluice?target_session_attrs=read-write&connect_timeout=3"; }
direct() { echo "postgresql://postgres@127.0.0.1:$(pg_port "$1")/sluice?connect_timeout=3"; }

# write_ok: an INSERT through the multi-host URL commits; prints the serving node's port.
write_ok() { sql "$DB_URL" "INSERT INTO t(tag) VALUES ('w') RETURNING inet_server_port()" | grep -q '^[0-9]'; }
status_has() { "$CL" status 2>/dev/null | grep -c -- "$1"; }
role_is() { [[ $("$CL" role-of "$1" 2>/dev/null) == "$2" ]]; }
is_sync_standby() { [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$(rest_port "$1")/sync") == 200 ]]; }
is_primary() { [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$(rest_port "$1")/primary") == 200 ]]; }

# Every PID recorded by cluster.sh (and its wrappers and reapers), to check after stop.
RECORDED=()
record_pids() {
  local f p
  while IFS= read -r -d '' f; do
    while read -r p; do [[ $p =~ ^[0-9]+$ ]] && RECORDED+=("$p"); done <"$f"
  done < <(find "$STATE" -path '*/data' -prune -o \( -name '*.pid' -o -name reaper.pids \) -print0 2>/dev/null)
  for f in "$STATE"/patroni/pg*/data/postmaster.pid; do
    [[ -f $f ]] && RECORDED+=("$(read_pid "$f")")
  done
  return 0
}

# ---------------------------------------------------------------------------------------------
section "start (state $STATE, port base $BASE)"
t0=$(now_ms)
cluster_up=1
if ! timeout 300 "$CL" start | tee "$STATE/start.out"; then
  fatal "cluster.sh start"
fi
ok "cluster.sh start"
timing "start, all parts: $(elapsed "$t0")"
while read -r line; do
  case $line in
    etcd:*healthy* | patroni:*primary* | patroni:*sync* | haproxy:*writes* | rabbitmq:*cluster* | cluster:*ready*) timing "start: $line" ;;
  esac
done <"$STATE/start.out"
record_pids

"$CL" status >"$STATE/status.out" 2>&1 && rc=0 || rc=$?
sed 's/^/    | /' "$STATE/status.out"
check "status exits 0" test "$rc" = 0
check "3 RabbitMQ nodes running in one cluster" test "$(grep -c '^rabbitmq.*running, in cluster of 3' "$STATE/status.out")" = 3
check "3 healthy etcd members, one leader" test "$(grep -c '^etcd.*healthy' "$STATE/status.out")-$(grep -c '^etcd.*leader' "$STATE/status.out")" = 3-1
check "one primary and one sync standby" test "$(grep -c '^postgres.* primary$' "$STATE/status.out")-$(grep -c '^postgres.* sync standby$' "$STATE/status.out")" = 1-1
check "both haproxies route to a writable node" test "$(grep -c '^haproxy.*writable' "$STATE/status.out")" = 2
sql "$DB_URL" "CREATE TABLE t(id bigserial PRIMARY KEY, tag text, port int DEFAULT inet_server_port(), at timestamptz DEFAULT clock_timestamp())" >/dev/null
for h in 1 2; do
  check "a write through haproxy$h (port $(hap_port "$h"))" test -n "$(sql "$(via_hap "$h")" "INSERT INTO t(tag) VALUES ('h$h') RETURNING id")"
done
check "env prints 3 AMQP URLs and both haproxies" test "$("$CL" env | grep -c "127.0.0.1:$((BASE + 3))/\|127.0.0.1:$(hap_port 1),127.0.0.1:$(hap_port 2)/sluice\|SLUICE_CLUSTER=1")" = 3

# The services declare the queue; here a bare quorum queue is enough to see its leader.
"$CL" rabbitmqctl r1 eval 'rabbit_amqqueue:declare(rabbit_misc:r(<<"/">>, queue, <<"sluice.persist">>), true, false, [{<<"x-queue-type">>, longstr, <<"quorum">>}], none, <<"test">>).' >"$STATE/declare.out" 2>&1 || true
check "sluice.persist: a leader and 2 followers" test "$(status_has 'sluice.persist leader')-$(status_has 'sluice.persist follower')" = 1-2

# ---------------------------------------------------------------------------------------------
section "SIGKILL of the primary's whole node (Patroni + postmaster)"
P=$("$CL" role-of primary) || fatal "no primary"
S=$(other_pg "$P")
pat=$("$CL" pid "$P") || fatal "no Patroni PID for $P"
pm=$("$CL" pid "$P-postmaster") || fatal "no postmaster PID for $P"
log "primary $P (Patroni $pat, postmaster $pm), standby $S"
t0=$(now_ms)
kill -KILL "$pat" "$pm"
if wait_for 60 write_ok; then
  outage=$(elapsed "$t0")
  ok "writes through haproxy again after $outage"
  timing "whole-node kill of the primary: write outage $outage (ttl $TTL)"
else
  bad "no write through haproxy within 60 s of killing $P"
fi
check "new primary is $S" role_is primary "$S"
check "through haproxy: not in recovery, on $S" test "$(sql "$DB_URL" 'SELECT pg_is_in_recovery(), inet_server_port()')" = "f|$(pg_port "$S")"

t0=$(now_ms)
if "$CL" start-node "$P" >"$STATE/start-node-$P.out" 2>&1 && wait_for 90 is_sync_standby "$P"; then
  back=$(elapsed "$t0")
  ok "start-node $P: back as sync standby after $back"
  timing "start-node $P after a whole-node kill: sync standby after $back"
else
  bad "start-node $P: not a sync standby within 90 s"
  sed 's/^/    | /' "$STATE/start-node-$P.out"
  tail -n 20 "$STATE/patroni/$P/patroni.log" | sed 's/^/    | /'
fi
record_pids

# ---------------------------------------------------------------------------------------------
section "SIGKILL of Patroni alone on the primary"
P=$("$CL" role-of primary) || fatal "no primary"
S=$(other_pg "$P")
pat=$("$CL" pid "$P") || fatal "no Patroni PID for $P"
pm=$("$CL" pid "$P-postmaster") || fatal "no postmaster PID for $P"
log "primary $P (Patroni $pat, postmaster $pm stays up), standby $S"
# A session writing through haproxy1 every 0.1 s; the tags of acknowledged rows go to acked.
{
  for i in $(seq 1 600); do
    printf "INSERT INTO t(tag) VALUES ('probe-%d') RETURNING tag;\nSELECT pg_sleep(0.1);\n" "$i"
  done
} >"$STATE/probe.sql"
"$PSQL" -X -q -tA -v ON_ERROR_STOP=1 -d "$(via_hap 1)" -f "$STATE/probe.sql" >"$STATE/acked" 2>"$STATE/probe.err" &
probe_pid=$!
wait_for 10 grep -q probe "$STATE/acked" || bad "the probe session wrote nothing"
t0=$(now_ms)
kill -KILL "$pat"
# The probe session ends when haproxy cuts it (2 s after /primary stops answering).
probe_gone() { ! pid_alive "$probe_pid"; }
if wait_for 20 probe_gone; then
  ok "haproxy cut the session to $P after $(elapsed "$t0") ($(tail -n1 "$STATE/probe.err"))"
  timing "Patroni-alone kill: haproxy cut the session to the stale primary after $(elapsed "$t0")"
else
  bad "the session through haproxy to $P was not cut within 20 s"
  kill "$probe_pid" 2>/dev/null || true
fi
wait "$probe_pid" 2>/dev/null || true
probe_pid=
if wait_for $((TTL + 15)) write_ok; then
  outage=$(elapsed "$t0")
  ok "writes through haproxy again after $outage (within ttl + 15 s)"
  timing "Patroni-alone kill of the primary: write outage $outage (ttl $TTL)"
else
  bad "no write through haproxy within $((TTL + 15)) s of killing Patroni on $P"
fi
check "new primary is $S" role_is primary "$S"
stale_ports=0
for i in $(seq 1 10); do
  r=$(sql "$DB_URL" 'SELECT pg_is_in_recovery(), inet_server_port()') || r=
  [[ $r == "f|$(pg_port "$S")" ]] || stale_ports=$((stale_ports + 1))
done
check "10 sessions through haproxy: all read-write on $S, none on the stale $P" test "$stale_ports" = 0
n_acked=$(grep -c '^probe-' "$STATE/acked" || true)
missing=0
while read -r tag; do
  [[ $(sql "$DB_URL" "SELECT count(*) FROM t WHERE tag = '$tag'") == 1 ]] || missing=$((missing + 1))
done < <(grep '^probe-' "$STATE/acked")
check "all $n_acked writes acknowledged through haproxy are on the new primary $S" test "$missing" = 0
# The hazard haproxy guards against: the stale primary still runs and its commits hang.
if [[ $(sql "$(direct "$P")" 'SELECT pg_is_in_recovery()') == f ]]; then
  if timeout 4 "$PSQL" -X -q -d "$(direct "$P")" -c "INSERT INTO t(tag) VALUES ('stale')" >/dev/null 2>&1; then
    log "info: a commit on the stale $P returned (its standby link may still be up)"
  else
    log "info: the stale $P still runs as a primary; a commit on it hangs (SyncRep), as expected"
  fi
fi
t0=$(now_ms)
if "$CL" start-node "$P" >"$STATE/start-node-$P-2.out" 2>&1 && wait_for 90 is_sync_standby "$P"; then
  back=$(elapsed "$t0")
  ok "start-node $P: the stale primary is back as sync standby after $back"
  timing "start-node $P after a Patroni-alone kill: sync standby after $back"
else
  bad "start-node $P: not a sync standby within 90 s"
  sed 's/^/    | /' "$STATE/start-node-$P-2.out"
  tail -n 20 "$STATE/patroni/$P/patroni.log" | sed 's/^/    | /'
fi
check "the 'stale' row committed locally on $P is not on the primary" test "$(sql "$DB_URL" "SELECT count(*) FROM t WHERE tag = 'stale'")" = 0
record_pids

# ---------------------------------------------------------------------------------------------
section "SIGKILL of the etcd leader"
# Patroni's retry_timeout (4 s) must outlast an etcd election (election timeout 2 s): the
# primary keeps its role, and writes go on.
P=$("$CL" role-of primary) || fatal "no primary"
E=$("$CL" role-of etcd-leader) || fatal "no etcd leader"
ep=$("$CL" pid "$E") || fatal "no PID for $E"
log "etcd leader $E (pid $ep), primary $P"
t0=$(now_ms)
kill -KILL "$ep"
new_etcd_leader() { local l; l=$("$CL" role-of etcd-leader 2>/dev/null) && [[ $l != "$E" ]]; }
if wait_for 20 new_etcd_leader; then
  ok "a new etcd leader $("$CL" role-of etcd-leader) after $(elapsed "$t0")"
  timing "etcd leader $E killed: new leader after $(elapsed "$t0")"
else
  bad "no new etcd leader within 20 s"
fi
# Writes for 8 s after the kill: the longest gap between two commits.
max_gap=0 last=$(now_ms) fails=0
while (($(now_ms) - t0 < 8000)); do
  if write_ok; then
    now=$(now_ms)
    ((now - last > max_gap)) && max_gap=$((now - last))
    last=$now
  else
    fails=$((fails + 1))
  fi
  sleep 0.2
done
timing "etcd leader $E killed: longest gap between writes ${max_gap} ms, $fails failed writes"
check "writes went on (longest gap ${max_gap} ms, $fails failed)" test "$fails" = 0
check "the primary is still $P" role_is primary "$P"
t0=$(now_ms)
if "$CL" start-node "$E" >"$STATE/start-node-$E.out" 2>&1; then
  ok "start-node $E: healthy again after $(elapsed "$t0")"
else
  bad "start-node $E"
  sed 's/^/    | /' "$STATE/start-node-$E.out"
fi
record_pids

# ---------------------------------------------------------------------------------------------
section "SIGKILL of the primary's postmaster alone"
P=$("$CL" role-of primary) || fatal "no primary"
pm=$("$CL" pid "$P-postmaster") || fatal "no postmaster PID for $P"
log "primary $P (postmaster $pm; Patroni stays up)"
t0=$(now_ms)
kill -KILL "$pm"
if wait_for 60 write_ok; then
  outage=$(elapsed "$t0")
  ok "writes through haproxy again after $outage (primary now $("$CL" role-of primary 2>/dev/null))"
  timing "postmaster-alone kill of the primary: write outage $outage"
else
  bad "no write through haproxy within 60 s of killing the postmaster of $P"
fi
has_sync() { is_sync_standby pg1 || is_sync_standby pg2; }
check "a sync standby again within 60 s" wait_for 60 has_sync
record_pids

# ---------------------------------------------------------------------------------------------
section "SIGKILL of haproxy1"
hp=$("$CL" pid haproxy1) || fatal "no PID for haproxy1"
kill -KILL "$hp"
t0=$(now_ms)
check "a write through the two-host URL with haproxy1 dead (libpq moves on to haproxy2)" write_ok
timing "haproxy1 killed: write through the two-host URL took $(elapsed "$t0")"
check "start-node haproxy1" "$CL" start-node haproxy1
hap1_writes() { [[ -n $(sql "$(via_hap 1)" "INSERT INTO t(tag) VALUES ('h1') RETURNING id") ]]; }
check "a write through haproxy1 again" wait_for 10 hap1_writes
record_pids

# ---------------------------------------------------------------------------------------------
section "SIGKILL of the RabbitMQ node leading sluice.persist"
L=$("$CL" role-of queue-leader) || fatal "no queue leader"
F=$("$CL" role-of queue-follower) || fatal "no queue follower"
lp=$("$CL" pid "$L") || fatal "no PID for $L"
log "queue leader $L (beam $lp), asking $F"
t0=$(now_ms)
kill -KILL "$lp"
new_leader() { local l; l=$("$CL" role-of queue-leader 2>/dev/null) && [[ -n $l && $l != "$L" ]]; }
if wait_for 30 new_leader; then
  ok "sluice.persist has a new leader $("$CL" role-of queue-leader) after $(elapsed "$t0")"
  timing "queue leader $L killed: new leader seen after $(elapsed "$t0")"
else
  bad "sluice.persist: no new leader within 30 s"
fi
survivors=$("$CL" rabbitmqctl "$F" --timeout 10 -q cluster_status --formatter json 2>/dev/null | grep -o '"running_nodes":\[[^]]*\]' | grep -o 'r[0-9]@localhost' | sort | tr '\n' ' ')
check "the two others still form the cluster (running: $survivors)" test "$(wc -w <<<"$survivors")" = 2
t0=$(now_ms)
if "$CL" start-node "$L" >"$STATE/start-node-$L.out" 2>&1; then
  ok "start-node $L: back in the cluster of 3 after $(elapsed "$t0")"
  timing "start-node $L: rejoined after $(elapsed "$t0")"
else
  bad "start-node $L"
  sed 's/^/    | /' "$STATE/start-node-$L.out"
fi
"$CL" status >"$STATE/status2.out" 2>&1 && rc=0 || rc=$?
sed 's/^/    | /' "$STATE/status2.out"
check "status exits 0 after the chaos" test "$rc" = 0
record_pids

# ---------------------------------------------------------------------------------------------
section "stop"
t0=$(now_ms)
check "cluster.sh stop" timeout 150 "$CL" stop
timing "stop: $(elapsed "$t0")"
cluster_up=0
alive=()
for p in "${RECORDED[@]}"; do pid_alive "$p" && alive+=("$p"); done
check "no recorded PID alive (${#RECORDED[@]} recorded${alive[*]:+; alive: ${alive[*]}})" test "${#alive[@]}" = 0
busy=()
for ((p = BASE; p <= BASE + 80; p++)); do port_in_use "$p" && busy+=("$p"); done
check "no port $BASE..$((BASE + 80)) listening${busy[*]:+ (busy: ${busy[*]})}" test "${#busy[@]}" = 0
check "a second stop is harmless" timeout 60 "$CL" stop
status_rc_3() { local rc=0; "$CL" status >/dev/null 2>&1 || rc=$?; ((rc == 3)); }
check "status exits 3 when stopped" status_rc_3

finish
