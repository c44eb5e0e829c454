// Endpoint, the serving half: the requests of the peer (decoded or offered as bytes), the
// replies we owe and the one function that writes a reply.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "aiorpc/core/log.h"
#include "aiorpc/rpc/endpoint.h"
#include "aiorpc/rpc/service.h"

namespace aiorpc::rpc {

namespace log = core::log;

bool Peers::reply(uint64_t session, Object msgid, const ReplyBody& body, const CallTag& tag) {
  if (Endpoint* e = find(session)) return e->writeReply(msgid, body, true, tag);
  ++counters.dropped_replies;  // the connection has gone
  --counters.in_flight;
  return false;
}

size_t Peers::outputBytes(uint64_t session) const {
  Endpoint* e = find(session);
  return e ? e->pendingOutput() : 0;
}

void Endpoint::Owner::control(std::string_view cmd, Object, Invocation& inv) {
  inv.replyError(Kind::kNoMethod, "no control command '" + std::string(cmd.substr(0, 100)) + "'");
}

// ---- Replies we owe ----

namespace {
// A reply other than a value for an unsigned msgid, item by item; `outcome` 1 + the kind
// counted for an error.
void packReplyItems(Packer& p, Object msgid, const ReplyBody& b, size_t& outcome) {
  p.array(4);
  p.uinteger(1);
  if (msgid.type() == MSGPACK_OBJECT_POSITIVE_INTEGER) {
    p.uinteger(msgid.raw().via.u64);  // the usual msgid, without the generic walk
  } else {
    p.object(msgid);
  }
  switch (b.type) {
    case ReplyBody::Type::kValue:
      p.nil();
      (*b.value)(p);
      break;
    case ReplyBody::Type::kError: {
      // Client-side kinds never reach the wire (SPEC §1 lists the kinds a reply may carry).
      Kind k = b.kind == Kind::kNotSent ? Kind::kConnection
               : b.kind == Kind::kOther ? Kind::kApplication
                                        : b.kind;
      outcome = 1 + static_cast<size_t>(k);
      packError(p, k, b.message);
      p.nil();
      break;
    }
    case ReplyBody::Type::kErrorObject:
      outcome = 1 + static_cast<size_t>(countedKind(b.error));
      p.object(b.error);
      p.nil();
      break;
    case ReplyBody::Type::kErrorBytes:
      outcome = 1 + static_cast<size_t>(countedKind(b.message));
      p.raw(b.message);
      p.nil();
      break;
  }
}
}  // namespace

[[gnu::always_inline]] inline bool Endpoint::writeReply(Object msgid, const ReplyBody& b, bool owed,
                                                        const CallTag& tag) {
  if (owed && !open()) [[unlikely]] {
    ++counters_.dropped_replies;
    --counters_.in_flight;
    --in_flight_;
    return false;
  }
  // (A reply written while we serve a request finds its connection: a closed one drops it.)
  Packer p(conn_->out());
  size_t outcome = 0;  // ok, else 1 + the kind counted
  if (b.type == ReplyBody::Type::kValue && msgid.type() == MSGPACK_OBJECT_POSITIVE_INTEGER) {
    p.replyHead(msgid.raw().via.u64);  // the usual reply: its head in one append
    (*b.value)(p);
  } else {
    packReplyItems(p, msgid, b, outcome);
  }
  if (outcome) ++counters_.errors[outcome - 1];
  if (opts_.metrics) opts_.metrics->replied(tag, outcome);
  conn_->sent();
  if (owed) {
    --counters_.in_flight;
    --in_flight_;
    if ((paused_ & kAtMaxPending) && in_flight_ < opts_.max_pending) {
      // Room again: read on, from the loop (we may be inside a handler here).
      paused_ &= ~kAtMaxPending;
      resumeLater();
    }
    if (in_flight_ == 0 && (finishing() || (draining() && !held_))) finish();
  }
  return true;
}

// A request of the peer being served: on the stack while its handler runs; detach() hands the
// right to answer to a Responder that finds this endpoint again by id.
// The handler may destroy our owner: a request is only served inside process(), whose Watch
// keeps this endpoint allocated (orphaned, phase kGone) until it unwinds, so gone() can ask it.
class Endpoint::Served final : public Invocation {
 public:
  Served(Endpoint& e, Object msgid, bool notify, double start)
      : e_(e), msgid_(msgid), notify_(notify), tag_{0, start} {}
  void setMethod(uint32_t id) noexcept { tag_.method = id; }
  bool gone() const noexcept { return e_.phase_ == Phase::kGone; }

  void replyValue(core::FunctionRef<void(Packer&)> write) override {
    if (answered_ || notify_ || gone()) return void(answered_ = true);
    answered_ = true;
    e_.writeReply(msgid_, ReplyBody::ofValue(write), false, tag_);
  }
  void replyError(Kind k, std::string_view message) override {
    if (answered_ || gone()) return;
    answered_ = true;
    if (notify_) return log::debug("notification failed: {}: {}", kindName(k), message);
    e_.writeReply(msgid_, ReplyBody::ofError(k, message), false, tag_);
  }
  void replyErrorObject(Object error) override {
    if (answered_ || gone()) return;
    answered_ = true;
    if (notify_) return;
    e_.writeReply(msgid_, ReplyBody::ofErrorObject(error), false, tag_);
  }
  Responder detach() override {
    if (answered_ || gone()) return Responder();
    answered_ = true;
    msgpack_zone* zone = e_.dec_->releaseZone();
    if (notify_) return Responder({}, nullptr, 0, msgid_, zone, false);
    e_.detached();
    return Responder(e_.peers_, e_.peers_raw_, e_.id_, msgid_, zone, true, tag_);
  }

