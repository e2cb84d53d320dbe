#!/usr/bin/env bash
# Builds sluice and runs its test suite against private, freshly made RabbitMQ
# and PostgreSQL servers.
#
#   ./test.sh                     # all tests, build/
#   ./test.sh -R persist          # extra arguments go to ctest
#   SLUICE_SANITIZE=1 ./test.sh   # ASan+UBSan build in build-asan/
#   SLUICE_BUILD_DIR=/tmp/b ./test.sh  # another build directory
#
# The test servers' state lives in .state/test (wiped at every run) on AMQP port
# 5682 and PostgreSQL port 5443; override with SLUICE_TEST_STATE_DIR,
# SLUICE_TEST_AMQP_PORT and SLUICE_TEST_PG_PORT (separate from the SLUICE_*
# variables of scripts/servers.sh so a dev setup is never pointed at by tests).
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$REPO_DIR"

section() { printf '\n=== %s\n' "$*"; }

section "dependencies"
scripts/deps.sh

if [[ ${SLUICE_SANITIZE:-0} == 1 ]]; then
  BUILD_DIR=${SLUICE_BUILD_DIR:-$REPO_DIR/build-asan}
  SANITIZE=ON
  export CK_FORK=no
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
  export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$REPO_DIR/tests/lsan.supp:print_suppressions=0}
else
  BUILD_DIR=${SLUICE_BUILD_DIR:-$REPO_DIR/build}
  SANITIZE=OFF
fi

section "build ($BUILD_DIR, SLUICE_SANITIZE=$SANITIZE)"
t0=$SECONDS
cmake -S "$REPO_DIR" -B "$BUILD_DIR" -DSLUICE_SANITIZE="$SANITIZE"
cmake --build "$BUILD_DIR" -j2
echo "build took $((SECONDS - t0)) s"

export SLUICE_STATE_DIR=${SLUICE_TEST_STATE_DIR:-$REPO_DIR/.state/test}
export SLUICE_AMQP_PORT=${SLUICE_TEST_AMQP_PORT:-5682}
export SLUICE_PG_PORT=${SLUICE_TEST_PG_PORT:-5443}
case $SLUICE_STATE_DIR in
  / | "" | "$REPO_DIR" | "$HOME") echo "test.sh: refusing to wipe state dir '$SLUICE_STATE_DIR'" >&2; exit 1 ;;
esac

# shellcheck disable=SC2317  # invoked from the EXIT trap
stop_servers() {
  local rc=$?
  section "stopping test servers"
  if ! scripts/servers.sh stop && ((rc == 0)); then rc=1; fi
  exit "$rc"
}

section "test servers ($SLUICE_STATE_DIR, amqp $SLUICE_AMQP_PORT, postgres $SLUICE_PG_PORT)"
# A run that was killed may have left its servers up: stop them, then start fresh.
scripts/servers.sh stop >/dev/null 2>&1 || true
rm -rf "$SLUICE_STATE_DIR"
trap stop_servers EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
scripts/servers.sh start
eval "$(scripts/servers.sh env)"
export SLUICE_BIN_DIR=$BUILD_DIR/bin
echo "SLUICE_AMQP_URL=$SLUICE_AMQP_URL"
echo "SLUICE_DB_URL=$SLUICE_DB_URL"
echo "SLUICE_BIN_DIR=$SLUICE_BIN_DIR"

section "ctest${*:+ $*}"
t0=$SECONDS
rc=0
ctest --test-dir "$BUILD_DIR" --output-on-failure --no-tests=error "$@" || rc=$?
echo "tests took $((SECONDS - t0)) s (ctest exit status $rc)"
exit "$rc"
