// Endpoint: framing, classification, serving, calls and the one reply writer.
#include "aiorpc/rpc/endpoint.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "aiorpc/core/log.h"
#include "aiorpc/rpc/service.h"

namespace aiorpc::rpc {

namespace log = core::log;

Value Response::keep(Object o) {
  if (!zone && release_zone) {
    zone = std::shared_ptr<msgpack_zone>(release_zone(),
                                         [](msgpack_zone* z) { msgpack_zone_free(z); });
  }
  if (!zone) return Value::copyOf(o);
  return Value(zone, o);
}

Kind Response::failureKind() const noexcept {
  switch (status) {
    case Status::kError:
      return countedKind(error);
    case Status::kTimeout:
      return Kind::kTimeout;
    case Status::kConnection:
      return Kind::kConnection;
    case Status::kNotSent:
      return Kind::kNotSent;
    case Status::kOk:
      break;
  }
  return Kind::kInternal;
}

std::exception_ptr Outcome::exception() const {
  switch (type) {
    case Type::kResult:
      return nullptr;
    case Type::kPeerError:
      return std::make_exception_ptr(RpcError(value).markDownstream());
    case Type::kFailure:
      break;
  }
  return std::make_exception_ptr(RpcError(kind, message).markDownstream());
}

Outcome Response::outcome() {
  switch (status) {
    case Status::kOk:
      if (!raw_result.empty())
        return Outcome::result(Value::fromBytes(raw_result).value_or(Value()));
      return Outcome::result(keep(result));
    case Status::kError:
      return {Outcome::Type::kPeerError, keep(error), Kind::kInternal, {}};
    default:
      return Outcome::failure(failureKind(), message);
  }
}

std::exception_ptr Response::exception() {
  if (status == Status::kOk) return nullptr;
  return outcome().exception();
}

CallFuture futureOf(core::FunctionRef<CallHandle(ResponseFn)> start) {
  core::Promise<Value> p;
  auto f = p.future();
  CallHandle h = start([p = std::move(p)](Response& r) mutable {
    Outcome o = r.outcome();
    if (o.ok()) {
      p.setValue(std::move(o.value));
    } else {
      p.setException(o.exception());
    }
  });
  return {std::move(f), std::move(h)};
}

Peers::~Peers() {
  auto all = std::move(map);  // freed here: each drops its calls uncalled
  map.clear();
}

bool Peers::reply(uint64_t session, Object msgid, const ReplyBody& body) {
  if (Endpoint* e = find(session)) return e->writeReply(msgid, body, true);
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

[[gnu::always_inline]] inline bool Endpoint::writeReply(Object msgid, const ReplyBody& b,
                                                        bool owed) {
  if (owed && !open()) [[unlikely]] {
    ++counters_.dropped_replies;
    --counters_.in_flight;
    --in_flight_;
    return false;
  }
  // (A reply written while we serve a request finds its connection: a closed one drops it.)
  Packer p(conn_->out());
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
      ++counters_.errors[static_cast<size_t>(k)];
      packError(p, k, b.message);
      p.nil();
      break;
    }
    case ReplyBody::Type::kErrorObject:
      ++counters_.errors[static_cast<size_t>(countedKind(b.error))];
      p.object(b.error);
      p.nil();
      break;
  }
  conn_->sent();
  if (owed) {
    --counters_.in_flight;
    --in_flight_;
    if (full_ && in_flight_ < opts_.max_pending) {
      full_ = false;  // room again: read on, from the loop (we may be inside a handler here)
      resumeLater();
    }
    if (in_flight_ == 0 && (stopping_ || draining_)) finish();
  }
  return true;
}

// A request of the peer being served: on the stack while its handler runs; detach() hands the
// right to answer to a Responder that finds this endpoint again by id.
class Endpoint::Served final : public Invocation {
 public:
  Served(Endpoint& e, Object msgid, bool notify) : e_(e), msgid_(msgid), notify_(notify) {}

