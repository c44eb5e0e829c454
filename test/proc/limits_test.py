"""Every resource a peer can make a daemon hold is bounded (issue 11 items 5-10): replies a
client never reads, requests a backend never reads, backends seen once, requests in progress
per connection, watches. Real daemons on loopback; memory read from /proc."""
import socket
import struct
import threading
import time

import msgpack

from harness import Raw, assert_grew_less, daemon, run, wait_until


def rss_mib(proc):
    with open(f"/proc/{proc.p.pid}/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


def stats(proc):
    return Raw(proc).call("\0stats", None)[3]


def keepalive(*extra):
    return daemon("--role=keepalive", "--bind", "127.0.0.1:0", "--ttl", "30",
                  "--check-interval", "0.2", *extra)


def cluster(proxy_args=(), demos=1):
    ka = keepalive()
    svcs = [daemon("--role=demo", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint,
                   "--heartbeat-interval", "0.2") for _ in range(demos)]
    px = daemon("--role=proxy", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint,
                "--refresh-interval", "0.2", *proxy_args)
    r = Raw(px)
    assert wait_until(lambda: r.call("invoke", ["sample.foo", "echo", [1]])[3] == [1])
    return ka, svcs, px


def silent_client(proc):
    """A client that sends and never reads (a tiny receive buffer)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", proc.port))
    return s


def send_in_thread(sock, data):
    def go():
        try:
            sock.sendall(data)
        except OSError:
            pass
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_proxy_client_that_never_reads_is_cut_off():
    ka, svcs, px = cluster(("--max-output-buffer", str(8 << 20)))
    before = rss_mib(px)
    s = silent_client(px)
    big = "x" * (1 << 20)
    data = b"".join(msgpack.packb([0, i, "invoke", ["sample.foo", "echo", [big]]])
                    for i in range(150))
    t = send_in_thread(s, data)
    # Either the replies pile past --max-output-buffer and the client is cut off, or, when they
    # come back faster than the requests are read (a loaded machine), the proxy stops reading it
    # at its high-water mark with nothing in flight (backpressure): memory is bounded either way.
    seen = []

    def settled():
        st = stats(px)
        if st["output_limit_closes"] == 1:
            return True
        seen.append(st["bytes_in"])
        quiet = len(seen) > 10 and seen[-1] - seen[-11] < 4096  # ~1 s without input
        return quiet and st["in_flight"] == 0
    assert wait_until(settled, timeout=30, step=0.1)
    t.join(1)
    time.sleep(0.5)
    after = rss_mib(px)
    print(f"proxy RSS {before:.0f} -> {after:.0f} MiB after 150 x 1 MiB unread replies")
    assert_grew_less(before, after, 64)
    r = Raw(px)  # everyone else is served
    assert r.call("invoke", ["sample.foo", "echo", ["fine"]])[3] == ["fine"]
    s.close()


def test_server_client_that_never_reads_is_cut_off():
    srv = daemon("--role=demo", "--bind", "127.0.0.1:0", "--max-output-buffer", str(4 << 20))
    before = rss_mib(srv)
    s = silent_client(srv)
    big = "y" * (1 << 20)
    data = b"".join(msgpack.packb([0, i, "echo", [big]]) for i in range(100))
    t = send_in_thread(s, data)
    assert wait_until(lambda: stats(srv)["output_limit_closes"] == 1, timeout=30)
    t.join(30)
    after = rss_mib(srv)
    print(f"demo RSS {before:.0f} -> {after:.0f} MiB after 100 x 1 MiB unread replies")
    assert_grew_less(before, after, 48)
    s.close()


def test_backend_that_never_reads_is_treated_as_broken():
    ka, svcs, px = cluster(("--max-backend-bytes", str(2 << 20), "--backend-timeout", "1"))
    # an "instance" that accepts and never reads, listed beside the real one
    trap = socket.socket()
    trap.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    trap.bind(("127.0.0.1", 0))
    trap.listen(8)
    Raw(ka).call("heartbeat", ["sample.foo", "127.0.0.1", trap.getsockname()[1]])
    r = Raw(px)
    assert wait_until(lambda: len(r.call("\0stats", None)[3]["backends"]) == 2)
    trap_name = f"127.0.0.1:{trap.getsockname()[1]}"
    hint = 1 if trap.getsockname()[1] > svcs[0].port else 2  # its index in the sorted list
    before = rss_mib(px)
    big = "z" * (256 << 10)
    for rnd in range(4):
        c = Raw(px)
        c.send(*[[0, i, "invoke", {"service": "sample.foo", "method": "echo", "params": [big],
                                   "__hint__": hint}] for i in range(25)])
        got = c.recv(25, timeout=30)  # every call answered: lost or not sent, never hanging
        assert all(m[2] is not None and m[2][0] in ("ConnectionError", "ServiceUnavailable",
                                                     "TimeoutError") for m in got), got[:3]
    after = rss_mib(px)
    print(f"proxy RSS {before:.0f} -> {after:.0f} MiB after 4 x 25 x 256 KiB to a silent backend")
    assert_grew_less(before, after, 48)
    assert r.call("\0stats", None)[3]["backends"][trap_name]["errors"] > 0
    trap.close()  # now it refuses: calls without a hint go to the real instance
    for i in range(10):
        assert r.call("invoke", ["sample.foo", "echo", [i]], msgid=10 + i)[3] == [i]



def test_watch_fan_out_respects_each_connection():
    ka = keepalive("--max-records-per-source", "20000")  # 10,001 records from 127.0.0.1
    k = Raw(ka)
    for base in range(0, 10000, 1000):  # 10,000 records (a snapshot of ~400 KB)
        k.send(*[[0, i, "heartbeat", ["svc%d" % (i % 100), "127.0.0.%d" % (1 + i % 250),
                                      1 + i // 250]] for i in range(base, base + 1000)])
        k.recv(1000, timeout=30)
    v = k.call("watch", [0])[3]["version"]
    before = rss_mib(ka)
    s = silent_client(ka)  # 2,000 pipelined watches on a connection that never reads
    s.sendall(b"".join(msgpack.packb([0, i, "watch", [v, 60000]]) for i in range(2000)))
    reader = Raw(ka)  # a well-behaved watcher beside it
    reader.send([0, 1, "watch", [v, 60000]])
    time.sleep(0.5)
    k.call("heartbeat", ["svc-new", "127.0.0.1", 1])  # one change wakes them all
    got = reader.recv(1)[0]
    assert got[3]["version"] > v  # answered at once, not held up by the silent one
    time.sleep(1)
    after = rss_mib(ka)
    print(f"keepalive RSS {before:.0f} -> {after:.0f} MiB: 10,000 records, 2,000 watches on a "
          "connection that never reads, one change")
    assert_grew_less(before, after, 48)
    st = Raw(ka).call("\0stats", None)[3]
    assert st["errors"].get("Overloaded", 0) == 2000 - 32, st["errors"]  # per-connection cap
    s.close()


def test_idle_watches_cost_little_and_go_with_their_connection():
    ka = keepalive()
    v = Raw(ka).call("watch", [0])[3]["version"]
    conns = [Raw(ka) for _ in range(400)]
    for c in conns:  # each connection's own buffers exist before we measure
        c.call("get_services", [])
    before = rss_mib(ka)
    for c in conns:
        c.send(*[[0, i, "watch", [v, 60000]] for i in range(20)])  # 8,000 idle watches
    time.sleep(1.0)
    after = rss_mib(ka)
    per_watch = (after - before) * 1024 * 1024 / 8000
    print(f"idle watch: {per_watch:.0f} bytes each (8,000 over 400 connections)")
    assert per_watch < 2048, per_watch
    for c in conns:  # closing a connection drops its watches at once
        c.close()
    k = Raw(ka)
    k.call("heartbeat", ["after", "127.0.0.1", 1])  # a change: nothing left to answer
    assert k.call("\0stats", None)[3]["in_flight"] <= 1


def test_requests_in_progress_per_connection_are_capped():
    srv = daemon("--role=demo", "--bind", "127.0.0.1:0", "--max-pending", "50")
    r = Raw(srv)
    r.send(*[[0, i, "sleep", [0.3]] for i in range(200)])
    peak = 0
    got = []
    deadline = time.time() + 20
    r.sock.settimeout(0.05)
    while len(got) < 200 and time.time() < deadline:
        peak = max(peak, stats(srv)["in_flight"])
        try:
            r.unpacker.feed(r.sock.recv(1 << 20))
        except OSError:  # nothing yet
            pass
        got.extend(r.unpacker)
    assert sorted(m[1] for m in got) == list(range(200))  # all answered, in batches
    assert 0 < peak <= 50, peak
    other = Raw(srv)  # the cap is per connection: others are served meanwhile
    assert other.call("echo", [1])[3] == [1]


def test_pending_cap_bounds_memory_by_default():
    srv = daemon("--role=demo", "--bind", "127.0.0.1:0")
    before = rss_mib(srv)
    s = silent_client(srv)
    s.sendall(b"".join(msgpack.packb([0, i, "sleep", [30]]) for i in range(20000)))
    time.sleep(1)
    st = stats(srv)
    after = rss_mib(srv)
    print(f"demo RSS {before:.0f} -> {after:.0f} MiB with 20,000 sleep(30) sent on one "
          f"connection ({st['in_flight']} in progress)")
    assert st["in_flight"] == 2048, st["in_flight"]
    assert_grew_less(before, after, 40)
    # a reset: the sleeps only this connection was waiting for end now, not in 30 s (the server
    # reads nothing from it meanwhile: it looks at the paused connection's state)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    assert wait_until(lambda: stats(srv)["in_flight"] == 0, timeout=5), stats(srv)["in_flight"]
    print(f"demo RSS {rss_mib(srv):.0f} MiB once the connection closed")



def test_the_largest_table_a_keepalive_holds_is_read_by_every_proxy():
    # Records as large as the bounds let them be (a 255-byte name each, a 1 KiB ident), from
    # five addresses (10,000 each at most): the table's byte bound refuses new ones before it
    # passes 48 MiB, and a proxy reads the whole of it (its registry limit is 64 MiB).
    ka = keepalive()
    ident = "i" * 1000
    conns = [Raw(ka, source=f"127.0.0.{1 + k}", timeout=60) for k in range(5)]
    i, refused = 0, None
    while refused is None and i < 50000:
        for c in conns:
            c.send(*[[0, j, "heartbeat", ["%06d" % (i + j) + "n" * 249,
                                          "127.1.%d.%d" % ((i + j) >> 8 & 255, (i + j) & 255),
                                          1 + (i + j) // 65536, ident]] for j in range(500)])
            for m in c.recv(500):
                if m[2] is not None:
                    assert m[2][0] == "Overloaded" and "bytes" in m[2][1], m
                    refused = refused or m
            i += 500
    assert refused is not None, i
    st = Raw(ka).call("\0stats", None)[3]["registry"]
    assert 40 << 20 < st["table_bytes"] <= 48 << 20, st
    size = len(msgpack.packb(Raw(ka, timeout=60).call("get_services", [])[3]))
    assert size <= st["table_bytes"] < 64 << 20, (size, st)
    px = daemon("--role=proxy", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint)
    assert wait_until(lambda: Raw(px).call("\0stats", None)[3]["registry"]["version"] ==
                      st["version"], timeout=60)
    print(f"largest table: {st['records']} records, {size / 2**20:.1f} MiB encoded "
          f"(bound {st['table_bytes'] / 2**20:.1f} MiB), read by a proxy")

if __name__ == "__main__":  # also runs without pytest: python3 FILE [test_name...]
    run(globals())
