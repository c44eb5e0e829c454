// Client: pipelining, timeouts, late replies, disconnect semantics, dead detection; Server and
// Service through the client; coroutine handlers calling downstream services.
#include "aiorpc/rpc/client.h"

#include <doctest/doctest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>

#include "aiorpc/core/listener.h"
#include "aiorpc/rpc/server.h"
#include "test/support/core_peer.h"
#include "test/support/ended.h"
#include "test/support/run_until.h"

using aiorpc::test::St;
using aiorpc::test::st;

using namespace aiorpc;
using namespace aiorpc::rpc;
using aiorpc::test::Recorder;
using aiorpc::test::runUntil;

namespace {

// A scripted peer: records what it receives, sends what the test says.
struct RawPeer {
  core::Loop& loop;
  core::Listener listener;
  std::vector<std::unique_ptr<Recorder>> conns;
  core::Address addr;
  explicit RawPeer(core::Loop& l)
      : loop(l), listener(l, [this](core::Fd fd, const core::Address&) {
          conns.push_back(std::make_unique<Recorder>(loop, std::move(fd)));
        }) {
    addr = *listener.listen(*core::Address::parse("127.0.0.1:0"));
  }
  // Messages received so far on connection i.
  std::vector<Value> received(size_t i = 0) {
    std::vector<Value> out;
    if (i >= conns.size()) return out;
    std::string_view d = conns[i]->data;
    size_t off = 0;
    while (off < d.size()) {
      msgpack_zone* z = msgpack_zone_new(4096);
      msgpack_object o;
      size_t before = off;
      if (msgpack_unpack(d.data(), d.size(), &off, z, &o) != MSGPACK_UNPACK_SUCCESS &&
          off == before) {
        msgpack_zone_free(z);
        break;
      }
      out.push_back(Value::copyOf(o));
      msgpack_zone_free(z);
      if (off == before) break;
    }
    return out;
  }
};

struct Seen {
  bool done = false;
  St status{};
  std::string text;
};

ResponseFn record(Seen& o) {
  return [&o](Response& r) {
    o.done = true;
    o.status = st(r);
    o.text = st(r) == St::kOk ? r.result.toText() : r.message + r.error.toText();
  };
}

Service demoService(core::Loop& loop) {
  Service s("t");
  s.def(
      "add", [](int a, int b) { return a + b; }, arg("a"), arg("b") = 10);
  s.def("fail", []() -> int { throw std::runtime_error("it broke"); });
  s.def(
      "sleep",
      [&loop](double sec) -> core::Task<std::string> {
        co_await loop.sleep(sec);
        co_return "slept";
      },
      arg("sec"));
  s.def(
      "later",
      [&loop](int x, Reply<int> reply) {
        loop.after(0.01, [x, reply = std::move(reply)]() mutable { reply(x * 2); });
      },
      arg("x"));
  s.def(
      "whoami", [](const Context& ctx) { return ctx("ident"); }, arg("ctx"));
  s.def(
      "types",
      [](std::string_view s, Bin b, std::optional<int> o, std::vector<double> v) {
        return std::tuple{s, b, o, v};
      },
      arg("s"), arg("b"), arg("o"), arg("v"));
  return s;
}

}  // namespace