  void replyValue(core::FunctionRef<void(Packer&)> write) override {
    if (answered_ || notify_) return void(answered_ = true);
    answered_ = true;
    e_.writeReply(msgid_, ReplyBody::ofValue(write), false);
  }
  void replyError(Kind k, std::string_view message) override {
    if (answered_) return;
    answered_ = true;
    if (notify_) return log::debug("notification failed: {}: {}", kindName(k), message);
    e_.writeReply(msgid_, ReplyBody::ofError(k, message), false);
  }
  void replyErrorObject(Object error) override {
    if (answered_) return;
    answered_ = true;
    if (notify_) return;
    e_.writeReply(msgid_, ReplyBody::ofErrorObject(error), false);
  }
  Responder detach() override {
    if (answered_) return Responder();
    answered_ = true;
    msgpack_zone* zone = e_.dec_->releaseZone();
    if (notify_) return Responder({}, 0, msgid_, zone, false);
    e_.detached();
    return Responder(e_.peers_, e_.id_, msgid_, zone);
  }

 private:
  Endpoint& e_;
  Object msgid_;
  bool notify_, answered_ = false;
};

Endpoint::Endpoint(core::Loop& loop, const EndpointOptions& opts, Service* service, Owner& owner,
                   const std::shared_ptr<Peers>& peers, uint64_t id, core::Address remote)
    : loop_(loop),
      opts_(opts),
      service_(service),
      owner_(owner),
      peers_(peers),
      counters_(peers->counters),
      id_(id),
      remote_(remote),
      named_(remote.length() != 0),
      sleeps_(loop.newOwner()) {
  timer_.bind<&Endpoint::onTimer>(loop, this);
}

Endpoint::~Endpoint() {
  destroying_ = true;  // closing below reaches onClose, which then does nothing
  loop_.cancel(drain_timer_);
  if (conn_) conn_->close();
  // slots_ goes with us: pending calls are dropped, their callbacks never called.
}

const core::Address& Endpoint::peer() const noexcept {
  static const core::Address none;
  return conn_ ? conn_->peer() : none;
}

const core::Address& Endpoint::local() const noexcept {
  static const core::Address none;
  return conn_ ? conn_->local() : none;
}

void Endpoint::attach(core::Fd fd) {
  conn_.emplace(loop_, std::move(fd), this);
  if (!named_) remote_ = conn_->peer();
  conn_->setWaterMarks(opts_.high_water, opts_.low_water);
  conn_->setOutputLimit(opts_.max_output);
  if (unsent_.empty()) return;
  uint64_t base = conn_->out().appended();
  conn_->out().append(unsent_);
  std::string().swap(unsent_);
  for (Slot& s : slots_) {
    if (!s.used || s.p.queued) continue;
    s.p.end += base;
    s.p.queued = true;
  }
  conn_->sent();
}

// ---- Our calls ----

Endpoint::Pending* Endpoint::findPending(uint32_t id) noexcept {
  uint32_t s = id & ((1u << kSlotBits) - 1);
  if (s >= slots_.size() || !slots_[s].used || slots_[s].id != id) return nullptr;
  return &slots_[s].p;
}

Endpoint::Pending* Endpoint::addPending(uint32_t& id) {
  uint32_t s;
  if (!free_slots_.empty()) {
    s = free_slots_.back();
    free_slots_.pop_back();
  } else if (slots_.size() < (size_t{1} << kSlotBits)) {
    s = static_cast<uint32_t>(slots_.size());
    slots_.emplace_back();
    slots_[s].id = s - (1u << kSlotBits);  // so that the first use has generation 0
  } else {
    return nullptr;
  }
  Slot& slot = slots_[s];
  slot.id += 1u << kSlotBits;  // next generation (wraps)
  slot.used = true;
  ++calls_in_flight_;
  id = slot.id;
  return &slot.p;
}

void Endpoint::erasePending(uint32_t id) noexcept {
  uint32_t s = id & ((1u << kSlotBits) - 1);
  slots_[s].used = false;
  slots_[s].p = Pending();
  free_slots_.push_back(s);
  --calls_in_flight_;
}

CallHandle CallHandle::refused(core::Loop& loop, ResponseFn done, Response::Status st,
                               std::string why) {
  CallHandle h;
  h.loop_ = &loop;
  h.timer_ = loop.after(0, [done = std::move(done), st, why = std::move(why)]() mutable {
    Response r;
    r.status = st;
    r.message = std::move(why);
    done(r);
  });
  return h;
}

