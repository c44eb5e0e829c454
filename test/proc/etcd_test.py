"""The registry on etcd (SPEC §5, replicated registry): a real 3-member etcd cluster, two
keepalives on it, services and proxies with several keepalives; leader loss, quorum loss and
healing, keepalive loss under load. Loopback only."""
import signal
import time

from etcd import EtcdCluster
from harness import Raw, daemon, run, wait_until
from load import Load


def keepalive(etcd, *extra, ttl="2", synced=True):
    ka = daemon("--role=keepalive", "--bind", "127.0.0.1:0", "--ttl", ttl,
                "--store", "etcd://" + etcd.endpoints(), "--store-prefix", "/aiorpc/test",
                *extra)
    if synced:  # its first read of etcd done (before it, it is stale and refuses writes)
        assert wait_until(lambda: not Raw(ka).call("watch", [None])[3].get("stale"))
    return ka


def demo(kas, port=0, *extra):
    return daemon("--role=demo", "--bind", f"127.0.0.1:{port}",
                  "--keepalive", ",".join(k.endpoint for k in kas),
                  "--heartbeat-interval", "0.2", *extra)


def proxy(kas, *extra):
    return daemon("--role=proxy", "--bind", "127.0.0.1:0",
                  "--keepalive", ",".join(k.endpoint for k in kas),
                  "--refresh-interval", "0.2", *extra)


def watch_now(ka):
    return Raw(ka).call("watch", [None])[3]


def ports(ka):
    return {e["endpoint"][1] for e in watch_now(ka)["services"].get("sample.foo", [])}


def stats(p):
    return Raw(p).call("\0stats", None)[3]


def test_one_registry_through_two_keepalives_and_watch_across_them():
    etcd = EtcdCluster()
    a, b = keepalive(etcd), keepalive(etcd)
    assert stats(a)["registry"]["store"] == "etcd"
    ra = Raw(a)
    assert ra.call("heartbeat", ["sample.foo", "127.0.0.1", 4001, {"v": 1}])[3] is True
    # listed by the other instance; the same version on both
    assert wait_until(lambda: ports(b) == {4001})
    assert wait_until(lambda: watch_now(a)["version"] == watch_now(b)["version"])
    v = watch_now(b)["version"]
    assert v > 0
    # a watch on b wakes for a change made through a
    w = Raw(b)
    w.send([0, 9, "watch", [v, 30000]])
    w.expect_silence(0.3)
    assert ra.call("heartbeat", ["sample.foo", "127.0.0.1", 4002])[3] is True
    got = w.recv(1, timeout=15)[0]
    assert got[1] == 9 and got[3]["version"] > v, got
    assert {e["endpoint"][1] for e in got[3]["services"]["sample.foo"]} == {4001, 4002}
    assert wait_until(lambda: watch_now(a)["version"] == watch_now(b)["version"])
    # an unchanged heartbeat renews the lease only: no new version, no wake-up
    v2 = watch_now(a)["version"]
    w.send([0, 10, "watch", [v2, 30000]])
    for _ in range(3):
        assert Raw(b).call("heartbeat", ["sample.foo", "127.0.0.1", 4002])[3] is True
    w.expect_silence(0.5)
    assert watch_now(a)["version"] == v2
    # the ident comes through etcd intact; unregister through b (same source address) works
    assert [e["ident"] for e in watch_now(b)["services"]["sample.foo"]
            if e["endpoint"][1] == 4001] == [{"v": 1}]
    assert Raw(b).call("unregister", ["sample.foo", "127.0.0.1", 4001])[3] is True
    assert wait_until(lambda: ports(a) == {4002})
    # a new keepalive instance starts from what etcd holds
    c = keepalive(etcd)
    assert wait_until(lambda: ports(c) == {4002})
    # a version newer than this cache (a proxy arriving from another keepalive) is waited on,
    # then answered with the cache when its time is up
    v_now = watch_now(c)["version"]
    t0 = time.time()
    got = Raw(c).call("watch", [v_now + 1000, 700])[3]
    assert got["version"] == v_now and time.time() - t0 >= 0.5, got


def test_lease_expiry_after_kill_and_revoke_on_sigterm():
    etcd = EtcdCluster()
    a, b = keepalive(etcd), keepalive(etcd)
    killed, stopped, kept = demo([a, b]), demo([a, b]), demo([a, b])
    everyone = {killed.port, stopped.port, kept.port}
    assert wait_until(lambda: ports(a) == everyone and ports(b) == everyone)
    stopped.signal(signal.SIGTERM)  # unregisters from both keepalives: the lease is revoked
    assert wait_until(lambda: stopped.port not in ports(a), timeout=1.5)
    assert stopped.wait() == 0
    killed.kill()  # SIGKILL: etcd expires its lease (TTL 2 s), whichever keepalive wrote it
    assert killed.port in ports(b)
    assert wait_until(lambda: ports(a) == {kept.port} and ports(b) == {kept.port}, timeout=10)
    # every keepalive gone: etcd still expires what nobody refreshes
    a.kill(), b.kill()
    kept.kill()
    c = keepalive(etcd)
    assert wait_until(lambda: ports(c) == set(), timeout=10)


