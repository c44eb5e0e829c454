// Scanner (limits before allocation), the whole-message walk and in-place readers.
#include "aiorpc/rpc/scanner.h"

#include <fmt/format.h>

#include <cstring>

namespace aiorpc::rpc {
namespace {

// The one table of msgpack item shapes, by type byte: the whole-message walk reads items with
// it, the incremental scanner sizes and parses headers with it.
enum Shape : unsigned char {
  kLeaf,      // size + (t & mask) bytes in all: ints, floats, nil, bools, fixstr, fixext
  kVar,       // size length bytes follow, then `extra` bytes (ext type), then the payload
  kFixArray,  // t & 0x0f elements
  kFixMap,    // 2 * (t & 0x0f) elements
  kArray,     // size length bytes of element count
  kMap,       // size length bytes of entry count
  kInvalid,
};
struct alignas(8) ItemShape {  // 8 bytes: one load per item in the walk
  Shape shape;
  unsigned char size;
  unsigned char extra;
  unsigned char mask;
  unsigned char head;  // header bytes (type byte included; at most 9): what the scanner gathers
};
constexpr ItemShape leaf(unsigned char size, unsigned char head, unsigned char mask = 0) {
  return {kLeaf, size, 0, mask, head};
}
constexpr ItemShape var(unsigned char size, unsigned char extra = 0) {
  return {kVar, size, extra, 0, static_cast<unsigned char>(1 + size + extra)};
}
constexpr ItemShape container(Shape s, unsigned char size) {
  return {s, size, 0, 0, static_cast<unsigned char>(1 + size)};
}
constexpr ItemShape shapeOf(unsigned t) {
  if (t <= 0x7f || t >= 0xe0) return leaf(1, 1);
  if (t <= 0x8f) return container(kFixMap, 0);
  if (t <= 0x9f) return container(kFixArray, 0);
  if (t <= 0xbf) return leaf(1, 1, 0x1f);  // fixstr: the payload is skipped
  switch (t) {
    case 0xc0:  // nil, false, true
    case 0xc2:
    case 0xc3:
      return leaf(1, 1);
    case 0xc4:  // bin, str
    case 0xd9:
      return var(1);
    case 0xc5:
    case 0xda:
      return var(2);
    case 0xc6:
    case 0xdb:
      return var(4);
    case 0xc7:  // ext: length, then the ext type
      return var(1, 1);
    case 0xc8:
      return var(2, 1);
    case 0xc9:
      return var(4, 1);
    case 0xdc:
      return container(kArray, 2);
    case 0xdd:
      return container(kArray, 4);
    case 0xde:
      return container(kMap, 2);
    case 0xdf:
      return container(kMap, 4);
    case 0xd4:  // fixext 1..16: the type byte, the ext type, the payload (skipped)
      return leaf(3, 2);
    case 0xd5:
      return leaf(4, 2);
    case 0xd6:
      return leaf(6, 2);
    case 0xd7:
      return leaf(10, 2);
    case 0xd8:
      return leaf(18, 2);
    case 0xca:  // float 32, 64
    case 0xd2:
    case 0xce:
      return leaf(5, 5);
    case 0xcb:
    case 0xd3:
    case 0xcf:
      return leaf(9, 9);
    case 0xcc:  // (u)int 8, 16
    case 0xd0:
      return leaf(2, 2);
    case 0xcd:
    case 0xd1:
      return leaf(3, 3);
    default:  // 0xc1: never used
      return {kInvalid, 0, 0, 0, 1};
  }
}
struct ShapeTable {
  ItemShape v[256];
  constexpr ShapeTable() : v() {
    for (unsigned t = 0; t < 256; ++t) v[t] = shapeOf(t);
  }
};
constexpr ShapeTable kShape;
// The whole length of an item that its type byte alone sizes (ints, floats, nil, bools, fixstr,
// fixext: at most 32 bytes); 0 for the rest (containers, str/bin/ext 8-32, 0xc1). The walk's fast
// path: most items of a message are such leaves.
struct LeafTable {
  unsigned char v[256];
  constexpr LeafTable() : v() {
    for (unsigned t = 0; t < 256; ++t) {
      const ItemShape& s = kShape.v[t];
      v[t] = s.shape == kLeaf ? static_cast<unsigned char>(s.size + (t & s.mask)) : 0;
    }
  }
};
constexpr LeafTable kLeafLen;
static_assert(kLeafLen.v[0xbf] == 32 && kLeafLen.v[0xd8] == 18 && kLeafLen.v[0x90] == 0 &&
                  kLeafLen.v[0xc1] == 0 && kLeafLen.v[0xd9] == 0,
              "leaf lengths");
static_assert(kShape.v[0xcf].head == 9 && kShape.v[0xc9].head == 6 && kShape.v[0xd8].head == 2,
              "headers fit the scanner's 9-byte staging area");

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
  const ItemShape& s = kShape.v[t];
  uint64_t count = 0;  // container elements declared
  bool container = false;
  switch (s.shape) {
    case kLeaf:  // the payload after the header (fixstr, fixext) is skipped
      skip_ = s.size + (t & s.mask) - s.head;
      break;
    case kVar:
      skip_ = detail::bigEndian(h + 1, s.size);
      break;
    case kFixArray:
      count = t & 0x0f, container = true;
      break;
    case kFixMap:
      count = 2u * (t & 0x0f), container = true;
      break;
    case kArray:
      count = detail::bigEndian(h + 1, s.size), container = true;
      break;
    case kMap:
      count = 2 * detail::bigEndian(h + 1, s.size), container = true;
      break;
    case kInvalid:
      return fail(fmt::format("invalid msgpack type byte 0x{:02x}", t));
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
    // i may pass end only by a leaf's length: checked here before a read, and at the return.
    if (i >= end) return 0;
    unsigned t = p[i];
    if (unsigned len = kLeafLen.v[t]) {  // the common case: one load sizes the item
      i += len;
    } else {
      ItemShape s = kShape.v[t];
      uint64_t count;
      switch (s.shape) {
        case kVar: {
          size_t head = 1u + s.size + s.extra;
          if (end - i < head) return 0;
          uint64_t n = detail::bigEndian(p + i + 1, s.size);
          if (n > end - i - head) return 0;
          i += head + n;
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
          count = detail::bigEndian(p + i + 1, s.size) * (s.shape == kMap ? 2 : 1);
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
    while (--cur == 0) {
      if (depth == 0) return i <= end ? i : 0;
      cur = left[--depth];
    }
  }
}

}  // namespace

size_t Scanner::scanWhole(const unsigned char* p, size_t n) const noexcept {
  n = std::min(n, limits_.max_message_size);
  // The usual shapes first, their head read in place: a request [0, msgid, "method", params] or
  // a reply [1, msgid, nil, result]; only the last item is walked, with the limits that are left
  // for it under the message's own array (one level, four elements).
  if (p[0] == 0x94 && n >= 4 && p[1] <= 1 && limits_.max_depth >= 2 && limits_.max_elements >= 4) {
    size_t at = 2, len = 0;
    if (readUint(reinterpret_cast<const char*>(p) + at, n - at, len)) {
      at += len;
      if (p[1] == 0 ? readStr(reinterpret_cast<const char*>(p) + at, n - at, len).has_value()
                    : (at < n && p[at] == 0xc0 && (len = 1))) {
        at += len;
        size_t last = walk(p + at, n - at, limits_.max_depth - 1, limits_.max_elements - 4);
        return last ? at + last : 0;
      }
    }
  }
  if ((p[0] & 0xf0) != 0x90 && p[0] != 0xdc && p[0] != 0xdd) return 0;
  return walk(p, n, limits_.max_depth, limits_.max_elements);
}

size_t itemLength(const char* p, size_t n) noexcept {
  return walk(reinterpret_cast<const unsigned char*>(p), n, 33, SIZE_MAX);
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
      size_t need = kShape.v[p[i]].head;
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

}  // namespace aiorpc::rpc
