// Future<T>: a single-threaded one-shot result, usable with .then() or co_await. It is also
// the return type of coroutines (Task<T>): they start eagerly and complete the future.
#pragma once

#include <coroutine>
#include <exception>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "aiorpc/core/callback.h"

namespace aiorpc::core {

struct Unit {};

// The error of a Future whose Promise was dropped without completing it (its operation was
// abandoned, e.g. a timer cancelled at shutdown): waiters are resumed rather than leaked.
struct BrokenPromise : std::runtime_error {
  BrokenPromise() : std::runtime_error("operation abandoned (broken promise)") {}
};

namespace detail {

template <class T>
struct State {
  int refs = 1;
  std::optional<T> value;
  std::exception_ptr error;
  Callback<void()> cont;  // at most one waiter
  bool done() const noexcept { return value.has_value() || error; }
  void complete() {
    if (cont) {
      auto c = std::move(cont);
      c();
    }
  }
};

template <class T>
void release(State<T>* s) noexcept {
  if (s && --s->refs == 0) delete s;
}

// How a broken promise's waiter is resumed: from a task posted to a loop (kept by core::Loop:
// the innermost running on this thread, else the newest made on this thread and alive), never
// inside the destructor that broke the promise (STYLE rule 8). With no loop it runs at once.
struct Deferral {
  void (*post)(void* loop, Callback<void()> task) = nullptr;
  void* loop = nullptr;
};
inline thread_local Deferral t_deferral;

// Completes a state when called; holds a reference until it is gone (run or dropped).
template <class T>
struct Resume {
  State<T>* s;
  explicit Resume(State<T>* st) noexcept : s(st) { ++s->refs; }
  Resume(Resume&& o) noexcept : s(std::exchange(o.s, nullptr)) {}
  Resume(const Resume&) = delete;
  Resume& operator=(const Resume&) = delete;
  Resume& operator=(Resume&&) = delete;
  ~Resume() { release(s); }
  void operator()() {
    if (s) s->complete();
  }
};

}  // namespace detail

template <class T>
class Promise;

// Move-only handle to a result that may not be there yet. co_await gives the value or rethrows
// the error; a Future that is already complete is not suspended on (await_ready), so long
// chains of synchronously completing awaits use no stack.
template <class T = void>
class [[nodiscard]] Future {
  using V = std::conditional_t<std::is_void_v<T>, Unit, T>;

 public:
  using value_type = T;
  struct promise_type;

  Future() = default;
  Future(Future&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  Future& operator=(Future&& o) noexcept {
    if (this != &o) {
      detail::release(s_);
      s_ = std::exchange(o.s_, nullptr);
    }
    return *this;
  }
  ~Future() { detail::release(s_); }

  static Future ready(V v) {
    Future f(new detail::State<V>());
    f.s_->value.emplace(std::move(v));
    return f;
  }
  static Future failed(const std::exception_ptr& e) {
    Future f(new detail::State<V>());
    f.s_->error = e;
    return f;
  }

  bool valid() const noexcept { return s_ != nullptr; }
  bool done() const noexcept { return s_ && s_->done(); }
  bool failed() const noexcept { return s_ && s_->error; }
  std::exception_ptr exception() const noexcept { return s_ ? s_->error : nullptr; }
  // The value (rethrows the error). Only when done().
  V& get() {
    if (s_->error) std::rethrow_exception(s_->error);
    return *s_->value;
  }
  // Runs `f(Future&)` when done: at once if it already is, else from the completer.
  template <class F>
  void then(F f) {
    if (done()) {
      f(*this);
      return;
    }
    s_->cont = [this_s = s_, fn = std::move(f)]() mutable {
      Future self(this_s);
      ++this_s->refs;
      fn(self);
    };
  }

  // co_await: the awaiter refers to this Future (g++ 12 would otherwise try to copy a Future
  // named through a lambda's reference capture, and a Future is move-only).
  struct Awaiter {
    Future* f;
    bool await_ready() const noexcept { return f->done(); }
    void await_suspend(std::coroutine_handle<> h) {
      f->s_->cont = [h] { h.resume(); };
    }
    T await_resume() {
      if (f->s_->error) std::rethrow_exception(f->s_->error);
      if constexpr (!std::is_void_v<T>) return std::move(*f->s_->value);
    }
  };
  Awaiter operator co_await() & noexcept { return {this}; }
  // A temporary lives to the end of the full expression, past the resumption.
  Awaiter operator co_await() && noexcept { return {this}; }

 private:
  friend class Promise<T>;
  explicit Future(detail::State<V>* s) : s_(s) {}
  detail::State<V>* s_ = nullptr;
};

// The completing side. Completing twice is ignored (first wins), so "exactly once" holds even
// when a timeout and a late reply race.
template <class T = void>
class Promise {
  using V = std::conditional_t<std::is_void_v<T>, Unit, T>;

 public:
  Promise() : s_(new detail::State<V>()) {}
  Promise(Promise&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  Promise& operator=(Promise&& o) noexcept {
    if (this != &o) {
      Promise dropped(std::move(*this));
      s_ = std::exchange(o.s_, nullptr);
    }
    return *this;
  }
  // A promise dropped unfulfilled fails its future with BrokenPromise; a waiter already on it is
  // resumed from a posted task, not from inside this destructor.
  ~Promise() {
    if (s_ && !s_->done() && s_->refs > 1) {
      s_->error = std::make_exception_ptr(BrokenPromise());
      if (s_->cont) {
        detail::Resume<V> resume(s_);
        auto& d = detail::t_deferral;
        if (d.post) {
          d.post(d.loop, std::move(resume));
        } else {
          resume();
        }
      }
    }
    detail::release(s_);
  }

  Future<T> future() {
    ++s_->refs;
    return Future<T>(s_);
  }
  bool done() const noexcept { return !s_ || s_->done(); }
  void setValue(V v = V{}) {
    if (done()) return;
    s_->value.emplace(std::move(v));
    fire();
  }
  void setException(std::exception_ptr e) {
    if (done()) return;
    s_->error = std::move(e);
    fire();
  }

 private:
  void fire() {
    // Keep the state alive across the continuation, which may drop the last Future.
    auto* s = s_;
    ++s->refs;
    s->complete();
    detail::release(s);
  }
  detail::State<V>* s_;
};

namespace detail {
template <class T>
struct PromiseBase {
  Promise<T> p;
  void unhandled_exception() { p.setException(std::current_exception()); }
  std::suspend_never initial_suspend() noexcept { return {}; }  // eager
  std::suspend_never final_suspend() noexcept { return {}; }    // frame frees itself
};
template <class T>
struct ValuePromise : PromiseBase<T> {
  template <class U = T>
  void return_value(U&& v) {
    this->p.setValue(std::forward<U>(v));
  }
};
struct VoidPromise : PromiseBase<void> {
  void return_void() { p.setValue(); }
};
}  // namespace detail

template <class T>
struct Future<T>::promise_type
    : std::conditional_t<std::is_void_v<T>, detail::VoidPromise, detail::ValuePromise<T>> {
  Future<T> get_return_object() { return this->p.future(); }
};

// A coroutine returning Task<T> runs at once until its first suspension.
template <class T = void>
using Task = Future<T>;

// Waits for every future (all already started) and gives their values in order; the first
// error (in order) is rethrown.
template <class T>
Task<std::vector<T>> all(std::vector<Future<T>> fs) {
  std::vector<T> out;
  out.reserve(fs.size());
  std::exception_ptr first;
  for (auto& f : fs) {
    try {
      out.push_back(co_await f);
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
  co_return out;
}

}  // namespace aiorpc::core
