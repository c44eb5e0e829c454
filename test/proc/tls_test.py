"""TLS on every link (SPEC §8), against independent peers: Python's ssl module (pipelined
msgpack-rpc), `openssl s_client`, a real etcd with --client-cert-auth; the whole chain over mutual
TLS (service → keepalive, proxy → keepalive and → service, client → proxy); bad input: plaintext,
garbage, hundreds of half-open handshakes, wrong names, expired and unknown certificates, a
SIGHUP reload with a broken file. Certificates come from test/support/make_certs.sh (openssl)."""
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import msgpack
import pytest

import harness
from etcd import free_port
from harness import Raw, binary, daemon, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
CERTS = tempfile.mkdtemp(prefix="aiorpc-tls-")
subprocess.run([os.path.join(HERE, "../support/make_certs.sh"), CERTS], check=True)


def c(name):
    return os.path.join(CERTS, name)


def teardown_module(_):
    shutil.rmtree(CERTS, ignore_errors=True)


# Every daemon of the chain uses client.pem: both EKUs, SANs localhost/127.0.0.1/::1, from ca.pem.
NODE = ["--tls-cert", c("client.pem"), "--tls-key", c("client.key"), "--tls-ca", c("ca.pem")]
MUTUAL = NODE + ["--tls-client-ca", c("ca.pem")]


def tls_demo(*extra, leaf="server"):
    return daemon("--role=demo", "--bind", "127.0.0.1:0", "--tls-cert", c(leaf + ".pem"),
                  "--tls-key", c(leaf + ".key"), *extra)


def py_ctx(ca="ca.pem", cert=None):
    ctx = ssl.create_default_context(cafile=c(ca))
    if cert:
        ctx.load_cert_chain(c(cert + ".pem"), c(cert + ".key"))
    return ctx


def cli(*args, timeout=20):
    return subprocess.run([binary("aiorpc"), *args], capture_output=True, text=True,
                          timeout=timeout)


def stats(proc, *tls_args):
    r = cli("stats", f"tls://localhost:{proc.port}", "--json", *tls_args)
    assert r.returncode == 0, r.stderr
    import json
    return json.loads(r.stdout)


def test_python_ssl_client_pipelines_calls():
    d = tls_demo()
    r = Raw(d, tls=py_ctx())
    assert r.sock.version() in ("TLSv1.3", "TLSv1.2")
    # 2,000 pipelined calls in one write, payloads from 0 B to 100 KB (records split across
    # reads, several records per read): every reply, in order. (Under the server's 4 MiB
    # high-water mark: this client reads nothing until it has written everything.)
    sizes = [0, 1, 16, 1000] * 31 + [16383, 16384, 70000, 100000]
    msgs = [[0, i, "echo", ["x" * sizes[i % len(sizes)]]] for i in range(2000)]
    r.send(*msgs)
    got = r.recv(2000, timeout=30)
    assert [m[1] for m in got] == list(range(2000))
    assert all(m[2] is None and m[3] == msgs[m[1]][3] for m in got)
    # ctx("peercert") is nil without mutual TLS.
    assert r.call("whoami", [], msgid=9)[3]["peercert"] is None


def test_tls12_accepted_older_refused_and_s_client_verifies():
    d = tls_demo()
    for proto, ok in (("-tls1_3", True), ("-tls1_2", True), ("-tls1_1", False)):
        p = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{d.port}", proto,
                            "-CAfile", c("ca.pem"), "-verify_return_error", "-verify_hostname",
                            "localhost", "-servername", "localhost"],
                           input="", capture_output=True, text=True, timeout=20)
        out = p.stdout + p.stderr
        if ok:
            assert "Verify return code: 0 (ok)" in out, out
            assert p.returncode == 0, out
        else:
            assert p.returncode != 0 and "Verify return code: 0 (ok)" not in out.split(
                "SSL handshake has read")[-1] or "alert" in out, out
    # The daemon serves on.
    assert Raw(d, tls=py_ctx()).call("echo", ["after"])[3] == ["after"]


