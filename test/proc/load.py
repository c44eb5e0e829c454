"""A closed-loop load of pipelined `invoke` calls through a proxy, for churn tests.

`clients` connections each keep `depth` calls in flight: every reply is checked (an echo of its
own msgid) and answered with a new call until stop(); then the outstanding calls are awaited.
Counts outcomes by kind; `unanswered` is what never came back. Loopback only.
"""
import selectors
import socket
import threading
import time

import msgpack


class Load:
    def __init__(self, port, clients=16, depth=32, service="sample.foo", host="127.0.0.1"):
        self.port, self.host, self.service = port, host, service
        self.clients, self.depth = clients, depth
        self.ok = 0
        self.errors = {}  # kind -> count
        self.sent = 0
        self.unanswered = 0
        self.samples = []  # a few error replies, for messages
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self, drain_timeout=30):
        self._stop.set()
        self._thread.join(drain_timeout + 10)
        assert not self._thread.is_alive(), "load thread did not finish"
        return self

    def total(self):
        return self.ok + sum(self.errors.values())

    def summary(self):
        return (f"{self.total()} answered of {self.sent} sent: {self.ok} ok, errors {self.errors},"
                f" unanswered {self.unanswered}")

    def _request(self, k, msgid):
        self.sent += 1
        return msgpack.packb([0, msgid, "invoke", [self.service, "echo", [k, msgid]]],
                             use_bin_type=True)

    def _run(self):
        sel = selectors.DefaultSelector()
        conns = []
        for k in range(self.clients):
            s = socket.create_connection((self.host, self.port), timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            c = {"k": k, "sock": s, "unp": msgpack.Unpacker(raw=False, strict_map_key=False),
                 "next": 0, "out": bytearray(), "pending": set()}
            conns.append(c)
            sel.register(s, selectors.EVENT_READ, c)
            for _ in range(self.depth):
                self._queue(c)
            self._flush(c)
        deadline = None
        while True:
            if self._stop.is_set() and deadline is None:
                deadline = time.time() + 30
            if deadline is not None:
                if all(not c["pending"] for c in conns) or time.time() > deadline:
                    break
            for key, _ in sel.select(timeout=0.05):
                c = key.data
                try:
                    chunk = c["sock"].recv(1 << 20)
                except BlockingIOError:
                    continue
                except ConnectionError:
                    chunk = b""
                if not chunk:  # the proxy closed on us: nothing more will come
                    sel.unregister(c["sock"])
                    self.unanswered += len(c["pending"])
                    c["pending"].clear()
                    continue
                c["unp"].feed(chunk)
                for m in c["unp"]:
                    self._reply(c, m)
                self._flush(c)
        for c in conns:
            self.unanswered += len(c["pending"])
            c["sock"].close()
        sel.close()

    def _queue(self, c):
        msgid = c["next"]
        c["next"] += 1
        c["pending"].add(msgid)
        c["out"] += self._request(c["k"], msgid)

    def _flush(self, c):
        while c["out"]:
            try:
                n = c["sock"].send(c["out"])
            except BlockingIOError:
                time.sleep(0.001)
                continue
            del c["out"][:n]

    def _reply(self, c, m):
        msgid = m[1]
        if msgid not in c["pending"]:
            self.errors["Duplicate"] = self.errors.get("Duplicate", 0) + 1
            return
        c["pending"].discard(msgid)
        if m[2] is None:
            if m[3] == [c["k"], msgid]:
                self.ok += 1
            else:
                self.errors["Wrong"] = self.errors.get("Wrong", 0) + 1
        else:
            kind = m[2][0] if isinstance(m[2], list) and m[2] else repr(m[2])
            self.errors[kind] = self.errors.get(kind, 0) + 1
            if len(self.samples) < 5:
                self.samples.append(m[2])
        if not self._stop.is_set():
            self._queue(c)
