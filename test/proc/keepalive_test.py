"""aiorpcd --role=keepalive with real demo services sending heartbeats (SPEC §5)."""
import signal
import time

from harness import Raw, daemon, run, wait_until


def keepalive(*extra):
    return daemon("--role=keepalive", "--bind", "127.0.0.1:0", "--ttl", "1.5",
                  "--check-interval", "0.2", *extra)


def service(ka, name="sample.foo"):
    return daemon("--role=demo", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint,
                  "--heartbeat-interval", "0.2", "--service-name", name)


def services(ka):
    return Raw(ka).call("get_services", [])[3]


def test_services_register_sorted_with_source_host():
    ka = keepalive()
    a, b = service(ka), service(ka)
    c = service(ka, "other")
    assert wait_until(lambda: len(services(ka).get("sample.foo", [])) == 2 and "other" in services(ka))
    s = services(ka)
    ports = sorted([a.port, b.port])
    assert s["sample.foo"] == [{"ident": None, "endpoint": ["127.0.0.1", p]} for p in ports]
    assert s["other"] == [{"ident": None, "endpoint": ["127.0.0.1", c.port]}]


def test_heartbeat_shapes_bounds_and_reflection():
    ka = keepalive("--ttl", "30")
    r = Raw(ka)
    # loopback hosts only (tests never register another address), sorted by bytes
    assert r.call("heartbeat", ["svc", "127.0.0.3", 80, {"id": 1}])[3] is True
    assert r.call("heartbeat", {"name": "svc", "host": "127.0.0.20", "port": 90})[3] is True
    assert r.call("heartbeat", ["svc", "", 70])[3] is True  # "" host: the source IP
    assert r.call("get_services", [])[3] == {"svc": [
        {"ident": None, "endpoint": ["127.0.0.1", 70]},
        {"ident": None, "endpoint": ["127.0.0.20", 90]},
        {"ident": {"id": 1}, "endpoint": ["127.0.0.3", 80]}]}
    for bad in (["svc", None, 0], ["svc", None, 65536], ["svc", None, "80"], ["x" * 256, None, 1],
                ["svc", "h" * 256, 1], ["svc", None, 1, "i" * 2000], ["svc"], [1, None, 1]):
        msg = r.call("heartbeat", bad)
        assert msg[2][0] == "ArgumentError", (bad, msg)
    refl = r.call("\0reflection", None)[3]["methods"]
    assert refl["heartbeat"] == ["ctx", "name", "host", "port", {"name": "ident", "default": None}]
    assert refl["get_services"] == []
    assert refl["unregister"] == ["ctx", "name", "host", "port"]
    assert refl["watch"] == ["version", {"name": "wait_ms", "default": 30000}]
    assert r.call("unregister", ["svc", "127.0.0.20", 90])[3] is True
    assert r.call("unregister", ["svc", "127.0.0.20", 90])[3] is False


def test_killed_service_expires_after_ttl():
    ka = keepalive()
    a = service(ka)
    b = service(ka)
    assert wait_until(lambda: len(services(ka).get("sample.foo", [])) == 2)
    a.kill()  # SIGKILL: no unregister
    t0 = time.time()
    assert len(services(ka)["sample.foo"]) == 2  # still listed before the TTL
    assert wait_until(lambda: len(services(ka).get("sample.foo", [])) == 1, timeout=10)
    # TTL-driven, not instant (a slack lower bound: heartbeats may run late on a loaded machine)
    assert time.time() - t0 >= 0.5
    assert services(ka)["sample.foo"][0]["endpoint"][1] == b.port


def test_sigterm_unregisters():
    ka = keepalive("--ttl", "30")
    a = service(ka)
    assert wait_until(lambda: "sample.foo" in services(ka))
    a.signal(signal.SIGTERM)
    assert a.wait() == 0
    assert services(ka) == {}  # gone at once, not after the 30 s TTL


def test_keepalive_restart_is_healed_by_heartbeats():
    ka = keepalive()
    port = ka.port
    a = service(ka)
    assert wait_until(lambda: "sample.foo" in services(ka))
    ka.signal(signal.SIGTERM)
    ka.wait()
    ka2 = daemon("--role=keepalive", "--bind", f"127.0.0.1:{port}", "--ttl", "1.5",
                 "--check-interval", "0.2")
    assert wait_until(lambda: services(ka2).get("sample.foo", [{}])[0].get("endpoint") ==
                      ["127.0.0.1", a.port], timeout=10)


