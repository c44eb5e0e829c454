// RAII libev watchers: not copyable or movable, stopped on destruction, member-function callbacks.
#pragma once

#include <ev.h>

namespace aiorpc::core {

class Loop;
struct ev_loop* rawLoop(Loop& loop) noexcept;  // (loop.cc) so that bind(Loop&) needs no ev.h user

namespace detail {
template <class P>
struct ClassOf;
template <class T>
struct ClassOf<void (T::*)(int)> {
  using type = T;
};
template <class T>
struct ClassOf<void (T::*)(int) noexcept> {
  using type = T;
};
template <auto M>
struct MemberOf {
  using type = typename ClassOf<decltype(M)>::type;
};
}  // namespace detail

// One template for the six watcher kinds. `bind<&T::onEvent>(loop, this)` binds the callback
// `void T::onEvent(int revents)` without allocating: the object pointer rides in ev's `data`.
// Like the libev watcher it wraps, it must outlive its active period; the destructor stops it.
template <class W, void (*Start)(struct ev_loop*, W*), void (*Stop)(struct ev_loop*, W*)>
class Watcher {
 public:
  Watcher() = default;
  Watcher(const Watcher&) = delete;
  Watcher& operator=(const Watcher&) = delete;
  ~Watcher() { stop(); }

  template <auto M>
  void bind(struct ev_loop* loop, typename detail::MemberOf<M>::type* obj) noexcept {
    stop();
    loop_ = loop;
    ev_init(&w_, (&thunk<typename detail::MemberOf<M>::type, M>));
    w_.data = obj;
  }
  // Layers above core bind to a Loop, never to libev's loop.
  template <auto M>
  void bind(Loop& loop, typename detail::MemberOf<M>::type* obj) noexcept {
    bind<M>(rawLoop(loop), obj);
  }
  void start() noexcept {
    if (ev_is_active(&w_)) return;
    Start(loop_, &w_);
    afterStart();
  }
  void stop() noexcept {
    if (!loop_) return;
    beforeStop();
    Stop(loop_, &w_);  // also clears a pending event
  }
  // false: this watcher alone does not keep Loop::run() going (libev's ev_unref), e.g. a
  // housekeeping timer. Set before start(); owners above core never call libev for it.
  void keepLoopAlive(bool yes) noexcept { keeps_alive_ = yes; }
  bool active() const noexcept { return ev_is_active(&w_); }
  W* raw() noexcept { return &w_; }
  struct ev_loop* loop() const noexcept {
    return loop_;
  }

 private:
  template <class T, auto M>
  static void thunk(struct ev_loop*, W* w, int revents) noexcept {
    (static_cast<T*>(w->data)->*M)(revents);
  }

 protected:
  void afterStart() noexcept {
    if (!keeps_alive_ && ev_is_active(&w_)) ev_unref(loop_);
  }
  void beforeStop() noexcept {
    if (!keeps_alive_ && ev_is_active(&w_)) ev_ref(loop_);
  }
  bool keeps_alive_ = true;
  W w_{};
  struct ev_loop* loop_ = nullptr;
};

inline void evIoStart(struct ev_loop* l, ev_io* w) { ev_io_start(l, w); }
inline void evIoStop(struct ev_loop* l, ev_io* w) { ev_io_stop(l, w); }
inline void evTimerStart(struct ev_loop* l, ev_timer* w) { ev_timer_start(l, w); }
inline void evTimerStop(struct ev_loop* l, ev_timer* w) { ev_timer_stop(l, w); }
inline void evSignalStart(struct ev_loop* l, ev_signal* w) { ev_signal_start(l, w); }
inline void evSignalStop(struct ev_loop* l, ev_signal* w) { ev_signal_stop(l, w); }
inline void evAsyncStart(struct ev_loop* l, ev_async* w) { ev_async_start(l, w); }
inline void evAsyncStop(struct ev_loop* l, ev_async* w) { ev_async_stop(l, w); }
inline void evPrepareStart(struct ev_loop* l, ev_prepare* w) { ev_prepare_start(l, w); }
inline void evPrepareStop(struct ev_loop* l, ev_prepare* w) { ev_prepare_stop(l, w); }
inline void evCheckStart(struct ev_loop* l, ev_check* w) { ev_check_start(l, w); }
inline void evCheckStop(struct ev_loop* l, ev_check* w) { ev_check_stop(l, w); }
inline void evIdleStart(struct ev_loop* l, ev_idle* w) { ev_idle_start(l, w); }
inline void evIdleStop(struct ev_loop* l, ev_idle* w) { ev_idle_stop(l, w); }

// fd readiness. Level-triggered: keep EV_WRITE armed only while there is something to write.
class IoWatcher : public Watcher<ev_io, evIoStart, evIoStop> {
 public:
  void set(int fd, int events) noexcept {
    bool was = active();
    stop();
    ev_io_set(&w_, fd, events);
    if (was && events) start();
  }
  int events() const noexcept { return w_.events & (EV_READ | EV_WRITE); }
  int fd() const noexcept { return w_.fd; }
  // As if the fd were ready (this loop iteration): for input buffered above the kernel (TLS).
  void feed(int revents) noexcept { ev_feed_event(loop_, &w_, revents); }
};

// Relative timer on the loop clock. restart() is ev_timer_again: cheap re-arming for timeouts
// that are pushed back on every activity ("Be smart about timeouts", strategy 2).
class TimerWatcher : public Watcher<ev_timer, evTimerStart, evTimerStop> {
 public:
  // Non-finite or negative durations never reach libev (a NaN in its timer heap breaks every
  // timer of the loop): NaN and negatives become 0, +inf a century.
  static double sane(double s) noexcept { return s >= 0 ? (s < kCentury ? s : kCentury) : 0; }
  static constexpr double kCentury = 100.0 * 365 * 24 * 3600;
  void start(double after, double repeat = 0) noexcept {
    after = sane(after);
    repeat = sane(repeat);
    stop();
    ev_timer_set(&w_, after, repeat);
    ev_timer_start(loop_, &w_);
    afterStart();
  }
  void restart(double repeat) noexcept {
    beforeStop();
    w_.repeat = sane(repeat);
    ev_timer_again(loop_, &w_);
    afterStart();
  }
  double remaining() const noexcept {
    return ev_timer_remaining(loop_, const_cast<ev_timer*>(&w_));
  }
};

class SignalWatcher : public Watcher<ev_signal, evSignalStart, evSignalStop> {
 public:
  void set(int signo) noexcept { ev_signal_set(&w_, signo); }
};

// Thread-safe wake-up: send() may be called from any thread (Loop::postFromThread uses it).
class AsyncWatcher : public Watcher<ev_async, evAsyncStart, evAsyncStop> {
 public:
  void send() noexcept { ev_async_send(loop(), &w_); }
};

using PrepareWatcher = Watcher<ev_prepare, evPrepareStart, evPrepareStop>;
using CheckWatcher = Watcher<ev_check, evCheckStart, evCheckStop>;
using IdleWatcher = Watcher<ev_idle, evIdleStart, evIdleStop>;

}  // namespace aiorpc::core
