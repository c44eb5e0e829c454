// A move-only callable with small-buffer storage: continuations without a heap allocation.
#pragma once

#include <cstddef>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>

namespace aiorpc::core {

template <class Sig>
class Callback;

// Callables up to kInline bytes (and nothrow-movable) live inside the object; larger ones are
// boxed on the heap. Invoking an empty Callback is a bug (checked only by assertion).
template <class R, class... A>
class Callback<R(A...)> {
 public:
  static constexpr std::size_t kInline = 6 * sizeof(void*);

  Callback() noexcept = default;
  Callback(std::nullptr_t) noexcept {}
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, Callback> &&
                                              std::is_invocable_r_v<R, std::decay_t<F>&, A...>>>
  Callback(F&& f) {  // NOLINT(google-explicit-constructor): converting like std::function
    using D = std::decay_t<F>;
    if constexpr (sizeof(D) <= kInline && alignof(D) <= alignof(std::max_align_t) &&
                  std::is_nothrow_move_constructible_v<D>) {
      ::new (static_cast<void*>(buf_)) D(std::forward<F>(f));
      vt_ = &kInlineVt<D>;
    } else {
      *reinterpret_cast<D**>(buf_) = new D(std::forward<F>(f));
      vt_ = &kHeapVt<D>;
    }
  }
  Callback(Callback&& o) noexcept : vt_(o.vt_) {
    if (vt_) vt_->move(buf_, o.buf_);
    o.vt_ = nullptr;
  }
  Callback& operator=(Callback&& o) noexcept {
    if (this != &o) {
      reset();
      vt_ = o.vt_;
      if (vt_) vt_->move(buf_, o.buf_);
      o.vt_ = nullptr;
    }
    return *this;
  }
  Callback(const Callback&) = delete;
  Callback& operator=(const Callback&) = delete;
  ~Callback() { reset(); }

  explicit operator bool() const noexcept { return vt_ != nullptr; }
  R operator()(A... a) { return vt_->call(buf_, std::forward<A>(a)...); }
  void reset() noexcept {
    if (vt_) vt_->destroy(buf_);
    vt_ = nullptr;
  }

 private:
  struct VTable {
    R (*call)(void*, A&&...);
    void (*move)(void* dst, void* src) noexcept;
    void (*destroy)(void*) noexcept;
  };
  template <class D>
  static constexpr VTable kInlineVt{
      [](void* p, A&&... a) -> R { return (*static_cast<D*>(p))(std::forward<A>(a)...); },
      [](void* dst, void* src) noexcept {
        ::new (dst) D(std::move(*static_cast<D*>(src)));
        static_cast<D*>(src)->~D();
      },
      [](void* p) noexcept { static_cast<D*>(p)->~D(); }};
  template <class D>
  static constexpr VTable kHeapVt{
      [](void* p, A&&... a) -> R { return (**static_cast<D**>(p))(std::forward<A>(a)...); },
      [](void* dst, void* src) noexcept { *static_cast<D**>(dst) = *static_cast<D**>(src); },
      [](void* p) noexcept { delete *static_cast<D**>(p); }};

  alignas(std::max_align_t) unsigned char buf_[kInline];
  const VTable* vt_ = nullptr;
};

// A non-owning reference to a callable, for a parameter that is called before the function
// returns: no allocation and no copy of the callable (std::function may do both). Never store one.
template <class Sig>
class FunctionRef;

template <class R, class... A>
class FunctionRef<R(A...)> {
 public:
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, FunctionRef> &&
                                              std::is_invocable_r_v<R, F&, A...>>>
  FunctionRef(F&& f) noexcept  // NOLINT(google-explicit-constructor)
      : obj_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* o, A... a) -> R {
          return (*static_cast<std::remove_reference_t<F>*>(o))(std::forward<A>(a)...);
        }) {}
  R operator()(A... a) const { return call_(obj_, std::forward<A>(a)...); }

 private:
  void* obj_;
  R (*call_)(void*, A...);
};

}  // namespace aiorpc::core