bool CallHandle::cancel() noexcept {
  if (loop_) return loop_->cancel(timer_);
  Endpoint* e = Peers::find(peers_, endpoint_);
  return e && e->cancel(msgid_);
}

bool Endpoint::cancel(uint32_t msgid) noexcept {
  if (!findPending(msgid)) return false;
  erasePending(msgid);  // the deadline entry finds nothing when it comes
  return true;
}

CallHandle Endpoint::call(std::string_view method, core::FunctionRef<void(Packer&)> params,
                          ResponseFn done, double timeout) {
  if (conn_ && conn_->closed())
    return CallHandle::refused(loop_, std::move(done), Response::Status::kNotSent,
                               "connection to " + remote_.toString() + " closed");
  uint32_t id;
  Pending* pc = addPending(id);
  if (!pc)
    return CallHandle::refused(loop_, std::move(done), Response::Status::kNotSent,
                               "over 1,048,576 calls in flight on one connection");
  pc->done = std::move(done);
  pc->seq = ++seq_;
  pc->queued = conn_.has_value();  // else it waits in unsent_ for attach()
  pc->end = queue([&](Packer& p) {
    p.array(4);
    p.uinteger(0);
    p.uinteger(id);
    p.str(method);
    params(p);
  });
  if (!(timeout >= 0) || !std::isfinite(timeout)) timeout = opts_.call_timeout;  // -1, NaN, inf
  Deadline d{loop_.now() + timeout, id, pc->seq};
  if (deadlines_.empty() || deadlines_.back().at <= d.at) {
    deadlines_.push_back(d);
  } else {  // a shorter timeout than the others: keep the queue sorted
    auto it = std::upper_bound(deadlines_.begin(), deadlines_.end(), d.at,
                               [](double at, const Deadline& x) { return at < x.at; });
    deadlines_.insert(it, d);
  }
  if (deadlines_.size() == 1 || deadlines_.front().id == id) armTimer();
  return CallHandle(peers_, id_, id);
}

void Endpoint::notify(std::string_view method, core::FunctionRef<void(Packer&)> params) {
  if (conn_ && conn_->closed()) return;
  queue([&](Packer& p) {
    p.array(3);
    p.uinteger(2);
    p.str(method);
    params(p);
  });
}

uint64_t Endpoint::queue(core::FunctionRef<void(Packer&)> write) {
  // Straight into the connection's output when attached; else kept until attach().
  if (conn_) {
    Packer p(conn_->out());
    write(p);
    conn_->sent();
    return conn_->out().appended();
  }
  Packer p(unsent_);
  write(p);
  return unsent_.size();
}

void Endpoint::onOverLimit(core::Connection&) {
  // What was not written of our calls fails as not-sent (and may go elsewhere).
  if (close_posted_) return;
  close_posted_ = true;
  later<&Endpoint::closeOverLimit>();
}

void Endpoint::closeOverLimit() {
  close_posted_ = false;
  if (!open() || conn_->pendingBytes() <= opts_.max_output) return;
  ++counters_.output_limit_closes;
  conn_->close(core::sysError(ENOBUFS));
}

void Endpoint::failCalls(const std::weak_ptr<Peers>& peers, std::vector<Slot> calls,
                         uint64_t written, const std::string& why) {
  // Calls whose bytes wholly left may have run: ConnectionError. The rest never reached the
  // peer: not-sent (safe to retry elsewhere).
  for (Slot& s : calls) {
    if (peers.expired()) return;  // a callback destroyed the owner: the rest are dropped
    if (!s.used) continue;
    Pending& pc = s.p;
    Response r;
    bool sent = pc.queued && pc.end <= written;
    r.status = sent ? Response::Status::kConnection : Response::Status::kNotSent;
    r.message = sent ? why : why + " (request not sent)";
    pc.done(r);
  }
}

void Endpoint::abandon(const std::string& why) {
  auto calls = std::move(slots_);
  slots_.clear();
  free_slots_.clear();
  calls_in_flight_ = 0;
  std::string().swap(unsent_);
  deadlines_.clear();
  timer_.stop();
  failCalls(peers_, std::move(calls), 0, why);
}

