#include "aiorpc/agents/metrics.h"

#include "aiorpc/version.h"

namespace aiorpc::agents {

namespace {
core::HttpServerOptions options(core::AllowList allow, std::shared_ptr<core::TlsContext> tls) {
  core::HttpServerOptions o;
  o.allow = std::move(allow);
  o.tls = std::move(tls);
  return o;
}
}  // namespace

MetricsEndpoint::MetricsEndpoint(core::Loop& loop, rpc::Server& server, RoleInstance& role,
                                 core::AllowList allow, std::shared_ptr<core::TlsContext> tls)
    : server_(server),
      role_(role),
      http_(
          loop, [this](std::string_view, std::string_view path) { return answer(path); },
          options(std::move(allow), std::move(tls))) {
  server_.enableMetrics();
}

core::Result<core::Address> MetricsEndpoint::listen(std::string_view spec) {
  auto addr = core::Address::parse(spec);
  if (!addr) return addr;
  return http_.listen(*addr);
}

std::string MetricsEndpoint::scrape() {
  core::MetricsText out;
  server_.writeMetrics(out);
  role_.writeMetrics(out);
  out.family("aiorpc_build_info", core::MetricsText::Type::kGauge,
             "The aiorpc version this daemon was built from (the value is 1).");
  out.sample("aiorpc_build_info", {{"version", AIORPC_VERSION_STRING}}, 1.0);
  core::writeProcessMetrics(out);
  return out.take();
}

core::HttpAnswer MetricsEndpoint::answer(std::string_view path) {
  if (path == "/metrics") return {200, "text/plain; version=0.0.4; charset=utf-8", scrape()};
  if (path == "/healthz") {
    if (server_.draining()) return {503, "text/plain; charset=utf-8", "draining\n"};
    if (auto why = role_.unhealthy(); !why.empty())
      return {503, "text/plain; charset=utf-8", why + "\n"};
    return {200, "text/plain; charset=utf-8", "ok\n"};
  }
  return {404, "text/plain; charset=utf-8", "not found: /metrics and /healthz are served\n"};
}

}  // namespace aiorpc::agents
