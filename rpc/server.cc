// Server: sessions, dispatch, control commands, drain.
#include "aiorpc/rpc/server.h"

#include <fmt/format.h>

#include "aiorpc/core/connection.h"
#include "aiorpc/core/log.h"
#include "aiorpc/core/platform.h"

namespace aiorpc::rpc {

namespace log = core::log;

// Owns the sessions by id; Responders reach them through a weak_ptr to it.
class Server::Hub final : public ReplyHub {
 public:
  explicit Hub(Server* s) : server(s) {}
  core::OutQueue* beginReply(uint64_t session, Object msgid, void*& token) override;
  void endReply(void* token, bool error) override;
  void dropped(uint64_t) override {
    ++server->stats_.dropped_replies;
    --server->stats_.in_flight;
  }
  void countError(Kind k) override { ++server->stats_.errors[static_cast<size_t>(k)]; }
  size_t outputBytes(uint64_t session) const override;

  Server* server;
  std::unordered_map<uint64_t, std::unique_ptr<Session>> sessions;
};

class Server::Session final : public core::ConnectionHandler {
 public:
  Session(Server& srv, uint64_t id, core::Fd fd)
      : srv_(srv), id_(id), owner_(srv.loop_.newOwner()), conn_(srv.loop_, std::move(fd), this) {
    conn_.setWaterMarks(srv.opts_.high_water, srv.opts_.low_water);
    conn_.setOutputLimit(srv.opts_.max_output);
  }
  ~Session() { srv_.loop_.cancel(drain_timer_); }

  std::span<char> readBuffer() override {
    if (!dec_) dec_ = std::make_unique<Decoder>(srv_.opts_.limits);
    active_ = true;
    auto span = dec_->buffer(read_size_);
    offered_ = span.size();
    return span;
  }
  void onData(size_t n) override {
    // Adapt the read size: a read that filled the buffer means more is waiting (fewer, larger
    // reads under load); small reads shrink it back (idle connections stay small).
    if (n == offered_ && read_size_ < kMaxRead)
      read_size_ *= 2;
    else if (n < read_size_ / 4 && read_size_ > kMinRead)
      read_size_ /= 2;
    srv_.stats_.bytes_in += n;
    dec_->feed(n);
    process();
  }
  void onEof(core::Connection&) override { finish(); }
  void onHighWater(core::Connection& c) override {
    throttled_ = true;
    c.pauseReading();
  }
  void onLowWater(core::Connection& c) override {
    throttled_ = false;
    if (!stopping_ && !full_) c.resumeReading();
    process();
  }
  void onClose(std::error_code why) override {
    if (why == std::errc::no_buffer_space) {
      ++srv_.stats_.output_limit_closes;
      log::warn(
          "connection {} closed: over {} bytes of replies unread (--max-output-buffer); "
          "{} owed replies dropped",
          conn_.peer().toString(), srv_.opts_.max_output, in_flight_);
    } else if (why) {
      log::debug("connection {} closed: {}", conn_.peer().toString(), why.message());
    }
    srv_.closed(this);
  }

  // Stop reading; close once every owed reply is written (at most drain_timeout from now).
  void finish() {
    if (conn_.closed()) return;
    if (!stopping_) {
      stopping_ = true;
      conn_.pauseReading();
      drain_timer_ = srv_.loop_.after(srv_.opts_.drain_timeout, [this] {
        drain_timer_ = 0;
        conn_.close(core::Errc::kTimedOut);
      });
    }
    if (in_flight_ == 0) conn_.closeAfterFlush();
  }

  // The server drains (SPEC §7): a connection with nothing owed closes now; one with replies
  // owed keeps reading and answers what still arrives with ServiceUnavailable ("draining": it
  // did not run, a proxy sends it elsewhere), then closes once its owed replies are written.
  void drain() {
    draining_ = true;
    if (conn_.closed()) return;
    process();  // what is buffered already is answered too
    if (!conn_.closed() && in_flight_ == 0) finish();
  }
  void process();
  void resumeLater();  // process() again from the loop, reading resumed if allowed
  void handle(Object msg);
  void request(Object msgid, Object method, Object params, bool notify);
  void control(std::string_view cmd, Object msgid, Object params);
  void protocolError(const std::string& why) {
    ++srv_.stats_.protocol_errors;
    log::warn("protocol error from {}: {}; closing after owed replies", conn_.peer().toString(),
              why);
    finish();
  }

