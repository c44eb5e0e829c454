// The reactor: one libev loop, posted callbacks, deferred deletion and a before-sleep flush.
#pragma once

#include <ev.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "aiorpc/core/callback.h"
#include "aiorpc/core/future.h"
#include "aiorpc/core/list.h"
#include "aiorpc/core/socket.h"
#include "aiorpc/core/watcher.h"

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
// Callbacks never run inside the call that schedules them: what post() queues runs once the
// current callback stack has unwound, from the loop's check watcher (after the poll) or its
// prepare watcher (before the next sleep), whichever comes first. post() is not cancellable:
// work for an object that may be destroyed first goes through that object's Tasks.
// libev's backend. kAuto: the platform's best (epoll on Linux, kqueue on the BSDs and macOS),
// unless the environment variable AIORPC_LOOP_BACKEND names one (poll, select, epoll, kqueue):
// the test run uses it to run the suites once more on poll.
enum class LoopBackend { kAuto, kPoll, kSelect, kEpoll, kKqueue };

class Loop {
 public:
  explicit Loop(LoopBackend backend = LoopBackend::kAuto);
  // Destroyed after every object made on it (libev's watchers need the loop). Runs what was
  // posted (deferred deletes among it), then drops every timer uncalled; sleeps still pending
  // fail with BrokenPromise (docs/architecture.md, "Who owns a pending callback").
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
  const char* backendName() const noexcept;

  void post(Callback<void()> cb);
  // The one call that is safe from any thread: runs `cb` on the loop's thread soon (libev's
  // ev_async wakes the loop). For worker threads handing results back; `cb` must own what it
  // uses (move it in). Callbacks still queued when the loop is destroyed are dropped.
  void postFromThread(Callback<void()> cb);
  // Frees `p` once the callback stack has unwound (Envoy's deferredDelete).
  template <class T>
  void deferDelete(std::unique_ptr<T> p) {
    post([q = std::move(p)]() mutable { q.reset(); });
  }
  void wantFlush(Flushable* f) noexcept {
    if (!f->linked()) flush_list_.pushBack(f);
  }

  // One-shot timer owned by the loop; `cb` runs once after `sec` seconds of loop time (negative:
  // at once). The returned id cancels it (never another timer: ids are not reused). A NaN or
  // infinite `sec` is refused with std::invalid_argument: durations from outside must be checked
  // where they come in.
  using TimerId = uint64_t;
  TimerId after(double sec, Callback<void()> cb);
  // True when the timer was pending (its callback is destroyed, never called).
  bool cancel(TimerId id) noexcept;
  // Drops every one-shot timer without running it (sleeps then fail with BrokenPromise). The
  // owner calls it at shutdown while what those callbacks touch is still alive; ~Loop does too.
  void cancelAll() noexcept;
  // co_await loop.sleep(s): completes after `s` seconds without blocking the loop (NaN or
  // infinite: refused, std::invalid_argument). A sleep started inside an OwnerScope belongs to
  // that owner (see cancelOwned).
  Future<void> sleep(double sec);

  // Owners of sleeps: the rpc server opens an OwnerScope for a connection while it dispatches
  // that connection's requests, and calls cancelOwned when the connection goes, so a handler's
  // sleep that only that connection was waiting for ends at once (its future fails with
  // BrokenPromise) instead of holding memory until it would have fired.
  using Owner = uint64_t;
  Owner newOwner() noexcept { return ++last_owner_; }
  class OwnerScope {
   public:
    OwnerScope(Loop& loop, Owner o) noexcept : loop_(loop), prev_(loop.owner_) { loop.owner_ = o; }
    ~OwnerScope() { loop_.owner_ = prev_; }
    OwnerScope(const OwnerScope&) = delete;
    OwnerScope& operator=(const OwnerScope&) = delete;

