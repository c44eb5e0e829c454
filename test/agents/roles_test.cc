// The keepalive, demo and proxy roles in one process on one loop, without aiorpcd: routing
// through an in-process registry, and the proxy destroyed while its backends' connects hang
// (ASan: no callback may run inside its destructor, no sibling may be touched after it went).
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <memory>
#include <vector>

#include "aiorpc/agents/demo/demo.h"
#include "aiorpc/agents/heartbeat.h"
#include "aiorpc/agents/keepalive/keepalive.h"
#include "aiorpc/agents/proxy/proxy.h"
#include "aiorpc/core/listener.h"
#include "aiorpc/rpc/client.h"
#include "test/support/core_peer.h"
#include "test/support/ended.h"
#include "test/support/loopback.h"
#include "test/support/run_until.h"

using aiorpc::test::St;
using aiorpc::test::st;

namespace core = aiorpc::core;
namespace rpc = aiorpc::rpc;
namespace agents = aiorpc::agents;
using aiorpc::test::runUntil;

namespace {

// One role served on a loopback port, with the flags given (and the role's defaults).
struct Running {
  agents::Flags flags;
  std::unique_ptr<agents::RoleInstance> role;
  std::unique_ptr<rpc::Server> server;
  core::Address bound;
  Running(core::Loop& loop, std::span<const agents::FlagSpec> own,
          std::unique_ptr<agents::RoleInstance> (*create)(agents::RoleEnv&),
          std::vector<const char*> argv) {
    std::vector<agents::FlagSpec> specs(own.begin(), own.end());
    specs.push_back({"keepalive", agents::FlagType::kEndpointList, "", ""});
    specs.push_back({"allow", agents::FlagType::kAllowList, "", ""});
    argv.insert(argv.begin(), "test");
    REQUIRE_MESSAGE(flags.parse(specs, static_cast<int>(argv.size()), argv.data()), flags.error());
    agents::RoleEnv env{loop, flags, ""};
    role = create(env);
    server = std::make_unique<rpc::Server>(loop, role->service());
    auto b = server->listen("127.0.0.1:0");
    REQUIRE(b.ok());
    bound = *b;
    role->started(*server, bound);
  }
  ~Running() {
    server.reset();  // as aiorpcd: the server goes first, then the role
    role.reset();
  }
  std::string endpoint() const { return bound.toString(); }
};

using aiorpc::test::Hanging;

rpc::Value call(core::Loop& loop, rpc::Client& c, std::string_view method, rpc::Value params,
                bool* failed = nullptr) {
  auto f = c.request(method, params);
  REQUIRE(runUntil(loop, [&] { return f.done(); }));
  if (f.failed()) {
    if (failed) *failed = true;
    return {};
  }
  return f.get();
}

}  // namespace

