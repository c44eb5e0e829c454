"""--metrics-bind (SPEC §9): /metrics checked by promtool and scraped by a real Prometheus,
/healthz through a drain and a stale registry, and the port under bad input."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import msgpack

from etcd import free_port
from harness import Raw, daemon, run, wait_until


def with_metrics(*args):
    """A daemon with --metrics-bind on a free port: (proc, "127.0.0.1:PORT")."""
    p = daemon(*args, "--metrics-bind", "127.0.0.1:0")
    line = p._read_line(10)
    assert line.startswith("metrics on "), line
    return p, line[len("metrics on "):].strip()


def get(addr, path="/metrics"):
    """(status, body) of GET http://addr/path."""
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def value(text, series):
    """The value of one exact series line (name{labels}), None when it is absent."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def promtool_check(text):
    r = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                       capture_output=True, timeout=60)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()[:2000]


def cluster():
    ka, ka_m = with_metrics("--role=keepalive", "--bind", "127.0.0.1:0", "--ttl", "3",
                            "--check-interval", "0.2")
    demo, demo_m = with_metrics("--role=demo", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint,
                                "--heartbeat-interval", "0.2")
    px, px_m = with_metrics("--role=proxy", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint,
                            "--refresh-interval", "0.2")
    r = Raw(px)
    assert wait_until(lambda: len(r.call("\0stats", None)[3].get("backends", {})) == 1)
    return (ka, ka_m), (demo, demo_m), (px, px_m)


def test_every_role_passes_promtool_and_its_counters_move():
    (ka, ka_m), (demo, demo_m), (px, px_m) = cluster()
    r = Raw(px)
    for i in range(25):
        assert r.call("invoke", ["sample.foo", "echo", [i]], msgid=i)[3] == [i]
    assert r.call("invoke", ["sample.foo", "nosuch", []])[2][0] == "NoMethodError"
    assert r.call("invoke", ["nope", "echo", []])[2][0] == "ServiceNotFound"
    texts = {}
    for name, addr in (("keepalive", ka_m), ("demo", demo_m), ("proxy", px_m)):
        status, texts[name] = get(addr)
        assert status == 200
        promtool_check(texts[name])
        for series in ("aiorpc_connections", "aiorpc_connections_accepted_total",
                       'aiorpc_connections_refused_total{reason="allow"}',
                       "aiorpc_protocol_errors_total", "aiorpc_received_bytes_total",
                       "aiorpc_sent_bytes_total", "process_cpu_seconds_total",
                       "process_resident_memory_bytes", "process_open_fds", "process_max_fds",
                       "process_start_time_seconds"):
            assert value(texts[name], series) is not None, (name, series)
        assert re.search(r'^aiorpc_build_info\{version="[0-9.]+"\} 1$', texts[name], re.M), name
    d, p, k = texts["demo"], texts["proxy"], texts["keepalive"]
    assert value(d, 'aiorpc_requests_total{method="echo",outcome="ok"}') == 25
    assert value(d, 'aiorpc_requests_total{method="other",outcome="NoMethodError"}') == 1
    assert value(d, 'aiorpc_request_duration_seconds_count{method="echo"}') == 25
    assert value(d, 'aiorpc_request_duration_seconds_bucket{method="echo",le="+Inf"}') == 25
    assert value(p, 'aiorpc_requests_total{method="invoke",outcome="ok"}') == 25
    assert value(p, 'aiorpc_requests_total{method="invoke",outcome="ServiceNotFound"}') == 1
    assert value(p, 'aiorpc_proxy_calls_total{service="sample.foo",outcome="ok"}') == 25
    assert value(p, 'aiorpc_proxy_calls_total{service="sample.foo",outcome="NoMethodError"}') == 1
    assert value(p, 'aiorpc_proxy_call_duration_seconds_count{service="sample.foo"}') == 26
    ep = f'{{service="sample.foo",endpoint="127.0.0.1:{demo.port}"}}'
    assert value(p, "aiorpc_proxy_backend_up" + ep) == 1
    assert value(p, "aiorpc_proxy_backend_in_flight" + ep) == 0
    assert value(p, "aiorpc_proxy_backend_ejections_total" + ep) == 0
    assert value(p, 'aiorpc_proxy_retries_total{service="sample.foo"}') == 0
    assert value(p, "aiorpc_proxy_registry_stale") == 0
    assert 'service="nope"' not in p  # labels only for what the table holds
    assert value(k, "aiorpc_registry_records") == 1
    assert value(k, "aiorpc_registry_services") == 1
    assert value(k, "aiorpc_registry_stale") == 0
    assert value(k, 'aiorpc_registry_heartbeats_total{outcome="ok"}') >= 1
    # counters move: more calls, higher values
    for i in range(5):
        r.call("invoke", ["sample.foo", "echo", [i]])
    assert value(get(demo_m)[1], 'aiorpc_requests_total{method="echo",outcome="ok"}') == 30
    # the instance goes: its series go with it, the retries and ejection are counted
    demo.kill()
    assert wait_until(lambda: ep not in get(px_m)[1], timeout=15)
    assert value(get(ka_m)[1], "aiorpc_registry_expired_total") == 1


def test_a_real_prometheus_scrapes_every_role():
    (ka, ka_m), (demo, demo_m), (px, px_m) = cluster()
    r = Raw(px)
    for i in range(7):
        assert r.call("invoke", ["sample.foo", "echo", [i]])[3] == [i]
    tmp = tempfile.mkdtemp(prefix="aiorpc-prom-")
    try:
        port = free_port()
        cfg = os.path.join(tmp, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "scrape_configs:\n  - job_name: aiorpc\n    static_configs:\n"
                    f"      - targets: ['{ka_m}', '{demo_m}', '{px_m}']\n")
        prom = subprocess.Popen(
            ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp}/data",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            def query(q):
                url = f"http://127.0.0.1:{port}/api/v1/query?query=" + urllib.parse.quote(q)
                try:
                    with urllib.request.urlopen(url, timeout=5) as resp:
                        return json.load(resp)["data"]["result"]
                except OSError:
                    return []

            assert wait_until(lambda: len([x for x in query("up") if x["value"][1] == "1"]) == 3,
                              timeout=60), query("up")
            got = query('aiorpc_requests_total{method="echo",outcome="ok"}')
            assert wait_until(lambda: [x["value"][1] for x in query(
                'aiorpc_requests_total{method="echo",outcome="ok"}')] == ["7"], timeout=30), got
            assert wait_until(lambda: [x["value"][1] for x in query(
                'aiorpc_proxy_calls_total{service="sample.foo",outcome="ok"}')] == ["7"],
                timeout=30)
            assert wait_until(lambda: len(query("aiorpc_registry_records == 1")) == 1, timeout=30)
        finally:
            prom.terminate()
            try:
                prom.wait(timeout=20)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_unknown_methods_leave_the_series_count_small():
    demo, m = with_metrics("--role=demo", "--bind", "127.0.0.1:0")
    r = Raw(demo)
    before = len(get(m)[1].splitlines())
    for i in range(500):
        assert r.call(f"no_such_method_{i}", [], msgid=i)[2][0] == "NoMethodError"
    text = get(m)[1]
    assert value(text, 'aiorpc_requests_total{method="other",outcome="NoMethodError"}') == 500
    assert "no_such_method" not in text
    assert len(text.splitlines()) <= before + 2  # the NoMethodError line, at most one more
    promtool_check(text)


def test_healthz_turns_503_while_draining_and_while_stale():
    demo, m = with_metrics("--role=demo", "--bind", "127.0.0.1:0", "--drain-timeout", "10")
    assert get(m, "/healthz") == (200, "ok\n")
    assert get(m, "/nope")[0] == 404
    r = Raw(demo)
    r.send([0, 1, "sleep", [3]])  # a reply owed: the drain waits for it
    time.sleep(0.2)
    demo.signal(signal.SIGTERM)
    assert wait_until(lambda: get(m, "/healthz") == (503, "draining\n"), timeout=5)
    assert r.recv(1, timeout=10)[0][3] is not None  # the owed reply still came
    assert demo.wait(timeout=20) == 0
    # a keepalive on an etcd that is not there is stale
    dead = free_port()
    ka, km = with_metrics("--role=keepalive", "--bind", "127.0.0.1:0",
                          "--store", f"etcd://127.0.0.1:{dead}")
    assert get(km, "/healthz") == (503, "stale\n")
    text = get(km)[1]
    assert value(text, "aiorpc_registry_stale") == 1
    assert value(text, 'aiorpc_etcd_requests_total{outcome="failed"}') >= 1
    promtool_check(text)


def test_the_metrics_port_under_bad_input_stays_bounded_and_the_daemon_serves():
    demo, m = with_metrics("--role=demo", "--bind", "127.0.0.1:0")
    host, port = m.rsplit(":", 1)
    port = int(port)
    # a 9 KiB head: 431 and a close
    s = socket.create_connection((host, port))
    s.sendall(b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 9216 + b"\r\n\r\n")
    s.settimeout(10)
    got = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    assert got.startswith(b"HTTP/1.1 431"), got[:100]
    s.close()
    # 100 idle connections: at most 64 stay, a scraper still gets in
    idle = [socket.create_connection((host, port)) for _ in range(100)]
    time.sleep(0.3)
    assert get(m)[0] == 200
    closed = 0
    for c in idle:
        c.settimeout(0.5)
        try:
            closed += c.recv(1) == b""
        except (socket.timeout, ConnectionResetError):
            pass
    assert closed >= 100 - 63, closed
    for c in idle:
        c.close()
    # a slow trickle: closed after the idle time (10 s) though bytes keep coming
    t = socket.create_connection((host, port))
    req = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"x" * 100
    t0 = time.time()
    eof = False
    for i in range(len(req)):
        try:
            t.sendall(req[i:i + 1])
        except (BrokenPipeError, ConnectionResetError):
            eof = True
            break
        t.settimeout(0.5)
        try:
            if t.recv(1) == b"":
                eof = True
                break
        except socket.timeout:
            pass
        if time.time() - t0 > 20:
            break
    assert eof and time.time() - t0 < 15, time.time() - t0
    # the daemon served calls throughout
    assert Raw(demo).call("echo", [1])[3] == [1]


def test_a_proxy_with_20000_backends_scrapes_whole():
    ka = daemon("--role=keepalive", "--bind", "127.0.0.1:0", "--ttl", "300",
                "--max-records-per-source", "30000")
    n = 20000
    r = Raw(ka)
    r.send_bytes(b"".join(msgpack.packb([0, i, "heartbeat", [f"svc{i % 10}", "127.0.0.1", 1 + i]])
                          for i in range(n)))
    assert all(m[2] is None for m in r.recv(n, timeout=60))
    px, m = with_metrics("--role=proxy", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint)
    assert wait_until(lambda: get(m)[1].count("aiorpc_proxy_backend_up{") == n, timeout=60)
    t0 = time.time()
    text = get(m)[1]
    print(f"scrape of {n} backends: {len(text)} bytes in {(time.time() - t0) * 1000:.0f} ms")
    assert text.count("aiorpc_proxy_backend_in_flight{") == n
    promtool_check(text)


def test_with_tls_flags_the_metrics_port_is_https_and_mutual_when_asked():
    import ssl
    certs = tempfile.mkdtemp(prefix="aiorpc-metrics-tls-")
    try:
        subprocess.run([os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                     "../support/make_certs.sh"), certs], check=True)
        c = lambda name: os.path.join(certs, name)  # noqa: E731
        demo, m = with_metrics("--role=demo", "--bind", "127.0.0.1:0", "--tls-cert",
                               c("server.pem"), "--tls-key", c("server.key"), "--tls-client-ca",
                               c("ca.pem"))
        port = int(m.rsplit(":", 1)[1])
        ctx = ssl.create_default_context(cafile=c("ca.pem"))
        ctx.load_cert_chain(c("client.pem"), c("client.key"))
        with urllib.request.urlopen(f"https://localhost:{port}/metrics", context=ctx,
                                    timeout=10) as r:
            assert r.status == 200
            promtool_check(r.read().decode())
        # curl, another TLS stack's client, as a probe would
        out = subprocess.run(["curl", "-fsS", "--cacert", c("ca.pem"), "--cert", c("client.pem"),
                              "--key", c("client.key"), f"https://localhost:{port}/healthz"],
                             capture_output=True, timeout=30)
        assert out.stdout == b"ok\n", out
        # no client certificate: refused in the handshake; plaintext: closed without an answer
        bare = ssl.create_default_context(cafile=c("ca.pem"))
        try:
            with urllib.request.urlopen(f"https://localhost:{port}/metrics", context=bare,
                                        timeout=10) as r:
                r.read()
            assert False, "served without a client certificate"
        except (urllib.error.URLError, ssl.SSLError, ConnectionResetError):
            pass
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(10)
        s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        try:
            assert b"HTTP/1.1" not in s.recv(4096)
        except ConnectionResetError:
            pass
    finally:
        shutil.rmtree(certs, ignore_errors=True)


def test_allow_and_unix_sockets():
    tmp = tempfile.mkdtemp(prefix="aiorpc-metrics-")
    try:
        path = os.path.join(tmp, "metrics.sock")
        demo = daemon("--role=demo", "--bind", "127.0.0.1:0", "--allow", "127.0.0.2/32",
                      "--metrics-bind", "unix:" + path)
        assert demo._read_line(10) == "metrics on unix:" + path
        u = socket.socket(socket.AF_UNIX)
        u.connect(path)
        u.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert u.recv(4096).startswith(b"HTTP/1.1 200 OK")
        u.close()
        tcp, m = with_metrics("--role=demo", "--bind", "127.0.0.1:0", "--allow", "127.0.0.2/32")
        host, port = m.rsplit(":", 1)
        c = socket.create_connection(("127.0.0.1", int(port)))  # outside --allow
        c.settimeout(5)
        c.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        try:
            assert c.recv(4096) == b""
        except ConnectionResetError:
            pass
        c2 = socket.create_connection(("127.0.0.1", int(port)), source_address=("127.0.0.2", 0))
        c2.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        c2.settimeout(5)
        assert c2.recv(4096).startswith(b"HTTP/1.1 200 OK")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":  # also runs without pytest: python3 FILE [test_name...]
    run(globals())
