// Object: a non-owning view of a decoded msgpack value. Value: an owning one.
#pragma once

#include <msgpack.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace aiorpc::rpc {

// A view into memory owned elsewhere (an unpacker zone, or a Value). Cheap to copy.
class Object {
 public:
  Object() noexcept { o_.type = MSGPACK_OBJECT_NIL; }
  Object(const msgpack_object& o) noexcept : o_(o) {}  // NOLINT(google-explicit-constructor)

  msgpack_object_type type() const noexcept { return o_.type; }
  bool isNil() const noexcept { return o_.type == MSGPACK_OBJECT_NIL; }
  bool isInt() const noexcept {
    return o_.type == MSGPACK_OBJECT_POSITIVE_INTEGER || o_.type == MSGPACK_OBJECT_NEGATIVE_INTEGER;
  }
  bool isStr() const noexcept { return o_.type == MSGPACK_OBJECT_STR; }
  bool isBin() const noexcept { return o_.type == MSGPACK_OBJECT_BIN; }
  bool isStrOrBin() const noexcept { return isStr() || isBin(); }
  bool isArray() const noexcept { return o_.type == MSGPACK_OBJECT_ARRAY; }
  bool isMap() const noexcept { return o_.type == MSGPACK_OBJECT_MAP; }

  // Integer value if it fits int64 / uint64.
  std::optional<int64_t> asInt() const noexcept;
  std::optional<uint64_t> asUint() const noexcept;
  // Bytes of a str or bin; empty for anything else.
  std::string_view str() const noexcept {
    return isStr()   ? std::string_view(o_.via.str.ptr, o_.via.str.size)
           : isBin() ? std::string_view(o_.via.bin.ptr, o_.via.bin.size)
                     : std::string_view();
  }
  // Array elements or map entries (0 for scalars).
  uint32_t size() const noexcept {
    return isArray() ? o_.via.array.size : isMap() ? o_.via.map.size : 0;
  }
  Object operator[](uint32_t i) const noexcept { return o_.via.array.ptr[i]; }
  Object key(uint32_t i) const noexcept { return o_.via.map.ptr[i].key; }
  Object val(uint32_t i) const noexcept { return o_.via.map.ptr[i].val; }
  // Map lookup by a str/bin key; nullopt when absent or not a map.
  std::optional<Object> find(std::string_view key) const noexcept;
  // A short type name for error messages ("int", "str", "array", ...).
  const char* typeName() const noexcept;
  // Compact text for logs and error messages (JSON-like, bounded length).
  std::string toText(size_t max = 200) const;

  const msgpack_object& raw() const noexcept { return o_; }

 private:
  msgpack_object o_;
};

bool operator==(const Object& a, const Object& b) noexcept;

// Owns a decoded value: a zone plus the object inside it. Copies share the zone (read-only).
class Value {
 public:
  Value() = default;
  // Deep copy of `o` into a fresh zone.
  static Value copyOf(Object o);
  // Takes ownership of `zone`, which holds `o`.
  static Value adopt(msgpack_zone* zone, Object o);
  // Shares a zone already owned elsewhere.
  Value(std::shared_ptr<msgpack_zone> zone, Object o) : zone_(std::move(zone)), obj_(o) {}
  // Decodes one msgpack value from bytes; nullopt on malformed input.
  static std::optional<Value> fromBytes(std::string_view bytes);

  Object view() const noexcept { return obj_; }
  const std::shared_ptr<msgpack_zone>& zone() const noexcept { return zone_; }
  operator Object() const noexcept { return obj_; }  // NOLINT(google-explicit-constructor)
  bool isNil() const noexcept { return obj_.isNil(); }

 private:
  std::shared_ptr<msgpack_zone> zone_;
  Object obj_;
};

}  // namespace aiorpc::rpc