   private:
    Loop& loop_;
    Owner prev_;
  };
  // Ends every timer and sleep of `owner`: timers are dropped uncalled, sleeps fail with
  // BrokenPromise (their waiters resume from a posted task).
  void cancelOwned(Owner owner) noexcept;
  // A one-shot timer that belongs to `owner`: cancelOwned(owner) drops it (see Tasks).
  TimerId after(double sec, Owner owner, Callback<void()> cb) {
    return start(sec, std::move(cb), owner);
  }

  // Handles `signo` (replacing an earlier handler for it).
  void onSignal(int signo, Callback<void(int)> cb);

  // Closes a socket whose replies are all written without destroying them in flight: shuts the
  // write side (the peer reads every reply, then EOF), then reads and discards until the peer's
  // EOF, an error or kLingerSeconds (longer while replies are still unacknowledged by the peer,
  // up to kMaxLingerSeconds). Closing with unread input at once would send a TCP reset,
  // and a reset makes the peer's kernel drop replies it has received but not yet handed over
  // (nginx's lingering close). Bounded: past kMaxLingering sockets a socket is
  // not lingered and the socket closes at once. Lingering sockets do not keep run() going.
  void linger(Fd fd) noexcept;
  static constexpr double kLingerSeconds = 2;
  static constexpr double kMaxLingerSeconds = 30;  // while the peer still receives our replies
  static constexpr size_t kMaxLingering = 4096;
  size_t lingering() const noexcept { return lingering_.size(); }

 private:
  struct OneShot;
  struct Sig;
  struct Linger;
  void onPrepare(int) noexcept;
  void onCheck(int) noexcept;
  void onIdle(int) noexcept;
  void onAsync(int) noexcept;
  void runPosted() noexcept;
  void endLinger(Linger* l) noexcept;
  TimerId start(double sec, Callback<void()> cb, Owner owner);

  struct ev_loop* loop_;
  PrepareWatcher prepare_;  // before sleeping: posted work, then the batched flush
  CheckWatcher check_;      // after polling: posted work
  IdleWatcher idle_;        // keeps the poll from blocking while posted work is waiting
  AsyncWatcher async_;      // postFromThread's wake-up
  std::mutex remote_mu_;
  std::vector<Callback<void()>> remote_;  // guarded by remote_mu_
  std::vector<Callback<void()>> posted_, running_;
  ListNode flush_list_;
  std::vector<std::unique_ptr<OneShot>> timers_;  // slot = id - 1; freed slots reused
  std::vector<TimerId> free_timer_ids_;           // free slots
  std::vector<uint32_t> generations_;             // per slot
  Owner owner_ = 0, last_owner_ = 0;
  std::unordered_map<Owner, ListNode> owned_;  // sleeps by owner (heads of intrusive lists)
  bool cancelling_ = false;
  std::vector<std::unique_ptr<Sig>> signals_;
  std::vector<std::unique_ptr<Linger>> lingering_;  // unordered; erased by swap with the last
};

// The pending work of one object on a loop (STYLE rule 8): timers and posted tasks started
// through it belong to it, and its destructor drops those that have not run (their callbacks
// destroyed, never called), so a task never runs for an object that has gone. Declare it last
// among the object's members: it goes first, while what those callbacks hold is still alive.
// The Loop outlives every object made on it (as libev's watchers need).
class Tasks {
 public:
  explicit Tasks(Loop& loop) : loop_(loop), owner_(loop.newOwner()) {}
  ~Tasks() { loop_.cancelOwned(owner_); }
  Tasks(const Tasks&) = delete;
  Tasks& operator=(const Tasks&) = delete;

  Loop::TimerId after(double sec, Callback<void()> cb) {
    return loop_.after(sec, owner_, std::move(cb));
  }
  // Runs `cb` from the loop at its next iteration, unless this goes first.
  Loop::TimerId post(Callback<void()> cb) { return after(0, std::move(cb)); }

 private:
  Loop& loop_;
  Loop::Owner owner_;
};

// Process set-up for servers: ignore SIGPIPE, raise RLIMIT_NOFILE's soft limit to the hard one.
// Returns the new soft limit.
long prepareProcess() noexcept;

}  // namespace aiorpc::core
