#!/usr/bin/env bash
# The whole test run: the normal build (g++) and an ASan+UBSan build (g++), each with every test
# suite, and a clang build with the unit suites.
# Prints each suite's summary line and ends with one line "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps
jobs=${JOBS:-$(nproc)}
status=0
summaries=()

run_build() {  # dir, suites ("" for all), extra meson args...
  local dir=$1 suites=$2
  shift 2
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" "$@" >"$dir.setup.log" 2>&1 || { cat "$dir.setup.log"; return 1; }
  fi
  echo "== $dir: building and testing" >&2
  ninja -C "$dir" >"$dir.ninja.log" 2>&1 || { tail -50 "$dir.ninja.log"; return 1; }
  local only=()
  for s in $suites; do only+=(--suite "$s"); done
  meson test -C "$dir" --num-processes "$jobs" --print-errorlogs --no-rebuild "${only[@]}" ||
    status=1
  while IFS= read -r line; do summaries+=("$dir: $line"); done < <(
    grep -E '^\[(doctest|proc)\].*test cases:' "$dir/meson-logs/testlog.txt")
}

run_build build "" || status=1
run_build build-asan "" -Db_sanitize=address,undefined -Db_lundef=false \
  -Dcpp_args=-fno-sanitize-recover=all || status=1
# clang: everything is built (warnings are errors) and the unit suites run; the process tests
# drive the same code as the g++ and ASan builds' runs, so they run there only (CI time). Its
# warnings come from clang's front end, whatever the optimisation: it builds at -O0 without
# debug info, 2-3x faster (proxy.cc 8.7 s -> 2.9 s, client_test.cc 11.1 s -> 4.1 s).
CXX=clang++ run_build build-clang unit -Doptimization=0 -Ddebug=false || status=1

# The failures last, so that the tail of the log names them: each failed test's name, result and
# the last lines of its output (pytest's and doctest's failure reports are at their ends).
failures() {
  for dir in build build-asan build-clang; do
    [ -f "$dir/meson-logs/testlog.json" ] || continue
    /usr/bin/python3 - "$dir" <<'PY'
import json, sys
d = sys.argv[1]
for line in open(d + "/meson-logs/testlog.json"):
    t = json.loads(line)
    if t["result"] not in ("OK", "SKIP", "EXPECTEDFAIL"):
        out = ((t.get("stdout") or "") + (t.get("stderr") or "")).splitlines()
        print(f"== FAILED {d}: {t['name']} ({t['result']}, {t.get('duration', 0):.0f} s)")
        for l in [x for x in out if "FAILED" in x or "ERROR" in x or "Error" in x or "SUMMARY" in x][:10]:
            print("   ", l[:300])
        print("   -- last lines:")
        for l in out[-8:]:
            print("   ", l[:300])
PY
  done
}

passed=0 failed=0
for s in "${summaries[@]}"; do
  echo "$s"
  p=$(sed -E 's/.*\| *([0-9]+) passed.*/\1/' <<<"$s")
  f=$(sed -E 's/.*\| *([0-9]+) failed.*/\1/' <<<"$s")
  passed=$((passed + p)) failed=$((failed + f))
done
[ ${#summaries[@]} -eq 0 ] && status=1
[ $status -ne 0 ] && [ $failed -eq 0 ] && failed=1  # a suite that crashed or did not build
[ $status -ne 0 ] && failures
echo "$passed passed, $failed failed"
exit $status
