// Responder: the right to answer one request, possibly later. Reply<T>: its typed face.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "aiorpc/core/callback.h"
#include "aiorpc/rpc/codec.h"
#include "aiorpc/rpc/errors.h"
#include "aiorpc/rpc/metrics.h"

namespace aiorpc::rpc {

// Writes an error object of ours: [kind, message] (the message made valid UTF-8).
void packError(Packer& p, Kind kind, std::string_view message);

// What a reply carries: a result (written by `*value`), one of our errors (kind and message),
// or a peer's error object passed on intact.
struct ReplyBody {
  enum class Type : uint8_t { kValue, kError, kErrorObject, kErrorBytes };
  Type type = Type::kValue;
  const core::FunctionRef<void(Packer&)>* value = nullptr;
  Kind kind = Kind::kInternal;
  std::string_view message;
  Object error;
  static ReplyBody ofValue(const core::FunctionRef<void(Packer&)>& write) noexcept {
    return {Type::kValue, &write, Kind::kInternal, {}, {}};
  }
  static ReplyBody ofError(Kind kind, std::string_view message) noexcept {
    return {Type::kError, nullptr, kind, message, {}};
  }
  static ReplyBody ofErrorObject(Object error) noexcept {
    return {Type::kErrorObject, nullptr, Kind::kInternal, {}, error};
  }
  // A peer's error object as the bytes it came in (`message` holds them): written as they are.
  static ReplyBody ofErrorBytes(std::string_view bytes) noexcept {
    return {Type::kErrorBytes, nullptr, Kind::kInternal, bytes, {}};
  }
};

// The one exception→reply mapping (SPEC §2): a handler's RpcError answers as it is (a peer's
// error object intact); a downstream error it let escape answers ApplicationError naming it;
// any other exception ApplicationError. Only inside a catch block: the body refers to the
// exception being handled and to `text`, valid while both are.
ReplyBody replyForCurrentException(std::string& text);

// Where detached replies go: the endpoints of a Server or Client, looked up by id at reply time,
// so a reply for a connection that has gone is dropped (and counted) instead of touching freed
// memory.
class ReplyHub {
 public:
  virtual ~ReplyHub() = default;
  // Writes the reply through the endpoint's one reply function; false when it has gone.
  virtual bool reply(uint64_t session, Object msgid, const ReplyBody& body, const CallTag& tag) = 0;
  // Bytes queued for the session's peer (0 when it has gone).
  virtual size_t outputBytes(uint64_t session) const = 0;
};

struct Outcome;  // endpoint.h

// Move-only. Exactly one reply: a Responder destroyed without replying answers InternalError.
// Keeps the request's zone (and so its msgid and any argument views) alive until then.
class Responder {
 public:
  Responder() = default;
  // `answer` false: keep the zone alive but send nothing (a notification's handler).
  // `raw` is `hub` itself, used while `hub` has not expired (a check, not a lock: replies are
  // written on the loop's thread, and writing one runs no user code that could free the hub).
  Responder(std::weak_ptr<ReplyHub> hub, ReplyHub* raw, uint64_t session, Object msgid,
            msgpack_zone* zone, bool answer = true, CallTag tag = {})
      : hub_(std::move(hub)),
        raw_hub_(raw),
        session_(session),
        msgid_(msgid),
        zone_(zone),
        tag_(tag),
        done_(!answer) {}
  Responder(Responder&& o) noexcept { take(o); }
  Responder& operator=(Responder&& o) noexcept {
    if (this != &o) {
      if (!done_ || zone_) settle();
      take(o);
    }
    return *this;
  }
  ~Responder() {
    if (!done_ || zone_) settle();
  }

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
    auto write = [&](Packer& p) { p.pack(value); };
    core::FunctionRef<void(Packer&)> fn(write);
    send(ReplyBody::ofValue(fn));
  }
  void error(Kind kind, std::string_view message);
  void error(const RpcError& e);
  void errorObject(Object error);
  // A peer's error object as the msgpack bytes it came in (Response::raw_error), passed on as
  // they are.
  void errorBytes(std::string_view bytes);
  // Answers from an exception (RpcError as is, anything else as ApplicationError).
  void fail(std::exception_ptr e);
  // Answers with a call's outcome: its result, the peer's error object intact, or the failure.
  void answer(const Outcome& o);

 private:
  void send(const ReplyBody& body);
  void release() noexcept;
  // What a Responder still holds, given up: a reply not sent answers InternalError ("handler
  // dropped the reply"), the zone goes back. Out of line: the usual case (answered, no zone,
  // as after a raw request's reply) costs a test.
  void settle() noexcept;
  void take(Responder& o) noexcept {  // o's state, o left answered and empty
    hub_ = std::move(o.hub_);
    raw_hub_ = o.raw_hub_;
    session_ = o.session_;
    msgid_ = o.msgid_;
    zone_ = std::exchange(o.zone_, nullptr);
    tag_ = o.tag_;
    done_ = std::exchange(o.done_, true);
    own_zone_ = std::exchange(o.own_zone_, false);
  }

  std::weak_ptr<ReplyHub> hub_;
  ReplyHub* raw_hub_ = nullptr;
  uint64_t session_ = 0;
  Object msgid_;
  msgpack_zone* zone_ = nullptr;
  CallTag tag_;
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
