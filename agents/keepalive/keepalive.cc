// Keepalive: heartbeat / get_services / unregister / watch over a Registry.
#include "aiorpc/agents/keepalive/keepalive.h"

#include <algorithm>
#include <cmath>
#include <list>
#include <optional>
#include <unordered_map>

#include "aiorpc/agents/auth.h"
#include "aiorpc/agents/flags.h"
#include "aiorpc/agents/keepalive/etcd_store.h"
#include "aiorpc/core/log.h"
#include "aiorpc/rpc/errors.h"
#include "aiorpc/rpc/server.h"

namespace aiorpc::agents::keepalive {

using rpc::arg;
using rpc::Kind;
using rpc::RpcError;

namespace {

struct Snapshot {  // get_services()
  const Registry* reg;
};
struct VersionedSnapshot {  // watch(): {"version": v, "services": {...}[, "stale": true]}
  const Registry* reg;
  bool stale = false;  // the registry's store (etcd) cannot be reached: this is the cache
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
    p.map(s.stale ? 3 : 2);
    p.str("version");
    p.uinteger(s.reg->version());
    p.str("services");
    s.reg->packServices(p);
    if (s.stale) p.str("stale"), p.boolean(true);
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

// Who sent a request: the peer's IP ("unix" on a unix socket), for ownership and the audit log.
std::string sourceOf(const rpc::Context& ctx) {
  const core::Address* peer = ctx.peer();
  if (!peer) return "?";
  return peer->isUnix() ? std::string("unix") : peer->host();
}

bool isLoopback(const core::Address& a) {
  if (a.isUnix()) return true;
  std::string h = a.host();
  return h.rfind("127.", 0) == 0 || h == "::1";
}

// The same for both stores: what the etcd store cannot write and read back, the memory store
// refuses too.
void checkBounds(const std::string& name, const std::optional<std::string>& host, int64_t port) {
  if (name.size() > 255) throw RpcError(Kind::kArgument, "argument 'name': longer than 255 bytes");
  if (name.empty()) throw RpcError(Kind::kArgument, "argument 'name': empty");
  if (!rpc::isUtf8(name)) throw RpcError(Kind::kArgument, "argument 'name': not valid UTF-8");
  if (host && host->size() > 255)
    throw RpcError(Kind::kArgument, "argument 'host': longer than 255 bytes");
  if (host && !rpc::isUtf8(*host))
    throw RpcError(Kind::kArgument, "argument 'host': not valid UTF-8");
  if (port < 1 || port > 65535)
    throw RpcError(Kind::kArgument, "argument 'port': " + std::to_string(port) + " is not 1-65535");
}

// A record whose key would not read back as itself is refused, never answered true and lost.
void checkKey(const RecordKey& r) {
  auto back = parseEtcdKey("/", etcdKey("/", r));
  if (!back || !(*back == r))
    throw RpcError(Kind::kArgument, "this name and host cannot be stored as a registry key");
}

// A write the etcd store did not make: answered with its error (true), else false.
template <class NotOwner>
bool refusedBy(const EtcdStore::Result& r, rpc::Reply<bool>& reply, const NotOwner& not_owner) {
  if (r.kind == EtcdStore::Result::kUnavailable)
    return reply.error(Kind::kServiceUnavailable, r.error), true;
  if (r.kind == EtcdStore::Result::kNotOwner)
    return reply.error(Kind::kAuth, not_owner(r.error)), true;
  return false;
}

class KeepaliveRole final : public RoleInstance {
 public:
  explicit KeepaliveRole(RoleEnv& env)
      : loop_(env.loop),
        svc_("keepalive"),
        reg_([&loop = env.loop] { return loop.now(); }, env.flags.seconds("ttl")),
        audit_(env.loop),
        token_(env.auth_token),
        auth_reads_(env.flags.boolean("auth-reads")),
        open_(env.flags.str("allow").empty() && env.auth_token.empty()),
        max_records_(static_cast<size_t>(env.flags.count("max-records"))),
        max_per_source_(static_cast<size_t>(env.flags.count("max-records-per-source"))) {
    svc_.setGuard(
        [this](std::string_view method, const rpc::Context& ctx) { return guard(method, ctx); });
    svc_.def(
        "heartbeat",
        [this](const rpc::Context& ctx, const std::string& name,
               const std::optional<std::string>& host, int64_t port, rpc::Object ident,
               rpc::Reply<bool> reply) {
          std::string packed = rpc::packToString(ident);
          std::string h = hostOf(ctx, host), from = sourceOf(ctx);
          RecordKey key{name, h, static_cast<int>(port)};
          try {
            checkBounds(name, host, port);
            checkKey(key);
            if (packed.size() > 1024)
              throw RpcError(Kind::kArgument, "argument 'ident': over 1 KiB encoded");
          } catch (const RpcError& e) {
            return reply.error(e.kind(), e.message());
          }
          auto done = [this, name, h, port, from](Registry::Change change) {
            if (change == Registry::kAdded)
              audit_.log("registered {} at {} (from {})", name, endpointText(h, port), from);
            if (change == Registry::kIdentChanged)
              audit_.log("new ident for {} at {} (from {})", name, endpointText(h, port), from);
          };
          auto notOwner = [this, name, h, port, from](const std::string& owner) {
            audit_.log("refused new ident for {} at {} from {}: registered by {}", name,
                       endpointText(h, port), from, owner);
            return "only the address that registered " + name + " at " + endpointText(h, port) +
                   " may change its ident";
          };
          const std::string* ident_now = reg_.identPacked(name, h, key.port);
          if (!ident_now) {  // a new record: within the bounds
            size_t pending = store_ ? store_->pendingNew() : 0;
            size_t mine = reg_.ownedBy(from) + (store_ ? store_->pendingNewFrom(from) : 0);
            if (reg_.size() + pending >= max_records_)
              return reply.error(
                  Kind::kOverloaded,
                  fmt::format("the registry holds its limit of {} records", max_records_));
            if (mine >= max_per_source_)
              return reply.error(Kind::kOverloaded, fmt::format("{} holds its limit of {} records",
                                                                from, max_per_source_));
            if (reg_.tableBytes() + (pending + 1) * Registry::kMaxRecordBytes > kMaxTableBytes)
              return reply.error(
                  Kind::kOverloaded,
                  fmt::format("the registry's table is at its limit of {} bytes", kMaxTableBytes));
          }
          if (!store_) {
            const std::string* owner = reg_.owner(name, h, key.port);
            if (token_.empty() && owner && *owner != from && ident_now && *ident_now != packed)
              return reply.error(Kind::kAuth, notOwner(*owner));
            auto change = reg_.heartbeat(name, h, key.port, ident, from);
            done(change);
            if (change) changed();
            return reply(true);
          }
          // On etcd: answered once etcd has it (the cache follows from the watch).
          store_->heartbeat(
              key, std::move(packed), from, token_.empty(),
              [done, notOwner, reply = std::move(reply)](const EtcdStore::Result& r) mutable {
                if (refusedBy(r, reply, notOwner)) return;
                done(r.change);
                reply(true);
              });
        },
        arg("ctx"), arg("name"), arg("host"), arg("port"), arg("ident") = nullptr);
    svc_.def("get_services", [this] { return Snapshot{&reg_}; });
    svc_.def(
        "unregister",
        [this](const rpc::Context& ctx, const std::string& name,
               const std::optional<std::string>& host, int64_t port, rpc::Reply<bool> reply) {
          try {
            checkBounds(name, host, port);
          } catch (const RpcError& e) {
            return reply.error(e.kind(), e.message());
          }
          std::string h = hostOf(ctx, host), from = sourceOf(ctx);
          auto refused = [this, name, h, port, from](const std::string& owner) {
            audit_.log("refused unregister of {} at {} from {}: registered by {}", name,
                       endpointText(h, port), from, owner);
            return "only the address that registered " + name + " at " + endpointText(h, port) +
                   " may unregister it";
          };
          auto done = [this, name, h, port, from](bool removed) {
            if (removed)
              audit_.log("unregistered {} at {} (from {})", name, endpointText(h, port), from);
          };
          if (!store_) {
            // Without a token, only the address that registered a record may remove it (with
            // a token the guard has checked it: any holder may).
            const std::string* owner = reg_.owner(name, h, static_cast<int>(port));
            if (token_.empty() && owner && *owner != from)
              return reply.error(Kind::kAuth, refused(*owner));
            bool removed = reg_.unregister(name, h, static_cast<int>(port));
            done(removed);
            if (removed) changed();
            return reply(removed);
          }
          // On etcd the owner is read from etcd and the removal compares that revision.
          store_->unregister(
              RecordKey{name, h, static_cast<int>(port)}, from, token_.empty(),
              [this, done, refused, reply = std::move(reply)](const EtcdStore::Result& r) mutable {
                if (refusedBy(r, reply, refused)) return;
                unregistered_ += r.removed;
                done(r.removed);
                reply(r.removed);
              });
        },
        arg("ctx"), arg("name"), arg("host"), arg("port"));
    svc_.def(
        "watch",
        [this](rpc::Object version, double wait_ms, rpc::Reply<VersionedSnapshot> reply) {
          if (!version.isNil() && !version.isInt())
            return reply.error(Kind::kArgument, "argument 'version': expected int or nil");
          if (!(wait_ms >= 0) || !std::isfinite(wait_ms))  // NaN, inf, negative
            return reply.error(Kind::kArgument, "argument 'wait_ms': expected 0..60000 ms");
          double wait_s = std::min(wait_ms, 60000.0) / 1000;
          // Before its first read of etcd this instance knows nothing (it is stale). A caller
          // with no table yet (version 0: a proxy starting cold) waits for that read, and is
          // answered the moment it completes; one with a table is answered stale at once and
          // moves on (SPEC §5: a version never goes backwards for a caller).
          if (!synced() && !draining_ && version.asUint() == 0u)
            return addWatcher(std::move(reply.raw()), wait_s, true);
          // On etcd a version newer than this instance's cache (a proxy that moved here from
          // another keepalive) waits until the cache passes it or its time is up.
          bool newer = store_ && version.asUint() && *version.asUint() > reg_.version();
          if (version.isNil() || (version.asUint() != reg_.version() && !newer) || draining_ ||
              stale())  // answered at once: the proxy moves on
            return reply.raw().reply(rpc::Raw{encodedWatch()});
          addWatcher(std::move(reply.raw()), wait_s, false);
        },
        arg("version"), arg("wait_ms") = 30000);
    std::string store = env.flags.str("store");
    if (store != "memory") {  // (create() checked it names etcd)
      EtcdStore::Options o = etcdEndpoints(store);
      if (o.https)
        o.tls = {env.flags.str("tls-ca"), env.flags.str("tls-cert"), env.flags.str("tls-key")};
      o.prefix = env.flags.str("store-prefix");
      o.ttl = env.flags.seconds("ttl");
      o.store_timeout = env.flags.seconds("store-timeout");
      store_ = std::make_unique<EtcdStore>(loop_, reg_, std::move(o), [this] { changed(); });
      core::log::info("keepalive: registry on etcd {} under {} (leases of {} s)", store,
                      env.flags.str("store-prefix"), store_->leaseTtl());
      return;  // expiry is etcd's (leases): no TTL scan here
    }
    expiry_.bind<&KeepaliveRole::onCheck>(loop_, this);
    double every = env.flags.seconds("check-interval");
    expiry_.start(every, every);
  }

