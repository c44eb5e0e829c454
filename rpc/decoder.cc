// Scanner (limits before allocation) and Decoder (msgpack_unpacker without per-message zones).
#include "aiorpc/rpc/decoder.h"

#include <fmt/format.h>

#include <cstring>

#include "aiorpc/rpc/zone_pool.h"

namespace aiorpc::rpc {
namespace {

uint64_t be(const unsigned char* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = v << 8 | p[i];
  return v;
}

// Bytes of header that follow the type byte (a table: this runs once per msgpack item).
constexpr int extraHeaderOf(unsigned t) {
  switch (t) {
    case 0xc4:
    case 0xd9:
    case 0xcc:
    case 0xd0:
      return 1;  // bin8 str8 uint8 int8
    case 0xc5:
    case 0xda:
    case 0xdc:
    case 0xde:
    case 0xcd:
    case 0xd1:
      return 2;
    case 0xc6:
    case 0xdb:
    case 0xdd:
    case 0xdf:
    case 0xce:
    case 0xd2:
    case 0xca:
      return 4;
    case 0xcf:
    case 0xd3:
    case 0xcb:
      return 8;
    case 0xc7:
      return 2;  // ext8: len, type
    case 0xc8:
      return 3;  // ext16
    case 0xc9:
      return 5;  // ext32
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
      return 1;  // fixext: type
    default:
      return 0;
  }
}
struct ExtraTable {
  unsigned char v[256];
  constexpr ExtraTable() : v() {
    for (unsigned t = 0; t < 256; ++t) v[t] = static_cast<unsigned char>(extraHeaderOf(t));
  }
};
constexpr ExtraTable kExtra;

// How scanWhole reads one item from its type byte.
enum Shape : unsigned char {
  kLeaf,      // size + (t & mask) bytes in all: ints, floats, nil, bools, fixstr, fixext
  kVar,       // size length bytes follow, then `extra` bytes (ext type), then the payload
  kFixArray,  // t & 0x0f elements
  kFixMap,    // 2 * (t & 0x0f) elements
  kArray,     // size length bytes of element count
  kMap,       // size length bytes of entry count
  kInvalid,
};
struct ItemShape {
  Shape shape;
  unsigned char size;
  unsigned char extra;
  unsigned char mask;
};
constexpr ItemShape shapeOf(unsigned t) {
  if (t <= 0x7f || t >= 0xe0) return {kLeaf, 1, 0, 0};
  if (t <= 0x8f) return {kFixMap, 0, 0, 0};
  if (t <= 0x9f) return {kFixArray, 0, 0, 0};
  if (t <= 0xbf) return {kLeaf, 1, 0, 0x1f};  // fixstr
  switch (t) {
    case 0xc0:
    case 0xc2:
    case 0xc3:
      return {kLeaf, 1, 0, 0};
    case 0xc4:
    case 0xd9:
      return {kVar, 1, 0, 0};
    case 0xc5:
    case 0xda:
      return {kVar, 2, 0, 0};
    case 0xc6:
    case 0xdb:
      return {kVar, 4, 0, 0};
    case 0xc7:
      return {kVar, 1, 1, 0};
    case 0xc8:
      return {kVar, 2, 1, 0};
    case 0xc9:
      return {kVar, 4, 1, 0};
    case 0xdc:
      return {kArray, 2, 0, 0};
    case 0xdd:
      return {kArray, 4, 0, 0};
    case 0xde:
      return {kMap, 2, 0, 0};
    case 0xdf:
      return {kMap, 4, 0, 0};
    case 0xd4:
      return {kLeaf, 3, 0, 0};
    case 0xd5:
      return {kLeaf, 4, 0, 0};
    case 0xd6:
      return {kLeaf, 6, 0, 0};
    case 0xd7:
      return {kLeaf, 10, 0, 0};
    case 0xd8:
      return {kLeaf, 18, 0, 0};
    case 0xc1:
      return {kInvalid, 0, 0, 0};
    default:  // 0xca..0xd3: floats and sized ints
      return {kLeaf, static_cast<unsigned char>(1 + extraHeaderOf(t)), 0, 0};
  }
}
struct ShapeTable {
  ItemShape v[256];
  constexpr ShapeTable() : v() {
    for (unsigned t = 0; t < 256; ++t) v[t] = shapeOf(t);
  }
};
constexpr ShapeTable kShape;

}  // namespace

bool Scanner::failTooBig() {
  return fail(fmt::format("message over the size limit of {} bytes", limits_.max_message_size));
}

bool Scanner::fail(std::string why) {
  error_ = std::move(why);
  return false;
}

void Scanner::itemDone() {
  while (depth_ > 0) {
    if (--left_[depth_] > 0) return;
    --depth_;
  }
  msg_bytes_ = 0;  // a whole message: the counters start again
  msg_elements_ = 0;
}

bool Scanner::header(const unsigned char* h) {
  unsigned char t = h[0];
  uint64_t count = 0;  // container elements declared
  bool container = false;
  if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3 || (t >= 0xca && t <= 0xd3)) {
    // scalars
  } else if ((t & 0xe0) == 0xa0) {
    skip_ = t & 0x1f;
  } else if ((t & 0xf0) == 0x90) {
    count = t & 0x0f, container = true;
  } else if ((t & 0xf0) == 0x80) {
    count = 2u * (t & 0x0f), container = true;
  } else {
    switch (t) {
      case 0xc4:
      case 0xd9:
        skip_ = h[1];
        break;
      case 0xc5:
      case 0xda:
        skip_ = be(h + 1, 2);
        break;
      case 0xc6:
      case 0xdb:
        skip_ = be(h + 1, 4);
        break;
      case 0xdc:
        count = be(h + 1, 2), container = true;
        break;
      case 0xdd:
        count = be(h + 1, 4), container = true;
        break;
      case 0xde:
        count = 2 * be(h + 1, 2), container = true;
        break;
      case 0xdf:
        count = 2 * be(h + 1, 4), container = true;
        break;
      case 0xd4:
        skip_ = 1;
        break;
      case 0xd5:
        skip_ = 2;
        break;
      case 0xd6:
        skip_ = 4;
        break;
      case 0xd7:
        skip_ = 8;
        break;
      case 0xd8:
        skip_ = 16;
        break;
      case 0xc7:
        skip_ = h[1];
        break;
      case 0xc8:
        skip_ = be(h + 1, 2);
        break;
      case 0xc9:
        skip_ = be(h + 1, 4);
        break;
      default:
        return fail(fmt::format("invalid msgpack type byte 0x{:02x}", t));
    }
  }
  size_t room = limits_.max_message_size - std::min(msg_bytes_, limits_.max_message_size);
  if (skip_ > room)
    return fail(fmt::format("message over the size limit of {} bytes", limits_.max_message_size));
  if (!container) {
    if (skip_ == 0) itemDone();
    return true;
  }
  if (depth_ + 1 > limits_.max_depth)
    return fail(fmt::format("message nested deeper than {}", limits_.max_depth));
  if (count > room)  // every element needs at least one more byte
    return fail(fmt::format("container of {} elements cannot fit the size limit of {} bytes", count,
                            limits_.max_message_size));
  msg_elements_ += count;
  if (msg_elements_ > limits_.max_elements)
    return fail(fmt::format("message declares more than {} elements", limits_.max_elements));
  if (count == 0) {
    itemDone();
    return true;
  }
  left_[++depth_] = static_cast<uint32_t>(count);
  return true;
}

