// Keepalive: heartbeat / get_services / unregister / watch over a Registry.
#include "agents/keepalive/keepalive.h"

#include <list>

#include "core/log.h"
#include "rpc/server.h"

namespace aiorpc::agents::keepalive {

using rpc::arg;
using rpc::Kind;
using rpc::RpcError;

namespace {

struct Snapshot {  // get_services()
  const Registry* reg;
};
struct VersionedSnapshot {  // watch(): {"version": v, "services": {...}}
  const Registry* reg;
};

}  // namespace
}  // namespace aiorpc::agents::keepalive

namespace aiorpc::rpc {
template <>
struct Encode<agents::keepalive::Snapshot> {
  static void pack(Packer& p, const agents::keepalive::Snapshot& s) { s.reg->packServices(p); }
};
template <>
struct Encode<agents::keepalive::VersionedSnapshot> {
  static void pack(Packer& p, const agents::keepalive::VersionedSnapshot& s) {
    p.map(2);
    p.str("version");
    p.uinteger(s.reg->version());
    p.str("services");
    s.reg->packServices(p);
  }
};
}  // namespace aiorpc::rpc

namespace aiorpc::agents::keepalive {
namespace {

// nil or "" host means the heartbeat's source address.
std::string hostOf(const rpc::Context& ctx, const std::optional<std::string>& host) {
  if (host && !host->empty()) return *host;
  const core::Address* peer = ctx.peer();
  return peer && !peer->isUnix() ? peer->host() : std::string("127.0.0.1");
}

void checkBounds(const std::string& name, const std::optional<std::string>& host, int64_t port) {
  if (name.size() > 255) throw RpcError(Kind::kArgument, "argument 'name': longer than 255 bytes");
  if (name.empty()) throw RpcError(Kind::kArgument, "argument 'name': empty");
  if (host && host->size() > 255)
    throw RpcError(Kind::kArgument, "argument 'host': longer than 255 bytes");
  if (port < 1 || port > 65535)
    throw RpcError(Kind::kArgument, "argument 'port': " + std::to_string(port) + " is not 1-65535");
}

class KeepaliveRole final : public RoleInstance {
 public:
  explicit KeepaliveRole(RoleEnv& env)
      : loop_(env.loop),
        svc_("keepalive"),
        reg_([&loop = env.loop] { return loop.now(); }, env.flags.seconds("ttl")) {
    svc_.def(
        "heartbeat",
        [this](const rpc::Context& ctx, const std::string& name,
               const std::optional<std::string>& host, int64_t port, rpc::Object ident) {
          checkBounds(name, host, port);
          if (rpc::packToString(ident).size() > 1024)
            throw RpcError(Kind::kArgument, "argument 'ident': over 1 KiB encoded");
          if (reg_.heartbeat(name, hostOf(ctx, host), static_cast<int>(port), ident)) changed();
          return true;
        },
        arg("ctx"), arg("name"), arg("host"), arg("port"), arg("ident") = nullptr);
    svc_.def("get_services", [this] { return Snapshot{&reg_}; });
    svc_.def(
        "unregister",
        [this](const rpc::Context& ctx, const std::string& name,
               const std::optional<std::string>& host, int64_t port) {
          checkBounds(name, host, port);
          bool removed = reg_.unregister(name, hostOf(ctx, host), static_cast<int>(port));
          if (removed) changed();
          return removed;
        },
        arg("ctx"), arg("name"), arg("host"), arg("port"));
    svc_.def(
        "watch",
        [this](rpc::Object version, double wait_ms, rpc::Reply<VersionedSnapshot> reply) {
          if (!version.isNil() && !version.isInt())
            return reply.error(Kind::kArgument, "argument 'version': expected int or nil");
          if (wait_ms < 0) return reply.error(Kind::kArgument, "argument 'wait_ms': negative");
          if (version.isNil() || version.asUint() != reg_.version() || draining_)
            return reply(VersionedSnapshot{&reg_});
          watchers_.push_back(Watcher{std::move(reply), 0});
          auto it = std::prev(watchers_.end());
          it->timer = loop_.after(std::min(wait_ms, 60000.0) / 1000, [this, it] {
            auto w = std::move(*it);
            watchers_.erase(it);
            w.reply(VersionedSnapshot{&reg_});
          });
        },
        arg("version"), arg("wait_ms") = 30000);
    expiry_.bind<&KeepaliveRole::onCheck>(loop_.raw(), this);
    double every = env.flags.seconds("check-interval");
    expiry_.start(every, every);
  }

  rpc::Service& service() override { return svc_; }
  void started(rpc::Server& server, const core::Address&) override {
    server.onDrain([this] {
      draining_ = true;
      changed();  // a draining keepalive answers its watchers at once
    });
  }

 private:
  struct Watcher {
    rpc::Reply<VersionedSnapshot> reply;
    core::Loop::TimerId timer;
  };

  void onCheck(int) noexcept {
    if (reg_.expire() > 0) changed();
  }
  void changed() {
    auto all = std::move(watchers_);
    watchers_.clear();
    for (auto& w : all) {
      loop_.cancel(w.timer);
      w.reply(VersionedSnapshot{&reg_});
    }
  }

  core::Loop& loop_;
  rpc::Service svc_;
  Registry reg_;
  std::list<Watcher> watchers_;  // idle watchers cost a list node and a timer each
  core::TimerWatcher expiry_;
  bool draining_ = false;
};

}  // namespace

const FlagSpec kFlags[2] = {
    {"ttl", FlagType::kSeconds, "30", "a record expires this long after its last heartbeat"},
    {"check-interval", FlagType::kSeconds, "5", "seconds between expiry checks"},
};

std::unique_ptr<RoleInstance> create(RoleEnv& env) {
  if (env.flags.seconds("check-interval") <= 0)
    throw std::invalid_argument("--check-interval must be > 0");
  return std::make_unique<KeepaliveRole>(env);
}

}  // namespace aiorpc::agents::keepalive
