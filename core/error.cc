// The aiorpc::core error category.
#include "aiorpc/core/error.h"

namespace aiorpc::core {
namespace {

class Category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "aiorpc"; }
  std::string message(int c) const override {
    switch (static_cast<Errc>(c)) {
      case Errc::kBadAddress:
        return "bad address";
      case Errc::kTimedOut:
        return "timed out";
      case Errc::kNotTls:
        return "not a TLS handshake (a plaintext client?)";
    }
    return "unknown error";
  }
};

}  // namespace

const std::error_category& category() noexcept {
  static const Category c;
  return c;
}

}  // namespace aiorpc::core
