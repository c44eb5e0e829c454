#!/usr/bin/env bash
# Counts the payload copies of a large echo inside aiorpcd: user-space memcpy/memmove/realloc
# of 64 KiB or more (bench/copycount.c, preloaded), for N echo calls of SIZE bytes, minus a
# run with no calls. Prints copies per call = copied bytes / (N × SIZE).
# usage: bench/copy_count.sh [SIZE (4194304)] [N (5)]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-4194304}
N=${2:-5}
B=${BUILD:-build-release}
. bench/lib.sh
release_build aiorpcd
cc -O1 -fno-builtin -fno-tree-loop-distribute-patterns -shared -fPIC -o "$tmp/copycount.so" \
  bench/copycount.c -ldl

run() {  # calls → prints large_copied_bytes
  start - demo env COPYCOUNT_OUT="$tmp/count" LD_PRELOAD="$tmp/copycount.so" \
    $B/aiorpcd --role=demo --bind 127.0.0.1:0 --log-level info
  local pid=$PID port=$PORT
  /usr/bin/python3 - "$port" "$1" "$SIZE" <<'PY'
import socket, sys, msgpack
port, calls, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port))
payload = bytes(i % 251 for i in range(size))
u = msgpack.Unpacker(raw=False, max_bin_len=size, max_buffer_size=2 * size + 4096)
for i in range(calls):
    s.sendall(msgpack.packb([0, i, "echo", [payload]], use_bin_type=True))
    while True:
        m = next(u, None)
        if m is not None:
            break
        u.feed(s.recv(1 << 20))
    assert m[0] == 1 and m[1] == i and m[2] is None and m[3] == [payload], "bad reply"
s.close()
PY
  kill -INT $pid
  wait $pid || true
  sed -n 's/.*large_copied_bytes=\([0-9]*\).*/\1/p' "$tmp/count"
}
base=$(run 0)
with=$(run "$N")
awk -v a="$base" -v b="$with" -v n="$N" -v s="$SIZE" 'BEGIN {
  printf "echo of %d bytes, %d calls: %d bytes copied in large pieces beyond start-up = %.2f copies of the payload per call\n", s, n, b - a, (b - a) / (n * s) }'
