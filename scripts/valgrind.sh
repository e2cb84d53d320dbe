#!/usr/bin/env bash
# Runs the unit tests (ctest label "unit": no servers needed) under valgrind's memcheck, on a
# plain build (valgrind and the sanitizers do not mix) in build-valgrind/.
#
#   scripts/valgrind.sh                 # every unit test
#   scripts/valgrind.sh check_stream    # only the named ones
#   SLUICE_VALGRIND_BUILD_DIR=/tmp/bv scripts/valgrind.sh
#
# Any invalid access, use of uninitialised memory, or leak (definite or possible) fails the run:
# valgrind --error-exitcode=1 --leak-check=full, with tests/valgrind.supp for third-party code.
# Check runs each test in the same process (CK_FORK=no), so what a test leaks is seen.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR"

BUILD_DIR=${SLUICE_VALGRIND_BUILD_DIR:-$REPO_DIR/build-valgrind}

section() { printf '\n=== %s\n' "$*"; }

section "dependencies"
scripts/deps.sh
if ! command -v valgrind >/dev/null; then
  SUDO=()
  if ((EUID != 0)); then SUDO=(sudo); fi
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get install -y --no-install-recommends valgrind ||
    { "${SUDO[@]}" apt-get update && "${SUDO[@]}" apt-get install -y --no-install-recommends valgrind; }
fi
valgrind --version

section "build ($BUILD_DIR)"
cmake -S "$REPO_DIR" -B "$BUILD_DIR" -DSLUICE_SANITIZE=OFF >/dev/null
cmake --build "$BUILD_DIR" -j2

tests=("$@")
if ((${#tests[@]} == 0)); then
  # "  Test #1: check_message" for every test labelled unit
  mapfile -t tests < <(ctest --test-dir "$BUILD_DIR" -L '^unit$' -N | sed -n 's/^ *Test *#[0-9]*: *//p')
fi
((${#tests[@]} > 0)) || { echo "valgrind: no unit tests found" >&2; exit 1; }

export CK_FORK=no
failed=0
summary=()
for t in "${tests[@]}"; do
  bin=$BUILD_DIR/bin/$t
  [[ -x $bin ]] || { echo "valgrind: no test binary $bin" >&2; exit 2; }
  section "$t under valgrind"
  log=$BUILD_DIR/valgrind-$t.log
  rc=0
  valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,possible \
    --suppressions="$REPO_DIR/tests/valgrind.supp" --log-file="$log" "$bin" || rc=$?
  if ((rc == 0)); then
    summary+=("$t: passed")
  else
    failed=$((failed + 1))
    grep -E 'Invalid|uninitialised|definitely lost|possibly lost|ERROR SUMMARY' "$log" | head -n 20 || true
    summary+=("$t: FAILED (exit $rc), valgrind log $log")
  fi
done

section "summary"
printf '%s\n' "${summary[@]}"
exit $((failed > 0))
