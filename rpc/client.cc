// Client, ClientPool, SyncClient.
#include "aiorpc/rpc/client.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "aiorpc/core/log.h"
#include "aiorpc/rpc/zone_pool.h"

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

std::exception_ptr Response::exception() {
  if (status == Status::kOk) return nullptr;
  if (status == Status::kError)
    return std::make_exception_ptr(RpcError(keep(error)).markDownstream());
  return std::make_exception_ptr(RpcError(failureKind(), message).markDownstream());
}

namespace {
core::Address parseOrThrow(std::string_view spec) {
  auto a = core::Address::parse(spec);
  if (!a) throw std::invalid_argument("bad address '" + std::string(spec) + "'");
  return *a;
}
}  // namespace

Client::Client(core::Loop& loop, core::Address addr, ClientOptions opts)
    : loop_(loop), addr_(addr), opts_(opts), connector_(loop) {
  timer_.bind<&Client::onTimer>(loop, this);
}

Client::Client(core::Loop& loop, std::string_view spec, ClientOptions opts)
    : Client(loop, parseOrThrow(spec), opts) {}

Client::~Client() {
  *alive_ = false;
  connector_.cancel();
  // Drop every pending call without running it: no user callback inside a destructor (the
  // owner that destroys a client has nothing left that its callbacks could safely touch).
  auto pending = std::move(slots_);
  slots_.clear();
  pending.clear();
  if (conn_) conn_->close();  // onClose finds nothing to fail
}

bool Client::dead() const noexcept {
  return failures_ > opts_.dead_after && loop_.now() - last_failure_ < opts_.dead_for;
}

Client::Pending* Client::findPending(uint32_t id) noexcept {
  uint32_t s = id & ((1u << kSlotBits) - 1);
  if (s >= slots_.size() || !slots_[s].used || slots_[s].id != id) return nullptr;
  return &slots_[s].p;
}

Client::Pending* Client::addPending(uint32_t& id) {
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
  ++in_flight_;
  id = slot.id;
  return &slot.p;
}

void Client::erasePending(uint32_t id) noexcept {
  uint32_t s = id & ((1u << kSlotBits) - 1);
  slots_[s].used = false;
  slots_[s].p = Pending();
  free_slots_.push_back(s);
  --in_flight_;
}

core::Future<Value> Client::futureFor(std::string method, Client& c,
                                      core::FunctionRef<void(Packer&)> params) {
  core::Promise<Value> p;
  auto f = p.future();
  c.send(method, params, [p = std::move(p)](Response& r) mutable {
    if (r.status == Response::Status::kOk) {
      p.setValue(r.keep(r.result));
    } else {
      p.setException(r.exception());
    }
  });
  return f;
}

void Client::send(std::string_view method, core::FunctionRef<void(Packer&)> params, ResponseFn done,
                  double timeout) {
  last_used_ = loop_.now();
  if (dead()) {
    // Fail fast, but from the loop: callbacks never run inside send().
    std::string why = fmt::format("{} is dead after {} failed connects; retrying after {} s",
                                  addr_.toString(), failures_, opts_.dead_for);
    loop_.post([done = std::move(done), why = std::move(why)]() mutable {
      Response r;
      r.status = Response::Status::kNotSent;
      r.message = std::move(why);
      done(r);
    });
    return;
  }
  uint32_t id;
  if (opts_.max_output && !connected() && unsent_.size() > opts_.max_output) {
    loop_.post(
        [done = std::move(done), why = fmt::format("over {} bytes wait for the connect to {}",
                                                   opts_.max_output, addr_.toString())]() mutable {
          Response r;
          r.status = Response::Status::kNotSent;
          r.message = std::move(why);
          done(r);
        });
    return;
  }
  Pending* added = addPending(id);
  if (!added) {
    loop_.post([done = std::move(done)]() mutable {
      Response r;
      r.status = Response::Status::kNotSent;
      r.message = "over 1,048,576 calls in flight on one client";
      done(r);
    });
    return;
  }
  Pending& pc = *added;
  pc.done = std::move(done);
  pc.seq = ++seq_;
  pc.queued = connected();  // else it waits in unsent_ for the connect
  pc.end = queue([&](Packer& p) {
    p.array(4);
    p.uinteger(0);
    p.uinteger(id);
    p.str(method);
    params(p);
  });
  if (!(timeout >= 0) || !std::isfinite(timeout)) timeout = opts_.timeout;  // -1, NaN, inf
  Deadline d{loop_.now() + timeout, id, pc.seq};
  if (deadlines_.empty() || deadlines_.back().at <= d.at) {
    deadlines_.push_back(d);
  } else {  // a shorter timeout than the others: keep the queue sorted
    auto it = std::upper_bound(deadlines_.begin(), deadlines_.end(), d.at,
                               [](double at, const Deadline& x) { return at < x.at; });
    deadlines_.insert(it, d);
  }
  if (deadlines_.size() == 1 || deadlines_.front().id == id) armTimer();
}

