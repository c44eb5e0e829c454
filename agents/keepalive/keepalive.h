// The keepalive role: register-and-discovery server (SPEC §5).
#pragma once

#include <memory>

#include "aiorpc/agents/keepalive/registry.h"
#include "aiorpc/agents/role.h"

namespace aiorpc::agents::keepalive {

extern const FlagSpec kFlags[3];
std::unique_ptr<RoleInstance> create(RoleEnv& env);

}  // namespace aiorpc::agents::keepalive
