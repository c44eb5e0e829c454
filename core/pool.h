// Pool: objects handed out as unique_ptrs whose deleter gives them back for reuse (bounded),
// for the hot path's per-request objects: no allocation in steady state. Single-threaded.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

namespace aiorpc::core {

// T needs a default constructor and reset() (back to its default state; called when an object
// comes back, so whatever it owns goes then, as it would at delete). The pool must outlive every
// pointer it handed out: its owner declares it before what holds them, or frees those first.
template <class T>
class Pool {
 public:
  struct Return {
    Pool* pool = nullptr;
    void operator()(T* t) const noexcept { pool->put(t); }
  };
  using Ptr = std::unique_ptr<T, Return>;

  explicit Pool(size_t max_spare) : max_(max_spare) {}
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  Ptr get() {
    if (spare_.empty()) return Ptr(new T(), Return{this});
    T* t = spare_.back().release();
    spare_.pop_back();
    return Ptr(t, Return{this});
  }
  size_t spare() const noexcept { return spare_.size(); }

 private:
  void put(T* t) noexcept {
    t->reset();
    if (spare_.size() < max_) {
      spare_.emplace_back(t);  // within capacity once warm: push_back does not allocate
    } else {
      delete t;
    }
  }
  size_t max_;
  std::vector<std::unique_ptr<T>> spare_;
};

}  // namespace aiorpc::core
