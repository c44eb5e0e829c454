// Endpoint: the connection's life (attach, orphan, dispose), its input (framing and the one
// classification of a message) and its closing. Serving is in endpoint_serve.cc, our calls in
// endpoint_call.cc.
#include "aiorpc/rpc/endpoint.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "aiorpc/core/log.h"
#include "aiorpc/rpc/service.h"

namespace aiorpc::rpc {

namespace log = core::log;

Endpoint::Endpoint(core::Loop& loop, const EndpointOptions& opts, Service* service, Owner& owner,
                   const std::shared_ptr<Peers>& peers, uint64_t id, core::Address remote)
    : loop_(loop),
      opts_(opts),
      service_(service),
      owner_(owner),
      peers_(peers),
      peers_raw_(peers.get()),
      counters_(peers->counters),
      id_(id),
      remote_(remote),
      named_(remote.length() != 0),
      sleeps_(loop.newOwner()) {
  timer_.bind<&Endpoint::onTimer>(loop, this);
}

Endpoint::~Endpoint() { orphan(); }

void Endpoint::orphan() noexcept {
  if (phase_ == Phase::kGone) return;
  phase_ = Phase::kGone;  // closing below reaches onClose, which then does nothing
  live_.markGone();
  loop_.cancel(drain_timer_);
  drain_timer_ = 0;
  // What only this connection was waiting for ends (its waiters resume from the loop).
  loop_.cancelOwned(sleeps_);
  takeCalls();  // dropped here: their callbacks destroyed, never called
  if (conn_) conn_->close();
}

void Endpoint::dispose(std::unique_ptr<Endpoint> e) noexcept {
  if (!e) return;
  bool busy = e->live_.busy();
  e->orphan();
  if (!busy) return;  // freed here
  core::Loop& loop = e->loop_;
  loop.deferDelete(std::move(e));  // code on the stack still holds it: freed once unwound
}

const core::Address& Endpoint::peer() const noexcept {
  static const core::Address none;
  return conn_ ? conn_->peer() : none;
}

const core::Address& Endpoint::local() const noexcept {
  static const core::Address none;
  return conn_ ? conn_->local() : none;
}

void Endpoint::attach(core::Fd fd, const std::shared_ptr<core::TlsContext>& tls,
                      std::string_view verify_host) {
  conn_.emplace(loop_, std::move(fd), this);
  if (tls) {
    try {
      conn_->startTls(tls, verify_host);
    } catch (...) {
      conn_.reset();  // never a plaintext connection where TLS was asked for (no upcall)
      throw;
    }
  }
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
  counters_.bytes_in += n;
  read_ += n;
  if (opts_.metrics) read_at_ = loop_.now();  // when these requests came (SPEC §9)
  if (opts_.frames) {
    dec_->feedFrames(n);
  } else {
    dec_->feed(n);
  }
  process();
}

[[gnu::always_inline]] inline bool Endpoint::goOn(int& budget) {
  if (finishing() && !conn_->eof()) return false;  // a protocol error: nothing after it is read
  if (--budget == 0 && !(posted_ & kResume)) {
    // Let other connections run; continue with what is buffered on the next iteration.
    conn_->pauseReading();
    resumeLater();
    return false;
  }
  return true;
}

void Endpoint::process() {
  if (!conn_ || phase_ == Phase::kGone) return;
  core::Liveness::Watch w(live_);  // a handler or a callback may destroy our owner
  held_ = dec_ != nullptr;         // until the decoder runs dry (caughtUp)
  if (opts_.frames) return processFrames(w);
  int budget = opts_.max_messages_per_read;
  while (!conn_->closed() && !paused_ && dec_) {
    Object msg;
    auto st = dec_->next(msg);
    if (st == Decoder::Status::kNeedMore) return caughtUp();
    if (st == Decoder::Status::kError) return protocolError(dec_->error());
    handle(msg);
    if (w.gone()) return;
    if (!goOn(budget)) return;
  }
}

void Endpoint::processFrames(core::Liveness::Watch& w) {
  int budget = opts_.max_messages_per_read;
  while (!conn_->closed() && !paused_ && dec_) {
    std::string_view frame;
    auto st = dec_->nextFrame(frame);
    if (st == Decoder::Status::kNeedMore) return caughtUp();
    if (st == Decoder::Status::kError) return protocolError(dec_->error());
    bool taken = rawReply(frame) || rawRequest(frame);
    if (w.gone()) return;
    if (!taken) {
      Object msg;
      if (!dec_->decodeFrame(msg)) return protocolError(dec_->error());
      handle(msg);
      if (w.gone()) return;
    }
    if (!goOn(budget)) return;
  }
}

void Endpoint::caughtUp() {
  held_ = false;
  if (draining() && in_flight_ == 0) finish();  // (a partial request is not one received)
}

void Endpoint::resumeLater() {
  if (posted_ & kResume) return;
  posted_ |= kResume;
  later<&Endpoint::resumed>();
}

void Endpoint::resumed() {
  posted_ &= ~kResume;
  if (!open()) return;
  if (!finishing() && !paused_) conn_->resumeReading();
  process();
}

void Endpoint::handle(Object msg) {
  if (!msg.isArray() || (msg.size() != 3 && msg.size() != 4))
    return protocolError("message is not a 3- or 4-element array");
  auto type = msg[0].asUint();
  if (type == 0u && msg.size() == 4) {
    ++counters_.requests;
    return serve(msg[1], msg[2], msg[3], false);
  }
  if (type == 2u && msg.size() == 3) {
    ++counters_.notifications;
    return serve(Object(), msg[1], msg[2], true);
  }
  if (type == 1u && msg.size() == 4) {
    auto id = msg[1].asUint();
    Response r;
    r.type = msg[2].isNil() ? Ended::kResult : Ended::kPeerError;
    r.result = msg[3];
    r.error = msg[2];
    Decoder* dec = dec_.get();
    r.release_zone = [dec] { return dec->releaseZone(); };
    return completeCall(id.value_or(UINT64_MAX), r);
  }
  protocolError("unknown message type " + msg[0].toText(40) + " of " + std::to_string(msg.size()) +
                " items");
}

bool Endpoint::rawReply(std::string_view m) {
  // Framed already: a whole array within the limits. [1, msgid, nil, result] is read in place.
  auto u = [&](size_t i) { return static_cast<unsigned char>(m[i]); };
  if (m.size() < 4 || u(0) != 0x94 || u(1) != 0x01) return false;
  size_t id_len = 0;
  auto id = readUint(m.data() + 2, m.size() - 2, id_len);
  if (!id || 2 + id_len >= m.size()) return false;
  Response r;
  if (u(2 + id_len) == 0xc0) {
    r.raw_result = m.substr(3 + id_len);
  } else {
    // [1, msgid, error, nil]: the error as the peer encoded it (its item must end right before
    // the nil result; anything else takes the decoded path and its checks).
    std::string_view err = m.substr(2 + id_len, m.size() - 3 - id_len);
    if (u(m.size() - 1) != 0xc0 || itemLength(err.data(), err.size()) != err.size()) return false;
    r.type = Ended::kPeerError;
    r.raw_error = err;
  }
  completeCall(*id, r);
  return true;
}

void Endpoint::protocolError(const std::string& why) {
  ++counters_.protocol_errors;
  // Peers choose how often this happens: a line per second at most (per thread: one loop's),
  // the rest counted in the next line and in \0stats.
  thread_local log::Throttle throttle{1};
  if (throttle.admit(loop_.now())) {
    uint64_t held = throttle.held();
    log::warn("protocol error from {}: {}; closing after owed replies{}", remote_.toString(), why,
              held ? fmt::format(" ({} more since the last line)", held) : std::string());
  }
  finish();
}

void Endpoint::onOverLimit(core::Connection&) {
  // What was not written of our calls fails as not-sent (and may go elsewhere).
  if (posted_ & kCloseOverLimit) return;
  posted_ |= kCloseOverLimit;
  later<&Endpoint::closeOverLimit>();
}

void Endpoint::closeOverLimit() {
  posted_ &= ~kCloseOverLimit;
  if (!open() || conn_->pendingBytes() <= opts_.max_output) return;
  ++counters_.output_limit_closes;
  conn_->close(core::sysError(ENOBUFS));
}

// ---- Closing ----

void Endpoint::onHighWater(core::Connection& c) {
  if (!service_) return;  // only replies pile up for a peer we serve; ours never stop its replies
  paused_ |= kOverHighWater;
  c.pauseReading();
}

void Endpoint::onLowWater(core::Connection& c) {
  if (!(paused_ & kOverHighWater)) return;
  paused_ &= ~kOverHighWater;
  if (!finishing() && !paused_) c.resumeReading();
  process();
}

void Endpoint::finish() {
  if (!open()) return;
  if (!finishing()) {
    phase_ = Phase::kFinishing;
    conn_->pauseReading();
    drain_timer_ = loop_.after(opts_.drain_timeout, [this] {
      drain_timer_ = 0;
      conn_->close(core::Errc::kTimedOut);
    });
  }
  if (in_flight_ == 0) conn_->closeAfterFlush();
}

void Endpoint::drain() {
  drain_mark_ = read_;
  if (!open()) return;
  // What is buffered already is answered as usual, also what waits for a slow reader (held_:
  // the low-water upcall goes on with it); the close comes once nothing is owed.
  process();
  if (open() && in_flight_ == 0 && !held_) finish();
}

void Endpoint::close(std::error_code why) {
  if (open()) conn_->close(why);
}

bool Endpoint::sweep() {
  bool freed = false;
  if (!active_ && dec_ && !dec_->midMessage() && !(posted_ & kResume)) {
    dec_.reset();
    freed = true;
  }
  active_ = false;
  return freed;
}

void Endpoint::onClose(std::error_code why) {
  if (phase_ == Phase::kGone) return;
  loop_.cancel(drain_timer_);
  drain_timer_ = 0;
  if (why == std::errc::no_buffer_space) {
    log::warn(
        "connection {} closed: over {} bytes queued unread by the peer; {} owed replies dropped",
        remote_.toString(), opts_.max_output, in_flight_);
  } else if (why) {
    log::debug("connection {} closed: {}", remote_.toString(), why.message());
  }
  // What only this connection was waiting for ends now (from the loop: not inside its close;
  // a sleep is owned by the loop until then, and by nobody once it is cancelled).
  loop_.post([&loop = loop_, o = sleeps_] { loop.cancelOwned(o); });
  // The calls fail from the loop: close() may have been called by the program (Client::close)
  // with a callback's state on its stack. They wait in the owner's table: dropped uncalled if
  // the owner goes first.
  if (calls_in_flight_ > 0)
    failCalls(conn_->out().written(),
              why ? fmt::format("connection to {} lost: {}", remote_.toString(), why.message())
                  : fmt::format("connection to {} closed", remote_.toString()));
  owner_.endpointClosed(*this, why);  // takes us out of its table; freed from the loop
}
}  // namespace aiorpc::rpc