namespace {

// The length of the item at p if it lies whole in [p, p + end) within `max_depth` open
// containers and `max_elements` declared elements, else 0 (incomplete, invalid or over a
// limit). One pass with its state in locals: the fast path of the scanner, and itemLength().
size_t walk(const unsigned char* p, size_t end, int max_depth, size_t max_elements) noexcept {
  size_t i = 0, elements = 0;
  uint64_t left[33];  // items left in each enclosing container
  uint64_t cur = 1;   // items left in the innermost open container (first: the item itself)
  int depth = 0;      // open containers
  for (;;) {
    if (i >= end) return 0;
    unsigned t = p[i];
    ItemShape s = kShape.v[t];
    if (s.shape == kLeaf) {
      i += s.size + (t & s.mask);
    } else {
      uint64_t count;
      switch (s.shape) {
        case kVar: {
          size_t head = 1u + s.size + s.extra;
          if (end - i < head) return 0;
          uint64_t len = be(p + i + 1, s.size);
          if (len > end - i - head) return 0;
          i += head + len;
          goto item;
        }
        case kFixArray:
          count = t & 0x0f;
          ++i;
          break;
        case kFixMap:
          count = 2u * (t & 0x0f);
          ++i;
          break;
        case kArray:
        case kMap:
          if (end - i < 1u + s.size) return 0;
          count = be(p + i + 1, s.size) * (s.shape == kMap ? 2 : 1);
          i += 1u + s.size;
          break;
        default:
          return 0;
      }
      // A container header (an empty one counts for depth too, as in Scanner::header()).
      if (depth + 1 > max_depth) return 0;
      if (count > 0) {
        elements += count;
        if (elements > max_elements) return 0;
        if (count > end - i) return 0;  // every element needs a byte
        left[depth++] = cur;
        cur = count;
        continue;
      }
    }
  item:
    if (i > end) return 0;
    while (--cur == 0) {
      if (depth == 0) return i;
      cur = left[--depth];
    }
  }
}

}  // namespace

