// Proxy ejection policy against a manual clock.
#include <doctest/doctest.h>

#include "agents/proxy/backend.h"

using aiorpc::agents::proxy::Ejection;
using aiorpc::agents::proxy::EjectPolicy;

TEST_SUITE("proxy ejection") {
  TEST_CASE("ejected after N failures in a row, backoff doubles to 60, success resets") {
    Ejection e(EjectPolicy{3, 5, 60});
    double now = 0;
    e.failed(now);
    e.failed(now);
    CHECK_FALSE(e.ejected(now));
    e.failed(now);
    CHECK(e.ejected(now));
    CHECK(e.ejected(4.9));
    CHECK_FALSE(e.ejected(5));
    double periods[] = {10, 20, 40, 60, 60};
    now = 5;
    for (double p : periods) {
      for (int i = 0; i < 3; ++i) e.failed(now);
      CHECK(e.period() == p);
      CHECK(e.ejected(now + p - 0.1));
      now += p;
      CHECK_FALSE(e.ejected(now));
    }
    e.succeeded();
    e.failed(now);
    CHECK_FALSE(e.ejected(now));
    e.failed(now);
    e.failed(now);
    CHECK(e.period() == 5);
  }
}
