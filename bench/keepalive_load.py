#!/usr/bin/python3
"""Keepalive at scale: registers N endpoints with pipelined heartbeats, then refreshes them all,
and reports heartbeat calls/s and the keepalive's RSS per record.
Usage: bench/keepalive_load.py [N]   (starts build-release/aiorpcd --role=keepalive itself)"""
import os
import socket
import subprocess
import sys
import time

import msgpack

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
binary = os.path.join(root, "build-release", "aiorpcd")
p = subprocess.Popen(["taskset", "-c", "0", binary, "--role=keepalive", "--bind", "127.0.0.1:0",
                      "--ttl", "600", "--log-level", "error"], stdout=subprocess.PIPE)
port = int(p.stdout.readline().decode().rsplit(":", 1)[1])


def rss_kb():
    return int(open(f"/proc/{p.pid}/status").read().split("VmRSS:")[1].split()[0])


def cpu_s():
    f = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def run(label):
    s = socket.create_connection(("127.0.0.1", port))
    reqs = b"".join(msgpack.packb([0, i, "heartbeat", [f"svc{i % 100}", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                                                       1 + i % 60000, None]]) for i in range(N))
    u = msgpack.Unpacker()
    t0, c0 = time.time(), cpu_s()
    s.sendall(reqs)
    got = 0
    while got < N:
        u.feed(s.recv(1 << 20))
        for m in u:
            assert m[2] is None, m
            got += 1
    dt, dc = time.time() - t0, cpu_s() - c0
    print(f"{label}: {N} heartbeats in {dt:.2f} s = {N / dt:,.0f} calls/s (client-bound); "
          f"keepalive CPU {dc / N * 1e9:,.0f} ns per heartbeat")
    s.close()


base = rss_kb()
run("register")
after = rss_kb()
run("refresh")
print(f"RSS {base} kB -> {after} kB: {(after - base) * 1024 / N:,.0f} bytes per record")
p.kill()
