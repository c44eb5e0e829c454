"""aiorpcd --role=demo as a real process, spoken to in raw msgpack bytes (SPEC §1-3, §7)."""
import os
import signal
import socket
import struct
import subprocess
import time

from harness import Proc, Raw, assert_grew_less, binary, connect, daemon, run, wait_until


def rss_kb(proc):
    return int(open(f"/proc/{proc.p.pid}/status").read().split("VmRSS:")[1].split()[0])


def demo(*extra):
    return daemon("--role=demo", "--bind", "127.0.0.1:0", *extra)


def test_echo_positional_named_nil_scalar():
    r = Raw(demo())
    assert r.call("echo", [1, "a", b"b"]) == [1, 1, None, [1, "a", b"b"]]
    assert r.call("echo", {"x": 1, "__ident__": 5}) == [1, 1, None, {"x": 1}]
    assert r.call("echo", None) == [1, 1, None, {}]
    assert r.call("echo", []) == [1, 1, None, {}]
    assert r.call("echo", 5) == [1, 1, None, [5]]


def test_msgid_of_any_type_comes_back():
    r = Raw(demo())
    for msgid in [0, 7, 2**32 + 5, -3, "abc", None, b"raw", [1, 2], 1.5]:
        r.send([0, msgid, "echo", [1]])
        assert r.recv(1)[0] == [1, msgid, None, [1]]
    # an integer msgid in a non-minimal encoding comes back in its smallest form
    r.send_bytes(b"\x94\x00\xcf" + struct.pack(">Q", 5) + b"\xa4echo\x91\x01")
    r.sock.settimeout(5)
    data = r.sock.recv(100)
    assert data == b"\x94\x01\x05\xc0\x91\x01", data


def test_bytes_on_the_wire_use_smallest_forms():
    s = connect(demo())
    s.sendall(b"\x94\x00\x01\xa4echo\x92\xcd\x01\x00\xd0\xff")  # [0,1,"echo",[256 as uint16, -1]]
    s.settimeout(5)
    assert s.recv(100) == b"\x94\x01\x01\xc0\x92\xcd\x01\x00\xff"


def test_default_params_and_argument_errors():
    r = Raw(demo())
    assert r.call("default_params", [1, 2]) == [1, 1, None, [1, 2, None, 1]]
    assert r.call("default_params", {"a": 1, "b": 2, "d": 9}) == [1, 1, None, [1, 2, None, 9]]
    assert r.call("default_params", {"a": 1, "b": 2, "__hint__": 3}) == [1, 1, None, [1, 2, None, 1]]
    for params, word in [([1], "'b'"), ([1, 2, 3, 4, 5], "takes 4"), ({"a": 1, "zz": 2}, "zz"),
                         ({"b": 2}, "'a'")]:
        msg = r.call("default_params", params)
        assert msg[2][0] == "ArgumentError" and word in msg[2][1], msg
        assert msg[3] is None
    msg = r.call("add", ["x"])
    assert msg[2][0] == "ArgumentError" and "val" in msg[2][1]
    msg = r.call("sleep", ["soon"])
    assert msg[2] == ["ArgumentError", "argument 'sec': expected float, got str"]


def test_add_accumulates_and_int_becomes_float():
    r = Raw(demo())
    assert r.call("add", [5])[3] == 5
    assert r.call("add", {"val": 2})[3] == 7
    assert r.call("add", [0.5])[3] == 7.5


def test_cache_and_context():
    r = Raw(demo())
    assert r.call("set_cache", ["k", {"nested": [1, 2]}])[3] is True
    assert r.call("get_cache", ["k"])[3] == {"nested": [1, 2]}
    assert r.call("get_cache", ["missing"])[3] is None
    res = r.call("context_holder", {"message": "hi", "__ident__": "me"})[3]
    host, port = r.sock.getsockname()
    assert res == [[host, port], "me", "hi"]
    # peername cannot be spoofed by a dunder key
    res = r.call("context_holder", {"message": "x", "__peername__": ["6.6.6.6", 1]})[3]
    assert res[0] == [host, port]
    assert r.call("context_holder", ["positional"])[3] == [[host, port], None, "positional"]


def test_unknown_method_and_non_string_method():
    r = Raw(demo())
    assert r.call("nope", [])[2] == ["NoMethodError", 'no method "nope"']
    assert r.call(42, [])[2][0] == "NoMethodError"
    assert r.call(b"echo", [1])[3] == [1]  # bin method names are accepted