TEST_SUITE("client") {
  TEST_CASE("a foreign error object passed on is counted as ApplicationError in \\0stats") {
    core::Loop loop;
    Service svc("relay");
    svc.def(
        "relay", [](Object err, Reply<Object> reply) { reply.raw().errorObject(err); }, arg("err"));
    Server server(loop, svc);
    auto bound = server.listen("127.0.0.1:0");
    REQUIRE(bound.ok());
    Client c(loop, *bound);
    auto python = c.call("relay", std::tuple{"<class 'ValueError'>", "bad"});  // foreign
    auto ours = c.call("relay", std::tuple{"ServiceUnavailable", "draining"});
    auto odd = c.call("relay", 42);
    REQUIRE(runUntil(loop, [&] { return python.done() && ours.done() && odd.done(); }));
    const auto& e = server.stats().errors;
    CHECK(e[static_cast<size_t>(Kind::kApplication)] == 2);
    CHECK(e[static_cast<size_t>(Kind::kServiceUnavailable)] == 1);
    CHECK(e[static_cast<size_t>(Kind::kOther)] == 0);  // "Error" is no kind of SPEC §1
    CHECK(countedKind(Value::copyOf(Object()).view()) == Kind::kApplication);
  }

  TEST_CASE("a downstream error a handler lets escape is its caller's ApplicationError") {
    // SPEC §2: the caller's own call did not time out, its handler's downstream call did. A kind
    // the handler chooses on purpose (a fresh RpcError) goes through.
    core::Loop loop;
    Service back_svc = demoService(loop);
    Server back(loop, back_svc);
    auto back_addr = back.listen("127.0.0.1:0");
    REQUIRE(back_addr.ok());
    ClientOptions quick;
    quick.timeout = 0.05;
    Client down(loop, *back_addr, quick);
    Service front_svc("front");
    front_svc.def("relay_sleep", [&]() -> core::Task<std::string> {
      Value v = co_await down.call("sleep", 5.0);  // times out after 50 ms
      co_return std::string(v.view().str());
    });
    front_svc.def("relay_missing", [&]() -> core::Task<int> {
      co_await down.call("no_such_method");
      co_return 0;
    });
    front_svc.def("on_purpose", [&]() -> core::Task<int> {
      try {
        co_await down.call("sleep", 5.0);
      } catch (const RpcError& e) {
        throw RpcError(Kind::kServiceUnavailable, "backend slow: " + e.message());
      }
      co_return 0;
    });
    front_svc.def("client_kinds", [](Reply<int> reply) {
      reply.error(Kind::kNotSent, "never left");  // a client-side kind: not a wire kind
    });
    Server front(loop, front_svc);
    auto front_addr = front.listen("127.0.0.1:0");
    REQUIRE(front_addr.ok());
    Client c(loop, *front_addr);
    auto timed = c.call("relay_sleep");
    auto missing = c.call("relay_missing");
    auto chosen = c.call("on_purpose");
    auto kinds = c.call("client_kinds");
    REQUIRE(runUntil(
        loop, [&] { return timed.done() && missing.done() && chosen.done() && kinds.done(); }));
    CHECK_THROWS_WITH_AS(kinds.get(), "ConnectionError: never left", RpcError);
    CHECK_THROWS_WITH_AS(
        timed.get(), doctest::Contains("ApplicationError: downstream call failed: TimeoutError"),
        RpcError);
    CHECK_THROWS_WITH_AS(
        missing.get(), doctest::Contains("ApplicationError: downstream call failed: NoMethodError"),
        RpcError);
    CHECK_THROWS_WITH_AS(chosen.get(), doctest::Contains("ServiceUnavailable: backend slow"),
                         RpcError);
    CHECK(front.stats().errors[static_cast<size_t>(Kind::kApplication)] == 2);
    CHECK(front.stats().errors[static_cast<size_t>(Kind::kTimeout)] == 0);
  }

  TEST_CASE("a Context kept across co_await outlives its connection (no pointer into it)") {
    core::Loop loop;
    Service svc("ctx");
    std::string seen = "not yet";
    svc.def(
        "later_peer",
        [&](Context ctx) -> core::Task<bool> {  // kept by value, as embedding.md advises
          // waits on something the connection does not own (a downstream call, say)
          core::Promise<void> p;
          auto later = p.future();
          loop.after(0.05, [p = std::move(p)]() mutable { p.setValue(); });
          co_await later;
          Value v = ctx("peername");  // the connection has been reset meanwhile
          seen = v.view().isArray() ? std::string(v.view()[0].str()) : "nil";
          co_return true;
        },
        arg("ctx"));
    Server server(loop, svc);
    auto bound = server.listen("127.0.0.1:0");
    REQUIRE(bound.ok());
    {
      // A raw peer that sends the request, then resets (SO_LINGER 0): the server closes the
      // connection at once, with the handler still asleep.
      int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      REQUIRE(::connect(fd, bound->sockaddr_ptr(), bound->length()) == 0);
      std::string req = packToString(std::tuple{0, 1, "later_peer", nullptr});
      REQUIRE(::write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size()));
      REQUIRE(runUntil(loop, [&] { return server.stats().requests == 1; }));
      linger lg{1, 0};
      ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
      ::close(fd);
    }
    REQUIRE(runUntil(loop, [&] { return server.connectionCount() == 0; }));
    REQUIRE(runUntil(loop, [&] { return seen != "not yet"; }));
    CHECK(seen == "127.0.0.1");  // read from the Context's own copy, under ASan too
  }

  TEST_CASE("calls through a real server: values, errors, async handlers, context") {
    core::Loop loop;
    Service svc = demoService(loop);
    Server server(loop, svc);
    auto bound = server.listen("127.0.0.1:0");
    REQUIRE(bound.ok());
    Client c(loop, *bound);
    auto f1 = c.call("add", 1, 2);
    auto f2 = c.call("add", kw("a", 5));
    auto f3 = c.call("fail");
    auto f4 = c.call("sleep", 0.02);
    auto f5 = c.call("later", 21);
    auto f6 = c.request("whoami", std::map<std::string, std::string>{{"__ident__", "me"}});
    auto f7 = c.call("add", "x", 1);
    auto f8 = c.call("types", "s", Bin{"b"}, nullptr, std::vector<int>{1, 2});
    auto f9 = c.call("nope");
    CHECK_FALSE(f1.done());  // never completes inside call()
    REQUIRE(runUntil(loop, [&] { return f9.done() && f4.done() && f5.done(); }));
    CHECK(f1.get().view().toText() == "3");
    CHECK(f2.get().view().toText() == "15");
    CHECK_THROWS_WITH_AS(f3.get(), "ApplicationError: it broke", RpcError);
    CHECK(f4.get().view().toText() == "\"slept\"");
    CHECK(f5.get().view().toText() == "42");
    CHECK(f6.get().view().toText() == "\"me\"");
    CHECK_THROWS_WITH_AS(f7.get(), "ArgumentError: argument 'a': expected int, got str", RpcError);
    CHECK(f8.get().view().toText() == "[\"s\", b\"b\", nil, [1, 2]]");
    CHECK_THROWS_WITH_AS(f9.get(), "NoMethodError: no method \"nope\"", RpcError);
    CHECK(server.stats().requests == 9);
  }

  TEST_CASE("timeout fails the call, the connection stays, the late reply is dropped") {
    core::Loop loop;
    RawPeer peer(loop);
    ClientOptions o;
    o.timeout = 0.05;
    Seen a, b;
    Client c(loop, peer.addr, o);
    c.send(
        "slow", [](Packer& p) { p.nil(); }, record(a));
    REQUIRE(runUntil(loop, [&] { return a.done; }));
    CHECK(a.status == St::kTimeout);
    CHECK(c.connected());
    // the peer answers late: dropped and counted; the next call still works
    peer.conns[0]->conn->send(packToString(std::tuple{1, 0, nullptr, "late"}));
    REQUIRE(runUntil(loop, [&] { return c.lateReplies() == 1; }));
    c.send(
        "next", [](Packer& p) { p.nil(); }, record(b));
    REQUIRE(runUntil(loop, [&] { return peer.received().size() == 2; }));
    auto id = peer.received()[1].view()[1].asUint();
    peer.conns[0]->conn->send(packToString(std::tuple{1, *id, nullptr, "ok"}));
    REQUIRE(runUntil(loop, [&] { return b.done; }));
    CHECK(b.status == St::kOk);
    CHECK(b.text == "\"ok\"");
  }

  TEST_CASE("mixed timeouts fire in deadline order; answered calls take their deadline along") {
    core::Loop loop;
    RawPeer peer(loop);
    Client c(loop, peer.addr);
    std::vector<int> order;
    auto timed = [&](int tag, double timeout) {
      c.send(
          "m", [](Packer& p) { p.nil(); },
          [&order, tag](Response& r) {
            if (r.type == Ended::kFailure && r.kind == Kind::kTimeout) order.push_back(tag);
          },
          timeout);
    };
    // Made in this order; an answered one between them, in the middle of the deadline list.
    timed(3, 0.30);
    timed(1, 0.10);
    Seen answered;
    c.send(
        "m", [](Packer& p) { p.nil(); }, record(answered), 0.15);
    timed(4, 0.40);
    timed(2, 0.20);
    REQUIRE(runUntil(loop, [&] { return peer.received().size() == 5; }));
    auto id = peer.received()[2].view()[1].asUint();
    peer.conns[0]->conn->send(packToString(std::tuple{1, *id, nullptr, "ok"}));
    REQUIRE(runUntil(loop, [&] { return order.size() == 4; }));
    CHECK(order == std::vector<int>{1, 2, 3, 4});
    CHECK(answered.status == St::kOk);
    CHECK(c.inFlight() == 0);
  }

  TEST_CASE("replies out of order are matched by msgid") {
    core::Loop loop;
    RawPeer peer(loop);
    Seen r[3];
    Client c(loop, peer.addr);
    for (auto& o : r)
      c.send(
          "m", [](Packer& p) { p.nil(); }, record(o));
    REQUIRE(runUntil(loop, [&] { return peer.received().size() == 3; }));
    for (uint64_t id : {2, 0, 1})
      peer.conns[0]->conn->send(packToString(std::tuple{1, id, nullptr, id * 10}));
    REQUIRE(runUntil(loop, [&] { return r[0].done && r[1].done && r[2].done; }));
    CHECK(r[0].text == "0");
    CHECK(r[1].text == "10");
    CHECK(r[2].text == "20");
  }

  TEST_CASE("peer closes with calls in flight: every pending call fails once") {
    core::Loop loop;
    RawPeer peer(loop);
    std::vector<Seen> out(50);
    Seen again;  // outcomes outlive the client, which fails pending calls when destroyed
    Client c(loop, peer.addr);
    for (auto& o : out)
      c.send(
          "m", [](Packer& p) { p.nil(); }, record(o));
    REQUIRE(runUntil(loop, [&] { return peer.received().size() == 50; }));
    peer.conns[0]->conn->close();
    REQUIRE(runUntil(loop, [&] {
      for (auto& o : out)
        if (!o.done) return false;
      return true;
    }));
    for (auto& o : out) CHECK(o.status == St::kConnection);
    CHECK(c.inFlight() == 0);
    // the next call reconnects
    c.send(
        "m", [](Packer& p) { p.nil(); }, record(again));
    REQUIRE(runUntil(loop, [&] { return peer.conns.size() == 2 && peer.received(1).size() == 1; }));
  }

  TEST_CASE("calls that never left are told apart: not sent") {
    core::Loop loop;
    core::Address nowhere;
    {
      RawPeer gone(loop);
      nowhere = gone.addr;
    }  // closed: connects are refused
    Client c(loop, nowhere);
    Seen a, b;
    c.send(
        "m", [](Packer& p) { p.nil(); }, record(a));
    c.send(
        "m", [](Packer& p) { p.nil(); }, record(b));
    REQUIRE(runUntil(loop, [&] { return a.done && b.done; }));
    CHECK(a.status == St::kNotSent);
    CHECK(b.status == St::kNotSent);
  }

  TEST_CASE("dead after more than 3 failed connects: fails fast, never inside send()") {
    core::Loop loop;
    core::Address nowhere;
    {
      RawPeer gone(loop);
      nowhere = gone.addr;
    }
    ClientOptions o;
    o.dead_for = 60;
    Client c(loop, nowhere, o);
    for (int i = 0; i < 4; ++i) {
      Seen x;
      c.send(
          "m", [](Packer& p) { p.nil(); }, record(x));
      REQUIRE(runUntil(loop, [&] { return x.done; }));
    }
    CHECK(c.dead());
    Seen fast;
    c.send(
        "m", [](Packer& p) { p.nil(); }, record(fast));
    CHECK_FALSE(fast.done);
    REQUIRE(runUntil(
        loop, [&] { return fast.done; }, 1));
    CHECK(fast.status == St::kNotSent);
    CHECK(fast.text.find("dead") != std::string::npos);
  }

  TEST_CASE("a client answers requests with NoMethodError and ignores notifications") {
    core::Loop loop;
    RawPeer peer(loop);
    Seen a;
    Client c(loop, peer.addr);
    c.send(
        "m", [](Packer& p) { p.nil(); }, record(a));
    REQUIRE(runUntil(loop, [&] { return peer.conns.size() == 1; }));
    peer.conns[0]->conn->send(packToString(std::tuple{2, "event", nullptr}) +
                              packToString(std::tuple{0, 77, "ask", nullptr}));
    REQUIRE(runUntil(loop, [&] { return peer.received().size() == 2; }));
    auto msgs = peer.received();
    auto reply = msgs[1].view();
    CHECK(reply.toText().find("[1, 77, [\"NoMethodError\"") == 0);
    CHECK(c.connected());
  }

  TEST_CASE("msgids are distinct in flight; a reused slot's late reply matches nothing") {
    core::Loop loop;
    RawPeer peer(loop);
    ClientOptions o;
    o.timeout = 0.05;
    Seen a, b, c1;
    Client c(loop, peer.addr, o);
    c.send(
        "m", [](Packer& p) { p.nil(); }, record(a));
    c.send(
        "m", [](Packer& p) { p.nil(); }, record(b), 10);
    REQUIRE(runUntil(loop, [&] { return peer.received().size() == 2; }));
    auto ida = peer.received()[0].view()[1].asUint();
    auto idb = peer.received()[1].view()[1].asUint();
    CHECK(ida == 0u);
    CHECK(idb == 1u);
    REQUIRE(runUntil(loop, [&] { return a.done; }));  // a times out; its slot is free again
    CHECK(a.status == St::kTimeout);
    c.send(
        "m", [](Packer& p) { p.nil(); }, record(c1), 10);
    REQUIRE(runUntil(loop, [&] { return peer.received().size() == 3; }));
    auto idc = peer.received()[2].view()[1].asUint();
    REQUIRE(idc);
    CHECK(*idc != *ida);
    CHECK(*idc != *idb);
    CHECK(c.inFlight() == 2);
    // the late reply to a's id must not complete c1, which took a's slot
    peer.conns[0]->conn->send(packToString(std::tuple{1, *ida, nullptr, "late"}));
    REQUIRE(runUntil(loop, [&] { return c.lateReplies() == 1; }));
    CHECK_FALSE(c1.done);
    peer.conns[0]->conn->send(packToString(std::tuple{1, *idc, nullptr, "c"}));
    peer.conns[0]->conn->send(packToString(std::tuple{1, *idb, nullptr, "b"}));
    REQUIRE(runUntil(loop, [&] { return b.done && c1.done; }));
    CHECK(c1.text == "\"c\"");
    CHECK(b.text == "\"b\"");
    CHECK(c.inFlight() == 0);
  }
}

