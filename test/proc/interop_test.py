"""Interop with another msgpack implementation (python3-msgpack) in both directions, and the
tested examples of docs/examples."""
import json
import socket
import subprocess
import threading

import msgpack

from harness import Proc, Raw, binary, daemon, run


class PyServer:
    """A msgpack-rpc server written with python3-msgpack, answering like the Python aiorpc."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.seen = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(c,), daemon=True).start()

    def _conn(self, c):
        u = msgpack.Unpacker(raw=False)
        while True:
            data = c.recv(65536)
            if not data:
                return
            u.feed(data)
            for msg in u:
                self.seen.append(msg)
                if msg[0] != 0:
                    continue
                _, msgid, method, params = msg
                if method == "echo":
                    reply = [1, msgid, None, params]
                elif method == "boom":
                    reply = [1, msgid, ["<class 'ValueError'>", "bad value"], None]
                else:
                    reply = [1, msgid, ["<class 'AttributeError'>", f"no {method}"], None]
                c.sendall(msgpack.packb(reply, use_bin_type=True))

    def close(self):
        self.sock.close()


def cli(*args):
    return subprocess.run([binary("aiorpc"), *args], capture_output=True, timeout=30, text=True)


def test_our_client_calls_a_python_server():
    py = PyServer()
    ep = f"127.0.0.1:{py.port}"
    p = cli("call", ep, "echo", '[1, "two", {"three": [3.5, null, true]}]')
    assert p.returncode == 0, p
    assert json.loads(p.stdout) == [1, "two", {"three": [3.5, None, True]}]
    assert py.seen[-1] == [0, 0, "echo", [1, "two", {"three": [3.5, None, True]}]]
    p = cli("call", ep, "echo", '{"named": 1}')
    assert json.loads(p.stdout) == {"named": 1}
    p = cli("call", ep, "echo")
    assert p.returncode == 0 and p.stdout.strip() == "null"
    assert py.seen[-1][3] is None  # no params: nil
    p = cli("call", ep, "boom", "[]")
    assert p.returncode == 1
    assert p.stderr.strip() == "<class 'ValueError'>: bad value"
    p = cli("notify", ep, "event", '["x"]')
    assert p.returncode == 0
    assert [2, "event", ["x"]] in py.seen
    py.close()


def test_cli_exit_codes_and_bin():
    srv = daemon("--role=demo", "--bind", "127.0.0.1:0")
    p = cli("call", srv.endpoint, "echo", '[{"$base64": "AAEC/w=="}]')
    assert p.returncode == 0 and json.loads(p.stdout) == [{"$base64": "AAEC/w=="}]
    p = cli("call", srv.endpoint, "nope")
    assert p.returncode == 1 and p.stderr.startswith("NoMethodError: ")
    p = cli("call", "127.0.0.1:1", "echo")
    assert p.returncode == 2 and p.stderr.strip()
    p = cli("call", srv.endpoint, "echo", "[not json")
    assert p.returncode == 2
    p = cli("call", srv.endpoint, "sleep", "[5]", "--timeout", "0.2")
    assert p.returncode == 1 and p.stderr.startswith("TimeoutError")


def test_python_client_pipelines_against_our_server():
    srv = daemon("--role=demo", "--bind", "127.0.0.1:0")
    r = Raw(srv)
    # the Python aiorpc client's shapes: list params, dict params with __ident__, \0reflection
    r.send([0, 1, "echo", ["a"]], [0, 2, "context_holder", {"message": "m", "__ident__": "py"}],
           [0, 3, "\0reflection", []])
    got = {m[1]: m for m in r.recv(3)}
    assert got[1][3] == ["a"]
    assert got[2][3][1:] == ["py", "m"]
    assert "echo" in got[3][3]["methods"]


def test_examples_aggregation():
    p = subprocess.run([binary("aggregation")], capture_output=True, timeout=30, text=True)
    assert p.returncode == 0, p
    assert p.stdout.strip() == '[{"id": 1, "price": 10}, {"id": 2, "price": 20}, {"id": 3, "price": 30}]'


run(globals())
