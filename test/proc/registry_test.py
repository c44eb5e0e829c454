"""The registry on etcd under a sick member and hostile data (SPEC §5): hung members (SIGSTOP),
malformed values and keys, owner races, bounds, mixed TTLs, batched registration; and a fake
JSON gateway for stream lines etcd would never send. Real 3-member etcd, loopback only."""
import base64
import http.server
import json
import socketserver
import threading
import time

import msgpack

from etcd import EtcdCluster, post
from harness import Raw, assert_grew_less, daemon, run, wait_until
from load import Load


def keepalive(etcd, *extra, ttl="5", prefix="/aiorpc/reg"):
    endpoints = etcd if isinstance(etcd, str) else etcd.endpoints()
    ka = daemon("--role=keepalive", "--bind", "127.0.0.1:0", "--ttl", ttl,
                "--store", "etcd://" + endpoints, "--store-prefix", prefix,
                "--store-timeout", "1", *extra)
    if not isinstance(etcd, str):  # its first read of etcd done (before it, it is stale)
        assert wait_until(lambda: not watch_now(ka).get("stale"))
    return ka


def demo(kas):
    return daemon("--role=demo", "--bind", "127.0.0.1:0",
                  "--keepalive", ",".join(k.endpoint for k in kas), "--heartbeat-interval", "0.2")


def watch_now(ka):
    return Raw(ka).call("watch", [None])[3]


def registry(ka):
    return Raw(ka).call("\0stats", None)[3]["registry"]


def b64(b):
    return base64.b64encode(b if isinstance(b, bytes) else b.encode()).decode()


def put_raw(etcd, key, value):
    post(etcd.ports[0][0], "/v3/kv/put", {"key": b64(key), "value": b64(value)})


def record_value(host, port, ident=None, owner="127.0.0.1"):
    return msgpack.packb({"endpoint": [host, port], "ident": ident, "owner": owner})


def heartbeat(ka, *args, source=None):
    return Raw(ka, source=source).call("heartbeat", list(args))


def until_true(ka, *args, timeout=20):
    """A heartbeat retried while etcd elects or the store moves (ServiceUnavailable)."""
    last = None

    def once():
        nonlocal last
        try:
            last = heartbeat(ka, *args)
        except (AssertionError, OSError) as e:
            last = e
            return False
        return last[3] is True
    assert wait_until(once, timeout=timeout, step=0.1), last


def test_a_hung_watched_member_is_left_and_no_routed_call_fails():
    etcd = EtcdCluster()
    a, b = keepalive(etcd), keepalive(etcd)
    s1 = demo([a, b])
    px = daemon("--role=proxy", "--bind", "127.0.0.1:0", "--keepalive",
                f"{a.endpoint},{b.endpoint}", "--refresh-interval", "0.2")
    assert heartbeat(a, "gone", "127.0.0.1", 4100)[3] is True  # never refreshed: expires
    assert wait_until(lambda: all("gone" in watch_now(k)["services"] and
                                  "sample.foo" in watch_now(k)["services"] for k in (a, b)))
    assert wait_until(lambda: Raw(px).call("\0stats", None)[3]["registry"]["stale"] is False)
    load = Load(px.port, clients=4, depth=8).start()
    time.sleep(0.5)
    watched = {k.endpoint: registry(k)["etcd_watch"] for k in (a, b)}
    member = etcd.index_of(watched[a.endpoint])
    etcd.stop_member(member)
    t0 = time.time()
    until_true(b, "fresh", "127.0.0.1", 4200)
    t_fresh = time.time()
    beating = threading.Event()

    def keep_fresh():  # "fresh" is heartbeated on (its TTL is 5 s), errors and all
        while not beating.is_set():
            try:
                heartbeat(b, "fresh", "127.0.0.1", 4200)
            except (AssertionError, OSError):
                pass
            time.sleep(0.3)
    threading.Thread(target=keep_fresh, daemon=True).start()
    # Every answer that does not say stale is true: after "gone" expired (its 5 s TTL, plus an
    # election) and "fresh" was written, a current table lists "fresh" and not "gone".
    samples = []

    def fresh(k):
        w = watch_now(k)
        samples.append((time.time(), k.endpoint, w.get("stale"), "gone" in w["services"],
                        "fresh" in w["services"]))
        return not w.get("stale") and "fresh" in w["services"] and "gone" not in w["services"]
    assert wait_until(lambda: all([fresh(a), fresh(b)]), timeout=30, step=0.05), samples[-4:]
    took = time.time() - t0
    for t, ep, stale, has_gone, has_fresh in samples:
        if not stale and t > t_fresh + 1 + 1:  # store-timeout 1 s, one canary period of slack
            assert has_fresh, (t - t0, ep, samples)
    beating.set()
    etcd.cont_member(member)
    load.stop()
    first = {ep: min([t for t, e, stale, _, has_fresh in samples
                      if e == ep and not stale and has_fresh], default=t_fresh) - t0
             for ep in (a.endpoint, b.endpoint)}
    print(f"member {member} (watched by {sum(w == watched[a.endpoint] for w in watched.values())}"
          f" of 2 keepalives) SIGSTOPped: 'fresh' written {t_fresh - t0:.1f} s after, listed "
          f"(not stale) {first[a.endpoint]:.1f} s / {first[b.endpoint]:.1f} s after; 'gone' "
          f"expired and both current {took:.1f} s after; routed calls: {load.summary()}")
    assert load.ok > 100 and load.errors == {} and load.unanswered == 0, load.summary()
    assert registry(a)["watch_moves"] >= 1
    assert s1


