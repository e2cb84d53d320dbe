#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz (clang, ASan+UBSan) in build-fuzz/ and runs each one
# for a bounded time on a copy of its seed corpus (plus the reproducers of past findings).
#
#   scripts/fuzz.sh            # 60 s per target
#   scripts/fuzz.sh 10         # 10 s per target
#   scripts/fuzz.sh 60 msse    # only the named targets (fuzz_msse)
#   SLUICE_FUZZ_BUILD_DIR=/tmp/bf scripts/fuzz.sh
#   SLUICE_FUZZ_REGRESSIONS=0 scripts/fuzz.sh   # seeds only, without tests/fuzz/regressions
#
# Exits non-zero when any target crashes, leaks, hangs or breaks an invariant. The input that
# did it is kept in build-fuzz/fuzz-out/<target>/ (crash-*, leak-*, timeout-*); replay it with
#   build-fuzz/fuzz/fuzz_<target> <file>
# A fixed finding's input belongs in tests/fuzz/regressions/<target>/ so it stays fixed.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR"

SECONDS_PER_TARGET=${1:-60}
shift || true
[[ $SECONDS_PER_TARGET =~ ^[1-9][0-9]*$ ]] || { echo "usage: scripts/fuzz.sh [seconds-per-target] [target...]" >&2; exit 2; }
BUILD_DIR=${SLUICE_FUZZ_BUILD_DIR:-$REPO_DIR/build-fuzz}
OUT_DIR=$BUILD_DIR/fuzz-out

section() { printf '\n=== %s\n' "$*"; }

# clang with libFuzzer: the test is whether it links a fuzzer, not whether clang exists.
have_libfuzzer() {
  local dir rc=0
  command -v clang >/dev/null || return 1
  dir=$(mktemp -d)
  printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' >"$dir/t.c"
  clang -fsanitize=fuzzer,address,undefined "$dir/t.c" -o "$dir/t" >/dev/null 2>&1 || rc=1
  rm -rf "$dir"
  return "$rc"
}

section "dependencies"
scripts/deps.sh
if ! have_libfuzzer; then
  SUDO=()
  if ((EUID != 0)); then SUDO=(sudo); fi
  pkgs=(clang)
  if command -v clang >/dev/null; then
    ver=$(clang --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -n1)
    pkgs+=("libclang-rt-$ver-dev")
  else
    pkgs+=(libclang-rt-14-dev) # Debian 12's clang is clang-14
  fi
  echo "fuzz: installing ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get install -y --no-install-recommends "${pkgs[@]}" ||
    { "${SUDO[@]}" apt-get update && "${SUDO[@]}" apt-get install -y --no-install-recommends "${pkgs[@]}"; }
  have_libfuzzer || { echo "fuzz: clang cannot link -fsanitize=fuzzer" >&2; exit 1; }
fi
clang --version | head -n1

section "build ($BUILD_DIR)"
cmake -S "$REPO_DIR" -B "$BUILD_DIR" -DCMAKE_C_COMPILER=clang -DSLUICE_FUZZ=ON -DSLUICE_SANITIZE=ON >/dev/null
cmake --build "$BUILD_DIR" --target sluice_fuzz -j2

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$REPO_DIR/tests/lsan.supp:print_suppressions=0}

targets=("$@")
if ((${#targets[@]} == 0)); then
  for src in tests/fuzz/fuzz_*.c; do
    t=${src#tests/fuzz/fuzz_}
    targets+=("${t%.c}")
  done
fi

passed=0
failed=0
summary=()
for t in "${targets[@]}"; do
  bin=$BUILD_DIR/fuzz/fuzz_$t
  [[ -x $bin ]] || { echo "fuzz: no target fuzz_$t" >&2; exit 2; }
  section "fuzz_$t (${SECONDS_PER_TARGET} s)"
  work=$OUT_DIR/$t
  rm -rf "$work"
  mkdir -p "$work/corpus"
  # a copy: what the run adds stays in build-fuzz, the repository keeps its few seeds
  cp tests/fuzz/corpus/"$t"/* "$work/corpus/"
  if [[ ${SLUICE_FUZZ_REGRESSIONS:-1} != 0 && -d tests/fuzz/regressions/$t ]]; then
    cp tests/fuzz/regressions/"$t"/* "$work/corpus/"
  fi
  args=(-max_total_time="$SECONDS_PER_TARGET" -timeout=25 -rss_limit_mb=2048 -print_final_stats=1
    -artifact_prefix="$work/")
  if [[ -f tests/fuzz/$t.dict ]]; then args+=(-dict="tests/fuzz/$t.dict"); fi
  rc=0
  # the outer limit only catches a fuzzer that does not stop by itself
  timeout --signal=KILL $((SECONDS_PER_TARGET + 300)) "$bin" "${args[@]}" "$work/corpus" >"$work/log" 2>&1 || rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -n1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/log" | tail -n1)
  if [[ -z $runs ]]; then # a crash ends the run before the final stats
    runs=$(sed -n 's/^#\([0-9]*\).*/\1/p' "$work/log" | tail -n1)
  fi
  inputs=$(find "$work/corpus" -type f | wc -l)
  artifacts=$(find "$work" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \))
  if ((rc == 0)) && [[ -z $artifacts ]]; then
    passed=$((passed + 1))
    line="fuzz_$t: passed, ${runs:-?} executions (${rate:-?} exec/s), corpus $inputs inputs"
  else
    failed=$((failed + 1))
    line="fuzz_$t: FAILED (exit $rc) after ${runs:-?} executions"
    # what broke, and the input that broke it
    grep -E 'invariant failed|runtime error|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|SUMMARY' "$work/log" |
      head -n 8 || true
    for a in $artifacts; do
      echo "input: $a ($(wc -c <"$a") bytes)"
      head -c 512 "$a" | od -An -c | head -n 12
    done
    echo "log: $work/log"
  fi
  echo "$line"
  summary+=("$line")
done

section "summary"
printf '%s\n' "${summary[@]}"
echo "$passed passed, $failed failed"
((failed == 0))