void Client::sendNotify(std::string_view method, core::FunctionRef<void(Packer&)> params) {
  last_used_ = loop_.now();
  if (dead()) return;
  queue([&](Packer& p) {
    p.array(3);
    p.uinteger(2);
    p.str(method);
    params(p);
  });
}

uint64_t Client::queue(core::FunctionRef<void(Packer&)> write) {
  // Straight into the connection's output when it is up; else kept until the connect completes.
  if (connected()) {
    Packer p(conn_->out());
    write(p);
    conn_->sent();
    if (opts_.max_output && conn_->pendingBytes() > opts_.max_output && !overflow_close_posted_) {
      // The peer is not reading: treat it as broken. Closed from the loop, so no callback runs
      // inside send(); what was not written fails as not-sent and may go elsewhere.
      overflow_close_posted_ = true;
      loop_.post([alive = std::weak_ptr<bool>(alive_), this] {
        if (alive.expired()) return;
        overflow_close_posted_ = false;
        if (conn_ && !conn_->closed() && conn_->pendingBytes() > opts_.max_output) {
          log::warn("client {}: over {} bytes of requests unread by the peer; closing",
                    addr_.toString(), opts_.max_output);
          conn_->close(core::sysError(ENOBUFS));
        }
      });
    }
    return conn_->out().appended();
  }
  Packer p(unsent_);
  write(p);
  connect();
  return unsent_.size();
}

void Client::connect() {
  if (connecting_ || connected()) return;
  connecting_ = true;
  connector_.start(addr_, opts_.connect_timeout, [this](core::Result<core::Fd> r) {
    std::weak_ptr<bool> alive = alive_;
    if (r) {
      connected(std::move(r.value()));
      if (connect_result_) connect_result_(true);
      return;
    }
    connecting_ = false;
    ++failures_;
    last_failure_ = loop_.now();
    if (connect_result_) connect_result_(false);
    if (alive.expired()) return;
    failAll(fmt::format("connect to {} failed: {}", addr_.toString(), r.error().message()));
  });
}