def test_reflection_exact():
    r = Raw(demo())
    refl = r.call("\0reflection", None)[3]
    assert list(refl) == ["methods"]
    m = refl["methods"]
    assert list(m) == sorted(m)
    assert m["echo"] == ["args", "kwargs"]
    assert m["default_params"] == ["a", "b", {"name": "c", "default": None},
                                   {"name": "d", "default": 1}]
    assert m["context_holder"] == ["context", "message"]
    assert m["sleep"] == ["sec"]
    assert r.call("\0reflection", [])[3] == refl
    assert r.call("\0reflection", {})[3] == refl
    assert r.call("\0reflection", [1])[2][0] == "ArgumentError"
    assert r.call("\0nosuch", None)[2][0] == "NoMethodError"


def test_stats_counts():
    r = Raw(demo())
    r.call("echo", [1])
    r.call("nope", [])
    r.send([2, "notify", ["x"]])
    st = r.call("\0stats", None)[3]
    assert set(st) >= {"connections_open", "connections_total", "requests", "notifications",
                       "errors", "bytes_in", "bytes_out", "in_flight", "uptime_s"}
    assert st["connections_open"] == 1 and st["requests"] >= 2 and st["notifications"] == 1
    assert st["errors"] == {"NoMethodError": 1}


def test_notifications_never_get_a_reply():
    r = Raw(demo())
    r.send([2, "notify", ["hello"]], [2, "nope", []], [2, "add", ["bad"]], [2, "\0stats", None])
    assert r.call("echo", ["after"]) == [1, 1, None, ["after"]]


def test_pipelining_out_of_order():
    r = Raw(demo())
    r.send([0, 1, "sleep", [0.4]], [0, 2, "sleep", [0.1]], [0, 3, "echo", ["now"]])
    got = r.recv(3)
    assert [m[1] for m in got] == [3, 2, 1]
    assert got[0][3] == ["now"] and got[1][3] is True and got[2][3] is True


def test_20000_pipelined_requests_in_one_write():
    r = Raw(demo())
    n = 20000
    r.send(*[[0, i, "echo", [i]] for i in range(n)])
    got = r.recv(n, timeout=60)
    assert [m[1] for m in got] == list(range(n))  # synchronous handlers reply in order
    assert all(m[3] == [m[1]] for m in got)


def test_message_split_at_every_byte():
    r = Raw(demo())
    data = r.msgpack.packb([0, 99, "echo", ["split", {"k": [1, 2.5, None]}]], use_bin_type=True)
    r.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for b in data:
        r.send_bytes(bytes([b]))
        time.sleep(0.001)
    assert r.recv(1)[0] == [1, 99, None, ["split", {"k": [1, 2.5, None]}]]


def test_4mib_string_round_trip():
    r = Raw(demo())
    big = "x" * (4 << 20)
    assert r.call("echo", [big])[3] == [big]
    blob = os.urandom(4 << 20)
    assert r.call("echo", [blob])[3] == [blob]


def test_protocol_errors_close_after_owed_replies():
    cases = {
        "not an array": b"\x01",
        "wrong length": r_pack([0, 1, "echo"]),
        "unknown type": r_pack([5, 1, "echo", []]),
        "response to server": r_pack([1, 1, None, 1]),
        "invalid byte": b"\x94\x00\x01\xa4echo\xc1",
        "huge array header": b"\xdd\xff\xff\xff\xff",
        "huge map header": b"\x94\x00\x01\xa4echo\xdf\x7f\xff\xff\xff",
        "deep nesting": b"\x94\x00\x01\xa4echo" + b"\x91" * 40 + b"\x01",
    }
    srv = demo()
    for name, bad in cases.items():
        r = Raw(srv)
        r.send_bytes(r_pack([0, 1, "sleep", [0.2]]) + r_pack([0, 2, "echo", ["before"]]) + bad +
                     r_pack([0, 3, "echo", ["after"]]))
        got = r.expect_close()
        assert sorted(m[1] for m in got) == [1, 2], (name, got)
    # the server is still up and serving
    assert Raw(srv).call("echo", [1])[3] == [1]


