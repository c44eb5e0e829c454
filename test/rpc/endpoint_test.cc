// Endpoint: one connection serving and calling in both directions; lifetime rules (callbacks
// never inside destructors or the call that started them; objects found by id).
#include "aiorpc/rpc/endpoint.h"

#include <doctest/doctest.h>

#include <memory>
#include <string>
#include <vector>

#include "aiorpc/core/listener.h"
#include "aiorpc/rpc/client.h"
#include "aiorpc/rpc/server.h"
#include "test/support/ended.h"
#include "test/support/loopback.h"
#include "test/support/run_until.h"

using aiorpc::test::St;
using aiorpc::test::st;

using namespace aiorpc;
using namespace aiorpc::rpc;
using aiorpc::test::Hanging;
using aiorpc::test::runUntil;

namespace {

void idle(core::Loop& loop, double s) {
  runUntil(
      loop, [] { return false; }, s);
}

// A server whose "greet" asks its caller back for its name over the same connection.
struct CallingBack {
  core::Loop& loop;
  Service svc{"front"};
  std::unique_ptr<Server> server;
  core::Address addr;
  std::vector<uint64_t> sessions;
  explicit CallingBack(core::Loop& l) : loop(l) {
    svc.def(
        "greet",
        [this](Context ctx, int n) -> core::Task<std::string> {
          sessions.push_back(ctx.session());
          Endpoint* peer = server->peer(ctx.session());
          if (!peer) throw RpcError(Kind::kConnection, "caller gone");
          Value name = co_await peer->request("name", std::tuple{n});
          std::string s;
          std::string why;
          REQUIRE(decode(name.view(), s, why));
          co_return "hello, " + s;
        },
        arg("ctx"), arg("n"));
    server = std::make_unique<Server>(loop, svc);
    addr = *server->listen("127.0.0.1:0");
  }
};

// "sleep": answers 1 after `sec` seconds.
Service sleepy(core::Loop& loop) {
  Service s("s");
  s.def(
      "sleep",
      [&loop](double sec) -> core::Task<int> {
        co_await loop.sleep(sec);
        co_return 1;
      },
      arg("sec"));
  return s;
}

Service clientSide() {
  Service s("back");
  s.def(
      "name", [](int n) { return "zoe" + std::to_string(n); }, arg("n"));
  return s;
}

}  // namespace

