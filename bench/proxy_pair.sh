#!/usr/bin/env bash
# bench/proxy_pair.sh [BUILD] [ROUNDS]: the direct demo (core 1, with the load) against the proxy
# (core 0) routing to one demo (core 1), as in bench/run.sh, rounds alternating: calls/s and
# CPU ns per call of the server. Loopback only.
set -euo pipefail
B=${1:-build-release}; R=${2:-3}
cd "$(dirname "$0")/.."
. bench/lib.sh
start 1 ka $B/aiorpcd --role=keepalive --bind 127.0.0.1:0 --log-level error; KA=127.0.0.1:$PORT
start 1 d $B/aiorpcd --role=demo --bind 127.0.0.1:0 --keepalive $KA --heartbeat-interval 0.5 --log-level error
start 0 px $B/aiorpcd --role=proxy --bind 127.0.0.1:0 --keepalive $KA --log-level error; PX=$PORT; PXP=$PID
start 1 solo $B/aiorpcd --role=demo --bind 127.0.0.1:0 --log-level error; SOLO=$PORT; SOLOP=$PID
sleep 1.5
for i in $(seq $R); do
  d=$(taskset -c 1 $B/aiorpc bench 127.0.0.1:$SOLO -t 3 -w 1 -c 8 -d 64 -s 16 --cpu-pid $SOLOP | grep ^RESULT)
  p=$(taskset -c 1 $B/aiorpc bench 127.0.0.1:$PX -t 3 -w 1 -c 8 -d 64 -s 16 --proxy sample.foo --cpu-pid $PXP | grep ^RESULT)
  echo "direct $(field calls_per_s "$d") calls/s $(field cpu_ns_per_call_0 "$d") ns | proxy $(field calls_per_s "$p") calls/s $(field cpu_ns_per_call_0 "$p") ns"
done