 private:
  Endpoint& e_;
  Object msgid_;
  bool notify_, answered_ = false;
  CallTag tag_;
};

class Endpoint::RawServed final : public RawRequest {
 public:
  RawServed(Endpoint& e, uint64_t msgid, bool notify, CallTag tag)
      : e_(e), msgid_(msgid), tag_(tag) {
    notification = notify;
  }
  Responder detach() override {
    if (detached_ || notification || e_.phase_ == Phase::kGone)
      return Responder();  // (owner gone: we are orphaned; a notification has no reply)
    detached_ = true;
    e_.detached();
    msgpack_object id;
    id.type = MSGPACK_OBJECT_POSITIVE_INTEGER;
    id.via.u64 = msgid_;
    return Responder(e_.peers_, e_.peers_raw_, e_.id_, Object(id), nullptr, true,
                     tag_);  // msgid by value
  }
  bool detached_ = false;

 private:
  Endpoint& e_;
  uint64_t msgid_;
  CallTag tag_;
};

const MethodInfo* Endpoint::findMethod(std::string_view name) noexcept {
  if (last_method_ && last_method_->name == name) return last_method_;
  const MethodInfo* m = service_->find(name);
  if (m) last_method_ = m;
  return m;
}

bool Endpoint::rawRequest(std::string_view m) {
  // [0, msgid, method, params] with an unsigned msgid, or [2, method, params], and a method
  // that has a raw handler (that takes notifications, for one): offered as bytes. Draining, a
  // guard, anything else: the decoded path.
  auto u = [&](size_t i) { return static_cast<unsigned char>(m[i]); };
  if (m.size() < 3 || !service_ || draining() || service_->guard()) return false;
  bool notify = u(0) == 0x93 && u(1) == 0x02;
  if (!notify && (m.size() < 4 || u(0) != 0x94 || u(1) != 0x00)) return false;
  size_t id_len = 0, name_len = 0;
  std::optional<uint64_t> id = uint64_t{0};
  if (!notify) id = readUint(m.data() + 2, m.size() - 2, id_len);
  if (!id) return false;
  size_t at = 2 + id_len;
  auto name = readStr(m.data() + at, m.size() - at, name_len);
  if (!name || name->empty() || (*name)[0] == '\0') return false;
  const MethodInfo* mi = findMethod(*name);
  if (!mi || !mi->raw || (notify && !mi->raw_notifications)) return false;
  RawServed rq(*this, *id, notify, {mi->id, read_at_});
  rq.params = m.substr(at + name_len);  // a whole array was framed: the rest is params
  core::Loop::OwnerScope scope(loop_, sleeps_);
  // (Inside process(): a handler that destroys our owner leaves us allocated, phase kGone.)
  if (!mi->raw(rq)) return rq.detached_ || phase_ == Phase::kGone;  // declined: decoded
  if (phase_ != Phase::kGone) ++(notify ? counters_.notifications : counters_.requests);
  return true;
}

void Endpoint::serve(Object msgid, Object method, Object params, bool notify) {
  Served inv(*this, msgid, notify, read_at_);
  if (!method.isStrOrBin()) {
    inv.replyError(Kind::kNoMethod,
                   std::string("method name must be a string, got ") + method.typeName());
    return;
  }
  std::string_view name = method.str();
  if (!name.empty() && name[0] == '\0') {
    if (notify) return;
    return owner_.control(name.substr(1), params, inv);
  }
  if (draining() && !readBeforeDrain()) [[unlikely]] {
    if (!notify) inv.replyError(Kind::kServiceUnavailable, "draining");
    return;  // it did not run
  }
  const MethodInfo* m = service_ ? findMethod(name) : nullptr;
  if (!m) {
    inv.replyError(Kind::kNoMethod, service_ ? "no method " + method.toText(100)
                                             : std::string("this peer serves no methods"));
    return;
  }
  inv.params = params;
  inv.setMethod(m->id);
  core::Loop::OwnerScope scope(loop_, sleeps_);
  if (!m->context_name.empty() || service_->guard()) {
    Context ctx(params, conn_->peer(), conn_->local(), id_, conn_->peerCertificate());
    if (const auto& guard = service_->guard()) {
      if (auto denied = guard(name, ctx)) return inv.replyError(denied->first, denied->second);
    }
    inv.context = m->context_name.empty() ? nullptr : &ctx;
    dispatch(*m, inv);
  } else {
    dispatch(*m, inv);
  }
}

void Endpoint::detached() {
  ++in_flight_;
  ++counters_.in_flight;
  if (in_flight_ >= opts_.max_pending && !(paused_ & kAtMaxPending)) {
    // Bound what one connection can make us hold (SPEC-less; HTTP/2's concurrent streams):
    // stop reading it until a request in progress finishes.
    paused_ |= kAtMaxPending;
    conn_->pauseReading();
  }
}
}  // namespace aiorpc::rpc
