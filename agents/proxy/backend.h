// One backend instance of the proxy: a pipelined client plus counters and ejection state.
#pragma once

#include <algorithm>
#include <string>

#include "rpc/client.h"

namespace aiorpc::agents::proxy {

struct EjectPolicy {
  int after = 3;    // consecutive connect failures before ejection
  double base = 5;  // first ejection, seconds; doubles while it keeps failing
  double max = 60;
};

// Ejection logic without the loop (tests drive it with a manual clock).
class Ejection {
 public:
  explicit Ejection(EjectPolicy p) : p_(p) {}
  bool ejected(double now) const noexcept { return now < until_; }
  void failed(double now) noexcept {
    if (++failures_ < p_.after) return;
    period_ = period_ == 0 ? p_.base : std::min(period_ * 2, p_.max);
    until_ = now + period_;
    failures_ = 0;
  }
  void succeeded() noexcept { failures_ = 0, period_ = 0, until_ = 0; }
  double period() const noexcept { return period_; }

 private:
  EjectPolicy p_;
  int failures_ = 0;
  double period_ = 0, until_ = 0;
};

struct Backend {
  Backend(core::Loop& loop, const core::Address& addr, rpc::ClientOptions o, EjectPolicy e)
      : name(addr.toString()), client(loop, addr, o), eject(e) {}
  std::string name;  // host:port
  rpc::Client client;
  Ejection eject;
  uint64_t requests = 0, errors = 0;
  size_t in_flight = 0;  // unwritten or awaiting a reply
};

}  // namespace aiorpc::agents::proxy
