#include "aiorpc/rpc/metrics.h"

#include "aiorpc/rpc/service.h"

namespace aiorpc::rpc {

void Outcomes::write(core::MetricsText& out, std::string_view name, std::string_view key,
                     std::string_view value) const {
  for (size_t o = 0; o < n.size(); ++o) {
    if (o > 0 && n[o] == 0) continue;
    std::string_view outcome = o == 0 ? "ok" : kindName(static_cast<Kind>(o - 1));
    if (key.empty()) {
      out.sample(name, {{"outcome", outcome}}, n[o]);
    } else {
      out.sample(name, {{key, value}, {"outcome", outcome}}, n[o]);
    }
  }
}

void RequestMetrics::grow(uint32_t method) {
  while (by_method_.size() <= method) by_method_.push_back(std::make_unique<CallSeries>());
}

void RequestMetrics::write(core::MetricsText& out, const Service& service) {
  timings_.settle();
  using T = core::MetricsText::Type;
  // Every declared method (and "other") has its ok series, at 0 until called; error outcomes
  // appear once they happen. At most (methods + 1) x (kinds + 1) series.
  auto each = [&](auto&& fn) {
    fn(std::string_view("other"), series(0));
    for (const auto& [name, info] : service.methods()) fn(std::string_view(name), series(info.id));
  };
  out.family("aiorpc_requests_total", T::kCounter,
             "Requests answered, by method and outcome (ok or the error kind).");
  each([&](std::string_view method, const CallSeries& s) {
    s.outcomes.write(out, "aiorpc_requests_total", "method", method);
  });
  out.family("aiorpc_request_duration_seconds", T::kHistogram,
             "Time from reading a request to writing its reply, by method.");
  each([&](std::string_view method, const CallSeries& s) {
    out.histogram("aiorpc_request_duration_seconds", {{"method", method}}, s.latency);
  });
}

}  // namespace aiorpc::rpc
