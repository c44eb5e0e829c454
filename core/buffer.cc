// Buffer and OutQueue.
#include "aiorpc/core/buffer.h"

#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>

#include "aiorpc/core/platform.h"

namespace aiorpc::core {

void Buffer::consume(size_t n) noexcept {
  read_ += n;
  if (read_ == write_) read_ = write_ = 0;
}

std::span<char> Buffer::reserve(size_t n) {
  if (data_.size() - write_ < n) {
    if (read_ > 0) {  // slide the live bytes to the front first
      std::memmove(data_.data(), data_.data() + read_, write_ - read_);
      write_ -= read_;
      read_ = 0;
    }
    if (data_.size() - write_ < n) data_.resize(std::max(write_ + n, data_.size() * 2));
  }
  return {data_.data() + write_, data_.size() - write_};
}

void Buffer::append(std::string_view s) {
  auto span = reserve(s.size());
  std::memcpy(span.data(), s.data(), s.size());
  commit(s.size());
}

void Buffer::shrink() noexcept {
  if (size() == 0) {
    std::vector<char>().swap(data_);
    read_ = write_ = 0;
  }
}

namespace {
// Per-thread pool of kBlock-sized blocks; bounded so a burst does not pin memory forever.
struct Pool {
  std::vector<char*> free;
  ~Pool() {
    for (char* p : free) delete[] p;
  }
};
thread_local Pool t_pool;
constexpr size_t kPoolMax = 256;  // 4 MiB
}  // namespace

char* OutQueue::takeBlock(size_t cap) {
  if (cap == kBlock && !t_pool.free.empty()) {
    char* p = t_pool.free.back();
    t_pool.free.pop_back();
    return p;
  }
  return new char[cap];
}

void OutQueue::giveBlock(char* p, size_t cap) noexcept {
  if (cap == kBlock && t_pool.free.size() < kPoolMax) {
    t_pool.free.push_back(p);
  } else {
    delete[] p;
  }
}

OutQueue::Block& OutQueue::tailWithRoom() {
  if (!blocks_.empty() && blocks_.back().end < blocks_.back().cap) return blocks_.back();
  blocks_.push_back(Block{takeBlock(kBlock), kBlock, 0, 0});
  return blocks_.back();
}

void OutQueue::appendSlow(const void* p, size_t n) {
  auto* src = static_cast<const char*>(p);
  bytes_ += n;
  if (n >= kLarge) {
    blocks_.push_back(Block{takeBlock(n), n, 0, n});  // a block of its own
    std::memcpy(blocks_.back().data, src, n);
    return;
  }
  while (n > 0) {
    Block& b = tailWithRoom();
    size_t k = std::min(n, b.cap - b.end);
    std::memcpy(b.data + b.end, src, k);
    b.end += k;
    src += k;
    n -= k;
  }
}

void OutQueue::appendRef(std::string_view bytes, Release release, void* ctx) {
  if (bytes.empty()) return release(ctx);
  try {
    // Room left in the tail block goes on after these bytes: appends that follow (the next
    // message's head) fill it instead of taking a 16 KiB block each.
    bool split = !blocks_.empty() && blocks_.back().owned && !blocks_.back().release &&
                 blocks_.back().cap - blocks_.back().end >= kSplitRoom;
    blocks_.reserve(blocks_.size() + 2);  // (no throw below)
    blocks_.push_back(
        Block{const_cast<char*>(bytes.data()), bytes.size(), 0, bytes.size(), release, ctx});
    if (split) {
      Block& tail = blocks_[blocks_.size() - 2];
      blocks_.push_back(Block{tail.data, tail.cap, tail.end, tail.end});
      tail.owned = false;
    }
  } catch (...) {
    release(ctx);
    throw;
  }
  bytes_ += bytes.size();
}

void OutQueue::popFront() noexcept {
  Block& b = blocks_[head_];
  if (b.release) {
    b.release(b.ctx);
  } else if (b.owned) {
    giveBlock(b.data, b.cap);
  }
  ++head_;
  if (head_ == blocks_.size()) {
    blocks_.clear();
    head_ = 0;
  } else if (head_ >= 32 && head_ * 2 >= blocks_.size()) {  // never drained: compact
    blocks_.erase(blocks_.begin(), blocks_.begin() + static_cast<ptrdiff_t>(head_));
    head_ = 0;
  }
}

ssize_t OutQueue::writeTo(int fd) {
  constexpr int kMaxIov = 64;
  size_t total = 0;
  while (bytes_ > 0) {
    iovec iov[kMaxIov];
    int n = 0;
    size_t offered = 0;
    for (size_t i = head_; i < blocks_.size() && n < kMaxIov; ++i, ++n) {
      iov[n] = {blocks_[i].data + blocks_[i].begin, blocks_[i].end - blocks_[i].begin};
      offered += iov[n].iov_len;
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<size_t>(n);
    ssize_t w = ::sendmsg(fd, &msg, platform::kSendFlags);  // no SIGPIPE even for embedders
    if (w < 0) {
      if (errno == EINTR) continue;
      if (total > 0 && errno == EAGAIN) return static_cast<ssize_t>(total);
      return -1;
    }
    total += static_cast<size_t>(w);
    consume(static_cast<size_t>(w));
    if (static_cast<size_t>(w) < offered) break;  // kernel buffer full
  }
  return static_cast<ssize_t>(total);
}

void OutQueue::consume(size_t n) noexcept {
  bytes_ -= n;
  written_ += n;
  while (n > 0) {
    Block& b = blocks_[head_];
    size_t k = std::min(n, b.end - b.begin);
    b.begin += k;
    n -= k;
    if (b.begin == b.end) popFront();
  }
}

void OutQueue::clear() noexcept {
  while (head_ < blocks_.size()) popFront();
  bytes_ = 0;  // dropped bytes never count as written
}

}  // namespace aiorpc::core
