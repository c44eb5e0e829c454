// Error kinds and RpcError.
#include "aiorpc/rpc/errors.h"

#include <fmt/format.h>

#include <array>

#include "aiorpc/rpc/codec.h"
#include "aiorpc/rpc/scanner.h"

namespace aiorpc::rpc {
namespace {
constexpr std::array<std::string_view, kKindCount> kNames = {
    "NoMethodError",   "ArgumentError",   "ApplicationError",   "TimeoutError",
    "ConnectionError", "ServiceNotFound", "ServiceUnavailable", "Overloaded",
    "AuthError",       "InternalError",   "NotSentError",       "Error"};

std::string describe(const Value& v) {
  Object o = v.view();
  if (o.isArray() && o.size() == 2 && o[1].isStrOrBin()) return std::string(o[1].str());
  if (o.isStrOrBin()) return std::string(o.str());
  return o.toText();
}
Kind kindOf(const Value& v) {
  Object o = v.view();
  if (o.isArray() && o.size() >= 1 && o[0].isStrOrBin()) return kindFromName(o[0].str());
  return Kind::kOther;
}
}  // namespace

Kind countedKind(Object o) noexcept {
  Kind k =
      o.isArray() && o.size() >= 1 && o[0].isStrOrBin() ? kindFromName(o[0].str()) : Kind::kOther;
  return k == Kind::kOther || k == Kind::kNotSent ? Kind::kApplication : k;
}

Kind countedKind(std::string_view e) noexcept {
  // An array with at least one element: fixarray, array16 or array32 headers.
  auto u = [&](size_t i) { return static_cast<unsigned char>(e[i]); };
  size_t head = 0;
  if (!e.empty() && u(0) >= 0x91 && u(0) <= 0x9f) head = 1;
  if (e.size() >= 3 && u(0) == 0xdc && (u(1) | u(2))) head = 3;
  if (e.size() >= 5 && u(0) == 0xdd && (u(1) | u(2) | u(3) | u(4))) head = 5;
  Kind k = Kind::kOther;
  size_t len = 0;
  if (head) {
    if (auto name = readStr(e.data() + head, e.size() - head, len)) k = kindFromName(*name);
  }
  return k == Kind::kOther || k == Kind::kNotSent ? Kind::kApplication : k;
}

namespace {
// The length of the valid UTF-8 sequence at s[i], 0 if there is none.
size_t utf8At(std::string_view s, size_t i) {
  auto c = static_cast<unsigned char>(s[i]);
  size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
  bool ok = len > 0 && i + len <= s.size();
  for (size_t k = 1; ok && k < len; ++k) ok = (static_cast<unsigned char>(s[i + k]) >> 6) == 0x2;
  if (ok && len > 1) {  // reject overlong forms, surrogates and code points past U+10FFFF
    uint32_t cp = c & (0x7f >> len);
    for (size_t k = 1; k < len; ++k) cp = cp << 6 | (static_cast<unsigned char>(s[i + k]) & 0x3f);
    ok = cp >= (len == 2   ? 0x80u
                : len == 3 ? 0x800u
                           : 0x10000u) &&
         cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff);
  }
  return ok ? len : 0;
}
}  // namespace

bool isUtf8(std::string_view s) noexcept {
  for (size_t i = 0; i < s.size();) {
    size_t len = utf8At(s, i);
    if (!len) return false;
    i += len;
  }
  return true;
}

std::string validUtf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    if (size_t len = utf8At(s, i)) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      out += fmt::format("\\x{:02x}", static_cast<unsigned char>(s[i]));
      ++i;
    }
  }
  return out;
}

std::string_view kindName(Kind k) noexcept { return kNames[static_cast<size_t>(k)]; }

Kind kindFromName(std::string_view s) noexcept {
  for (size_t i = 0; i < kNames.size() - 1; ++i)
    if (kNames[i] == s) return static_cast<Kind>(i);
  return Kind::kOther;
}

RpcError::RpcError(Kind kind, std::string message)
    : std::runtime_error(std::string(kindName(kind)) + ": " + message),
      kind_(kind),
      message_(std::move(message)) {}

RpcError::RpcError(Value object)
    : std::runtime_error(std::string(kindName(kindOf(object))) + ": " + describe(object)),
      kind_(kindOf(object)),
      message_(describe(object)),
      peer_(std::move(object)) {}

std::string RpcError::downstreamMessage() const {
  return "downstream call failed: " + std::string(what());
}

Value RpcError::object() const {
  if (hasPeerObject()) return peer_;
  return toValue(std::tuple<std::string_view, std::string_view>(kindName(kind_), message_));
}

}  // namespace aiorpc::rpc