  Server& srv_;
  uint64_t id_;
  core::Loop::Owner owner_;  // sleeps its handlers start end when it closes
  // Created on the first read, freed by the server's sweep once the connection has been quiet
  // with nothing buffered (an unpacker holds ~24 KiB: its buffer and an 8 KiB zone chunk).
  std::unique_ptr<Decoder> dec_;
  bool active_ = true;
  core::Connection conn_;
  static constexpr size_t kMinRead = 16 * 1024, kMaxRead = 256 * 1024;
  size_t read_size_ = kMinRead, offered_ = 0;
  size_t in_flight_ = 0;
  bool stopping_ = false, throttled_ = false, scheduled_ = false;
  bool full_ = false;      // max_pending requests in progress: not reading until one finishes
  bool draining_ = false;  // the server's drain, kept here: one load on the request path
  core::Loop::TimerId drain_timer_ = 0;
};

namespace {

// Writes "[1, msgid, " for a reply.
[[gnu::always_inline]] inline void replyHead(Packer& p, Object msgid) {
  p.array(4);
  p.uinteger(1);
  if (msgid.type() == MSGPACK_OBJECT_POSITIVE_INTEGER) {
    p.uinteger(msgid.raw().via.u64);  // the usual msgid, without the generic walk
  } else {
    p.object(msgid);
  }
}

}  // namespace

class Server::SessionInvocation final : public Invocation {
 public:
  SessionInvocation(Server::Session& s, Object msgid, bool notify)
      : s_(s), msgid_(msgid), notify_(notify) {}

  void replyValue(core::FunctionRef<void(Packer&)> write) override {
    if (answered_ || notify_) return void(answered_ = true);
    answered_ = true;
    Packer p(s_.conn_.out());
    replyHead(p, msgid_);
    p.nil();
    write(p);
    s_.conn_.sent();
  }
  void replyError(Kind k, std::string_view message) override;
  void replyErrorObject(Object error) override;
  Responder detach() override;
  bool answered() const noexcept { return answered_; }

