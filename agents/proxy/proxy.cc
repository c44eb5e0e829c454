// Proxy: the service table from keepalive, invoke / batch_invoke routing, per-backend stats.
#include "agents/proxy/proxy.h"

#include <map>
#include <unordered_map>

#include "agents/proxy/backend.h"
#include "core/log.h"
#include "rpc/server.h"

namespace aiorpc::agents::proxy {

using rpc::Kind;
using rpc::Object;

namespace {

struct Instances {
  std::vector<Backend*> list;  // sorted as keepalive lists them
  size_t rr = 0;               // reset whenever the list changes
};

// A routed call in flight. Owns the caller's responder (and so the request's zone: params and
// names stay valid for retries).
struct Call {
  rpc::Responder reply;
  std::string_view service, method;
  Object params;
  bool hinted = false;
  Instances* instances = nullptr;  // the table entry as of generation `table_gen`
  uint64_t table_gen = 0;
  size_t start = 0, tried = 0;  // candidates list[(start + k) % n], k < tried, used up
  // batch_invoke: where the outcome goes instead of `reply`
  struct Batch* batch = nullptr;
  size_t item = 0;

  // One Call per routed request: recycled through a free list instead of malloc, whose slow
  // path (hundreds of calls freed out of order) cost more than the routing itself.
  static void* operator new(size_t n) {
    auto& f = free_list.blocks;
    if (f.empty()) return ::operator new(n);
    void* p = f.back();
    f.pop_back();
    return p;
  }
  static void operator delete(void* p) noexcept {
    if (free_list.blocks.size() < 4096) {
      try {
        return free_list.blocks.push_back(p);
      } catch (...) {
      }
    }
    ::operator delete(p);
  }
  struct FreeList {
    std::vector<void*> blocks;
    FreeList() = default;
    FreeList(const FreeList&) = delete;
    FreeList& operator=(const FreeList&) = delete;
    ~FreeList() {
      for (void* p : blocks) ::operator delete(p);
    }
  };
  static inline thread_local FreeList free_list;
};

// Lookups by string_view without building a std::string.
struct NameHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using Table = std::unordered_map<std::string, Instances, NameHash, std::equal_to<>>;

struct Outcome {
  bool ok = false;
  rpc::Value value;             // result, or the backend's error object
  Kind kind = Kind::kInternal;  // ours, when !ok and value is nil
  std::string message;
};

struct Batch {
  rpc::Responder reply;
  std::vector<Outcome> out;
  size_t left = 0;
};

// Floor modulo: -1 picks the last.
size_t floorMod(int64_t h, size_t n) {
  int64_t m = h % static_cast<int64_t>(n);
  return static_cast<size_t>(m < 0 ? m + static_cast<int64_t>(n) : m);
}

// The first candidate: the hinted instance, or the next round-robin position (one step per
// routed call; retries continue from here without advancing it).
void start(Call& c, Instances& in, int64_t hint) {
  c.hinted = hint != 0;
  c.start = c.hinted ? floorMod(hint, in.list.size()) : in.rr++ % in.list.size();
}

}  // namespace

class ProxyRole final : public RoleInstance {
 public:
  explicit ProxyRole(RoleEnv& env);
  rpc::Service& service() override { return svc_; }
  void started(rpc::Server& server, const core::Address&) override;
  void stop(core::Callback<void()> done) override {
    stopping_ = true;
    done();
  }

 private:
  // Parses a hint: nil/0 → none; a non-zero integer → index; anything else → error text.
  static std::optional<std::string> hintOf(Object h, int64_t& out);
  void route(std::unique_ptr<Call> c);
  void finish(std::unique_ptr<Call> c, rpc::Response& r);
  void fail(std::unique_ptr<Call> c, Kind k, std::string msg);
  void deliver(Batch* b, size_t item, Outcome o);
  void refresh();
  void applyTable(Object services);
  Backend* backendFor(const std::string& host, int64_t port);
  void packBackends(rpc::Packer& p) const;