def test_nesting_limit_is_exactly_32():
    srv = demo()
    # the message's own array is depth 1; params at depth 2; 30 more arrays reach depth 32
    ok = b"\x94\x00\x01\xa4echo" + b"\x91" * 31 + b"\x01"
    r = Raw(srv)
    r.send_bytes(ok)
    assert r.recv(1)[0][1] == 1
    bad = b"\x94\x00\x01\xa4echo" + b"\x91" * 32 + b"\x01"
    r = Raw(srv)
    r.send_bytes(bad)
    assert r.expect_close() == []


def test_limits_are_configurable():
    srv = demo("--max-message-size", "1000", "--max-elements", "10")
    r = Raw(srv)
    assert r.call("echo", ["x" * 900])[3] == ["x" * 900]
    r.send([0, 2, "echo", ["x" * 2000]])
    assert r.expect_close() == []
    r = Raw(srv)
    assert r.call("echo", list(range(6)))[3] == list(range(6))
    r.send([0, 2, "echo", list(range(11))])
    assert r.expect_close() == []
    # a declared array bigger than the bytes that could still arrive is refused at once
    r = Raw(srv)
    r.send_bytes(b"\x94\x00\x01\xa4echo\xdc\x04\x00")  # 1024 elements, size limit 1000
    assert r.expect_close(timeout=5) == []


def test_half_close_finishes_in_flight_requests():
    r = Raw(demo())
    r.send([0, 1, "sleep", [0.3]], [0, 2, "echo", ["x"]])
    r.sock.shutdown(socket.SHUT_WR)
    got = r.expect_close()
    assert sorted(m[1] for m in got) == [1, 2]


def test_sigterm_drains_in_flight_then_exits_0():
    srv = demo()
    r = Raw(srv)
    idle = Raw(srv)
    idle.call("echo", [1])
    r.send([0, 1, "sleep", [0.5]])
    time.sleep(0.1)
    srv.signal(signal.SIGTERM)
    assert idle.expect_close(timeout=5) == []  # idle connections close at once
    got = r.expect_close(timeout=10)
    assert got == [[1, 1, None, True]]
    assert srv.wait() == 0
    try:
        connect(srv, timeout=1)
        raise AssertionError("still accepting after drain")
    except OSError:
        pass


def test_drain_timeout_bounds_shutdown():
    srv = demo("--drain-timeout", "0.3")
    r = Raw(srv)
    r.send([0, 1, "sleep", [30]])
    time.sleep(0.1)
    t0 = time.time()
    srv.signal(signal.SIGINT)
    assert srv.wait(timeout=20) == 0
    assert time.time() - t0 < 10  # the sleep(30) is not waited for (0.3 s plus a loaded machine)


def test_slow_reader_is_throttled_not_buffered():
    import select
    srv = demo()
    r = Raw(srv)
    r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    payload = "y" * 65536
    assert r.call("echo", [payload], msgid=0)[3] == [payload]  # warm: buffers of this size exist
    rss_before = rss_kb(srv)
    n = 400  # 26 MB of replies if they were all buffered
    data = memoryview(b"".join(r.msgpack.packb([0, i, "echo", [payload]]) for i in range(n)))
    r.sock.setblocking(False)
    # Phase 1: write without reading until the server stops taking bytes (backpressure).
    sent, stalled_since = 0, None
    while sent < len(data):
        _, w, _ = select.select([], [r.sock], [], 0.2)
        if not w:
            if stalled_since is None:
                stalled_since = time.time()
            if time.time() - stalled_since > 1.0:
                break
            continue
        stalled_since = None
        sent += r.sock.send(data[sent:sent + 65536])
    assert sent < len(data), "the server read everything while nobody read its replies"
    # Unbounded, the 26 MB of replies (and the requests read for them) would be held. Bounded:
    # the 4 MiB high-water mark, the socket buffers. (ASan's quarantine keeps freed memory:
    # the growth is asserted in the plain builds.)
    rss = rss_kb(srv)
    print(f"slow reader: server RSS {rss_before} -> {rss} kB")
    assert_grew_less(rss_before / 1024, rss / 1024, 16)
    # Phase 2: read the replies and send the rest; every request is answered, in order.
    got = []
    deadline = time.time() + 60
    while len(got) < n and time.time() < deadline:
        rd, w, _ = select.select([r.sock], [r.sock] if sent < len(data) else [], [], 1)
        if w:
            sent += r.sock.send(data[sent:sent + 65536])
        if rd:
            chunk = r.sock.recv(1 << 20)
            assert chunk, "closed"
            r.unpacker.feed(chunk)
            got.extend(r.unpacker)
    assert [m[1] for m in got] == list(range(n)), (len(got), sent, len(data))


