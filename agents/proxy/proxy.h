// The proxy role: routes invoke/batch_invoke by service name to live instances (SPEC §6).
#pragma once

#include <memory>

#include "aiorpc/agents/role.h"

namespace aiorpc::agents::proxy {

extern const FlagSpec kFlags[9];
std::unique_ptr<RoleInstance> create(RoleEnv& env);

}  // namespace aiorpc::agents::proxy