  rpc::Service& service() override { return svc_; }
  void started(rpc::Server& server, const core::Address& bound) override {
    if (open_ && !isLoopback(bound))
      core::log::warn(
          "keepalive on {} accepts writes from anyone who can reach it: they can register "
          "endpoints every proxy will route to, or unregister any service. Close it with "
          "--allow CIDR[,CIDR...] and/or --auth-token-file PATH (see docs/operating.md)",
          bound.toString());
    high_water_ = server.options().high_water;
    server_ = &server;
    server.addStats("registry", [this](rpc::Packer& p) {
      p.map(store_ ? 11 : 4);
      p.str("store"), p.str(store_ ? "etcd" : "memory");
      p.str("records"), p.uinteger(reg_.size());
      p.str("version"), p.uinteger(reg_.version());
      p.str("table_bytes"), p.uinteger(reg_.tableBytes());
      if (store_) {
        auto c = store_->counters();
        p.str("stale"), p.boolean(stale());
        p.str("etcd_endpoint"), p.str(store_->endpoint());
        p.str("etcd_watch"), p.str(store_->watchEndpoint());
        p.str("bad_values"), p.uinteger(c.bad_values);
        p.str("bad_responses"), p.uinteger(c.bad_responses);
        p.str("watch_moves"), p.uinteger(c.watch_moves);
        p.str("write_batches"), p.uinteger(c.registered_batches);
      }
    });
    server.onDrain([this] {
      draining_ = true;
      changed();  // a draining keepalive answers its watchers at once
    });
    // A watch whose connection has gone is dropped at once, not when its wait ends.
    server.onSessionClosed([this](uint64_t session) { dropWatchers(session); });
  }

