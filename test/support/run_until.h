// Test helpers: drive a loop until a condition holds or a deadline passes.
#pragma once

#include <functional>

#include "aiorpc/core/loop.h"

namespace aiorpc::test {

// Runs `loop` one iteration at a time until `pred()` is true; false after `timeout_s` seconds
// of real time. A 2 ms ticker bounds each poll, so predicates that look at sockets the loop
// does not watch (the test's own peer end) are re-checked promptly.
inline bool runUntil(core::Loop& loop, const std::function<bool()>& pred, double timeout_s = 10) {
  struct Tick {
    core::TimerWatcher t;
    void on(int) {}
  } tick;
  tick.t.bind<&Tick::on>(loop.raw(), &tick);
  tick.t.start(0.002, 0.002);
  bool expired = false;
  auto id = loop.after(timeout_s, [&] { expired = true; });
  while (!pred() && !expired) loop.runOnce();
  loop.cancel(id);
  return pred();
}

}  // namespace aiorpc::test
