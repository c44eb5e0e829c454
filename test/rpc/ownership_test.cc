// Ownership (STYLE rule 8, docs/architecture.md "Who owns a pending callback"): an embedder may
// destroy a Client or a Server at any time, from inside its own callbacks and handlers too;
// nothing of it runs afterwards and nothing freed is touched. Run under ASan in `make test`.
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "aiorpc/rpc/client.h"
#include "aiorpc/rpc/server.h"
#include "test/support/certs.h"
#include "test/support/loopback.h"
#include "test/support/run_until.h"

using namespace aiorpc;
using namespace aiorpc::rpc;
using aiorpc::test::runUntil;

namespace {

void idle(core::Loop& loop, double s) {
  runUntil(
      loop, [] { return false; }, s);
}

// A port nobody listens on (bound, then closed): connects are refused at once.
core::Address deadPort() {
  core::Loop loop;
  Service s("x");
  Server srv(loop, s);
  return *srv.listen("127.0.0.1:0");
}

ClientOptions deadFast() {
  ClientOptions o;
  o.dead_after = 0;  // one failed connect: dead, later calls refused at once
  return o;
}

// Something a callback holds whose destructor reads its owner's memory (as the proxy's pooled
// calls do): a freed owner makes ASan fail the test.
struct Tally {
  int destroyed = 0;
};
struct Held {
  Tally* t;
  explicit Held(Tally* x) : t(x) {}
  Held(Held&& o) noexcept : t(std::exchange(o.t, nullptr)) {}
  ~Held() {
    if (t) ++t->destroyed;
  }
};

// A connected pair of sockets in a raw test peer, for writing requests byte-exact.
struct RawPeer {
  int fd = -1;
  explicit RawPeer(const core::Address& a) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(::connect(fd, a.sockaddr_ptr(), a.length()) == 0);
  }
  ~RawPeer() { ::close(fd); }
  void send(const std::string& bytes) const {
    REQUIRE(::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
  }
};

std::string request(uint32_t msgid, std::string_view method) {
  std::string out;
  Packer p(out);
  p.array(4);
  p.uinteger(0);
  p.uinteger(msgid);
  p.str(method);
  p.array(0);
  return out;
}

std::string notification(std::string_view method) {
  std::string out;
  Packer p(out);
  p.array(3);
  p.uinteger(2);
  p.str(method);
  p.array(0);
  return out;
}

// A server of `svc` on a loopback port.
struct Serving {
  Server srv;
  core::Address addr;
  Serving(core::Loop& loop, Service& svc) : srv(loop, svc), addr(*srv.listen("127.0.0.1:0")) {}
};

// Scenario 5's handler: reads nothing after its sleep ends (a static, not a capture).
int g_after_sleep = 0, g_broken = 0;

}  // namespace

