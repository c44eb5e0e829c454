// JSON <-> msgpack conversion.
#include "tools/json.h"

namespace aiorpc::tools {
namespace {

const char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string base64(std::string_view in) {
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = static_cast<uint8_t>(in[i]) << 16 | static_cast<uint8_t>(in[i + 1]) << 8 |
                 static_cast<uint8_t>(in[i + 2]);
    for (int k = 18; k >= 0; k -= 6) out += kB64[(v >> k) & 63];
  }
  if (i < in.size()) {
    uint32_t v = static_cast<uint8_t>(in[i]) << 16;
    if (i + 1 < in.size()) v |= static_cast<uint8_t>(in[i + 1]) << 8;
    out += kB64[(v >> 18) & 63];
    out += kB64[(v >> 12) & 63];
    out += i + 1 < in.size() ? kB64[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::optional<std::string> unbase64(std::string_view in) {
  std::string out;
  uint32_t v = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=') break;
    const char* p = std::strchr(kB64, c);
    if (!p || !c) return std::nullopt;
    v = v << 6 | static_cast<uint32_t>(p - kB64);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((v >> bits) & 0xff);
    }
  }
  return out;
}

}  // namespace

nlohmann::json toJson(rpc::Object o) {
  using nlohmann::json;
  switch (o.type()) {
    case MSGPACK_OBJECT_NIL:
      return nullptr;
    case MSGPACK_OBJECT_BOOLEAN:
      return o.raw().via.boolean;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
      return o.raw().via.u64;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
      return o.raw().via.i64;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
      return o.raw().via.f64;
    case MSGPACK_OBJECT_STR:
      return std::string(o.str());
    case MSGPACK_OBJECT_BIN:
      return json{{"$base64", base64(o.str())}};
    case MSGPACK_OBJECT_EXT:
      return json{{"$ext", o.raw().via.ext.type},
                  {"$base64", base64({o.raw().via.ext.ptr, o.raw().via.ext.size})}};
    case MSGPACK_OBJECT_ARRAY: {
      json a = json::array();
      for (uint32_t i = 0; i < o.size(); ++i) a.push_back(toJson(o[i]));
      return a;
    }
    case MSGPACK_OBJECT_MAP: {
      json m = json::object();
      for (uint32_t i = 0; i < o.size(); ++i) {
        rpc::Object k = o.key(i);
        std::string key = k.isStr()
                              ? std::string(k.str())
                              : toJson(k).dump(-1, ' ', false, json::error_handler_t::replace);
        m[key] = toJson(o.val(i));
      }
      return m;
    }
  }
  return nullptr;
}

void packJson(rpc::Packer& p, const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null:
      p.nil();
      return;
    case nlohmann::json::value_t::boolean:
      p.boolean(j.get<bool>());
      return;
    case nlohmann::json::value_t::number_unsigned:
      p.uinteger(j.get<uint64_t>());
      return;
    case nlohmann::json::value_t::number_integer:
      p.integer(j.get<int64_t>());
      return;
    case nlohmann::json::value_t::number_float:
      p.real(j.get<double>());
      return;
    case nlohmann::json::value_t::string:
      p.str(j.get_ref<const std::string&>());
      return;
    case nlohmann::json::value_t::array:
      p.array(static_cast<uint32_t>(j.size()));
      for (const auto& e : j) packJson(p, e);
      return;
    case nlohmann::json::value_t::object:
      if (j.size() == 1 && j.contains("$base64") && j["$base64"].is_string()) {
        if (auto b = unbase64(j["$base64"].get<std::string>())) return p.bin(*b);
      }
      p.map(static_cast<uint32_t>(j.size()));
      for (const auto& [k, v] : j.items()) {
        p.str(k);
        packJson(p, v);
      }
      return;
    default:
      p.nil();
      return;
  }
}

}  // namespace aiorpc::tools