TEST_SUITE("roles in one process") {
  TEST_CASE("a call routed by the proxy through an in-process keepalive to a demo") {
    core::Loop loop;
    Running ka(loop, agents::keepalive::kFlags, agents::keepalive::create, {"--ttl", "30"});
    Running demo(loop, agents::demo::kFlags, agents::demo::create, {});
    rpc::Client to_ka(loop, ka.bound);
    call(loop, to_ka, "heartbeat",
         rpc::toValue(std::tuple{"sample.foo", "127.0.0.1", demo.bound.port()}));
    std::string ka_ep = ka.endpoint();
    Running px(loop, agents::proxy::kFlags, agents::proxy::create,
               {"--keepalive", ka_ep.c_str(), "--refresh-interval", "0.05"});
    rpc::Client c(loop, px.bound);
    rpc::Value got;
    REQUIRE(runUntil(loop, [&] {
      bool failed = false;
      got = call(loop, c, "invoke", rpc::toValue(std::tuple{"sample.foo", "echo", std::tuple{7}}),
                 &failed);
      return !failed;
    }));
    CHECK(got.view().toText() == "[7]");
  }

  TEST_CASE("the proxy destroyed while connects to its backends hang (ASan: no use after free)") {
    core::Loop loop;
    Hanging h1, h2;
    Running ka(loop, agents::keepalive::kFlags, agents::keepalive::create, {"--ttl", "30"});
    rpc::Client to_ka(loop, ka.bound);
    for (int port : {h1.port, h2.port})
      call(loop, to_ka, "heartbeat", rpc::toValue(std::tuple{"svc", "127.0.0.1", port}));
    std::string ka_ep = ka.endpoint();
    auto px = std::make_unique<Running>(
        loop, agents::proxy::kFlags, agents::proxy::create,
        std::vector<const char*>{"--keepalive", ka_ep.c_str(), "--refresh-interval", "0.05",
                                 "--eject-after", "1"});
    rpc::Client c(loop, px->bound);
    // the proxy has the table (both instances listed) before the calls go
    REQUIRE(runUntil(loop, [&] {
      auto st = call(loop, c, std::string_view("\0stats", 6), rpc::Value());
      auto reg = st.view().find("registry");
      return reg && reg->find("version") && reg->find("version")->asUint().value_or(0) > 0;
    }));
    std::vector<core::Future<rpc::Value>> calls;
    for (int i = 0; i < 20; ++i)
      calls.push_back(c.request("invoke", rpc::toValue(std::tuple{"svc", "echo", std::tuple{i}})));
    // the proxy learns the table and starts connecting to both instances; nothing answers
    runUntil(
        loop, [] { return false; }, 0.5);
    int answered = 0;
    for (auto& f : calls) answered += f.done();
    CHECK(answered == 0);  // the connects hang: no call has an outcome yet
    px.reset();            // backends, their clients and the calls they hold go now
    runUntil(
        loop, [] { return false; }, 0.3);  // timers the proxy had set must not fire
    // every call gets an outcome: its connection to the proxy was closed
    REQUIRE(runUntil(loop, [&] {
      for (auto& f : calls)
        if (!f.done()) return false;
      return true;
    }));
    for (auto& f : calls) CHECK(f.failed());
  }

  TEST_CASE("the proxy forwards invoke's params as the bytes that came; map form still works") {
    core::Loop loop;
    // A backend that records what it gets and answers every request [1, id, nil, "ok"].
    std::vector<std::unique_ptr<aiorpc::test::Recorder>> conns;
    core::Listener backend(loop, [&](core::Fd fd, const core::Address&) {
      auto r = std::make_unique<aiorpc::test::Recorder>(loop, std::move(fd));
      r->on_data = [off = size_t{0}](aiorpc::test::Recorder& rec) mutable {
        const std::string& d = rec.data;
        while (size_t len = rpc::itemLength(d.data() + off, d.size() - off)) {
          size_t id_len = 0;  // answer [0, id, ...] with [1, id, nil, "ok"], the id as it came
          REQUIRE(rpc::readUint(d.data() + off + 2, len - 2, id_len));
          rec.conn->send(std::string("\x94\x01") + d.substr(off + 2, id_len) + "\xc0\xa2ok");
          off += len;
        }
      };
      conns.push_back(std::move(r));
    });
    auto baddr = *backend.listen(*core::Address::parse("127.0.0.1:0"));
    Running ka(loop, agents::keepalive::kFlags, agents::keepalive::create, {"--ttl", "30"});
    rpc::Client to_ka(loop, ka.bound);
    call(loop, to_ka, "heartbeat", rpc::toValue(std::tuple{"raw", "127.0.0.1", baddr.port()}));
    std::string ka_ep = ka.endpoint();
    Running px(loop, agents::proxy::kFlags, agents::proxy::create,
               {"--keepalive", ka_ep.c_str(), "--refresh-interval", "0.05"});
    rpc::Client c(loop, px.bound);
    REQUIRE(runUntil(loop, [&] {
      auto st = call(loop, c, std::string_view("\0stats", 6), rpc::Value());
      auto reg = st.view().find("registry");
      return reg && reg->find("version") && reg->find("version")->asUint().value_or(0) > 0;
    }));
    // params [5] with 5 in its uint32 form: decoded and packed again it would be one byte
    std::string params("\x91\xce\x00\x00\x00\x05", 6);
    St got = St::kOther;
    bool done = false;
    c.send(
        "invoke",
        [&](rpc::Packer& p) {
          p.array(3);
          p.str("raw");
          p.str("m");
          p.raw(params);
        },
        [&](rpc::Response& r) {
          done = true;
          got = st(r);
        });
    REQUIRE(runUntil(loop, [&] { return done; }));
    CHECK(got == St::kOk);
    REQUIRE(conns.size() == 1);
    CHECK(conns[0]->data.find(std::string("\xa1m") + params) != std::string::npos);
    // map form with a hint: the decoded path
    auto f = c.request("invoke",
                       std::map<std::string, rpc::Value>{{"service", rpc::toValue("raw")},
                                                         {"method", rpc::toValue("m")},
                                                         {"params", rpc::toValue(std::tuple{7})},
                                                         {"__hint__", rpc::toValue(1)}});
    REQUIRE(runUntil(loop, [&] { return f.done(); }));
    CHECK(f.get().view().toText() == "\"ok\"");
    // a service name that is not a string: ArgumentError from the decoded path
    auto bad = c.call("invoke", 5, "m", std::tuple{});
    REQUIRE(runUntil(loop, [&] { return bad.done(); }));
    CHECK_THROWS_WITH_AS(bad.get(), doctest::Contains("ArgumentError"), rpc::RpcError);
  }

  TEST_CASE("a heartbeat sender destroyed while its connects hang, and while stopping") {
    core::Loop loop;
    Hanging h1, h2;
    REQUIRE((h1.port != 0 && h2.port != 0));
    agents::HeartbeatOptions o;
    o.keepalives = {*core::Address::fromIp("127.0.0.1", h1.port),
                    *core::Address::fromIp("127.0.0.1", h2.port)};
    o.service = "svc";
    o.port = 1234;
    o.interval = 0.05;
    {
      agents::Heartbeat hb(loop, o);
      runUntil(
          loop, [] { return false; }, 0.1);
      CHECK(hb.sent() == 0);  // every connect hangs
    }
    bool stopped = false;
    {
      agents::Heartbeat hb(loop, o);
      hb.stop([&] { stopped = true; });  // waits for the heartbeats in flight...
      runUntil(
          loop, [] { return false; }, 0.05);
    }  // ...and goes before they end: `stopped` is never called
    runUntil(
        loop, [] { return false; }, 0.3);  // nothing it scheduled may run now (ASan)
    CHECK_FALSE(stopped);
  }
}

