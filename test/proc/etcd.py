"""A real etcd cluster for process tests: N members on free loopback ports, a temporary data
dir, fast elections (--heartbeat-interval 50 --election-timeout 500); members can be killed and
started again; everything is SIGKILLed and removed at the end (register with harness reaping)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import harness


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def post(port, path, body, timeout=2):
    # no proxy from the environment: loopback only
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with opener.open(req, timeout=timeout) as r:
        return json.loads(r.read())


class _Member:
    """Looks like a harness.Proc to the reaper."""

    def __init__(self, p):
        self.p = p

    def kill(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGCONT)
            self.p.kill()
            self.p.wait()


class EtcdCluster:
    def __init__(self, n=3, start=True):
        if not start:  # the test starts the members (a cold start: quorum comes late)
            self.dir = tempfile.mkdtemp(prefix="aiorpc-etcd-")
            self.ports = [(free_port(), free_port()) for _ in range(n)]
            self.initial = ",".join(f"e{i}=http://127.0.0.1:{pp}"
                                    for i, (_, pp) in enumerate(self.ports))
            self.members = [None] * n
            harness._procs.append(self)
            return
        # A port picked free can be taken before etcd binds it (another test's connect, the
        # other build's suite running at the same time): that member exits, and the cluster is
        # started again on new ports.
        for attempt in range(3):
            self.dir = tempfile.mkdtemp(prefix="aiorpc-etcd-")
            self.ports = [(free_port(), free_port()) for _ in range(n)]
            self.initial = ",".join(f"e{i}=http://127.0.0.1:{pp}"
                                    for i, (_, pp) in enumerate(self.ports))
            self.members = [None] * n
            for i in range(n):
                self.start(i)
            if self.wait_healthy():
                break
            logs = self.logs()
            self.kill()
            assert attempt < 2, "etcd cluster did not come up: " + logs
        harness._procs.append(self)  # reaped with the daemons

    def start(self, i):
        cp, pp = self.ports[i]
        log = open(os.path.join(self.dir, f"e{i}.log"), "ab")
        p = subprocess.Popen(
            ["etcd", f"--name=e{i}", f"--data-dir={self.dir}/e{i}",
             f"--listen-client-urls=http://127.0.0.1:{cp}",
             f"--advertise-client-urls=http://127.0.0.1:{cp}",
             f"--listen-peer-urls=http://127.0.0.1:{pp}",
             f"--initial-advertise-peer-urls=http://127.0.0.1:{pp}",
             f"--initial-cluster={self.initial}", "--initial-cluster-state=new",
             "--heartbeat-interval=50", "--election-timeout=500"],
            stdout=log, stderr=log)
        self.members[i] = _Member(p)

    def kill_member(self, i):
        self.members[i].kill()

    def stop_member(self, i):  # SIGSTOP: a hung member, its connections open
        self.members[i].p.send_signal(signal.SIGSTOP)

    def cont_member(self, i):
        self.members[i].p.send_signal(signal.SIGCONT)

    def index_of(self, endpoint):
        return [f"127.0.0.1:{cp}" for cp, _ in self.ports].index(endpoint)

    def endpoints(self):
        return ",".join(f"127.0.0.1:{cp}" for cp, _ in self.ports)

    def status(self, i):
        return post(self.ports[i][0], "/v3/maintenance/status", {}, timeout=1)

    def leader(self):
        """Index of the current leader (a member that answers and names itself)."""
        for i in range(len(self.ports)):
            try:
                st = self.status(i)
                if st["leader"] == st["header"]["member_id"]:
                    return i
            except Exception:
                pass
        return None

    def wait_healthy(self, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(m and m.p.poll() is not None for m in self.members):
                return False  # a member exited (its port was taken): start again
            try:
                if self.leader() is not None:
                    post(self.ports[0][0], "/v3/kv/put", {"key": "aGVhbHRo", "value": "b2s="})
                    return True
            except Exception:
                pass
            time.sleep(0.1)
        return False

    def logs(self):
        out = ""
        for name in sorted(os.listdir(self.dir)):
            if name.endswith(".log"):
                with open(os.path.join(self.dir, name), errors="replace") as f:
                    out += f"--- {name}\n" + f.read()[-2000:]
        return out

    def kill(self):  # the reaper's end of it
        for m in self.members:
            if m:
                m.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