TEST_SUITE("endpoint") {
  TEST_CASE("one connection serves and calls both ways: the server calls its client back") {
    core::Loop loop;
    CallingBack front(loop);
    Service back = clientSide();
    Client c(loop, front.addr);
    c.serve(back);
    // Pipelined both ways: 200 calls out, each answered after a call back in.
    std::vector<core::Future<Value>> calls;
    for (int i = 0; i < 200; ++i) calls.push_back(c.call("greet", i));
    REQUIRE(runUntil(loop, [&] {
      for (auto& f : calls)
        if (!f.done()) return false;
      return true;
    }));
    for (int i = 0; i < 200; ++i) {
      REQUIRE_FALSE(calls[i].failed());
      CHECK(calls[i].get().view().toText() == "\"hello, zoe" + std::to_string(i) + "\"");
    }
    CHECK(front.server->stats().requests == 200);
    // every call came on the one connection
    for (uint64_t s : front.sessions) CHECK(s == front.sessions.front());
    CHECK(front.server->connectionCount() == 1);
  }

  TEST_CASE("a call back to a client that serves nothing: its caller sees why") {
    core::Loop loop;
    CallingBack front(loop);
    Client c(loop, front.addr);  // no serve(): requests are answered NoMethodError
    auto f = c.call("greet", 1);
    REQUIRE(runUntil(loop, [&] { return f.done(); }));
    REQUIRE(f.failed());
    CHECK_THROWS_WITH_AS(
        f.get(),
        "ApplicationError: downstream call failed: NoMethodError: this peer serves no methods",
        RpcError);
  }

  TEST_CASE("Server::peer finds a connection by id, and nothing once it has gone") {
    core::Loop loop;
    Service svc("s");
    uint64_t seen = 0;
    svc.def(
        "id",
        [&](const Context& ctx) {
          seen = ctx.session();
          return seen;
        },
        arg("ctx"));
    Server server(loop, svc);
    auto addr = *server.listen("127.0.0.1:0");
    auto c = std::make_unique<Client>(loop, addr);
    auto f = c->call("id");
    REQUIRE(runUntil(loop, [&] { return f.done(); }));
    REQUIRE(seen != 0);
    CHECK(server.peer(seen) != nullptr);
    CHECK(server.peer(seen + 1000) == nullptr);
    c.reset();
    REQUIRE(runUntil(loop, [&] { return server.peer(seen) == nullptr; }));
  }

  TEST_CASE("a client destroyed inside a reply's callback: the replies after it go nowhere") {
    for (bool raw : {false, true}) {
      CAPTURE(raw);
      core::Loop loop;
      Service svc("s");
      svc.def(
          "add", [](int a, int b) { return a + b; }, arg("a"), arg("b"));
      Server server(loop, svc);
      auto addr = *server.listen("127.0.0.1:0");
      ClientOptions o;
      o.raw_results = raw;
      auto c = std::make_unique<Client>(loop, addr, o);
      int called = 0;
      // 64 pipelined calls: their replies arrive together, in one read or a few.
      for (int i = 0; i < 64; ++i)
        c->send(
            "add",
            [i](Packer& p) {
              p.pack(std::tuple{i, 1});
            },
            [&](Response& r) {
              ++called;
              CHECK(st(r) == St::kOk);
              c.reset();  // the callback destroys its client (ASan: nothing read after)
            });
      REQUIRE(runUntil(loop, [&] { return called > 0; }));
      idle(loop, 0.1);
      CHECK(called == 1);
    }
  }

  TEST_CASE("a client destroyed inside a timeout's callback stops there") {
    core::Loop loop;
    Hanging h;
    REQUIRE(h.port != 0);
    auto addr = *core::Address::fromIp("127.0.0.1", h.port);
    auto c = std::make_unique<Client>(loop, addr);
    int called = 0;
    for (int i = 0; i < 5; ++i)
      c->send(
          "x", [](Packer& p) { p.nil(); },
          [&](Response& r) {
            ++called;
            CHECK(st(r) == St::kTimeout);
            c.reset();
          },
          0.05);
    REQUIRE(runUntil(loop, [&] { return called > 0; }));
    idle(loop, 0.1);
    CHECK(called == 1);
  }

  TEST_CASE("owners destroyed while their connects hang: calls dropped, never called") {
    core::Loop loop;
    Hanging h;
    REQUIRE(h.port != 0);
    auto addr = *core::Address::fromIp("127.0.0.1", h.port);
    int called = 0;
    auto count = [&](Response&) { ++called; };
    {
      Client c(loop, addr);
      for (int i = 0; i < 3; ++i)
        c.send(
            "x", [](Packer& p) { p.nil(); }, count);
      idle(loop, 0.05);
    }
    {
      ClientPool pool(loop);
      pool.get(addr).send(
          "x", [](Packer& p) { p.nil(); }, count);
      auto f = pool.get(addr).call("y");
      idle(loop, 0.05);
      // the pool goes with the call in flight: the Future's waiter sees BrokenPromise
    }
    idle(loop, 0.2);  // nothing scheduled by them may run now
    CHECK(called == 0);
  }

  TEST_CASE("a peer that never reads: the client closes from the loop, never inside send()") {
    core::Loop loop;
    std::vector<core::Fd> held;  // accepted and never read
    core::Listener l(loop,
                     [&](core::Fd fd, const core::Address&) { held.push_back(std::move(fd)); });
    auto addr = *l.listen(*core::Address::parse("127.0.0.1:0"));
    ClientOptions o;
    o.max_output = 256 * 1024;
    Client c(loop, addr, o);
    bool in_send = false, inside = false;
    int failed = 0, sent = 0;
    std::string big(64 * 1024, 'x');
    // Until the kernel buffers are full and our queue passes max_output.
    for (int round = 0; round < 400 && failed == 0; ++round) {
      in_send = true;
      c.send(
          "m", [&](Packer& p) { p.pack(std::tuple{big}); },
          [&](Response& r) {
            inside |= in_send;
            if (st(r) != St::kOk) ++failed;
          });
      in_send = false;
      ++sent;
      idle(loop, 0.002);
    }
    REQUIRE(runUntil(loop, [&] { return failed == sent; }));
    CHECK_FALSE(inside);
    CHECK(held.size() == 1);
  }

  TEST_CASE(
      "Service::raw: requests offered as bytes first; declined ones and notifications decoded") {
    core::Loop loop;
    Service svc("s");
    int declared = 0;
    svc.def(
        "f",
        [&](const Args& a) {
          ++declared;
          return a.positionalCount();
        },
        arg("args"));
    std::vector<std::string> seen;
    svc.raw("f", [&](RawRequest& rq) {
      if (static_cast<unsigned char>(rq.params[0]) == 0x80) return false;  // {}: decline
      seen.emplace_back(rq.params);
      rq.detach().reply(std::string("raw ") + std::to_string(rq.params.size()));
      return true;
    });
    CHECK_THROWS_AS(svc.raw("g", [](RawRequest&) { return false; }), std::logic_error);
    Server server(loop, svc);
    auto addr = *server.listen("127.0.0.1:0");
    Client c(loop, addr);
    auto a = c.call("f", 1, 2);
    auto b = c.request("f", std::map<std::string, int>{});
    c.notify("f", 3);
    auto d = c.call("f");
    REQUIRE(runUntil(loop, [&] { return a.done() && b.done() && d.done() && declared == 2; }));
    CHECK(a.get().view().toText() == "\"raw 3\"");  // [1, 2]: three bytes, never decoded
    CHECK(b.get().view().toText() == "0");          // declined: the declared method
    CHECK(d.get().view().toText() == "\"raw 1\"");  // nil params
    CHECK(seen.size() == 2);
    CHECK(declared == 2);  // the declined request and the notification
    CHECK(server.stats().requests == 3);
  }

  TEST_CASE("a raw handler that takes notifications sees them as bytes, with no reply") {
    core::Loop loop;
    Service svc("s");
    svc.def("n", [](const Args&) {});
    std::vector<std::string> seen;
    svc.raw(
        "n",
        [&](RawRequest& rq) {
          seen.push_back((rq.notification ? "note " : "call ") + std::string(rq.params));
          rq.detach().reply(1);  // nowhere for the notification
          return true;
        },
        true);
    Server server(loop, svc);
    auto addr = *server.listen("127.0.0.1:0");
    Client c(loop, addr);
    c.notify("n", 7);
    auto f = c.call("n", 8);
    REQUIRE(runUntil(loop, [&] { return f.done(); }));
    CHECK(f.get().view().toText() == "1");
    REQUIRE(seen.size() == 2);
    CHECK(seen[0] == "note \x91\x07");
    CHECK(seen[1] == "call \x91\x08");
    CHECK(server.stats().notifications == 1);
    CHECK(server.stats().requests == 1);
  }

  TEST_CASE("a call's handle cancels it: its callback is never called, its reply counted late") {
    core::Loop loop;
    Service svc = sleepy(loop);
    svc.def("now", [] { return 2; });
    Server server(loop, svc);
    auto addr = *server.listen("127.0.0.1:0");
    auto c = std::make_unique<Client>(loop, addr);
    int slow_called = 0, fast_called = 0, other_called = 0;
    CallHandle slow = c->send(
        "sleep", [](Packer& p) { p.pack(std::tuple{0.1}); }, [&](Response&) { ++slow_called; });
    CallHandle other = c->send(
        "sleep", [](Packer& p) { p.pack(std::tuple{0.1}); }, [&](Response&) { ++other_called; });
    // cancelled from inside another call's callback
    c->send(
        "now", [](Packer& p) { p.nil(); },
        [&](Response& r) {
          ++fast_called;
          CHECK(st(r) == St::kOk);
          CHECK(other.cancel());
        });
    CHECK(slow.cancel());
    CHECK_FALSE(slow.cancel());  // not pending any more
    CHECK(c->inFlight() == 2);
    REQUIRE(runUntil(loop, [&] { return c->lateReplies() == 2; }));
    CHECK(fast_called == 1);
    CHECK(slow_called == 0);
    CHECK(other_called == 0);
    CHECK(c->inFlight() == 0);
    // a call waiting for a connect; its timeout finds nothing either
    Hanging h;
    REQUIRE(h.port != 0);
    Client waiting(loop, *core::Address::fromIp("127.0.0.1", h.port));
    int waited = 0;
    CallHandle w = waiting.send(
        "x", [](Packer& p) { p.nil(); }, [&](Response&) { ++waited; }, 0.05);
    CHECK(w.cancel());
    idle(loop, 0.15);
    CHECK(waited == 0);
    // a call refused at once (the peer is dead) cancels too: its outcome waits on the loop
    core::Address closed;
    {
      core::Listener l(loop, [](core::Fd, const core::Address&) {});
      closed = *l.listen(*core::Address::parse("127.0.0.1:0"));
    }  // nothing listens there now
    ClientOptions once;
    once.dead_after = 0;  // dead after one failed connect
    once.dead_for = 60;
    Client dead(loop, closed, once);
    bool refused = false;
    dead.send(
        "x", [](Packer& p) { p.nil(); }, [&](Response&) { refused = true; });
    REQUIRE(runUntil(loop, [&] { return refused && dead.dead(); }));
    int told = 0;
    CallHandle r = dead.send(
        "x", [](Packer& p) { p.nil(); }, [&](Response&) { ++told; });
    CallFuture rf = dead.call("x");
    CHECK(r.cancel());
    CHECK_FALSE(r.cancel());
    CHECK(rf.cancel());
    REQUIRE(runUntil(loop, [&] { return rf.done(); }));
    CHECK_THROWS_AS(rf.get(), core::BrokenPromise);  // abandoned, not "dead"
    idle(loop, 0.05);
    CHECK(told == 0);
    // the client gone: harmless
    CallHandle gone = c->send(
        "now", [](Packer& p) { p.nil(); }, [&](Response&) { ++fast_called; });
    c.reset();
    CHECK_FALSE(gone.cancel());
    CHECK_FALSE(CallHandle().cancel());
  }

  TEST_CASE("close() by the program: pending calls fail from the loop, never inside close()") {
    core::Loop loop;
    Service svc = sleepy(loop);
    Server server(loop, svc);
    auto addr = *server.listen("127.0.0.1:0");
    auto c = std::make_unique<Client>(loop, addr);
    bool inside = false;
    std::vector<std::string> seen;
    auto record = [&](Response& r) {
      CHECK_FALSE(inside);
      seen.push_back(st(r) == St::kConnection ? "lost" : "other");
    };
    c->send(
        "sleep", [](Packer& p) { p.pack(std::tuple{5.0}); }, record);
    c->send(
        "sleep", [](Packer& p) { p.pack(std::tuple{5.0}); },
        [&](Response& r) {
          record(r);
          c.reset();  // the rest are dropped uncalled
        });
    c->send(
        "sleep", [](Packer& p) { p.pack(std::tuple{5.0}); }, record);
    REQUIRE(runUntil(loop, [&] { return server.stats().requests == 3; }));
    inside = true;
    c->close();
    inside = false;
    CHECK(seen.empty());
    REQUIRE(runUntil(loop, [&] { return !c; }));
    idle(loop, 0.05);
    CHECK(seen == std::vector<std::string>{"lost", "lost"});
  }

  TEST_CASE("call()'s Future cancels: it fails with BrokenPromise from the loop, reply late") {
    core::Loop loop;
    Service svc = sleepy(loop);
    Server server(loop, svc);
    auto addr = *server.listen("127.0.0.1:0");
    Client c(loop, addr);
    // .then(): the continuation runs from the loop, never inside cancel()
    CallFuture f = c.call("sleep", 0.05);
    bool settled = false;
    f.then([&](core::Future<Value>& r) {
      settled = true;
      CHECK(r.failed());
      CHECK_THROWS_AS(r.get(), core::BrokenPromise);
    });
    CHECK(f.cancel());
    CHECK_FALSE(settled);
    CHECK_FALSE(f.cancel());
    // a coroutine waiting on a call cancelled from outside resumes with the error
    CallFuture g = c.call("sleep", 0.05);
    std::string seen;
    // g through a reference capture: co_await must not copy it (g++ 12 tried to); the lambda
    // is named, so its captures outlive the suspension
    auto body = [&]() -> core::Task<> {
      try {
        co_await g;
        seen = "value";
      } catch (const core::BrokenPromise&) {
        seen = "abandoned";
      }
    };
    auto waiter = body();
    CHECK(g.cancel());
    CHECK(seen.empty());
    REQUIRE(runUntil(loop, [&] { return settled && !seen.empty(); }));
    CHECK(seen == "abandoned");
    REQUIRE(runUntil(loop, [&] { return c.lateReplies() == 2; }));  // the replies still came
    CHECK(c.inFlight() == 0);
    // a completed call's cancel() does nothing
    CallFuture done = c.call("sleep", 0.0);
    REQUIRE(runUntil(loop, [&] { return done.done(); }));
    CHECK_FALSE(done.cancel());
    CHECK(done.get().view().toText() == "1");
    CHECK(waiter.done());
  }

  TEST_CASE("one outcome type: a raw client's Future gets the value; a handler answers with one") {
    core::Loop loop;
    Service back("back");
    back.def(
        "add", [](int a, int b) { return a + b; }, arg("a"), arg("b"));
    back.def(
        "foreign", [](int, int) -> int { throw RpcError(Kind::kApplication, "x"); }, arg("a"),
        arg("b"));
    Server backend(loop, back);
    auto baddr = *backend.listen("127.0.0.1:0");
    ClientOptions raw;
    raw.raw_results = true;
    Client down(loop, baddr, raw);
    // a raw client's Future: the result's bytes decoded once (was nil)
    auto f = down.call("add", 2, 3);
    REQUIRE(runUntil(loop, [&] { return f.done(); }));
    CHECK(f.get().view().toText() == "5");
    // a relay answers each call with the downstream outcome as it is
    Service front("front");
    front.def(
        "relay",
        [&](std::string method, Reply<Value> reply) {
          down.send(
              method,
              [](Packer& p) {
                p.pack(std::tuple{1, 2});
              },
              [r = std::move(reply)](Response& resp) mutable { r.raw().answer(resp.outcome()); },
              -1);
        },
        arg("method"));
    Server server(loop, front);
    auto addr = *server.listen("127.0.0.1:0");
    Client c(loop, addr);
    auto ok = c.call("relay", "add");
    auto err = c.call("relay", "foreign");
    auto none = c.call("relay", "nope");
    REQUIRE(runUntil(loop, [&] { return ok.done() && err.done() && none.done(); }));
    CHECK(ok.get().view().toText() == "3");
    CHECK_THROWS_WITH_AS(err.get(), "ApplicationError: x", RpcError);
    CHECK_THROWS_WITH_AS(none.get(), doctest::Contains("NoMethodError"), RpcError);
    Outcome failed = Outcome::failure(Kind::kOverloaded, "full");
    CHECK_FALSE(failed.ok());
    CHECK_THROWS_WITH_AS(std::rethrow_exception(failed.exception()), "Overloaded: full", RpcError);
  }
}