// Ownership (issue: an embedder destroys a role whenever it likes). Under ASan in `make test`.
namespace {

void idleFor(core::Loop& loop, double s) {
  runUntil(
      loop, [] { return false; }, s);
}

// The proxy's \0stats show a registry version: it has its table.
void waitForTable(core::Loop& loop, rpc::Client& c) {
  REQUIRE(runUntil(loop, [&] {
    auto st = call(loop, c, std::string_view("\0stats", 6), rpc::Value());
    auto reg = st.view().find("registry");
    return reg && reg->find("version") && reg->find("version")->asUint().value_or(0) > 0;
  }));
}

void heartbeat(core::Loop& loop, const core::Address& ka, int port) {
  rpc::Client to_ka(loop, ka);
  call(loop, to_ka, "heartbeat", rpc::toValue(std::tuple{"svc", "127.0.0.1", port}));
}

// Runs `fn` from an io callback of the loop's next iteration in which `fd` is readable.
struct OnReadable {
  core::IoWatcher w;
  std::function<void()> fn;
  OnReadable(core::Loop& loop, int fd, std::function<void()> f) : fn(std::move(f)) {
    w.bind<&OnReadable::on>(loop.raw(), this);
    w.set(fd, EV_READ);
    w.start();
  }
  void on(int) noexcept {
    w.stop();
    fn();
  }
};

}  // namespace

