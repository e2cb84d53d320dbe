# Shared helpers for the scripts in this folder; source it, do not run it.
# The sourcing script defines log MESSAGE and die MESSAGE.
#
# PID 1 on our machines does not reap orphans, so a process that has exited can
# stay a zombie whose PID still answers `kill -0`: here a zombie counts as gone.
# shellcheck shell=bash

pid_alive() {
  local st
  [[ ${1:-} =~ ^[0-9]+$ ]] || return 1
  st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ -n $st && $st != Z* ]]
}

# pid_is PID WORD: PID is alive and WORD occurs in its command line.
pid_is() {
  pid_alive "$1" || return 1
  local cmd
  cmd=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
  [[ $cmd == *"$2"* ]]
}

read_pid() {
  if [[ -f $1 ]]; then head -n1 "$1" | tr -dc '0-9'; fi
}

# wait_gone SECONDS PID...: 0 once all are gone, 1 on timeout.
wait_gone() {
  local deadline=$((SECONDS + $1)) p any
  shift
  while :; do
    any=0
    for p in "$@"; do pid_alive "$p" && any=1; done
    ((any)) || return 0
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

# kill_pids NAME PID...: SIGTERM, wait up to 10 s, then SIGKILL.
kill_pids() {
  local name=$1 p alive=()
  shift
  for p in "$@"; do pid_alive "$p" && alive+=("$p"); done
  ((${#alive[@]})) || return 0
  kill -TERM "${alive[@]}" 2>/dev/null || true
  if ! wait_gone 10 "${alive[@]}"; then
    log "$name: still running after SIGTERM, sending SIGKILL to ${alive[*]}"
    kill -KILL "${alive[@]}" 2>/dev/null || true
    wait_gone 5 "${alive[@]}" || die "$name: could not kill ${alive[*]}"
  fi
}

# PID and all its live descendants (erl_child_setup and friends run in sessions
# of their own, so the process tree is the way to find them).
tree_pids() {
  [[ ${1:-} =~ ^[0-9]+$ ]] || return 0
  ps -eo pid=,ppid=,stat= | awk -v root="$1" '
    $3 !~ /^Z/ { parent[$1] = $2 }
    END {
      for (p in parent) {
        q = p
        while (q != root && (q in parent) && q > 1) q = parent[q]
        if (q == root) print p
      }
    }'
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $((t / 1000)); }
elapsed() { local ms=$(($(now_ms) - $1)); printf '%d.%03d s' $((ms / 1000)) $((ms % 1000)); }

tail_file() {
  [[ -f $1 ]] || return 0
  printf -- '--- last lines of %s ---\n' "$1" >&2
  tail -n "${2:-40}" "$1" >&2
}

# http_code URL [OUT]: the HTTP status of a GET (5 s at most; "000" when no answer), body to OUT.
http_code() { curl -s -o "${2:-/dev/null}" -m 5 -w '%{http_code}' "$1" 2>/dev/null || true; }

# wait_for SECONDS COMMAND...: 0 once COMMAND succeeds, 1 on timeout.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# --- a native stack of our own: the api, the persister and two sse instances ---------------------
# (scripts/chaos.sh, tests/js/run.sh)

# wipeable_state_dir VAR REPO_DIR: makes the path in VAR absolute, and dies if it is one a script
# must not wipe (/, the repository, $HOME, /tmp).
wipeable_state_dir() {
  local -n dir=$1
  [[ $dir == /* ]] || dir=$PWD/$dir
  case $dir in
    / | "$2" | "$HOME" | /tmp | /tmp/) die "refusing to wipe state dir '$dir'" ;;
  esac
}

# stack_ports BASE: the api, persister, sse1 and sse2 listen on BASE and the next three, in the
# associative array PORT (declare -A PORT first).
stack_ports() {
  PORT=([api]=$1 [persister]=$(($1 + 1)) [sse1]=$(($1 + 2)) [sse2]=$(($1 + 3)))
}

# stack_cmd NAME BIN_DIR INSTANCE_PREFIX: the command line of service NAME (api, persister, sse1,
# sse2) on its port of PORT, in the array STACK_CMD; 1 for another name.
# shellcheck disable=SC2034  # STACK_CMD is the caller's
stack_cmd() {
  case $1 in
    api) STACK_CMD=(env "SLUICE_API_PORT=${PORT[api]}" "$2/sluice-api") ;;
    persister) STACK_CMD=(env "SLUICE_PERSISTER_PORT=${PORT[persister]}" "$2/sluice-persister") ;;
    sse1 | sse2) STACK_CMD=(env "SLUICE_SSE_PORT=${PORT[$1]}" "SLUICE_SSE_INSTANCE=$3-$1" "$2/sluice-sse") ;;
    *) return 1 ;;
  esac
}

# stop_pid_files PID_DIR BIN_DIR: stops (SIGCONT, then kill_pids) each PID written in PID_DIR that
# is still one of BIN_DIR's programs (a PID file may outlive its process), and names each on stdout.
stop_pid_files() {
  local f p
  [[ -d $1 ]] || return 0
  for f in "$1"/*; do
    [[ -f $f ]] || continue
    p=$(read_pid "$f")
    if pid_is "$p" "$2/s"; then
      printf 'stopping pid %s (%s)\n' "$p" "$(basename "$f")"
      kill -CONT "$p" 2>/dev/null || true
      kill_pids "$(basename "$f")" "$p"
    fi
  done
}

# servers_with_db SERVERS DB LOGFILE: the benchmarks' private servers (scripts/servers.sh,
# started unless they run, then servers_started=1), their environment exported, and
# SLUICE_DB_URL a fresh database DB on them (dropped and made again).
servers_with_db() {
  local servers=$1 db=$2 logf=$3
  if ! "$servers" status >/dev/null 2>&1; then
    # shellcheck disable=SC2034  # the sourcing script's, for its cleanup
    servers_started=1
    "$servers" start | tee -a "$logf"
  fi
  eval "$("$servers" env)"
  export SLUICE_DB_URL=postgresql://postgres@127.0.0.1:$SLUICE_PG_PORT/$db
  "$servers" psql -d postgres -q -v ON_ERROR_STOP=1 \
    -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >>"$logf" 2>&1 ||
    die "could not create database $db"
}
