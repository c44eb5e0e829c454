#!/usr/bin/env bash
# bench/proxy_rss.sh [BUILD] [SECONDS]: the proxy's resident memory before, right after and 5 s
# after SECONDS (15) of full pipelined load (8x64 x 16 B invoke through it to one demo; proxy on
# core 0, demo and load on core 1): memory follows the calls in flight, not the call rate.
# Loopback only.
set -euo pipefail
B=${1:-build-release}; T=${2:-15}
cd "$(dirname "$0")/.."
. bench/lib.sh
rss() { awk '/^VmRSS/ {printf "%.1f MiB", $2 / 1024}' /proc/$1/status; }
start 1 ka $B/aiorpcd --role=keepalive --bind 127.0.0.1:0 --log-level error; KA=127.0.0.1:$PORT
start 1 d $B/aiorpcd --role=demo --bind 127.0.0.1:0 --keepalive $KA --log-level error
start 0 px $B/aiorpcd --role=proxy --bind 127.0.0.1:0 --keepalive $KA --log-level error
PX=$PORT; PXP=$PID
sleep 1.5
before=$(rss $PXP)
r=$(taskset -c 1 $B/aiorpc bench 127.0.0.1:$PX -t "$T" -w 0 -c 8 -d 64 -s 16 --proxy sample.foo | grep ^RESULT)
after=$(rss $PXP)
sleep 5
echo "proxy RSS: $before at start, $after after ${T} s at $(field calls_per_s "$r") calls/s, $(rss $PXP) after 5 s idle"
