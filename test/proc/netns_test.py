"""Tests that a wrong build would turn into traffic off this machine (DNS look-ups of names a
keepalive hands out) run in a private network namespace with only loopback, so nothing can
leave even then. Re-executes itself under `unshare -n` (root); where that is not possible it
says so and skips."""
import os
import subprocess
import sys
import time

from harness import in_private_netns  # noqa: E402

in_private_netns("netns_test.py")
from harness import Raw, daemon, run, wait_until  # noqa: E402


def test_unresolvable_and_odd_hosts_never_crash_the_proxy():
    ka = daemon("--role=keepalive", "--bind", "127.0.0.1:0", "--ttl", "30")
    svc = daemon("--role=demo", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint,
                 "--heartbeat-interval", "0.2")
    k = Raw(ka)
    for host in ("no-such-host.invalid", "unix", "localhost.", "[::1]", "1.2.3", "", "::1"):
        k.call("heartbeat", ["sample.foo", host, 4000])
    px = daemon("--role=proxy", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint,
                "--refresh-interval", "0.2")
    r = Raw(px)
    t0 = time.time()
    assert wait_until(lambda: r.call("invoke", ["sample.foo", "echo", [1]])[3] == [1])
    assert time.time() - t0 < 3  # no resolver stalls the loop
    for i in range(20):  # \0stats crashed the proxy with an unresolvable host listed
        st = r.call("\0stats", None, msgid=i)[3]
        assert f"127.0.0.1:{svc.port}" in st["backends"]
        # [::1]:4000 refuses: every call goes on to the live instance
        assert r.call("invoke", ["sample.foo", "echo", [i]], msgid=100 + i)[3] == [i]
    names = set(r.call("\0stats", None)[3]["backends"])
    assert all(n.startswith("127.0.0.1:") or n.startswith("[::1]:") for n in names), names



def fake_dns(answers, silent=(), ttl=2):
    """A DNS server on loopback: A records from `answers`, no answer at all for `silent`,
    NXDOMAIN for anything else. Returns (port, queries seen)."""
    import socket
    import struct
    import threading
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)  # bursts of queries: none dropped
    s.bind(("127.0.0.1", 0))
    seen = []

    def serve():
        while True:
            data, peer = s.recvfrom(512)
            qid = struct.unpack(">H", data[:2])[0]
            i, labels = 12, []
            while data[i]:
                labels.append(data[i + 1:i + 1 + data[i]].decode())
                i += 1 + data[i]
            qtype = struct.unpack(">H", data[i + 1:i + 3])[0]
            question = data[12:i + 5]
            name = ".".join(labels).lower()
            seen.append((name, qtype))
            if name in silent:
                continue
            if name in answers and qtype == 1:
                rr = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, ttl, 4) + socket.inet_aton(answers[name])
                reply = struct.pack(">HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + rr
            elif name in answers:  # AAAA and others: no data
                reply = struct.pack(">HHHHHH", qid, 0x8180, 1, 0, 0, 0) + question
            else:
                reply = struct.pack(">HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question
            s.sendto(reply, peer)
    threading.Thread(target=serve, daemon=True).start()
    return s.getsockname()[1], seen


def test_instance_names_resolve_without_blocking_the_loop():
    dns_port, seen = fake_dns({"svc.test": "127.0.0.3"}, silent={"slow.test"})
    ka = daemon("--role=keepalive", "--bind", "127.0.0.1:0", "--ttl", "30")
    direct = daemon("--role=demo", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint,
                    "--heartbeat-interval", "0.2")
    named = daemon("--role=demo", "--bind", "127.0.0.3:0")
    k = Raw(ka)
    k.call("heartbeat", ["sample.foo", "svc.test", named.port])
    k.call("heartbeat", ["sample.foo", "slow.test", 4000])  # its resolver never answers
    k.call("heartbeat", ["sample.foo", "nx.test", 4001])    # no such name
    px = daemon("--role=proxy", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint,
                "--refresh-interval", "0.2", "--dns-servers", f"127.0.0.1:{dns_port}")
    r = Raw(px)
    # while slow.test waits on its resolver, every call is answered at once
    assert wait_until(lambda: r.call("invoke", ["sample.foo", "echo", [0]])[3] == [0])
    # a blocking look-up would hold the loop for the resolver's whole timeout (5 s per try)
    t0 = time.time()
    for i in range(20):
        assert r.call("invoke", ["sample.foo", "echo", [i]], msgid=i)[3] == [i]
    assert time.time() - t0 < 4
    # the name's answer brings its instance in: at once, not when the names that did not
    # resolve are looked up again (the resolver's negative TTL, 5 s)
    t_named = time.time()
    assert wait_until(lambda: f"127.0.0.3:{named.port}" in r.call("\0stats", None)[3]["backends"])
    print(f"named instance routed {time.time() - t_named:.2f} s later")
    assert time.time() - t_named < 3, time.time() - t_named
    assert ("svc.test", 1) in seen and ("slow.test", 1) in seen and ("nx.test", 1) in seen
    names = set(r.call("\0stats", None)[3]["backends"])
    assert names == {f"127.0.0.1:{direct.port}", f"127.0.0.3:{named.port}"}, names
    for i in range(6):  # round robin reaches the named instance too
        assert r.call("invoke", ["sample.foo", "echo", [i]], msgid=100 + i)[3] == [i]
    b = r.call("\0stats", None)[3]["backends"]
    assert b[f"127.0.0.3:{named.port}"]["requests"] >= 2, b


def test_many_names_resolving_apply_the_table_in_batches():
    # 1,000 instances under 1,000 names: each answer used to apply the whole table again (5,000
    # names: 5.3 s of CPU); answers that arrive together are applied together now
    names = {"n%d.test" % i: "127.0.%d.%d" % (1 + i // 250, 1 + i % 250) for i in range(1000)}
    dns_port, seen = fake_dns(names, ttl=300)  # (a slow fake server: no re-resolution)
    ka = daemon("--role=keepalive", "--bind", "127.0.0.1:0", "--ttl", "60")
    k = Raw(ka, timeout=30)
    k.send(*[[0, i, "heartbeat", ["named", n, 5000]] for i, n in enumerate(names)])
    assert all(m[3] is True for m in k.recv(len(names)))
    px = daemon("--role=proxy", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint,
                "--dns-servers", f"127.0.0.1:{dns_port}")
    r = Raw(px, timeout=30)
    assert wait_until(lambda: len(r.call("\0stats", None)[3]["backends"]) == len(names),
                      timeout=120, step=0.5)
    applies = r.call("\0stats", None)[3]["registry"]["table_applies"]
    print(f"1,000 names resolved: the table was applied {applies} times")
    assert applies < 100, applies


run(globals())
