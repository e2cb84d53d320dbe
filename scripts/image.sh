#!/usr/bin/env bash
# The project's image, built with podman (no Docker engine), and a smoke test through containers.
#
#   scripts/image.sh build   the Debian base image if missing (debootstrap --variant=minbase
#                            bookworm from this machine's apt mirror, tarball cached in
#                            .state/image/base), then `podman build --pull=never --network=host
#                            -t localhost/sluice:dev .`
#   scripts/image.sh smoke   private RabbitMQ and PostgreSQL (scripts/servers.sh, ports 5882/5643,
#                            .state/image-servers), then the persister, the api and two sse
#                            instances from the image (--network=host, on 127.0.0.1:18083, 18080,
#                            18081, 18084): a POST answers 202, the message arrives on an SSE
#                            stream of the first sse, replays on a resume from the second, and is in
#                            the api's history; `podman stop` (SIGTERM) ends every container with
#                            exit code 0. Then the servers stop and their state is deleted.
#   scripts/image.sh ci      installs podman, debootstrap, runc... with apt-get when missing, then
#                            build + smoke from an empty podman storage (only the base tarball is
#                            reused); the storage is deleted again after a pass.
#   scripts/image.sh clean   removes this script's containers, podman storage, base tarball and
#                            the servers' state.
#   scripts/image.sh podman ARGS...   podman with this script's configuration, to look around.
#
# podman runs with a configuration of its own (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF): runtime
# runc (crun refuses hybrid cgroups), default ulimits below the hard limit (root here lacks
# CAP_SYS_RESOURCE), cgroupfs (no systemd), file locks and events, storage in .state/image/storage,
# run state in /run/sluice-image-<hash of the repo path>. Nothing is fetched but Debian packages.
#
# Ports: SLUICE_IMAGE_API_PORT (18080), SLUICE_IMAGE_SSE_PORTS ("18081 18084"),
# SLUICE_IMAGE_PERSISTER_PORT (18083); servers SLUICE_IMAGE_AMQP_PORT (5882; epmd 4882,
# distribution 25882) and SLUICE_IMAGE_PG_PORT (5643).
# smoke prints one line per check and closes with `N passed, N failed`; every step is bounded.
# shellcheck disable=SC2317  # the checks run through check and wait_for
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SCRIPT_DIR")
cd "$REPO_DIR"

log() { printf '%s\n' "$*"; }
die() { printf 'image.sh: %s\n' "$*" >&2; exit 1; }
# pid_alive, port_in_use, now_ms, elapsed, tail_file
# shellcheck source=lib.sh
. "$SCRIPT_DIR/lib.sh"

IMAGE=localhost/sluice:dev
BASE=localhost/debian:bookworm
SUITE=bookworm
STATE=$REPO_DIR/.state/image
BASE_TAR=$STATE/base/debian-$SUITE-minbase.tar
STORE=$STATE/storage
LOGS=$STATE/logs
# Run state belongs on a file system that a reboot empties; one directory per checkout.
RUN=/run/sluice-image-$(printf '%s' "$REPO_DIR" | cksum | cut -d' ' -f1)

SERVERS_STATE=$REPO_DIR/.state/image-servers
AMQP_PORT=${SLUICE_IMAGE_AMQP_PORT:-5882}
PG_PORT=${SLUICE_IMAGE_PG_PORT:-5643}
API_PORT=${SLUICE_IMAGE_API_PORT:-18080}
read -ra SSE_PORTS <<<"${SLUICE_IMAGE_SSE_PORTS:-18081 18084}"
PERSISTER_PORT=${SLUICE_IMAGE_PERSISTER_PORT:-18083}
PREFIX=sluice-smoke

TOOLS=(podman debootstrap runc uidmap fuse-overlayfs slirp4netns containernetworking-plugins curl)

# --- podman's configuration ---------------------------------------------------------------------

configure_podman() {
  mkdir -p "$STATE" "$STORE" "$LOGS" "$RUN" "$STATE/cni"
  cat >"$STATE/containers.conf" <<EOF
# Written by scripts/image.sh; rewritten on every run.
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$RUN/events.log"
tmp_dir = "$RUN/libpod"
lock_type = "file"

[network]
network_backend = "cni"
network_config_dir = "$STATE/cni"
EOF
  cat >"$STATE/storage.conf" <<EOF
# Written by scripts/image.sh; rewritten on every run.
[storage]
driver = "overlay"
graphroot = "$STORE"
runroot = "$RUN/storage"
EOF
  export CONTAINERS_CONF=$STATE/containers.conf CONTAINERS_STORAGE_CONF=$STATE/storage.conf
}