def test_plaintext_and_garbage_are_closed_never_answered():
    d = tls_demo()
    for data in (msgpack.packb([0, 1, "echo", ["clear"]]), b"GET / HTTP/1.1\r\n\r\n",
                 bytes(range(256)) * 4, b"\x16\x03\x01\x00\x05hello"):
        t0 = time.time()
        s = harness.connect(d)
        s.sendall(data)
        s.settimeout(10)
        got = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            pass
        # At most a TLS alert record (type 21), never a msgpack reply; at once (a first byte
        # that is no TLS record is refused without waiting for the handshake timeout).
        assert got == b"" or got[0] == 21, got
        assert time.time() - t0 < 5, data
        s.close()
    assert Raw(d, tls=py_ctx()).call("echo", ["still"])[3] == ["still"]
    st = stats(d, "--tls-ca", c("ca.pem"))
    assert st["tls_handshake_failures"] >= 4


def test_half_open_handshakes_are_bounded_and_timed_out():
    d = tls_demo("--tls-handshake-timeout", "1")
    hello = None
    socks = []
    for i in range(300):  # half of them silent, half stop inside their ClientHello
        s = harness.connect(d)
        if i % 2:
            if hello is None:  # a real ClientHello's first bytes, from Python's ssl
                inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
                obj = py_ctx().wrap_bio(inc, out, server_hostname="localhost")
                try:
                    obj.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                hello = out.read()
            s.sendall(hello[:len(hello) // 2])
        socks.append(s)
    # Meanwhile a real client is served at once.
    t0 = time.time()
    assert Raw(d, tls=py_ctx()).call("echo", ["served"])[3] == ["served"]
    assert time.time() - t0 < 0.9  # before any of the half-open ones timed out

    def all_closed():
        for s in socks:
            s.settimeout(0.01)
            try:
                if s.recv(1024) != b"":
                    continue
            except (TimeoutError, socket.timeout):
                return False
            except ConnectionResetError:
                pass
        return True
    assert wait_until(all_closed, timeout=10)
    st = stats(d, "--tls-ca", c("ca.pem"))
    assert st["tls_handshake_failures"] >= 300
    assert st["connections_open"] <= 1


@pytest.mark.parametrize("leaf,host,why", [
    ("wrongname", "localhost", "hostname mismatch"),
    ("expired", "localhost", "certificate has expired"),
    ("untrusted", "localhost", "unable to get local issuer certificate"),
])
def test_client_refuses_bad_server_certificates(leaf, host, why):
    d = tls_demo(leaf=leaf)
    r = cli("call", f"tls://{host}:{d.port}", "echo", '["secret"]', "--tls-ca", c("ca.pem"),
            "--timeout", "5")
    assert r.returncode == 2, r.stdout + r.stderr
    assert why in r.stderr, r.stderr
    # Python's ssl agrees.
    with pytest.raises(ssl.SSLCertVerificationError):
        Raw(d, tls=py_ctx(), server_hostname=host)


def test_mutual_tls_requires_a_client_certificate_from_the_ca():
    d = daemon("--role=demo", "--bind", "127.0.0.1:0", *MUTUAL)
    ok = Raw(d, tls=py_ctx(cert="client"))
    who = ok.call("whoami", [])[3]
    assert who["peercert"] == "CN=client1,O=aiorpc tests"
    assert who["peername"][0] == "127.0.0.1"
    for cert in (None, "client2"):
        try:
            r = Raw(d, tls=py_ctx(cert=cert))
            r.send([0, 1, "echo", ["no"]])
            assert r.expect_close(timeout=10) == []
        except (ssl.SSLError, ConnectionError, OSError):
            pass  # refused during the handshake (TLS 1.3 reports it at the first read)
    r = cli("call", f"tls://localhost:{d.port}", "echo", '["x"]', "--tls-ca", c("ca.pem"))
    assert r.returncode == 2, r.stderr
    r = cli("call", f"tls://localhost:{d.port}", "whoami", "--tls-ca", c("ca.pem"), "--tls-cert",
            c("client.pem"), "--tls-key", c("client.key"))
    assert r.returncode == 0 and "CN=client1,O=aiorpc tests" in r.stdout, r.stderr


def subject_seen(port):
    p = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile",
                        c("ca.pem"), "-servername", "localhost"],
                       input="", capture_output=True, text=True, timeout=20)
    for line in p.stdout.splitlines():
        if line.startswith("subject="):
            return line
    raise AssertionError(p.stdout + p.stderr)


