// Server: sessions, dispatch, control commands, drain.
#include "aiorpc/rpc/server.h"

#include <fmt/format.h>

#include "aiorpc/core/connection.h"
#include "aiorpc/core/log.h"
#include "aiorpc/core/platform.h"

namespace aiorpc::rpc {

namespace log = core::log;

void Server::control(std::string_view cmd, Object params, Invocation& inv) {
  bool empty = params.isNil() || ((params.isArray() || params.isMap()) && params.size() == 0);
  if (cmd == "reflection" || cmd == "stats") {
    if (!empty) return inv.replyError(Kind::kArgument, std::string(cmd) + " takes no arguments");
    if (cmd == "reflection") {
      inv.replyValue([&](Packer& p) { packReflection(p); });
    } else {
      inv.replyValue([&](Packer& p) { packStats(p); });
    }
    return;
  }
  Endpoint::Owner::control(cmd, params, inv);
}

namespace {
EndpointOptions endpointOptions(const ServerOptions& o, const Service& service) {
  EndpointOptions e;
  e.frames = service.hasRaw();  // requests offered as bytes first: read frame by frame
  e.limits = o.limits;
  e.drain_timeout = o.drain_timeout;
  e.high_water = o.high_water;
  e.low_water = o.low_water;
  e.max_output = o.max_output;
  e.max_messages_per_read = o.max_messages_per_read;
  e.max_pending = o.max_pending;
  return e;
}
}  // namespace

Server::Server(core::Loop& loop, Service& service, ServerOptions opts)
    : loop_(loop),
      service_(service),
      opts_(opts),
      eopts_(endpointOptions(opts, service)),
      peers_(std::make_shared<Peers>(loop, stats_)) {
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
  for (auto& [id, e] : peers_->map) {
    if (e->readingPaused()) paused.push_back(id);
    freed += e->sweep();
  }
  // A connection we do not read (at its limit of requests in progress, or over its high-water
  // mark) would never notice its peer's reset: look, so that what only it was waiting for ends.
  for (uint64_t id : paused)
    if (Endpoint* e = peers_->find(id)) e->checkPeer();
  // glibc keeps freed small chunks in the heap; hand the pages back after a big sweep.
  if (freed >= 64) core::platform::trimHeap();
}

Server::~Server() {
  live_.markGone();  // a hook or handler that destroyed us: its caller stops
  sweep_.stop();
  loop_.cancel(drain_timer_);
  // Connections closed and freed here (or, for one inside its own upcall, from the loop);
  // their pending calls and the sleeps of their handlers end (STYLE rule 8).
  peers_->clear();
}

core::Result<core::Address> Server::listen(std::string_view spec,
                                           std::shared_ptr<core::TlsContext> tls) {
  auto a = core::Address::parse(spec);
  if (!a) return a.error();
  return listen(*a, std::move(tls));
}

core::Result<core::Address> Server::listen(const core::Address& addr,
                                           std::shared_ptr<core::TlsContext> tls) {
  if (tls && tls->side() != core::TlsContext::Side::kServer)
    throw std::invalid_argument("Server::listen: a client-side TLS context");
  auto l = std::make_unique<core::Listener>(
      loop_, [this, tls = std::move(tls)](core::Fd fd, const core::Address& peer) {
        if (!opts_.allow.allows(peer)) return refuse(peer);  // `fd` closes here
        accept(std::move(fd), tls);
      });
  auto r = l->listen(addr);
  if (!r) return r;
  listeners_.push_back(std::move(l));
  bound_.push_back(*r);
  return r;
}

void Server::accept(core::Fd fd, const std::shared_ptr<core::TlsContext>& tls) {
  if (draining_) return;  // fd closes here
  uint64_t id = next_id_++;
  try {
    auto e = std::make_unique<Endpoint>(loop_, eopts_, &service_, static_cast<Owner&>(*this),
                                        peers_, id);
    e->attach(std::move(fd), tls);
    peers_->map.emplace(id, std::move(e));
  } catch (const std::bad_alloc&) {
    log::warn("out of memory accepting a connection: closed");  // this one; the others go on
    return;
  }
  ++stats_.connections_open;
  ++stats_.connections_total;
}

void Server::endpointClosed(Endpoint& e, std::error_code why) {
  if (e.handshakeFailed()) handshakeFailed(e, why);
  uint64_t id = e.id();
  auto owned = peers_->take(id);
  if (!owned) return;
  --stats_.connections_open;  // replies still owed to it are counted as dropped later
  stats_.bytes_out += e.bytesWritten();
  loop_.deferDelete(std::move(owned));
  core::Liveness::Watch w(live_);  // a hook may destroy this server
  for (auto& fn : close_hooks_) {
    fn(id);
    if (w.gone()) return;
  }
  if (draining_) maybeDrained();
}

namespace {
// "; N <what> in all since the last line" when `t` held lines back since its last one.
std::string inAllSinceLast(log::Throttle& t, std::string_view what) {
  uint64_t held = t.held();
  return held > 0 ? fmt::format("; {} {} in all since the last line", held + 1, what)
                  : std::string();
}
}  // namespace

void Server::refuse(const core::Address& peer) {
  ++stats_.refused;
  if (!refused_log_.admit(loop_.now())) return;
  log::warn("refused connection from {} (not in --allow){}", peer.toString(),
            inAllSinceLast(refused_log_, "refused"));
}

void Server::handshakeFailed(const Endpoint& e, std::error_code why) {
  ++stats_.tls_handshake_failures;
  if (!handshake_log_.admit(loop_.now())) return;
  log::warn("TLS handshake with {} failed: {}{}", e.peer().toString(),
            why ? why.message() : std::string("closed"), inAllSinceLast(handshake_log_, "failed"));
}

size_t Server::connectionCount() const noexcept { return peers_->map.size(); }

uint64_t Server::bytesOut() const noexcept {
  uint64_t n = stats_.bytes_out;  // closed connections'
  for (auto& [id, e] : peers_->map) n += e->bytesWritten();
  return n;
}

void Server::enableMetrics() {
  if (metrics_) return;
  metrics_ = std::make_unique<RequestMetrics>(loop_);
  eopts_.metrics = metrics_.get();
}

void Server::writeMetrics(core::MetricsText& out) {
  using T = core::MetricsText::Type;
  if (metrics_) metrics_->write(out, service_);
  uint64_t accept_errors = 0;
  for (const auto& l : listeners_) accept_errors += l->acceptErrors();
  out.gauge("aiorpc_connections", "Connections open.",
            static_cast<double>(stats_.connections_open));
  out.counter("aiorpc_connections_accepted_total", "Connections accepted.",
              stats_.connections_total);
  out.family("aiorpc_connections_refused_total", T::kCounter,
             "Connections closed at once: allow (outside --allow), tls (no TLS handshake), "
             "accept (accept failed: out of file descriptors and the like).");
  out.sample("aiorpc_connections_refused_total", {{"reason", "allow"}}, stats_.refused);
  out.sample("aiorpc_connections_refused_total", {{"reason", "tls"}},
             stats_.tls_handshake_failures);
  out.sample("aiorpc_connections_refused_total", {{"reason", "accept"}}, accept_errors);
  out.counter("aiorpc_protocol_errors_total", "Connections closed for a malformed message.",
              stats_.protocol_errors);
  out.counter("aiorpc_received_bytes_total", "Bytes read from peers.", stats_.bytes_in);
  out.counter("aiorpc_sent_bytes_total", "Bytes written to peers.", bytesOut());
}

void Server::drain(core::Callback<void()> done) {
  if (draining_) return;
  draining_ = true;
  drained_ = std::move(done);
  for (auto& l : listeners_) l->stop();
  core::Liveness::Watch w(live_);  // a hook or a handler may destroy this server
  for (auto& fn : drain_hooks_) {
    fn();
    if (w.gone()) return;
  }
  std::vector<uint64_t> all;
  for (auto& [id, e] : peers_->map) all.push_back(id);
  for (uint64_t id : all) {  // by id: a connection that closes erases itself from the map
    if (Endpoint* e = peers_->find(id)) e->drain();
    if (w.gone()) return;
  }
  drain_timer_ = loop_.after(opts_.drain_timeout + 0.1, [this] {
    drain_timer_ = 0;
    std::vector<uint64_t> left;
    for (auto& [id, e] : peers_->map) left.push_back(id);
    for (uint64_t id : left)
      if (Endpoint* e = peers_->find(id)) e->close(core::Errc::kTimedOut);
    maybeDrained();
  });
  tasks_.post([this] { maybeDrained(); });
}

void Server::maybeDrained() {
  if (!draining_ || !peers_->map.empty() || !drained_) return;
  loop_.cancel(drain_timer_);
  drain_timer_ = 0;
  auto done = std::move(drained_);
  done();
}

void Server::addStats(std::string key, std::function<void(Packer&)> fn) {
  extra_stats_.emplace_back(std::move(key), std::move(fn));
}

void Server::packStats(Packer& p) const {
  uint32_t nerr = 0;
  for (auto e : stats_.errors) nerr += e > 0;
  uint64_t buffers = 0;
  for (auto& [id, e] : peers_->map) buffers += e->holdsBuffer();
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
  key("bytes_out").uinteger(bytesOut());
  key("in_flight").uinteger(stats_.in_flight);
  key("uptime_s").real(loop_.now() - stats_.started);
  key("input_buffers").uinteger(buffers);   // (ext) connections holding a decoder
  key("refused").uinteger(stats_.refused);  // (ext) peers outside the allow-list
  key("output_limit_closes").uinteger(stats_.output_limit_closes);        // (ext)
  key("tls_handshake_failures").uinteger(stats_.tls_handshake_failures);  // (ext)
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
