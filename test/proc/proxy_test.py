"""aiorpcd --role=proxy in front of real demo services registered with a real keepalive (SPEC §6)."""
import selectors
import signal
import time

from harness import Raw, daemon, messages, run, wait_until


def cluster(n=3, proxy_args=()):
    ka = daemon("--role=keepalive", "--bind", "127.0.0.1:0", "--ttl", "1.5", "--check-interval", "0.2")
    svcs = [daemon("--role=demo", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint,
                   "--heartbeat-interval", "0.2") for _ in range(n)]
    px = daemon("--role=proxy", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint,
                "--refresh-interval", "0.2", *proxy_args)
    r = Raw(px)
    assert wait_until(lambda: invoke(r, "echo", [1])[2] is None and
                      len(Raw(ka).call("get_services", [])[3].get("sample.foo", [])) == n)
    # the proxy learns through watch: wait until it has the full list too
    assert wait_until(lambda: len(backends(r)) >= n)
    order = sorted(svcs, key=lambda s: ("127.0.0.1", s.port))  # keepalive's sort
    return ka, order, px


def invoke(r, method, params, hint=None, msgid=1, service="sample.foo"):
    p = {"service": service, "method": method, "params": params}
    if hint is not None:
        p["__hint__"] = hint
    return r.call("invoke", p, msgid)


def backends(r):
    return r.call("\0stats", None)[3].get("backends", {})


def reply_bytes(sock):
    """The bytes of the next reply on `sock` (a plain socket), and the reply decoded."""
    import msgpack
    data, u = b"", msgpack.Unpacker(raw=False)
    while True:
        chunk = sock.recv(65536)
        assert chunk
        data += chunk
        u.feed(chunk)
        for m in u:
            return data, m


def raw_backend(ka, service, serve, *args):
    """A raw msgpack-rpc peer on a free port, registered with `ka` as an instance of `service`:
    serve(lsock, *args) runs in a daemon thread. Returns the listening socket."""
    import socket
    import threading
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    threading.Thread(target=serve, args=(lsock, *args), daemon=True).start()
    Raw(ka).call("heartbeat", [service, "127.0.0.1", lsock.getsockname()[1]])
    return lsock


def proxy_over(ka, n):
    """A proxy watching `ka`, once its table holds `n` backends: (daemon, Raw client)."""
    px = daemon("--role=proxy", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint,
                "--refresh-interval", "0.2")
    r = Raw(px)
    assert wait_until(lambda: len(backends(r)) == n)
    return px, r


def label(r, n):
    """Gives instance i the running total 1000*(i+1) (through hints), so add(0) names it."""
    for i in range(n):  # hint 0 means round robin: n + i picks index i
        assert invoke(r, "add", [1000 * (i + 1)], hint=n + i)[3] == 1000 * (i + 1)


def test_round_robin_and_hints():
    ka, svcs, px = cluster()
    r = Raw(px)
    label(r, 3)
    seen = [invoke(r, "add", [0])[3] for _ in range(6)]
    assert sorted(seen[:3]) == [1000, 2000, 3000] and seen[3:] == seen[:3]
    assert invoke(r, "add", [0], hint=100)[3] == 2000  # 100 mod 3 = 1
    assert invoke(r, "add", [0], hint=-1)[3] == 3000   # floor modulo: the last
    assert invoke(r, "add", [0], hint=0)[3] in (1000, 2000, 3000)  # 0 = round robin
    bad = invoke(r, "add", [0], hint="x")
    assert bad[2][0] == "ArgumentError" and "__hint__" in bad[2][1]
    # array-form invoke has no hint
    assert r.call("invoke", ["sample.foo", "echo", [5]])[3] == [5]
    st = backends(r)
    assert len(st) == 3 and all({"requests", "errors", "in_flight", "ejected"} <= set(v)
                                for v in st.values())


