"""Tests that a wrong build would turn into traffic off this machine (DNS look-ups of names a
keepalive hands out) run in a private network namespace with only loopback, so nothing can
leave even then. Re-executes itself under `unshare -n` (root); where that is not possible it
says so and skips."""
import os
import subprocess
import sys
import time

if os.environ.get("AIORPC_IN_NETNS") != "1":
    env = dict(os.environ, AIORPC_IN_NETNS="1")
    try:
        rc = subprocess.run(["unshare", "-n", "sh", "-c",
                             'ip link set lo up && exec "$0" "$@"', sys.executable, *sys.argv],
                            env=env).returncode
    except FileNotFoundError:
        rc = 77
    if rc == 77 or rc == 1 and os.geteuid() != 0:
        print("skipped: a private network namespace (unshare -n, as root) is not available here")
        print("[proc] netns_test.py: test cases: 0 | 0 passed | 0 failed")
        sys.exit(0)
    sys.exit(rc)

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


run(globals())
