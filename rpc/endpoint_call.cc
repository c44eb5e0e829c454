// Endpoint, the calling half: our calls (the slab, deadlines, outcomes) and the owner's table
// of outcomes decided but not yet delivered (Peers).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <utility>

#include "aiorpc/core/log.h"
#include "aiorpc/rpc/endpoint.h"
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
  switch (type) {
    case Ended::kPeerError:
      return countedKind(error);
    case Ended::kFailure:
      return kind;
    case Ended::kResult:
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
  switch (type) {
    case Ended::kResult:
      if (!raw_result.empty())
        return Outcome::result(Value::fromBytes(raw_result).value_or(Value()));
      return Outcome::result(keep(result));
    case Ended::kPeerError:
      if (!raw_error.empty())
        return {
            Ended::kPeerError, Value::fromBytes(raw_error).value_or(Value()), Kind::kInternal, {}};
      return {Ended::kPeerError, keep(error), Kind::kInternal, {}};
    case Ended::kFailure:
      break;
  }
  return Outcome::failure(kind, message);
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

Peers::~Peers() { clear(); }

void Peers::clear() noexcept {
  auto all = std::move(map);
  map.clear();
  for (auto& [id, e] : all) Endpoint::dispose(std::move(e));
  decided_.clear();  // undelivered outcomes: their callbacks destroyed, never called
}

uint64_t Peers::decide(ResponseFn done, Kind failure, std::string why) {
  uint64_t key = ++next_key_;
  decided_.emplace(key, Decided{std::move(done), failure, std::move(why)});
  return key;
}

void Peers::deliverLater(std::vector<uint64_t> keys) {
  loop.post([peers = weak_from_this(), keys = std::move(keys)] {
    for (uint64_t key : keys) {
      ResponseFn done;
      Response r;
      {
        auto p = peers.lock();  // released before the callback: it may destroy the owner
        if (!p) return;         // the owner has gone: its table dropped the rest uncalled
        auto it = p->decided_.find(key);
        if (it == p->decided_.end()) continue;  // cancelled
        done = std::move(it->second.done);
        r.type = Ended::kFailure;
        r.kind = it->second.failure;
        r.message = std::move(it->second.message);
        p->decided_.erase(it);
      }
      done(r);
    }
  });
}

CallHandle Peers::refuse(ResponseFn done, Kind failure, std::string why) {
  uint64_t key = decide(std::move(done), failure, std::move(why));
  deliverLater({key});
  return CallHandle(weak_from_this(), 0, key);
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

void Endpoint::linkDeadline(uint32_t s, double at) noexcept {
  Slot& x = slots_[s];
  x.at = at;
  // Usually the latest (one timeout for all calls): at the end. A shorter timeout than the
  // latest ones walks back to its place.
  uint32_t after = last_;
  while (after != kNil && slots_[after].at > at) after = slots_[after].prev;
  x.prev = after;
  x.next = after == kNil ? first_ : slots_[after].next;
  (x.next == kNil ? last_ : slots_[x.next].prev) = s;
  (after == kNil ? first_ : slots_[after].next) = s;
}

void Endpoint::unlinkDeadline(uint32_t s) noexcept {
  Slot& x = slots_[s];
  (x.prev == kNil ? first_ : slots_[x.prev].next) = x.next;
  (x.next == kNil ? last_ : slots_[x.next].prev) = x.prev;
  x.prev = x.next = kNil;
}

void Endpoint::erasePending(uint32_t id) noexcept {
  uint32_t s = id & ((1u << kSlotBits) - 1);
  unlinkDeadline(s);
  slots_[s].used = false;
  slots_[s].p = Pending();
  free_slots_.push_back(s);
  --calls_in_flight_;
}

bool CallHandle::cancel() noexcept {
  auto peers = peers_.lock();
  if (!peers) return false;
  if (endpoint_ == 0) return peers->cancelDecided(call_);
  Endpoint* e = peers->find(endpoint_);
  return e && call_ <= UINT32_MAX && e->cancel(static_cast<uint32_t>(call_));
}

bool Endpoint::cancel(uint32_t msgid) noexcept {
  if (!findPending(msgid)) return false;
  erasePending(msgid);  // its deadline goes with it
  return true;
}

CallHandle Endpoint::call(std::string_view method, core::FunctionRef<void(Packer&)> params,
                          ResponseFn&& done, double timeout, bool handle) {
  auto refuse = [&](std::string why) {
    auto peers = peers_.lock();
    if (!peers) return CallHandle();  // our owner has gone: `done` dropped uncalled
    return peers->refuse(std::move(done), Kind::kNotSent, std::move(why));
  };
  if ((conn_ && conn_->closed()) || phase_ == Phase::kGone)
    return refuse("connection to " + remote_.toString() + " closed");
  uint32_t id;
  Pending* pc = addPending(id);
  if (!pc) return refuse("over 1,048,576 calls in flight on one connection");
  pc->done = std::move(done);
  pc->seq = ++seq_;
  pc->queued = conn_.has_value();  // else it waits in unsent_ for attach()
  pc->end = queue([&](Packer& p) {
    p.requestHead(id, method);
    params(p);
  });
  if (!(timeout >= 0) || !std::isfinite(timeout)) timeout = opts_.call_timeout;  // -1, NaN, inf
  uint32_t s = id & ((1u << kSlotBits) - 1);
  linkDeadline(s, loop_.now() + timeout);
  // The timer stays armed at an earlier deadline whose call was answered (it re-arms when it
  // fires): only a new first deadline moves it.
  if (first_ == s && (!timer_.active() || timer_.remaining() > timeout)) armTimer();
  return handle ? CallHandle(peers_, id_, id) : CallHandle();
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

std::vector<Endpoint::Slot> Endpoint::takeCalls() noexcept {
  timer_.stop();
  first_ = last_ = kNil;
  free_slots_.clear();
  calls_in_flight_ = 0;
  return std::exchange(slots_, {});
}

void Endpoint::failCalls(uint64_t written, const std::string& why) {
  bool pending = calls_in_flight_ > 0;
  auto calls = takeCalls();
  auto peers = peers_.lock();
  if (!pending || !peers) return;  // (no owner: the callbacks are dropped uncalled)
  // Calls whose bytes wholly left may have run: ConnectionError. The rest never reached the
  // peer: not-sent (safe to retry elsewhere).
  std::vector<std::pair<uint64_t, uint64_t>> order;  // (seq, key)
  for (Slot& s : calls) {
    if (!s.used) continue;
    Pending& pc = s.p;
    bool sent = pc.queued && pc.end <= written;
    uint64_t key = peers->decide(std::move(pc.done), sent ? Kind::kConnection : Kind::kNotSent,
                                 sent ? why : why + " (request not sent)");
    order.emplace_back(pc.seq, key);
  }
  std::sort(order.begin(), order.end());  // delivered in the order the calls were made
  std::vector<uint64_t> keys;
  keys.reserve(order.size());
  for (auto& [seq, key] : order) keys.push_back(key);
  peers->deliverLater(std::move(keys));
}

void Endpoint::abandon(const std::string& why) {
  std::string().swap(unsent_);
  failCalls(0, why);
}

void Endpoint::completeCall(uint64_t id, Response& r) {
  Pending* pc = id <= UINT32_MAX ? findPending(static_cast<uint32_t>(id)) : nullptr;
  if (!pc) {
    // A reply to a peer we never called is a protocol error (SPEC §1: "a response sent to a
    // server"); after calls of ours, one that timed out already (or an id we never used).
    if (seq_ == 0) return protocolError("a response to a peer that was sent no request");
    ++late_replies_;
    return;
  }
  ResponseFn done = std::move(pc->done);
  erasePending(static_cast<uint32_t>(id));
  done(r);
}

void Endpoint::armTimer() {
  if (first_ == kNil) return timer_.stop();
  timer_.start(std::max(0.0, slots_[first_].at - loop_.now()));
}

void Endpoint::onTimer(int) noexcept {
  double now = loop_.now();
  core::Liveness::Watch w(live_);
  while (first_ != kNil && slots_[first_].at <= now + 1e-6) {
    uint32_t id = slots_[first_].id;
    ResponseFn done = std::move(slots_[first_].p.done);
    erasePending(id);
    Response r;
    r.type = Ended::kFailure;
    r.kind = Kind::kTimeout;
    r.message = fmt::format("no reply from {} in time", remote_.toString());
    done(r);
    if (w.gone()) return;  // the callback destroyed our owner
  }
  armTimer();
}
}  // namespace aiorpc::rpc
