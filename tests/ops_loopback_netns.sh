#!/usr/bin/env bash
# The negative test of SLUICE_OPS_LOOPBACK_ONLY=1: a client that is not on loopback gets 403 from
# /metrics and /readyz, while loopback gets them (and the other client still gets /healthz, so
# the 403 is the rule, not a broken path). The other client lives in a network namespace of its
# own, joined to this host by a veth pair; the api listens on 0.0.0.0.
#
#   tests/ops_loopback_netns.sh BIN_DIR     # run by ctest (test ops_loopback_netns)
#
# Needs root (ip netns add) and the servers test.sh starts (SLUICE_AMQP_URL, SLUICE_DB_URL).
# Exits 77 (ctest: skipped) with the reason when a namespace cannot be made here.
set -euo pipefail

BIN_DIR=${1:-${SLUICE_BIN_DIR:-}}
[[ -x $BIN_DIR/sluice-api ]] || { echo "usage: $0 BIN_DIR (with sluice-api in it)" >&2; exit 2; }
[[ -n ${SLUICE_AMQP_URL:-} && -n ${SLUICE_DB_URL:-} ]] ||
  { echo "ops_loopback_netns: SLUICE_AMQP_URL / SLUICE_DB_URL not set: run through ./test.sh" >&2; exit 2; }

skip() { echo "SKIP: $*"; exit 77; }
command -v ip >/dev/null || skip "no ip command (Debian package iproute2)"
command -v curl >/dev/null || skip "no curl"

NS=sluice-ops-$$
HOST_IF=slo$$h
PEER_IF=slo$$p
NET=10.213.$(($$ % 250)) # a /30 of our own: .1 this host, .2 the namespace
HOST_IP=$NET.1
PEER_IP=$NET.2
API_PID=
LOG=$(mktemp /tmp/sluice-ops-netns-XXXXXX.log)

cleanup() {
  local rc=$?
  if [[ -n $API_PID ]]; then
    kill -TERM "$API_PID" 2>/dev/null || true
    wait "$API_PID" 2>/dev/null || true
  fi
  ip link del "$HOST_IF" 2>/dev/null || true # takes its peer with it
  ip netns del "$NS" 2>/dev/null || true
  if ((rc != 0 && rc != 77)); then
    echo "--- api log ($LOG)"
    tail -n 20 "$LOG" || true
  else
    rm -f "$LOG"
  fi
  exit "$rc"
}
trap cleanup EXIT

ip netns add "$NS" 2>/dev/null || skip "'ip netns add' failed (needs root and network namespaces)"
ip link add "$HOST_IF" type veth peer name "$PEER_IF" 2>/dev/null || skip "cannot create a veth pair"
ip link set "$PEER_IF" netns "$NS"
ip addr add "$HOST_IP/30" dev "$HOST_IF"
ip link set "$HOST_IF" up
ip -n "$NS" addr add "$PEER_IP/30" dev "$PEER_IF"
ip -n "$NS" link set "$PEER_IF" up
ip -n "$NS" link set lo up

# a free port: the kernel's choice
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
  echo $((20000 + $$ % 20000)))
export SLUICE_QUEUE=sluice.opsnetns.$$.persist SLUICE_LIVE_EXCHANGE=sluice.opsnetns.$$.live
SLUICE_API_HOST=0.0.0.0 SLUICE_API_PORT=$PORT SLUICE_OPS_LOOPBACK_ONLY=1 "$BIN_DIR/sluice-api" >"$LOG" 2>&1 &
API_PID=$!

status() { # status NETNS|- URL: the HTTP status, 000 when none
  local ns=$1 url=$2
  if [[ $ns == - ]]; then
    curl -s -o /dev/null -m 5 -w '%{http_code}' "$url" || true
  else
    ip netns exec "$ns" curl -s -o /dev/null -m 5 -w '%{http_code}' "$url" || true
  fi
}

# ready: /readyz from loopback says 200 once the broker and the database are connected
for _ in $(seq 1 100); do
  [[ $(status - "http://127.0.0.1:$PORT/readyz") == 200 ]] && break
  kill -0 "$API_PID" 2>/dev/null || { echo "FAIL: sluice-api exited"; exit 1; }
  sleep 0.2
done

fails=0
expect() { # expect WANT NETNS|- URL WHAT
  local got
  got=$(status "$2" "$3")
  if [[ $got == "$1" ]]; then
    echo "ok: $4: $got"
  else
    echo "FAIL: $4: $got, want $1"
    fails=$((fails + 1))
  fi
}
expect 200 - "http://127.0.0.1:$PORT/metrics" "/metrics from loopback"
expect 200 - "http://127.0.0.1:$PORT/readyz" "/readyz from loopback"
expect 200 "$NS" "http://$HOST_IP:$PORT/healthz" "/healthz from $PEER_IP (another host)"
expect 403 "$NS" "http://$HOST_IP:$PORT/metrics" "/metrics from $PEER_IP"
expect 403 "$NS" "http://$HOST_IP:$PORT/readyz" "/readyz from $PEER_IP"
# this host, but through its veth address: not loopback either
expect 403 - "http://$HOST_IP:$PORT/metrics" "/metrics from $HOST_IP (this host, not loopback)"
exit $((fails > 0))
