// Packer (C++ values → msgpack bytes) and decode() (msgpack → C++ values, checked).
#pragma once

#include <msgpack.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <variant>
#include <vector>

#include "aiorpc/core/buffer.h"
#include "aiorpc/rpc/object.h"

namespace aiorpc::rpc {

// A byte string that travels as msgpack bin (std::string travels as str).
struct Bin {
  std::string data;
};
struct BinView {
  std::string_view data;
};
// Already-encoded msgpack bytes, written as they are.
struct Raw {
  std::string_view bytes;
};

template <class T, class = void>
struct Encode;  // specialise for your own types: static void pack(Packer&, const T&)

// Writes msgpack with the smallest header forms (as msgpack-c does: unsigned forms for values
// >= 0, str8 for short strings) straight into a string or a connection's output queue. Headers
// go into the queue's tail block as fixed-size stores (no call per byte); bodies are one append.
// The small primitives are always inlined: GCC's own choice moved with unrelated growth of
// their callers (an out-of-line byte() cost ~60 instructions per reply).
class Packer {
 public:
  explicit Packer(std::string& out) noexcept : s_(&out) {}
  explicit Packer(core::OutQueue& out) noexcept : q_(&out) {}

  [[gnu::always_inline]] void nil() { byte(0xc0); }
  [[gnu::always_inline]] void boolean(bool b) { byte(b ? 0xc3 : 0xc2); }
  void integer(int64_t v) {
    if (v >= 0) return uinteger(static_cast<uint64_t>(v));
    if (v >= -32) return byte(static_cast<unsigned char>(v));
    if (v >= INT8_MIN) return put(0xd0, static_cast<uint8_t>(v));
    if (v >= INT16_MIN) return put(0xd1, static_cast<uint16_t>(v));
    if (v >= INT32_MIN) return put(0xd2, static_cast<uint32_t>(v));
    put(0xd3, static_cast<uint64_t>(v));
  }
  void uinteger(uint64_t v) {
    if (v < 128) return byte(static_cast<unsigned char>(v));
    if (v <= UINT8_MAX) return put(0xcc, static_cast<uint8_t>(v));
    if (v <= UINT16_MAX) return put(0xcd, static_cast<uint16_t>(v));
    if (v <= UINT32_MAX) return put(0xce, static_cast<uint32_t>(v));
    put(0xcf, v);
  }
  void real(double v);
  void real32(float v);
  void str(std::string_view s) {
    sized(s.size(), 0xa0, 32, 0xd9);
    write(s.data(), s.size());
  }
  void bin(std::string_view s) {
    sized(s.size(), 0, 0, 0xc4);
    write(s.data(), s.size());
  }
  void ext(int8_t type, std::string_view data);
  [[gnu::always_inline]] void array(uint32_t n) { counted(n, 0x90, 0xdc); }
  [[gnu::always_inline]] void map(uint32_t n) { counted(n, 0x80, 0xde); }
  void object(Object o);
  void raw(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  // Bytes owned elsewhere, queued in place when packing into an OutQueue (no copy: see
  // OutQueue::appendRef; `release(ctx)` once written or dropped), copied into a string.
  void rawRef(std::string_view bytes, core::OutQueue::Release release, void* ctx) {
    if (q_) return q_->appendRef(bytes, release, ctx);
    try {
      appendToString(bytes.data(), bytes.size());
    } catch (...) {
      release(ctx);
      throw;
    }
    release(ctx);
  }

  template <class T>
  Packer& pack(const T& v);

  // A message's head in one append instead of four (the hot paths: every call and reply):
  // [0, msgid, "method", then the params; [1, msgid, nil, then the result.
  [[gnu::always_inline]] void requestHead(uint64_t msgid, std::string_view method) {
    if (method.size() >= 32) {  // not a fixstr: item by item
      array(4), byte(0), uinteger(msgid), str(method);
      return;
    }
    unsigned char b[2 + 9 + 1 + 31] = {0x94, 0x00};
    size_t n = 2 + uintTo(b + 2, msgid);
    b[n++] = static_cast<unsigned char>(0xa0 | method.size());
    std::memcpy(b + n, method.data(), method.size());
    write(b, n + method.size());
  }
  [[gnu::always_inline]] void replyHead(uint64_t msgid) {
    unsigned char b[2 + 9 + 1] = {0x94, 0x01};
    size_t n = 2 + uintTo(b + 2, msgid);
    b[n++] = 0xc0;
    write(b, n);
  }

 private:
  // v as a msgpack unsigned integer at b (at most 9 bytes); its length.
  [[gnu::always_inline]] static size_t uintTo(unsigned char* b, uint64_t v) {
    if (v < 128) {
      b[0] = static_cast<unsigned char>(v);
      return 1;
    }
    if (v <= UINT8_MAX) {
      b[0] = 0xcc, b[1] = static_cast<unsigned char>(v);
      return 2;
    }
    if (v <= UINT16_MAX) {
      uint16_t be = __builtin_bswap16(static_cast<uint16_t>(v));
      b[0] = 0xcd, std::memcpy(b + 1, &be, 2);
      return 3;
    }
    if (v <= UINT32_MAX) {
      uint32_t be = __builtin_bswap32(static_cast<uint32_t>(v));
      b[0] = 0xce, std::memcpy(b + 1, &be, 4);
      return 5;
    }
    uint64_t be = __builtin_bswap64(v);
    b[0] = 0xcf, std::memcpy(b + 1, &be, 8);
    return 9;
  }
  // A type byte and v big-endian: a fixed-size store into the queue's tail block.
  template <class U>
  [[gnu::always_inline]] void put(unsigned char type, U v) {
    unsigned char b[1 + sizeof(U)];
    b[0] = type;
    if constexpr (sizeof(U) == 1) {
      b[1] = v;
    } else {
      U be;
      if constexpr (sizeof(U) == 2) be = __builtin_bswap16(v);
      if constexpr (sizeof(U) == 4) be = __builtin_bswap32(v);
      if constexpr (sizeof(U) == 8) be = __builtin_bswap64(v);
      std::memcpy(b + 1, &be, sizeof(U));
    }
    write(b, sizeof b);
  }
  // str/bin/ext lengths: a fix form below `fix_limit` (if any), then the 8-, 16-, 32-bit forms.
  [[gnu::always_inline]] void sized(size_t n, unsigned char fix, size_t fix_limit,
                                    unsigned char t8) {
    if (n < fix_limit) return byte(static_cast<unsigned char>(fix | n));
    if (n <= UINT8_MAX) return put(t8, static_cast<uint8_t>(n));
    if (n <= UINT16_MAX) return put(static_cast<unsigned char>(t8 + 1), static_cast<uint16_t>(n));
    put(static_cast<unsigned char>(t8 + 2), static_cast<uint32_t>(n));
  }
  [[gnu::always_inline]] void counted(uint32_t n, unsigned char fix, unsigned char t16) {
    if (n < 16) return byte(static_cast<unsigned char>(fix | n));
    if (n <= UINT16_MAX) return put(t16, static_cast<uint16_t>(n));
    put(static_cast<unsigned char>(t16 + 1), n);
  }
  [[gnu::always_inline]] void byte(unsigned char c) { write(&c, 1); }
  // Inlined everywhere: on the reply path the out-of-line copy GCC chose for server.cc cost
  // ~50 instructions per call (a call plus a generic memcpy for a few bytes).
  [[gnu::always_inline]] void write(const void* p, size_t n) {
    if (q_) [[likely]]
      return q_->append(p, n);
    appendToString(p, n);  // out of line: packing into strings is off the reply path
  }
  void appendToString(const void* p, size_t n);

  std::string* s_ = nullptr;
  core::OutQueue* q_ = nullptr;
};

template <class T>
struct IsOptional : std::false_type {};
template <class T>
struct IsOptional<std::optional<T>> : std::true_type {};
template <class T>
struct IsVector : std::false_type {};
template <class T, class A>
struct IsVector<std::vector<T, A>> : std::true_type {};
template <class T>
struct IsMap : std::false_type {};
template <class K, class V, class C, class A>
struct IsMap<std::map<K, V, C, A>> : std::true_type {};
template <class K, class V, class H, class E, class A>
struct IsMap<std::unordered_map<K, V, H, E, A>> : std::true_type {};
template <class T>
struct IsTuple : std::false_type {};
template <class... T>
struct IsTuple<std::tuple<T...>> : std::true_type {};
template <class A, class B>
struct IsTuple<std::pair<A, B>> : std::true_type {};

template <class T>
Packer& Packer::pack(const T& v) {
  using D = std::decay_t<T>;
  if constexpr (std::is_same_v<D, bool>) {
    boolean(v);
  } else if constexpr (std::is_integral_v<D> && std::is_signed_v<D>) {
    integer(v);
  } else if constexpr (std::is_integral_v<D>) {
    uinteger(v);
  } else if constexpr (std::is_floating_point_v<D>) {
    real(v);
  } else if constexpr (std::is_same_v<D, std::nullptr_t> || std::is_same_v<D, std::nullopt_t> ||
                       std::is_same_v<D, std::monostate>) {
    nil();
  } else if constexpr (std::is_convertible_v<const D&, std::string_view> &&
                       !std::is_same_v<D, Object> && !std::is_same_v<D, Value>) {
    str(std::string_view(v));
  } else if constexpr (std::is_same_v<D, Bin> || std::is_same_v<D, BinView>) {
    bin(v.data);
  } else if constexpr (std::is_same_v<D, Raw>) {
    raw(v.bytes);
  } else if constexpr (std::is_same_v<D, Object>) {
    object(v);
  } else if constexpr (std::is_same_v<D, Value>) {
    object(v.view());
  } else if constexpr (IsOptional<D>::value) {
    if (v) {
      pack(*v);
    } else {
      nil();
    }
  } else if constexpr (IsVector<D>::value) {
    array(static_cast<uint32_t>(v.size()));
    for (const auto& e : v) pack(e);
  } else if constexpr (IsMap<D>::value) {
    map(static_cast<uint32_t>(v.size()));
    for (const auto& [k, e] : v) {
      pack(k);
      pack(e);
    }
  } else if constexpr (IsTuple<D>::value) {
    array(static_cast<uint32_t>(std::tuple_size_v<D>));
    std::apply([&](const auto&... e) { (pack(e), ...); }, v);
  } else {
    Encode<D>::pack(*this, v);
  }
  return *this;
}

// msgpack bytes of `v`.
template <class T>
std::string packToString(const T& v) {
  std::string s;
  Packer(s).pack(v);
  return s;
}

template <class T>
Value toValue(const T& v) {
  return *Value::fromBytes(packToString(v));
}

// Checked conversion. On failure returns false and names what was expected in `why`
// ("expected int, got str"). The only implicit conversion is integer → floating point.
template <class T>
bool decode(Object o, T& out, std::string& why);

namespace detail {
bool fail(std::string& why, const char* expected, Object got);
bool failRange(std::string& why, Object got);
}  // namespace detail

template <class T>
bool decode(Object o, T& out, std::string& why) {
  using D = T;
  if constexpr (std::is_same_v<D, bool>) {
    if (o.type() != MSGPACK_OBJECT_BOOLEAN) return detail::fail(why, "bool", o);
    out = o.raw().via.boolean;
  } else if constexpr (std::is_integral_v<D>) {
    if (!o.isInt()) return detail::fail(why, "int", o);
    if (o.type() == MSGPACK_OBJECT_POSITIVE_INTEGER) {
      if (o.raw().via.u64 > static_cast<uint64_t>(std::numeric_limits<D>::max()))
        return detail::failRange(why, o);
    } else {
      if constexpr (std::is_unsigned_v<D>) {
        return detail::failRange(why, o);
      } else if (o.raw().via.i64 < static_cast<int64_t>(std::numeric_limits<D>::min())) {
        return detail::failRange(why, o);
      }
    }
    out = o.type() == MSGPACK_OBJECT_POSITIVE_INTEGER ? static_cast<D>(o.raw().via.u64)
                                                      : static_cast<D>(o.raw().via.i64);
  } else if constexpr (std::is_floating_point_v<D>) {
    if (o.type() == MSGPACK_OBJECT_FLOAT32 || o.type() == MSGPACK_OBJECT_FLOAT64) {
      out = static_cast<D>(o.raw().via.f64);
    } else if (o.type() == MSGPACK_OBJECT_POSITIVE_INTEGER) {
      out = static_cast<D>(o.raw().via.u64);
    } else if (o.type() == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
      out = static_cast<D>(o.raw().via.i64);
    } else {
      return detail::fail(why, "float", o);
    }
  } else if constexpr (std::is_same_v<D, std::string>) {
    if (!o.isStrOrBin()) return detail::fail(why, "str", o);
    out.assign(o.str());
  } else if constexpr (std::is_same_v<D, std::string_view>) {
    if (!o.isStrOrBin()) return detail::fail(why, "str", o);
    out = o.str();
  } else if constexpr (std::is_same_v<D, Bin>) {
    if (!o.isStrOrBin()) return detail::fail(why, "bin", o);
    out.data.assign(o.str());
  } else if constexpr (std::is_same_v<D, BinView>) {
    if (!o.isStrOrBin()) return detail::fail(why, "bin", o);
    out.data = o.str();
  } else if constexpr (std::is_same_v<D, std::nullptr_t>) {
    if (!o.isNil()) return detail::fail(why, "nil", o);
  } else if constexpr (std::is_same_v<D, Object>) {
    out = o;
  } else if constexpr (std::is_same_v<D, Value>) {
    out = Value::copyOf(o);
  } else if constexpr (IsOptional<D>::value) {
    if (o.isNil()) {
      out.reset();
      return true;
    }
    typename D::value_type v{};
    if (!decode(o, v, why)) return false;
    out = std::move(v);
  } else if constexpr (IsVector<D>::value) {
    if (!o.isArray()) return detail::fail(why, "array", o);
    out.clear();
    out.resize(o.size());
    for (uint32_t i = 0; i < o.size(); ++i) {
      if (!decode(o[i], out[i], why)) {
        why = "item " + std::to_string(i) + ": " + why;
        return false;
      }
    }
  } else if constexpr (IsMap<D>::value) {
    if (!o.isMap()) return detail::fail(why, "map", o);
    out.clear();
    for (uint32_t i = 0; i < o.size(); ++i) {
      typename D::key_type k{};
      typename D::mapped_type v{};
      if (!decode(o.key(i), k, why)) return why = "key: " + why, false;
      if (!decode(o.val(i), v, why)) return why = "value: " + why, false;
      out.emplace(std::move(k), std::move(v));
    }
  } else if constexpr (IsTuple<D>::value) {
    if (!o.isArray() || o.size() != std::tuple_size_v<D>) {
      why = "expected array of " + std::to_string(std::tuple_size_v<D>) + ", got " +
            (o.isArray() ? "array of " + std::to_string(o.size()) : std::string(o.typeName()));
      return false;
    }
    uint32_t i = 0;
    return std::apply([&](auto&... e) { return (decode(o[i++], e, why) && ...); }, out);
  } else {
    static_assert(sizeof(D) == 0, "no decode() for this type");
  }
  return true;
}

}  // namespace aiorpc::rpc