size_t Scanner::scanWhole(const unsigned char* p, size_t n) const noexcept {
  if ((p[0] & 0xf0) != 0x90 && p[0] != 0xdc && p[0] != 0xdd) return 0;
  return walk(p, std::min(n, limits_.max_message_size), limits_.max_depth, limits_.max_elements);
}

size_t itemLength(const char* p, size_t n) noexcept {
  return walk(reinterpret_cast<const unsigned char*>(p), n, 33, SIZE_MAX);
}

std::optional<uint64_t> readUint(const char* data, size_t n, size_t& len) noexcept {
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
  return be(p + 1, k);
}

std::optional<std::string_view> readStr(const char* data, size_t n, size_t& len) noexcept {
  if (n == 0) return std::nullopt;
  auto* p = reinterpret_cast<const unsigned char*>(data);
  unsigned t = p[0];
  size_t head, size;
  if ((t & 0xe0) == 0xa0) {  // fixstr
    head = 1, size = t & 0x1f;
  } else if (t == 0xd9 || t == 0xda || t == 0xdb || t == 0xc4 || t == 0xc5 || t == 0xc6) {
    int k = 1 << ((t >= 0xd9 ? t - 0xd9 : t - 0xc4));  // 8-, 16-, 32-bit length
    if (n < 1 + static_cast<size_t>(k)) return std::nullopt;
    head = 1 + static_cast<size_t>(k), size = static_cast<size_t>(be(p + 1, k));
  } else {
    return std::nullopt;
  }
  if (n - head < size) return std::nullopt;
  len = head + size;
  return std::string_view(data + head, size);
}

size_t Scanner::feed(const char* data, size_t n) { return scan(data, n, false); }

size_t Scanner::feedOne(const char* data, size_t n) { return scan(data, n, true); }

size_t Scanner::scan(const char* data, size_t n, bool one) {
  if (failed()) return 0;
  auto* p = reinterpret_cast<const unsigned char*>(data);
  size_t i = 0;
  size_t accepted = 0;  // bytes before the message now being scanned
  while (i < n) {
    if (one && i > 0 && atBoundary() && msg_bytes_ == 0) return i;  // a message just ended
    if (skip_ > 0) {  // a str/bin/ext payload: skipped in O(1)
      size_t k = static_cast<size_t>(std::min<uint64_t>(skip_, n - i));
      skip_ -= k;
      i += k;
      msg_bytes_ += k;
      if (skip_ == 0) itemDone();
      continue;
    }
    if (hdr_have_ == 0) {
      if (depth_ == 0 && msg_bytes_ == 0) {  // a message starts here
        accepted = i;
        if (size_t m = scanWhole(p + i, n - i)) {
          i += m;
          continue;
        }
        if ((p[i] & 0xf0) != 0x90 && p[i] != 0xdc && p[i] != 0xdd) {
          fail("message is not an array");
          break;
        }
      }
      size_t need = 1 + kExtra.v[p[i]];
      if (n - i >= need) {  // the common case: the whole header is here, parse it in place
        i += need;
        msg_bytes_ += need;
        if (msg_bytes_ > limits_.max_message_size) {
          failTooBig();
          break;
        }
        if (!header(p + i - need)) break;
        continue;
      }
      hdr_need_ = static_cast<int>(need);
    }
    // A header split across reads: gather it.
    int k = static_cast<int>(std::min<size_t>(static_cast<size_t>(hdr_need_ - hdr_have_), n - i));
    std::memcpy(hdr_ + hdr_have_, p + i, static_cast<size_t>(k));
    hdr_have_ += k;
    i += static_cast<size_t>(k);
    msg_bytes_ += static_cast<size_t>(k);
    if (msg_bytes_ > limits_.max_message_size) {
      failTooBig();
      break;
    }
    if (hdr_have_ < hdr_need_) break;
    hdr_have_ = 0;
    if (!header(hdr_)) break;
  }
  return failed() ? accepted : n;
}

Decoder::Decoder(const Limits& l, size_t initial_buffer) : scanner_(l) {
  if (!msgpack_unpacker_init(&unp_, initial_buffer)) throw std::bad_alloc();
}

