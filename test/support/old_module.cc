// A module that claims another aiorpc version: aiorpcd must refuse it with one line.
#include "aiorpc/agents/module.h"

extern "C" __attribute__((visibility("default"))) const aiorpc::agents::ModuleInfo*
aiorpc_module() {
  static const aiorpc::agents::ModuleInfo info{1, "0.0.1", {}};
  return &info;
}
