// Proxy ejection policy against a manual clock, and a backend's connect accounting on real
// sockets (a refused connect with many calls waiting counts once).
#include <doctest/doctest.h>
#include <sys/socket.h>

#include <vector>

#include "aiorpc/agents/proxy/backend.h"
#include "aiorpc/core/listener.h"
#include "test/support/ended.h"
#include "test/support/run_until.h"

using aiorpc::test::St;
using aiorpc::test::st;

using aiorpc::agents::proxy::Backend;
using aiorpc::agents::proxy::Ejection;
using aiorpc::agents::proxy::EjectPolicy;
namespace core = aiorpc::core;
namespace rpc = aiorpc::rpc;
using aiorpc::test::runUntil;

TEST_SUITE("proxy ejection") {
  TEST_CASE("a connect that succeeds resets nothing: accepted then dropped, N times, ejects") {
    Ejection e(EjectPolicy{3, 5, 60});
    for (int i = 0; i < 2; ++i) {
      CHECK_FALSE(e.connected());
      CHECK_FALSE(e.connectFailed(0));  // reset before a reply
    }
    CHECK_FALSE(e.connected());
    CHECK(e.connectFailed(0));
    CHECK(e.ejected());
  }

  TEST_CASE("after N failed connects in a row; a reply in between resets the count") {
    Ejection e(EjectPolicy{3, 5, 60});
    CHECK_FALSE(e.connectFailed(0));
    CHECK_FALSE(e.connectFailed(0));
    e.succeeded();
    CHECK_FALSE(e.connectFailed(1));
    CHECK_FALSE(e.connectFailed(1));
    CHECK_FALSE(e.ejected());
    CHECK(e.connectFailed(2));
    CHECK(e.ejected());
    CHECK(e.since() == 2);
    CHECK(e.period() == 5);
    CHECK(e.ejections() == 1);
    CHECK(e.connectFailures() == 5);
  }

  TEST_CASE("failures inside a period change nothing; probes are due at its end") {
    Ejection e(EjectPolicy{1, 5, 60});
    CHECK(e.connectFailed(10));
    CHECK_FALSE(e.probeDue(14.9));
    CHECK_FALSE(e.connectFailed(12));  // a panic-routed call refused inside the period
    CHECK(e.until() == 15);
    CHECK(e.probeDue(15));
    e.probeStarted();
    CHECK_FALSE(e.probeDue(16));  // one probe at a time
  }

  TEST_CASE("each failed probe doubles the period up to the maximum; success re-admits") {
    Ejection e(EjectPolicy{3, 5, 60});
    double now = 0;
    for (int i = 0; i < 3; ++i) e.connectFailed(now);
    REQUIRE(e.ejected());
    double periods[] = {10, 20, 40, 60, 60};
    for (double p : periods) {
      now = e.until();
      REQUIRE(e.probeDue(now));
      e.probeStarted();
      CHECK(e.connectFailed(now));  // the probe failed: the next period
      CHECK(e.period() == p);
      CHECK(e.until() == now + p);
      CHECK(e.ejected());
    }
    CHECK(e.ejections() == 1);  // one episode
    now = e.until();
    e.probeStarted();
    CHECK(e.connected());  // the probe connected
    CHECK_FALSE(e.ejected());
    CHECK(e.period() == 0);
    // a new episode starts from the base period again
    for (int i = 0; i < 3; ++i) e.connectFailed(now);
    CHECK(e.period() == 5);
    CHECK(e.ejections() == 2);
  }

  TEST_CASE("a burst of 500 calls on one refused connect counts as one failure") {
    core::Loop loop;
    core::Address nowhere;
    {
      core::Listener l(loop, [](core::Fd, const core::Address&) {});
      nowhere = *l.listen(*core::Address::parse("127.0.0.1:0"));
    }  // closed: connects are refused
    rpc::ClientOptions o;
    o.dead_after = 1 << 30;
    Backend b(loop, 1, nowhere.toString(), nowhere, o, EjectPolicy{2, 5, 60});
    int changes = 0;
    b.on_change = [&](Backend&, Backend::Change c) {
      CHECK(c == Backend::Change::kEjected);
      ++changes;
    };
    int not_sent = 0;
    auto burst = [&] {  // 500 calls waiting on one connect attempt
      for (int i = 0; i < 500; ++i)
        b.client.send(
            "m", [](rpc::Packer& p) { p.nil(); },
            [&](rpc::Response& r) { not_sent += st(r) == St::kNotSent; });
    };
    burst();
    REQUIRE(runUntil(loop, [&] { return not_sent == 500; }));
    CHECK(b.eject.connectFailures() == 1);
    CHECK_FALSE(b.eject.ejected());  // after = 2: one attempt is not enough
    burst();                         // a second attempt ejects it
    REQUIRE(runUntil(loop, [&] { return not_sent == 1000; }));
    CHECK(b.eject.connectFailures() == 2);
    CHECK(b.eject.ejected());
    CHECK(changes == 1);
  }

  TEST_CASE("a probe connect that succeeds re-admits the instance") {
    core::Loop loop;
    int accepted = 0;
    core::Listener l(loop, [&](core::Fd, const core::Address&) { ++accepted; });
    core::Address addr = *l.listen(*core::Address::parse("127.0.0.1:0"));
    Backend b(loop, 1, addr.toString(), addr, rpc::ClientOptions{}, EjectPolicy{1, 5, 60});
    b.eject.connectFailed(loop.now());  // ejected, e.g. while it was down
    REQUIRE(b.eject.ejected());
    int readmitted = 0;
    b.on_change = [&](Backend&, Backend::Change c) {
      readmitted += c == Backend::Change::kReadmitted;
    };
    b.eject.probeStarted();
    b.client.connectNow();  // the probe: no call waits on it
    REQUIRE(runUntil(loop, [&] { return readmitted == 1; }));
    CHECK_FALSE(b.eject.ejected());
    CHECK(b.client.inFlight() == 0);
  }

  TEST_CASE("an instance that accepts, then resets or closes before replying, is ejected") {
    // The old accounting let the successful connect reset the count just before the reset was
    // counted: 150 failures in a row, never ejected. Both a reset and a plain close (FIN).
    for (bool reset : {true, false}) {
      CAPTURE(reset);
      core::Loop loop;
      std::vector<core::Fd> held;
      core::Listener l(loop,
                       [&](core::Fd fd, const core::Address&) { held.push_back(std::move(fd)); });
      core::Address addr = *l.listen(*core::Address::parse("127.0.0.1:0"));
      rpc::ClientOptions o;
      o.dead_after = 1 << 30;
      Backend b(loop, 1, addr.toString(), addr, o, EjectPolicy{3, 5, 60});
      int ejected = 0, failed = 0;
      b.on_change = [&](Backend&, Backend::Change c) { ejected += c == Backend::Change::kEjected; };
      for (int round = 1; round <= 3; ++round) {
        b.client.send(
            "m", [](rpc::Packer& p) { p.nil(); }, [&](rpc::Response&) { ++failed; });
        REQUIRE(runUntil(loop, [&] { return !held.empty() && b.client.connected(); }));
        // the request has left; the peer drops the connection without a reply
        REQUIRE(runUntil(loop, [&] {
          char c;
          return ::recv(held.back().get(), &c, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
        }));
        if (reset) {
          linger lg{1, 0};
          ::setsockopt(held.back().get(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        held.clear();  // closes it
        REQUIRE(runUntil(loop, [&] { return failed == round; }));
      }
      REQUIRE(runUntil(loop, [&] { return ejected == 1; }));
      CHECK(b.eject.ejected());
      CHECK(b.eject.connectFailures() == 3);
    }
  }
}