TEST_SUITE("client raw results") {
  TEST_CASE("results and errors arrive as the peer's bytes, split anywhere; msgid forms") {
    core::Loop loop;
    RawPeer peer(loop);
    ClientOptions o;
    o.raw_results = true;
    Client c(loop, peer.addr, o);
    struct Got {
      bool done = false;
      St status{};
      std::string raw, raw_error, error;
    } got[4];
    for (auto& g : got)
      c.send(
          "m", [](Packer& p) { p.nil(); },
          [&g](Response& r) {
            g.done = true;
            g.status = st(r);
            g.raw = std::string(r.raw_result);
            g.raw_error = std::string(r.raw_error);
            CHECK(r.error.isNil());  // an error comes as its bytes; outcome() decodes it
            if (r.type == Ended::kPeerError) g.error = r.outcome().value.view().toText();
            CHECK(r.result.isNil());
          });
    REQUIRE(runUntil(loop, [&] { return peer.received().size() == 4; }));
    std::string map = packToString(std::map<std::string, std::vector<int>>{{"a", {1, 2}}});
    std::string bytes = std::string("\x94\x01\xcc\x02\xc0", 5) + map +        // id 2, uint8 form
                        std::string("\x94\x01\xcd\x00\x01", 5) +              // id 1, uint16 form
                        packToString(std::tuple{"X", "boom"}) + "\xc0" +      // an error
                        std::string("\x94\x01\xce\x00\x00\x00\x00\xc0", 8) +  // id 0, uint32
                        packToString("ok") +                                  // a str
                        packToString(std::tuple{1, 3, nullptr, 4.5});         // id 3, fixint
    // Cut mid-header, mid-error and mid-payload: each piece is its own read.
    for (size_t at = 0, k = 0; at < bytes.size(); ++k) {
      size_t n =
          std::min<size_t>(std::vector<size_t>{3, 9, 11, 1, 7, 100}[k % 6], bytes.size() - at);
      peer.conns[0]->conn->send(bytes.substr(at, n));
      at += n;
      runUntil(
          loop, [] { return false; }, 0.005);
    }
    REQUIRE(
        runUntil(loop, [&] { return got[0].done && got[1].done && got[2].done && got[3].done; }));
    CHECK(got[0].status == St::kOk);
    CHECK(got[0].raw == packToString("ok"));
    CHECK(got[1].status == St::kError);
    CHECK(got[1].raw_error == packToString(std::tuple{"X", "boom"}));
    CHECK(got[1].error == "[\"X\", \"boom\"]");
    CHECK(got[2].raw == map);
    CHECK(got[3].raw == packToString(4.5));
    CHECK(c.inFlight() == 0);
  }

  TEST_CASE("a request from the peer is refused; a malformed frame closes and fails calls once") {
    core::Loop loop;
    RawPeer peer(loop);
    ClientOptions o;
    o.raw_results = true;
    Client c(loop, peer.addr, o);
    Seen a;
    c.send(
        "m", [](Packer& p) { p.nil(); }, record(a));
    REQUIRE(runUntil(loop, [&] { return peer.received().size() == 1; }));
    peer.conns[0]->conn->send(packToString(std::tuple{0, 9, "hello", nullptr}));
    peer.conns[0]->conn->send(packToString(std::tuple{1, "not-ours", nullptr, 1}));  // late
    REQUIRE(runUntil(loop, [&] { return peer.received().size() == 2; }));
    auto answer = peer.received()[1];
    CHECK(answer.view().toText().find("[1, 9, [\"NoMethodError\"") == 0);
    CHECK(c.lateReplies() == 1);
    CHECK_FALSE(a.done);
    peer.conns[0]->conn->send(std::string("\xc1", 1));  // not msgpack
    REQUIRE(runUntil(loop, [&] { return a.done; }));
    CHECK(a.status == St::kConnection);
  }
}

TEST_SUITE("pool") {
  TEST_CASE("one client per endpoint; idle connections are closed") {
    core::Loop loop;
    Service svc("s");
    svc.def("one", [] { return 1; });
    Server server(loop, svc);
    auto bound = server.listen("127.0.0.1:0");
    ClientPool pool(loop, {}, 0.1);
    Client& a = pool.get(*bound);
    Client& b = pool.get(bound->toString());
    CHECK(&a == &b);
    CHECK(pool.size() == 1);
    auto f = a.call("one");
    REQUIRE(runUntil(loop, [&] { return f.done(); }));
    CHECK(a.connected());
    REQUIRE(runUntil(
        loop, [&] { return !a.connected(); }, 3));
    auto g = a.call("one");  // reconnects
    REQUIRE(runUntil(loop, [&] { return g.done(); }));
    CHECK(g.get().view().toText() == "1");
  }
}
