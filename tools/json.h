// JSON <-> msgpack for the command-line client, lossless both ways (docs/cli.md):
//   bin               {"$base64": "..."}              (strict RFC 4648 base64)
//   ext               {"$ext": type, "$base64": "..."}
//   NaN, ±infinity    {"$float": "nan" | "inf" | "-inf"}
//   a map with a key that is not a str, or a str key that is one of the tags above:
//                     {"$map": [[key, value], ...]}   (keys rendered like any value)
// Any other map is a JSON object. Str contents that are not valid UTF-8 are shown with U+FFFD
// (the one lossy case: JSON strings cannot hold arbitrary bytes; send such data as bin).
#pragma once

#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "aiorpc/rpc/codec.h"

namespace aiorpc::tools {

// The deepest JSON accepted for params: the server refuses messages nested deeper than 32
// (the message's own array is depth 1, params start at depth 2).
constexpr int kMaxJsonDepth = 31;

nlohmann::json toJson(rpc::Object o);
// Parses params text; throws std::invalid_argument with a clear message on bad JSON, on
// nesting past kMaxJsonDepth (checked while parsing, before anything deep is built) and on a
// malformed tag ({"$base64": "!!!!"}).
nlohmann::json parseJson(const std::string& text);
void packJson(rpc::Packer& p, const nlohmann::json& j);  // `j` from parseJson

}  // namespace aiorpc::tools
