// Connection, Listener, Connector on real sockets.
#include "aiorpc/core/connection.h"

#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <map>
#include <string>

#include "aiorpc/core/connector.h"
#include "aiorpc/core/listener.h"
#include "test/support/core_peer.h"
#include "test/support/run_until.h"

using namespace aiorpc::core;
using aiorpc::test::Recorder;
using aiorpc::test::runUntil;
using aiorpc::test::socketPair;

namespace {

std::string readAll(int fd, size_t want, double timeout_s, Loop& loop) {
  std::string got;
  runUntil(
      loop,
      [&] {
        char buf[65536];
        ssize_t n;
        while ((n = ::read(fd, buf, sizeof buf)) > 0) got.append(buf, static_cast<size_t>(n));
        return got.size() >= want || n == 0;
      },
      timeout_s);
  return got;
}

}  // namespace

TEST_SUITE("connection") {
  TEST_CASE("bytes queued in place go out in order, each released once: written or dropped") {
    Loop loop;
    auto [a, b] = socketPair();
    Recorder r(loop, std::move(a));
    std::string big(3 << 20, 'x');  // many partial writes
    for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + i % 23);
    std::string small = "in place";
    std::map<std::string, int> released;
    auto note = [](void* ctx) noexcept { ++*static_cast<int*>(ctx); };
    r.conn->send("head ");
    r.conn->out().appendRef(small, note, &released["small"]);
    r.conn->send(" mid ");
    r.conn->out().appendRef(big, note, &released["big"]);
    r.conn->out().appendRef({}, note, &released["empty"]);  // released at once
    r.conn->send(" tail");
    r.conn->sent();
    CHECK(released["empty"] == 1);
    CHECK(released["small"] + released["big"] == 0);  // nothing written yet
    std::string want = "head " + small + " mid " + big + " tail";
    CHECK(readAll(b.get(), want.size(), 10, loop) == want);
    CHECK(released["small"] == 1);
    CHECK(released["big"] == 1);
    // Unwritten ones are released when the queue drops them (a connection closed).
    int dropped = 0;
    r.conn->out().appendRef(big, note, &dropped);
    r.conn->close();
    CHECK(dropped == 1);
  }

  TEST_CASE("a queue destroyed with bytes in place releases them") {
    int released = 0;
    {
      OutQueue q;
      q.append("x", 1);
      q.appendRef(
          "abc", [](void* ctx) noexcept { ++*static_cast<int*>(ctx); }, &released);
      q.append("y", 1);
      CHECK(q.size() == 5);
      CHECK(q.front() == "x");  // one run at a time (the TLS writer's view)
      q.consume(2);
      CHECK(q.front() == "bc");
      CHECK(released == 0);
      q.consume(2);
      CHECK(released == 1);
      CHECK(q.front() == "y");  // in the rest of the first block's memory
    }
    CHECK(released == 1);
  }

  TEST_CASE("many small appends between bytes in place keep their order") {
    // Each appendRef splits the tail block around it; the heads between them fill one block.
    Loop loop;
    auto [a, b] = socketPair();
    Recorder r(loop, std::move(a));
    std::vector<std::string> parts;
    for (int i = 0; i < 300; ++i)
      parts.push_back(std::string(1000 + i, static_cast<char>('a' + i % 26)));
    int released = 0;
    std::string want;
    for (int i = 0; i < 300; ++i) {
      std::string head = "<" + std::to_string(i) + ">";
      r.conn->send(head);
      r.conn->out().appendRef(
          parts[static_cast<size_t>(i)], [](void* ctx) noexcept { ++*static_cast<int*>(ctx); },
          &released);
      want += head + parts[static_cast<size_t>(i)];
    }
    r.conn->sent();
    CHECK(readAll(b.get(), want.size(), 10, loop) == want);
    CHECK(released == 300);
  }

  TEST_CASE("writes are batched and delivered; peer EOF closes after flush") {
    Loop loop;
    auto [a, b] = socketPair();
    Recorder r(loop, std::move(a));
    r.conn->send("hello ");
    r.conn->send("world");
    CHECK(r.conn->pendingBytes() == 11);  // nothing written before the loop iterates
    CHECK(readAll(b.get(), 11, 5, loop) == "hello world");
    CHECK(::write(b.get(), "ping", 4) == 4);
    REQUIRE(runUntil(loop, [&] { return r.data == "ping"; }));
    ::shutdown(b.get(), SHUT_WR);
    REQUIRE(runUntil(loop, [&] { return r.closes == 1; }));
    CHECK(r.eofs == 1);
    CHECK_FALSE(r.why);
  }

  TEST_CASE("a callback that closes its own connection gets exactly one close") {
    Loop loop;
    auto [a, b] = socketPair();
    Recorder r(loop, std::move(a));
    r.on_data = [](Recorder& self) {
      self.conn->send("bye");
      self.conn->close();
      self.conn->close();  // idempotent
      self.conn->send("ignored");
    };
    CHECK(::write(b.get(), "x", 1) == 1);
    REQUIRE(runUntil(loop, [&] { return r.closes >= 1; }));
    loop.post([] {});
    runUntil(
        loop, [] { return false; }, 0.02);
    CHECK(r.closes == 1);
    char c;
    CHECK(::read(b.get(), &c, 1) == 0);  // closed, unsent output dropped
  }

  TEST_CASE("no memory for one connection's input closes it alone (ENOMEM), the loop goes on") {
    struct Starved final : ConnectionHandler {
      std::unique_ptr<Connection> conn;
      bool throw_in_data = false;
      int closes = 0;
      std::error_code why;
      char buf[64];
      std::span<char> readBuffer() override {
        if (!throw_in_data) throw std::bad_alloc();
        return buf;
      }
      void onData(size_t) override { throw std::bad_alloc(); }
      void onClose(std::error_code e) override {
        ++closes;
        why = e;
      }
    };
    Loop loop;
    auto [a, b] = socketPair();
    auto [c, d] = socketPair();
    auto [e, f] = socketPair();
    Starved s1, s2;
    s2.throw_in_data = true;
    s1.conn = std::make_unique<Connection>(loop, std::move(a), &s1);
    s2.conn = std::make_unique<Connection>(loop, std::move(c), &s2);
    Recorder fine(loop, std::move(e));
    CHECK(::write(b.get(), "x", 1) == 1);
    CHECK(::write(d.get(), "y", 1) == 1);
    CHECK(::write(f.get(), "z", 1) == 1);
    REQUIRE(runUntil(loop, [&] { return s1.closes && s2.closes && fine.data == "z"; }));
    CHECK(s1.why == std::errc::not_enough_memory);
    CHECK(s2.why == std::errc::not_enough_memory);
    CHECK(fine.closes == 0);
    runUntil(
        loop, [] { return false; }, 0.02);
    // The peers see the close (a reset where input was left unread).
    for (int peer : {b.get(), d.get()}) {
      char ch;
      ssize_t n = ::read(peer, &ch, 1);
      CHECK((n == 0 || (n < 0 && errno == ECONNRESET)));
    }
  }

  TEST_CASE("peer reset mid-write closes with an error, once") {
    Loop loop;
    auto [a, b] = socketPair();
    Recorder r(loop, std::move(a));
    std::string chunk(1 << 20, 'x');
    r.conn->send(chunk);  // more than the socket buffer: stays partly queued
    loop.post([] {});
    runUntil(
        loop, [&] { return r.conn->pendingBytes() < chunk.size(); }, 2);
    b.reset();  // peer goes away with our data unread
    REQUIRE(runUntil(loop, [&] { return r.closes == 1; }));
    CHECK(r.why);
    CHECK((r.why.value() == EPIPE || r.why.value() == ECONNRESET));
  }

  TEST_CASE("slow reader: high-water fires and the queue stays under mark + one write") {
    Loop loop;
    auto [a, b] = socketPair();
    Recorder r(loop, std::move(a));
    const size_t high = 256 * 1024, low = 64 * 1024, chunk = 16 * 1024;
    r.conn->setWaterMarks(high, low);
    size_t max_pending = 0, produced = 0;
    bool blocked = false;
    // A producer that writes while the connection is not over its mark (a well-behaved owner).
    struct Producer : Flushable {
      std::function<void()> fn;
      void flush() noexcept override { fn(); }
    } prod;
    prod.fn = [&] {
      while (r.highs == r.lows && produced < (8u << 20)) {
        r.conn->send(std::string(chunk, 'y'));
        produced += chunk;
        max_pending = std::max(max_pending, r.conn->pendingBytes());
      }
      blocked = r.highs > r.lows;
    };
    loop.wantFlush(&prod);
    REQUIRE(runUntil(loop, [&] { return blocked; }));
    CHECK(r.highs == 1);
    CHECK(max_pending <= high + chunk);
    // Now drain slowly from the peer: low-water fires, the producer may continue.
    size_t drained = 0;
    int bfd = b.get();
    REQUIRE(runUntil(loop, [&] {
      char buf[65536];
      ssize_t n = ::read(bfd, buf, sizeof buf);
      if (n > 0) drained += static_cast<size_t>(n);
      return r.lows == 1;
    }));
    CHECK(drained > 0);
    CHECK(r.conn->pendingBytes() <= low);
  }

  TEST_CASE("what the low-water upcall queues before closeAfterFlush is delivered, then EOF") {
    // A server answering the requests it held back while over its mark, the last of them
    // malformed: the upcall queues replies and asks to close after them. The close must wait.
    Loop loop;
    auto [a, b] = socketPair();
    struct Closer final : ConnectionHandler {
      std::unique_ptr<Connection> conn;
      Buffer in;
      int lows = 0;
      std::span<char> readBuffer() override { return in.reserve(4096); }
      void onData(size_t n) override { in.commit(n); }
      void onLowWater(Connection& c) override {
        if (lows++ > 0) return;
        c.send(std::string("tail"));
        c.closeAfterFlush();
      }
      void onClose(std::error_code) override {}
    } h;
    h.conn = std::make_unique<Connection>(loop, std::move(a), &h);
    h.conn->setWaterMarks(64 * 1024, 0);  // low-water only once the queue is empty
    const std::string body(256 * 1024, 'z');
    h.conn->send(body);
    std::string got;
    int bfd = b.get();
    bool eof = false;
    REQUIRE(runUntil(loop, [&] {
      char buf[65536];
      ssize_t n = ::read(bfd, buf, sizeof buf);
      if (n > 0) got.append(buf, static_cast<size_t>(n));
      if (n == 0) eof = true;
      return eof;
    }));
    CHECK(h.lows == 1);
    CHECK(got.size() == body.size() + 4);
    CHECK(got.substr(body.size()) == "tail");
  }

  TEST_CASE("pauseReading stops delivery until resumed") {
    Loop loop;
    auto [a, b] = socketPair();
    Recorder r(loop, std::move(a));
    r.conn->pauseReading();
    CHECK(::write(b.get(), "abc", 3) == 3);
    runUntil(
        loop, [] { return false; }, 0.05);
    CHECK(r.data.empty());
    r.conn->resumeReading();
    REQUIRE(runUntil(loop, [&] { return r.data == "abc"; }));
  }
}

