// Streaming decode: bytes are read straight into a msgpack_unpacker's buffer, checked against
// the limits by the Scanner (scanner.h) before msgpack-c sees them, then decoded message by
// message, or handed out frame by frame.
#pragma once

#include <msgpack.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "aiorpc/rpc/object.h"
#include "aiorpc/rpc/scanner.h"

namespace aiorpc::rpc {

// One connection's input side. Use: span = buffer(); read into it; feed(n); then next() until
// it returns kNeedMore or kError. The object from kMessage lives in the unpacker's zone until
// the next call to next() or buffer(), unless releaseZone() takes it.
class Decoder {
 public:
  explicit Decoder(const Limits& l, size_t initial_buffer = 16 * 1024);
  ~Decoder();
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;

  // Room to read into: at least `want` bytes, or, while a large str/bin/ext payload is
  // arriving, room for the rest of it (up to kEagerReserve) so that the buffer grows once
  // instead of doubling (each doubling copies what is buffered).
  static constexpr size_t kEagerReserve = size_t{16} << 20;
  std::span<char> buffer(size_t want = 16 * 1024);
  void feed(size_t n);

  enum class Status { kNeedMore, kMessage, kError };
  Status next(Object& out);
  // Framing without decoding, for bytes forwarded as they are (a proxy's replies): after
  // feedFrames(n), nextFrame() hands out each whole message's bytes (checked by the scanner,
  // still in the buffer) until kNeedMore or kError. A frame is passed over at the next call,
  // unless decodeFrame() decodes it in place (then as next() would: same zone rules). One
  // decoder uses feed/next or feedFrames/nextFrame, never both.
  void feedFrames(size_t n) {
    frames_ = true;
    msgpack_unpacker_buffer_consumed(&unp_, n);
  }
  Status nextFrame(std::string_view& frame);
  bool decodeFrame(Object& out);  // false: not valid msgpack (error())

  // Takes the zone holding the last message (for a handler that suspends); the decoder
  // continues with a fresh zone. The caller frees it with msgpack_zone_free.
  msgpack_zone* releaseZone();
  const std::string& error() const noexcept { return error_; }
  // Bytes buffered and not yet decoded.
  size_t pending() const noexcept { return unp_.used - unp_.off; }
  // Bytes read after the message handed out last (pending() less that message, when framed).
  size_t after() const noexcept { return pending() - frame_len_; }
  bool midMessage() const noexcept { return !scanner_.atBoundary() || pending() > 0; }
  // The buffer's storage (changes when msgpack-c takes a new one): for tests.
  const void* storage() const noexcept { return unp_.buffer; }

 private:
  // Handled messages' objects are freed together once the zone has less than this left.
  static constexpr size_t kZoneSlack = 2048;
  void recycleZone();

  msgpack_unpacker unp_;
  Scanner scanner_;
  std::string error_;
  bool have_message_ = false;     // the last next() returned a message (still in the zone)
  bool handled_in_zone_ = false;  // the zone holds objects of messages handed out earlier
  size_t scanned_ = 0;            // framing: bytes after the buffer's offset seen by the scanner
  size_t frame_len_ = 0;          // framing: the frame handed out last, not decoded
  bool frames_ = false;           // fed by feedFrames
  size_t start_ = 0;              // the buffer's first byte of data (after msgpack-c's counter)
  const char* pinned_ = nullptr;  // a buffer a released zone may still refer to
  void moveTailToFront(size_t want) noexcept;
  void doneWithMessage();
};

}  // namespace aiorpc::rpc
