# Sourced by the bench scripts (after they set B, the build folder; default build-release):
# a temporary folder, daemons started on port 0 and reaped at exit, the release build and the
# RESULT-line reader they share. Loopback only.
: "${B:=build-release}"
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

# release_build TARGET...: configures $B as a release build if it is not one yet, builds TARGETs.
release_build() {
  [ -f "$B/build.ninja" ] || meson setup "$B" -Dbuildtype=release >/dev/null
  ninja -C "$B" "$@" >/dev/null
}

# start CORE|- NAME CMD...: runs CMD (pinned to CORE, or not with -), its output in
# $tmp/NAME.out and .err, and waits (30 s at most: valgrind starts slowly) for the
# "listening on HOST:PORT" line. Sets PID and PORT.
start() {
  local core=$1 name=$2
  shift 2
  [ "$core" = - ] || set -- taskset -c "$core" "$@"
  "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  PID=$!
  pids+=("$PID")
  for _ in $(seq 600); do grep -q "listening on" "$tmp/$name.out" 2>/dev/null && break; sleep 0.05; done
  PORT=$(sed -n 's/.*listening on .*:\([0-9]*\)$/\1/p' "$tmp/$name.out" | head -1)
}

# field NAME LINE: the value of NAME= in an `aiorpc bench` RESULT line.
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
