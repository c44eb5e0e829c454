// Loop: post ordering, deferred deletion, timers, signals.
#include "aiorpc/core/loop.h"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "aiorpc/core/log.h"
#include "aiorpc/core/pool.h"
#include "test/support/run_until.h"

using namespace aiorpc::core;
using aiorpc::test::runUntil;

TEST_SUITE("loop") {
  TEST_CASE("post never runs inside the caller and keeps order") {
    Loop loop;
    std::vector<int> seen;
    loop.post([&] {
      seen.push_back(1);
      loop.post([&] { seen.push_back(3); });
    });
    loop.post([&] { seen.push_back(2); });
    CHECK(seen.empty());
    REQUIRE(runUntil(loop, [&] { return seen.size() == 3; }));
    CHECK(seen == std::vector<int>{1, 2, 3});
  }

  TEST_CASE("deferDelete frees after the callback stack unwinds") {
    struct Probe {
      bool* freed;
      ~Probe() { *freed = true; }
    };
    Loop loop;
    bool freed = false;
    loop.post([&] {
      auto p = std::make_unique<Probe>();
      p->freed = &freed;
      loop.deferDelete(std::move(p));
      CHECK_FALSE(freed);
    });
    REQUIRE(runUntil(loop, [&] { return freed; }));
  }

  TEST_CASE("one-shot timers fire in order and cancel works") {
    Loop loop;
    std::vector<int> seen;
    loop.after(0.03, [&] { seen.push_back(3); });
    auto id = loop.after(0.02, [&] { seen.push_back(99); });
    loop.after(0.01, [&] { seen.push_back(1); });
    loop.cancel(id);
    REQUIRE(runUntil(loop, [&] { return seen.size() == 2; }));
    CHECK(seen == std::vector<int>{1, 3});
  }

  TEST_CASE("NaN and infinite durations are refused; other timers keep their order") {
    Loop loop;
    std::vector<int> seen;
    CHECK_THROWS_AS(loop.after(std::nan(""), [&] { seen.push_back(0); }), std::invalid_argument);
    CHECK_THROWS_AS(loop.after(INFINITY, [&] { seen.push_back(0); }), std::invalid_argument);
    CHECK_THROWS_AS(
        [&] {
          auto f = loop.sleep(-std::nan(""));
          (void)f;
        }(),
        std::invalid_argument);
    loop.after(0.02, [&] { seen.push_back(2); });
    loop.after(0.01, [&] { seen.push_back(1); });
    loop.after(-5, [&] { seen.push_back(0); });  // negative: at once
    REQUIRE(runUntil(loop, [&] { return seen.size() == 3; }));
    CHECK(seen == std::vector<int>{0, 1, 2});
  }

  TEST_CASE("a raw timer watcher given NaN fires at once instead of breaking the heap") {
    Loop loop;
    struct T {
      TimerWatcher w;
      int fired = 0;
      void on(int) { ++fired; }
    } nan_timer, later;
    nan_timer.w.bind<&T::on>(loop.raw(), &nan_timer);
    later.w.bind<&T::on>(loop.raw(), &later);
    nan_timer.w.start(std::nan(""));
    later.w.start(0.02);
    REQUIRE(runUntil(loop, [&] { return nan_timer.fired == 1 && later.fired == 1; }));
  }

  TEST_CASE("a timer id outlives its timer harmlessly: it never cancels the next one") {
    Loop loop;
    int fired = 0;
    auto old = loop.after(0, [&] { ++fired; });
    REQUIRE(runUntil(loop, [&] { return fired == 1; }));
    int made = 0;
    bool reused = false;
    while (!reused && made < 8) {  // new timers until one lands in old's slot
      auto fresh = loop.after(0.01, [&] { fired += 10; });
      ++made;
      reused = (fresh & 0xffffffffu) == (old & 0xffffffffu);
      CHECK(fresh != old);
    }
    REQUIRE(reused);
    loop.cancel(old);  // stale: must not touch the timer now in its slot
    REQUIRE(runUntil(loop, [&] { return fired == 1 + 10 * made; }));
  }

  TEST_CASE("sleeps started in an owner's scope end with cancelOwned; others go on") {
    Loop loop;
    auto a = loop.newOwner(), b = loop.newOwner();
    std::vector<std::string> seen;
    std::vector<Future<void>> held;  // a waiter holds its future, as a coroutine frame does
    auto watch = [&](Future<void> f, std::string name) {
      f.then([&seen, name](Future<void>& r) { seen.push_back(name + (r.failed() ? "!" : "")); });
      held.push_back(std::move(f));
    };
    {
      Loop::OwnerScope scope(loop, a);
      watch(loop.sleep(30), "a1");
      watch(loop.sleep(30), "a2");
      loop.after(0.02, [&] { seen.push_back("timer"); });  // after(): never owned
    }
    {
      Loop::OwnerScope scope(loop, b);
      watch(loop.sleep(0.01), "b");
    }
    loop.cancelOwned(a);
    CHECK(seen.empty());  // failed (BrokenPromise), the waiters resumed from the loop, not here
    REQUIRE(runUntil(loop, [&] { return seen.size() == 4; }));
    CHECK(seen[0] == "a1!");
    CHECK(seen[1] == "a2!");
    CHECK(seen[2] == "b");
    CHECK(seen[3] == "timer");
    loop.cancelOwned(a);  // nothing left: harmless
  }

  TEST_CASE("a promise broken between runs resumes its waiter from a loop, never in place") {
    Loop outer;
    int resumed = 0;
    std::vector<Future<int>> held;  // a waiter holds its future, as a coroutine frame does
    auto breakOne = [&] {
      Promise<int> p;
      held.push_back(p.future());
      held.back().then([&](Future<int>& r) { resumed += r.failed() ? 1 : 100; });
      // p is dropped unfulfilled here, outside any run
    };
    breakOne();
    CHECK(resumed == 0);
    REQUIRE(runUntil(outer, [&] { return resumed == 1; }));
    // the newest loop alive takes it; loops freed in any order leave nothing dangling
    auto first = std::make_unique<Loop>();
    auto second = std::make_unique<Loop>();
    first.reset();
    breakOne();
    CHECK(resumed == 1);
    second.reset();  // runs what was posted to it as it goes
    CHECK(resumed == 2);
    breakOne();  // back to the outer loop
    CHECK(resumed == 2);
    REQUIRE(runUntil(outer, [&] { return resumed == 3; }));
    // a loop made here and destroyed on another thread leaves nothing dangling here
    auto gone = std::make_unique<Loop>();
    std::thread([&] { gone.reset(); }).join();
    breakOne();
    REQUIRE(runUntil(outer, [&] { return resumed == 4; }));
  }

  TEST_CASE(
      "a promise broken here between runs, its loop running on another thread: resumed there") {
    auto worker = std::make_unique<Loop>();  // the newest loop made on this thread
    std::atomic<bool> stop{false};
    std::atomic<bool> resumed{false};
    std::thread::id resumed_on;
    Future<int> held;
    {
      Promise<int> p;
      held = p.future();
      held.then([&](Future<int>& r) {
        resumed_on = std::this_thread::get_id();
        resumed = r.failed();
      });
      std::thread runner([&] {
        while (!stop) worker->runOnce();
      });
      {
        Promise<int> dropped = std::move(p);  // broken here, on this thread, outside any run
      }
      for (int i = 0; i < 2000 && !resumed; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      auto runner_id = runner.get_id();
      stop = true;
      worker->postFromThread([] {});  // wakes the runner's last runOnce
      runner.join();
      CHECK(resumed);
      CHECK(resumed_on == runner_id);
    }
  }

  TEST_CASE("postFromThread: callbacks from many threads all run, on the loop's thread") {
    Loop loop;
    int ran = 0;
    bool all_on_loop_thread = true;
    auto loop_thread = std::this_thread::get_id();
    std::vector<std::thread> workers;
    for (int t = 0; t < 4; ++t)
      workers.emplace_back([&] {
        for (int i = 0; i < 10000; ++i)
          loop.postFromThread([&] {
            ++ran;  // no lock: only the loop's thread runs these
            all_on_loop_thread &= std::this_thread::get_id() == loop_thread;
          });
      });
    REQUIRE(runUntil(loop, [&] { return ran == 40000; }));
    for (auto& w : workers) w.join();
    CHECK(all_on_loop_thread);
  }

  struct Ticker {
    TimerWatcher t;
    int ticks = 0;
    void onTick(int) { ++ticks; }
  };

  TEST_CASE("repeating timer and restart") {
    Loop loop;
    Ticker k;
    k.t.bind<&Ticker::onTick>(loop.raw(), &k);
    k.t.start(0.005, 0.005);
    REQUIRE(runUntil(loop, [&] { return k.ticks >= 3; }));
    k.t.stop();
    int at = k.ticks;
    loop.after(0.03, [] {});
    runUntil(
        loop, [] { return false; }, 0.03);
    CHECK(k.ticks == at);
  }

  TEST_CASE("the backend can be chosen, by option or by AIORPC_LOOP_BACKEND") {
    Loop poll(LoopBackend::kPoll);
    CHECK(std::string(poll.backendName()) == "poll");
    Loop select(LoopBackend::kSelect);
    CHECK(std::string(select.backendName()) == "select");
    Loop any;
    const char* env = std::getenv("AIORPC_LOOP_BACKEND");
    if (env) CHECK(std::string(any.backendName()) == env);
    MESSAGE("default loop backend here: " << any.backendName());
  }

  TEST_CASE("run() returns when only the loop's own watchers remain") {
    Loop loop;
    int n = 0;
    loop.after(0.001, [&] { ++n; });
    loop.onSignal(SIGUSR2, [](int) {});
    loop.run();
    CHECK(n == 1);
  }

  TEST_CASE("signals reach the handler") {
    Loop loop;
    int got = 0;
    loop.onSignal(SIGUSR1, [&](int s) { got = s; });
    loop.post([] { ::raise(SIGUSR1); });
    REQUIRE(runUntil(loop, [&] { return got == SIGUSR1; }));
  }
}

TEST_SUITE("log throttle") {
  TEST_CASE("one line per period; the lines held back are counted and reset") {
    aiorpc::core::log::Throttle t(1);
    CHECK(t.admit(100.0));
    CHECK(t.held() == 0);
    CHECK_FALSE(t.admit(100.2));
    CHECK_FALSE(t.admit(100.9));
    CHECK(t.admit(101.0));
    CHECK(t.held() == 2);
    CHECK(t.held() == 0);
  }
}

namespace {
struct Thing {
  int value = 0;
  std::unique_ptr<int> owned;
  static inline int resets = 0;
  void reset() noexcept {
    ++resets;
    value = 0;
    owned.reset();
  }
};
}  // namespace

TEST_SUITE("pool") {
  TEST_CASE("objects come back reset and are handed out again, up to the bound") {
    aiorpc::core::Pool<Thing> pool(2);
    auto a = pool.get();
    Thing* first = a.get();
    a->value = 7;
    a->owned = std::make_unique<int>(1);
    a.reset();  // back: reset, kept as a spare
    CHECK(Thing::resets == 1);
    CHECK(pool.spare() == 1);
    auto b = pool.get();
    CHECK(b.get() == first);  // the same object again, fresh
    CHECK(b->value == 0);
    CHECK(b->owned == nullptr);
    auto c = pool.get(), d = pool.get();
    b.reset(), c.reset(), d.reset();
    CHECK(pool.spare() == 2);  // the third is freed (ASan: no leak)
    CHECK(Thing::resets == 4);
  }
}