TEST_SUITE("roles in one process: ownership") {
  TEST_CASE("the proxy destroyed while a backend call refused at once waits for its outcome") {
    // --max-backend-bytes 64 and a connect that hangs: the first routed call waits in memory,
    // the second is refused at once by the backend's client; its outcome is due from the loop.
    // The proxy goes at every point of the next iterations, then the loop runs on, or is
    // destroyed at once: neither may run the refused call's callback or give a call back to
    // the role's freed pool (the old code did both: a loop timer held the callback).
    for (int k = 0; k < 8; ++k) {
      for (bool destroy_loop : {false, true}) {
        CAPTURE(k);
        CAPTURE(destroy_loop);
        auto loop = std::make_unique<core::Loop>();
        Hanging h;
        auto ka =
            std::make_unique<Running>(*loop, agents::keepalive::kFlags, agents::keepalive::create,
                                      std::vector<const char*>{"--ttl", "30"});
        heartbeat(*loop, ka->bound, h.port);
        std::string ka_ep = ka->endpoint();
        auto px = std::make_unique<Running>(
            *loop, agents::proxy::kFlags, agents::proxy::create,
            std::vector<const char*>{"--keepalive", ka_ep.c_str(), "--refresh-interval", "0.05",
                                     "--max-backend-bytes", "64"});
        auto c = std::make_unique<rpc::Client>(*loop, px->bound);
        waitForTable(*loop, *c);
        std::string big(200, 'x');
        std::vector<core::Future<rpc::Value>> calls;
        for (int i = 0; i < 3; ++i)
          calls.push_back(
              c->request("invoke", rpc::toValue(std::tuple{"svc", "echo", std::tuple{big}})));
        int n = 0;  // k iterations (a 2 ms ticker keeps each short)
        runUntil(*loop, [&] { return n++ >= k; });
        px.reset();
        if (destroy_loop) {
          c.reset();
          ka.reset();
          loop.reset();
          continue;
        }
        idleFor(*loop, 0.1);  // nothing the proxy left may run now
        REQUIRE(runUntil(*loop, [&] {
          for (auto& f : calls)
            if (!f.done()) return false;
          return true;
        }));
      }
    }
  }

  TEST_CASE("a backend resets with calls in flight, the proxy destroyed before they fail") {
    // The reset fails the backend's calls from the loop; the proxy is destroyed by a task that
    // another io callback of the same iteration posted first, so before the failures are told
    // (the old code then gave the calls back to the freed role's pool).
    for (int round = 0; round < 6; ++round) {
      CAPTURE(round);
      core::Loop loop;
      int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      socklen_t len = sizeof a;
      REQUIRE(::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
      REQUIRE(::listen(lfd, 16) == 0);
      ::getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len);
      Running ka(loop, agents::keepalive::kFlags, agents::keepalive::create, {"--ttl", "30"});
      heartbeat(loop, ka.bound, ntohs(a.sin_port));
      std::string ka_ep = ka.endpoint();
      auto px = std::make_unique<Running>(
          loop, agents::proxy::kFlags, agents::proxy::create,
          std::vector<const char*>{"--keepalive", ka_ep.c_str(), "--refresh-interval", "0.05"});
      rpc::Client c(loop, px->bound);
      waitForTable(loop, c);
      std::vector<core::Future<rpc::Value>> calls;
      for (int i = 0; i < 5; ++i)
        calls.push_back(
            c.request("invoke", rpc::toValue(std::tuple{"svc", "echo", std::tuple{i}})));
      int conn = -1;
      REQUIRE(runUntil(loop, [&] {
        if (conn < 0) conn = ::accept(lfd, nullptr, nullptr);  // (the predicate runs again)
        return conn >= 0;
      }));
      char b;
      REQUIRE(runUntil(loop, [&] { return ::recv(conn, &b, 1, MSG_PEEK | MSG_DONTWAIT) > 0; }));
      int sp[2];
      REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, sp) == 0);
      OnReadable kill(loop, sp[0], [&] { loop.post([&] { px.reset(); }); });
      linger lg{1, 0};
      ::setsockopt(conn, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
      if (round % 2) REQUIRE(::write(sp[1], "x", 1) == 1);
      ::close(conn);  // a reset: the calls in flight fail
      if (round % 2 == 0) REQUIRE(::write(sp[1], "x", 1) == 1);
      REQUIRE(runUntil(loop, [&] { return !px; }));
      idleFor(loop, 0.1);
      REQUIRE(runUntil(loop, [&] {
        for (auto& f : calls)
          if (!f.done()) return false;
        return true;
      }));
      ::close(sp[0]);
      ::close(sp[1]);
      ::close(lfd);
    }
  }
}
