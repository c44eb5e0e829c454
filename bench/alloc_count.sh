#!/usr/bin/env bash
# Heap allocations per routed call in the proxy (bench/alloccount.c, preloaded): a proxy in
# front of one demo, N pipelined invokes of SIZE bytes (8 connections x 64), minus a run with
# no calls, divided by the calls the proxy served. Loopback only.
# usage: bench/alloc_count.sh [SIZE (16)] [SECONDS (2)] [BENCH-ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-16}
T=${2:-2}
B=${BUILD:-build-release}
. bench/lib.sh
release_build aiorpcd aiorpc
cc -O1 -shared -fPIC -o "$tmp/alloccount.so" bench/alloccount.c
run() {  # load? → "allocations requests"
  start - ka $B/aiorpcd --role=keepalive --bind 127.0.0.1:0 --log-level error; local ka=127.0.0.1:$PORT
  start - demo $B/aiorpcd --role=demo --bind 127.0.0.1:0 --keepalive $ka --log-level error
  start - proxy env ALLOCCOUNT_OUT=$tmp/count LD_PRELOAD=$tmp/alloccount.so $B/aiorpcd --role=proxy \
    --bind 127.0.0.1:0 --keepalive $ka --refresh-interval 0.2 --log-level error
  local port=$PORT proxy=$PID
  sleep 1.5
  local n=0
  if [ "$1" = yes ]; then
    n=$($B/aiorpc bench 127.0.0.1:$port --proxy sample.foo -c 8 -d 64 -s "$SIZE" -t "$T" -w 0 \
        "${@:2}" | sed -n 's/^RESULT.* calls=\([0-9]*\).*/\1/p')
  fi
  kill -INT $proxy; wait $proxy || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; pids=()
  echo "$(cat $tmp/count) $n"
}
read -r idle _ < <(run no)
read -r total n < <(run yes "${@:3}")
awk -v t="$total" -v i="$idle" -v n="$n" -v s="$SIZE" \
  'BEGIN { printf "proxy, %s B: %.2f allocations per routed call (%d calls)\n", s, (t - i) / n, n }'