  core::Loop& loop_;
  rpc::Service svc_{"proxy"};
  rpc::Client keepalive_;
  double refresh_interval_, backend_timeout_;
  size_t max_queue_;
  EjectPolicy eject_;
  Table table_;
  std::map<std::string, std::unique_ptr<Backend>> backends_;  // never freed: replies may be owed
  uint64_t version_ = 0;
  uint64_t table_gen_ = 1;  // bumped whenever table_ is replaced
  bool use_watch_ = true, stopping_ = false;
  core::Loop::TimerId refresh_timer_ = 0;
};

ProxyRole::ProxyRole(RoleEnv& env)
    : loop_(env.loop),
      keepalive_(env.loop, *core::Address::parse(env.flags.str("keepalive"))),
      refresh_interval_(env.flags.seconds("refresh-interval")),
      backend_timeout_(env.flags.seconds("backend-timeout")),
      max_queue_(static_cast<size_t>(env.flags.count("max-backend-queue"))),
      eject_{static_cast<int>(env.flags.count("eject-after")), env.flags.seconds("eject-for"), 60} {
  svc_.def(
      "invoke",
      [this](const rpc::Context& ctx, std::string_view service, std::string_view method,
             Object params, rpc::Reply<Object> reply) {
        auto c = std::make_unique<Call>();
        c->reply = std::move(reply.raw());
        c->service = service;
        c->method = method;
        c->params = params;
        int64_t hint = 0;
        if (auto h = ctx.find("__hint__")) {
          if (auto bad = hintOf(*h, hint)) return c->reply.error(Kind::kArgument, *bad);
        }
        auto it = table_.find(service);
        if (it == table_.end() || it->second.list.empty())
          return c->reply.error(Kind::kServiceNotFound,
                                "no service '" + std::string(service) + "'");
        start(*c, it->second, hint);
        c->instances = &it->second;
        c->table_gen = table_gen_;
        route(std::move(c));
      },
      rpc::arg("ctx"), rpc::arg("service"), rpc::arg("method"), rpc::arg("params"));

  svc_.def(
      "batch_invoke",
      [this](Object batches, rpc::Reply<Object> reply) {
        if (!batches.isArray()) return reply.error(Kind::kArgument, "batches: expected an array");
        // Check every item first; send nothing if one is bad.
        std::vector<std::pair<Instances*, int64_t>> plan;
        for (uint32_t i = 0; i < batches.size(); ++i) {
          Object it = batches[i];
          std::string where = "item " + std::to_string(i) + ": ";
          if (!it.isArray() || (it.size() != 3 && it.size() != 4))
            return reply.error(Kind::kArgument,
                               where + "expected [service, method, params, hint?]");
          if (!it[0].isStrOrBin() || !it[1].isStrOrBin())
            return reply.error(Kind::kArgument, where + "service and method must be strings");
          int64_t hint = 0;
          if (it.size() == 4)
            if (auto bad = hintOf(it[3], hint)) return reply.error(Kind::kArgument, where + *bad);
          auto t = table_.find(it[0].str());
          if (t == table_.end() || t->second.list.empty())
            return reply.error(Kind::kServiceNotFound,
                               where + "no service '" + std::string(it[0].str()) + "'");
          plan.emplace_back(&t->second, hint);
        }
        auto* b = new Batch();
        b->reply = std::move(reply.raw());
        b->out.resize(plan.size());
        b->left = plan.size() + 1;  // +1: not complete before every item is sent
        for (uint32_t i = 0; i < plan.size(); ++i) {
          auto c = std::make_unique<Call>();
          c->service = batches[i][0].str();
          c->method = batches[i][1].str();
          c->params = batches[i][2];
          c->batch = b;
          c->item = i;
          start(*c, *plan[i].first, plan[i].second);
          route(std::move(c));
        }
        deliver(b, SIZE_MAX, {});
      },
      rpc::arg("batches"));
}

std::optional<std::string> ProxyRole::hintOf(Object h, int64_t& out) {
  if (h.isNil()) return std::nullopt;
  auto v = h.asInt();
  if (!v) return std::string("__hint__: expected an integer or nil, got ") + h.typeName();
  out = *v;
  return std::nullopt;
}

void ProxyRole::route(std::unique_ptr<Call> c) {
  if (c->table_gen != table_gen_) {  // the table changed (or a batch item): look it up again
    auto it = table_.find(c->service);
    c->instances = it == table_.end() ? nullptr : &it->second;
    c->table_gen = table_gen_;
  }
  if (!c->instances || c->instances->list.empty()) {
    // The message first: argument evaluation order is unspecified, and `c` moves.
    std::string msg = "no live instance of '" + std::string(c->service) + "'";
    return fail(std::move(c), Kind::kServiceUnavailable, std::move(msg));
  }
  auto& list = c->instances->list;
  size_t n = list.size();
  double now = loop_.now();
  bool saw_full = false;
  while (c->tried < (c->hinted ? 1 : n)) {
    Backend* b = list[(c->start + c->tried) % n];
    ++c->tried;
    if (b->eject.ejected(now)) continue;
    if (b->in_flight >= max_queue_) {
      saw_full = true;
      continue;
    }
    ++b->requests;
    ++b->in_flight;
    Call* raw = c.get();
    b->client.send(
        raw->method, [raw](rpc::Packer& p) { p.object(raw->params); },
        [this, b, call = c.release()](rpc::Response& r) mutable {
          --b->in_flight;
          std::unique_ptr<Call> owned(call);
          if (r.status == rpc::Response::Status::kNotSent) {
            b->eject.failed(loop_.now());  // never written: try the next instance
            ++b->errors;
            return route(std::move(owned));
          }
          b->eject.succeeded();
          if (r.status != rpc::Response::Status::kOk) ++b->errors;
          finish(std::move(owned), r);
        },
        backend_timeout_);
    return;
  }
  std::string msg =
      saw_full ? "every instance of '" + std::string(c->service) + "' has a full queue"
               : "no live instance of '" + std::string(c->service) + "' could take the call";
  fail(std::move(c), saw_full ? Kind::kOverloaded : Kind::kServiceUnavailable, std::move(msg));
}

void ProxyRole::finish(std::unique_ptr<Call> c, rpc::Response& r) {
  using S = rpc::Response::Status;
  if (c->batch) {
    Outcome o;
    o.ok = r.status == S::kOk;
    if (r.status == S::kOk) {
      o.value = rpc::Value::fromBytes(r.raw_result).value_or(rpc::Value());
    } else if (r.status == S::kError) {
      o.value = r.keep(r.error);
    } else {
      o.kind = r.status == S::kTimeout ? Kind::kTimeout : Kind::kConnection;
      o.message = r.message;
    }
    return deliver(c->batch, c->item, std::move(o));
  }
  switch (r.status) {
    case S::kOk:
      return c->reply.reply(rpc::Raw{r.raw_result});  // the backend's bytes, not re-encoded
    case S::kError:
      return c->reply.errorObject(r.error);  // the backend's error, intact
    case S::kTimeout:
      return c->reply.error(Kind::kTimeout, "backend " + r.message);
    default:
      return c->reply.error(Kind::kConnection, r.message);
  }
}

void ProxyRole::fail(std::unique_ptr<Call> c, Kind k, std::string msg) {
  if (c->batch) {
    Outcome o;
    o.kind = k;
    o.message = std::move(msg);
    return deliver(c->batch, c->item, std::move(o));
  }
  c->reply.error(k, msg);
}

void ProxyRole::deliver(Batch* b, size_t item, Outcome o) {
  if (item != SIZE_MAX) b->out[item] = std::move(o);
  if (--b->left > 0) return;
  std::unique_ptr<Batch> owned(b);
  for (size_t i = 0; i < b->out.size(); ++i) {
    Outcome& x = b->out[i];
    if (x.ok) continue;
    std::string where = "item " + std::to_string(i) + ": ";
    if (x.value.isNil()) return b->reply.error(x.kind, where + x.message);
    // The backend's error: ours keeps its kind, a foreign one becomes ApplicationError text.
    Object e = x.value.view();
    if (e.isArray() && e.size() == 2 && e[0].isStrOrBin() && e[1].isStrOrBin() &&
        rpc::kindFromName(e[0].str()) != Kind::kOther)
      return b->reply.error(rpc::kindFromName(e[0].str()), where + std::string(e[1].str()));
    return b->reply.error(Kind::kApplication, where + e.toText(1000));
  }
  std::vector<rpc::Value> results;
  results.reserve(b->out.size());
  for (auto& x : b->out) results.push_back(std::move(x.value));
  b->reply.reply(results);
}

Backend* ProxyRole::backendFor(const std::string& host, int64_t port) {
  std::string spec = host.find(':') != std::string::npos ? "[" + host + "]:" + std::to_string(port)
                                                         : host + ":" + std::to_string(port);
  auto& b = backends_[spec];
  if (!b) {
    auto addr = core::Address::parse(spec);
    if (!addr) return nullptr;
    rpc::ClientOptions o;
    o.raw_results = true;  // results are forwarded as the backend encoded them
    o.timeout = backend_timeout_;
    o.dead_after = 1 << 30;  // the proxy ejects by its own policy
    b = std::make_unique<Backend>(loop_, *addr, o, eject_);
  }
  return b.get();
}

void ProxyRole::applyTable(Object services) {
  if (!services.isMap()) return;
  Table next;
  for (uint32_t i = 0; i < services.size(); ++i) {
    if (!services.key(i).isStrOrBin() || !services.val(i).isArray()) continue;
    Instances in;
    Object list = services.val(i);
    for (uint32_t k = 0; k < list.size(); ++k) {
      auto ep = list[k].find("endpoint");
      if (!ep || !ep->isArray() || ep->size() != 2 || !(*ep)[0].isStrOrBin()) continue;
      auto port = (*ep)[1].asInt();
      if (!port || *port < 1 || *port > 65535) continue;
      if (Backend* b = backendFor(std::string((*ep)[0].str()), *port)) in.list.push_back(b);
    }
    std::string name(services.key(i).str());
    auto old = table_.find(name);
    if (old != table_.end() && old->second.list == in.list) in.rr = old->second.rr;  // unchanged
    next.emplace(std::move(name), std::move(in));
  }
  table_ = std::move(next);
  ++table_gen_;
}

void ProxyRole::refresh() {
  refresh_timer_ = 0;
  if (stopping_) return;
  auto again = [this](double after) {
    if (!stopping_) refresh_timer_ = loop_.after(after, [this] { refresh(); });
  };
  if (use_watch_) {
    double wait_ms = 30000;
    keepalive_.send(
        "watch",
        [&](rpc::Packer& p) {
          p.pack(std::tuple{version_, wait_ms});
        },
        [this, again](rpc::Response& r) {
          if (r.status == rpc::Response::Status::kOk) {
            auto v = r.result.find("version");
            auto s = r.result.find("services");
            if (v && s && v->asUint()) {
              version_ = *v->asUint();
              applyTable(*s);
              return again(0);
            }
          }
          if (r.status == rpc::Response::Status::kError) use_watch_ = false;  // an older keepalive
          again(refresh_interval_);  // unreachable: keep the last table, retry later
        },
        wait_ms / 1000 + 5);
    return;
  }
  keepalive_.send(
      "get_services", [](rpc::Packer& p) { p.array(0); },
      [this, again](rpc::Response& r) {
        if (r.status == rpc::Response::Status::kOk) applyTable(r.result);
        again(refresh_interval_);
      });
}

void ProxyRole::packBackends(rpc::Packer& p) const {
  p.map(static_cast<uint32_t>(backends_.size()));
  for (const auto& [name, b] : backends_) {
    p.str(name);
    p.map(4);
    p.str("requests"), p.uinteger(b->requests);
    p.str("errors"), p.uinteger(b->errors);
    p.str("in_flight"), p.uinteger(b->in_flight);
    p.str("ejected"), p.boolean(b->eject.ejected(loop_.now()));
  }
}

void ProxyRole::started(rpc::Server& server, const core::Address&) {
  server.addStats("backends", [this](rpc::Packer& p) { packBackends(p); });
  refresh();
}

const FlagSpec kFlags[5] = {
    {"refresh-interval", FlagType::kSeconds, "3", "seconds between table refreshes (polling)"},
    {"backend-timeout", FlagType::kSeconds, "9", "seconds to wait for a backend's reply"},
    {"max-backend-queue", FlagType::kCount, "65536",
     "requests per instance unwritten or in flight"},
    {"eject-after", FlagType::kCount, "3",
     "failed connects in a row before an instance is skipped"},
    {"eject-for", FlagType::kSeconds, "5", "seconds an instance is skipped (doubles, at most 60)"},
};

std::unique_ptr<RoleInstance> create(RoleEnv& env) {
  if (!env.flags.has("keepalive"))
    throw std::invalid_argument("--keepalive HOST:PORT is required for the proxy");
  return std::make_unique<ProxyRole>(env);
}

}  // namespace aiorpc::agents::proxy
