// Liveness: lets code that calls out (a user callback, a handler) learn afterwards whether the
// object it called out from was destroyed meanwhile, without a weak_ptr or an atomic.
#pragma once

namespace aiorpc::core {

// A member of the object that may be destroyed from inside its own upcalls. Code about to call
// out puts a Watch on its stack; when the object's Liveness is destroyed (or markGone() is
// called) every Watch on the stack learns it, and the code that called out touches nothing of
// the object afterwards (docs/architecture.md, "Who owns a pending callback").
class Liveness {
 public:
  Liveness() = default;
  Liveness(const Liveness&) = delete;
  Liveness& operator=(const Liveness&) = delete;
  ~Liveness() { markGone(); }

  class Watch {
   public:
// g++ 12 cannot see that the destructor takes the address back off (a false positive).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdangling-pointer"
#endif
    explicit Watch(Liveness& l) noexcept : l_(&l), prev_(l.top_) { l.top_ = this; }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
    ~Watch() {
      if (!gone_) l_->top_ = prev_;
    }
    Watch(const Watch&) = delete;
    Watch& operator=(const Watch&) = delete;
    bool gone() const noexcept { return gone_; }

   private:
    friend class Liveness;
    Liveness* l_;
    Watch* prev_;
    bool gone_ = false;
  };

  // True while some code has called out from the object (a Watch is on the stack).
  bool busy() const noexcept { return top_ != nullptr; }
  // Tells every Watch on the stack that the object is gone (it is being destroyed, or will be
  // freed from the loop once they have unwound).
  void markGone() noexcept {
    for (Watch* w = top_; w; w = w->prev_) w->gone_ = true;
    top_ = nullptr;
  }

 private:
  Watch* top_ = nullptr;
};

}  // namespace aiorpc::core
