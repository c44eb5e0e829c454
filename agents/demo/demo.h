// The demo role: the sample service `sample.foo` (SPEC §7).
#pragma once

#include <map>
#include <memory>
#include <string>

#include "aiorpc/agents/role.h"
#include "aiorpc/core/loop.h"
#include "aiorpc/rpc/service.h"

namespace aiorpc::agents::demo {

// Builds sample.foo's methods into `svc`; `loop` serves sleep(). State lives in the returned
// object, which must outlive the service.
class SampleFoo {
 public:
  SampleFoo(core::Loop& loop, rpc::Service& svc);

 private:
  core::Loop& loop_;
  long long total_int_ = 0;
  double total_float_ = 0;
  bool float_total_ = false;
  std::map<std::string, rpc::Value> cache_;  // keyed by the key's msgpack bytes
};

std::unique_ptr<RoleInstance> create(RoleEnv& env);
extern const FlagSpec kFlags[1];

}  // namespace aiorpc::agents::demo
