// Scanner: msgpack framing and limits without decoding (SPEC §1 limits), and in-place readers
// for bytes it accepted. One constexpr table of item shapes (scanner.cc) drives the whole-message
// walk and the incremental scanner alike.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace aiorpc::rpc {

struct Limits {
  size_t max_message_size = 64u << 20;  // bytes per message
  size_t max_elements = 4u << 20;       // declared container elements per message (map entry: 2)
  int max_depth = 32;                   // nesting; the message's own array is depth 1
};

// Walks msgpack framing incrementally (headers only; str/bin/ext payloads are skipped in O(1))
// and rejects a message as soon as a header would exceed a limit, before msgpack-c allocates
// anything for it (it allocates 32 bytes per declared element when it reads a header).
class Scanner {
 public:
  explicit Scanner(const Limits& l) : limits_(l) {
    limits_.max_depth = std::clamp(limits_.max_depth, 1, 32);  // msgpack-c's own stack is 32
  }
  // Scans `n` more bytes. Returns how many of them may be handed to the unpacker: all of them,
  // or, after a violation, those before the offending message began. Once failed, stays failed.
  size_t feed(const char* p, size_t n);
  // Like feed, but stops at the end of the first message that completes: returns the bytes
  // consumed through its end (then atBoundary()), or n when none completes.
  size_t feedOne(const char* p, size_t n);
  bool failed() const noexcept { return !error_.empty(); }
  const std::string& error() const noexcept { return error_; }
  // Bytes of a str/bin/ext payload still to arrive (0 between items).
  uint64_t payloadLeft() const noexcept { return skip_; }
  // Framing one message at a time, its fast path: between messages, the length of the message
  // at p when it lies whole in [p, p + n) within the limits, else 0 (then feedOne()).
  size_t frameWhole(const char* p, size_t n) const noexcept {
    return n > 0 && atBoundary() && msg_bytes_ == 0 && !failed()
               ? scanWhole(reinterpret_cast<const unsigned char*>(p), n)
               : 0;
  }
  // True when no message is partly scanned.
  bool atBoundary() const noexcept { return depth_ == 0 && hdr_have_ == 0 && skip_ == 0; }

 private:
  // The fast path, at a message boundary: the length of the message at p if it lies whole in
  // [p, p + n) within the limits, else 0 (incomplete, or a violation: the incremental path
  // below then takes the message over and reports precisely).
  size_t scanWhole(const unsigned char* p, size_t n) const noexcept;
  size_t scan(const char* p, size_t n, bool one);
  bool header(const unsigned char* h);  // a complete header; false on a violation
  void itemDone();
  bool fail(std::string why);
  bool failTooBig();

  Limits limits_;
  std::string error_;
  size_t msg_bytes_ = 0, msg_elements_ = 0;
  uint64_t skip_ = 0;  // payload bytes still to skip
  unsigned char hdr_[9];
  int hdr_have_ = 0, hdr_need_ = 0;
  int depth_ = 0;
  uint32_t left_[34];  // items left at each open depth
};

// The byte length of the msgpack item at p: 0 when it does not lie whole in [p, p + n), is
// invalid or nests deeper than 33 containers. Applies no other limit: meant for bytes a Scanner
// accepted.
size_t itemLength(const char* p, size_t n) noexcept;
namespace detail {
inline uint64_t bigEndian(const unsigned char* p, int n) noexcept {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = v << 8 | p[i];
  return v;
}
}  // namespace detail

// The msgpack unsigned integer at p in any of its forms: its value, with its byte length in
// `len`; nullopt when p does not start with a whole one. (Inline: the framing path reads a
// msgid per message.)
inline std::optional<uint64_t> readUint(const char* data, size_t n, size_t& len) noexcept {
  auto* p = reinterpret_cast<const unsigned char*>(data);
  if (n == 0) return std::nullopt;
  unsigned t = p[0];
  if (t < 0x80) {
    len = 1;
    return t;
  }
  if (t < 0xcc || t > 0xcf) return std::nullopt;
  int k = 1 << (t - 0xcc);  // uint8, 16, 32, 64
  if (n < 1 + static_cast<size_t>(k)) return std::nullopt;
  len = 1 + static_cast<size_t>(k);
  return detail::bigEndian(p + 1, k);
}

// The msgpack str (or bin) at p: its bytes, with the item's byte length in `len`; nullopt when
// p does not start with a whole one.
inline std::optional<std::string_view> readStr(const char* data, size_t n, size_t& len) noexcept {
  if (n == 0) return std::nullopt;
  auto* p = reinterpret_cast<const unsigned char*>(data);
  unsigned t = p[0];
  size_t head, size;
  if ((t & 0xe0) == 0xa0) {  // fixstr
    head = 1, size = t & 0x1f;
  } else if (t == 0xd9 || t == 0xda || t == 0xdb || t == 0xc4 || t == 0xc5 || t == 0xc6) {
    int k = 1 << (t >= 0xd9 ? t - 0xd9 : t - 0xc4);  // 8-, 16-, 32-bit length
    if (n < 1 + static_cast<size_t>(k)) return std::nullopt;
    head = 1 + static_cast<size_t>(k), size = static_cast<size_t>(detail::bigEndian(p + 1, k));
  } else {
    return std::nullopt;
  }
  if (n - head < size) return std::nullopt;
  len = head + size;
  return std::string_view(data + head, size);
}

}  // namespace aiorpc::rpc
