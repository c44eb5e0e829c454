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

rpc::ClientOptions clientOptions(double interval) {
  rpc::ClientOptions o;
  o.timeout = std::max(2.0, interval * 2);
  o.connect_timeout = std::max(1.0, interval);
  o.dead_after = 1 << 30;  // keep trying: the keepalive may come back at any time
  return o;
}
}  // namespace

Heartbeat::Heartbeat(core::Loop& loop, HeartbeatOptions opts)
    : loop_(loop),
      opts_(std::move(opts)),
      client_(loop, opts_.keepalive, clientOptions(opts_.interval)) {
  beat();
}

Heartbeat::~Heartbeat() {
  *alive_ = false;
  loop_.cancel(timer_);
}

void Heartbeat::beat() {
  timer_ = 0;
  if (stopping_) return;
  std::weak_ptr<bool> alive = alive_;
  client_.send(
      "heartbeat", [this](rpc::Packer& p) { packParams(p, opts_); },
      [this, alive](rpc::Response& r) {
        if (alive.expired()) return;
        ++sent_;
        if (r.status != rpc::Response::Status::kOk) {
          ++failed_;
          if (loop_.now() - last_log_ >= 10) {
            last_log_ = loop_.now();
            core::log::warn("heartbeat to {} failed: {}", opts_.keepalive.toString(),
                            r.message.empty() ? r.error.toText() : r.message);
          }
        }
        if (!stopping_) timer_ = loop_.after(opts_.interval, [this] { beat(); });
      });
}

void Heartbeat::stop(core::Callback<void()> done) {
  stopping_ = true;
  loop_.cancel(timer_);
  timer_ = 0;
  auto shared = std::make_shared<core::Callback<void()>>(std::move(done));
  client_.send(
      "unregister", [this](rpc::Packer& p) { packParams(p, opts_); },
      [shared](rpc::Response&) {
        if (*shared) {
          auto d = std::move(*shared);
          d();
        }
      },
      2.0);
}

}  // namespace aiorpc::agents
