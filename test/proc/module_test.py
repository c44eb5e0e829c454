"""Loadable role modules (issue 14 item 2): docs/examples/module's greeter under aiorpcd,
registered with a keepalive, called through the proxy; a module of another version and a
library that is no module are refused with one line."""
import os
import signal
import subprocess

from harness import BUILD, Raw, binary, daemon, run, wait_until


def module(name):
    for d in ("docs/examples", "test"):
        p = os.path.join(BUILD, d, f"lib{name}.so")
        if os.path.exists(p):
            return p
    raise AssertionError(f"module {name} not built")


def test_module_role_is_a_role_like_any_other():
    ka = daemon("--role=keepalive", "--bind", "127.0.0.1:0", "--ttl", "5",
                "--check-interval", "0.2")
    g = daemon("--module", module("greeter"), "--role=greeter", "--bind", "127.0.0.1:0",
               "--greeting=hi", "--keepalive", ka.endpoint, "--heartbeat-interval", "0.2")
    r = Raw(g)
    assert r.call("greet", ["ann"])[3] == "hi, ann"
    assert r.call("\0stats", None)[3]["requests"] == 2  # \0stats counts this one too
    px = daemon("--role=proxy", "--bind", "127.0.0.1:0", "--keepalive", ka.endpoint,
                "--refresh-interval", "0.2")
    p = Raw(px)
    assert wait_until(lambda: p.call("invoke", ["greeter", "greet", ["bob"]])[3] == "hi, bob")
    assert p.call("invoke", ["greeter", "count", []])[3] == 2
    g.signal(signal.SIGTERM)  # the drain handshake: unregistered first, exit 0
    assert g.wait(timeout=10) == 0
    k = Raw(ka)
    assert "greeter" not in k.call("get_services", [])[3]
    h = subprocess.run([binary("aiorpcd"), "--module", module("greeter"), "--help"],
                       capture_output=True, text=True, timeout=10)
    assert h.returncode == 0 and "greeter" in h.stdout and "--greeting" in h.stdout


def test_modules_of_another_version_or_no_module_are_refused():
    for path, why in ((module("old_module"), "built against aiorpc 0.0.1"),
                      (module("not_module"), "no aiorpc_module() entry point"),
                      ("/nonexistent/libx.so", "cannot load module")):
        p = subprocess.run([binary("aiorpcd"), "--module", path, "--role=demo"],
                           capture_output=True, text=True, timeout=10)
        assert p.returncode == 2 and why in p.stderr, (path, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    # a module whose author got something wrong: one line, exit 2, never a crash
    for mode, why in (("entry-throws", "aiorpc_module() threw"),
                      ("null-create", "has no create function"),
                      ("config-flag", "flag --config is the daemon's own"),
                      ("no-name", "a role without a name"),
                      ("create-throws", "its create function threw")):
        p = subprocess.run([binary("aiorpcd"), "--module", module("bad_module"), "--role=bad"],
                           capture_output=True, text=True, timeout=10,
                           env=dict(os.environ, AIORPC_BAD_MODULE=mode))
        assert p.returncode == 2 and why in p.stderr, (mode, p.returncode, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = subprocess.run([binary("aiorpcd"), "--role=greeter"], capture_output=True, text=True)
    assert p.returncode == 2 and "unknown role" in p.stderr  # only with its module


if __name__ == "__main__":
    run(globals())
