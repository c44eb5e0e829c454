#!/usr/bin/python3
"""Keepalive at scale: registers N endpoints with pipelined heartbeats, then refreshes them all,
and reports heartbeat calls/s, the keepalive's CPU per heartbeat and RSS per record.

Usage: bench/keepalive_load.py [N] [--store etcd] [--register-only]
  (starts build-release/aiorpcd --role=keepalive itself; with --store etcd also a 3-member etcd
  cluster on loopback, and then reports etcd requests/s at steady state, N services refreshing
  every 3 s with a 30 s TTL, and the time from a service's first heartbeat to a proxy routing
  to it, for both stores). Every address registered is a loopback one (127.x.y.z)."""
import os
import socket
import subprocess
import sys
import time
import urllib.request

import msgpack

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(root, "test", "proc"))
binary = os.path.join(root, "build-release", "aiorpcd")
args = [a for a in sys.argv[1:] if not a.startswith("--")]
N = int(args[0]) if args else 100_000
ETCD = "--store" in sys.argv and sys.argv[sys.argv.index("--store") + 1] == "etcd"
procs = []


def start(*argv, core="0"):
    p = subprocess.Popen(["taskset", "-c", core, binary, *argv, "--log-level", "error"],
                         stdout=subprocess.PIPE)
    procs.append(p)
    p.port = int(p.stdout.readline().decode().rsplit(":", 1)[1])
    return p


def rss_kb(p):
    return int(open(f"/proc/{p.pid}/status").read().split("VmRSS:")[1].split()[0])


def cpu_s(p):
    f = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def heartbeats(port, n, label=None, ka=None, sources=4):
    """n heartbeats, pipelined on one connection from each of `sources` loopback addresses."""
    conns, reqs = [], []
    for k in range(sources):
        s = socket.create_connection(("127.0.0.1", port), source_address=(f"127.0.0.{1 + k}", 0))
        conns.append(s)
        reqs.append(b"".join(
            msgpack.packb([0, i, "heartbeat", [f"svc{i % 100}",
                                               f"127.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                                               1 + i % 60000, None]])
            for i in range(k, n, sources)))
    t0, c0 = time.time(), cpu_s(ka) if ka else 0
    for s, r in zip(conns, reqs):
        s.sendall(r)
    for k, s in enumerate(conns):
        u = msgpack.Unpacker()
        got, want = 0, len(range(k, n, sources))
        while got < want:
            u.feed(s.recv(1 << 20))
            for m in u:
                assert m[2] is None, m
                got += 1
        s.close()
    dt = time.time() - t0
    if label:
        dc = cpu_s(ka) - c0
        print(f"{label}: {n} heartbeats in {dt:.2f} s = {n / dt:,.0f} calls/s; "
              f"keepalive CPU {dc / n * 1e9:,.0f} ns per heartbeat")
    return dt


def call(port, method, params):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(msgpack.packb([0, 1, method, params]))
    u = msgpack.Unpacker(strict_map_key=False)
    while True:
        u.feed(s.recv(1 << 20))
        for m in u:
            s.close()
            return m


def etcd_requests(cluster):
    total = 0
    for cp, _ in cluster.ports:
        text = urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            f"http://127.0.0.1:{cp}/metrics", timeout=2).read().decode()
        for line in text.splitlines():
            if line.startswith("grpc_server_handled_total{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def time_to_route(store_args):
    """Seconds from a demo's start (its first heartbeat is at once) to the proxy routing to it."""
    ka = start("--role=keepalive", "--bind", "127.0.0.1:0", *store_args)
    px = start("--role=proxy", "--bind", "127.0.0.1:0", "--keepalive", f"127.0.0.1:{ka.port}",
               core="1")
    time.sleep(0.5)
    t0 = time.time()
    start("--role=demo", "--bind", "127.0.0.1:0", "--keepalive", f"127.0.0.1:{ka.port}", core="1")
    while call(px.port, "invoke", ["sample.foo", "echo", [1]])[3] != [1]:
        time.sleep(0.002)
    took = time.time() - t0
    for p in procs[-3:]:
        p.kill()
    del procs[-3:]
    return took


try:
    store = []
    cluster = None
    if ETCD:
        from etcd import EtcdCluster
        cluster = EtcdCluster()
        store = ["--store", "etcd://" + cluster.endpoints(), "--store-prefix", f"/bench{os.getpid()}"]
    ka = start("--role=keepalive", "--bind", "127.0.0.1:0", "--ttl", "30", *store,
               "--max-records-per-source", str(N))
    time.sleep(0.5)
    base = rss_kb(ka)
    t0 = time.time()
    heartbeats(ka.port, N, "register", ka)
    if ETCD:  # the records come back through the watch: wait until the cache holds them
        while sum(len(v) for v in call(ka.port, "get_services", [])[3].values()) < N:
            time.sleep(0.01)
        took = time.time() - t0
        print(f"register on etcd: {N} new records from 4 addresses answered and listed in "
              f"{took:.2f} s = {N / took:,.0f} records/s")
        if "--register-only" in sys.argv:
            sys.exit(0)
    after = rss_kb(ka)
    heartbeats(ka.port, N, "refresh", ka)
    heartbeats(ka.port, N, "refresh again", ka)  # (the first may share the CPU with the watch)
    print(f"RSS {base} kB -> {after} kB: {(after - base) * 1024 / N:,.0f} bytes per record")
    if ETCD:
        # steady state: every record heartbeats every 3 s (TTL 30 s: a lease renewal per record at
        # most every 10 s), 30 s long
        r0, t0 = etcd_requests(cluster), time.time()
        while time.time() - t0 < 30:
            round_start = time.time()
            heartbeats(ka.port, N)
            time.sleep(max(0, 3 - (time.time() - round_start)))
        rate = (etcd_requests(cluster) - r0) / (time.time() - t0)
        print(f"steady state: {N} records heartbeating every 3 s: {N / 3:,.0f} heartbeats/s in, "
              f"{rate:,.0f} etcd requests/s out; keepalive RSS {rss_kb(ka)} kB")
        for label in ("memory", "etcd"):
            times = sorted(time_to_route([] if label == "memory" else
                                         ["--store", "etcd://" + cluster.endpoints(),
                                          "--store-prefix", f"/route{os.getpid()}/{i}"])
                           for i in range(5))
            print(f"first heartbeat to routed through a proxy ({label} store): median "
                  f"{times[2] * 1000:.0f} ms (min {times[0] * 1000:.0f}, max {times[-1] * 1000:.0f})")

finally:
    for p in procs:
        p.kill()
    if ETCD and cluster:
        cluster.kill()