Decoder::~Decoder() { msgpack_unpacker_destroy(&unp_); }

void Decoder::recycleZone() {
  // Reuse the zone's memory (no allocation). flush_zone first: it clears the unpacker's
  // "buffer referenced" mark (the zone's cleanup drops the reference again), so a drained
  // buffer is rewound instead of reallocated.
  msgpack_unpacker_flush_zone(&unp_);
  msgpack_unpacker_reset_zone(&unp_);
  have_message_ = false;
  handled_in_zone_ = false;
}

std::span<char> Decoder::buffer(size_t want) {
  // Recycle before reading (unreferenced, the buffer can rewind), but only between messages:
  // the objects of a message msgpack-c is still building live in the zone too. After kNeedMore
  // msgpack-c has consumed every byte fed, so it is between messages when the scanner is.
  if (have_message_ || (handled_in_zone_ && scanner_.atBoundary())) recycleZone();
  if (uint64_t rest = scanner_.payloadLeft(); rest > want)
    want = static_cast<size_t>(std::min<uint64_t>(rest, kEagerReserve));
  if (!msgpack_unpacker_reserve_buffer(&unp_, want)) throw std::bad_alloc();
  return {msgpack_unpacker_buffer(&unp_), msgpack_unpacker_buffer_capacity(&unp_)};
}

void Decoder::feed(size_t n) {
  size_t ok = scanner_.feed(msgpack_unpacker_buffer(&unp_), n);
  msgpack_unpacker_buffer_consumed(&unp_, ok);
}

[[gnu::always_inline]] inline void Decoder::doneWithMessage() {
  // The previous message was handled in place: its objects stay in the zone until the zone's
  // first chunk runs low (or the next read), then the zone is recycled in one go. Here the
  // parser stands between messages (the last call returned one).
  if (have_message_) {
    have_message_ = false;
    handled_in_zone_ = true;
    if (unp_.z->chunk_list.free < kZoneSlack) recycleZone();
  }
}

Decoder::Status Decoder::nextFrame(std::string_view& frame) {
  doneWithMessage();
  if (frame_len_) {  // not decoded: pass over it (msgpack-c's parser is between messages)
    unp_.off += frame_len_;
    frame_len_ = 0;
  }
  char* base = unp_.buffer + unp_.off;
  size_t avail = unp_.used - unp_.off;
  if (scanned_ < avail) scanned_ += scanner_.feedOne(base + scanned_, avail - scanned_);
  if (scanner_.failed()) {
    error_ = scanner_.error();
    return Status::kError;
  }
  if (scanned_ == 0 || !scanner_.atBoundary()) return Status::kNeedMore;
  frame = {base, scanned_};
  frame_len_ = std::exchange(scanned_, 0);
  return Status::kMessage;
}

bool Decoder::decodeFrame(Object& out) {
  // The frame lies whole in the buffer from the parser's offset: one execute parses exactly it.
  size_t end = unp_.off + frame_len_;
  frame_len_ = 0;
  int r = msgpack_unpacker_execute(&unp_);
  if (r <= 0 || unp_.off != end) {
    error_ = "invalid msgpack";
    return false;
  }
  out = msgpack_unpacker_data(&unp_);
  msgpack_unpacker_reset(&unp_);
  have_message_ = true;
  return true;
}

Decoder::Status Decoder::next(Object& out) {
  doneWithMessage();
  int r = msgpack_unpacker_execute(&unp_);
  if (r < 0) {
    error_ = "invalid msgpack";
    return Status::kError;
  }
  if (r == 0) {
    if (scanner_.failed()) {  // every message before the violation has been handed out
      error_ = scanner_.error();
      return Status::kError;
    }
    return Status::kNeedMore;
  }
  out = msgpack_unpacker_data(&unp_);
  msgpack_unpacker_reset(&unp_);
  have_message_ = true;
  return Status::kMessage;
}

msgpack_zone* Decoder::releaseZone() {
  have_message_ = false;
  handled_in_zone_ = false;  // whatever was in the zone goes with it
  // What msgpack_unpacker_release_zone does, minus its allocation: pin the buffer (flush_zone
  // adds the reference as a finalizer of the zone), then swap the zone's contents with an empty
  // pooled zone. The unpacker keeps its zone object; the message's memory moves to the pooled one.
  if (!msgpack_unpacker_flush_zone(&unp_)) throw std::bad_alloc();
  msgpack_zone* z = takeZone();
  msgpack_zone_swap(unp_.z, z);
  return z;
}

}  // namespace aiorpc::rpc