 private:
  Server::Session& s_;
  Object msgid_;
  bool notify_, answered_ = false;
};

core::OutQueue* Server::Hub::beginReply(uint64_t session, Object msgid, void*& token) {
  auto it = sessions.find(session);
  if (it == sessions.end() || it->second->conn_.closed()) return nullptr;
  token = it->second.get();
  auto& out = it->second->conn_.out();
  Packer p(out);
  replyHead(p, msgid);
  return &out;
}

size_t Server::Hub::outputBytes(uint64_t session) const {
  auto it = sessions.find(session);
  return it == sessions.end() || it->second->conn_.closed() ? 0 : it->second->conn_.pendingBytes();
}

void Server::Hub::endReply(void* token, bool) {
  --server->stats_.in_flight;
  Session& s = *static_cast<Session*>(token);
  s.conn_.sent();
  --s.in_flight_;
  if (s.full_ && s.in_flight_ < server->opts_.max_pending) {
    s.full_ = false;  // room again: read on, from the loop (we may be inside a handler here)
    s.resumeLater();
  }
  if (s.in_flight_ == 0 && (s.stopping_ || s.draining_)) s.finish();
}

void Server::SessionInvocation::replyError(Kind k, std::string_view message) {
  if (answered_) return;
  answered_ = true;
  if (notify_) {
    log::debug("notification failed: {}: {}", kindName(k), message);
    return;
  }
  ++s_.srv_.stats_.errors[static_cast<size_t>(k)];
  Packer p(s_.conn_.out());
  replyHead(p, msgid_);
  packError(p, k, message);
  p.nil();
  s_.conn_.sent();
}

void Server::SessionInvocation::replyErrorObject(Object error) {
  if (answered_) return;
  answered_ = true;
  if (notify_) return;
  ++s_.srv_.stats_.errors[static_cast<size_t>(countedKind(error))];
  Packer p(s_.conn_.out());
  replyHead(p, msgid_);
  p.object(error);
  p.nil();
  s_.conn_.sent();
}

Responder Server::SessionInvocation::detach() {
  if (answered_) return Responder();
  answered_ = true;
  msgpack_zone* zone = s_.dec_->releaseZone();
  if (notify_) return Responder({}, 0, msgid_, zone, false);
  ++s_.in_flight_;
  ++s_.srv_.stats_.in_flight;
  if (s_.in_flight_ >= s_.srv_.opts_.max_pending && !s_.full_) {
    // Bound what one connection can make us hold (SPEC-less; HTTP/2's concurrent streams):
    // stop reading it until a request in progress finishes.
    s_.full_ = true;
    s_.conn_.pauseReading();
  }
  return Responder(s_.srv_.hub_, s_.id_, msgid_, zone);
}

void Server::Session::process() {
  int budget = srv_.opts_.max_messages_per_read;
  while (!conn_.closed() && !throttled_ && !full_ && dec_) {
    Object msg;
    auto st = dec_->next(msg);
    if (st == Decoder::Status::kNeedMore) return;
    if (st == Decoder::Status::kError) return protocolError(dec_->error());
    handle(msg);
    if (stopping_ && !conn_.eof()) return;  // a protocol error: nothing after it is read
    if (draining_ && in_flight_ == 0 && dec_->pending() == 0) [[unlikely]]
      return finish();
    if (--budget == 0 && !scheduled_) {
      // Let other connections run; continue with what is buffered on the next iteration.
      conn_.pauseReading();
      return resumeLater();
    }
  }
}

void Server::Session::resumeLater() {
  if (scheduled_) return;
  scheduled_ = true;
  std::weak_ptr<Hub> hub = srv_.hub_;
  uint64_t id = id_;
  srv_.loop_.post([hub, id] {
    auto h = hub.lock();
    if (!h) return;
    auto it = h->sessions.find(id);
    if (it == h->sessions.end()) return;
    Session& s = *it->second;
    s.scheduled_ = false;
    if (!s.stopping_ && !s.throttled_ && !s.full_) s.conn_.resumeReading();
    s.process();
  });
}

void Server::Session::handle(Object msg) {
  if (!msg.isArray() || (msg.size() != 3 && msg.size() != 4))
    return protocolError("message is not a 3- or 4-element array");
  auto type = msg[0].asUint();
  if (type == 0u && msg.size() == 4) {
    ++srv_.stats_.requests;
    return request(msg[1], msg[2], msg[3], false);
  }
  if (type == 2u && msg.size() == 3) {
    ++srv_.stats_.notifications;
    return request(Object(), msg[1], msg[2], true);
  }
  if (type == 1u) return protocolError("a response was sent to a server");
  protocolError("unknown message type " + msg[0].toText(40));
}

void Server::Session::request(Object msgid, Object method, Object params, bool notify) {
  SessionInvocation inv(*this, msgid, notify);
  if (!method.isStrOrBin()) {
    inv.replyError(Kind::kNoMethod,
                   std::string("method name must be a string, got ") + method.typeName());
    return;
  }
  std::string_view name = method.str();
  if (!name.empty() && name[0] == '\0') {
    if (notify) return;
    return control(name.substr(1), msgid, params);
  }
  if (draining_) [[unlikely]] {
    if (!notify) inv.replyError(Kind::kServiceUnavailable, "draining");
    return;  // it did not run
  }
  const MethodInfo* m = srv_.service_.find(name);
  if (!m) {
    inv.replyError(Kind::kNoMethod, "no method " + method.toText(100));
    return;
  }
  inv.params = params;
  core::Loop::OwnerScope scope(srv_.loop_, owner_);
  if (!m->context_name.empty() || srv_.service_.guard()) {
    Context ctx(params, conn_.peer(), conn_.local());
    if (const auto& guard = srv_.service_.guard()) {
      if (auto denied = guard(name, ctx)) return inv.replyError(denied->first, denied->second);
    }
    inv.context = m->context_name.empty() ? nullptr : &ctx;
    dispatch(*m, inv);
  } else {
    dispatch(*m, inv);
  }
}

void Server::Session::control(std::string_view cmd, Object msgid, Object params) {
  SessionInvocation inv(*this, msgid, false);
  bool empty = params.isNil() || ((params.isArray() || params.isMap()) && params.size() == 0);
  if (cmd == "reflection" || cmd == "stats") {
    if (!empty) return inv.replyError(Kind::kArgument, std::string(cmd) + " takes no arguments");
    if (cmd == "reflection") {
      inv.replyValue([&](Packer& p) { srv_.packReflection(p); });
    } else {
      inv.replyValue([&](Packer& p) { srv_.packStats(p); });
    }
    return;
  }
  inv.replyError(Kind::kNoMethod, "no control command '" + std::string(cmd.substr(0, 100)) + "'");
}

Server::Server(core::Loop& loop, Service& service, ServerOptions opts)
    : loop_(loop), service_(service), opts_(opts), hub_(std::make_shared<Hub>(this)) {
  stats_.started = loop.now();
  sweep_.bind<&Server::onSweep>(loop, this);
  sweep_.keepLoopAlive(false);  // the sweep alone does not keep the loop running
  sweep_.start(kSweepEvery, kSweepEvery);
}

void Server::onSweep(int) noexcept {
  // O(connections) every few seconds: frees the decoder of every connection that read nothing
  // since the last sweep and holds no partial message.
  size_t freed = 0;
  std::vector<uint64_t> paused;
  for (auto& [id, s] : hub_->sessions) {
    if (s->conn_.readingPaused()) paused.push_back(id);
    if (!s->active_ && s->dec_ && !s->dec_->midMessage() && !s->scheduled_) {
      s->dec_.reset();
      ++freed;
    }
    s->active_ = false;
  }
  // A connection we do not read (at its limit of requests in progress, or over its high-water
  // mark) would never notice its peer's reset: look, so that what only it was waiting for ends.
  for (uint64_t id : paused) {
    auto it = hub_->sessions.find(id);
    if (it != hub_->sessions.end()) it->second->conn_.checkPeer();
  }
  // glibc keeps freed small chunks in the heap; hand the pages back after a big sweep.
  if (freed >= 64) core::platform::trimHeap();
}

Server::~Server() {
  sweep_.stop();
  loop_.cancel(drain_timer_);
  auto sessions = std::move(hub_->sessions);  // freed here, not deferred: the loop may be idle
  hub_->sessions.clear();
  for (auto& [id, s] : sessions) s->conn_.close();
}

core::Result<core::Address> Server::listen(std::string_view spec) {
  auto a = core::Address::parse(spec);
  if (!a) return a.error();
  return listen(*a);
}

core::Result<core::Address> Server::listen(const core::Address& addr) {
  auto l = std::make_unique<core::Listener>(loop_, [this](core::Fd fd, const core::Address& peer) {
    if (!opts_.allow.allows(peer)) return refuse(peer);  // `fd` closes here
    accept(std::move(fd));
  });
  auto r = l->listen(addr);
  if (!r) return r;
  listeners_.push_back(std::move(l));
  bound_.push_back(*r);
  return r;
}

void Server::accept(core::Fd fd) {
  if (draining_) return;  // fd closes here
  uint64_t id = next_id_++;
  auto s = std::make_unique<Session>(*this, id, std::move(fd));
  hub_->sessions.emplace(id, std::move(s));
  ++stats_.connections_open;
  ++stats_.connections_total;
}

void Server::closed(Session* s) {
  auto it = hub_->sessions.find(s->id_);
  if (it == hub_->sessions.end()) return;
  --stats_.connections_open;  // replies still owed to it are counted as dropped later
  stats_.bytes_out += s->conn_.out().written();
  loop_.deferDelete(std::move(it->second));
  hub_->sessions.erase(it);
  for (auto& fn : close_hooks_) fn(s->id_);
  // What only this connection was waiting for ends now (from the loop: not inside its close).
  loop_.post([&loop = loop_, owner = s->owner_] { loop.cancelOwned(owner); });
  if (draining_) maybeDrained();
}

void Server::refuse(const core::Address& peer) {
  ++stats_.refused;
  if (!refused_log_.admit(loop_.now())) return;
  uint64_t held = refused_log_.held();
  log::warn(
      "refused connection from {} (not in --allow){}", peer.toString(),
      held > 0 ? fmt::format("; {} refused in all since the last line", held + 1) : std::string());
}

size_t Server::connectionCount() const noexcept { return hub_->sessions.size(); }

void Server::drain(core::Callback<void()> done) {
  if (draining_) return;
  draining_ = true;
  drained_ = std::move(done);
  for (auto& l : listeners_) l->stop();
  for (auto& fn : drain_hooks_) fn();
  std::vector<uint64_t> all;
  for (auto& [id, s] : hub_->sessions) all.push_back(id);
  for (uint64_t id : all) {  // by id: a session that closes erases itself from the map
    auto it = hub_->sessions.find(id);
    if (it != hub_->sessions.end()) it->second->drain();
  }
  drain_timer_ = loop_.after(opts_.drain_timeout + 0.1, [this] {
    drain_timer_ = 0;
    std::vector<Session*> left;
    for (auto& [id, s] : hub_->sessions) left.push_back(s.get());
    for (Session* s : left) s->conn_.close(core::Errc::kTimedOut);
    maybeDrained();
  });
  loop_.post([this] { maybeDrained(); });
}

void Server::maybeDrained() {
  if (!draining_ || !hub_->sessions.empty() || !drained_) return;
  loop_.cancel(drain_timer_);
  drain_timer_ = 0;
  auto done = std::move(drained_);
  done();
}

void Server::addStats(std::string key, std::function<void(Packer&)> fn) {
  extra_stats_.emplace_back(std::move(key), std::move(fn));
}

void Server::packStats(Packer& p) const {
  uint64_t bytes_out = stats_.bytes_out;
  for (auto& [id, s] : hub_->sessions) bytes_out += s->conn_.out().written();
  uint32_t nerr = 0;
  for (auto e : stats_.errors) nerr += e > 0;
  uint64_t buffers = 0;
  for (auto& [id, s] : hub_->sessions) buffers += s->dec_ != nullptr;
  // The fields are packed apart and counted as they go: the map's size is never kept by hand.
  std::string body;
  Packer b(body);
  uint32_t n = 0;
  auto key = [&](std::string_view k) -> Packer& {
    ++n;
    b.str(k);
    return b;
  };
  key("connections_open").uinteger(stats_.connections_open);
  key("connections_total").uinteger(stats_.connections_total);
  key("requests").uinteger(stats_.requests);
  key("notifications").uinteger(stats_.notifications);
  key("errors").map(nerr);
  for (int k = 0; k < kKindCount; ++k) {
    if (!stats_.errors[k]) continue;
    b.str(kindName(static_cast<Kind>(k)));
    b.uinteger(stats_.errors[k]);
  }
  key("bytes_in").uinteger(stats_.bytes_in);
  key("bytes_out").uinteger(bytes_out);
  key("in_flight").uinteger(stats_.in_flight);
  key("uptime_s").real(loop_.now() - stats_.started);
  key("input_buffers").uinteger(buffers);   // (ext) connections holding a decoder
  key("refused").uinteger(stats_.refused);  // (ext) peers outside the allow-list
  key("output_limit_closes").uinteger(stats_.output_limit_closes);  // (ext)
  for (auto& [k, fn] : extra_stats_) fn(key(k));
  p.map(n);
  p.raw(body);
}

void Server::packReflection(Packer& p) const {
  p.map(1);
  p.str("methods");
  p.map(static_cast<uint32_t>(service_.methods().size()));
  for (auto& [name, m] : service_.methods()) {
    p.str(name);
    if (m.variadic) {
      p.array(static_cast<uint32_t>(2 + !m.context_name.empty()));
      if (!m.context_name.empty()) p.str(m.context_name);
      p.str("args");
      p.str("kwargs");
      continue;
    }
    p.array(static_cast<uint32_t>(m.params.size() + !m.context_name.empty()));
    if (!m.context_name.empty()) p.str(m.context_name);
    for (auto& a : m.params) {
      if (!a.def) {
        p.str(a.name);
        continue;
      }
      p.map(2);
      p.str("name"), p.str(a.name);
      p.str("default"), p.object(a.def->view());
    }
  }
}

}  // namespace aiorpc::rpc
