// The requests a server answered, by method and outcome, and how long they took (SPEC §9):
// counted where every reply is written (Endpoint::writeReply), in plain arrays on the loop's
// thread. Labels are bounded by the service's own declarations: a method label is a declared
// method or "other" (unknown methods, control commands, requests refused before dispatch).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "aiorpc/core/metrics.h"
#include "aiorpc/rpc/errors.h"

namespace aiorpc::rpc {

class Service;

// What the request metrics know of a call until its reply: its method (MethodInfo::id; 0 is
// "other") and the loop's time when it was read.
struct CallTag {
  uint32_t method = 0;
  double start = 0;
};

// Calls by outcome: [0] ok, [1 + kind] an error counted under that kind.
struct Outcomes {
  std::array<uint64_t, kKindCount + 1> n{};
  // The samples of counter family `name`: ok always, each error kind once it happened; with
  // `key`, labelled key="value" before outcome="...".
  void write(core::MetricsText& out, std::string_view name, std::string_view key = {},
             std::string_view value = {}) const;
};

// One series of calls: outcomes and latency (a method's; a proxied service's).
struct CallSeries {
  Outcomes outcomes;
  core::LatencyHistogram latency;
};

class RequestMetrics {
 public:
  explicit RequestMetrics(core::Loop& loop) : timings_(loop) {}
  // One reply: `outcome` 0 is ok, 1 + the kind an error reply is counted under.
  void replied(const CallTag& tag, size_t outcome) {
    CallSeries& s = series(tag.method);
    ++s.outcomes.n[outcome];
    timings_.record(&s.latency, tag.start);
  }
  // aiorpc_requests_total and aiorpc_request_duration_seconds, labelled with `service`'s
  // method names.
  void write(core::MetricsText& out, const Service& service);
  // A method's replies by outcome (null when it has none yet).
  const Outcomes* outcomes(uint32_t method) const noexcept {
    return method < by_method_.size() ? &by_method_[method]->outcomes : nullptr;
  }

 private:
  CallSeries& series(uint32_t method) {
    if (method >= by_method_.size()) [[unlikely]]
      grow(method);
    return *by_method_[method];
  }
  void grow(uint32_t method);
  std::vector<std::unique_ptr<CallSeries>> by_method_;  // stable: Timings points into them
  core::Timings timings_;
};

}  // namespace aiorpc::rpc
