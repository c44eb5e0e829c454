// Address ranges for allow-lists: `10.0.0.0/8`, `::1/128`, `127.0.0.1` (a single host).
#pragma once

#include <array>
#include <cstdint>
#include <string_view>
#include <vector>

#include "aiorpc/core/address.h"
#include "aiorpc/core/error.h"

namespace aiorpc::core {

class Cidr {
 public:
  // IPv4 or IPv6 (no brackets), with an optional /prefix (default: the whole address).
  static Result<Cidr> parse(std::string_view text);
  // True when `a` is an IP address inside the range. An IPv4-mapped IPv6 address (::ffff:a.b.c.d)
  // is matched as the IPv4 address it carries. Unix-socket addresses never match.
  bool contains(const Address& a) const noexcept;

 private:
  int family_ = 0;  // AF_INET or AF_INET6
  int prefix_ = 0;
  std::array<uint8_t, 16> bytes_{};
};

// A comma-separated list of ranges; an empty list allows every address.
class AllowList {
 public:
  static Result<AllowList> parse(std::string_view text);
  bool empty() const noexcept { return ranges_.empty(); }
  // Unix-socket peers are always allowed (local, guarded by file permissions).
  bool allows(const Address& a) const noexcept;

 private:
  std::vector<Cidr> ranges_;
};

}  // namespace aiorpc::core
