// Address ranges.
#include "aiorpc/core/cidr.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>
#include <optional>
#include <string>

namespace aiorpc::core {

Result<Cidr> Cidr::parse(std::string_view text) {
  Cidr c;
  std::string_view ip = text;
  int max = 0;
  std::optional<int> prefix;
  if (auto slash = text.find('/'); slash != std::string_view::npos) {
    ip = text.substr(0, slash);
    auto p = text.substr(slash + 1);
    int n = -1;
    auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), n);
    if (p.empty() || ec != std::errc{} || end != p.data() + p.size()) return Errc::kBadAddress;
    prefix = n;
  }
  std::string host(ip);
  if (inet_pton(AF_INET, host.c_str(), c.bytes_.data()) == 1) {
    c.family_ = AF_INET;
    max = 32;
  } else if (inet_pton(AF_INET6, host.c_str(), c.bytes_.data()) == 1) {
    c.family_ = AF_INET6;
    max = 128;
  } else {
    return Errc::kBadAddress;
  }
  c.prefix_ = prefix.value_or(max);
  if (c.prefix_ < 0 || c.prefix_ > max) return Errc::kBadAddress;
  // An IPv4-mapped range (::ffff:a.b.c.d/96..128) is the IPv4 range it names: peers are
  // matched as IPv4 (contains() unmaps them), so it must be one too, or it never matches.
  static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (c.family_ == AF_INET6 && c.prefix_ >= 96 && std::memcmp(c.bytes_.data(), kMapped, 12) == 0) {
    std::memmove(c.bytes_.data(), c.bytes_.data() + 12, 4);
    std::memset(c.bytes_.data() + 4, 0, 12);
    c.family_ = AF_INET;
    c.prefix_ -= 96;
  }
  return c;
}

namespace {
bool samePrefix(const uint8_t* a, const uint8_t* b, int bits) noexcept {
  int whole = bits / 8;
  if (std::memcmp(a, b, static_cast<size_t>(whole)) != 0) return false;
  int rest = bits % 8;
  if (rest == 0) return true;
  auto mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a[whole] & mask) == (b[whole] & mask);
}
}  // namespace

bool Cidr::contains(const Address& a) const noexcept {
  const uint8_t* bytes = nullptr;
  int family = a.family();
  if (family == AF_INET) {
    bytes = reinterpret_cast<const uint8_t*>(
        &reinterpret_cast<const sockaddr_in*>(a.sockaddr_ptr())->sin_addr);
  } else if (family == AF_INET6) {
    bytes = reinterpret_cast<const sockaddr_in6*>(a.sockaddr_ptr())->sin6_addr.s6_addr;
    static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (family_ == AF_INET && std::memcmp(bytes, kMapped, 12) == 0) {
      bytes += 12;
      family = AF_INET;
    }
  } else {
    return false;
  }
  return family == family_ && samePrefix(bytes, bytes_.data(), prefix_);
}

Result<AllowList> AllowList::parse(std::string_view text) {
  AllowList l;
  while (!text.empty()) {
    auto comma = text.find(',');
    auto item = text.substr(0, comma);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    auto c = Cidr::parse(item);
    if (!c) return c.error();
    l.ranges_.push_back(*c);
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
  return l;
}

bool AllowList::allows(const Address& a) const noexcept {
  if (ranges_.empty() || a.isUnix()) return true;
  for (const auto& r : ranges_)
    if (r.contains(a)) return true;
  return false;
}

}  // namespace aiorpc::core