def test_watch_wakes_on_change_not_on_refresh():
    ka = keepalive("--ttl", "30")
    r = Raw(ka)
    first = r.call("watch", [0, 1000])[3]  # version 0 always differs: at once
    v = first["version"]
    assert first["services"] == {}
    # a watcher with the current version waits; a refreshing heartbeat does not wake it
    r2 = Raw(ka)
    assert r2.call("heartbeat", ["s", "h", 1])[3] is True
    v2 = r2.call("watch", [None])[3]["version"]
    assert v2 == v + 1
    w = Raw(ka)
    w.send([0, 7, "watch", [v2, 30000]])
    time.sleep(0.3)
    assert r2.call("heartbeat", ["s", "h", 1])[3] is True  # refresh
    w.expect_silence(0.5)  # a refreshing heartbeat does not wake it
    assert r2.call("heartbeat", ["s", "h", 2])[3] is True  # a change
    got = w.recv(1, timeout=15)[0]  # woken by the change, long before its 30 s wait ends
    assert got[1] == 7 and got[3]["version"] == v2 + 1
    assert [e["endpoint"] for e in got[3]["services"]["s"]] == [["h", 1], ["h", 2]]
    # wait_ms passes without change: the same version comes back
    t0 = time.time()
    assert r.call("watch", [v2 + 1, 1000])[3]["version"] == v2 + 1
    assert time.time() - t0 >= 0.5  # it waited (libev's cached loop time may start it early)


def test_draining_keepalive_answers_watchers_at_once():
    ka = keepalive("--ttl", "30")
    r = Raw(ka)
    v = r.call("watch", [0])[3]["version"]
    w = Raw(ka)
    w.send([0, 1, "watch", [v, 60000]])
    time.sleep(0.2)
    ka.signal(signal.SIGTERM)
    got = w.recv(1, timeout=15)[0]  # at once, not after its 60 s wait
    assert got[3]["version"] == v
    assert ka.wait() == 0


def test_many_idle_watchers():
    ka = keepalive("--ttl", "30")
    v = Raw(ka).call("watch", [0])[3]["version"]
    ws = []
    for i in range(200):
        w = Raw(ka)
        w.send([0, i, "watch", [v, 60000]])
        ws.append(w)
    assert wait_until(lambda: Raw(ka).call("\0stats", None)[3]["in_flight"] == 200)
    Raw(ka).call("heartbeat", ["new", "h", 1])
    for w in ws:
        assert w.recv(1, timeout=10)[0][3]["version"] == v + 1



def test_watch_refuses_nan_wait_and_keeps_expiring():
    ka = keepalive()
    r = Raw(ka)
    v = r.call("watch", [0])[3]["version"]
    for bad in (float("nan"), float("inf"), -1.0):
        got = r.call("watch", [v, bad])
        assert got[2] is not None and got[2][0] == "ArgumentError", (bad, got)
    assert r.call("heartbeat", ["svc", "127.0.0.1", 5003])[3] is True
    assert "svc" in services(ka)
    assert wait_until(lambda: "svc" not in services(ka), timeout=5)  # expiry still runs


def test_config_file_and_command_line_override():
    import os
    import subprocess
    import tempfile
    from harness import binary
    conf = os.path.join(tempfile.mkdtemp(), "keepalive.conf")
    with open(conf, "w") as f:
        f.write('# every flag by its name\nrole = "keepalive"\nbind = "127.0.0.1:0"\n'
                'ttl = 0.3\ncheck-interval = 0.1\n')
    ka = daemon("--config", conf)
    Raw(ka).call("heartbeat", ["svc", "127.0.0.1", 5004])
    assert wait_until(lambda: "svc" not in services(ka), timeout=3)  # ttl 0.3 from the file
    ka2 = daemon("--config", conf, "--ttl", "30")  # the command line wins
    Raw(ka2).call("heartbeat", ["svc", "127.0.0.1", 5004])
    time.sleep(0.8)
    assert "svc" in services(ka2)
    for args, why in ((["--config", conf, "--max-pending", "8x"], "max-pending"),
                      (["--config", conf, "--eject-after", "3"], "flag of role proxy"),
                      (["--config", conf + ".missing"], "not readable"),
                      (["--role=demo", "--ttl", "5"], "flag of role keepalive"),
                      (["--role=keepalive", "--ttl", "nan"], "ttl")):
        p = subprocess.run([binary("aiorpcd"), *args], capture_output=True, timeout=10)
        err = p.stderr.decode()
        assert p.returncode == 2 and why in err and len(err.strip().splitlines()) == 1, (args, err)



def test_only_the_registering_address_changes_an_ident_or_unregisters():
    ka = keepalive("--ttl", "30")
    owner, other = Raw(ka), Raw(ka, source="127.0.0.2")
    assert owner.call("heartbeat", ["own", "127.0.0.1", 1, {"v": 1}])[3] is True
    assert other.call("heartbeat", ["own", "127.0.0.1", 1, {"v": 1}])[3] is True  # a refresh
    got = other.call("heartbeat", ["own", "127.0.0.1", 1, {"v": 2}])
    assert got[2] is not None and got[2][0] == "AuthError", got
    got = other.call("unregister", ["own", "127.0.0.1", 1])
    assert got[2] is not None and got[2][0] == "AuthError", got
    assert services(ka)["own"] == [{"ident": {"v": 1}, "endpoint": ["127.0.0.1", 1]}]
    assert owner.call("heartbeat", ["own", "127.0.0.1", 1, {"v": 3}])[3] is True
    assert services(ka)["own"] == [{"ident": {"v": 3}, "endpoint": ["127.0.0.1", 1]}]
    assert owner.call("unregister", ["own", "127.0.0.1", 1])[3] is True

if __name__ == "__main__":  # also runs without pytest: python3 FILE [test_name...]
    run(globals())