def test_sighup_reloads_and_a_broken_file_keeps_the_old_material():
    tmp = tempfile.mkdtemp(prefix="aiorpc-reload-")
    try:
        cert, key = os.path.join(tmp, "c.pem"), os.path.join(tmp, "c.key")
        shutil.copy(c("server.pem"), cert)
        shutil.copy(c("server.key"), key)
        log = os.path.join(tmp, "log")
        d = daemon("--role=demo", "--bind", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key,
                   "--log-file", log)

        def logged(text):
            with open(log) as f:
                return text in f.read()
        old = Raw(d, tls=py_ctx())
        assert old.call("echo", [1])[3] == [1]
        assert subject_seen(d.port) == "subject=CN = localhost"
        shutil.copy(c("broken.pem"), cert)
        d.signal(signal.SIGHUP)
        assert wait_until(lambda: logged("not reloaded"), timeout=10)
        assert subject_seen(d.port) == "subject=CN = localhost"
        shutil.copy(c("server2.pem"), cert)
        shutil.copy(c("server2.key"), key)
        d.signal(signal.SIGHUP)
        assert wait_until(lambda: logged("TLS server certificates reloaded"), timeout=10)
        assert subject_seen(d.port) == "subject=CN = localhost reloaded"
        assert old.call("echo", [2], msgid=2)[3] == [2]  # open connections keep theirs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_whole_chain_over_mutual_tls():
    ka = daemon("--role=keepalive", "--bind", "127.0.0.1:0", *MUTUAL)
    svc = daemon("--role=demo", "--bind", "127.0.0.1:0", "--keepalive",
                 f"tls://127.0.0.1:{ka.port}", "--heartbeat-interval", "0.2", *MUTUAL)
    proxy = daemon("--role=proxy", "--bind", "127.0.0.1:0", "--keepalive",
                   f"tls://127.0.0.1:{ka.port}", "--backend-tls", "--refresh-interval", "0.2",
                   *MUTUAL)
    client = ["--tls-ca", c("ca.pem"), "--tls-cert", c("client.pem"), "--tls-key",
              c("client.key")]
    r = cli("wait", f"tls://127.0.0.1:{proxy.port}", "--service", "sample.foo", "--timeout", "15",
            *client)
    assert r.returncode == 0, r.stderr
    r = cli("call", f"tls://127.0.0.1:{proxy.port}", "invoke", '["sample.foo", "whoami", []]',
            *client)
    assert r.returncode == 0, r.stderr
    assert "CN=client1,O=aiorpc tests" in r.stdout  # the service saw the proxy's certificate
    # Python's ssl through the proxy, pipelined.
    p = Raw(proxy, tls=py_ctx(cert="client"), server_hostname="localhost")
    p.send(*[[0, i, "invoke", ["sample.foo", "echo", [i]]] for i in range(500)])
    got = p.recv(500, timeout=30)
    assert sorted(m[1] for m in got) == list(range(500))
    assert all(m[2] is None and m[3] == [m[1]] for m in got)
    # Nothing on the chain answers in the clear.
    for d in (ka, svc, proxy):
        s = Raw(d)
        s.send([0, 1, "echo", ["clear"]])
        assert s.expect_close(timeout=10) == []


def https_etcd(tmp, client_ca="ca.pem"):
    cp, pp = free_port(), free_port()
    log = open(os.path.join(tmp, "etcd.log"), "ab")
    p = subprocess.Popen(
        ["etcd", "--name=t0", f"--data-dir={tmp}/data",
         f"--listen-client-urls=https://127.0.0.1:{cp}",
         f"--advertise-client-urls=https://127.0.0.1:{cp}",
         f"--listen-peer-urls=http://127.0.0.1:{pp}",
         f"--initial-advertise-peer-urls=http://127.0.0.1:{pp}",
         f"--initial-cluster=t0=http://127.0.0.1:{pp}",
         # (etcd's gateway dials etcd with this certificate too: it needs both EKUs)
         f"--cert-file={c('client.pem')}", f"--key-file={c('client.key')}",
         f"--trusted-ca-file={c(client_ca)}", "--client-cert-auth"],
        stdout=log, stderr=log)

    class Member:
        def kill(self):
            if p.poll() is None:
                p.kill()
                p.wait()
    harness._procs.append(Member())
    return cp