def test_the_watched_keepalive_dies_under_load_and_no_call_fails():
    etcd = EtcdCluster()
    a, b = keepalive(etcd), keepalive(etcd)
    svcs = [demo([a, b]) for _ in range(2)]
    px = proxy([a, b])
    assert wait_until(lambda: len(stats(px)["backends"]) == 2)
    assert stats(px)["registry"]["keepalive"] == a.endpoint
    load = Load(px.port, clients=8, depth=16).start()
    time.sleep(1)
    a.kill()
    # the proxy moves to b and keeps routing; a change made meanwhile reaches it through b
    extra = demo([a, b])
    assert wait_until(lambda: stats(px)["registry"]["keepalive"] == b.endpoint)
    assert wait_until(lambda: len(stats(px)["backends"]) == 3, timeout=15)
    time.sleep(1)
    load.stop()
    assert load.ok > 1000 and load.errors == {} and load.unanswered == 0, load.summary()
    assert svcs and extra


def test_leader_killed_the_registry_goes_on():
    etcd = EtcdCluster()
    a, b = keepalive(etcd), keepalive(etcd)
    s1 = demo([a, b])
    assert wait_until(lambda: ports(a) == {s1.port})
    leader = etcd.leader()
    etcd.kill_member(leader)
    # after the election: heartbeats keep the record, changes are seen through both
    s2 = demo([a, b])
    assert wait_until(lambda: ports(a) == {s1.port, s2.port} and ports(b) == {s1.port, s2.port},
                      timeout=20)
    time.sleep(3)  # longer than the TTL: leases are being renewed
    assert ports(a) == {s1.port, s2.port}
    assert not stats(a)["registry"]["stale"] and not stats(b)["registry"]["stale"]


def test_quorum_lost_then_back_stale_then_healed():
    etcd = EtcdCluster()
    a, b = keepalive(etcd, ttl="30"), keepalive(etcd, ttl="30")
    s1 = demo([a, b])
    px = proxy([a, b])
    assert wait_until(lambda: len(stats(px)["backends"]) == 1)
    r = Raw(px)
    assert r.call("invoke", ["sample.foo", "echo", [1]])[3] == [1]
    etcd.kill_member(1)
    etcd.kill_member(2)
    # no quorum: the keepalives say stale, heartbeats get ServiceUnavailable
    assert wait_until(lambda: watch_now(a).get("stale") is True, timeout=20)
    assert wait_until(lambda: watch_now(b).get("stale") is True, timeout=20)
    got = Raw(a).call("heartbeat", ["sample.foo", "127.0.0.1", 4999])
    assert got[2] is not None and got[2][0] == "ServiceUnavailable", got
    assert ports(a) == {s1.port}  # reads answer from the cache
    # the proxy keeps routing from its table
    assert wait_until(lambda: stats(px)["registry"]["stale"] is True, timeout=20)
    for i in range(20):
        assert r.call("invoke", ["sample.foo", "echo", [i]], msgid=i)[3] == [i]
    # the members come back: everything heals by itself, and a change made now is seen
    etcd.start(1)
    etcd.start(2)
    assert wait_until(lambda: not watch_now(a).get("stale") and not watch_now(b).get("stale"),
                      timeout=30)
    s2 = demo([a, b])
    assert wait_until(lambda: ports(a) == {s1.port, s2.port} and ports(b) == {s1.port, s2.port},
                      timeout=20)
    assert wait_until(lambda: len(stats(px)["backends"]) == 2 and not stats(px)["registry"]["stale"],
                      timeout=20)


def test_cold_start_routes_as_soon_as_etcd_has_quorum():
    # One member of three up (no quorum), a keepalive on it, a proxy watching the keepalive (its
    # default --refresh-interval), a demo heartbeating; then the other members. The keepalive is
    # stale until its first read of etcd and holds the proxy's first watch until that read: the
    # proxy routes as soon as the demo's heartbeat is written (the old code: ~30 s, its version
    # of the registry looked newer than etcd's first revision).
    etcd = EtcdCluster(3, start=False)
    etcd.start(0)
    ka = keepalive(etcd, synced=False)
    px = daemon("--role=proxy", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint)
    d = demo([ka])
    time.sleep(1.0)
    w = watch_now(ka)
    assert w.get("stale") is True and w["services"] == {}, w
    etcd.start(1)
    etcd.start(2)
    assert etcd.wait_healthy(), etcd.logs()
    t0 = time.time()

    def routes():
        try:
            return Raw(px, timeout=2).call("invoke", ["sample.foo", "echo", [1]])[3] == [1]
        except (AssertionError, ConnectionError, OSError):
            return False
    assert wait_until(routes, timeout=25, step=0.1)
    took = time.time() - t0
    assert took < 6, took  # quorum, a store retry (1 s), a heartbeat (0.2 s), one watch answer
    assert watch_now(ka).get("stale") is None
    d.kill()


def test_bad_store_flags_are_refused():
    import subprocess
    from harness import binary
    for bad in (("--store", "etcd://"), ("--store", "etcd://nohostport"), ("--store", "redis://x"),
                ("--store", "etcd://unix:/tmp/etcd.sock"), ("--store", "etcd://127.0.0.1:1,"),
                # https (SPEC §8): one scheme for every member, never a unix path
                ("--store", "etcd://https://127.0.0.1:1,127.0.0.1:2"),
                ("--store", "etcd://127.0.0.1:1,https://127.0.0.1:2"),
                ("--store", "etcds://https://127.0.0.1:1"), ("--store", "etcds://unix:/x"),
                ("--store", "etcds://"), ("--store", "etcd://https://"),
                ("--store", "etcd://127.0.0.1:1", "--store-prefix", "noslash"),
                ("--store", "etcd://127.0.0.1:1", "--store-prefix", "/trailing/")):
        p = subprocess.run([binary("aiorpcd"), "--role=keepalive", "--bind", "127.0.0.1:0", *bad],
                           capture_output=True, timeout=10)
        assert p.returncode == 2 and p.stderr.strip(), (bad, p)


if __name__ == "__main__":
    run(globals())