TEST_SUITE("ownership") {
  TEST_CASE("a Client destroyed after a call it refused at once: the callback never runs") {
    core::Loop loop;
    Tally tally;
    bool ran = false;
    auto c = std::make_unique<Client>(loop, deadPort(), deadFast());
    // The first call's connect is refused: the client counts as dead...
    auto first = c->call("x");
    REQUIRE(runUntil(loop, [&] { return first.done(); }));
    REQUIRE(c->dead());
    // ...so the next one is refused at once, its outcome due from the loop.
    c->send(
        "x", [](Packer& p) { p.nil(); }, [&ran, h = Held(&tally)](Response&) { ran = true; });
    c.reset();
    CHECK(tally.destroyed == 1);  // dropped with the client, while what it holds is alive
    idle(loop, 0.1);
    CHECK_FALSE(ran);
  }

  TEST_CASE("a refused call's handle cancels it; cancel() after its Loop and Client are gone") {
    auto loop = std::make_unique<core::Loop>();
    auto c = std::make_unique<Client>(*loop, deadPort(), deadFast());
    auto first = c->call("x");
    REQUIRE(runUntil(*loop, [&] { return first.done(); }));
    bool ran = false;
    CallHandle h = c->send(
        "x", [](Packer& p) { p.nil(); }, [&](Response&) { ran = true; });
    CHECK(h.cancel());
    CHECK_FALSE(h.cancel());
    idle(*loop, 0.05);
    CHECK_FALSE(ran);
    CallFuture f = c->call("x");  // refused at once too
    c.reset();
    loop.reset();
    CHECK_FALSE(f.cancel());  // reads neither the dead loop nor the dead client
  }

  TEST_CASE("calls failed by close() wait in the client: destroyed uncalled with it") {
    core::Loop loop;
    Service svc("s");
    svc.def("slow", [&loop]() -> core::Task<int> {
      co_await loop.sleep(5);
      co_return 1;
    });
    Serving s(loop, svc);
    Tally tally;
    int ran = 0;
    auto c = std::make_unique<Client>(loop, s.addr);
    for (int i = 0; i < 3; ++i)
      c->send(
          "slow", [](Packer& p) { p.nil(); }, [&ran, h = Held(&tally)](Response&) { ++ran; });
    REQUIRE(runUntil(loop, [&] { return s.srv.stats().requests == 3; }));
    c->close();  // the three fail from the loop...
    c.reset();   // ...unless the client goes first: then they never run
    CHECK(tally.destroyed == 3);
    idle(loop, 0.1);
    CHECK(ran == 0);
  }

  TEST_CASE("a handler destroys its own Server: sync, Reply<T>, notification, coroutine") {
    for (std::string method : {"sync", "reply", "note", "coro"}) {
      CAPTURE(method);
      core::Loop loop;
      Service svc("s");
      std::unique_ptr<Server> srv;
      int calls = 0;
      svc.def("sync", [&] {
        ++calls;
        srv.reset();
        return 1;
      });
      svc.def("reply", [&](Reply<int> r) {
        ++calls;
        srv.reset();
        r(1);  // the connection has gone: dropped
      });
      svc.def("note", [&] {
        ++calls;
        srv.reset();
      });
      svc.def("coro", [&]() -> core::Task<int> {
        ++calls;
        srv.reset();
        co_return 1;
      });
      srv = std::make_unique<Server>(loop, svc);
      auto addr = *srv->listen("127.0.0.1:0");
      RawPeer peer(addr);
      // Three requests in one write: the ones after the first must not be served by a freed
      // server (the old code went on reading the freed endpoint's decoder).
      std::string one = method == "note" ? notification(method) : request(1, method);
      peer.send(one + one + one);
      REQUIRE(runUntil(loop, [&] { return !srv; }));
      idle(loop, 0.05);
      CHECK(calls == 1);
      char buf[64];
      ssize_t n = ::recv(peer.fd, buf, sizeof buf, 0);  // closed, nothing answered
      CHECK(n <= 0);
    }
  }

  TEST_CASE("a Server destroyed while a handler sleeps: the sleep ends, nothing resumes later") {
    core::Loop loop;
    auto svc = std::make_unique<Service>("s");
    g_after_sleep = g_broken = 0;
    svc->def("nap", [&loop]() -> core::Task<int> {
      try {
        co_await loop.sleep(0.3);
      } catch (const core::BrokenPromise&) {
        ++g_broken;  // a static: the lambda (in the Service) is gone by now
        throw;
      }
      ++g_after_sleep;
      co_return 1;
    });
    auto srv = std::make_unique<Server>(loop, *svc);
    auto addr = *srv->listen("127.0.0.1:0");
    Client c(loop, addr);
    auto f = c.call("nap");
    REQUIRE(runUntil(loop, [&] { return srv->stats().requests == 1; }));
    srv.reset();  // destroying ends what closing would have ended...
    svc.reset();  // ...so the Service may go too
    REQUIRE(runUntil(loop, [&] { return f.done(); }));
    CHECK(f.failed());  // the client's connection closed
    REQUIRE(runUntil(
        loop, [] { return g_broken == 1; }, 0.2));  // well before the 0.3 s
    idle(loop, 0.4);
    CHECK(g_after_sleep == 0);  // the sleep never completed into the freed service
  }

  TEST_CASE("a reply's callback destroys the Client; later replies in the same read: nothing") {
    core::Loop loop;
    Service svc("s");
    svc.def(
        "echo", [](int x) { return x; }, arg("x"));
    Serving s(loop, svc);
    Tally tally;
    int ran = 0;
    auto c = std::make_unique<Client>(loop, s.addr);
    for (int i = 0; i < 5; ++i)
      c->send(
          "echo", [&](Packer& p) { p.pack(std::tuple{i}); },
          [&, h = Held(&tally)](Response&) {
            ++ran;
            c.reset();  // from inside its own callback
          });
    REQUIRE(runUntil(loop, [&] { return !c; }));
    idle(loop, 0.05);
    CHECK(ran == 1);
    CHECK(tally.destroyed == 5);
  }

  TEST_CASE("over TLS: a handler destroys its Server, a reply's callback its Client") {
    using Side = core::TlsContext::Side;
    auto stls = test::tlsContext(Side::kServer, "server", "ca.pem");  // mutual
    ClientOptions co;
    co.tls = test::tlsContext(Side::kClient, "client", "ca.pem");
    core::Loop loop;
    Service svc("s");
    std::unique_ptr<Server> srv;
    int served = 0;
    svc.def("die", [&] {
      ++served;
      srv.reset();  // from inside its own handler, mid-record
      return 1;
    });
    svc.def(
        "echo", [](int x) { return x; }, arg("x"));
    srv = std::make_unique<Server>(loop, svc);
    auto addr = *srv->listen("127.0.0.1:0", stls);
    Tally tally;
    int ran = 0;
    auto c = std::make_unique<Client>(loop, "tls://127.0.0.1:" + std::to_string(addr.port()), co);
    for (int i = 0; i < 5; ++i)
      c->send(
          "echo", [&](Packer& p) { p.pack(std::tuple{i}); },
          [&, h = Held(&tally)](Response&) {
            ++ran;
            c.reset();  // from inside its own callback, more replies in the same record
          });
    REQUIRE(runUntil(loop, [&] { return !c; }));
    idle(loop, 0.05);
    CHECK(ran == 1);
    CHECK(tally.destroyed == 5);
    Client c2(loop, "tls://127.0.0.1:" + std::to_string(addr.port()), co);
    auto f1 = c2.call("die"), f2 = c2.call("die"), f3 = c2.call("die");
    REQUIRE(runUntil(loop, [&] { return !srv && f3.done(); }));
    CHECK(served == 1);
    CHECK(f1.failed());
  }

  TEST_CASE("a drain answers the requests read before it, also those held for a slow reader") {
    core::Loop loop;
    Service svc("s");
    std::string big(256 * 1024, 'x');
    svc.def("big", [&] { return big; });
    ServerOptions so;
    so.high_water = 1 << 20;  // ~4 replies, then the rest wait for the reader
    so.low_water = 256 << 10;
    Server srv(loop, svc, so);
    auto addr = *srv.listen("127.0.0.1:0");
    RawPeer peer(addr);
    int rcv = 64 * 1024;
    ::setsockopt(peer.fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
    constexpr int kRequests = 60;
    std::string all;
    for (int i = 0; i < kRequests; ++i) all += request(i, "big");
    peer.send(all);
    // The server reads them all, answers a few, and holds the rest back (nobody reads).
    REQUIRE(runUntil(loop, [&] { return srv.stats().requests >= 3; }));
    idle(loop, 0.2);
    CHECK(srv.stats().requests < kRequests);
    bool drained = false;
    srv.drain([&] { drained = true; });
    // Now read everything: every request read before the drain gets its real reply.
    std::string got;
    Decoder dec(Limits{});
    int replies = 0, unavailable = 0;
    REQUIRE(runUntil(
        loop,
        [&] {
          auto span = dec.buffer(64 * 1024);
          ssize_t n = ::recv(peer.fd, span.data(), span.size(), MSG_DONTWAIT);
          if (n > 0) {
            dec.feed(static_cast<size_t>(n));
            Object m;
            while (dec.next(m) == Decoder::Status::kMessage) {
              ++replies;
              if (!m[2].isNil()) ++unavailable;
            }
          }
          return n == 0 || replies == kRequests;
        },
        20));
    CHECK(replies == kRequests);
    CHECK(unavailable == 0);
    REQUIRE(runUntil(loop, [&] { return drained; }));
  }
}
