#!/usr/bin/python3
"""Memory of quiet connections: N connections each make one echo call and go quiet; prints the
server's RSS growth per connection right after the calls and after the idle sweep.
Usage: bench/idle_conns.py [N] [--tls]   (starts build-release/aiorpcd --role=demo itself;
--tls: over TLS 1.3, certificates made by test/support/make_certs.sh, clients in Python's ssl)"""
import os
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

import msgpack

args = [a for a in sys.argv[1:] if a != "--tls"]
TLS = "--tls" in sys.argv[1:]
N = int(args[0]) if args else 10_000
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
tls_args, ctx = [], None
if TLS:
    certs = tempfile.mkdtemp(prefix="aiorpc-idle-")
    subprocess.run([os.path.join(root, "test/support/make_certs.sh"), certs], check=True)
    tls_args = ["--tls-cert", f"{certs}/server.pem", "--tls-key", f"{certs}/server.key"]
    ctx = ssl.create_default_context(cafile=f"{certs}/ca.pem")
p = subprocess.Popen([os.path.join(root, "build-release", "aiorpcd"), "--role=demo", "--bind",
                      "127.0.0.1:0", "--log-level", "error", *tls_args], stdout=subprocess.PIPE)
port = int(p.stdout.readline().decode().rsplit(":", 1)[1])


def rss_kb():
    return int(open(f"/proc/{p.pid}/status").read().split("VmRSS:")[1].split()[0])


time.sleep(0.2)
base = rss_kb()
socks = []
req = msgpack.packb([0, 1, "echo", ["x" * 16]])
for i in range(N):
    s = socket.create_connection(("127.0.0.1", port))
    if ctx:
        s = ctx.wrap_socket(s, server_hostname="localhost")
    s.sendall(req)
    assert msgpack.unpackb(s.recv(100))[3] == ["x" * 16]
    socks.append(s)
busy = rss_kb()
time.sleep(5)  # the server's idle sweep runs every 2 s
quiet = rss_kb()
print(f"{N} {'TLS ' if TLS else ''}connections: RSS {base} kB at start, {busy} kB after one call each "
      f"({(busy - base) * 1024 / N:,.0f} B/conn), {quiet} kB once quiet "
      f"({(quiet - base) * 1024 / N:,.0f} B/conn)")
p.kill()
if TLS:
    shutil.rmtree(certs, ignore_errors=True)
