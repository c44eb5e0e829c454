// Loadable role modules: `aiorpcd --module=./libfoo.so --role=foo`. A module exports one
// C-linkage entry point, aiorpc_module(), returning its roles (the same Role entries as the
// built-in table: name, summary, default bind, flags, create, heartbeats) and the aiorpc
// version it was built against. A module role gets what a built-in one gets: its flags in
// --help and the parser, heartbeats with --keepalive, the drain, \0stats, logging.
//
// Build a module against the installed headers only: it is loaded into aiorpcd, which provides
// the aiorpc symbols (`c++ -shared -fPIC foo.cc $(pkg-config --cflags aiorpc) -o libfoo.so`).
// See docs/examples/module/.
#pragma once

#include <cstdint>
#include <span>

#include "aiorpc/agents/role.h"
#include "aiorpc/version.h"

namespace aiorpc::agents {

// Module and daemon exchange C++ objects (Role, Loop, Service, Flags): they must come from the
// same aiorpc version. aiorpcd refuses a module built against another with one line.
constexpr uint32_t kModuleAbi = AIORPC_VERSION;

struct ModuleInfo {
  uint32_t abi;         // first, and never moved: read before anything else
  const char* version;  // AIORPC_VERSION_STRING of the module's headers
  std::span<const Role> roles;
};

}  // namespace aiorpc::agents

// In one source file of the module, after its role table: AIORPC_MODULE(kMyRoles)
#define AIORPC_MODULE(roles)                                                            \
  extern "C" __attribute__((visibility("default"))) const ::aiorpc::agents::ModuleInfo* \
  aiorpc_module() {                                                                     \
    static const ::aiorpc::agents::ModuleInfo info{::aiorpc::agents::kModuleAbi,        \
                                                   AIORPC_VERSION_STRING, (roles)};     \
    return &info;                                                                       \
  }
