"""Access control (SPEC §5-§7 access texts): --allow, the registry token, unregister by its
owner, --backend-allow, the safe-default warning, the audit log. Loopback addresses only:
127.0.0.2 stands for "another machine" (a second loopback source address)."""
import os
import socket
import subprocess
import tempfile
import time

from harness import Raw, binary, daemon, run, wait_until

TOKEN = "s3cret-token-do-not-log"


def token_file(mode=0o600, text=TOKEN + "\n"):
    d = tempfile.mkdtemp()
    path = os.path.join(d, "token")
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def log_path():
    return os.path.join(tempfile.mkdtemp(), "log")


def read(path):
    with open(path) as f:
        return f.read()


def keepalive(*extra):
    return daemon("--role=keepalive", "--bind", "127.0.0.1:0", "--ttl", "30",
                  "--check-interval", "0.2", *extra)


def services(ka, **kw):
    return Raw(ka).call("get_services", kw or [])[3]


def test_allow_list_refuses_others_at_accept():
    log = log_path()
    ka = keepalive("--allow", "127.0.0.2/32,::1/128", "--log-file", log)
    outsider = Raw(ka)  # from 127.0.0.1
    assert outsider.expect_close(timeout=5) == []
    insider = Raw(ka, source="127.0.0.2")
    assert insider.call("get_services", [])[3] == {}
    st = insider.call("\0stats", None)[3]
    assert st["refused"] == 1 and st["connections_total"] == 1, st
    for _ in range(5):  # refusals are counted, and logged at most once a second
        Raw(ka).expect_close(timeout=5)
    assert wait_until(lambda: insider.call("\0stats", None, msgid=2)[3]["refused"] == 6)
    lines = [l for l in read(log).splitlines() if "refused connection from 127.0.0.1" in l]
    assert 1 <= len(lines) <= 2, lines


def test_token_guards_writes_and_optionally_reads():
    log = log_path()
    ka = keepalive("--auth-token-file", token_file(), "--log-file", log, "--log-level", "debug")
    r = Raw(ka)
    ep = {"name": "svc", "host": "127.0.0.1", "port": 5001}
    got = r.call("heartbeat", ["svc", "127.0.0.1", 5001])  # array form cannot carry a token
    assert got[2][0] == "AuthError" and "__auth__" in got[2][1], got
    assert r.call("heartbeat", ep)[2][0] == "AuthError"
    assert r.call("heartbeat", dict(ep, __auth__="wrong"))[2] == ["AuthError",
                                                                 "wrong __auth__ token"]
    assert r.call("heartbeat", dict(ep, __auth__=TOKEN[:-1]))[2][0] == "AuthError"
    assert r.call("heartbeat", dict(ep, __auth__=TOKEN))[3] is True
    assert services(ka) == {"svc": [{"ident": None, "endpoint": ["127.0.0.1", 5001]}]}  # open
    assert r.call("unregister", dict(ep, __auth__="nope"))[2][0] == "AuthError"
    # with the token anyone holding it may unregister, from any address
    other = Raw(ka, source="127.0.0.2")
    assert other.call("unregister", dict(ep, __auth__=TOKEN))[3] is True
    st = r.call("\0stats", None)[3]
    assert st["errors"]["AuthError"] == 5, st
    # a real service with the token registers and, on SIGTERM, unregisters
    svc = daemon("--role=demo", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint,
                 "--heartbeat-interval", "0.2", "--auth-token-file", token_file(), "--log-file",
                 log, "--log-level", "debug")
    assert wait_until(lambda: "sample.foo" in services(ka))
    svc.signal(15)
    assert svc.wait(timeout=10) == 0
    assert "sample.foo" not in services(ka)
    text = read(log)
    assert TOKEN not in text and "audit: refused heartbeat from 127.0.0.1: no token" in text
    assert "audit: refused heartbeat from 127.0.0.1: wrong token" in text
    assert f"audit: registered sample.foo at 127.0.0.1:{svc.port}" in text
    assert f"audit: unregistered sample.foo at 127.0.0.1:{svc.port}" in text
    assert TOKEN not in str(r.call("\0stats", None, msgid=9))


def test_auth_reads():
    ka = keepalive("--auth-token-file", token_file(), "--auth-reads")
    r = Raw(ka)
    assert r.call("get_services", [])[2][0] == "AuthError"
    assert r.call("watch", [0, 0])[2][0] == "AuthError"
    assert r.call("get_services", {"__auth__": TOKEN})[3] == {}
    assert r.call("watch", {"version": 0, "__auth__": TOKEN})[3]["services"] == {}
    # a proxy holding the token learns the table through the protected reads
    svc = daemon("--role=demo", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint,
                 "--heartbeat-interval", "0.2", "--auth-token-file", token_file())
    px = daemon("--role=proxy", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint,
                "--refresh-interval", "0.2", "--auth-token-file", token_file())
    p = Raw(px)
    assert wait_until(lambda: p.call("invoke", ["sample.foo", "echo", [1]])[3] == [1])
    assert svc.port


