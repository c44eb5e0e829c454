"""Interop with another msgpack implementation (python3-msgpack) in both directions, and the
tested examples of docs/examples."""
import json
import signal
import socket
import subprocess
import threading

import msgpack

from etcd import free_port
from harness import Proc, Raw, binary, daemon, messages, run, wait_until


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
        for msg in messages(c):
            self.seen.append(msg)
            if msg[0] != 0:
                continue
            _, msgid, method, params = msg
            if method == "echo":
                reply = [1, msgid, None, params]
            elif method == "boom":
                reply = [1, msgid, ["<class 'ValueError'>", "bad value"], None]
            elif method == "evil":  # a hostile server's error text drives no terminal
                reply = [1, msgid, ["\x1b]0;pwned\x07Kind", "\x1b[2Jred\r\nfake"], None]
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
    p = cli("call", ep, "evil", "[]")
    assert p.returncode == 1 and not any(ord(c) < 0x20 for c in p.stderr.rstrip("\n")), p.stderr
    assert p.stderr.strip() == "\\x1b]0;pwned\\x07Kind: \\x1b[2Jred\\x0d\\x0afake", p.stderr
    p = cli("notify", ep, "event", '["x"]')
    assert p.returncode == 0
    assert [2, "event", ["x"]] in py.seen
    py.close()


def listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_neovim_both_ways_over_plain_tcp(tmp_path):
    """Neovim (Debian's nvim 0.7) is an independent msgpack-rpc peer, both as a server we call
    and as a client calling our demo: requests, notifications and error replies."""
    port = free_port()
    nvim = Proc(["nvim", "--headless", "--clean", "--listen", f"127.0.0.1:{port}"],
                expect_listen=False)
    assert wait_until(lambda: listening(port)), "nvim did not listen"
    ep = f"127.0.0.1:{port}"
    p = cli("call", ep, "nvim_eval", '["6*7"]')
    assert p.returncode == 0 and json.loads(p.stdout) == 42, p
    p = cli("call", ep, "nvim_call_function", '["toupper", ["abc"]]')
    assert p.returncode == 0 and json.loads(p.stdout) == "ABC", p
    p = cli("call", ep, "nvim_set_var", '["from_aiorpc", {"k": [1, 2.5, null]}]')
    assert p.returncode == 0, p
    p = cli("notify", ep, "nvim_set_var", '["notified", "yes"]')
    assert p.returncode == 0, p
    assert wait_until(lambda: json.loads(cli("call", ep, "nvim_get_var", '["notified"]').stdout
                                         or "null") == "yes")
    p = cli("call", ep, "nvim_get_var", '["from_aiorpc"]')
    assert json.loads(p.stdout) == {"k": [1, 2.5, None]}, p
    p = cli("call", ep, "nvim_no_such_function", "[]")  # nvim's error: [type, message]
    assert p.returncode == 1 and "Invalid method: nvim_no_such_function" in p.stderr, p
    nvim.kill()

    srv = daemon("--role=demo", "--bind", "127.0.0.1:0")
    out = tmp_path / "out"
    script = tmp_path / "calls.vim"
    script.write_text(f"""
let c = sockconnect('tcp', '{srv.endpoint}', {{'rpc': 1}})
let r = [json_encode(rpcrequest(c, 'echo', 'hi', 3))]
call add(r, json_encode(rpcrequest(c, 'add', 40)) . ' ' . json_encode(rpcrequest(c, 'add', 2)))
try
  call rpcrequest(c, 'no_such_method')
catch
  call add(r, 'error: ' . v:exception)
endtry
call rpcnotify(c, 'notify', 'from nvim')
call add(r, json_encode(rpcrequest(c, 'echo', 'after the notification')))
call writefile(r, '{out}')
qa!
""")
    p = subprocess.run(["nvim", "--headless", "--clean", "-S", str(script)], capture_output=True,
                       timeout=30, text=True)
    assert p.returncode == 0, p
    lines = out.read_text().splitlines()
    assert lines[0] == '["hi", 3]' and lines[1] == "40 42", lines
    # our error is SPEC's [kind, message]; nvim 0.7 shows only its own [type, message] shape
    assert lines[2].startswith("error: ") and "no_such_method" in lines[2], lines
    assert lines[3] == '["after the notification"]', lines
    srv.kill()
    assert b"notify: from nvim" in srv.p.stderr.read()