  std::string unhealthy() const override { return stale() ? "stale" : ""; }

  void writeMetrics(core::MetricsText& out) override {
    using T = core::MetricsText::Type;
    out.gauge("aiorpc_registry_records", "Records in the table.", static_cast<double>(reg_.size()));
    out.gauge("aiorpc_registry_services", "Service names with at least one record.",
              static_cast<double>(reg_.services()));
    out.gauge("aiorpc_registry_stale",
              "1 while the table may be old (etcd unreachable, or its watch not proven current).",
              stale() ? 1.0 : 0.0);
    out.family("aiorpc_registry_heartbeats_total", T::kCounter,
               "Heartbeats answered, by outcome (ok or the error kind).");
    const auto* hb = svc_.find("heartbeat");
    const auto* counts = hb && server_ && server_->requestMetrics()
                             ? server_->requestMetrics()->outcomes(hb->id)
                             : nullptr;
    (counts ? *counts : rpc::Outcomes{}).write(out, "aiorpc_registry_heartbeats_total");
    uint64_t expired = expired_;
    if (store_) {
      uint64_t removed = store_->counters().removed;
      expired = removed > unregistered_ ? removed - unregistered_ : 0;
    }
    out.counter("aiorpc_registry_expired_total",
                store_ ? "Records that left the table without an unregister through this "
                         "instance (etcd's lease expiry; or an unregister through another "
                         "keepalive on the same prefix)."
                       : "Records expired for want of heartbeats.",
                expired);
    if (!store_) return;
    const auto& m = store_->etcdMetrics();
    out.family("aiorpc_etcd_requests_total", T::kCounter,
               "Requests to etcd members: ok, refused (an answer other than 200), failed (no "
               "answer, a timeout or a 5xx).");
    out.sample("aiorpc_etcd_requests_total", {{"outcome", "ok"}}, m.ok);
    out.sample("aiorpc_etcd_requests_total", {{"outcome", "refused"}}, m.refused);
    out.sample("aiorpc_etcd_requests_total", {{"outcome", "failed"}}, m.failed);
    out.family("aiorpc_etcd_request_duration_seconds", T::kHistogram,
               "Time each request to an etcd member took.");
    out.histogram("aiorpc_etcd_request_duration_seconds", {}, m.latency);
  }
  ~KeepaliveRole() override {
    for (auto& [session, list] : watchers_)
      for (auto& w : list) loop_.cancel(w.timer);
    loop_.cancel(retry_timer_);
  }

