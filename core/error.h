// Error codes of aiorpc::core and a small Result<T> shaped like std::expected.
#pragma once

#include <cassert>
#include <string>
#include <system_error>
#include <utility>
#include <variant>

namespace aiorpc::core {

enum class Errc {
  kBadAddress = 1,  // an address string that does not parse or resolve
  kTimedOut,        // connect or call did not finish in time
  kNotTls,          // a TLS listener's peer opened with something else (plaintext)
};                  // (rpc-level outcomes are rpc::Kind and rpc::Ended, not transport errors)

const std::error_category& category() noexcept;
inline std::error_code make_error_code(Errc e) noexcept {
  return {static_cast<int>(e), category()};
}
inline std::error_code sysError(int err) noexcept { return {err, std::system_category()}; }

// Holds a T or an error. value() on an error is a bug.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T v) : v_(std::move(v)) {}                 // NOLINT(google-explicit-constructor)
  Result(std::error_code e) : v_(e) { assert(e); }  // NOLINT
  Result(Errc e) : v_(make_error_code(e)) {}        // NOLINT

  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  T& operator*() { return value(); }
  std::error_code error() const noexcept { return ok() ? std::error_code{} : std::get<1>(v_); }

 private:
  std::variant<T, std::error_code> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(std::error_code e) : e_(e) {}        // NOLINT(google-explicit-constructor)
  Result(Errc e) : e_(make_error_code(e)) {}  // NOLINT
  bool ok() const noexcept { return !e_; }
  explicit operator bool() const noexcept { return ok(); }
  std::error_code error() const noexcept { return e_; }

 private:
  std::error_code e_;
};

}  // namespace aiorpc::core

template <>
struct std::is_error_code_enum<aiorpc::core::Errc> : std::true_type {};
