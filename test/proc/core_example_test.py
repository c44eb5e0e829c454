"""The core embedding example (docs/examples/line_echo) as a real process."""
import selectors
import signal
import socket

from harness import Proc, binary, connect, run


def test_echoes_lines_and_waits_for_whole_lines():
    srv = Proc([binary("line_echo")])
    s = connect(srv)
    s.sendall(b"hel")
    s.sendall(b"lo\nwor")
    assert s.recv(100) == b"hello\n"
    s.sendall(b"ld\n")
    assert s.recv(100) == b"world\n"
    s.close()
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0


def test_thousands_of_concurrent_connections():
    import resource
    srv = Proc([binary("line_echo")])
    # 2000 when the fd limit allows (client and server each need one fd per connection)
    n = max(1000, min(2000, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200))
    socks = [connect(srv) for _ in range(n)]
    sel = selectors.DefaultSelector()
    want = {}
    for i, s in enumerate(socks):
        msg = f"conn {i}\n".encode()
        s.sendall(msg)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
        want[i] = msg
    got = {i: b"" for i in range(n)}
    done = 0
    while done < n:
        events = sel.select(timeout=20)
        assert events, f"stalled with {done}/{n} answered"
        for key, _ in events:
            i = key.data
            got[i] += key.fileobj.recv(100)
            if got[i] == want[i]:
                done += 1
                sel.unregister(key.fileobj)
    for s in socks:
        s.close()


if __name__ == "__main__":  # also runs without pytest: python3 FILE [test_name...]
    run(globals())