 private:
  // A waiting watch costs its list node, a loop timer and a responder holding only the msgid
  // (Responder::compact: the request's zone goes back at once).
  struct Watcher {
    rpc::Responder reply;
    core::Loop::TimerId timer = 0;
    uint64_t version = 0;  // the version it waits to see change
    bool cold = false;     // waits for this instance's first read of etcd
  };
  using Watchers = std::list<Watcher>;
  // Watches waiting on one connection at most: a peer cannot make us hold more than this.
  static constexpr size_t kMaxWatchesPerConnection = 32;

  // {"version": v, "services": {...}}, encoded once per version and shared by every answer.
  const std::string& encodedWatch() {
    bool stale = this->stale();
    if (encoded_version_ != reg_.version() || encoded_.empty() || encoded_stale_ != stale) {
      encoded_.clear();
      rpc::Packer p(encoded_);
      p.pack(VersionedSnapshot{&reg_, stale});
      encoded_version_ = reg_.version();
      encoded_stale_ = stale;
    }
    return encoded_;
  }

  // On etcd: stale while etcd cannot be reached, and until the first read of it (before which
  // the cache holds nothing and its version is no etcd revision).
  bool synced() const noexcept { return !store_ || store_->synced(); }
  bool stale() const noexcept { return store_ && (store_->stale() || !store_->synced()); }