def test_batch_invoke():
    ka, svcs, px = cluster()
    r = Raw(px)
    items = [["sample.foo", "echo", [i]] for i in range(10)]
    assert r.call("batch_invoke", [items])[3] == [[i] for i in range(10)]
    # items routed to one instance arrive in item order
    got = r.call("batch_invoke", [[["sample.foo", "add", [200], 2], ["sample.foo", "add", [20], 2]]])
    assert got[3] == [200, 220]
    # a bad item: nothing is sent
    before = invoke(r, "add", [0], hint=2)[3]
    got = r.call("batch_invoke", [[["sample.foo", "add", [1], 2], ["nope", "echo", []]]])
    assert got[2] == ["ServiceNotFound", "item 1: no service 'nope'"]
    got = r.call("batch_invoke", [[["sample.foo", "add", [1], 2], ["sample.foo", "echo"]]])
    assert got[2][0] == "ArgumentError" and got[2][1].startswith("item 1: ")
    got = r.call("batch_invoke", [[["sample.foo", "add", [1], 2.5]]])
    assert got[2][0] == "ArgumentError"
    assert invoke(r, "add", [0], hint=2)[3] == before
    # a failing item: all run, the lowest failed index is reported
    got = r.call("batch_invoke", [[["sample.foo", "echo", [1]], ["sample.foo", "nope", []],
                                   ["sample.foo", "add", ["x"]]]])
    assert got[2][0] == "NoMethodError" and got[2][1].startswith("item 1: ")
    # aiorpc bench --batch: every reply checked byte for byte against the items' results
    import subprocess
    from harness import binary
    b = subprocess.run([binary("aiorpc"), "bench", px.endpoint, "--proxy", "sample.foo",
                        "--batch", "20", "-c", "2", "-d", "4", "-t", "0.3", "-w", "0"],
                       capture_output=True, text=True, timeout=60)
    assert b.returncode == 0 and " errors=0 " in b.stdout.splitlines()[-1] + " ", b
    b = subprocess.run([binary("aiorpc"), "bench", px.endpoint, "--batch", "2"],
                       capture_output=True, text=True, timeout=60)
    assert b.returncode == 2 and "--batch needs --proxy" in b.stderr, b


def test_errors_pass_through():
    ka, svcs, px = cluster(1)
    r = Raw(px)
    assert invoke(r, "echo", [1], service="nope")[2] == ["ServiceNotFound", "no service 'nope'"]
    assert invoke(r, "nope", [])[2] == ["NoMethodError", 'no method "nope"']
    assert invoke(r, "add", ["x"])[2][0] == "ArgumentError"
    # params forwarded unchanged: named params reach the backend as a map
    assert invoke(r, "default_params", {"a": 1, "b": 2})[3] == [1, 2, None, 1]
    # a notification is forwarded as a notification
    r.send([2, "invoke", ["sample.foo", "add", [7]]])
    assert wait_until(lambda: invoke(r, "add", [0])[3] == 7)


def test_backend_timeout():
    ka, svcs, px = cluster(1, ("--backend-timeout", "0.3"))
    r = Raw(px)
    got = invoke(r, "sleep", [2])
    assert got[2][0] == "TimeoutError"
    assert invoke(r, "echo", ["still fine"])[3] == ["still fine"]


def test_killed_backend_every_call_answered():
    ka, svcs, px = cluster(3, ("--eject-after", "1"))
    r = Raw(px)
    survivors = {svcs[0].port, svcs[2].port}
    victim = svcs[1]
    results = []
    n = 300
    for i in range(n):
        r.send([0, i, "invoke", ["sample.foo", "echo", [i]]])
        if i == 100:
            victim.kill()
        if i % 20 == 19:
            results.extend(r.recv(20, timeout=30))
    assert sorted(m[1] for m in results) == list(range(n))  # every call answered once
    failed = [m for m in results if m[2] is not None]
    assert all(m[2][0] in ("ConnectionError", "ServiceUnavailable") for m in failed), failed
    assert len(failed) <= 25, failed
    # later calls all succeed on the survivors
    for i in range(30):
        assert invoke(r, "echo", [i], msgid=1000 + i)[3] == [i]


def test_50_clients_200_pipelined_each():
    ka, svcs, px = cluster()
    clients = [Raw(px) for _ in range(50)]
    for k, c in enumerate(clients):
        c.send(*[[0, i, "invoke", ["sample.foo", "echo", [k, i]]] for i in range(200)])
    for k, c in enumerate(clients):
        got = c.recv(200, timeout=60)
        assert sorted(m[1] for m in got) == list(range(200))
        assert all(m[2] is None and m[3] == [k, m[1]] for m in got)


def test_client_vanishing_with_calls_in_flight():
    ka, svcs, px = cluster(1)
    gone = Raw(px)
    gone.send(*[[0, i, "invoke", ["sample.foo", "sleep", [0.3]]] for i in range(20)])
    time.sleep(0.1)
    gone.close()
    r = Raw(px)
    assert invoke(r, "echo", ["alive"])[3] == ["alive"]
    time.sleep(0.5)
    assert invoke(r, "echo", ["still"])[3] == ["still"]
    assert wait_until(lambda: all(v["in_flight"] == 0 for v in backends(r).values()))