TEST_SUITE("listener") {
  struct EchoServer {
    Loop& loop;
    Listener listener;
    std::map<int, std::unique_ptr<Recorder>> conns;
    int next = 0;
    explicit EchoServer(Loop& l)
        : loop(l), listener(l, [this](Fd fd, const Address&) { accept(std::move(fd)); }) {}
    void accept(Fd fd) {
      int id = next++;
      auto r = std::make_unique<Recorder>(loop, std::move(fd));
      r->on_data = [](Recorder& self) {
        self.conn->send(self.data);
        self.data.clear();
      };
      conns[id] = std::move(r);
    }
  };

  TEST_CASE("port 0 reports the bound port; ipv4, ipv6 and unix") {
    Loop loop;
    EchoServer s(loop);
    // The unix path is per process: the plain and the sanitizer builds run this suite at once.
    const std::string unix_spec =
        "unix:/tmp/aiorpc-test-listener-" + std::to_string(::getpid()) + ".sock";
    for (const std::string& spec :
         {std::string("127.0.0.1:0"), std::string("[::1]:0"), unix_spec}) {
      CAPTURE(spec);
      auto bound = s.listener.listen(*Address::parse(spec));
      if (!bound && spec.find("::1") != std::string::npos) continue;  // no v6 here
      REQUIRE(bound.ok());
      if (!bound->isUnix()) CHECK(bound->port() != 0);
      Connector c(loop);
      Result<Fd> got = Errc::kBadAddress;  // (not yet)
      bool done = false;
      c.start(*bound, 2, [&](Result<Fd> r) {
        got = std::move(r);
        done = true;
      });
      CHECK_FALSE(done);  // never completes inside start()
      REQUIRE(runUntil(loop, [&] { return done; }));
      REQUIRE(got.ok());
      CHECK(::write(got->get(), "hi", 2) == 2);
      CHECK(readAll(got->get(), 2, 5, loop) == "hi");
    }
  }

  TEST_CASE("connector reports refused and timeout clearly") {
    Loop loop;
    Listener l(loop, [](Fd, const Address&) {});
    auto bound = l.listen(*Address::parse("127.0.0.1:0"));
    REQUIRE(bound.ok());
    Address closed_port = *bound;
    l.stop();  // nothing listens there now
    Connector c(loop);
    Result<Fd> got = Errc::kBadAddress;  // (not yet)
    bool done = false;
    c.start(closed_port, 2, [&](Result<Fd> r) {
      got = std::move(r);
      done = true;
    });
    REQUIRE(runUntil(loop, [&] { return done; }));
    CHECK(got.error() == std::errc::connection_refused);

    // A listener that never accepts, with its backlog full: the next connect cannot finish.
    Fd raw = std::move(newSocket(AF_INET).value());
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(raw.get(), reinterpret_cast<sockaddr*>(&sin), sizeof sin) == 0);
    REQUIRE(::listen(raw.get(), 0) == 0);
    Address full = localAddress(raw.get());
    std::vector<Fd> fillers;
    for (int i = 0; i < 4; ++i) {
      Fd f = std::move(newSocket(AF_INET).value());
      (void)::connect(f.get(), full.sockaddr_ptr(), full.length());
      fillers.push_back(std::move(f));
    }
    done = false;
    c.start(full, 0.2, [&](Result<Fd> r) {
      got = std::move(r);
      done = true;
    });
    REQUIRE(runUntil(loop, [&] { return done; }));
    CHECK(got.error() == Errc::kTimedOut);
  }

  TEST_CASE("EMFILE on accept sheds connections instead of spinning, then recovers") {
    Loop loop;
    EchoServer s(loop);
    auto bound = s.listener.listen(*Address::parse("127.0.0.1:0"));
    REQUIRE(bound.ok());
    std::vector<Fd> clients;
    for (int i = 0; i < 3; ++i) {
      Fd f = std::move(newSocket(AF_INET).value());
      (void)::connect(f.get(), bound->sockaddr_ptr(), bound->length());
      clients.push_back(std::move(f));
    }
    rlimit old{};
    getrlimit(RLIMIT_NOFILE, &old);
    int probe = ::dup(0);
    ::close(probe);
    rlimit tight = old;
    tight.rlim_cur = static_cast<rlim_t>(probe);  // every new fd fails with EMFILE
    REQUIRE(setrlimit(RLIMIT_NOFILE, &tight) == 0);
    int iterations = 0;
    bool shed = runUntil(
        loop,
        [&] {
          ++iterations;
          return s.listener.acceptErrors() >= 3;
        },
        5);
    setrlimit(RLIMIT_NOFILE, &old);
    REQUIRE(shed);
    CHECK(iterations < 50);  // no busy spinning
    CHECK(s.conns.empty());
    for (auto& f : clients) {  // the shed peers see a close, not a hang
      char c;
      bool closed = runUntil(
          loop, [&] { return ::read(f.get(), &c, 1) == 0; }, 5);
      CHECK(closed);
    }
    // And the listener still works afterwards.
    Fd f = std::move(newSocket(AF_INET).value());
    (void)::connect(f.get(), bound->sockaddr_ptr(), bound->length());
    REQUIRE(runUntil(loop, [&] { return s.conns.size() == 1; }));
  }

  TEST_CASE("thousands of connections on one loop") {
    long limit = prepareProcess();
    Loop loop;
    EchoServer s(loop);
    auto bound = s.listener.listen(*Address::parse("127.0.0.1:0"));
    REQUIRE(bound.ok());
    // both ends live in this process: two fds per connection
    const int n = static_cast<int>(std::max(1000L, std::min(2000L, (limit - 100) / 2)));
    std::vector<Fd> clients;
    for (int i = 0; i < n; ++i) {
      Fd f = std::move(newSocket(AF_INET).value());
      (void)::connect(f.get(), bound->sockaddr_ptr(), bound->length());
      clients.push_back(std::move(f));
    }
    REQUIRE(runUntil(loop, [&] { return static_cast<int>(s.conns.size()) == n; }));
    for (int i = 0; i < n; ++i) {
      std::string msg = std::to_string(i);
      CHECK(::write(clients[i].get(), msg.data(), msg.size()) == static_cast<ssize_t>(msg.size()));
    }
    int ok = 0;
    std::vector<std::string> got(n);
    REQUIRE(runUntil(
        loop,
        [&] {
          for (int i = 0; i < n; ++i) {
            char buf[32];
            ssize_t k = ::read(clients[i].get(), buf, sizeof buf);
            if (k > 0) {
              got[i].append(buf, static_cast<size_t>(k));
              if (got[i] == std::to_string(i)) ++ok;
            }
          }
          return ok == n;
        },
        30));
  }
}