  void addWatcher(rpc::Responder reply, double wait_s, bool cold) {
    uint64_t session = reply.session();
    Watchers& list = watchers_[session];
    if (list.size() >= kMaxWatchesPerConnection)
      return reply.error(Kind::kOverloaded, fmt::format("over {} watches waiting on one connection",
                                                        kMaxWatchesPerConnection));
    reply.compact();
    list.push_back(Watcher{std::move(reply), 0, reg_.version(), cold});
    auto it = std::prev(list.end());
    it->timer = loop_.after(wait_s, [this, session, it] {
      // Its wait is over: answered whatever its connection holds (the output limit bounds it).
      auto& l = watchers_[session];
      auto w = std::move(*it);
      l.erase(it);
      if (l.empty()) watchers_.erase(session);
      w.reply.reply(rpc::Raw{encodedWatch()});
    });
  }

  void dropWatchers(uint64_t session) {
    auto found = watchers_.find(session);
    if (found == watchers_.end()) return;
    for (auto& w : found->second) loop_.cancel(w.timer);
    watchers_.erase(found);  // their peer has gone: nothing to answer
  }

  // Each expired record is named (a line each, up to kExpiryLines a check), then a summary.
  static constexpr size_t kExpiryLines = 24;
  void onCheck(int) noexcept {
    size_t named = 0;
    size_t n = reg_.expire([&](const std::string& name, const std::string& host, int port) {
      if (named++ < kExpiryLines)
        core::log::info("keepalive: expired {} at {} (no heartbeat for {} s)", name,
                        endpointText(host, port), reg_.ttl());
    });
    if (n > kExpiryLines)
      core::log::info("keepalive: {} records expired in all ({} more not named)", n,
                      n - kExpiryLines);
    expired_ += n;
    if (n > 0) changed();
  }
  static std::string endpointText(const std::string& host, int64_t port) {
    return host.find(':') != std::string::npos ? fmt::format("[{}]:{}", host, port)
                                               : fmt::format("{}:{}", host, port);
  }
  // Token check (SPEC §5 access control): writes need it when a token is set; reads too with
  // --auth-reads. Map-form params carry it under __auth__; array-form params cannot.
  rpc::Service::Denial guard(std::string_view method, const rpc::Context& ctx) {
    bool write = method == "heartbeat" || method == "unregister";
    if (token_.empty() || (!write && !auth_reads_)) return std::nullopt;
    auto t = ctx.find("__auth__");
    if (t && t->isStrOrBin() && constantTimeEquals(t->str(), token_)) return std::nullopt;
    audit_.log("refused {} from {}: {}", method, sourceOf(ctx), t ? "wrong token" : "no token");
    if (!t)
      return std::pair{Kind::kAuth,
                       "this registry needs a token: send map-form params with "
                       "the key __auth__"};
    return std::pair{Kind::kAuth, std::string("wrong __auth__ token")};
  }
  // Answers every watch waiting on an older version, with one shared encoding. A watch whose
  // connection is over its high-water mark (a peer that does not read) waits until it drains
  // (retried every 0.1 s) or until its own wait ends: fan-out never piles snapshots up.
  void changed() {
    loop_.cancel(retry_timer_);
    retry_timer_ = 0;
    bool deferred = false;
    for (auto s = watchers_.begin(); s != watchers_.end();) {
      Watchers& list = s->second;
      for (auto it = list.begin(); it != list.end();) {
        // (a stale store answers every watcher: proxies move on to another keepalive; one
        // waiting for the first read is answered by that read)
        bool wait = it->cold ? !synced()
                             : (it->version == reg_.version() ||
                                (store_ && it->version > reg_.version())) &&
                                   !stale();
        if (wait && !draining_) {
          ++it;
          continue;
        }
        if (!draining_ && it->reply.peerOutputBytes() > high_water_) {
          deferred = true;
          ++it;
          continue;
        }
        loop_.cancel(it->timer);
        auto w = std::move(*it);
        it = list.erase(it);
        w.reply.reply(rpc::Raw{encodedWatch()});
      }
      s = list.empty() ? watchers_.erase(s) : std::next(s);
    }
    if (deferred)
      retry_timer_ = loop_.after(0.1, [this] {
        retry_timer_ = 0;
        changed();
      });
  }