bool Endpoint::completeCall(uint64_t id, Response& r) {
  Pending* pc = id <= UINT32_MAX ? findPending(static_cast<uint32_t>(id)) : nullptr;
  if (!pc) {
    // A reply to a peer we never called is a protocol error (SPEC §1: "a response sent to a
    // server"); after calls of ours, one that timed out already (or an id we never used).
    if (seq_ == 0) {
      protocolError("a response to a peer that was sent no request");
      return true;
    }
    ++late_replies_;
    return true;
  }
  ResponseFn done = std::move(pc->done);
  erasePending(static_cast<uint32_t>(id));
  std::weak_ptr<Peers> peers = peers_;
  done(r);
  return !peers.expired();
}

void Endpoint::armTimer() {
  if (deadlines_.empty()) return timer_.stop();
  timer_.start(std::max(0.0, deadlines_.front().at - loop_.now()));
}

void Endpoint::onTimer(int) noexcept {
  double now = loop_.now();
  std::weak_ptr<Peers> peers = peers_;
  while (!deadlines_.empty() && deadlines_.front().at <= now + 1e-6) {
    Deadline d = deadlines_.front();
    deadlines_.pop_front();
    Pending* pc = findPending(d.id);
    if (!pc || pc->seq != d.seq) continue;  // answered already
    ResponseFn done = std::move(pc->done);
    erasePending(d.id);
    Response r;
    r.status = Response::Status::kTimeout;
    r.message = fmt::format("no reply from {} in time", remote_.toString());
    done(r);
    if (peers.expired()) return;  // the callback destroyed our owner
  }
  armTimer();
}

// ---- Input ----

std::span<char> Endpoint::readBuffer() {
  if (!dec_) dec_ = std::make_unique<Decoder>(opts_.limits);
  active_ = true;
  auto span = dec_->buffer(read_size_);
  offered_ = span.size();
  return span;
}

void Endpoint::onData(size_t n) {
  // Adapt the read size: a read that filled the buffer means more is waiting (fewer, larger
  // reads under load); small reads shrink it back (idle connections stay small).
  if (n == offered_ && read_size_ < kMaxRead)
    read_size_ *= 2;
  else if (n < read_size_ / 4 && read_size_ > kMinRead)
    read_size_ /= 2;
  got_bytes_ = true;
  counters_.bytes_in += n;
  if (opts_.frames) {
    dec_->feedFrames(n);
  } else {
    dec_->feed(n);
  }
  process();
}

[[gnu::always_inline]] inline bool Endpoint::goOn(int& budget) {
  if (stopping_ && !conn_->eof()) return false;  // a protocol error: nothing after it is read
  if (draining_ && in_flight_ == 0 && dec_->pending() == 0) [[unlikely]] {
    finish();
    return false;
  }
  if (--budget == 0 && !scheduled_) {
    // Let other connections run; continue with what is buffered on the next iteration.
    conn_->pauseReading();
    resumeLater();
    return false;
  }
  return true;
}

void Endpoint::process() {
  if (opts_.frames) return processFrames();
  int budget = opts_.max_messages_per_read;
  while (!conn_->closed() && !throttled_ && !full_ && dec_) {
    Object msg;
    auto st = dec_->next(msg);
    if (st == Decoder::Status::kNeedMore) return;
    if (st == Decoder::Status::kError) return protocolError(dec_->error());
    if (!handle(msg)) return;  // a reply's callback destroyed our owner
    if (!goOn(budget)) return;
  }
}

void Endpoint::processFrames() {
  int budget = opts_.max_messages_per_read;
  while (!conn_->closed() && !throttled_ && !full_ && dec_) {
    std::string_view frame;
    auto st = dec_->nextFrame(frame);
    if (st == Decoder::Status::kNeedMore) return;
    if (st == Decoder::Status::kError) return protocolError(dec_->error());
    int read = rawReply(frame);
    if (read < 0) return;  // the callback destroyed our owner
    if (read == 0 && !rawRequest(frame)) {
      Object msg;
      if (!dec_->decodeFrame(msg)) return protocolError(dec_->error());
      if (!handle(msg)) return;
    }
    if (!goOn(budget)) return;
  }
}