install_tools() {
  local pkg missing=()
  for pkg in "${TOOLS[@]}"; do
    [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true) == "install ok installed" ]] || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    log "image: ${TOOLS[*]} installed"
    return 0
  fi
  local sudo=()
  ((EUID == 0)) || sudo=(sudo)
  log "image: installing ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# --- the base image -----------------------------------------------------------------------------

# "URI SUITE" for every deb source with component main that apt on this machine uses.
apt_sources() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    awk '$1 == "deb" {
      i = 2
      if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
      for (j = i + 2; j <= NF; j++) if ($j == "main") { print $i, $(i + 1); break }
    }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    awk '
      function flush(  n, m, a, b, U, S) {
        if (types ~ /(^| )deb( |$)/ && comps ~ /(^| )main( |$)/ && enabled != "no") {
          n = split(uris, U, " "); m = split(suites, S, " ")
          for (a = 1; a <= n; a++) for (b = 1; b <= m; b++) print U[a], S[b]
        }
        types = uris = suites = comps = enabled = ""
      }
      /^#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^[A-Za-z-]+:/ {
        k = tolower(substr($0, 1, index($0, ":") - 1)); v = substr($0, index($0, ":") + 1)
        gsub(/^[ \t]+|[ \t]+$/, "", v)
        if (k == "types") types = v; else if (k == "uris") uris = v
        else if (k == "suites") suites = v; else if (k == "components") comps = v
        else if (k == "enabled") enabled = tolower(v)
      }
      END { flush() }' "$f"
  done
}

# Unmount whatever debootstrap left mounted below $1 (it mounts /proc and /sys while it works).
umount_below() {
  local m
  while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r)
}

debootstrap_base() {
  local sources mirror rootfs t0
  sources=$(apt_sources | awk '$1 ~ /^https?:\/\// && !seen[$0]++')
  mirror=$(awk -v s="$SUITE" '$2 == s { print $1; exit }' <<<"$sources")
  [[ -n $mirror ]] || die "no http(s) apt source for $SUITE main in /etc/apt/sources.list or sources.list.d"
  rootfs=$STATE/base/rootfs
  mkdir -p "$STATE/base"
  umount_below "$rootfs"
  rm -rf --one-file-system "$rootfs"
  log "image: debootstrap --variant=minbase $SUITE from $mirror (log: $LOGS/debootstrap.log)"
  t0=$(now_ms)
  if ! timeout 900 debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >"$LOGS/debootstrap.log" 2>&1; then
    tail_file "$LOGS/debootstrap.log" 30
    umount_below "$rootfs"
    die "debootstrap failed after $(elapsed "$t0")"
  fi
  umount_below "$rootfs"
  # The same sources as this machine (the suite, its updates and security), so that apt-get in
  # the build reaches the mirror debootstrap used and nothing else.
  awk -v s="$SUITE" '$2 == s || $2 == s "-updates" || $2 == s "-security" { print "deb " $1 " " $2 " main" }' \
    <<<"$sources" >"$rootfs/etc/apt/sources.list"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar --numeric-owner -C "$rootfs" -cf "$BASE_TAR.tmp" .
  mv "$BASE_TAR.tmp" "$BASE_TAR"
  rm -rf --one-file-system "$rootfs"
  log "image: base rootfs in $(elapsed "$t0") ($(du -h "$BASE_TAR" | cut -f1))"
}

ensure_base() {
  if podman image exists "$BASE" && podman image exists "$BASE-slim"; then
    log "image: base $BASE present"
    return 0
  fi
  if [[ -s $BASE_TAR ]]; then
    log "image: base tarball cached ($BASE_TAR)"
  else
    debootstrap_base
  fi
  local t0
  t0=$(now_ms)
  timeout 300 podman import --quiet --change 'CMD ["/bin/bash"]' "$BASE_TAR" "$BASE" >/dev/null ||
    die "podman import $BASE_TAR failed"
  podman tag "$BASE" "$BASE-slim"
  log "image: imported $BASE and $BASE-slim in $(elapsed "$t0")"
}