def test_quiet_connections_give_back_their_input_buffers():
    srv = demo()
    conns = [Raw(srv) for _ in range(50)]
    for i, c in enumerate(conns):
        assert c.call("echo", [i])[3] == [i]
    stats = Raw(srv)
    assert stats.call("\0stats", None)[3]["input_buffers"] >= 50
    # after a quiet sweep interval (2 s) only the connection asking holds one
    assert wait_until(lambda: stats.call("\0stats", None)[3]["input_buffers"] <= 1, timeout=10)
    for i, c in enumerate(conns):  # and every quiet connection still works
        assert c.call("echo", [i, "again"])[3] == [i, "again"]


def test_other_connections_unaffected_by_a_bad_one():
    srv = demo()
    good = Raw(srv)
    good.send([0, 1, "sleep", [0.3]])
    bad = Raw(srv)
    bad.send_bytes(b"\xc1")
    assert bad.expect_close() == []
    assert good.recv(1)[0] == [1, 1, None, True]


def test_bad_flags_exit_2_with_one_line():
    for args in (["--role=demo", "--bogus"], ["--role=nosuch"], ["--role=demo", "--bind", "nope"],
                 ["--role=demo", "--drain-timeout", "-1"], []):
        p = subprocess.run([binary("aiorpcd"), *args], capture_output=True, timeout=10)
        assert p.returncode == 2, (args, p)
        assert len(p.stderr.decode().strip().splitlines()) == 1, (args, p.stderr)
    p = subprocess.run([binary("aiorpcd"), "--help"], capture_output=True, timeout=10)
    assert p.returncode == 0 and b"demo" in p.stdout and b"--drain-timeout" in p.stdout


def test_unix_socket_bind():
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="aiorpc-demo-")  # removed after: the reaper's SIGKILL leaves
    path = os.path.join(d, "demo.sock")           # the socket file behind
    try:
        srv = daemon("--role=demo", "--bind", f"unix:{path}")
        assert srv.endpoint == f"unix:{path}"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        import msgpack
        s.sendall(msgpack.packb([0, 1, "context_holder", ["m"]]))
        s.settimeout(5)
        assert msgpack.unpackb(s.recv(1000)) == [1, 1, None, [None, None, "m"]]
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_unix_bind_never_deletes_or_steals_a_path():
    import tempfile
    d = tempfile.mkdtemp()
    # a regular file is refused and left alone
    f = os.path.join(d, "file")
    with open(f, "w") as out:
        out.write("keep me")
    p = subprocess.run([binary("aiorpcd"), "--role=demo", "--bind", f"unix:{f}"],
                       capture_output=True, timeout=10)
    assert p.returncode == 2 and b"exists" in p.stderr, p
    assert open(f).read() == "keep me"
    # a socket in use is refused; the first server keeps serving
    path = os.path.join(d, "sock")
    first = daemon("--role=demo", "--bind", f"unix:{path}")
    p = subprocess.run([binary("aiorpcd"), "--role=demo", "--bind", f"unix:{path}"],
                       capture_output=True, timeout=10)
    assert p.returncode == 2 and b"in use" in p.stderr, p
    # a stale socket (its server crashed) is taken over
    first.kill()
    second = daemon("--role=demo", "--bind", f"unix:{path}")
    # the path replaced behind the second server's back is not unlinked when it stops
    os.rename(path, path + ".second")
    third = daemon("--role=demo", "--bind", f"unix:{path}")
    second.signal(signal.SIGTERM)
    assert second.wait(timeout=10) == 0
    assert os.path.exists(path), "the second server unlinked the third's socket"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    third.signal(signal.SIGTERM)
    s.close()
    assert third.wait(timeout=10) == 0
    assert not os.path.exists(path)  # its own socket is removed