def test_keepalive_on_etcd_over_https_with_client_certificates():
    tmp = tempfile.mkdtemp(prefix="aiorpc-etcd-tls-")
    try:
        port = https_etcd(tmp)
        ka = daemon("--role=keepalive", "--bind", "127.0.0.1:0", "--store",
                    f"etcds://127.0.0.1:{port}", "--store-prefix", "/tls", *NODE)
        # A keepalive that cannot verify etcd (another CA) never uses it: stale, not plaintext.
        bad = daemon("--role=keepalive", "--bind", "127.0.0.1:0", "--store",
                     f"etcd://https://127.0.0.1:{port}", "--store-prefix", "/tls",
                     "--store-timeout", "1", "--tls-ca", c("ca2.pem"), "--tls-cert",
                     c("client.pem"), "--tls-key", c("client.key"))
        svc = daemon("--role=demo", "--bind", "127.0.0.1:0", "--keepalive",
                     f"tls://127.0.0.1:{ka.port}", "--heartbeat-interval", "0.2", *NODE)
        r = cli("wait", f"tls://127.0.0.1:{ka.port}", "--service", "sample.foo", "--timeout",
                "20", "--tls-ca", c("ca.pem"))
        assert r.returncode == 0, r.stderr
        svcs = Raw(ka, tls=py_ctx()).call("get_services", [])[3]
        assert svcs["sample.foo"][0]["endpoint"][1] == svc.port
        assert wait_until(
            lambda: Raw(bad, tls=py_ctx()).call("watch", [0, 0])[3].get("stale") is True,
            timeout=15)
        assert "sample.foo" not in Raw(bad, tls=py_ctx()).call("get_services", [])[3]
        st = stats(ka, "--tls-ca", c("ca.pem"))
        assert st["registry"]["store"].startswith("etcd"), st["registry"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_flags_are_checked():
    for args, why in ((["--tls-cert", c("server.pem")], "go together"),
                      (["--tls-client-ca", c("ca.pem")], "needs --tls-cert"),
                      (["--tls-cert", c("broken.pem"), "--tls-key", c("server.key")],
                       "broken.pem"),
                      (["--tls-cert", c("server.pem"), "--tls-key", c("client.key")], "mismatch"),
                      (["--keepalive", "tls://unix:/x"], "keepalive")):
        p = subprocess.run([binary("aiorpcd"), "--role=demo", "--bind", "127.0.0.1:0", *args],
                           capture_output=True, text=True, timeout=20)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert why in p.stderr, (args, p.stderr)


def test_the_embedding_example_runs():
    """docs/examples/mutual_tls.cc, whose lines docs/embedding.md shows."""
    r = subprocess.run([binary("mutual_tls"), CERTS], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "hello ann (CN=client1,O=aiorpc tests)"


def test_proxy_ejects_a_backend_whose_certificate_fails():
    """A backend that fails verification is a failed connect (never sent a call): ejected,
    its calls retried on the good one."""
    ka = daemon("--role=keepalive", "--bind", "127.0.0.1:0", *NODE)
    good = daemon("--role=demo", "--bind", "127.0.0.1:0", "--keepalive",
                  f"tls://127.0.0.1:{ka.port}", "--heartbeat-interval", "0.2", *NODE)
    bad = daemon("--role=demo", "--bind", "127.0.0.1:0", "--keepalive",
                 f"tls://127.0.0.1:{ka.port}", "--heartbeat-interval", "0.2", "--tls-cert",
                 c("untrusted.pem"), "--tls-key", c("untrusted.key"), "--tls-ca", c("ca.pem"))
    proxy = daemon("--role=proxy", "--bind", "127.0.0.1:0", "--keepalive",
                   f"tls://127.0.0.1:{ka.port}", "--backend-tls", "--refresh-interval", "0.2",
                   "--eject-after", "1", *NODE)
    p = Raw(proxy, tls=py_ctx())
    # The proxy has both instances in its table (not only the keepalive).
    assert wait_until(
        lambda: len(p.call("\0stats", None, msgid=999)[3].get("backends", {})) == 2, timeout=15)
    for i in range(100):
        m = p.call("invoke", ["sample.foo", "echo", [i]], msgid=i)
        assert m[2] is None and m[3] == [i], m
    st = stats(proxy, "--tls-ca", c("ca.pem"))
    backends = st["backends"]
    bad_b = backends[f"127.0.0.1:{bad.port}"]
    good_b = backends[f"127.0.0.1:{good.port}"]
    assert bad_b["ejections"] >= 1 and bad_b["connect_failures"] >= 1, bad_b
    assert bad_b["requests"] - bad_b["errors"] == 0, bad_b
    assert good_b["requests"] >= 100, good_b