void Endpoint::resumeLater() {
  if (scheduled_) return;
  scheduled_ = true;
  later<&Endpoint::resumed>();
}

void Endpoint::resumed() {
  scheduled_ = false;
  if (!open()) return;
  if (!stopping_ && !throttled_ && !full_) conn_->resumeReading();
  process();
}

bool Endpoint::handle(Object msg) {
  if (!msg.isArray() || (msg.size() != 3 && msg.size() != 4)) {
    protocolError("message is not a 3- or 4-element array");
    return true;
  }
  auto type = msg[0].asUint();
  if (type == 0u && msg.size() == 4) {
    ++counters_.requests;
    request(msg[1], msg[2], msg[3], false);
    return true;
  }
  if (type == 2u && msg.size() == 3) {
    ++counters_.notifications;
    request(Object(), msg[1], msg[2], true);
    return true;
  }
  if (type == 1u && msg.size() == 4) {
    auto id = msg[1].asUint();
    Response r;
    r.status = msg[2].isNil() ? Response::Status::kOk : Response::Status::kError;
    r.result = msg[3];
    r.error = msg[2];
    Decoder* dec = dec_.get();
    r.release_zone = [dec] { return dec->releaseZone(); };
    return completeCall(id.value_or(UINT64_MAX), r);
  }
  protocolError("unknown message type " + msg[0].toText(40) + " of " + std::to_string(msg.size()) +
                " items");
  return true;
}

int Endpoint::rawReply(std::string_view m) {
  // Framed already: a whole array within the limits. [1, msgid, nil, result] is read in place.
  auto u = [&](size_t i) { return static_cast<unsigned char>(m[i]); };
  if (m.size() < 4 || u(0) != 0x94 || u(1) != 0x01) return 0;
  size_t id_len = 0;
  auto id = readUint(m.data() + 2, m.size() - 2, id_len);
  if (!id || 2 + id_len >= m.size() || u(2 + id_len) != 0xc0) return 0;
  Response r;
  r.raw_result = m.substr(3 + id_len);
  return completeCall(*id, r) ? 1 : -1;
}

class Endpoint::RawServed final : public RawRequest {
 public:
  RawServed(Endpoint& e, uint64_t msgid) : e_(e), msgid_(msgid) {}
  Responder detach() override {
    if (detached_) return Responder();
    detached_ = true;
    e_.detached();
    msgpack_object id;
    id.type = MSGPACK_OBJECT_POSITIVE_INTEGER;
    id.via.u64 = msgid_;
    return Responder(e_.peers_, e_.id_, Object(id), nullptr);  // the msgid by value: no zone
  }
  bool detached_ = false;

 private:
  Endpoint& e_;
  uint64_t msgid_;
};

bool Endpoint::rawRequest(std::string_view m) {
  // [0, msgid, method, params] with an unsigned msgid and a method that has a raw handler:
  // offered as bytes. Draining, a guard, anything else: the decoded path.
  auto u = [&](size_t i) { return static_cast<unsigned char>(m[i]); };
  if (m.size() < 4 || u(0) != 0x94 || u(1) != 0x00 || !service_ || draining_ || service_->guard())
    return false;
  size_t id_len = 0, name_len = 0;
  auto id = readUint(m.data() + 2, m.size() - 2, id_len);
  if (!id) return false;
  size_t at = 2 + id_len;
  auto name = readStr(m.data() + at, m.size() - at, name_len);
  if (!name || name->empty() || (*name)[0] == '\0') return false;
  const MethodInfo* mi = service_->find(*name);
  if (!mi || !mi->raw) return false;
  RawServed rq(*this, *id);
  rq.params = m.substr(at + name_len);  // a whole 4-item array was framed: the rest is params
  core::Loop::OwnerScope scope(loop_, sleeps_);
  if (!mi->raw(rq)) return rq.detached_;  // declined: decoded (it must not have detached)
  ++counters_.requests;
  return true;
}

