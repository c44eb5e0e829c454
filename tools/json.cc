// JSON <-> msgpack conversion (lossless; see json.h).
#include "tools/json.h"

#include <cmath>
#include <cstring>

namespace aiorpc::tools {
namespace {

using nlohmann::json;

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

// Strict: length a multiple of 4, only the alphabet, padding only at the end, unused bits 0.
std::optional<std::string> unbase64(std::string_view in) {
  if (in.size() % 4 != 0) return std::nullopt;
  size_t pad = 0;
  while (pad < 2 && pad < in.size() && in[in.size() - 1 - pad] == '=') ++pad;
  std::string out;
  uint32_t v = 0;
  int bits = 0;
  for (size_t i = 0; i < in.size() - pad; ++i) {
    char c = in[i];
    const char* p = c ? std::strchr(kB64, c) : nullptr;
    if (!p) return std::nullopt;
    v = v << 6 | static_cast<uint32_t>(p - kB64);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((v >> bits) & 0xff);
    }
  }
  if ((v & ((1u << bits) - 1)) != 0) return std::nullopt;  // non-canonical trailing bits
  return out;
}

bool isTag(std::string_view k) {
  return k == "$base64" || k == "$ext" || k == "$map" || k == "$float";
}

json floatJson(double d) {
  if (std::isnan(d)) return json{{"$float", "nan"}};
  if (std::isinf(d)) return json{{"$float", d > 0 ? "inf" : "-inf"}};
  return d;
}

void bad(const std::string& why) { throw std::invalid_argument(why); }

}  // namespace

json toJson(rpc::Object o) {
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
      return floatJson(o.raw().via.f64);
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
      bool plain = true;  // every key a str that is not a tag (and none repeated)
      json m = json::object();
      for (uint32_t i = 0; i < o.size() && plain; ++i) {
        rpc::Object k = o.key(i);
        plain = k.isStr() && !isTag(k.str()) && !m.contains(std::string(k.str()));
        if (plain) m[std::string(k.str())] = toJson(o.val(i));
      }
      if (plain) return m;
      json pairs = json::array();
      for (uint32_t i = 0; i < o.size(); ++i)
        pairs.push_back(json::array({toJson(o.key(i)), toJson(o.val(i))}));
      return json{{"$map", std::move(pairs)}};
    }
  }
  return nullptr;
}

json parseJson(const std::string& text) {
  json::parser_callback_t depth_check = [](int depth, json::parse_event_t ev, json&) {
    if ((ev == json::parse_event_t::object_start || ev == json::parse_event_t::array_start) &&
        depth >= kMaxJsonDepth)
      bad("PARAMS-JSON is nested deeper than " + std::to_string(kMaxJsonDepth) +
          " levels (the server's limit)");
    return true;
  };
  json j;
  try {
    j = json::parse(text, depth_check);
  } catch (const json::exception& e) {
    bad(std::string("PARAMS-JSON is not valid JSON: ") + e.what());
  }
  // Check the tags once here, so packJson cannot fail half-way.
  std::vector<const json*> todo{&j};
  while (!todo.empty()) {
    const json* x = todo.back();
    todo.pop_back();
    if (x->is_object() && !x->empty() && isTag(x->begin().key())) {
      if (x->contains("$base64")) {
        const json& b = (*x)["$base64"];
        bool ext = x->contains("$ext");
        if (x->size() != (ext ? 2u : 1u) || !b.is_string() || !unbase64(b.get<std::string>()))
          bad("{\"$base64\": ...} needs one strict base64 string (and \"$ext\" for ext)");
        if (ext) {  // (2^64-1 is an unsigned number: never read as -1)
          const json& t = (*x)["$ext"];
          bool in_range = t.is_number_unsigned() ? t.get<uint64_t>() <= 127
                          : t.is_number_integer()
                              ? t.get<int64_t>() >= -128 && t.get<int64_t>() <= 127
                              : false;
          if (!in_range) bad("\"$ext\" must be an integer type from -128 to 127");
        }
        continue;
      }
      if (x->contains("$float")) {
        const json& f = (*x)["$float"];
        if (x->size() != 1 || !f.is_string() || (f != "nan" && f != "inf" && f != "-inf"))
          bad("{\"$float\": ...} takes \"nan\", \"inf\" or \"-inf\"");
        continue;
      }
      if (x->contains("$map")) {
        const json& m = (*x)["$map"];
        if (x->size() != 1 || !m.is_array()) bad("{\"$map\": ...} takes [[key, value], ...]");
        for (const auto& kv : m) {
          if (!kv.is_array() || kv.size() != 2) bad("{\"$map\": ...} takes [[key, value], ...]");
          todo.push_back(&kv[0]);
          todo.push_back(&kv[1]);
        }
        continue;
      }
      // "$ext" alone, or another "$" key first: not one of the shapes above.
      bad("a special object is {\"$base64\": \"...\"} (with \"$ext\": T for ext), "
          "{\"$float\": \"nan\"|\"inf\"|\"-inf\"} or {\"$map\": [[key, value], ...]}");
    }
    if (x->is_structured())
      for (const auto& e : *x) todo.push_back(&e);
  }
  return j;
}

void packJson(rpc::Packer& p, const json& j) {
  switch (j.type()) {
    case json::value_t::null:
      p.nil();
      return;
    case json::value_t::boolean:
      p.boolean(j.get<bool>());
      return;
    case json::value_t::number_unsigned:
      p.uinteger(j.get<uint64_t>());
      return;
    case json::value_t::number_integer:
      p.integer(j.get<int64_t>());
      return;
    case json::value_t::number_float:
      p.real(j.get<double>());
      return;
    case json::value_t::string:
      p.str(j.get_ref<const std::string&>());
      return;
    case json::value_t::array:
      p.array(static_cast<uint32_t>(j.size()));
      for (const auto& e : j) packJson(p, e);
      return;
    case json::value_t::object:
      if (!j.empty() && isTag(j.begin().key())) {
        if (j.contains("$base64")) {
          std::string bytes = *unbase64(j["$base64"].get<std::string>());  // checked by parse
          if (!j.contains("$ext")) return p.bin(bytes);
          auto type = static_cast<int8_t>(j["$ext"].get<int64_t>());
          return p.ext(type, bytes);
        }
        if (j.contains("$float")) {
          const auto& f = j["$float"].get_ref<const std::string&>();
          return p.real(f == "nan" ? std::nan("") : f == "inf" ? INFINITY : -INFINITY);
        }
        const json& m = j["$map"];
        p.map(static_cast<uint32_t>(m.size()));
        for (const auto& kv : m) {
          packJson(p, kv[0]);
          packJson(p, kv[1]);
        }
        return;
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