build() {
  local t0 rc=0
  ensure_base
  log "image: podman build -t $IMAGE (log: $LOGS/build.log)"
  t0=$(now_ms)
  timeout 1200 podman build --pull=never --network=host -t "$IMAGE" -f Dockerfile . \
    >"$LOGS/build.log" 2>&1 || rc=$?
  if ((rc != 0)); then
    tail_file "$LOGS/build.log" 60
    die "podman build failed (exit $rc) after $(elapsed "$t0")"
  fi
  log "image: built $IMAGE in $(elapsed "$t0") ($(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
}

# --- the smoke test -----------------------------------------------------------------------------

passed=0
failed=0
ok() { passed=$((passed + 1)); printf 'ok   %s\n' "$*"; }
bad() { failed=$((failed + 1)); printf 'FAIL %s\n' "$*"; }
check() { # check "description" command...
  local what=$1
  shift
  if "$@"; then ok "$what"; else bad "$what"; fi
}

ready() { [[ $(http_code "http://127.0.0.1:$1/readyz") == 200 ]]; }

# servers SECONDS ARGS...: scripts/servers.sh on our state dir and ports, bounded.
servers() {
  local secs=$1
  shift
  SLUICE_STATE_DIR=$SERVERS_STATE SLUICE_AMQP_PORT=$AMQP_PORT SLUICE_PG_PORT=$PG_PORT \
    timeout "$secs" "$SCRIPT_DIR/servers.sh" "$@"
}

CONTAINERS=()
smoke_tmp=
stream_pid=
servers_up=0

show_logs() {
  local c
  timeout 20 podman ps -a --format '{{.Names}}: {{.Status}}' >&2 2>&1 || true
  for c in "${CONTAINERS[@]}"; do
    printf -- '--- podman logs %s (last 40 lines) ---\n' "$c" >&2
    timeout 20 podman logs --tail 40 "$c" >&2 2>&1 || true
  done
  tail_file "$SERVERS_STATE/rabbitmq/log/rabbit.log" 20
  tail_file "$SERVERS_STATE/postgres.log" 20
}

# Runs on every exit of smoke: what it started goes, the logs are printed on a failure.
smoke_cleanup() {
  local rc=$? c
  if [[ -n $stream_pid ]] && pid_alive "$stream_pid"; then kill "$stream_pid" 2>/dev/null || true; fi
  if ((rc != 0 || failed > 0)); then show_logs; fi
  for c in "${CONTAINERS[@]}"; do timeout 60 podman rm -f -t 5 "$c" >/dev/null 2>&1 || true; done
  if ((servers_up)); then
    servers 120 stop >/dev/null 2>&1 || log "image: stopping the servers failed (state in $SERVERS_STATE)"
    if ((rc == 0 && failed == 0)); then rm -rf "$SERVERS_STATE"; fi
  fi
  if ((rc == 0 && failed == 0)); then rm -rf "$smoke_tmp"; elif [[ -n $smoke_tmp ]]; then log "image: smoke files kept in $smoke_tmp"; fi
  exit "$rc"
}

finish() {
  printf '\nimage smoke: %d passed, %d failed\n' "$passed" "$failed"
  if ((failed > 0)); then exit 1; fi
  exit 0
}
fatal() { bad "$*"; finish; }

# run_service NAME BINARY ENV...: a detached container of the image on the host's network.
run_service() {
  local name=$PREFIX-$1 bin=$2
  shift 2
  CONTAINERS+=("$name")
  local env=() e
  for e in "$@"; do env+=(-e "$e"); done
  timeout 60 podman run -d --name "$name" --network=host "${env[@]}" \
    -e "SLUICE_AMQP_URL=$SLUICE_AMQP_URL" -e "SLUICE_DB_URL=$SLUICE_DB_URL" "$IMAGE" "$bin" >/dev/null
}