def test_keeps_last_table_when_keepalive_dies():
    ka, svcs, px = cluster(2)
    r = Raw(px)
    ka.kill()
    time.sleep(0.6)
    assert invoke(r, "echo", [1])[3] == [1]
    assert invoke(r, "echo", [2])[3] == [2]


def test_unreachable_instance_retried_on_next():
    ka, svcs, px = cluster(2, ("--eject-after", "3"))
    r = Raw(px)
    svcs[0].kill()  # still listed until the TTL: its connects are refused
    for i in range(10):
        got = invoke(r, "echo", [i], msgid=i)
        assert got[3] == [i] or got[2][0] == "ConnectionError", got
    # a hinted call stays on its instance
    got = invoke(r, "echo", [1], hint=len(svcs) * 10)  # index 0: the dead one
    assert got[2] is not None and got[2][0] in ("ServiceUnavailable", "ConnectionError"), got



def test_hints_of_2_63_and_more_are_unsigned_floor_modulo():
    ka, svcs, px = cluster()
    r = Raw(px)
    label(r, 3)
    for hint in (2**63, 2**64 - 1, 2**63 + 1, -(2**63)):
        got = invoke(r, "add", [0], hint=hint)
        assert got[2] is None, (hint, got)
        assert got[3] == 1000 * ((hint % 3) + 1), (hint, got)  # Python's % is floor modulo


def test_notification_is_forwarded_without_a_queue_slot():
    ka, svcs, px = cluster(1)
    r = Raw(px)
    r.send([2, "invoke", ["sample.foo", "sleep", [2]]])
    r.send([2, "invoke", {"service": "sample.foo", "method": "add", "params": [5]}])
    assert wait_until(lambda: invoke(r, "add", [0])[3] == 5)
    assert all(v["in_flight"] == 0 for v in backends(r).values())  # the sleep holds nothing
    r.send([2, "invoke", ["nope", "echo", []]])  # unknown service: dropped, no reply
    r.expect_silence(0.2)


def test_keepalive_host_is_data_never_a_unix_path():
    import os
    import socket
    import subprocess
    import tempfile
    ka = daemon("--role=keepalive", "--bind", "127.0.0.1:0", "--ttl", "30")
    d = tempfile.mkdtemp()
    trap = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # ./4321 in the proxy's cwd
    trap.bind(os.path.join(d, "4321"))
    trap.listen(4)
    trap.setblocking(False)
    Raw(ka).call("heartbeat", ["sample.foo", "unix", 4321])
    px = daemon("--role=proxy", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint,
                "--refresh-interval", "0.2", cwd=d)
    r = Raw(px)
    time.sleep(0.5)
    got = invoke(r, "echo", [1])
    assert got[2] is not None and got[2][0] in ("ServiceNotFound", "ServiceUnavailable"), got
    assert r.call("\0stats", None)[3]["backends"] == {}  # skipped, nothing kept
    try:
        trap.accept()
        raise AssertionError("the proxy dialled a unix socket named by a keepalive record")
    except BlockingIOError:
        pass


def test_backends_of_gone_instances_are_freed():
    ka = daemon("--role=keepalive", "--bind", "127.0.0.1:0", "--ttl", "30")
    k = Raw(ka)
    px = daemon("--role=proxy", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint,
                "--refresh-interval", "0.2")
    r = Raw(px)
    for round_ in range(3):  # 3 x 1,000 short-lived endpoints (never dialled: no calls)
        eps = [("127.0.0.%d" % (2 + i % 200), 20000 + round_ * 1000 + i) for i in range(1000)]
        k.send(*[[0, i, "heartbeat", ["churny", h, p]] for i, (h, p) in enumerate(eps)])
        k.recv(1000)
        assert wait_until(lambda: len(backends(r)) == 1000, timeout=10), len(backends(r))
        k.send(*[[0, i, "unregister", ["churny", h, p]] for i, (h, p) in enumerate(eps)])
        k.recv(1000)
        assert wait_until(lambda: len(backends(r)) == 0, timeout=10), len(backends(r))



