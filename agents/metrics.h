// The daemon's operator endpoint (SPEC §9, --metrics-bind): GET /metrics in the Prometheus text
// format (the server's series, the role's, build info and the process's) and GET /healthz (200
// "ok" while serving; 503 while draining or while the role says it should not get traffic).
#pragma once

#include <string_view>

#include "aiorpc/agents/role.h"
#include "aiorpc/core/http_server.h"

namespace aiorpc::agents {

class MetricsEndpoint {
 public:
  // `server` and `role` outlive this. `allow`: the daemon's --allow, which covers this port too;
  // `tls`: the daemon's server context (--tls-cert), which makes it HTTPS (null: plain HTTP).
  MetricsEndpoint(core::Loop& loop, rpc::Server& server, RoleInstance& role, core::AllowList allow,
                  std::shared_ptr<core::TlsContext> tls = nullptr);
  core::Result<core::Address> listen(std::string_view spec);
  // The body of GET /metrics.
  std::string scrape();

 private:
  core::HttpAnswer answer(std::string_view path);
  rpc::Server& server_;
  RoleInstance& role_;
  core::HttpServer http_;
};

}  // namespace aiorpc::agents
