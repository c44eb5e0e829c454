// JSON <-> msgpack for the command-line client. bin is shown as {"$base64": "..."}; map keys
// that are not strings are shown as their JSON text; invalid UTF-8 becomes U+FFFD.
#pragma once

#include <nlohmann/json.hpp>

#include "rpc/codec.h"

namespace aiorpc::tools {

nlohmann::json toJson(rpc::Object o);
void packJson(rpc::Packer& p, const nlohmann::json& j);

}  // namespace aiorpc::tools
