// Decoder: msgpack_unpacker without per-message zones, fed through the Scanner.
#include "aiorpc/rpc/decoder.h"

#include <cstring>

#include "aiorpc/rpc/zone_pool.h"

namespace aiorpc::rpc {

Decoder::Decoder(const Limits& l, size_t initial_buffer) : scanner_(l) {
  if (!msgpack_unpacker_init(&unp_, initial_buffer)) throw std::bad_alloc();
  start_ = unp_.off;
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
  if (unp_.free < want) moveTailToFront(want);
  if (!msgpack_unpacker_reserve_buffer(&unp_, want)) throw std::bad_alloc();
  return {msgpack_unpacker_buffer(&unp_), msgpack_unpacker_buffer_capacity(&unp_)};
}

void Decoder::moveTailToFront(size_t want) noexcept {
  // msgpack-c makes room past the buffer's end by allocating a new buffer and copying the
  // unparsed tail into it whenever a message is partly read: under pipelined large messages
  // that is an allocation every buffer-full (0.04 per proxied call at 16 KiB). When only the
  // input is framed, nothing alive refers to the bytes before the tail (msgpack-c parses
  // whole frames only, so it holds no partial state; objects of frames decoded earlier are
  // dead once their message was handled; a released zone pins its buffer, never moved), and
  // the tail can move to the front of the same buffer instead.
  if (!frames_ || unp_.buffer == pinned_ || unp_.off == start_) return;
  size_t tail = unp_.used - unp_.off, cap = unp_.used + unp_.free;
  if (start_ + tail + want > cap) return;  // too small anyway: msgpack-c's way
  std::memmove(unp_.buffer + start_, unp_.buffer + unp_.off, tail);
  unp_.off = start_;
  unp_.used = start_ + tail;
  unp_.free = cap - unp_.used;
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
  if (scanned_ == 0) {  // the usual case: a whole message from a boundary, in one walk
    if (size_t m = scanner_.frameWhole(base, avail)) {
      frame = {base, m};
      frame_len_ = m;
      return Status::kMessage;
    }
  }
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
  pinned_ = unp_.buffer;  // (until msgpack-c replaces it: bytes there are never moved)
  msgpack_zone* z = takeZone();
  msgpack_zone_swap(unp_.z, z);
  return z;
}

}  // namespace aiorpc::rpc
