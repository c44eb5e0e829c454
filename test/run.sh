#!/usr/bin/env bash
# The whole test run: the normal build (g++), an ASan+UBSan build (g++) and a clang build, each
# with every test suite.
# Prints each suite's summary line and ends with one line "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps
jobs=${JOBS:-$(nproc)}
status=0
summaries=()

run_build() {  # dir, extra meson args...
  local dir=$1
  shift
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" "$@" >"$dir.setup.log" 2>&1 || { cat "$dir.setup.log"; return 1; }
  fi
  echo "== $dir: building and testing" >&2
  ninja -C "$dir" >"$dir.ninja.log" 2>&1 || { tail -50 "$dir.ninja.log"; return 1; }
  meson test -C "$dir" --num-processes "$jobs" --print-errorlogs --no-rebuild || status=1
  while IFS= read -r line; do summaries+=("$dir: $line"); done < <(
    grep -E '^\[(doctest|proc)\].*test cases:' "$dir/meson-logs/testlog.txt")
}

run_build build || status=1
run_build build-asan -Db_sanitize=address,undefined -Db_lundef=false \
  -Dcpp_args=-fno-sanitize-recover=all || status=1
CXX=clang++ run_build build-clang || status=1

passed=0 failed=0
for s in "${summaries[@]}"; do
  echo "$s"
  p=$(sed -E 's/.*\| *([0-9]+) passed.*/\1/' <<<"$s")
  f=$(sed -E 's/.*\| *([0-9]+) failed.*/\1/' <<<"$s")
  passed=$((passed + p)) failed=$((failed + f))
done
[ ${#summaries[@]} -eq 0 ] && status=1
[ $status -ne 0 ] && [ $failed -eq 0 ] && failed=1  # a suite that crashed or did not build
echo "$passed passed, $failed failed"
exit $status