def test_cli_carries_the_token_from_a_file_and_waits_for_a_service():
    # aiorpc --auth-token-file (never the secret in argv) for services, call and wait; wait's
    # exit codes: 0 ready, 3 not within --timeout, 64 a --service on a plain server.
    ka = keepalive("--auth-token-file", token_file(), "--auth-reads")
    cli = binary("aiorpc")

    def aiorpc(*args):
        return subprocess.run([cli, *args], capture_output=True, text=True, timeout=30)
    r = aiorpc("services", ka.endpoint)
    assert r.returncode == 1 and "AuthError" in r.stderr, r
    r = aiorpc("services", ka.endpoint, "--auth-token-file", token_file())
    assert r.returncode == 0 and r.stdout.strip() == "{}", r
    assert TOKEN not in r.stdout + r.stderr
    r = aiorpc("call", ka.endpoint, "get_services", "[]", "--auth-token-file", token_file())
    assert r.returncode == 64 and "named params" in r.stderr, r  # array form cannot carry it
    r = aiorpc("wait", ka.endpoint, "--service", "sample.foo", "--timeout", "0.5",
               "--auth-token-file", token_file())
    assert r.returncode == 3, r
    svc = daemon("--role=demo", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint,
                 "--heartbeat-interval", "0.2", "--auth-token-file", token_file())
    r = aiorpc("wait", ka.endpoint, "--service", "sample.foo", "--timeout", "10",
               "--auth-token-file", token_file())
    assert r.returncode == 0, r
    r = aiorpc("wait", svc.endpoint, "--service", "sample.foo", "--timeout", "1")
    assert r.returncode == 64, r
    assert aiorpc("wait", svc.endpoint).returncode == 0
    r = aiorpc("wait", "127.0.0.1:1", "--timeout", "0.3")
    assert r.returncode == 3, r
    r = aiorpc("notify", "--help")
    assert r.returncode == 0 and "--timeout" not in r.stdout, r.stdout  # nothing to wait for


def test_world_readable_or_empty_token_file_refused():
    for path, why in ((token_file(0o644), "readable by every user"),
                      (token_file(0o600, "\n"), "empty"),
                      ("/nonexistent/token", "cannot read")):
        p = subprocess.run([binary("aiorpcd"), "--role=keepalive", "--bind", "127.0.0.1:0",
                            "--auth-token-file", path], capture_output=True, timeout=10)
        err = p.stderr.decode()
        assert p.returncode == 2 and why in err and len(err.strip().splitlines()) == 1, err


def test_unregister_only_by_its_owner_without_token():
    log = log_path()
    ka = keepalive("--log-file", log)
    r = Raw(ka)  # 127.0.0.1
    assert r.call("heartbeat", ["svc", "127.0.0.1", 5002])[3] is True
    other = Raw(ka, source="127.0.0.2")
    got = other.call("unregister", ["svc", "127.0.0.1", 5002])
    assert got[2][0] == "AuthError", got
    assert "svc" in services(ka)
    # a refresh from another address does not take the record over
    assert other.call("heartbeat", ["svc", "127.0.0.1", 5002], msgid=2)[3] is True
    assert other.call("unregister", ["svc", "127.0.0.1", 5002], msgid=3)[2][0] == "AuthError"
    assert r.call("unregister", ["svc", "127.0.0.1", 5002])[3] is True
    assert "refused unregister of svc at 127.0.0.1:5002 from 127.0.0.2" in read(log)


def test_proxy_never_dials_outside_backend_allow():
    ka = keepalive()
    svc = daemon("--role=demo", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint,
                 "--heartbeat-interval", "0.2")
    # a listener standing for an instance the proxy must not reach: it counts connects
    trap = socket.socket()
    trap.bind(("127.0.0.2", 0))
    trap.listen(16)
    trap.setblocking(False)
    trap_port = trap.getsockname()[1]
    Raw(ka).call("heartbeat", ["sample.foo", "127.0.0.2", trap_port])
    px = daemon("--role=proxy", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint,
                "--refresh-interval", "0.2", "--backend-allow", "127.0.0.1/32")
    r = Raw(px)
    assert wait_until(lambda: len(r.call("\0stats", None)[3].get("backends", {})) == 2)
    for i in range(20):
        assert r.call("invoke", ["sample.foo", "echo", [i]], msgid=i)[3] == [i]
    hinted = r.call("invoke", {"service": "sample.foo", "method": "echo", "params": [1],
                               "__hint__": 1})  # index 1: 127.0.0.2 sorts after 127.0.0.1
    assert hinted[2][0] == "ServiceUnavailable", hinted
    b = r.call("\0stats", None)[3]["backends"]
    assert b[f"127.0.0.2:{trap_port}"]["denied"] is True
    assert b[f"127.0.0.2:{trap_port}"]["requests"] == 0
    assert b[f"127.0.0.1:{svc.port}"]["denied"] is False
    try:
        trap.accept()
        raise AssertionError("the proxy dialled an instance outside --backend-allow")
    except BlockingIOError:
        pass
    trap.close()


def test_open_keepalive_on_a_public_bind_warns_once():
    def warned(*extra):
        log = log_path()
        ka = daemon("--role=keepalive", "--log-file", log, *extra)
        Raw(ka).call("get_services", [])
        return read(log).count("accepts writes from anyone")
    assert warned("--bind", "0.0.0.0:0") == 1
    assert warned("--bind", "0.0.0.0:0", "--allow", "127.0.0.0/8") == 0
    assert warned("--bind", "0.0.0.0:0", "--auth-token-file", token_file()) == 0
    assert warned("--bind", "127.0.0.1:0") == 0


def test_audit_flood_is_summarised():
    log = log_path()
    ka = keepalive("--auth-token-file", token_file(), "--log-file", log)
    r = Raw(ka)
    r.send(*[[0, i, "heartbeat", ["svc", None, 1]] for i in range(200)])
    got = r.recv(200)
    assert all(m[2][0] == "AuthError" for m in got)
    assert wait_until(lambda: "more event(s) in that second not logged" in read(log), timeout=3)
    refused = [l for l in read(log).splitlines() if "audit: refused heartbeat" in l]
    assert 20 <= len(refused) <= 40, len(refused)  # at most 20 a second


if __name__ == "__main__":  # also runs without pytest: python3 FILE [test_name...]
    run(globals())
