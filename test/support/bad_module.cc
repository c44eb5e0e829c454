// A module whose author got something wrong, chosen by $AIORPC_BAD_MODULE: aiorpcd must say so
// in one line and exit 2, never crash.
//   entry-throws   aiorpc_module() throws
//   null-create    a role without a create function
//   config-flag    a role flag named like one of the daemon's own (--config)
//   no-name        a role with an empty name
//   create-throws  create() throws something that is not a std::exception
#include <cstdlib>
#include <cstring>
#include <memory>

#include "aiorpc/agents/module.h"

namespace {

using aiorpc::agents::FlagSpec;
using aiorpc::agents::FlagType;
using aiorpc::agents::Role;
using aiorpc::agents::RoleEnv;
using aiorpc::agents::RoleInstance;

std::unique_ptr<RoleInstance> createThrows(RoleEnv&) { throw 42; }

const FlagSpec kConfigFlag[] = {{"config", FlagType::kString, "", "clashes with the daemon's"}};

const Role kNullCreate[] = {{"bad", "no create", "127.0.0.1:0", {}, nullptr, false}};
const Role kConfig[] = {
    {"bad", "a flag named config", "127.0.0.1:0", kConfigFlag, createThrows, false}};
const Role kNoName[] = {{"", "no name", "127.0.0.1:0", {}, createThrows, false}};
const Role kCreateThrows[] = {{"bad", "create throws", "127.0.0.1:0", {}, createThrows, false}};

bool is(const char* what) {
  const char* v = std::getenv("AIORPC_BAD_MODULE");
  return v && std::strcmp(v, what) == 0;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) const aiorpc::agents::ModuleInfo*
aiorpc_module() {
  if (is("entry-throws")) throw 7;
  static const aiorpc::agents::ModuleInfo null_create{aiorpc::agents::kModuleAbi,
                                                      AIORPC_VERSION_STRING, kNullCreate};
  static const aiorpc::agents::ModuleInfo config{aiorpc::agents::kModuleAbi, AIORPC_VERSION_STRING,
                                                 kConfig};
  static const aiorpc::agents::ModuleInfo no_name{aiorpc::agents::kModuleAbi, AIORPC_VERSION_STRING,
                                                  kNoName};
  static const aiorpc::agents::ModuleInfo create_throws{aiorpc::agents::kModuleAbi,
                                                        AIORPC_VERSION_STRING, kCreateThrows};
  if (is("null-create")) return &null_create;
  if (is("config-flag")) return &config;
  if (is("no-name")) return &no_name;
  return &create_throws;
}
