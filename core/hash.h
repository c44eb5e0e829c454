// Hashing of short byte strings (method and service names) for the hot lookups: XXH3 (Debian's
// libxxhash) with a per-process random seed, so that names chosen by peers cannot be made to
// collide on purpose.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace aiorpc::core {

uint64_t hashBytes(std::string_view s) noexcept;

// A transparent hasher: unordered containers keyed by std::string, looked up by string_view.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return hashBytes(s); }
};

}  // namespace aiorpc::core