smoke() {
  local t_start t0 c p
  t_start=$(now_ms)
  podman image exists "$IMAGE" || die "no image $IMAGE: run scripts/image.sh build first"
  smoke_tmp=$(mktemp -d)
  trap smoke_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  # Leftovers of an interrupted run: our containers, our servers.
  for c in persister api "${SSE_PORTS[@]/#/sse-}"; do timeout 60 podman rm -f -t 5 "$PREFIX-$c" >/dev/null 2>&1 || true; done
  servers 120 stop >/dev/null 2>&1 || true
  rm -rf "$SERVERS_STATE"
  local busy=()
  for p in "$API_PORT" "${SSE_PORTS[@]}" "$PERSISTER_PORT"; do port_in_use "$p" && busy+=("$p"); done
  ((${#busy[@]} == 0)) || fatal "ports in use by something else: ${busy[*]}"

  log "== servers (RabbitMQ $AMQP_PORT, PostgreSQL $PG_PORT, state $SERVERS_STATE)"
  servers_up=1
  servers 180 start || fatal "scripts/servers.sh start failed"
  eval "$(servers 10 env)"

  log "== containers of $IMAGE"
  t0=$(now_ms)
  run_service persister sluice-persister SLUICE_PERSISTER_HOST=127.0.0.1 "SLUICE_PERSISTER_PORT=$PERSISTER_PORT" ||
    fatal "podman run $PREFIX-persister failed"
  # The persister declares the queue and migrates the schema; the others start after it.
  if wait_for 60 ready "$PERSISTER_PORT"; then
    ok "persister (container $PREFIX-persister) answers /readyz 200 on $PERSISTER_PORT (after $(elapsed "$t0"))"
  else
    fatal "persister did not answer /readyz 200 on $PERSISTER_PORT within 60 s"
  fi
  run_service api sluice-api SLUICE_API_HOST=127.0.0.1 "SLUICE_API_PORT=$API_PORT" ||
    fatal "podman run $PREFIX-api failed"
  local i=0
  for p in "${SSE_PORTS[@]}"; do
    i=$((i + 1))
    run_service "sse-$p" sluice-sse SLUICE_SSE_HOST=127.0.0.1 "SLUICE_SSE_PORT=$p" \
      "SLUICE_SSE_INSTANCE=smoke-sse-$i" "SLUICE_SSE_API_URL=http://127.0.0.1:$API_PORT" ||
      fatal "podman run $PREFIX-sse-$p failed"
  done
  for p in "$API_PORT" "${SSE_PORTS[@]}"; do
    if wait_for 60 ready "$p"; then
      ok "127.0.0.1:$p answers /readyz 200 (after $(elapsed "$t0"))"
    else
      fatal "127.0.0.1:$p did not answer /readyz 200 within 60 s"
    fi
  done

  log "== post -> stream -> history"
  local api=http://127.0.0.1:$API_PORT sse=http://127.0.0.1:${SSE_PORTS[0]} channel text id seq code
  channel=image-$$-$RANDOM
  text="image smoke $channel $(date +%s%N)"
  curl -sN -m 60 "$sse/v1/stream?channels=$channel&history=0" >"$smoke_tmp/stream.sse" 2>/dev/null &
  stream_pid=$!
  check "an SSE stream of channel $channel opens on $sse (retry: line within 10 s)" \
    wait_for 10 grep -q '^retry: ' "$smoke_tmp/stream.sse"
  code=$(curl -s -o "$smoke_tmp/post.json" -m 10 -w '%{http_code}' -X POST "$api/v1/messages" \
    -H 'Content-Type: application/json' \
    --data "{\"channel\":\"$channel\",\"author\":\"image_smoke\",\"text\":\"$text\"}" || true)
  id=$(sed -n 's/.*"id":"\([0-9a-f-]*\)".*/\1/p' "$smoke_tmp/post.json")
  check "POST $api/v1/messages answers 202 with an id (got $code: $(head -c 160 "$smoke_tmp/post.json"))" \
    test "$code" = 202 -a -n "$id"
  [[ -n $id ]] || fatal "no message id: the rest needs it"

  t0=$(now_ms)
  if wait_for 15 grep -qF "\"id\":\"$id\"" "$smoke_tmp/stream.sse"; then
    ok "the message arrives on the stream (after $(elapsed "$t0"))"
  else
    bad "the message did not arrive on the stream within 15 s"
  fi
  seq=$(grep -B2 -F "\"id\":\"$id\"" "$smoke_tmp/stream.sse" | sed -n 's/^id: \([0-9]*\)$/\1/p' | head -1)
  event_ok() {
    [[ $seq =~ ^[0-9]+$ ]] && grep -B1 -F "\"id\":\"$id\"" "$smoke_tmp/stream.sse" | grep -qx 'event: message' &&
      grep -F "\"id\":\"$id\"" "$smoke_tmp/stream.sse" | grep -qF "\"text\":\"$text\""
  }
  check "... as event: message with id: <seq> (${seq:-none}) and its text" event_ok
  kill "$stream_pid" 2>/dev/null || true
  wait "$stream_pid" 2>/dev/null || true
  stream_pid=

  if ((${#SSE_PORTS[@]} > 1)) && [[ $seq =~ ^[0-9]+$ ]]; then
    local sse2=http://127.0.0.1:${SSE_PORTS[1]}
    curl -sN -m 3 -H "Last-Event-ID: $((seq - 1))" "$sse2/v1/stream?channels=$channel&history=0" \
      >"$smoke_tmp/resume.sse" 2>/dev/null || true
    check "a stream resumed on the second sse ($sse2, Last-Event-ID: $((seq - 1))) replays it" \
      grep -qF "\"id\":\"$id\"" "$smoke_tmp/resume.sse"
  fi

  in_history() {
    curl -s -m 5 "$api/v1/messages?channel=$channel&limit=10" >"$smoke_tmp/history.json" 2>/dev/null &&
      grep -qF "\"id\":\"$id\"" "$smoke_tmp/history.json"
  }
  check "GET $api/v1/messages?channel=$channel lists it" wait_for 15 in_history
  history_ok() { grep -qF "\"text\":\"$text\"" "$smoke_tmp/history.json" && grep -q "\"seq\":${seq:-x}[,}]" "$smoke_tmp/history.json"; }
  check "... with its text and seq ${seq:-none}" history_ok

  log "== podman stop (SIGTERM): every service drains and exits 0"
  local state
  # The api first (its in-flight publishes), the persister last (it commits what is left).
  for c in api "${SSE_PORTS[@]/#/sse-}" persister; do
    t0=$(now_ms)
    timeout 90 podman stop -t 30 "$PREFIX-$c" >/dev/null 2>&1 || true
    state=$(podman inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$PREFIX-$c" 2>/dev/null || echo '? ?')
    check "$PREFIX-$c stopped in $(elapsed "$t0"): status ${state% *}, exit code ${state#* }" \
      test "$state" = "exited 0"
  done

  printf '\nimage smoke: took %s\n' "$(elapsed "$t_start")"
  finish
}

# --- clean --------------------------------------------------------------------------------------

# The podman storage (containers and images, overlay mounts included) and the run state. Not
# `podman system reset`: it also removes networks, and those live in a shared directory.
clean_storage() {
  configure_podman
  timeout 120 podman rm -a -f -t 5 >/dev/null 2>&1 || log "image: podman rm -a failed; removing the files"
  umount_below "$STORE"
  umount_below "$RUN"
  rm -rf --one-file-system "$STORE" "$RUN"
}

clean() {
  if [[ -d $SERVERS_STATE ]]; then servers 120 stop >/dev/null 2>&1 || true; fi
  rm -rf "$SERVERS_STATE"
  clean_storage
  umount_below "$STATE"
  rm -rf --one-file-system "$STATE"
  log "image: removed $STATE, $SERVERS_STATE and $RUN"
}

usage() {
  sed -n '2,/^# shellcheck disable/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

main() {
  (($# >= 1)) || usage
  local cmd=$1
  shift
  case $cmd in
    build)
      configure_podman
      build
      ;;
    smoke)
      configure_podman
      smoke
      ;;
    ci)
      local t0
      t0=$(now_ms)
      install_tools
      clean_storage
      configure_podman
      build
      # A process of its own: smoke ends through its EXIT trap.
      "${BASH_SOURCE[0]}" smoke || { log "image: smoke failed after $(elapsed "$t0") in all; podman storage kept in $STORE"; exit 1; }
      clean_storage
      log "image: ci passed in $(elapsed "$t0")"
      ;;
    clean) clean ;;
    podman)
      configure_podman
      exec podman "$@"
      ;;
    -h | --help | help) usage 0 ;;
    *) usage ;;
  esac
}

main "$@"
