// Packer (C++ values → msgpack bytes) and decode() (msgpack → C++ values, checked).
#pragma once

#include <msgpack.h>

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

#include "core/buffer.h"
#include "rpc/object.h"

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

// Writes msgpack with the smallest header forms (msgpack-c does; unsigned forms for values
// >= 0) straight into a string or a connection's output queue.
class Packer {
 public:
  explicit Packer(std::string& out) noexcept {
    msgpack_packer_init(&pk_, &out, [](void* d, const char* b, size_t n) {
      static_cast<std::string*>(d)->append(b, n);
      return 0;
    });
  }
  explicit Packer(core::OutQueue& out) noexcept {
    msgpack_packer_init(&pk_, &out, [](void* d, const char* b, size_t n) {
      static_cast<core::OutQueue*>(d)->append(b, n);
      return 0;
    });
  }
  void nil() { msgpack_pack_nil(&pk_); }
  void boolean(bool b) { b ? msgpack_pack_true(&pk_) : msgpack_pack_false(&pk_); }
  void integer(int64_t v) { msgpack_pack_int64(&pk_, v); }
  void uinteger(uint64_t v) { msgpack_pack_uint64(&pk_, v); }
  void real(double v) { msgpack_pack_double(&pk_, v); }
  void str(std::string_view s) {
    msgpack_pack_str(&pk_, s.size());
    msgpack_pack_str_body(&pk_, s.data(), s.size());
  }
  void bin(std::string_view s) {
    msgpack_pack_bin(&pk_, s.size());
    msgpack_pack_bin_body(&pk_, s.data(), s.size());
  }
  void array(uint32_t n) { msgpack_pack_array(&pk_, n); }
  void map(uint32_t n) { msgpack_pack_map(&pk_, n); }
  void object(Object o) { msgpack_pack_object(&pk_, o.raw()); }
  void raw(std::string_view bytes) { pk_.callback(pk_.data, bytes.data(), bytes.size()); }

  template <class T>
  Packer& pack(const T& v);

 private:
  msgpack_packer pk_;
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
