#!/usr/bin/python3
"""Memory of quiet connections: N connections each make one echo call and go quiet; prints the
server's RSS growth per connection right after the calls and after the idle sweep.
Usage: bench/idle_conns.py [N]   (starts build-release/aiorpcd --role=demo itself)"""
import os
import resource
import socket
import subprocess
import sys
import time

import msgpack

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
p = subprocess.Popen([os.path.join(root, "build-release", "aiorpcd"), "--role=demo", "--bind",
                      "127.0.0.1:0", "--log-level", "error"], stdout=subprocess.PIPE)
port = int(p.stdout.readline().decode().rsplit(":", 1)[1])


def rss_kb():
    return int(open(f"/proc/{p.pid}/status").read().split("VmRSS:")[1].split()[0])


time.sleep(0.2)
base = rss_kb()
socks = []
req = msgpack.packb([0, 1, "echo", ["x" * 16]])
for i in range(N):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(req)
    assert msgpack.unpackb(s.recv(100))[3] == ["x" * 16]
    socks.append(s)
busy = rss_kb()
time.sleep(5)  # the server's idle sweep runs every 2 s
quiet = rss_kb()
print(f"{N} connections: RSS {base} kB at start, {busy} kB after one call each "
      f"({(busy - base) * 1024 / N:,.0f} B/conn), {quiet} kB once quiet "
      f"({(quiet - base) * 1024 / N:,.0f} B/conn)")
p.kill()
