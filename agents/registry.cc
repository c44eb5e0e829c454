// The role table of aiorpcd. One line per role.
#include "aiorpc/agents/demo/demo.h"
#include "aiorpc/agents/keepalive/keepalive.h"
#include "aiorpc/agents/proxy/proxy.h"
#include "aiorpc/agents/role.h"

namespace aiorpc::agents {

namespace {
const Role kRoles[] = {
    {"keepalive", "service registry with heartbeats and expiry", "0.0.0.0:7999", keepalive::kFlags,
     keepalive::create, false},
    {"proxy", "routes invoke/batch_invoke by service name (needs --keepalive)", "127.0.0.1:9999",
     proxy::kFlags, proxy::create, false},
    {"demo", "the sample service sample.foo", "127.0.0.1:10010", demo::kFlags, demo::create, true},
};
}  // namespace

std::span<const Role> roles() { return kRoles; }

const Role* findRole(std::string_view name) {
  for (const auto& r : kRoles)
    if (r.name == name) return &r;
  return nullptr;
}

}  // namespace aiorpc::agents
