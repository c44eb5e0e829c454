// The keepalive role: register-and-discovery server (SPEC §5).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "aiorpc/agents/keepalive/etcd_store.h"
#include "aiorpc/agents/keepalive/registry.h"
#include "aiorpc/agents/role.h"

namespace aiorpc::agents::keepalive {

extern const FlagSpec kFlags[8];
// The endpoints (and scheme) of --store=etcd://..., etcds://... (throws std::invalid_argument
// otherwise).
EtcdStore::Options etcdEndpoints(const std::string& store);
std::unique_ptr<RoleInstance> create(RoleEnv& env);

}  // namespace aiorpc::agents::keepalive
