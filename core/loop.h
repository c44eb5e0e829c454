// The reactor: one libev loop, posted callbacks, deferred deletion and a before-sleep flush.
#pragma once

#include <ev.h>

#include <memory>
#include <vector>

#include "core/callback.h"
#include "core/future.h"
#include "core/list.h"
#include "core/watcher.h"

namespace aiorpc::core {

// Something with buffered output, flushed once per loop iteration just before the loop sleeps
// (Redis's beforeSleep). Register with Loop::wantFlush(); a destroyed Flushable unlinks itself.
class Flushable : public ListNode {
 public:
  virtual void flush() noexcept = 0;

 protected:
  ~Flushable() = default;
};

// Single-threaded. Every method must be called from the thread running the loop.
// Callbacks never run inside the call that schedules them: post() runs them later in the same
// iteration, once the current callback stack has unwound.
class Loop {
 public:
  Loop();
  ~Loop();
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  struct ev_loop* raw() const noexcept {
    return loop_;
  }
  // Runs until stop() or until nothing is left to watch.
  void run();
  // Runs one iteration (blocking if nothing is ready).
  void runOnce();
  void stop() noexcept;
  double now() const noexcept { return ev_now(loop_); }

  void post(Callback<void()> cb);
  // Frees `p` once the callback stack has unwound (Envoy's deferredDelete).
  template <class T>
  void deferDelete(std::unique_ptr<T> p) {
    post([q = std::move(p)]() mutable { q.reset(); });
  }
  void wantFlush(Flushable* f) noexcept {
    if (!f->linked()) flush_list_.pushBack(f);
  }

  // One-shot timer owned by the loop; `cb` runs once after `sec` seconds of loop time. The
  // returned id cancels it.
  using TimerId = unsigned long;
  TimerId after(double sec, Callback<void()> cb);
  void cancel(TimerId id) noexcept;
  // Drops every one-shot timer without running it (sleeps then fail with BrokenPromise). The
  // owner calls it at shutdown while what those callbacks touch is still alive; ~Loop does too.
  void cancelAll() noexcept;
  // co_await loop.sleep(s): completes after `s` seconds without blocking the loop.
  Future<void> sleep(double sec);

  // Handles `signo` (replacing an earlier handler for it).
  void onSignal(int signo, Callback<void(int)> cb);

 private:
  struct OneShot;
  struct Sig;
  void onPrepare(int) noexcept;
  void onCheck(int) noexcept;
  void onIdle(int) noexcept;
  void runPosted() noexcept;

  struct ev_loop* loop_;
  PrepareWatcher prepare_;  // before sleeping: posted work, then the batched flush
  CheckWatcher check_;      // after polling: posted work
  IdleWatcher idle_;        // keeps the poll from blocking while posted work is waiting
  std::vector<Callback<void()>> posted_, running_;
  ListNode flush_list_;
  std::vector<std::unique_ptr<OneShot>> timers_;  // slot = id - 1; freed slots reused
  std::vector<TimerId> free_timer_ids_;
  bool cancelling_ = false;
  std::vector<std::unique_ptr<Sig>> signals_;
};

// Process set-up for servers: ignore SIGPIPE, raise RLIMIT_NOFILE's soft limit to the hard one.
// Returns the new soft limit.
long prepareProcess() noexcept;

}  // namespace aiorpc::core