def test_memory_follows_calls_in_flight_not_the_call_rate():
    """(#24) Each answered call used to keep its deadline entry until its 9 s backend timeout
    (~25 B per call: +160 MB over 12 s of full load). 4 s of 8 x 64 pipelined invokes through
    a proxy to one demo: the proxy's RSS stays within a few MiB."""
    import subprocess
    from harness import assert_grew_less, binary
    ka, svcs, px = cluster(1)

    def rss_mib():
        with open(f"/proc/{px.p.pid}/status") as f:
            return int(f.read().split("VmRSS:")[1].split()[0]) / 1024
    r = subprocess.run([binary("aiorpc"), "bench", px.endpoint, "--proxy", "sample.foo", "-c", "8",
                        "-d", "64", "-t", "1", "-w", "0"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    before = rss_mib()  # warmed: buffers and slabs at their working size
    r = subprocess.run([binary("aiorpc"), "bench", px.endpoint, "--proxy", "sample.foo", "-c", "8",
                        "-d", "64", "-t", "4", "-w", "0"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    calls = int(r.stdout.split("calls=")[1].split()[0])
    assert calls > 100_000, r.stdout
    assert_grew_less(before, rss_mib(), 4 + calls * 2 / 2**20)  # < 2 B per call, 4 MiB slack


def test_map_form_invoke_and_notifications_are_relayed_as_bytes():
    """(#24) Map-form invoke, with or without __hint__, and invoke notifications in either form
    take the raw path: the backend gets the caller's params bytes as they came (a
    non-canonical str8 and a float32 survive)."""
    import msgpack
    ka = daemon("--role=keepalive", "--bind", "127.0.0.1:0")
    got, stream = [], []

    def backend(lsock):  # records the request bytes, answers with odd bytes
        conn, _ = lsock.accept()
        u = msgpack.Unpacker(raw=False)
        while len(got) < 5:
            data = conn.recv(65536)
            if not data:
                return
            stream.append(data)
            u.feed(data)
            for m in u:
                got.append(m[0])
                if m[0] != 0:
                    continue  # a notification: no reply
                # result: float32 1.5 and a str8 "ok" (canonical would be fixstr)
                conn.sendall(b"\x94\x01" + msgpack.packb(m[1]) + b"\xc0\x92\xca\x3f\xc0\x00\x00"
                             b"\xd9\x02ok")
    raw_backend(ka, "rawsvc", backend)
    # The proxy has the table (a notification for a service it does not know yet is dropped).
    px, r = proxy_over(ka, 1)
    odd_params = b"\x92\xd9\x02hi\xca\x40\x20\x00\x00"  # ["hi" as str8, 2.5 as float32]
    # Notifications: array form and map form (nothing comes back).
    r.send_bytes(b"\x93\x02\xa6invoke\x93\xa6rawsvc\xa4ping" + odd_params)
    r.send_bytes(b"\x93\x02\xa6invoke\x83\xa7service\xa6rawsvc\xa6method\xa4ping\xa6params" +
                 odd_params)
    for hint in (None, b"\x05", b"\xc0"):
        body = b"\xa7service\xa6rawsvc\xa6method\xa4ping\xa6params" + odd_params
        n = 3
        if hint is not None:
            body += b"\xa8__hint__" + hint
            n = 4
        req = b"\x94\x00\x07\xa6invoke" + bytes([0x80 | n]) + body
        r.send_bytes(req)
        reply = r.recv(1)[0]
        assert reply[2] is None and reply[3] == [1.5, "ok"], reply
    assert wait_until(lambda: len(got) >= 5)
    assert got == [2, 2, 0, 0, 0], got
    # Every params forwarded byte for byte, never re-encoded.
    assert b"".join(stream).count(odd_params) == 5, stream


def test_batch_items_results_are_relayed_as_bytes():
    """(#24) batch_invoke's results go into the reply as the backend encoded them (a str8 and a
    float32 survive, where a decode and re-encode would make them fixstr and float64)."""
    import socket
    import msgpack
    ka = daemon("--role=keepalive", "--bind", "127.0.0.1:0")
    odd = [b"\x92\xca\x3f\xc0\x00\x00\xd9\x02ok", b"\xd9\x03abc", b"\xcd\x00\x05"]

    def backend(lsock):  # answers the i-th request with odd[i % 3], the replies in reverse order
        conn, _ = lsock.accept()
        pending = []
        for m in messages(conn):
            pending.append(m)
            if len(pending) == 3:
                for m in reversed(pending):
                    conn.sendall(b"\x94\x01" + msgpack.packb(m[1]) + b"\xc0" +
                                 odd[m[3][0] % 3])
                pending = []
    raw_backend(ka, "rawsvc", backend)
    px, _ = proxy_over(ka, 1)
    s = socket.create_connection(("127.0.0.1", px.port))
    s.sendall(msgpack.packb([0, 9, "batch_invoke", [[["rawsvc", "m", [i]] for i in range(3)]]]))
    s.settimeout(10)
    data, got = reply_bytes(s)
    assert got[2] is None and got[3] == [[1.5, "ok"], "abc", 5], got
    # the results, in item order, exactly as the backend wrote them
    assert data == b"\x94\x01\x09\xc0\x93" + b"".join(odd), data


def test_batch_items_params_are_relayed_as_bytes():
    """(#24) batch_invoke's items take the raw path: each item's params reach the backend as
    the caller encoded them (a str8 and a float32 survive a decode and re-encode would turn
    into a fixstr and a float64), for a batch counted in a fixarray and in an array16; a batch
    the raw path declines (a hinted item, an unknown service) is still answered as before."""
    import msgpack
    ka = daemon("--role=keepalive", "--bind", "127.0.0.1:0")
    stream, served = [], []

    def backend(lsock):  # records the request bytes, answers each with its first param
        conn, _ = lsock.accept()
        for m in messages(conn, stream):
            served.append(m[3])
            conn.sendall(b"\x94\x01" + msgpack.packb(m[1]) + b"\xc0" + msgpack.packb(m[3][0]))
    raw_backend(ka, "rawsvc", backend)
    px, r = proxy_over(ka, 1)
    odd = b"\x92\xd9\x02hi\xca\x40\x20\x00\x00"  # ["hi" as str8, 2.5 as float32]
    for n in (3, 20):  # 0x93 and 0xdc 0x00 0x14
        head = bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big")
        items = b"".join(b"\x93\xa6rawsvc\xa1m" + odd for _ in range(n))
        r.send_bytes(b"\x94\x00\x05\xacbatch_invoke\x91" + head + items)
        got = r.recv(1)[0]
        assert got[2] is None and got[3] == ["hi"] * n, got
    assert wait_until(lambda: len(served) == 23)
    assert b"".join(stream).count(odd) == 23, stream
    # declined by the raw path, answered by the decoded one as before
    got = r.call("batch_invoke", [[["rawsvc", "m", ["a"]], ["nope", "m", []]]])
    assert got[2] == ["ServiceNotFound", "item 1: no service 'nope'"]
    got = r.call("batch_invoke", [[["rawsvc", "m", ["a"], 0], ["rawsvc", "m", ["b"]]]])
    assert got[2] is None and got[3] == ["a", "b"], got
    assert r.call("batch_invoke", [[]])[3] == []


def test_backend_error_replies_are_relayed_as_bytes():
    """(#24) An error reply goes back as the backend encoded it (str8 strings, a foreign
    Python-style error), counted under its kind; one that says ServiceUnavailable in a str8 is
    still read as not run (the call goes to the next instance)."""
    import socket
    import msgpack
    ka = daemon("--role=keepalive", "--bind", "127.0.0.1:0")
    errors = {"ours": b"\x92\xd9\x0dArgumentError\xd9\x03bad",
              "foreign": b"\x92\xd9\x14<class 'ValueError'>\xc4\x02no",
              "unavailable": b"\x92\xd9\x12ServiceUnavailable\xa8draining"}

    def backend(lsock, answer):  # [1, msgid, answer(request)...]
        conn, _ = lsock.accept()
        for m in messages(conn):
            conn.sendall(b"\x94\x01" + msgpack.packb(m[1]) + answer(m))

    answers = (lambda m: errors[m[3][0]] + b"\xc0",  # an error, as written above
               lambda m: b"\xc0\xa6second")          # a result, "second"
    socks = [raw_backend(ka, "errsvc", backend, answer) for answer in answers]
    px, r = proxy_over(ka, 2)
    s = socket.create_connection(("127.0.0.1", px.port))
    s.settimeout(10)

    def call_raw(msgid, what, hint):
        s.sendall(msgpack.packb([0, msgid, "invoke", {"service": "errsvc", "method": "m",
                                                      "params": [what], "__hint__": hint}]))
        return reply_bytes(s)
    # a hint picks the error-answering instance (keepalive lists them by port)
    idx = 0 if socks[0].getsockname()[1] < socks[1].getsockname()[1] else 1
    hint = 2 + idx  # non-zero; (2 + idx) mod 2 == idx
    for i, what in enumerate(("ours", "foreign")):
        data, got = call_raw(10 + i, what, hint)
        assert data == b"\x94\x01" + bytes([10 + i]) + errors[what] + b"\xc0", (what, data)
    # not run there: without a hint it goes to the other instance
    seen = set()
    for i in range(4):
        s.sendall(msgpack.packb([0, 20 + i, "invoke", ["errsvc", "m", ["unavailable"]]]))
        seen.add(msgpack.unpackb(s.recv(65536), raw=False)[3])
    assert seen == {"second"}, seen
    st = r.call("\0stats", None)[3]
    assert st["errors"].get("ArgumentError") == 1 and st["errors"].get("ApplicationError") == 1, st


def test_params_of_every_size_class_come_back_intact():
    """Raw calls keep their bytes in pooled buffers by size class (256 B .. 64 KiB) or one of
    their own above: pipelined calls of mixed sizes, each echoed exactly, in both forms."""
    ka, svcs, px = cluster(2)
    r = Raw(px)
    sizes = [1, 95, 97, 255, 257, 1000, 4097, 16384, 65000, 65536, 70000, 200000]
    msgs = []
    for i in range(240):
        data = chr(ord("a") + i % 26) * sizes[i % len(sizes)]
        params = (["sample.foo", "echo", [data]] if i % 2 else
                  {"service": "sample.foo", "method": "echo", "params": [data]})
        msgs.append([0, i, "invoke", params])
    r.send(*msgs)
    got = r.recv(240, timeout=30)
    for m in got:
        i = m[1]
        assert m[2] is None and m[3] == [chr(ord("a") + i % 26) * sizes[i % len(sizes)]], i

def frames(sock, n=None):
    """The next messages on `sock` as (bytes, decoded) pairs, as they arrive (n: stop after n)."""
    import msgpack
    u, data, at, count = msgpack.Unpacker(raw=False, max_buffer_size=1 << 30), b"", 0, 0
    while n is None or count < n:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return
        data += chunk
        u.feed(chunk)
        for m in u:
            end = u.tell()
            yield data[at:end], m
            at = end
            count += 1
            if count == n:
                return


def test_params_sent_in_place_survive_retries_byte_for_byte():
    """(#24) Params of 1 KiB and more go to the backend from the call's own buffer (no second
    copy); a call refused by one instance (ServiceUnavailable: not run) is sent again from it
    to the next: both backends must see the caller's bytes exactly, and every call is echoed."""
    import socket
    import msgpack
    ka = daemon("--role=keepalive", "--bind", "127.0.0.1:0")
    seen = {0: [], 1: []}

    def backend(lsock, k):
        conn, _ = lsock.accept()
        for data, m in frames(conn):
            head = b"\x94\x00" + msgpack.packb(m[1]) + b"\xa1m"
            assert data.startswith(head)
            params = data[len(head):]
            seen[k].append(params)
            reply = b"\x94\x01" + msgpack.packb(m[1])
            if k == 0:  # refuses every call: not run, so the proxy moves it on
                conn.sendall(reply + b"\x92\xb2ServiceUnavailable\xa8draining\xc0")
            else:
                conn.sendall(reply + b"\xc0" + params)  # echoes the params' bytes
    for k in (0, 1):
        raw_backend(ka, "inplace", backend, k)
    px, r = proxy_over(ka, 2)
    sizes = [1023, 1024, 5000, 70000, 300000]
    want = {}
    for i in range(40):
        # a str8 where fixstr would do and a float32: re-encoding would show
        want[i] = b"\x93\xd9\x02hi\xca\x40\x20\x00\x00" + msgpack.packb(
            bytes([65 + i % 26]) * sizes[i % len(sizes)])
    s = socket.create_connection(("127.0.0.1", px.port))
    s.settimeout(30)
    s.sendall(b"".join(b"\x94\x00" + msgpack.packb(i) + b"\xa6invoke\x93\xa7inplace\xa1m" + p
                       for i, p in want.items()))
    got = {m[1]: data for data, m in frames(s, 40)}
    assert sorted(got) == list(range(40))
    for i, data in got.items():
        assert data == b"\x94\x01" + msgpack.packb(i) + b"\xc0" + want[i], i
    assert sorted(seen[1]) == sorted(want.values())  # every call ran once, on the second
    assert len(seen[0]) >= 10  # round robin sent many to the refusing one first
    assert all(b in want.values() for b in seen[0])


if __name__ == "__main__":  # also runs without pytest: python3 FILE [test_name...]
    run(globals())
