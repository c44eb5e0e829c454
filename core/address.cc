// Address parsing and printing.
#include "aiorpc/core/address.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netdb.h>

#include <charconv>
#include <cstring>

namespace aiorpc::core {

std::optional<HostPort> splitHostPort(std::string_view text) noexcept {
  std::string_view host, port_text;
  if (!text.empty() && text[0] == '[') {
    auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
      return std::nullopt;
    host = text.substr(1, close - 1);
    port_text = text.substr(close + 2);
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return std::nullopt;  // v6 needs []
  }
  int port = -1;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc{} || end != port_text.data() + port_text.size() || port < 0 || port > 65535 ||
      host.empty())
    return std::nullopt;
  return HostPort{host, port};
}

Result<Address> Address::parse(std::string_view text) {
  Address a;
  if (text.substr(0, 5) == "unix:") {
    auto path = text.substr(5);
    sockaddr_un un{};
    if (path.empty() || path.size() >= sizeof un.sun_path) return Errc::kBadAddress;
    un.sun_family = AF_UNIX;
    std::memcpy(un.sun_path, path.data(), path.size());
    std::memcpy(&a.storage_, &un, sizeof un);
    a.len_ = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
    return a;
  }
  auto hp = splitHostPort(text);
  if (!hp) return Errc::kBadAddress;
  std::string_view host = hp->host;
  int port = hp->port;
  if (auto ip = fromIp(host, port)) return ip;
  // A name: resolved here, blocking (start-up and tools only; the loop uses core::Resolver).
  std::string h(host);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(h.c_str(), nullptr, &hints, &res) != 0 || !res) return Errc::kBadAddress;
  std::memcpy(&a.storage_, res->ai_addr, res->ai_addrlen);
  a.len_ = res->ai_addrlen;
  freeaddrinfo(res);
  a.setPort(port);
  return a;
}

Result<Address> Address::fromIp(std::string_view ip, int port) {
  if (port < 0 || port > 65535 || ip.empty() || ip.size() >= INET6_ADDRSTRLEN)
    return Errc::kBadAddress;
  std::string h(ip);
  if (h == "localhost") h = "127.0.0.1";
  Address a;
  sockaddr_in v4{};
  sockaddr_in6 v6{};
  if (inet_pton(AF_INET, h.c_str(), &v4.sin_addr) == 1) {
    v4.sin_family = AF_INET;
    std::memcpy(&a.storage_, &v4, sizeof v4);
    a.len_ = sizeof v4;
  } else if (inet_pton(AF_INET6, h.c_str(), &v6.sin6_addr) == 1) {
    v6.sin6_family = AF_INET6;
    std::memcpy(&a.storage_, &v6, sizeof v6);
    a.len_ = sizeof v6;
  } else {
    return Errc::kBadAddress;
  }
  a.setPort(port);
  return a;
}

Address Address::fromSockaddr(const sockaddr* sa, socklen_t len) {
  Address a;
  if (len > sizeof a.storage_) len = sizeof a.storage_;
  std::memcpy(&a.storage_, sa, len);
  a.len_ = len;
  return a;
}

std::string Address::host() const {
  char buf[INET6_ADDRSTRLEN] = {};
  switch (family()) {
    case AF_INET:
      inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&storage_)->sin_addr, buf,
                sizeof buf);
      return buf;
    case AF_INET6: {
      auto* in6 = reinterpret_cast<const sockaddr_in6*>(&storage_);
      if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
        inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], buf, sizeof buf);
      } else {
        inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof buf);
      }
      return buf;
    }
    case AF_UNIX: {
      auto* un = reinterpret_cast<const sockaddr_un*>(&storage_);
      size_t n =
          len_ > offsetof(sockaddr_un, sun_path) ? len_ - offsetof(sockaddr_un, sun_path) : 0;
      return std::string(un->sun_path, strnlen(un->sun_path, n));
    }
  }
  return {};
}

int Address::port() const noexcept {
  if (family() == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&storage_)->sin_port);
  if (family() == AF_INET6)
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_port);
  return 0;
}

void Address::setPort(int port) noexcept {
  if (family() == AF_INET)
    reinterpret_cast<sockaddr_in*>(&storage_)->sin_port = htons(static_cast<uint16_t>(port));
  if (family() == AF_INET6)
    reinterpret_cast<sockaddr_in6*>(&storage_)->sin6_port = htons(static_cast<uint16_t>(port));
}

std::string Address::toString() const {
  // fmt rather than operator+: g++ 12 -O3 warns falsely (-Wrestrict) on the string chain.
  if (isUnix()) return fmt::format("unix:{}", host());
  auto* in6 = reinterpret_cast<const sockaddr_in6*>(&storage_);
  if (family() == AF_INET6 && !IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
    return fmt::format("[{}]:{}", host(), port());
  return fmt::format("{}:{}", host(), port());
}

}  // namespace aiorpc::core