void Endpoint::request(Object msgid, Object method, Object params, bool notify) {
  Served inv(*this, msgid, notify);
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
  if (draining_) [[unlikely]] {
    if (!notify) inv.replyError(Kind::kServiceUnavailable, "draining");
    return;  // it did not run
  }
  const MethodInfo* m = service_ ? service_->find(name) : nullptr;
  if (!m) {
    inv.replyError(Kind::kNoMethod, service_ ? "no method " + method.toText(100)
                                             : std::string("this peer serves no methods"));
    return;
  }
  inv.params = params;
  core::Loop::OwnerScope scope(loop_, sleeps_);
  if (!m->context_name.empty() || service_->guard()) {
    Context ctx(params, conn_->peer(), conn_->local(), id_);
    if (const auto& guard = service_->guard()) {
      if (auto denied = guard(name, ctx)) return inv.replyError(denied->first, denied->second);
    }
    inv.context = m->context_name.empty() ? nullptr : &ctx;
    dispatch(*m, inv);
  } else {
    dispatch(*m, inv);
  }
}

void Endpoint::protocolError(const std::string& why) {
  ++counters_.protocol_errors;
  log::warn("protocol error from {}: {}; closing after owed replies", remote_.toString(), why);
  finish();
}

void Endpoint::detached() {
  ++in_flight_;
  ++counters_.in_flight;
  if (in_flight_ >= opts_.max_pending && !full_) {
    // Bound what one connection can make us hold (SPEC-less; HTTP/2's concurrent streams):
    // stop reading it until a request in progress finishes.
    full_ = true;
    conn_->pauseReading();
  }
}

// ---- Closing ----

void Endpoint::onHighWater(core::Connection& c) {
  if (!service_) return;  // only replies pile up for a peer we serve; ours never stop its replies
  throttled_ = true;
  c.pauseReading();
}

void Endpoint::onLowWater(core::Connection& c) {
  if (!throttled_) return;
  throttled_ = false;
  if (!stopping_ && !full_) c.resumeReading();
  process();
}

void Endpoint::finish() {
  if (!open()) return;
  if (!stopping_) {
    stopping_ = true;
    conn_->pauseReading();
    drain_timer_ = loop_.after(opts_.drain_timeout, [this] {
      drain_timer_ = 0;
      conn_->close(core::Errc::kTimedOut);
    });
  }
  if (in_flight_ == 0) conn_->closeAfterFlush();
}

void Endpoint::drain() {
  draining_ = true;
  if (!open()) return;
  process();  // what is buffered already is answered too
  if (open() && in_flight_ == 0) finish();
}

void Endpoint::close(std::error_code why) {
  if (open()) conn_->close(why);
}

bool Endpoint::sweep() {
  bool freed = false;
  if (!active_ && dec_ && !dec_->midMessage() && !scheduled_) {
    dec_.reset();
    freed = true;
  }
  active_ = false;
  return freed;
}

void Endpoint::onClose(std::error_code why) {
  if (destroying_) return;
  loop_.cancel(drain_timer_);
  drain_timer_ = 0;
  if (why == std::errc::no_buffer_space) {
    log::warn(
        "connection {} closed: over {} bytes queued unread by the peer; {} owed replies dropped",
        remote_.toString(), opts_.max_output, in_flight_);
  } else if (why) {
    log::debug("connection {} closed: {}", remote_.toString(), why.message());
  }
  // What only this connection was waiting for ends now (from the loop: not inside its close).
  loop_.post([&loop = loop_, o = sleeps_] { loop.cancelOwned(o); });
  uint64_t written = conn_->out().written();
  std::string msg =
      why ? fmt::format("connection to {} lost: {}", remote_.toString(), why.message())
          : fmt::format("connection to {} closed", remote_.toString());
  auto calls = std::move(slots_);
  bool pending = calls_in_flight_ > 0;
  slots_.clear();
  free_slots_.clear();
  calls_in_flight_ = 0;
  deadlines_.clear();
  timer_.stop();
  owner_.endpointClosed(*this, why);  // takes us out of its table; freed from the loop
  // The calls fail from the loop: close() may have been called by the program (Client::close)
  // with a callback's state on its stack. Dropped uncalled if the owner goes first.
  if (pending)
    loop_.post([peers = peers_, calls = std::move(calls), written, msg = std::move(msg)]() mutable {
      failCalls(peers, std::move(calls), written, msg);
    });
}

}  // namespace aiorpc::rpc
