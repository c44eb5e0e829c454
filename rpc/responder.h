// Responder: the right to answer one request, possibly later. Reply<T>: its typed face.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "aiorpc/rpc/codec.h"
#include "aiorpc/rpc/errors.h"

namespace aiorpc::rpc {

// Writes an error object of ours: [kind, message] (the message made valid UTF-8).
void packError(Packer& p, Kind kind, std::string_view message);

// Where replies go. Implemented by the server; looked up by session id at reply time, so a
// reply for a connection that has gone is dropped (and counted) instead of touching freed memory.
class ReplyHub {
 public:
  virtual ~ReplyHub() = default;
  // An output queue positioned after "[1, msgid, " (error and result still to write), or null
  // when the session has gone. `token` names the session for endReply, which must follow
  // before control returns to the loop (one lookup per reply).
  virtual core::OutQueue* beginReply(uint64_t session, Object msgid, void*& token) = 0;
  virtual void endReply(void* token, bool error) = 0;
  virtual void dropped(uint64_t session) = 0;  // the request will get no reply at all
  virtual void countError(Kind k) = 0;
  // Bytes queued for the session's peer (0 when it has gone).
  virtual size_t outputBytes(uint64_t session) const = 0;
};

// Move-only. Exactly one reply: a Responder destroyed without replying answers InternalError.
// Keeps the request's zone (and so its msgid and any argument views) alive until then.
class Responder {
 public:
  Responder() = default;
  // `answer` false: keep the zone alive but send nothing (a notification's handler).
  Responder(std::weak_ptr<ReplyHub> hub, uint64_t session, Object msgid, msgpack_zone* zone,
            bool answer = true)
      : hub_(std::move(hub)), session_(session), msgid_(msgid), zone_(zone), done_(!answer) {}
  Responder(Responder&& o) noexcept { *this = std::move(o); }
  Responder& operator=(Responder&& o) noexcept;
  ~Responder();

  explicit operator bool() const noexcept { return !hub_.expired() && !done_; }
  uint64_t session() const noexcept { return session_; }
  // Bytes waiting to be written to this request's peer (backpressure for long polls).
  size_t peerOutputBytes() const;
  // Gives the request's zone back, keeping only a copy of the msgid (in a zone of a few dozen
  // bytes): for a reply that waits long (a long poll) and needs nothing else of its request.
  // Argument views taken from the request are invalid afterwards.
  void compact();
  template <class T>
  void reply(const T& value) {
    if (Open o = begin()) {
      Packer p(*o.out);
      p.nil();
      p.pack(value);
      end(o, false);
    }
  }
  void error(Kind kind, std::string_view message);
  void error(const RpcError& e);
  void errorObject(Object error);
  // Answers from an exception (RpcError as is, anything else as ApplicationError).
  void fail(std::exception_ptr e);

 private:
  struct Open {  // a reply being written
    std::shared_ptr<ReplyHub> hub;
    core::OutQueue* out = nullptr;
    void* token = nullptr;
    explicit operator bool() const noexcept { return out != nullptr; }
  };
  Open begin();
  void end(Open& o, bool error);
  void release() noexcept;

  std::weak_ptr<ReplyHub> hub_;
  uint64_t session_ = 0;
  Object msgid_;
  msgpack_zone* zone_ = nullptr;
  bool done_ = true;
  bool own_zone_ = false;  // zone_ is compact()'s small one: freed, not pooled
  friend class Invocation;
};

// The continuation-style handler's last parameter: call it once with the result.
template <class T>
class Reply {
 public:
  explicit Reply(Responder r) : r_(std::move(r)) {}
  void operator()(const T& v) { r_.reply(v); }
  void error(Kind k, std::string_view msg) { r_.error(k, msg); }
  // The untyped responder (e.g. to pass a peer's error object on intact).
  Responder& raw() noexcept { return r_; }

 private:
  Responder r_;
};

}  // namespace aiorpc::rpc