def test_two_of_three_members_hung_stale_within_the_timeout_then_healed():
    etcd = EtcdCluster()
    a = keepalive(etcd, ttl="30")
    assert heartbeat(a, "svc", "127.0.0.1", 4300)[3] is True
    assert wait_until(lambda: "svc" in watch_now(a)["services"] and not watch_now(a).get("stale"))
    watched = etcd.index_of(registry(a)["etcd_watch"])
    other = (watched + 1) % 3
    etcd.stop_member(watched)
    etcd.stop_member(other)
    t0 = time.time()
    # no quorum, and the watched member hung: the canary cannot be written nor read back
    assert wait_until(lambda: watch_now(a).get("stale") is True, timeout=10)
    print(f"two of three members SIGSTOPped: stale after {time.time() - t0:.1f} s")
    assert "svc" in watch_now(a)["services"]  # reads answer from the cache
    etcd.cont_member(watched)
    etcd.cont_member(other)
    until_true(a, "svc2", "127.0.0.1", 4301, timeout=30)
    assert wait_until(lambda: not watch_now(a).get("stale") and
                      "svc2" in watch_now(a)["services"], timeout=20)


def test_a_hung_leader_the_registry_goes_on():
    etcd = EtcdCluster()
    a, b = keepalive(etcd), keepalive(etcd)
    leader = etcd.leader()
    etcd.stop_member(leader)
    until_true(a, "after", "127.0.0.1", 4400, timeout=30)
    assert wait_until(lambda: all(not watch_now(k).get("stale") and
                                  "after" in watch_now(k)["services"] for k in (a, b)), timeout=20)
    etcd.cont_member(leader)


def test_unregister_and_ident_change_by_another_address_are_decided_by_etcd():
    etcd = EtcdCluster()
    a, b = keepalive(etcd, ttl="30"), keepalive(etcd, ttl="30")
    removed = 0
    for i in range(100):
        assert heartbeat(a, "race", "127.0.0.1", 5000 + i)[3] is True
        # through the other instance, whose cache may not have it yet, from another address
        got = Raw(b, source="127.0.0.2").call("unregister", ["race", "127.0.0.1", 5000 + i])
        assert got[2] is not None and got[2][0] == "AuthError", (i, got)
        removed += got[3] is True
    assert removed == 0
    assert wait_until(lambda: len(watch_now(b)["services"].get("race", [])) == 100)
    # another address may refresh a record, not change its ident
    assert heartbeat(b, "race", "127.0.0.1", 5000, source="127.0.0.2")[3] is True
    got = heartbeat(b, "race", "127.0.0.1", 5000, {"evil": 1}, source="127.0.0.2")
    assert got[2] is not None and got[2][0] == "AuthError", got
    assert heartbeat(b, "race", "127.0.0.1", 5001, {"v": 2})[3] is True  # the owner may
    assert wait_until(lambda: {e["endpoint"][1]: e["ident"] for e in
                               watch_now(a)["services"]["race"]}.get(5001) == {"v": 2})
    assert {e["endpoint"][1]: e["ident"]
            for e in watch_now(a)["services"]["race"]}[5000] is None


