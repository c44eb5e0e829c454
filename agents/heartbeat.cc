// Heartbeat sender.
#include "aiorpc/agents/heartbeat.h"

#include "aiorpc/core/log.h"

namespace aiorpc::agents {

namespace {
// heartbeat/unregister params: [name, nil, port], or with a token the map form that can carry
// it (SPEC §5: a token-protected registry refuses array-form writes).
void packParams(rpc::Packer& p, const HeartbeatOptions& o) {
  if (o.token.empty()) {
    p.pack(std::tuple{o.service, nullptr, o.port});
    return;
  }
  p.map(4);
  p.str("name"), p.str(o.service);
  p.str("host"), p.nil();
  p.str("port"), p.integer(o.port);
  p.str("__auth__"), p.str(o.token);
}

rpc::ClientOptions clientOptions(double interval, std::shared_ptr<core::TlsContext> tls) {
  rpc::ClientOptions o;
  o.tls = std::move(tls);
  o.timeout = std::max(2.0, interval * 2);
  o.connect_timeout = std::max(1.0, interval);
  o.dead_after = 1 << 30;  // keep trying: the keepalive may come back at any time
  return o;
}
}  // namespace

Heartbeat::Heartbeat(core::Loop& loop, HeartbeatOptions opts)
    : loop_(loop), opts_(std::move(opts)) {
  for (const auto& k : opts_.keepalives) {
    auto t = std::make_unique<Target>();
    t->keepalive = k;
    t->client = std::make_unique<rpc::Client>(loop, k, clientOptions(opts_.interval, opts_.tls));
    targets_.push_back(std::move(t));
  }
  for (auto& t : targets_) beat(*t);
}

// The clients go with their targets and drop their callbacks unrun; the timers go with
// tasks_ (STYLE rule 8).
Heartbeat::~Heartbeat() = default;

void Heartbeat::beat(Target& t) {
  t.timer = 0;
  if (stopping_) return;
  t.client->send(
      "heartbeat", [this](rpc::Packer& p) { packParams(p, opts_); },
      [this, &t](rpc::Response& r) {
        ++sent_;
        if (!r.ok()) {
          ++failed_;
          if (t.log.admit(loop_.now())) {
            uint64_t held = t.log.held();
            core::log::warn(
                "heartbeat to {} failed: {}{}", t.keepalive.toString(),
                r.message.empty() ? r.error.toText() : r.message,
                held ? fmt::format(" ({} more since the last line)", held) : std::string());
          }
        }
        if (stopping_) return;  // stop() has unregistered
        t.timer = tasks_.after(opts_.interval, [this, &t] { beat(t); });
      });
}

void Heartbeat::stop(core::Callback<void()> done) {
  stopping_ = true;
  done_ = std::move(done);
  left_ = targets_.size();
  // Every schedule first, so that no heartbeat follows an unregister.
  for (auto& t : targets_) {
    loop_.cancel(t->timer);
    t->timer = 0;
  }
  if (targets_.empty()) {
    tasks_.post([this] { unregistered(); });
    return;
  }
  // Every keepalive at once, a heartbeat in flight or not: the unregister follows it on the
  // same connection, and a keepalive handles one connection's requests in order, so no late
  // heartbeat brings the record back; a keepalive that never answers costs kUnregisterTimeout.
  for (auto& t : targets_) unregister(*t);
}

void Heartbeat::unregister(Target& t) {
  if (t.unregistered) return;
  t.unregistered = true;
  t.client->send(
      "unregister", [this](rpc::Packer& p) { packParams(p, opts_); },
      [this](rpc::Response&) { unregistered(); }, kUnregisterTimeout);
}

void Heartbeat::unregistered() {
  if (left_ > 0) --left_;
  if (left_ == 0 && done_) {
    auto d = std::move(done_);
    d();
  }
}

}  // namespace aiorpc::agents
