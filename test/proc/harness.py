"""Process-level test harness: start real binaries, talk to them over real sockets.

Tests are functions named test_*; run() executes them and prints a doctest-style summary line
that test/run.sh adds up. Only loopback addresses are used; every process started is killed.
"""
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import traceback

# Tests open thousands of sockets: raise the soft fd limit to the hard one (as servers do).
try:
    import resource
    _soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))
except (ImportError, ValueError, OSError):
    pass

BUILD = os.path.abspath(
    os.environ.get("AIORPC_BUILD", os.path.join(os.path.dirname(__file__), "../../build")))
_procs = []


class Proc:
    def __init__(self, argv, expect_listen=True, timeout=20, cwd=None, env=None):
        self.argv = argv
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                                  env=env)
        _procs.append(self)
        self.host, self.port, self.endpoint = None, None, None
        self.out = b""
        if expect_listen:
            line = self._read_line(timeout)
            if not line.startswith("listening on "):
                self.kill()
                raise AssertionError(f"{argv[0]}: no 'listening on' line, got {line!r}; "
                                     f"stderr: {self.p.stderr.read().decode(errors='replace')}")
            self.endpoint = line[len("listening on "):].strip()
            if not self.endpoint.startswith("unix:"):
                h, _, p = self.endpoint.rpartition(":")
                self.host, self.port = h.strip("[]"), int(p)

    def _read_line(self, timeout):
        deadline = time.time() + timeout
        fd = self.p.stdout.fileno()
        while b"\n" not in self.out:
            left = deadline - time.time()
            if left <= 0 or self.p.poll() is not None and not select.select([fd], [], [], 0)[0]:
                break
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                self.out += chunk
        line, _, self.out = self.out.partition(b"\n")
        return line.decode(errors="replace")

    def signal(self, sig):
        self.p.send_signal(sig)

    def wait(self, timeout=20):
        return self.p.wait(timeout=timeout)

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def connect(proc_or_port, host="127.0.0.1", timeout=10, source=None):
    """`source`: a local loopback address to connect from (e.g. "127.0.0.2")."""
    port = proc_or_port.port if isinstance(proc_or_port, Proc) else proc_or_port
    s = socket.create_connection((host, port), timeout=timeout,
                                 source_address=(source, 0) if source else None)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def binary(name):
    for p in (os.path.join(BUILD, name), os.path.join(BUILD, "docs/examples", name)):  # noqa
        if os.path.exists(p):
            return p
    raise AssertionError(f"binary {name} not found under {BUILD}")


def wait_until(pred, timeout=10.0, step=0.02):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()



def in_private_netns(name):
    """Re-executes the calling script under `unshare -n` (root) with loopback up, and exits with
    its status; returns at once when already inside. Where that is not possible it says so and
    exits as skipped. For tests that use fixed ports or must not reach beyond this machine."""
    if os.environ.get("AIORPC_IN_NETNS") == "1":
        return
    env = dict(os.environ, AIORPC_IN_NETNS="1")
    try:
        rc = subprocess.run(["unshare", "-n", "sh", "-c",
                             'ip link set lo up && exec "$0" "$@"', sys.executable, *sys.argv],
                            env=env).returncode
    except FileNotFoundError:
        rc = 77
    if rc == 77 or rc == 1 and os.geteuid() != 0:
        print("skipped: a private network namespace (unshare -n, as root) is not available here")
        print(f"[proc] {name}: test cases: 0 | 0 passed | 0 failed")
        sys.exit(0)
    sys.exit(rc)

def run(module_globals):
    only = sys.argv[1:]
    tests = [(n, f) for n, f in module_globals.items() if n.startswith("test_") and callable(f)]
    passed = failed = 0
    for name, fn in tests:
        if only and name not in only:
            continue
        t0 = time.time()
        try:
            fn()
            passed += 1
            print(f"ok   {name} ({time.time() - t0:.2f}s)", flush=True)
        except Exception:
            failed += 1
            print(f"FAIL {name}", flush=True)
            traceback.print_exc()
        finally:
            for p in _procs:
                p.kill()
            _procs.clear()
    name = os.path.basename(module_globals.get("__file__", "proc"))
    print(f"[proc] {name}: test cases: {passed + failed} | {passed} passed | {failed} failed")
    sys.exit(1 if failed else 0)


class Raw:
    """A raw msgpack-rpc peer over TCP (python3-msgpack: an independent implementation)."""

    def __init__(self, proc_or_port, host="127.0.0.1", timeout=10, source=None, tls=None,
                 server_hostname="localhost"):
        """`tls`: an ssl.SSLContext (Python's ssl: an independent TLS peer)."""
        import msgpack
        self.msgpack = msgpack
        self.sock = connect(proc_or_port, host, timeout, source)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=server_hostname)
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=2**31 - 1)
        self.timeout = timeout

    def send(self, *msgs):
        self.sock.sendall(b"".join(self.msgpack.packb(m, use_bin_type=True) for m in msgs))

    def send_bytes(self, data):
        self.sock.sendall(data)

    def recv(self, n=1, timeout=None):
        out = list(self._drain())
        deadline = time.time() + (timeout or self.timeout)
        while len(out) < n:
            left = deadline - time.time()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {n} messages, got {out!r}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError(f"closed after {len(out)} of {n} messages: {out!r}")
            self.unpacker.feed(chunk)
            out.extend(self._drain())
        assert len(out) == n, f"expected {n} messages, got {out!r}"
        return out

    def _drain(self):
        return iter(self.unpacker)

    def call(self, method, params=None, msgid=1):
        self.send([0, msgid, method, params])
        return self.recv(1)[0]

    def expect_silence(self, seconds):
        """Asserts that nothing arrives for `seconds`."""
        self.sock.settimeout(seconds)
        try:
            chunk = self.sock.recv(1 << 20)
        except (TimeoutError, socket.timeout):
            return
        raise AssertionError(f"expected silence, got {chunk!r}")

    def expect_close(self, timeout=10):
        """Reads until EOF; returns the messages that came before it."""
        out = list(self._drain())
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise AssertionError(f"connection not closed; got {out!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 20)
            except ConnectionResetError:
                return out
            if not chunk:
                return out
            self.unpacker.feed(chunk)
            out.extend(self._drain())

    def close(self):
        self.sock.close()


def messages(conn, record=None):
    """Every msgpack message `conn` (a socket) sends, decoded, until it closes; the bytes as
    they came appended to the list `record` when one is given."""
    import msgpack
    u = msgpack.Unpacker(raw=False)
    while True:
        data = conn.recv(65536)
        if not data:
            return
        if record is not None:
            record.append(data)
        u.feed(data)
        yield from u


def daemon(*args, cwd=None):
    return Proc([binary("aiorpcd"), *args], cwd=cwd)


def sanitized():
    """ASan keeps freed memory in quarantine: RSS bounds are asserted in the plain builds."""
    with open(os.path.join(BUILD, "meson-info", "intro-buildoptions.json")) as f:
        opts = {o["name"]: o["value"] for o in json.load(f)}
    return opts.get("b_sanitize", "none") not in ("none", "")


def assert_grew_less(before, after, limit_mib):
    if not sanitized():
        assert after - before < limit_mib, (before, after)
