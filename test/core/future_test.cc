// Future/Task: continuations, coroutines, and a million synchronous awaits without stack growth.
#include "aiorpc/core/future.h"

#include <doctest/doctest.h>

#include <stdexcept>

#include "aiorpc/core/loop.h"
#include "test/support/run_until.h"

using namespace aiorpc::core;

TEST_SUITE("future") {
  TEST_CASE("a promise broken under a running loop resumes its waiter from a posted task") {
    // STYLE rule 8: the waiter (a coroutine, a then()) may touch the object whose destructor
    // dropped the promise; it must run after that destructor, not inside it.
    Loop loop;
    bool in_dtor = false, resumed = false, resumed_inside = false, failed = false;
    auto p = std::make_unique<Promise<int>>();
    auto f = p->future();
    f.then([&](Future<int>& r) {
      resumed = true;
      resumed_inside = in_dtor;
      failed = r.failed();
    });
    loop.post([&] {
      in_dtor = true;
      p.reset();
      in_dtor = false;
      CHECK_FALSE(resumed);
    });
    REQUIRE(aiorpc::test::runUntil(loop, [&] { return resumed; }));
    CHECK_FALSE(resumed_inside);
    CHECK(failed);
  }

  TEST_CASE("a coroutine whose sleep is cancelled at shutdown still finishes (no frame leaks)") {
    int finished = 0;
    {
      Loop loop;
      auto task = [&]() -> Task<void> {
        try {
          co_await loop.sleep(60);
        } catch (const BrokenPromise&) {
          ++finished;
        }
      };
      auto f1 = task();
      loop.post([&] { loop.cancelAll(); });  // under the running loop: resumed from a post
      aiorpc::test::runUntil(
          loop, [&] { return finished == 1; }, 2);
      auto f2 = task();  // this one is ended by ~Loop
    }
    CHECK(finished == 2);
  }

  Task<int> syncValue(int v) { co_return v; }

  Task<long> sumSync(int n) {
    long s = 0;
    for (int i = 0; i < n; ++i) s += co_await syncValue(i);
    co_return s;
  }

  TEST_CASE("a million synchronously completing awaits use no stack") {
    auto f = sumSync(1000000);
    REQUIRE(f.done());
    CHECK(f.get() == 499999500000L);
  }

  Task<int> thrower() {
    throw std::runtime_error("boom");
    co_return 1;
  }

  TEST_CASE("exceptions travel through the future") {
    auto f = thrower();
    REQUIRE(f.done());
    CHECK(f.failed());
    CHECK_THROWS_WITH_AS(f.get(), "boom", std::runtime_error);
  }

  TEST_CASE("then on a pending future runs once at completion") {
    Promise<int> p;
    auto f = p.future();
    int seen = 0, calls = 0;
    f.then([&](Future<int>& r) {
      seen = r.get();
      ++calls;
    });
    CHECK(calls == 0);
    p.setValue(7);
    p.setValue(8);  // second completion ignored
    CHECK(calls == 1);
    CHECK(seen == 7);
  }

  Task<int> sleeper(Loop & loop, double s, int v) {
    co_await loop.sleep(s);
    co_return v;
  }

  Task<int> sumSleepers(Loop & loop) {
    std::vector<Future<int>> fs;
    for (int i = 1; i <= 3; ++i) fs.push_back(sleeper(loop, 0.01 * i, i));
    auto v = co_await all(std::move(fs));
    co_return v[0] + v[1] + v[2];
  }

  TEST_CASE("coroutines suspend on the loop and all() gathers in order") {
    Loop loop;
    auto f = sumSleepers(loop);
    CHECK(!f.done());
    REQUIRE(aiorpc::test::runUntil(loop, [&] { return f.done(); }));
    CHECK(f.get() == 6);
  }
}
