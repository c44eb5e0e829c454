// Endpoint addresses: `host:port`, `[v6]:port`, `unix:/path`; parsed, resolved and printed.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <optional>
#include <string>
#include <string_view>

#include "aiorpc/core/error.h"

namespace aiorpc::core {

// `host:port` or `[v6]:port` split, as text: the host (brackets removed; not empty, no ':'
// unless it was bracketed) and a port of 0-65535. Nothing is resolved.
struct HostPort {
  std::string_view host;
  int port = 0;
};
std::optional<HostPort> splitHostPort(std::string_view text) noexcept;

class Address {
 public:
  Address() = default;
  // Parses numeric IPv4/IPv6 and `localhost`; other host names are resolved (blocking: for
  // start-up and tools, never on the hot path). Bad input → Errc::kBadAddress.
  static Result<Address> parse(std::string_view text);
  // An IP literal (v4, v6 without brackets, or `localhost`) and a port, as data: never a unix
  // path, never a DNS look-up. Anything else → Errc::kBadAddress.
  static Result<Address> fromIp(std::string_view ip, int port);
  static Address fromSockaddr(const sockaddr* sa, socklen_t len);

  int family() const noexcept { return storage_.ss_family; }
  bool isUnix() const noexcept { return family() == AF_UNIX; }
  const sockaddr* sockaddr_ptr() const noexcept {
    return reinterpret_cast<const sockaddr*>(&storage_);
  }
  socklen_t length() const noexcept { return len_; }
  // IP text (IPv4-mapped IPv6 shown as dotted IPv4) or the unix path.
  std::string host() const;
  int port() const noexcept;
  void setPort(int port) noexcept;
  // `1.2.3.4:5`, `[::1]:5`, `unix:/p`.
  std::string toString() const;

 private:
  sockaddr_storage storage_{};
  socklen_t len_ = 0;
};

}  // namespace aiorpc::core