def test_pid_file_locked_written_and_removed():
    import tempfile
    d = tempfile.mkdtemp()
    pid = os.path.join(d, "aiorpcd.pid")
    first = demo("--pid-file", pid)
    assert open(pid).read() == f"{first.p.pid}\n"
    p = subprocess.run([binary("aiorpcd"), "--role=demo", "--bind", "127.0.0.1:0",
                        "--pid-file", pid], capture_output=True, timeout=10)
    assert p.returncode == 2 and b"locked by another aiorpcd" in p.stderr, p
    assert open(pid).read() == f"{first.p.pid}\n"  # not overwritten
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=10) == 0 and not os.path.exists(pid)
    p = subprocess.run([binary("aiorpcd"), "--role=demo", "--bind", "127.0.0.1:0",
                        "--pid-file", os.path.join(d, "missing-dir", "x.pid")],
                       capture_output=True, timeout=10)
    assert p.returncode == 2 and b"cannot open --pid-file" in p.stderr, p


def r_pack(m):
    import msgpack
    return msgpack.packb(m, use_bin_type=True)



def test_close_after_error_with_unread_input_keeps_replies():
    # 2,000 pipelined calls, a protocol error, then 1 MiB the server will never parse: the
    # replies owed before the error all arrive, then a clean EOF (no reset destroying them).
    import threading
    import msgpack
    srv = demo()
    r = Raw(srv)
    pad = "p" * 4096  # 8 MB of replies: more than the socket buffers hold, so some are still
    # queued in the server when it closes (a close with unread input resets and drops them)
    calls = b"".join(msgpack.packb([0, i, "echo", [i, pad]]) for i in range(2000))
    data = calls + b"\xc1" + b"x" * (1 << 20)

    def send():
        try:
            r.sock.sendall(data)
        except OSError:
            pass
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    time.sleep(0.5)  # the replies wait unread in our receive buffer meanwhile
    got = r.expect_close(timeout=20)
    sender.join(10)
    assert sorted(m[1] for m in got) == list(range(2000)), len(got)


def test_sigterm_while_client_sends_every_reply_arrives():
    # SIGTERM while a client keeps pipelining: every request read is answered (a result or
    # ServiceUnavailable) and the client reads every reply before EOF.
    import msgpack
    srv = demo("--drain-grace", "0")
    r = Raw(srv)
    r.sock.setblocking(True)
    def batch(k):
        return b"".join(msgpack.packb([0, 100 * k + i, "echo", [i]]) for i in range(100))
    for k in range(10):
        r.sock.sendall(batch(k))
    time.sleep(0.3)  # these 1,000 are read and answered before the signal
    srv.signal(signal.SIGTERM)
    try:
        for k in range(10, 210):
            r.sock.sendall(batch(k))
    except (BrokenPipeError, ConnectionResetError):
        pass
    got = []
    r.sock.settimeout(20)
    while True:  # until a clean EOF: a reset would destroy replies in flight (and raise here)
        chunk = r.sock.recv(1 << 20)
        if not chunk:
            break
        r.unpacker.feed(chunk)
        got.extend(r.unpacker)
    ids = [m[1] for m in got]
    assert ids == list(range(len(ids))), "a reply is missing"  # handled in order, none lost
    assert all(m[2] is None or m[2] == ["ServiceUnavailable", "draining"] for m in got)
    assert len(got) >= 1000, len(got)
    assert srv.wait(timeout=10) == 0



def test_nan_and_infinite_durations_refused_timers_intact():
    srv = demo()
    r = Raw(srv)
    for bad in (float("nan"), float("inf"), -float("inf"), -1.0, 3601.0):
        got = r.call("sleep", [bad])
        assert got[2] is not None and got[2][0] == "ArgumentError", (bad, got)
    # later sleeps still fire, in order (a NaN in the timer heap broke that before)
    r.send([0, 1, "sleep", [0.2]], [0, 2, "sleep", [0.05]])
    assert [m[1] for m in r.recv(2)] == [2, 1]
    srv.signal(signal.SIGTERM)
    assert srv.wait(timeout=10) == 0  # and SIGTERM still finishes


def test_cli_refuses_non_finite_timeout():
    srv = demo()
    for bad in ("nan", "inf", "-1", "0"):
        p = subprocess.run([binary("aiorpc"), "call", srv.endpoint, "echo", "[1]", "--timeout", bad],
                           capture_output=True, timeout=10)
        assert p.returncode == 64 and b"timeout" in p.stderr, (bad, p)  # refused, never sent


if __name__ == "__main__":  # also runs without pytest: python3 FILE [test_name...]
    run(globals())
