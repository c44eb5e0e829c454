// Test helper: how a call ended, as one comparable value (a result, the peer's error object, or
// one of the client-side failure kinds).
#pragma once

#include "aiorpc/rpc/endpoint.h"

namespace aiorpc::test {

enum class St { kOk, kError, kTimeout, kConnection, kNotSent, kOther };

inline St st(const rpc::Response& r) {
  if (r.ok()) return St::kOk;
  if (r.type == rpc::Ended::kPeerError) return St::kError;
  switch (r.kind) {
    case rpc::Kind::kTimeout:
      return St::kTimeout;
    case rpc::Kind::kConnection:
      return St::kConnection;
    case rpc::Kind::kNotSent:
      return St::kNotSent;
    default:
      return St::kOther;
  }
}

}  // namespace aiorpc::test
