// A non-blocking stream connection: reads into the owner's buffer, batches writes per iteration.
#pragma once

#include <algorithm>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <system_error>

#include "aiorpc/core/address.h"
#include "aiorpc/core/buffer.h"
#include "aiorpc/core/loop.h"
#include "aiorpc/core/socket.h"
#include "aiorpc/core/watcher.h"

namespace aiorpc::core {

class Connection;
class TlsContext;

// The owner's side of a connection. Upcalls run on the loop; any of them may call
// Connection::close(). onClose comes exactly once, possibly from inside another upcall: after
// any upcall the owner must check closed() before touching the connection again, and must free
// the connection only through Loop::deferDelete (never inside an upcall).
class ConnectionHandler {
 public:
  // Where the next read lands: a span of at least a few KiB, owned by the handler (the rpc
  // layer hands out the msgpack unpacker's buffer, so bytes are read in place).
  virtual std::span<char> readBuffer() = 0;
  // `n` bytes were read into the span last returned.
  virtual void onData(size_t n) = 0;
  // The peer half-closed. The default closes once the output is flushed.
  virtual void onEof(Connection& c);
  // The output queue went over the high-water mark / drained below the low-water mark.
  virtual void onHighWater(Connection&) {}
  virtual void onLowWater(Connection&) {}
  // The output queue went over the hard limit (setOutputLimit). The default closes at once with
  // ENOBUFS; a handler that must not close inside a write closes it later, from the loop.
  virtual void onOverLimit(Connection& c);
  // The TLS handshake is done (startTls); queued output goes out next.
  virtual void onHandshakeDone(Connection&) {}
  // Exactly once. `why` is empty for a local close or a clean shutdown by the peer.
  virtual void onClose(std::error_code why) = 0;

 protected:
  ~ConnectionHandler() = default;
};

class Connection final : private Flushable {
 public:
  // Takes ownership of the connected, non-blocking `fd` and starts reading.
  Connection(Loop& loop, Fd fd, ConnectionHandler* handler);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Runs TLS over this connection (SPEC §8): call it right after construction, before the
  // loop runs again. The handshake runs from the loop (never inside this call), bounded by the
  // context's handshake_timeout; output queued meanwhile goes out once it is done. A failed or
  // timed-out handshake closes the connection (onClose with an x509Category, tlsCategory or
  // system error). A client passes the name it dialled (`verify_host`, a DNS name or an IP
  // address): the server's certificate must carry it (SAN), and a name is sent as SNI.
  void startTls(const std::shared_ptr<TlsContext>& ctx, std::string_view verify_host = {});
  bool tls() const noexcept { return tls_ != nullptr; }
  bool handshaking() const noexcept;
  // The verified certificate of the peer on a mutual-TLS connection: its subject, RFC 4514
  // ("CN=svc,O=example"); empty when there is none.
  const std::string& peerCertificate() const noexcept;

  // Queues bytes; they go out in one writev before the loop next sleeps.
  void send(std::string_view bytes);
  // For encoders that append in pieces: append to out(), then call sent().
  OutQueue& out() noexcept { return out_; }
  const OutQueue& out() const noexcept { return out_; }
  void sent() noexcept;

  // While reading is paused the peer's reset or EOF goes unseen; the owner calls this from
  // time to time to find out (a MSG_PEEK, nothing consumed): a reset closes the connection, an
  // EOF with nothing left to read is reported through onEof as usual.
  void checkPeer() noexcept;
  void pauseReading() noexcept;
  void resumeReading() noexcept;
  bool readingPaused() const noexcept { return paused_; }
  // Stop reading, flush what is queued, then close gracefully: the write side is shut and the
  // socket lingers in the loop (Loop::linger) so that no reset destroys the replies. Idempotent.
  void closeAfterFlush() noexcept;
  // Closes now, dropping unsent output. Idempotent; safe inside any upcall.
  void close(std::error_code why = {}) noexcept;
  bool closed() const noexcept { return closed_; }
  bool eof() const noexcept { return eof_; }

  // Output watermarks in bytes (defaults 4 MiB / 1 MiB).
  void setWaterMarks(size_t high, size_t low) noexcept { high_ = high, low_ = low; }
  // Hard limit on queued output (0: none). A peer that lets more than this pile up (it does
  // not read) is disconnected with ENOBUFS (by default at once: onOverLimit) and its queued
  // bytes are dropped (Redis's client-output-buffer-limit).
  void setOutputLimit(size_t bytes) noexcept {
    limit_ = bytes;
    if (limit_ && limit_ < high_) high_ = limit_, low_ = std::min(low_, limit_ / 2);  // see sent()
  }
  size_t pendingBytes() const noexcept { return out_.size(); }
  int fd() const noexcept { return fd_.get(); }
  const Address& peer() const noexcept { return peer_; }
  const Address& local() const noexcept { return local_; }
  Loop& loop() noexcept { return loop_; }

 private:
  void onIo(int revents) noexcept;
  void onReadable() noexcept;
  bool takeReadBuffer(std::span<char>& buf) noexcept;
  void deliver(size_t n) noexcept;
  void flush() noexcept override;
  void afterWrite() noexcept;
  void updateIo() noexcept;
  void closeGracefully() noexcept;
  // TLS (tls_connection.cc): the same steps through OpenSSL.
  struct Tls;
  void tlsIo(int revents) noexcept;
  void tlsHandshake() noexcept;
  void tlsRead() noexcept;
  void tlsFlush() noexcept;
  void tlsTimeout(int) noexcept;
  void tlsEvents(int& ev) const noexcept;
  bool tlsPending() const noexcept;
  void tlsShutdown() noexcept;
  void tlsUnlist() noexcept;

  Loop& loop_;
  Fd fd_;
  ConnectionHandler* handler_;
  std::unique_ptr<Tls> tls_;  // null: plaintext
  IoWatcher io_;
  OutQueue out_;
  Address peer_, local_;
  size_t high_ = 4 << 20, low_ = 1 << 20, limit_ = 0;
  bool closed_ = false, paused_ = false, eof_ = false, above_high_ = false;
  bool want_write_ = false, close_after_flush_ = false;
};

}  // namespace aiorpc::core
