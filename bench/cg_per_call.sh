#!/usr/bin/env bash
# bench/cg_per_call.sh demo|proxy [BUILD] [BENCH-ARGS...]: instructions per call of the demo
# server, or of the proxy routing to one demo, under 8 connections x 64 pipelined 16-byte calls
# (callgrind). BENCH-ARGS go to aiorpc bench (e.g. --map: map-form invoke through the proxy).
# Net of start-up: a run of the same process without load is subtracted. Loopback only.
# DAEMON_ARGS: more flags for the measured daemon (e.g. "--metrics-bind 127.0.0.1:0").
set -euo pipefail
what=${1:?demo or proxy}; B=${2:-build-release}; extra=("${@:3}")
cd "$(dirname "$0")/.."
. bench/lib.sh
stat_requests() {  # \0stats "requests" of 127.0.0.1:$1
  /usr/bin/python3 - "$1" <<'PY'
import socket, sys, msgpack
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(msgpack.packb([0, 1, "\0stats", None]))
u = msgpack.Unpacker(raw=False)
while True:
    u.feed(s.recv(65536))
    for m in u:
        print(m[3]["requests"]); sys.exit(0)
PY
}
run() {  # load? → "total requests"
  local load=$1 out=$tmp/cg.$RANDOM target
  if [ "$what" = proxy ]; then
    start - ka $B/aiorpcd --role=keepalive --bind 127.0.0.1:0; local ka=127.0.0.1:$PORT
    start 1 demo $B/aiorpcd --role=demo --bind 127.0.0.1:0 --keepalive $ka
    start - cg valgrind --tool=callgrind --callgrind-out-file=$out $B/aiorpcd --role=proxy \
      --bind 127.0.0.1:0 --keepalive $ka --refresh-interval 0.2 ${DAEMON_ARGS:-}
    sleep 2  # the proxy's table
    target=(--proxy sample.foo)
  else
    start - cg valgrind --tool=callgrind --callgrind-out-file=$out $B/aiorpcd --role=demo \
      --bind 127.0.0.1:0 ${DAEMON_ARGS:-}
    target=()
  fi
  local port=$PORT cg=$PID
  if [ "$load" = yes ]; then
    taskset -c 1 $B/aiorpc bench 127.0.0.1:$port "${target[@]}" "${extra[@]}" -c 8 -d 64 -s 16 -t 3 -w 1 >/dev/null
  fi
  local n; n=$(stat_requests $port)
  kill -INT $cg; wait $cg || true
  [ -z "${KEEP_CG:-}" ] || cp "$out" "$KEEP_CG"/  # for callgrind_annotate
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; pids=()
  echo "$(callgrind_annotate $out | grep -m1 'PROGRAM TOTALS' | awk '{print $1}' | tr -d ,) $n"
}
read -r idle _ < <(run no)
read -r total n < <(run yes)
echo "$what: $(( (total - idle) / n )) instructions per call ($n calls; $total - $idle at rest)"
