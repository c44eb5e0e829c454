#!/usr/bin/env bash
# make bench: aiorpcd, aiorpcd through the proxy, a bare epoll echo server and redis-server
# under the same closed-loop loads, pinned (server core 0, load core 1), side by side in one run.
# Writes bench/results/results.md (a table stamped with the commit) and bench/results/calls.png.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps
missing=()
for p in redis-server redis-tools gnuplot-nox; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
B=build-release
. bench/lib.sh
release_build aiorpcd aiorpc epoll_echo
T=${BENCH_SECONDS:-3}
W=${BENCH_WARMUP:-1}
S=0  # server core
L=1  # load core
out=bench/results
mkdir -p $out
rows=()
row() {  # label conns depth size result-line
  local r=$5
  rows+=("| $1 | $2×$3 | $4 B | $(field calls_per_s "$r") | $(field p50_us "$r") | $(field p99_us "$r") | $(field cpu_ns_per_call_0 "$r") |")
  echo "$1 $2x$3 $4B: $(field calls_per_s "$r") calls/s, p50 $(field p50_us "$r") us, $(field cpu_ns_per_call_0 "$r") ns CPU/call" >&2
  local name=${1// /-}
  echo "${name//→/to} $2x$3-$4B $(field calls_per_s "$r")" >>"$tmp/plot.dat"
}
bench() { taskset -c $L $B/aiorpc bench "127.0.0.1:$1" -t "$T" -w "$W" "${@:2}" | grep '^RESULT'; }
loads=("1 1" "1 64" "8 64" "50 1")

start $S demo $B/aiorpcd --role=demo --bind 127.0.0.1:0 --log-level error
DEMO_PORT=$PORT DEMO_PID=$PID
start $S echo $B/epoll_echo 0
ECHO_PORT=$PORT ECHO_PID=$PID
for size in 16 4096; do
  for l in "${loads[@]}"; do
    set -- $l
    row aiorpcd "$1" "$2" $size "$(bench $DEMO_PORT -c "$1" -d "$2" -s $size --cpu-pid $DEMO_PID)"
    row epoll-echo "$1" "$2" $size "$(bench $ECHO_PORT -e -c "$1" -d "$2" -s $size --cpu-pid $ECHO_PID)"
  done
done

# Redis PING at the same connections and pipelining (redis-benchmark drives it).
REDIS_PORT=$(( 20000 + RANDOM % 20000 ))
taskset -c $S redis-server --port $REDIS_PORT --save "" --appendonly no --daemonize no >/dev/null &
REDIS_PID=$!; pids+=("$REDIS_PID"); sleep 0.5
for l in "${loads[@]}"; do
  set -- $l
  n=$(( $1 * $2 >= 64 ? 3000000 : 300000 ))
  t0=$(awk '{print $14+$15}' /proc/$REDIS_PID/stat)
  rps=$(taskset -c $L redis-benchmark -p $REDIS_PORT -c "$1" -P "$2" -n $n -t ping_mbulk -q --csv | tail -1 | cut -d, -f2 | tr -d '"')
  t1=$(awk '{print $14+$15}' /proc/$REDIS_PID/stat)
  ns=$(awk -v a=$t0 -v b=$t1 -v n=$n -v hz=$(getconf CLK_TCK) 'BEGIN{printf "%.0f", (b-a)/hz*1e9/n}')
  row redis-PING "$1" "$2" 0 "RESULT calls_per_s=${rps%.*} p50_us=- p99_us=- cpu_ns_per_call_0=$ns"
done

# TLS (SPEC §8): the same demo over TLS 1.3 (ECDSA P-256 certificates from make_certs.sh) and
# Redis's PING over TLS at the same load; then new connections per second, each with one call
# (plain, and a full TLS handshake each), with the server's CPU per connection.
test/support/make_certs.sh "$tmp/certs" >/dev/null
C=$tmp/certs
start $S tdemo $B/aiorpcd --role=demo --bind 127.0.0.1:0 --log-level error --tls-cert $C/server.pem --tls-key $C/server.key
TDEMO_PORT=$PORT TDEMO_PID=$PID
tbench() { taskset -c $L $B/aiorpc bench "tls://localhost:$1" --tls-ca $C/ca.pem -t "$T" -w "$W" "${@:2}" | grep '^RESULT'; }
row "aiorpcd plain" 8 64 16 "$(bench $DEMO_PORT -c 8 -d 64 -s 16 --cpu-pid $DEMO_PID)"
row "aiorpcd TLS" 8 64 16 "$(tbench $TDEMO_PORT -c 8 -d 64 -s 16 --cpu-pid $TDEMO_PID)"
RTLS_PORT=$(( 20000 + RANDOM % 20000 ))
taskset -c $S redis-server --port 0 --tls-port $RTLS_PORT --tls-cert-file $C/server.pem --tls-key-file $C/server.key --tls-ca-cert-file $C/ca.pem --tls-auth-clients no --save "" --appendonly no --daemonize no >/dev/null &
RTLS_PID=$!; pids+=("$RTLS_PID"); sleep 0.5
t0=$(awk '{print $14+$15}' /proc/$RTLS_PID/stat)
rps=$(taskset -c $L redis-benchmark -p $RTLS_PORT --tls --cacert $C/ca.pem -c 8 -P 64 -n 3000000 -t ping_mbulk -q --csv | tail -1 | cut -d, -f2 | tr -d '"')
t1=$(awk '{print $14+$15}' /proc/$RTLS_PID/stat)
ns=$(awk -v a=$t0 -v b=$t1 -v n=3000000 -v hz=$(getconf CLK_TCK) 'BEGIN{printf "%.0f", (b-a)/hz*1e9/n}')
row "redis-PING TLS" 8 64 0 "RESULT calls_per_s=${rps%.*} p50_us=- p99_us=- cpu_ns_per_call_0=$ns"
conn_rows=()
conn_row() {  # label result-line
  conn_rows+=("| $1 | $(field connections_per_s "$2") | $(field p50_us "$2") | $(field cpu_us_per_conn_0 "$2") |")
  echo "$1: $(field connections_per_s "$2") connections/s, $(field cpu_us_per_conn_0 "$2") us CPU/connection" >&2
}
conn_row "plain: connect + 1 call + close" "$(bench $DEMO_PORT --reconnect -c 8 -s 16 --cpu-pid $DEMO_PID)"
conn_row "TLS 1.3: connect + full handshake + 1 call + close" "$(tbench $TDEMO_PORT --reconnect -c 8 -s 16 --cpu-pid $TDEMO_PID)"

# Through the proxy: demo and load share core 1, the proxy has core 0.
start $L ka $B/aiorpcd --role=keepalive --bind 127.0.0.1:0 --log-level error
KA=127.0.0.1:$PORT
for i in 1 2 3; do start $L d$i $B/aiorpcd --role=demo --bind 127.0.0.1:0 --keepalive $KA --heartbeat-interval 0.5 --log-level error; done
D3_PID=$PID
start $S proxy $B/aiorpcd --role=proxy --bind 127.0.0.1:0 --keepalive $KA --log-level error
PROXY_PORT=$PORT PROXY_PID=$PID
# A second keepalive and proxy with a single demo behind them.
start $L ka1 $B/aiorpcd --role=keepalive --bind 127.0.0.1:0 --log-level error
KA1=127.0.0.1:$PORT
start $L d4 $B/aiorpcd --role=demo --bind 127.0.0.1:0 --keepalive $KA1 --heartbeat-interval 0.5 --log-level error
start $S proxy1 $B/aiorpcd --role=proxy --bind 127.0.0.1:0 --keepalive $KA1 --log-level error
PROXY1_PORT=$PORT PROXY1_PID=$PID
sleep 1.5
start $L solo $B/aiorpcd --role=demo --bind 127.0.0.1:0 --log-level error
SOLO_PORT=$PORT SOLO_PID=$PID
row "direct (demo on core 1)" 8 64 16 "$(bench $SOLO_PORT -c 8 -d 64 -s 16 --cpu-pid $SOLO_PID)"
row "proxy → 1 demo" 8 64 16 "$(bench $PROXY1_PORT -c 8 -d 64 -s 16 --proxy sample.foo --cpu-pid $PROXY1_PID)"
row "proxy → 3 demos" 8 64 16 "$(bench $PROXY_PORT -c 8 -d 64 -s 16 --proxy sample.foo --cpu-pid $PROXY_PID)"
copies=$(bench/copy_count.sh 4194304 5)

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
{
  echo "# Benchmark results"
  echo
  echo "commit \`$commit\`, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, ${T}s per run after ${W}s warm-up;"
  echo "server pinned to core $S, load to core $L (proxy rows: proxy on core $S, demos and load on core $L)."
  echo
  echo "| server | conns×depth | payload | calls/s | p50 µs | p99 µs | server CPU ns/call |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
  echo
  echo "New connections (8 workers, each connects, makes one 16 B call and closes; server on core $S):"
  echo
  echo "| connection | connections/s | p50 µs connect→reply | server CPU µs/connection |"
  echo "| --- | --- | --- | --- |"
  printf '%s\n' "${conn_rows[@]}"
  echo
  echo "Payload copies inside aiorpcd (bench/copy_count.sh): $copies."
} >$out/results.md
gnuplot <<GP 2>/dev/null || echo "gnuplot failed; table only" >&2
set terminal png size 1200,600 noenhanced
set output "$out/calls.png"
set style data histograms
set style fill solid
set ylabel "calls/s"
set xtics rotate by -30
set title "aiorpc bench, commit $commit"
plot "$tmp/plot.dat" using 3:xtic(stringcolumn(1)." ".stringcolumn(2)) notitle
GP
cat $out/results.md