def test_keys_escape_every_structural_byte_and_prefixes_cannot_be_injected():
    etcd = EtcdCluster()
    a = keepalive(etcd, ttl="30", prefix="/a")
    guarded = keepalive(etcd, ttl="30", prefix="/a/v1/svc/x")
    hosts = ["h[1]", "[x", "y]", "a/b", "100%", "%2F", "tab\there", "::1", "[::1]:5", "q:r"]
    for i, h in enumerate(hosts):
        assert heartbeat(a, "n/[%]\x01", h, 6000 + i)[3] is True, h
    # the registrant of /a writes what, unescaped, would be a record under the guarded prefix
    assert heartbeat(a, "x", "v1/svc/evil/127.0.0.1", 80)[3] is True
    # a heartbeat's true means etcd has it; the cache follows through the watch
    assert wait_until(lambda: len(watch_now(a)["services"].get("n/[%]\x01", [])) == len(hosts)
                      and "x" in watch_now(a)["services"])
    listed = {e["endpoint"][0] for e in watch_now(a)["services"]["n/[%]\x01"]}
    assert listed == set(hosts)
    assert watch_now(a)["services"]["x"] == [{"ident": None,
                                             "endpoint": ["v1/svc/evil/127.0.0.1", 80]}]
    time.sleep(0.5)
    assert watch_now(guarded)["services"] == {}
    # a restarted instance reads every one of them back
    c = keepalive(etcd, ttl="30", prefix="/a")
    assert wait_until(lambda: watch_now(c)["services"] == watch_now(a)["services"])


def test_names_and_hosts_that_are_not_utf8_are_refused():
    etcd = EtcdCluster()
    for ka in (keepalive(etcd, ttl="30"),
               daemon("--role=keepalive", "--bind", "127.0.0.1:0")):  # the memory store too
        for name, host in ((b"\xd9\x03a\xffb", msgpack.packb("127.0.0.1")),
                           (msgpack.packb("svc"), b"\xd9\x02\xc3\x28")):
            r = Raw(ka)
            r.send_bytes(b"\x94" + msgpack.packb(0) + msgpack.packb(7) + msgpack.packb("heartbeat")
                         + b"\x93" + name + host + msgpack.packb(80))
            got = r.recv(1)[0]
            assert got[2] is not None and got[2][0] == "ArgumentError", got
            assert "UTF-8" in got[2][1], got
        assert Raw(ka).call("get_services", [])[3] == {}


def test_store_values_are_checked_like_heartbeats_and_overwritten_by_them():
    etcd = EtcdCluster()
    a, b = keepalive(etcd, ttl="30"), keepalive(etcd, ttl="30")
    key = "/aiorpc/reg/v1/svc/svc/127.0.0.1:7000"
    put_raw(etcd, key, b"garbage")
    put_raw(etcd, "/aiorpc/reg/v1/svc/big/127.0.0.1:7001",
            record_value("127.0.0.1", 7001, "i" * (1 << 20)))
    put_raw(etcd, "/aiorpc/reg/v1/svc/lie/127.0.0.1:7002", record_value("127.0.0.9", 7002))
    put_raw(etcd, "/aiorpc/reg/v1/svc/ok/127.0.0.1:7003", record_value("127.0.0.1", 7003))
    for k in (a, b):
        assert wait_until(lambda: "ok" in watch_now(k)["services"])
        assert set(watch_now(k)["services"]) == {"ok"}
        assert registry(k)["bad_values"] >= 3
    # the heartbeat of the record whose key holds garbage overwrites it
    assert heartbeat(a, "svc", "127.0.0.1", 7000)[3] is True
    assert wait_until(lambda: all("svc" in watch_now(k)["services"] for k in (a, b)))
    # a value that turns invalid: every instance drops the record (they agree)
    put_raw(etcd, key, msgpack.packb([1, 2, 3]))
    assert wait_until(lambda: all("svc" not in watch_now(k)["services"] for k in (a, b)))
    assert watch_now(a)["version"] == watch_now(b)["version"]


def test_bounds_refuse_new_records_with_overloaded():
    etcd = EtcdCluster()
    for ka in (keepalive(etcd, "--max-records", "5", "--max-records-per-source", "3", ttl="30"),
               daemon("--role=keepalive", "--bind", "127.0.0.1:0", "--max-records", "5",
                      "--max-records-per-source", "3")):
        for i in range(3):
            assert heartbeat(ka, "b", "127.0.0.1", 8000 + i)[3] is True
        got = heartbeat(ka, "b", "127.0.0.1", 8003)
        assert got[2] is not None and got[2][0] == "Overloaded", got
        assert heartbeat(ka, "b", "127.0.0.1", 8000, source="127.0.0.2")[3] is True  # refresh
        for i in range(2):
            assert heartbeat(ka, "c", None, 8100 + i, source="127.0.0.2")[3] is True
        got = heartbeat(ka, "c", None, 8102, source="127.0.0.3")
        assert got[2] is not None and got[2][0] == "Overloaded" and "5" in got[2][1], got
        assert wait_until(lambda: sum(map(len, Raw(ka).call("get_services", [])[3].values())) == 5)


