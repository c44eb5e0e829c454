// A dial target as users write it: an address, maybe after tls:// (SPEC §8).
#pragma once

#include <string>
#include <string_view>

#include "aiorpc/core/address.h"
#include "aiorpc/core/error.h"

namespace aiorpc::rpc {

// `HOST:PORT`, `[v6]:PORT`, `unix:/path`, or `tls://HOST:PORT` (TLS; not on unix sockets).
struct Target {
  Target() = default;
  Target(const core::Address& a) : addr(a) {}  // NOLINT: a plain address is a plain target
  core::Address addr;
  bool tls = false;
  std::string host;  // as written (brackets stripped): what the server's certificate must name
  std::string toString() const { return (tls ? "tls://" : "") + addr.toString(); }
};
core::Result<Target> parseTarget(std::string_view spec);

}  // namespace aiorpc::rpc