  core::Loop& loop_;
  rpc::Service svc_;
  Registry reg_;
  std::unordered_map<uint64_t, Watchers> watchers_;  // by session id
  rpc::Server* server_ = nullptr;                    // (started)
  uint64_t expired_ = 0;                             // memory store: records expired here
  uint64_t unregistered_ = 0;  // etcd: records this instance removed by unregister
  std::string encoded_;
  uint64_t encoded_version_ = 0;
  bool encoded_stale_ = false;
  std::unique_ptr<EtcdStore> store_;  // --store=etcd://...: the registry on etcd, reg_ its cache
  size_t high_water_ = 4u << 20;
  core::Loop::TimerId retry_timer_ = 0;
  core::TimerWatcher expiry_;
  bool draining_ = false;
  Audit audit_;
  std::string token_;  // never logged
  bool auth_reads_, open_;
  size_t max_records_, max_per_source_;
};

}  // namespace

// etcd://HOST:PORT[,...] (http), etcd://https://HOST:PORT[,https://...] or etcds://HOST:PORT[,...]
// (https, SPEC §8) → the endpoints; throws on anything else (unix paths, a mix of schemes).
EtcdStore::Options etcdEndpoints(const std::string& store) {
  auto bad = [&] {
    return std::invalid_argument(
        "--store: expected etcd://HOST:PORT[,HOST:PORT...], etcd://https://HOST:PORT[,...] or "
        "etcds://HOST:PORT[,...], not '" +
        store + "'");
  };
  EtcdStore::Options o;
  std::string_view rest = store, scheme;  // scheme: what every member is written with
  if (rest.rfind("etcds://", 0) == 0) {
    o.https = true;
    rest.remove_prefix(8);
  } else if (rest.rfind("etcd://", 0) == 0) {
    rest.remove_prefix(7);
    if (rest.rfind("https://", 0) == 0) o.https = true, scheme = "https://";
  } else {
    throw bad();
  }
  for (;;) {
    std::string_view item = rest.substr(0, rest.find(','));
    bool last = item.size() == rest.size();
    if (item.rfind(scheme, 0) != 0) throw bad();
    rest.remove_prefix(last ? item.size() : item.size() + 1);
    item.remove_prefix(scheme.size());
    auto a = core::Address::parse(item);
    if (item.find("://") != std::string_view::npos || !a || a->isUnix()) throw bad();
    o.endpoints.emplace_back(item);
    if (last) return o;
  }
}

const FlagSpec kFlags[8] = {
    {"ttl", FlagType::kSeconds, "30", "a record expires this long after its last heartbeat"},
    {"check-interval", FlagType::kSeconds, "5", "seconds between expiry checks"},
    {"auth-reads", FlagType::kBool, "false",
     "with --auth-token-file: get_services and watch need the token too"},
    {"store", FlagType::kString, "memory",
     "where the registry lives: memory, or etcd://HOST:PORT[,HOST:PORT...] (shared by every "
     "keepalive on the same etcd and prefix)"},
    {"store-prefix", FlagType::kString, "/aiorpc/default", "with --store=etcd: the key prefix"},
    {"store-timeout", FlagType::kSeconds, "3",
     "with --store=etcd: a watch that does not prove itself current this long moves to another "
     "member (stale meanwhile)"},
    {"max-records", FlagType::kCount, "100000",
     "records in the registry at most: a heartbeat of a new record past it gets Overloaded"},
    {"max-records-per-source", FlagType::kCount, "10000",
     "records registered from one address at most (Overloaded past it)"},
};

std::unique_ptr<RoleInstance> create(RoleEnv& env) {
  if (env.flags.seconds("check-interval") <= 0)
    throw std::invalid_argument("--check-interval must be > 0");
  if (env.flags.seconds("store-timeout") < 0.3)
    throw std::invalid_argument("--store-timeout must be at least 0.3 s");
  std::string store = env.flags.str("store");
  if (store != "memory") etcdEndpoints(store);
  std::string prefix = env.flags.str("store-prefix");
  if (prefix.empty() || prefix[0] != '/' || prefix.back() == '/')
    throw std::invalid_argument("--store-prefix: /name[/name...] (no trailing /)");
  return std::make_unique<KeepaliveRole>(env);
}

}  // namespace aiorpc::agents::keepalive
