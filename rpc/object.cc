// Object accessors, printing, and Value ownership.
#include "aiorpc/rpc/object.h"

#include <fmt/format.h>

#include <cstring>

#include "aiorpc/rpc/codec.h"
#include "aiorpc/rpc/zone_pool.h"

namespace aiorpc::rpc {

std::optional<int64_t> Object::asInt() const noexcept {
  if (o_.type == MSGPACK_OBJECT_NEGATIVE_INTEGER) return o_.via.i64;
  if (o_.type == MSGPACK_OBJECT_POSITIVE_INTEGER && o_.via.u64 <= INT64_MAX)
    return static_cast<int64_t>(o_.via.u64);
  return std::nullopt;
}

std::optional<uint64_t> Object::asUint() const noexcept {
  if (o_.type == MSGPACK_OBJECT_POSITIVE_INTEGER) return o_.via.u64;
  return std::nullopt;
}

std::optional<Object> Object::find(std::string_view key) const noexcept {
  if (!isMap()) return std::nullopt;
  for (uint32_t i = 0; i < o_.via.map.size; ++i) {
    Object k = o_.via.map.ptr[i].key;
    if (k.isStrOrBin() && k.str() == key) return Object(o_.via.map.ptr[i].val);
  }
  return std::nullopt;
}

const char* Object::typeName() const noexcept {
  switch (o_.type) {
    case MSGPACK_OBJECT_NIL:
      return "nil";
    case MSGPACK_OBJECT_BOOLEAN:
      return "bool";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
      return "int";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
      return "float";
    case MSGPACK_OBJECT_STR:
      return "str";
    case MSGPACK_OBJECT_BIN:
      return "bin";
    case MSGPACK_OBJECT_ARRAY:
      return "array";
    case MSGPACK_OBJECT_MAP:
      return "map";
    case MSGPACK_OBJECT_EXT:
      return "ext";
  }
  return "?";
}

namespace {

// Escapes bytes so the text is valid UTF-8 whatever the input: printable ASCII as is,
// everything else as \xNN.
void appendEscaped(std::string& out, std::string_view s) {
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
}

void render(std::string& out, Object o, size_t max) {
  if (out.size() > max) return;
  switch (o.type()) {
    case MSGPACK_OBJECT_NIL:
      out += "nil";
      return;
    case MSGPACK_OBJECT_BOOLEAN:
      out += o.raw().via.boolean ? "true" : "false";
      return;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
      out += std::to_string(o.raw().via.u64);
      return;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
      out += std::to_string(o.raw().via.i64);
      return;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
      out += fmt::format("{}", o.raw().via.f64);
      return;
    case MSGPACK_OBJECT_STR:
    case MSGPACK_OBJECT_BIN:
      out += o.isBin() ? "b\"" : "\"";
      appendEscaped(out, o.str().substr(0, max));
      out += '"';
      return;
    case MSGPACK_OBJECT_ARRAY:
      out += '[';
      for (uint32_t i = 0; i < o.size() && out.size() <= max; ++i) {
        if (i) out += ", ";
        render(out, o[i], max);
      }
      out += ']';
      return;
    case MSGPACK_OBJECT_MAP:
      out += '{';
      for (uint32_t i = 0; i < o.size() && out.size() <= max; ++i) {
        if (i) out += ", ";
        render(out, o.key(i), max);
        out += ": ";
        render(out, o.val(i), max);
      }
      out += '}';
      return;
    case MSGPACK_OBJECT_EXT:
      out += "ext";
      return;
  }
}

}  // namespace

std::string Object::toText(size_t max) const {
  std::string out;
  render(out, *this, max);
  if (out.size() > max) {
    out.resize(max);
    out += "...";
  }
  return out;
}

bool operator==(const Object& a, const Object& b) noexcept {
  return msgpack_object_equal(a.raw(), b.raw());
}

Value Value::adopt(msgpack_zone* zone, Object o) {
  Value v;
  v.zone_ = std::shared_ptr<msgpack_zone>(zone, [](msgpack_zone* z) { giveZone(z); });
  v.obj_ = o;
  return v;
}

std::optional<Value> Value::fromBytes(std::string_view bytes) {
  msgpack_zone* z = msgpack_zone_new(MSGPACK_ZONE_CHUNK_SIZE);
  // The zone must own the bytes: strings in the result point into the input.
  char* copy = static_cast<char*>(msgpack_zone_malloc_no_align(z, bytes.size() ? bytes.size() : 1));
  std::memcpy(copy, bytes.data(), bytes.size());
  msgpack_object o;
  size_t off = 0;
  auto r = msgpack_unpack(copy, bytes.size(), &off, z, &o);
  if (r != MSGPACK_UNPACK_SUCCESS) {
    msgpack_zone_free(z);
    return std::nullopt;
  }
  return adopt(z, o);
}

Value Value::copyOf(Object o) {
  std::string bytes;
  Packer p(bytes);
  p.pack(o);
  return *fromBytes(bytes);
}

}  // namespace aiorpc::rpc