def test_renewal_follows_each_leases_ttl():
    etcd = EtcdCluster()
    short, long_ = keepalive(etcd, ttl="2"), keepalive(etcd, ttl="30")
    assert heartbeat(short, "mixed", "127.0.0.1", 9000)[3] is True
    assert wait_until(lambda: "mixed" in watch_now(long_)["services"])
    version = watch_now(long_)["version"]
    # from now on heartbeats reach only the keepalive started with --ttl 30: it renews the
    # 2 s lease as often as that lease needs, not once per 10 s (the old code let it expire and
    # wrote the record again: the table changed twice)
    end = time.time() + 6
    while time.time() < end:
        assert heartbeat(long_, "mixed", "127.0.0.1", 9000)[3] is True
        assert "mixed" in watch_now(long_)["services"]
        time.sleep(0.3)
    assert watch_now(long_)["version"] == version
    assert watch_now(short)["version"] == version


def test_new_records_are_written_in_batches_and_still_expire_one_by_one():
    etcd = EtcdCluster()
    a, b = keepalive(etcd, ttl="3"), keepalive(etcd, ttl="3")
    conns = [Raw(a, source=f"127.0.0.{1 + i}") for i in range(4)]
    for i, c in enumerate(conns):
        c.send(*[[0, j, "heartbeat", ["batch", "127.0.0.1", 10000 + i * 250 + j]]
                 for j in range(250)])
    for c in conns:
        assert all(m[3] is True for m in c.recv(250, timeout=30))
    assert wait_until(lambda: len(watch_now(b)["services"].get("batch", [])) == 1000, timeout=20)
    assert registry(a)["write_batches"] <= 100, registry(a)
    # the first half keeps heartbeating (through b); the rest stops: only the rest expires,
    # although all were registered on shared leases
    keep = [10000 + j for j in range(0, 1000, 2)]
    r = Raw(b)
    end = time.time() + 7
    while time.time() < end:
        r.send(*[[0, p, "heartbeat", ["batch", "127.0.0.1", p]] for p in keep])
        assert all(m[3] is True for m in r.recv(len(keep), timeout=30))
        time.sleep(0.5)
    listed = {e["endpoint"][1] for e in watch_now(a)["services"].get("batch", [])}
    assert listed == set(keep), (len(listed), len(set(keep) - listed), len(listed - set(keep)))


# ---- A fake JSON gateway: what etcd would never send ----

class _Gateway(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    watch_lines = []  # set per test: bytes written on a watch, then held open
    endless = False

    def log_message(self, *a):
        pass

    def _json(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        hdr = {"header": {"revision": "5"}}
        if self.path == "/v3/watch":
            self.send_response(200)
            self.end_headers()
            try:
                for line in type(self).watch_lines:
                    self.wfile.write(line)
                    self.wfile.flush()
                chunk = b"x" * (1 << 20)
                while type(self).endless:
                    self.wfile.write(chunk)
                time.sleep(30)
            except OSError:
                pass
        elif self.path == "/v3/lease/grant":
            self._json({**hdr, "ID": "7", "TTL": "30"})
        elif self.path == "/v3/kv/txn":
            self._json({**hdr, "succeeded": True})
        else:
            self._json(hdr)


def fake_gateway(lines, endless=False):
    handler = type("G", (_Gateway,), {"watch_lines": lines, "endless": endless})
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"127.0.0.1:{srv.server_address[1]}"


def rss_mib(p):
    with open(f"/proc/{p.p.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024


def test_malformed_watch_lines_are_counted_never_fatal():
    created = b'{"result":{"header":{"revision":"5"},"created":true}}\n'
    for bad in (b'{"result":{"header":{"revision":"abc"},"events":[]}}\n',
                b'{"result":[1,2]}\n',
                b'{"result":{"events":[{"kv":[]}]}}\n',
                b'{"result":{"events":{"kv":{}}}}\n',
                b'[1,2,3]\n', b'not json\n',
                b'{"result":{"header":{"revision":"6"},"events":[{"kv":{"key":5}}]}}\n'):
        srv, ep = fake_gateway([created, bad])
        ka = keepalive(ep, ttl="30")
        assert wait_until(lambda: registry(ka)["bad_responses"] >= 1, timeout=10), bad
        assert ka.p.poll() is None
        assert Raw(ka).call("get_services", [])[3] == {}
        ka.kill()
        srv.shutdown()


def test_a_line_that_never_ends_is_bounded():
    srv, ep = fake_gateway([b'{"result":{"header":{"revision":"5"},"created":true}}\n'],
                           endless=True)
    ka = keepalive(ep, ttl="30")
    time.sleep(1)
    before = rss_mib(ka)
    time.sleep(6)
    after = rss_mib(ka)
    print(f"keepalive RSS {before:.0f} -> {after:.0f} MiB under a watch line that never ends")
    assert ka.p.poll() is None
    assert registry(ka)["bad_responses"] >= 1
    assert_grew_less(before, after, 100)  # (the old code: +660 MB in 8 s)
    srv.shutdown()


if __name__ == "__main__":
    run(globals())