void Client::connected(core::Fd fd) {
  failures_ = 0;
  got_bytes_ = false;
  if (opts_.raw_results) {
    raw_in_ = core::Buffer();
    raw_scan_.emplace(opts_.limits);
    raw_scanned_ = 0;
  } else {
    dec_ = std::make_unique<Decoder>(opts_.limits);
  }
  if (conn_) loop_.deferDelete(std::move(conn_));
  conn_ = std::make_unique<core::Connection>(loop_, std::move(fd),
                                             static_cast<core::ConnectionHandler*>(this));
  connecting_ = false;
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

void Client::close() {
  connector_.cancel();
  connecting_ = false;
  if (conn_) conn_->close();
}

void Client::onClose(std::error_code why) {
  // Reset before the first byte came back, with requests written: the peer never served this
  // connection (it crashed or is refusing): a failed connect attempt, not a lost call.
  bool failed_connect = why && !got_bytes_ && conn_ && conn_->out().written() > 0;
  if (failed_connect && connect_result_) {
    loop_.post([alive = std::weak_ptr<bool>(alive_), this] {
      if (!alive.expired() && connect_result_) connect_result_(false);
    });
  }
  std::string msg = why ? fmt::format("connection to {} lost: {}", addr_.toString(), why.message())
                        : fmt::format("connection to {} closed", addr_.toString());
  failAll(msg);
  loop_.deferDelete(std::move(conn_));
}

void Client::failAll(const std::string& why) {
  // Calls whose bytes wholly left may have run: ConnectionError. The rest never reached the
  // peer: not-sent (safe to retry elsewhere).
  uint64_t written = conn_ ? conn_->out().written() : 0;
  auto pending = std::move(slots_);
  slots_.clear();
  free_slots_.clear();
  in_flight_ = 0;
  std::string().swap(unsent_);
  deadlines_.clear();
  timer_.stop();
  for (Slot& s : pending) {
    if (!s.used) continue;
    Pending& pc = s.p;
    Response r;
    bool sent = pc.queued && pc.end <= written;
    r.status = sent ? Response::Status::kConnection : Response::Status::kNotSent;
    r.message = sent ? why : why + " (request not sent)";
    pc.done(r);
  }
}

void Client::finish(uint32_t id, Response& r) {
  Pending* pc = findPending(id);
  if (!pc) {
    ++late_replies_;  // timed out already, or an id we never used
    return;
  }
  ResponseFn done = std::move(pc->done);
  erasePending(id);
  done(r);
}

void Client::answerRequest(core::FunctionRef<void(Packer&)> msgid) {
  Packer p(conn_->out());  // we serve no methods
  p.array(4);
  p.uinteger(1);
  msgid(p);
  p.array(2);
  p.str(kindName(Kind::kNoMethod));
  p.str("this peer is a client and serves no methods");
  p.nil();
  conn_->sent();
}

void Client::onRawData(size_t n) {
  raw_in_.commit(n);
  std::weak_ptr<bool> alive = alive_;
  core::Connection* conn = conn_.get();
  while (!conn->closed() && raw_scanned_ < raw_in_.size()) {
    auto r = raw_in_.readable();
    raw_scanned_ += raw_scan_->feedOne(r.data() + raw_scanned_, r.size() - raw_scanned_);
    if (raw_scan_->failed()) {
      log::warn("client {}: {}", addr_.toString(), raw_scan_->error());
      return conn->close(core::Errc::kProtocol);
    }
    if (!raw_scan_->atBoundary()) return;  // the rest of the message is still to come
    size_t len = std::exchange(raw_scanned_, 0);
    bool ok = onRawMessage(r.substr(0, len));
    if (alive.expired()) return;  // a callback destroyed this client
    if (!ok) return;
    raw_in_.consume(len);
  }
}

bool Client::onRawMessage(std::string_view m) {
  // Scanned already: a whole array within the limits. [1, msgid, error, result] is read in
  // place; anything else is decoded.
  auto u = [&](size_t i) { return static_cast<unsigned char>(m[i]); };
  if (m.size() >= 3 && u(0) == 0x94 && u(1) == 0x01) {
    size_t id_len;
    auto id = readUint(m.data() + 2, m.size() - 2, id_len);
    if (!id || *id > UINT32_MAX) {  // not a msgid of ours
      ++late_replies_;
      return true;
    }
    // A whole four-item array was scanned: the error item and the result lie whole in m.
    size_t err_at = 2 + id_len;
    size_t err_len = itemLength(m.data() + err_at, m.size() - err_at);
    Response r;
    std::optional<Value> err;
    if (u(err_at) == 0xc0) {
      r.status = Response::Status::kOk;
      r.raw_result = m.substr(err_at + err_len);
    } else {
      r.status = Response::Status::kError;
      err = Value::fromBytes(m.substr(err_at, err_len));
      if (err) r.error = err->view();
    }
    finish(static_cast<uint32_t>(*id), r);
    return true;
  }
  auto v = Value::fromBytes(m);
  Object msg = v ? v->view() : Object();
  auto type = msg.isArray() && msg.size() >= 3 ? msg[0].asUint() : std::nullopt;
  if (type == 0u && msg.size() == 4) {
    answerRequest([&](Packer& p) { p.object(msg[1]); });
    return true;
  }
  if (type == 2u && msg.size() == 3) return true;  // notifications to a client are ignored
  log::warn("client {}: malformed message", addr_.toString());
  conn_->close(core::Errc::kProtocol);
  return false;
}

void Client::onData(size_t n) {
  got_bytes_ = true;
  if (!dec_) return onRawData(n);
  dec_->feed(n);
  std::weak_ptr<bool> alive = alive_;
  Decoder* dec = dec_.get();
  core::Connection* conn = conn_.get();
  while (!conn->closed()) {
    Object msg;
    auto st = dec->next(msg);
    if (st == Decoder::Status::kNeedMore) return;
    if (st == Decoder::Status::kError) {
      log::warn("client {}: {}", addr_.toString(), dec->error());
      return conn->close(core::Errc::kProtocol);
    }
    auto type = msg.isArray() && msg.size() >= 3 ? msg[0].asUint() : std::nullopt;
    if (type == 1u && msg.size() == 4) {
      auto id = msg[1].asUint();
      if (!id || *id > UINT32_MAX) {
        ++late_replies_;
        continue;
      }
      Response r;
      r.status = msg[2].isNil() ? Response::Status::kOk : Response::Status::kError;
      r.result = msg[3];
      r.error = msg[2];
      r.release_zone = [dec] { return dec->releaseZone(); };
      finish(static_cast<uint32_t>(*id), r);
      if (alive.expired()) return;  // a callback destroyed this client
    } else if (type == 0u && msg.size() == 4) {
      answerRequest([&](Packer& p) { p.object(msg[1]); });
    } else if (type == 2u && msg.size() == 3) {
      // notifications to a client are ignored
    } else {
      log::warn("client {}: malformed message", addr_.toString());
      return conn->close(core::Errc::kProtocol);
    }
  }
}

void Client::armTimer() {
  if (deadlines_.empty()) {
    timer_.stop();
    return;
  }
  timer_.start(std::max(0.0, deadlines_.front().at - loop_.now()));
}

void Client::onTimer(int) noexcept {
  double now = loop_.now();
  std::weak_ptr<bool> alive = alive_;
  while (!deadlines_.empty() && deadlines_.front().at <= now + 1e-6) {
    Deadline d = deadlines_.front();
    deadlines_.pop_front();
    Pending* pc = findPending(d.id);
    if (!pc || pc->seq != d.seq) continue;  // answered already
    ResponseFn done = std::move(pc->done);
    erasePending(d.id);
    Response r;
    r.status = Response::Status::kTimeout;
    r.message = fmt::format("no reply from {} in time", addr_.toString());
    done(r);
    if (alive.expired()) return;
  }
  armTimer();
}

ClientPool::ClientPool(core::Loop& loop, ClientOptions opts, double idle_close)
    : loop_(loop), opts_(opts), idle_close_(idle_close) {
  sweep_.bind<&ClientPool::onSweep>(loop, this);
  sweep_.keepLoopAlive(false);  // the sweep alone does not keep the loop running
  sweep_.start(idle_close / 2, idle_close / 2);
}

ClientPool::~ClientPool() { sweep_.stop(); }

Client& ClientPool::get(const core::Address& addr) {
  auto& c = clients_[addr.toString()];
  if (!c) c = std::make_unique<Client>(loop_, addr, opts_);
  return *c;
}

Client& ClientPool::get(std::string_view spec) { return get(parseOrThrow(spec)); }

void ClientPool::onSweep(int) noexcept {
  double now = loop_.now();
  for (auto& [k, c] : clients_)
    if (c->connected() && c->inFlight() == 0 && now - c->lastUsed() >= idle_close_) c->close();
}

SyncClient::SyncClient(std::string_view spec, ClientOptions opts)
    : loop_(std::make_unique<core::Loop>()),
      client_(std::make_unique<Client>(*loop_, spec, opts)) {}

SyncClient::~SyncClient() {
  client_.reset();
  loop_->runOnce();  // let deferred deletes run
}

Value SyncClient::wait(core::Future<Value> f) {
  while (!f.done()) loop_->runOnce();
  return std::move(f.get());
}

void SyncClient::flush() {
  // A notification has no reply: a \0stats round trip proves it went out in order before it.
  // Any reply will do (an older server answers NoMethodError); only a lost connection counts.
  try {
    wait(client_->call("\0stats"));
  } catch (const RpcError& e) {
    if (e.kind() == Kind::kConnection || e.kind() == Kind::kNotSent || e.kind() == Kind::kTimeout)
      throw;
  }
}

}  // namespace aiorpc::rpc