def test_cli_exit_codes_and_bin():
    srv = daemon("--role=demo", "--bind", "127.0.0.1:0")
    p = cli("call", srv.endpoint, "echo", '[{"$base64": "AAEC/w=="}]')
    assert p.returncode == 0 and json.loads(p.stdout) == [{"$base64": "AAEC/w=="}]
    p = cli("call", srv.endpoint, "nope")
    assert p.returncode == 1 and p.stderr.startswith("NoMethodError: ")
    p = cli("call", "127.0.0.1:1", "echo")
    assert p.returncode == 2 and p.stderr.strip()
    p = cli("call", srv.endpoint, "echo", "[not json")
    assert p.returncode == 64  # bad usage, told apart from "cannot connect"
    p = cli("call", srv.endpoint, "sleep", "[5]", "--timeout", "0.2")
    assert p.returncode == 3 and p.stderr.startswith("TimeoutError")  # our own timeout
    p = cli()
    assert p.returncode == 64 and "usage" in p.stderr
    p = cli("frobnicate", srv.endpoint)
    assert p.returncode == 64
    p = cli("--version")
    assert p.returncode == 0 and p.stdout.startswith("aiorpc ")
    p = subprocess.run([binary("aiorpcd"), "--version"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("aiorpcd ")
    for args in (("call", "no-port-here", "echo"), ("call", srv.endpoint)):  # no DNS look-up
        assert cli(*args).returncode == 64, args


def test_cli_arguments_are_strict_and_bench_runs():
    srv = daemon("--role=demo", "--bind", "127.0.0.1:0")
    # one parser (CLI11) for every command: numbers checked whole, NaN/inf refused, exit 64
    for args in (("bench", srv.endpoint, "-c", "8x"), ("bench", srv.endpoint, "-d", "0"),
                 ("bench", srv.endpoint, "-t", "nan"), ("bench", srv.endpoint, "-w", "inf"),
                 ("bench", srv.endpoint, "--cpu-pid", "12ab"), ("bench",),
                 ("call", srv.endpoint, "echo", "--timeout", "inf"),
                 ("call", srv.endpoint, "echo", "--timeout", "1s"),
                 ("stats", srv.endpoint, "--nope"), ("call", srv.endpoint, "echo", "[]", "extra")):
        p = cli(*args)
        assert p.returncode == 64 and "aiorpc: " in p.stderr, (args, p)
    for args in (("--help",), ("call", "--help"), ("bench", "--help")):
        p = cli(*args)
        assert p.returncode == 0 and "Usage: aiorpc" in p.stdout, (args, p)
    assert "Exit status" in cli("call", "--help").stdout
    p = cli("bench", srv.endpoint, "-c", "2", "-d", "4", "-t", "0.3", "-w", "0",
            "--cpu-pid", str(srv.p.pid))
    assert p.returncode == 0, p
    result = dict(kv.split("=") for kv in p.stdout.splitlines()[-1].split()[1:])
    assert int(result["calls"]) > 0 and result["errors"] == "0", result
    assert "cpu_ns_per_call_0" in result and result["conns"] == "2" and result["depth"] == "4"


def test_cli_stats_and_methods():
    srv = daemon("--role=demo", "--bind", "127.0.0.1:0")
    p = cli("stats", srv.endpoint)
    assert p.returncode == 0 and json.loads(p.stdout)["connections_open"] >= 1, p
    p = cli("methods", srv.endpoint)
    assert p.returncode == 0, p
    lines = p.stdout.splitlines()
    assert "default_params(a, b, c=null, d=1)" in lines and "echo(args, kwargs)" in lines, lines
    p = cli("methods", srv.endpoint, "--json")
    assert json.loads(p.stdout)["methods"]["sleep"] == ["sec"]


def test_cli_json_is_lossless_and_strict():
    srv = daemon("--role=demo", "--bind", "127.0.0.1:0")
    cases = [
        [{"$map": [[1, "int key"], ["1", "str key"]]}],  # 1 and "1" stay apart
        [{"$map": [[{"$float": "nan"}, "nan key"]]}],
        [{"$float": "nan"}, {"$float": "inf"}, {"$float": "-inf"}, 1.5],
        [{"$base64": "AAEC/w=="}, {"$ext": 5, "$base64": "AQI="}],
        [{"$map": [["$base64", "a map that only looks like bin"]]}],
        [{"plain": {"nested": [1, None, True]}}],
    ]
    for params in cases:
        text = json.dumps(params)
        p = cli("call", srv.endpoint, "echo", text)
        assert p.returncode == 0, (params, p.stderr)
        assert json.loads(p.stdout) == params, (params, p.stdout)
    # what the server sees, byte for byte: the map keeps its int key
    import msgpack
    r = Raw(srv)
    r.call("set_cache", ["k", {1: "a", "1": "b"}])
    p = cli("call", srv.endpoint, "get_cache", '["k"]')
    assert json.loads(p.stdout) == {"$map": [[1, "a"], ["1", "b"]]}, p.stdout
    # strict base64 and tags: garbage is refused, not sent as a map
    for bad in ('[{"$base64": "!!!!"}]', '[{"$base64": "AAE"}]', '[{"$base64": "AA=A"}]',
                '[{"$float": "NaN"}]', '[{"$map": [[1]]}]', '[{"$ext": 999, "$base64": ""}]',
                # $ext alone aborted the CLI; 2^64-1 was taken as type -1
                '[{"$ext": 5}]', '[{"$ext": 18446744073709551615, "$base64": "AA=="}]',
                '[{"$ext": -129, "$base64": "AA=="}]', '[{"$ext": 1.5, "$base64": "AA=="}]',
                '[{"$ext": 5, "$float": "nan"}]'):
        p = cli("call", srv.endpoint, "echo", bad)
        assert p.returncode == 64 and p.stderr.strip(), (bad, p)
    # deep nesting is refused with a clear line (it crashed the CLI before)
    deep = "[" * 22000 + "]" * 22000
    p = cli("call", srv.endpoint, "echo", deep)
    assert p.returncode == 64 and "nested deeper" in p.stderr, p.stderr[-300:]
    ok = "[" * 31 + "]" * 31
    assert cli("call", srv.endpoint, "echo", ok).returncode == 0
    assert msgpack  # (imported for the raw check above)


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


def test_examples_thread_pool_replies_from_the_loop():
    from harness import Proc
    srv = Proc([binary("thread_pool")])
    r = Raw(srv)
    n = 2000
    r.send(*[[0, i, "collatz", [i + 1]] for i in range(n)])  # computed on 4 worker threads
    got = {m[1]: m[3] for m in r.recv(n, timeout=30)}

    def steps(x):
        k = 0
        while x != 1:
            x = 3 * x + 1 if x % 2 else x // 2
            k += 1
        return k
    assert all(got[i] == steps(i + 1) for i in range(n))
    srv.signal(signal.SIGTERM)
    assert srv.wait(timeout=10) == 0


def test_examples_aggregation():
    p = subprocess.run([binary("aggregation")], capture_output=True, timeout=30, text=True)
    assert p.returncode == 0, p
    assert p.stdout.strip() == '[{"id": 1, "price": 10}, {"id": 2, "price": 20}, {"id": 3, "price": 30}]'


if __name__ == "__main__":  # also runs without pytest: python3 FILE [test_name...]
    run(globals())
