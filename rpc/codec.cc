// Packer's out-of-line half (floats, ext, generic objects) and conversion error messages.
#include "aiorpc/rpc/codec.h"

#include <bit>

namespace aiorpc::rpc {

void Packer::appendToString(const void* p, size_t n) { s_->append(static_cast<const char*>(p), n); }

void Packer::real(double v) { put(0xcb, std::bit_cast<uint64_t>(v)); }

void Packer::real32(float v) { put(0xca, std::bit_cast<uint32_t>(v)); }

void Packer::ext(int8_t type, std::string_view data) {
  auto t = static_cast<unsigned char>(type);
  size_t n = data.size();
  if (n == 1 || n == 2 || n == 4 || n == 8 || n == 16) {  // fixext 1..16: d4..d8
    put(static_cast<unsigned char>(0xd4 + std::countr_zero(n)), t);
  } else {
    sized(n, 0, 0, 0xc7);
    byte(t);
  }
  write(data.data(), n);
}

void Packer::object(Object o) {
  const msgpack_object& r = o.raw();
  switch (r.type) {
    case MSGPACK_OBJECT_NIL:
      return nil();
    case MSGPACK_OBJECT_BOOLEAN:
      return boolean(r.via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
      return uinteger(r.via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
      return integer(r.via.i64);
    case MSGPACK_OBJECT_FLOAT32:
      return real32(static_cast<float>(r.via.f64));
    case MSGPACK_OBJECT_FLOAT64:
      return real(r.via.f64);
    case MSGPACK_OBJECT_STR:
      return str({r.via.str.ptr, r.via.str.size});
    case MSGPACK_OBJECT_BIN:
      return bin({r.via.bin.ptr, r.via.bin.size});
    case MSGPACK_OBJECT_EXT:
      return ext(r.via.ext.type, {r.via.ext.ptr, r.via.ext.size});
    case MSGPACK_OBJECT_ARRAY:
      array(r.via.array.size);
      for (uint32_t i = 0; i < r.via.array.size; ++i) object(r.via.array.ptr[i]);
      return;
    case MSGPACK_OBJECT_MAP:
      map(r.via.map.size);
      for (uint32_t i = 0; i < r.via.map.size; ++i) {
        object(r.via.map.ptr[i].key);
        object(r.via.map.ptr[i].val);
      }
      return;
  }
}

namespace detail {

bool fail(std::string& why, const char* expected, Object got) {
  why = std::string("expected ") + expected + ", got " + got.typeName();
  return false;
}

bool failRange(std::string& why, Object got) {
  why = "integer " + got.toText(40) + " out of range";
  return false;
}

}  // namespace detail
}  // namespace aiorpc::rpc
