// Byte buffers: Buffer (contiguous, for input) and OutQueue (a chain of pooled blocks, for
// output, written with writev).
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

namespace aiorpc::core {

// Contiguous growable buffer with a read and a write index (muduo's Buffer, without prepend):
//
//   +-------------------+------------------+------------------+
//   |   consumed bytes  |  readable bytes  |  writable bytes  |
//   +-------------------+------------------+------------------+
//   0      <=        read_       <=      write_     <=     size
class Buffer {
 public:
  std::string_view readable() const noexcept { return {data_.data() + read_, write_ - read_}; }
  size_t size() const noexcept { return write_ - read_; }
  void consume(size_t n) noexcept;
  // At least `n` writable bytes at the end; moves data to the front before growing.
  std::span<char> reserve(size_t n);
  void commit(size_t n) noexcept { write_ += n; }
  void append(std::string_view s);
  // Frees the storage once empty (idle connections should cost nothing).
  void shrink() noexcept;

 private:
  std::vector<char> data_;
  size_t read_ = 0, write_ = 0;
};

// Output queue: appends are copied into 16 KiB blocks taken from a per-thread pool (no
// allocation in steady state); payloads of kLarge or more get a block of their own; bytes
// owned elsewhere may be queued in place (appendRef). writeTo() sends up to 64 blocks in one
// writev. An empty queue holds no memory.
class OutQueue {
 public:
  static constexpr size_t kBlock = size_t{16} * 1024;
  static constexpr size_t kLarge = size_t{64} * 1024;
  static constexpr size_t kSplitRoom = 256;  // see appendRef

  OutQueue() = default;
  OutQueue(const OutQueue&) = delete;
  OutQueue& operator=(const OutQueue&) = delete;
  ~OutQueue() { clear(); }

  size_t size() const noexcept { return bytes_; }
  bool empty() const noexcept { return bytes_ == 0; }
  // Stream positions: bytes ever appended / ever written. A message whose end position is at
  // most written() has wholly left for the kernel.
  uint64_t appended() const noexcept { return written_ + bytes_; }
  uint64_t written() const noexcept { return written_; }
  // Inline fast path: the tail block has room (msgpack packs replies in small pieces). Always
  // inlined: a fixed-size copy of a few bytes beats a call plus a generic memcpy.
  [[gnu::always_inline]] void append(const void* p, size_t n) {
    if (!blocks_.empty()) {  // (then head_ < size: popFront clears the list when it drains)
      Block& b = blocks_.back();
      if (b.cap - b.end >= n) {
        std::memcpy(b.data + b.end, p, n);
        b.end += n;
        bytes_ += n;
        return;
      }
    }
    appendSlow(p, n);
  }
  void append(std::string_view s) { append(s.data(), s.size()); }
  // Queues bytes that stay where they are (no copy) until written: `release(ctx)` runs exactly
  // once, when the queue is done with them (written, or dropped by clear() or the destructor),
  // also when this throws (std::bad_alloc). Appends after them go to a block of their own.
  using Release = void (*)(void* ctx) noexcept;
  void appendRef(std::string_view bytes, Release release, void* ctx);
  // Writes as much as the socket takes (sendmsg, MSG_NOSIGNAL). Returns bytes written, or -1 with
  // errno set (EAGAIN included).
  ssize_t writeTo(int fd);
  void clear() noexcept;
  // For writers that take one run of bytes at a time (TLS: one record per call): the first
  // contiguous run queued, and its first `n` bytes handed on.
  std::string_view front() const noexcept {
    if (bytes_ == 0) return {};
    const Block& b = blocks_[head_];
    return {b.data + b.begin, b.end - b.begin};
  }
  void consume(size_t n) noexcept;

 private:
  struct Block {
    char* data;
    size_t cap, begin, end;
    Release release = nullptr;  // bytes of appendRef(): not ours, handed back through this
    void* ctx = nullptr;
    // False for a block whose memory a later block took over (appendRef splits the tail block
    // around the bytes it queues in place: the later one goes on filling its room and gives
    // the memory back when it is written, after this one).
    bool owned = true;
  };
  Block& tailWithRoom();
  void appendSlow(const void* p, size_t n);
  static char* takeBlock(size_t cap);
  static void giveBlock(char* p, size_t cap) noexcept;
  void popFront() noexcept;

  std::vector<Block> blocks_;  // FIFO; head_ is the first live one
  size_t head_ = 0;
  size_t bytes_ = 0;
  uint64_t written_ = 0;
};

}  // namespace aiorpc::core
