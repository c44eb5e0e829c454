// Proxy: the service table from keepalive, invoke / batch_invoke routing, per-backend stats.
#include "aiorpc/agents/proxy/proxy.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <unordered_map>

#include "aiorpc/agents/keepalive/registry.h"
#include "aiorpc/agents/proxy/backend.h"
#include "aiorpc/core/hash.h"
#include "aiorpc/core/log.h"
#include "aiorpc/core/pool.h"
#include "aiorpc/core/resolver.h"
#include "aiorpc/rpc/server.h"

namespace aiorpc::agents::proxy {

using rpc::Kind;
using rpc::Object;

namespace {

// A service's series (SPEC §9), kept while the table lists the service.
struct ServiceSeries : rpc::CallSeries {
  uint64_t retries = 0;
};

struct Instances {
  std::vector<Backend*> list;  // sorted as keepalive lists them; listed backends stay alive
  size_t rr = 0;               // reset whenever the list changes
  ServiceSeries* series = nullptr;
};

// A hint (SPEC §6): any non-zero integer, taken floor modulo the list's length. Integers of
// 2^63 and more are taken as unsigned (floor modulo on the unsigned value).
struct Hint {
  bool set = false, negative = false;
  uint64_t magnitude = 0;
  static Hint of(uint64_t u) noexcept { return Hint{u != 0, false, u}; }  // 0: none
  size_t pick(size_t n) const noexcept {
    size_t m = static_cast<size_t>(magnitude % n);
    return negative && m != 0 ? n - m : m;
  }
};

// batch_invoke: one outcome per item; owned by its item calls, answered when the last delivers.
// A result that came as bytes is kept as bytes (appended to `bytes`, where `at` finds it) and
// written into the reply as it came: never decoded, never re-encoded.
struct Batch {
  rpc::Responder reply;
  std::vector<rpc::Outcome> out;
  std::vector<std::pair<size_t, size_t>> at;  // per item: its result's offset and length
  std::string bytes;
  size_t left = 0;
};

// The reply of a batch whose items all succeeded: an array of the results in item order.
struct BatchResults {
  const Batch* b;
};

// A raw call's bytes (service, method, params) after a small header. Shared by the call and
// the backend queues that send the params in place (OutQueue::appendRef: one copy of the
// params in user space, the one into here): whichever lets go last frees it - back to the
// pool when that is the call (the role, and so the pool, outlives its calls), to the heap when
// it is a queue (a backend's connection may be freed after the role).
struct CallBytes {
  uint32_t refs;
  int cls;
  char* data() noexcept { return reinterpret_cast<char*>(this + 1); }
  static void unrefFromQueue(void* p) noexcept {
    auto* b = static_cast<CallBytes*>(p);
    if (--b->refs == 0) delete[] reinterpret_cast<char*>(b);
  }
};

// Buffers for raw calls' bytes by size class (256 B to 64 KiB, powers of two): a routed call
// below 64 KiB allocates nothing once the classes it uses are warm. Bounds: at most kMaxKept
// bytes wait in all (the rest go back to the heap), and what waits through a quiet trim
// period goes back too (the owner calls trim()); a call over 64 KiB gets its own buffer.
// (kMaxKept covers the calls in flight swinging by 512 x 32 KiB: 16 KiB params, 8 x 64
// pipelined.)
class CallBuffers {
 public:
  static constexpr size_t kMinClass = 256, kMaxClass = 64u << 10, kMaxKept = 32u << 20;
  static constexpr double kTrimPeriod = 5;            // seconds
  static constexpr int kClasses = 9, kUnpooled = -1;  // 256 << 8 == 64 KiB
  CallBuffers() = default;
  CallBuffers(const CallBuffers&) = delete;
  CallBuffers& operator=(const CallBuffers&) = delete;
  ~CallBuffers() {
    for (auto& list : free_)
      for (CallBytes* b : list) delete[] reinterpret_cast<char*>(b);
  }
  // Room for at least n bytes, held once (refs 1). `missed`: none was waiting (the owner
  // arms its trim timer).
  CallBytes* take(size_t n, bool& missed) {
    ++takes_;
    int cls = kUnpooled;
    if (n <= kMaxClass) {
      cls = 0;
      while ((kMinClass << cls) < n) ++cls;
      if (auto& list = free_[cls]; !list.empty()) {
        CallBytes* b = list.back();
        list.pop_back();
        kept_ -= kMinClass << cls;
        b->refs = 1;
        return b;
      }
      n = kMinClass << cls;
    }
    missed = true;
    auto* b = reinterpret_cast<CallBytes*>(new char[sizeof(CallBytes) + n]);
    b->refs = 1;
    b->cls = cls;
    return b;
  }
  // The call lets go: freed (or kept) when no queue still holds the bytes.
  void unref(CallBytes* b) noexcept {
    if (--b->refs > 0) return;  // a queue frees it once written
    size_t size = b->cls == kUnpooled ? 0 : kMinClass << b->cls;
    if (b->cls == kUnpooled || kept_ + size > kMaxKept) {
      delete[] reinterpret_cast<char*>(b);
      return;
    }
    try {
      free_[b->cls].push_back(b);
      kept_ += size;
    } catch (...) {  // (out of memory for the list itself)
      delete[] reinterpret_cast<char*>(b);
    }
  }

  // Every kTrimPeriod while buffers wait: those of a period without a take go back to the
  // heap. False when nothing waits (no need to look again).
  bool trim() noexcept {
    if (takes_ == 0) {
      for (auto& list : free_) {
        for (CallBytes* b : list) delete[] reinterpret_cast<char*>(b);
        list.clear();
        list.shrink_to_fit();
      }
      kept_ = 0;
    }
    takes_ = 0;
    return kept_ > 0;
  }

 private:
  std::vector<CallBytes*> free_[kClasses];
  size_t kept_ = 0;
  uint64_t takes_ = 0;  // since the last trim()
};

// A routed call in flight, owned by whoever holds it: the handler, then the backend client's
// callback (a unique_ptr captured by it), so dropping the callback frees the call. Owns the
// caller's responder (and so the request's zone: params and names stay valid for retries).
struct Call {
  rpc::Responder reply;
  std::string_view service, method;
  Object params;
  // A raw invoke (the request never decoded): service, method and the params' bytes, copied
  // here once (inline when small, else in a pooled buffer: no allocation once warm);
  // `raw_params` then points into it (for retries on the next instance).
  char small[96];
  CallBytes* big = nullptr;
  CallBuffers* buffers = nullptr;
  std::string_view raw_params;  // empty for a decoded call (a params item is never empty)
  // Params from this size on are sent in place from `big` (OutQueue::appendRef) instead of
  // copied into the backend's queue; below it a copy costs less than a queue entry of their own.
  static constexpr size_t kInPlace = 1024;
  char* keep(size_t n, CallBuffers& from, bool& missed) {
    if (n <= sizeof small) return small;
    buffers = &from;
    big = from.take(n, missed);
    return big->data();
  }
  void release() noexcept {
    if (big) buffers->unref(std::exchange(big, nullptr));
  }
  Call() = default;
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;
  ~Call() { release(); }
  // Back to a fresh call (core::Pool): an unanswered reply answers InternalError, as at delete.
  void reset() noexcept {
    reply = rpc::Responder();
    service = method = {};
    params = Object();
    release();
    raw_params = {};
    hint = Hint{};
    instances = nullptr;
    table_gen = 0;
    start = 0;
    t0 = 0;
    tried_n = 0;
    tried_more.clear();
    batch.reset();
    item = 0;
  }
  Hint hint;
  Instances* instances = nullptr;  // the table entry as of generation `table_gen`
  uint64_t table_gen = 0;
  size_t start = 0;
  double t0 = 0;  // when it came in (loop time): aiorpc_proxy_call_duration_seconds
  // Backend ids tried: each instance at most once per call. Most calls try one, so the first
  // few live inline (no allocation per routed call).
  uint64_t tried_inline[4];
  uint8_t tried_n = 0;
  std::vector<uint64_t> tried_more;
  std::shared_ptr<Batch> batch;  // batch_invoke: where the outcome goes instead of `reply`
  size_t item = 0;
  void addTried(uint64_t id) {
    if (tried_n < 4) {
      tried_inline[tried_n++] = id;
    } else {
      tried_more.push_back(id);
    }
  }
  bool triedId(uint64_t id) const noexcept {
    for (uint8_t i = 0; i < tried_n; ++i)
      if (tried_inline[i] == id) return true;
    return std::find(tried_more.begin(), tried_more.end(), id) != tried_more.end();
  }
};

// Calls come from a pool owned by the role (no allocation per routed call once warm); the
// pointer's deleter gives a call back, so whoever holds it (the handler, then the backend
// client's callback) owns it as before.
using CallPtr = core::Pool<Call>::Ptr;

// Lookups by string_view without building a std::string.
using Table = std::unordered_map<std::string, Instances, core::StringHash, std::equal_to<>>;

// The first candidate: the hinted instance, or the next round-robin position (one step per
// routed call; retries continue from here without advancing it).
void start(Call& c, Instances& in) {
  c.start = c.hint.set ? c.hint.pick(in.list.size()) : in.rr++ % in.list.size();
}

// The kind a backend's error reply is counted under (read from its bytes when it came as bytes).
Kind errorKind(const rpc::Response& r) {
  return r.raw_error.empty() ? rpc::countedKind(r.error) : rpc::countedKind(r.raw_error);
}

// A backend's error reply that says the request did not run (SPEC §6: e.g. it is draining).
bool notExecuted(const rpc::Response& r) { return errorKind(r) == Kind::kServiceUnavailable; }

}  // namespace
}  // namespace aiorpc::agents::proxy

template <>
struct aiorpc::rpc::Encode<aiorpc::agents::proxy::BatchResults> {
  static void pack(Packer& p, const aiorpc::agents::proxy::BatchResults& r) {
    const auto& b = *r.b;
    p.array(static_cast<uint32_t>(b.out.size()));
    for (size_t i = 0; i < b.out.size(); ++i) {
      if (b.at[i].second > 0) {
        p.raw(std::string_view(b.bytes).substr(b.at[i].first, b.at[i].second));
      } else {
        p.pack(b.out[i].value);
      }
    }
  }
};

namespace aiorpc::agents::proxy {

class ProxyRole final : public RoleInstance {
 public:
  explicit ProxyRole(RoleEnv& env);
  ~ProxyRole() override;
  rpc::Service& service() override { return svc_; }
  void started(rpc::Server& server, const core::Address&) override;
  void stop(core::Callback<void()> done) override {
    stopping_ = true;
    done();
  }
  void writeMetrics(core::MetricsText& out) override;

 private:
  // invoke(service, method, params) in array or map form (with or without __hint__), taken as
  // bytes: false for any other shape (a negative hint, a context key...), which takes the
  // decoded handler.
  bool rawInvoke(rpc::RawRequest& rq);
  bool rawBatch(rpc::RawRequest& rq);
  // rawBatch's items as read (reused: no allocation per batch for the plan).
  struct RawItem {
    std::string_view item, service, method, params;  // views into the request
    Instances* in;
  };
  std::vector<RawItem> raw_plan_;
  // A raw call from the pool: `stretch`, the request's bytes that hold its service, method and
  // params (in any order, other bytes between), copied once into it; its views point into the
  // copy, which it keeps for retries.
  CallPtr rawCall(std::string_view stretch, std::string_view service, std::string_view method,
                  std::string_view params);
  // Parses a hint: nil/0 → none; a non-zero integer → set; anything else → error text.
  static std::optional<std::string> hintOf(Object h, Hint& out);
  // An invoke's first step: ServiceNotFound, or the first candidate and route().
  void admit(CallPtr c);
  // The call's first candidate in `in` (the table's entry now), then route().
  void startOn(CallPtr c, Instances& in);
  void route(CallPtr c);
  void sendTo(Backend& b, CallPtr c);
  void onReply(Backend& b, CallPtr c, rpc::Response& r);
  void finish(CallPtr c, rpc::Response& r);
  void fail(CallPtr c, Kind k, std::string msg);
  void deliver(Batch& b, size_t item, rpc::Outcome o);
  void deliverBytes(Batch& b, size_t item, std::string_view result);
  void answerBatch(Batch& b);
  void forwardNotification(std::string_view service, std::string_view method,
                           core::FunctionRef<void(rpc::Packer&)> params);
  void onBackendChange(Backend& b, Backend::Change c);
  void scheduleProbe(Backend& b);
  void probe(Backend& b);
  void refresh();
  void applyTable(Object services, bool keep = true);
  void onResolved(const std::string& name);
  void reapplySoon(double after);
  Backend* backendFor(std::string_view host, int64_t port);
  void sweepBackends();
  void packBackends(rpc::Packer& p) const;
  // The series of the call's service (null when the table no longer lists it).
  ServiceSeries* seriesOf(const Call& c) const;
  void count(const Call& c, size_t outcome) {
    if (!metrics_on_) return;
    if (ServiceSeries* s = seriesOf(c)) {
      ++s->outcomes.n[outcome];
      timings_.record(&s->latency, c.t0);
    }
  }

  core::Loop& loop_;
  rpc::Service svc_{"proxy"};
  std::vector<std::unique_ptr<rpc::Client>> keepalives_;  // --keepalive A,B,...: one watched
  std::vector<rpc::Target> keepalive_addrs_;
  size_t watching_ = 0, failed_in_round_ = 0;
  bool table_stale_ = false;  // no keepalive answered fresh in the last round
  double refresh_interval_, backend_timeout_;
  size_t max_queue_, max_backend_bytes_;
  EjectPolicy eject_;
  CallBuffers buffers_;           // before calls_: calls give their buffers back
  core::Pool<Call> calls_{4096};  // before backends_: their callbacks hold calls
  Table table_;
  // Every backend is in the table or has calls in flight; one that has neither is freed (the
  // bound on backends is the table's size plus those still answering).
  std::map<std::string, std::unique_ptr<Backend>, std::less<>> backends_;
  core::AllowList backend_allow_;  // instances outside are never dialled (empty: any)
  std::shared_ptr<core::TlsContext> backend_tls_;  // --backend-tls: every instance over TLS
  core::Resolver resolver_;                        // names keepalive lists: c-ares, cached
  rpc::Value last_services_;  // the last table, applied again when a name resolves
  std::string token_;         // sent to the keepalive as __auth__ when set
  uint64_t next_backend_id_ = 1;
  uint64_t version_ = 0;
  uint64_t table_gen_ = 1;  // bumped whenever table_ is replaced
  // The service looked up last, valid while table_gen_ is `last_gen_`: consecutive calls mostly
  // name one service, and a compare costs less than a hash and a probe.
  uint64_t last_gen_ = 0;
  std::string_view last_name_;  // the table's key
  Instances* last_ = nullptr;
  Instances* lookup(std::string_view service) {
    if (last_gen_ == table_gen_ && last_name_ == service) return last_;
    auto it = table_.find(service);
    if (it == table_.end()) return nullptr;
    last_gen_ = table_gen_;
    last_name_ = it->first;
    return last_ = &it->second;
  }
  bool use_watch_ = true, stopping_ = false;
  core::Loop::TimerId refresh_timer_ = 0, sweep_timer_ = 0, resolved_timer_ = 0, trim_timer_ = 0;
  void armTrim() {
    trim_timer_ = loop_.after(CallBuffers::kTrimPeriod, [this] {
      trim_timer_ = 0;
      if (buffers_.trim()) armTrim();
    });
  }
  static constexpr double kResolvedBatch = 0.05;
  double resolved_due_ = 0;  // when resolved_timer_ fires
  uint64_t table_applies_ = 0;
  bool metrics_on_ = false;  // the daemon serves --metrics-bind
  std::unordered_map<std::string, std::unique_ptr<ServiceSeries>> service_series_;
  core::Timings timings_{loop_};  // after the series it points into
};

ProxyRole::ProxyRole(RoleEnv& env)
    : loop_(env.loop),
      refresh_interval_(env.flags.seconds("refresh-interval")),
      backend_timeout_(env.flags.seconds("backend-timeout")),
      max_queue_(static_cast<size_t>(env.flags.count("max-backend-queue"))),
      max_backend_bytes_(static_cast<size_t>(env.flags.count("max-backend-bytes"))),
      eject_{static_cast<int>(env.flags.count("eject-after")), env.flags.seconds("eject-for"), 60},
      backend_allow_(*core::AllowList::parse(env.flags.str("backend-allow"))),
      resolver_(env.loop, core::ResolverOptions{.servers = env.flags.str("dns-servers")}),
      token_(env.auth_token) {
  if (env.flags.boolean("backend-tls"))
    backend_tls_ = env.tls_client ? env.tls_client : rpc::defaultTlsClient();
  if (!resolver_.ok()) throw std::invalid_argument(resolver_.error());
  keepalive_addrs_ = *Flags::endpointList(env.flags.str("keepalive"));
  // Registry replies are read whole up to 64 MiB, above the largest table a keepalive serves.
  rpc::ClientOptions ko;
  ko.tls = env.tls_client;  // for tls:// keepalives
  ko.limits.max_message_size = 64u << 20;
  static_assert(keepalive::kMaxTableBytes + (1u << 20) < (64u << 20));
  for (const auto& a : keepalive_addrs_)
    keepalives_.push_back(std::make_unique<rpc::Client>(env.loop, a, ko));
  resolver_.on_update = [this](const std::string& name) { onResolved(name); };
  svc_.def(
      "invoke",
      [this](const rpc::Context& ctx, std::string_view service, std::string_view method,
             Object params, rpc::Reply<Object> reply) {
        if (!reply.raw())
          return forwardNotification(service, method, [&](rpc::Packer& p) { p.object(params); });
        auto c = calls_.get();
        c->reply = std::move(reply.raw());
        c->service = service;
        c->method = method;
        c->params = params;
        if (auto h = ctx.find("__hint__")) {
          if (auto bad = hintOf(*h, c->hint)) return c->reply.error(Kind::kArgument, *bad);
        }
        admit(std::move(c));
      },
      rpc::arg("ctx"), rpc::arg("service"), rpc::arg("method"), rpc::arg("params"));
  svc_.raw(
      "invoke", [this](rpc::RawRequest& rq) { return rawInvoke(rq); }, true);

  svc_.def(
      "batch_invoke",
      [this](Object batches, rpc::Reply<Object> reply) {
        if (!batches.isArray()) return reply.error(Kind::kArgument, "batches: expected an array");
        // Check every item first; send nothing if one is bad.
        std::vector<std::pair<Instances*, Hint>> plan;
        for (uint32_t i = 0; i < batches.size(); ++i) {
          Object it = batches[i];
          std::string where = "item " + std::to_string(i) + ": ";
          if (!it.isArray() || (it.size() != 3 && it.size() != 4))
            return reply.error(Kind::kArgument,
                               where + "expected [service, method, params, hint?]");
          if (!it[0].isStrOrBin() || !it[1].isStrOrBin())
            return reply.error(Kind::kArgument, where + "service and method must be strings");
          Hint hint;
          if (it.size() == 4)
            if (auto bad = hintOf(it[3], hint)) return reply.error(Kind::kArgument, where + *bad);
          auto t = table_.find(it[0].str());
          if (t == table_.end() || t->second.list.empty())
            return reply.error(Kind::kServiceNotFound,
                               where + "no service '" + std::string(it[0].str()) + "'");
          plan.emplace_back(&t->second, hint);
        }
        if (!reply.raw()) return;  // a notification: nothing to answer, nothing worth sending
        auto b = std::make_shared<Batch>();
        b->reply = std::move(reply.raw());
        b->out.resize(plan.size());
        b->at.resize(plan.size());
        b->left = plan.size();
        if (plan.empty()) return b->reply.reply(std::vector<rpc::Value>{});
        for (uint32_t i = 0; i < plan.size(); ++i) {
          auto c = calls_.get();
          c->service = batches[i][0].str();
          c->method = batches[i][1].str();
          c->params = batches[i][2];
          c->hint = plan[i].second;
          c->batch = b;
          c->item = i;
          c->t0 = metrics_on_ ? loop_.now() : 0;
          startOn(std::move(c), *plan[i].first);
        }
      },
      rpc::arg("batches"));
  svc_.raw("batch_invoke", [this](rpc::RawRequest& rq) { return rawBatch(rq); });
}

namespace {
// invoke's params taken as bytes: [service, method, params] or {"service", "method", "params"
// [, "__hint__": nil or a non-negative integer]} in any order. False for anything else (another
// key, a repeated one, a negative hint...): the decoded handler answers those.
bool parseInvoke(std::string_view p, std::string_view& service, std::string_view& method,
                 std::string_view& params, std::optional<uint64_t>& hint) {
  if (p.empty()) return false;
  unsigned head = static_cast<unsigned char>(p[0]);
  size_t at = 1, len = 0;
  auto str = [&](std::string_view& out) {
    auto s = rpc::readStr(p.data() + at, p.size() - at, len);
    if (!s) return false;
    out = *s;
    at += len;
    return true;
  };
  if (head == 0x93) {
    if (!str(service) || !str(method)) return false;
    params = p.substr(at);  // the array was framed whole: the rest
    return !params.empty();
  }
  if (head != 0x83 && head != 0x84) return false;
  bool seen[4] = {};
  for (unsigned i = 0; i < (head & 0x0f); ++i) {
    std::string_view key;
    if (!str(key)) return false;
    int k = key == "service"    ? 0
            : key == "method"   ? 1
            : key == "params"   ? 2
            : key == "__hint__" ? 3
                                : -1;
    if (k < 0 || seen[k]) return false;
    seen[k] = true;
    if (k == 0 || k == 1) {
      if (!str(k == 0 ? service : method)) return false;
    } else if (k == 2) {
      size_t n = rpc::itemLength(p.data() + at, p.size() - at);
      if (n == 0) return false;
      params = p.substr(at, n);
      at += n;
    } else if (at < p.size() && p[at] == '\xc0') {  // nil: no hint
      ++at;
    } else {
      hint = rpc::readUint(p.data() + at, p.size() - at, len);
      if (!hint) return false;
      at += len;
    }
  }
  return seen[0] && seen[1] && seen[2] && at == p.size();
}
}  // namespace

// batch_invoke's params taken as bytes: [[[service, method, params], ...]] with every service
// in the table: each item's bytes copied once into its call, as rawInvoke does. Anything else
// (a hinted item, a bad one, an unknown service, an empty batch) is declined before anything
// is sent: the decoded handler answers it, naming the item.
bool ProxyRole::rawBatch(rpc::RawRequest& rq) {
  std::string_view p = rq.params;
  auto u = [&](size_t i) { return static_cast<unsigned char>(p[i]); };
  if (p.size() < 2 || u(0) != 0x91) return false;
  size_t n = 0, at = 2;
  if ((u(1) & 0xf0) == 0x90) {
    n = u(1) & 0x0f;
  } else if (u(1) == 0xdc && p.size() >= 4) {
    n = rpc::detail::bigEndian(reinterpret_cast<const unsigned char*>(p.data()) + 2, 2);
    at = 4;
  } else {
    return false;  // (0xdd: 65,536 items or more, beyond what we batch raw)
  }
  if (n == 0) return false;
  raw_plan_.clear();
  for (size_t i = 0; i < n; ++i) {
    RawItem it;
    size_t len = 0, begin = at;
    if (at >= p.size() || u(at) != 0x93) return false;  // [service, method, params] only
    ++at;
    auto service = rpc::readStr(p.data() + at, p.size() - at, len);
    if (!service) return false;
    at += len;
    auto method = rpc::readStr(p.data() + at, p.size() - at, len);
    if (!method) return false;
    at += len;
    size_t params = rpc::itemLength(p.data() + at, p.size() - at);
    if (params == 0) return false;
    it.service = *service;
    it.method = *method;
    it.params = p.substr(at, params);
    at += params;
    it.item = p.substr(begin, at - begin);
    it.in = lookup(it.service);
    if (!it.in || it.in->list.empty()) return false;
    raw_plan_.push_back(it);
  }
  if (at != p.size()) return false;
  auto b = std::make_shared<Batch>();
  b->reply = rq.detach();
  b->out.resize(n);
  b->at.resize(n);
  b->left = n;
  double t0 = metrics_on_ ? loop_.now() : 0;
  // (route() answers synchronously at most through the batch: nothing re-enters rawBatch.)
  for (uint32_t i = 0; i < n; ++i) {
    const RawItem& it = raw_plan_[i];
    auto c = rawCall(it.item, it.service, it.method, it.params);
    c->batch = b;
    c->item = i;
    c->t0 = t0;
    startOn(std::move(c), *it.in);
  }
  return true;
}

[[gnu::always_inline]] inline CallPtr ProxyRole::rawCall(std::string_view stretch,
                                                         std::string_view service,
                                                         std::string_view method,
                                                         std::string_view params) {
  auto c = calls_.get();
  bool missed = false;
  char* to = c->keep(stretch.size(), buffers_, missed);
  if (missed && !trim_timer_) armTrim();
  std::memcpy(to, stretch.data(), stretch.size());
  auto copied = [&](std::string_view v) {
    return std::string_view(to + (v.data() - stretch.data()), v.size());
  };
  c->service = copied(service);
  c->method = copied(method);
  c->raw_params = copied(params);
  return c;
}

bool ProxyRole::rawInvoke(rpc::RawRequest& rq) {
  std::string_view service, method, params;
  std::optional<uint64_t> hint;
  if (!parseInvoke(rq.params, service, method, params, hint)) return false;
  if (rq.notification) {
    forwardNotification(service, method, [&](rpc::Packer& p) { p.raw(params); });
    return true;
  }
  // One copy of the whole params item (array or map form: the keys and a hint come along).
  auto c = rawCall(rq.params, service, method, params);
  if (hint) c->hint = Hint::of(*hint);
  c->reply = rq.detach();
  admit(std::move(c));
  return true;
}

void ProxyRole::admit(CallPtr c) {
  c->t0 = metrics_on_ ? loop_.now() : 0;
  Instances* in = lookup(c->service);
  if (!in || in->list.empty()) {
    std::string msg = "no service '" + std::string(c->service) + "'";
    return c->reply.error(Kind::kServiceNotFound, msg);
  }
  startOn(std::move(c), *in);
}

[[gnu::always_inline]] inline void ProxyRole::startOn(CallPtr c, Instances& in) {
  start(*c, in);
  c->instances = &in;
  c->table_gen = table_gen_;
  route(std::move(c));
}

// Answers that arrive together are applied together: the table is applied again at most once
// per kResolvedBatch seconds, however many names a table holds (it was once per answer, and
// every application walks the whole table: quadratic in the names).
void ProxyRole::onResolved(const std::string& name) {
  core::log::debug("proxy: name {} resolved", name);
  reapplySoon(kResolvedBatch);
}

// One timer for both reasons: an answer (soon) brings forward a retry of failed names (later),
// never the other way round.
void ProxyRole::reapplySoon(double after) {
  double due = loop_.now() + after;
  if (resolved_timer_ && resolved_due_ <= due) return;
  loop_.cancel(resolved_timer_);
  resolved_due_ = due;
  resolved_timer_ = loop_.after(after, [this] {
    resolved_timer_ = 0;
    Object last = last_services_.view();
    if (last.isMap()) applyTable(last, false);
  });
}

ProxyRole::~ProxyRole() {
  // Timers first: nothing scheduled may run on a half-destroyed role. The backends' clients
  // then drop their pending calls without calling back (rpc::Client's destructor), so no
  // callback reaches a sibling backend already freed.
  loop_.cancel(refresh_timer_);
  loop_.cancel(sweep_timer_);
  loop_.cancel(resolved_timer_);
  loop_.cancel(trim_timer_);
  table_.clear();
  backends_.clear();
}

std::optional<std::string> ProxyRole::hintOf(Object h, Hint& out) {
  if (h.isNil()) return std::nullopt;
  if (auto u = h.asUint()) {
    out = Hint::of(*u);
    return std::nullopt;
  }
  if (auto v = h.asInt()) {  // negative: floor modulo
    out = Hint{true, true, uint64_t{0} - static_cast<uint64_t>(*v)};
    return std::nullopt;
  }
  return std::string("__hint__: expected an integer or nil, got ") + h.typeName();
}

void ProxyRole::route(CallPtr c) {
  if (c->table_gen != table_gen_) {  // the table changed (or a batch item): look it up again
    c->instances = lookup(c->service);
    c->table_gen = table_gen_;
  }
  if (!c->instances || c->instances->list.empty()) {
    // The message first: argument evaluation order is unspecified, and `c` moves.
    std::string msg = "no live instance of '" + std::string(c->service) + "'";
    return fail(std::move(c), Kind::kServiceUnavailable, std::move(msg));
  }
  auto& list = c->instances->list;
  size_t n = list.size();
  bool saw_full = false;
  auto usable = [&](Backend* b) {
    if (b->denied || c->triedId(b->id)) return false;  // outside --backend-allow: as refused
    if (b->in_flight >= max_queue_) return !(saw_full = true);
    return true;
  };
  Backend* pick = nullptr;
  if (c->hint.set) {
    // A hinted call stays on its instance, ejected or not (it may accept: a refused connect
    // comes back as not-sent and the call fails with ServiceUnavailable).
    Backend* b = list[c->start % n];
    if (usable(b)) pick = b;
  } else {
    for (size_t k = 0; k < n && !pick; ++k) {
      Backend* b = list[(c->start + k) % n];
      if (!b->eject.ejected() && usable(b)) pick = b;
    }
    // Panic routing: every candidate is ejected or has refused this call. Try the ejected ones
    // too, longest ejected first, before answering ServiceUnavailable.
    if (!pick) {
      for (Backend* b : list)
        if (b->eject.ejected() && usable(b) && (!pick || b->eject.since() < pick->eject.since()))
          pick = b;
    }
  }
  if (pick) return sendTo(*pick, std::move(c));
  std::string msg =
      saw_full ? "every instance of '" + std::string(c->service) + "' has a full queue"
               : "no live instance of '" + std::string(c->service) + "' could take the call";
  fail(std::move(c), saw_full ? Kind::kOverloaded : Kind::kServiceUnavailable, std::move(msg));
}

void ProxyRole::sendTo(Backend& b, CallPtr c) {
  ++b.requests;
  ++b.in_flight;
  c->addTried(b.id);
  Call* raw = c.get();  // stays valid: the callback owns the call until the reply
  std::string_view method = raw->method;
  // The callback is owned by b's client, so `b` outlives it (a client drops its callbacks,
  // uncalled, when destroyed).
  b.client.send(
      method,
      [raw](rpc::Packer& p) {
        if (raw->raw_params.size() >= Call::kInPlace && raw->big) {
          ++raw->big->refs;  // the queue's, until written (released on any throw)
          p.rawRef(raw->raw_params, &CallBytes::unrefFromQueue, raw->big);
        } else if (!raw->raw_params.empty()) {
          p.raw(raw->raw_params);  // the caller's bytes, as they came
        } else {
          p.object(raw->params);
        }
      },
      [this, bp = &b, call = std::move(c)](rpc::Response& r) mutable {
        onReply(*bp, std::move(call), r);
      },
      backend_timeout_, /*handle=*/false);  // never cancelled: no reference count per call
}

void ProxyRole::onReply(Backend& b, CallPtr c, rpc::Response& r) {
  using E = rpc::Ended;
  --b.in_flight;
  if (b.listed == 0 && b.in_flight == 0 && !sweep_timer_)
    sweep_timer_ = loop_.after(0, [this] { sweepBackends(); });
  auto retry = [&] {
    if (ServiceSeries* s = metrics_on_ ? seriesOf(*c) : nullptr) ++s->retries;
    route(std::move(c));
  };
  if (r.failed(Kind::kNotSent)) {  // never written (refused connect): the next instance
    ++b.errors;
    return retry();
  }
  if (r.type != E::kFailure) b.answered();
  if (r.type == E::kPeerError && notExecuted(r) && !c->hint.set) {
    ++b.errors;  // it did not run there (e.g. draining): the next instance, like a refusal
    return retry();
  }
  if (!r.ok()) ++b.errors;
  finish(std::move(c), r);
}

void ProxyRole::finish(CallPtr c, rpc::Response& r) {
  count(*c, r.type == rpc::Ended::kResult      ? 0
            : r.type == rpc::Ended::kPeerError ? 1 + static_cast<size_t>(errorKind(r))
                                               : 1 + static_cast<size_t>(r.kind));
  if (c->batch) {  // (kNotSent never gets here: such calls are routed again)
    if (r.type == rpc::Ended::kResult && !r.raw_result.empty())
      return deliverBytes(*c->batch, c->item, r.raw_result);
    return deliver(*c->batch, c->item, r.outcome());
  }
  switch (r.type) {
    case rpc::Ended::kResult:
      return c->reply.reply(rpc::Raw{r.raw_result});  // the backend's bytes, not re-encoded
    case rpc::Ended::kPeerError:
      if (!r.raw_error.empty()) return c->reply.errorBytes(r.raw_error);  // as it came
      return c->reply.errorObject(r.error);  // the backend's error, intact
    case rpc::Ended::kFailure:
      break;
  }
  c->reply.error(r.kind, r.kind == Kind::kTimeout ? "backend " + r.message : r.message);
}

void ProxyRole::fail(CallPtr c, Kind k, std::string msg) {
  count(*c, 1 + static_cast<size_t>(k));
  rpc::Outcome o = rpc::Outcome::failure(k, std::move(msg));
  if (c->batch) return deliver(*c->batch, c->item, std::move(o));
  c->reply.answer(o);
}

void ProxyRole::deliver(Batch& b, size_t item, rpc::Outcome o) {
  b.out[item] = std::move(o);
  if (--b.left == 0) answerBatch(b);
}

void ProxyRole::deliverBytes(Batch& b, size_t item, std::string_view result) {
  b.at[item] = {b.bytes.size(), result.size()};
  b.bytes.append(result);
  b.out[item] = rpc::Outcome::result(rpc::Value());  // ok: its bytes are in b.bytes
  if (--b.left == 0) answerBatch(b);
}

void ProxyRole::answerBatch(Batch& b) {
  for (size_t i = 0; i < b.out.size(); ++i) {
    rpc::Outcome& x = b.out[i];
    if (x.ok()) continue;
    std::string where = "item " + std::to_string(i) + ": ";
    if (x.type == rpc::Outcome::Type::kFailure) return b.reply.error(x.kind, where + x.message);
    // The backend's error: ours keeps its kind, a foreign one becomes ApplicationError text.
    Object e = x.value.view();
    if (e.isArray() && e.size() == 2 && e[0].isStrOrBin() && e[1].isStrOrBin() &&
        rpc::kindFromName(e[0].str()) != Kind::kOther)
      return b.reply.error(rpc::kindFromName(e[0].str()), where + std::string(e[1].str()));
    return b.reply.error(Kind::kApplication, where + e.toText(1000));
  }
  b.reply.reply(BatchResults{&b});
}

void ProxyRole::forwardNotification(std::string_view service, std::string_view method,
                                    core::FunctionRef<void(rpc::Packer&)> params) {
  // SPEC §6: a notification is forwarded as a notification (no reply, no queue slot), to the
  // next round-robin instance that is not ejected.
  Instances* found = lookup(service);
  if (!found || found->list.empty()) return;
  auto& in = *found;
  size_t n = in.list.size(), first = in.rr++ % n;
  for (size_t k = 0; k < n; ++k) {
    Backend* b = in.list[(first + k) % n];
    if (b->eject.ejected() || b->denied) continue;
    ++b->requests;
    return b->client.sendNotify(method, params);
  }
}

void ProxyRole::onBackendChange(Backend& b, Backend::Change c) {
  if (c == Backend::Change::kReadmitted) {
    loop_.cancel(b.probe_timer);
    b.probe_timer = 0;
    return core::log::info("proxy: backend {} re-admitted", b.name);
  }
  core::log::info("proxy: backend {} ejected for {} s after failed connects", b.name,
                  b.eject.period());
  scheduleProbe(b);
}

void ProxyRole::scheduleProbe(Backend& b) {
  loop_.cancel(b.probe_timer);
  b.probe_timer = loop_.after(std::max(0.0, b.eject.until() - loop_.now()), [this, bp = &b] {
    bp->probe_timer = 0;  // the backend cancels this timer when it is freed
    probe(*bp);
  });
}

void ProxyRole::probe(Backend& b) {
  if (!b.eject.probeDue(loop_.now())) return;
  if (b.client.connected()) return b.connectResult(true);  // a panic-routed call reconnected
  b.eject.probeStarted();
  b.client.connectNow();  // its outcome comes back through onConnectResult
}

Backend* ProxyRole::backendFor(std::string_view host, int64_t port) {
  // (host, port) as data: an IP literal (or "localhost") and a port, never a parsed string, so
  // a record cannot name a unix socket or anything else. Names are resolved by c-ares on the
  // loop (never blocking it): until their first answer they are left out.
  auto addr = core::Address::fromIp(host, static_cast<int>(port));
  if (!addr) {
    // A DNS name: resolved by c-ares on the loop, never blocking it. Until its first answer
    // (and while it does not resolve) the instance is skipped like one that refuses; the
    // table is applied again when the answer comes.
    std::string name(host);
    if (!core::Resolver::isName(name)) return nullptr;
    const auto* addrs = resolver_.lookup(name);
    if (!addrs || addrs->empty()) return nullptr;
    addr = (*addrs)[0];
    addr->setPort(static_cast<int>(port));
  }
  std::string name = addr->toString();
  auto it = backends_.find(name);
  if (it != backends_.end()) return it->second.get();
  rpc::ClientOptions o;
  o.raw_results = true;  // results are forwarded as the backend encoded them
  o.timeout = backend_timeout_;
  o.dead_after = 1 << 30;  // the proxy ejects by its own policy
  o.max_output = max_backend_bytes_;
  if (backend_tls_) {
    o.tls = backend_tls_;
    o.server_name = std::string(host);  // the name it registered: what its certificate names
  }
  auto b = std::make_unique<Backend>(loop_, next_backend_id_++, name, *addr, o, eject_);
  Backend* bp = b.get();
  bp->denied = !backend_allow_.allows(*addr);
  if (bp->denied)
    core::log::warn("proxy: instance {} is outside --backend-allow: never dialled", bp->name);
  bp->on_change = [this](Backend& x, Backend::Change c) { onBackendChange(x, c); };
  backends_.emplace(std::move(name), std::move(b));
  return bp;
}

void ProxyRole::applyTable(Object services, bool keep) {
  if (!services.isMap()) return;
  if (keep) last_services_ = rpc::Value::copyOf(services);  // applied again when a name resolves
  Table next;
  for (auto& [name, b] : backends_) b->listed = 0;
  size_t skipped = 0;
  for (uint32_t i = 0; i < services.size(); ++i) {
    if (!services.key(i).isStrOrBin() || !services.val(i).isArray()) continue;
    Instances in;
    Object list = services.val(i);
    for (uint32_t k = 0; k < list.size(); ++k) {
      auto ep = list[k].find("endpoint");
      if (!ep || !ep->isArray() || ep->size() != 2 || !(*ep)[0].isStrOrBin()) continue;
      auto port = (*ep)[1].asInt();
      if (!port || *port < 1 || *port > 65535) continue;
      Backend* b = backendFor((*ep)[0].str(), *port);
      if (!b) {
        ++skipped;
        continue;
      }
      ++b->listed;
      in.list.push_back(b);
    }
    std::string name(services.key(i).str());
    auto old = table_.find(name);
    if (old != table_.end() && old->second.list == in.list) in.rr = old->second.rr;  // unchanged
    auto& series = service_series_[name];
    if (!series) series = std::make_unique<ServiceSeries>();
    in.series = series.get();
    next.emplace(std::move(name), std::move(in));
  }
  if (skipped) {
    core::log::debug("proxy: {} instance(s) left out: their names have not resolved (yet)",
                     skipped);
    // A name that failed (a timeout, no answer yet) is looked up again once its negative
    // answer expires: the table is applied again then, not only at its next change.
    reapplySoon(resolver_.options().negative_ttl);
  }
  ++table_applies_;
  size_t before = 0, after = 0;
  for (auto& [n, in] : table_) before += in.list.size();
  for (auto& [n, in] : next) after += in.list.size();
  if (before != after || table_.size() != next.size())
    core::log::info("proxy: table now {} service(s), {} instance(s)", next.size(), after);
  table_ = std::move(next);
  ++table_gen_;
  // Series only for the services the table holds (SPEC §9): observations pending go in first.
  if (service_series_.size() > table_.size()) {
    timings_.settle();
    std::erase_if(service_series_, [this](const auto& kv) { return !table_.count(kv.first); });
  }
  sweepBackends();
}

ServiceSeries* ProxyRole::seriesOf(const Call& c) const {
  if (c.table_gen == table_gen_ && c.instances) return c.instances->series;
  auto it = table_.find(c.service);
  return it == table_.end() ? nullptr : it->second.series;
}

void ProxyRole::writeMetrics(core::MetricsText& out) {
  using T = core::MetricsText::Type;
  timings_.settle();
  // The table's order is a hash's: sorted names give scrapes that read the same way.
  std::vector<std::pair<const std::string*, const Instances*>> services;
  services.reserve(table_.size());
  for (const auto& [name, in] : table_) services.emplace_back(&name, &in);
  std::sort(services.begin(), services.end(),
            [](const auto& a, const auto& b) { return *a.first < *b.first; });
  out.family("aiorpc_proxy_calls_total", T::kCounter,
             "Calls routed (invoke and batch_invoke items), by service and outcome.");
  for (auto [name, in] : services)
    in->series->outcomes.write(out, "aiorpc_proxy_calls_total", "service", *name);
  out.family("aiorpc_proxy_call_duration_seconds", T::kHistogram,
             "Time from a call's arrival to its answer, retries included, by service.");
  for (auto [name, in] : services)
    out.histogram("aiorpc_proxy_call_duration_seconds", {{"service", *name}}, in->series->latency);
  out.family("aiorpc_proxy_retries_total", T::kCounter,
             "Calls sent again to another instance (the first refused or did not run them).");
  for (auto [name, in] : services)
    out.sample("aiorpc_proxy_retries_total", {{"service", *name}}, in->series->retries);
  auto backends = [&](std::string_view family, T type, std::string_view help, auto value) {
    out.family(family, type, help);
    for (auto [name, in] : services)
      for (const Backend* b : in->list)
        out.sample(family, {{"service", *name}, {"endpoint", b->name}}, value(*b));
  };
  backends("aiorpc_proxy_backend_up", T::kGauge,
           "1 while an instance is routable, 0 while ejected (or outside --backend-allow).",
           [](const Backend& b) { return b.eject.ejected() || b.denied ? 0.0 : 1.0; });
  backends("aiorpc_proxy_backend_in_flight", T::kGauge,
           "Calls sent to an instance and not answered yet.",
           [](const Backend& b) { return static_cast<double>(b.in_flight); });
  backends("aiorpc_proxy_backend_ejections_total", T::kCounter,
           "Times an instance was ejected after failed connects.",
           [](const Backend& b) { return b.eject.ejections(); });
  out.gauge("aiorpc_proxy_registry_stale",
            "1 while no keepalive answered with a fresh table in the last round.",
            table_stale_ ? 1.0 : 0.0);
}

void ProxyRole::sweepBackends() {
  sweep_timer_ = 0;
  // An instance that is in no table and has nothing in flight is freed; if keepalive lists it
  // again later it starts afresh (un-ejected), as SPEC §6 asks.
  for (auto it = backends_.begin(); it != backends_.end();) {
    if (it->second->listed == 0 && it->second->in_flight == 0) {
      it = backends_.erase(it);
    } else {
      ++it;
    }
  }
}

// One keepalive at a time (SPEC §5, several keepalives): the next one on an error, a timeout,
// ServiceUnavailable or a stale answer, carrying the version; the last table keeps routing
// meanwhile. After a round in which none answered fresh, the next round waits
// --refresh-interval.
void ProxyRole::refresh() {
  refresh_timer_ = 0;
  if (stopping_) return;
  auto again = [this](double after) {
    if (!stopping_) refresh_timer_ = loop_.after(after, [this] { refresh(); });
  };
  auto moveOn = [this, again] {
    watching_ = (watching_ + 1) % keepalives_.size();
    if (++failed_in_round_ < keepalives_.size()) return again(0);
    failed_in_round_ = 0;
    table_stale_ = true;
    again(refresh_interval_);  // every keepalive down or stale: keep the last table, cycle on
  };
  rpc::Client& keepalive = *keepalives_[watching_];
  if (use_watch_) {
    double wait_ms = 30000;
    keepalive.send(
        "watch",
        [&](rpc::Packer& p) {
          if (token_.empty()) {
            p.pack(std::tuple{version_, wait_ms});
            return;
          }
          p.map(3);  // a keepalive with --auth-reads wants the token: map form carries it
          p.str("version"), p.uinteger(version_);
          p.str("wait_ms"), p.real(wait_ms);
          p.str("__auth__"), p.str(token_);
        },
        [this, again, moveOn](rpc::Response& r) {
          if (r.ok()) {
            auto v = r.result.find("version");
            auto s = r.result.find("services");
            auto stale = r.result.find("stale");
            bool is_stale =
                stale && stale->raw().type == MSGPACK_OBJECT_BOOLEAN && stale->raw().via.boolean;
            if (v && s && v->asUint() && !is_stale) {
              version_ = *v->asUint();
              failed_in_round_ = 0;
              table_stale_ = false;
              applyTable(*s);
              return again(0);
            }
            if (is_stale) return moveOn();
          }
          // An older keepalive without watch: poll it.
          if (r.type == rpc::Ended::kPeerError && rpc::countedKind(r.error) == Kind::kNoMethod) {
            use_watch_ = false;
            return again(0);
          }
          moveOn();  // unreachable, timed out, ServiceUnavailable: the next keepalive
        },
        wait_ms / 1000 + 5);
    return;
  }
  keepalive.send(
      "get_services",
      [this](rpc::Packer& p) {
        if (token_.empty()) {
          p.array(0);
          return;
        }
        p.map(1);
        p.str("__auth__"), p.str(token_);
      },
      [this, again, moveOn](rpc::Response& r) {
        if (!r.ok()) return moveOn();
        failed_in_round_ = 0;
        table_stale_ = false;
        applyTable(r.result);
        again(refresh_interval_);
      });
}

void ProxyRole::packBackends(rpc::Packer& p) const {
  p.map(static_cast<uint32_t>(backends_.size()));
  for (const auto& [name, b] : backends_) {
    p.str(name);
    p.map(8);
    p.str("requests"), p.uinteger(b->requests);
    p.str("errors"), p.uinteger(b->errors);
    p.str("in_flight"), p.uinteger(b->in_flight);
    p.str("ejected"), p.boolean(b->eject.ejected());
    p.str("ejections"), p.uinteger(b->eject.ejections());
    p.str("connect_failures"), p.uinteger(b->eject.connectFailures());
    p.str("period_s"), p.real(b->eject.period());
    p.str("denied"), p.boolean(b->denied);  // outside --backend-allow
  }
}

void ProxyRole::started(rpc::Server& server, const core::Address&) {
  metrics_on_ = server.metricsEnabled();
  server.addStats("backends", [this](rpc::Packer& p) { packBackends(p); });
  server.addStats("registry", [this](rpc::Packer& p) {
    p.map(4);
    p.str("keepalive"), p.str(keepalive_addrs_[watching_].toString());
    p.str("stale"), p.boolean(table_stale_);
    p.str("version"), p.uinteger(version_);
    p.str("table_applies"), p.uinteger(table_applies_);
  });
  refresh();
}

const FlagSpec kFlags[9] = {
    {"dns-servers", FlagType::kString, "",
     "IP[:PORT],... to resolve instance names with (default: the system's resolv.conf)"},
    {"max-backend-bytes", FlagType::kBytes, "71303168",
     "bytes of requests queued for one instance before it counts as broken (68 MiB)"},
    {"backend-allow", FlagType::kAllowList, "",
     "dial only instances inside these CIDR ranges (default: any)"},
    {"backend-tls", FlagType::kBool, "false",
     "dial every instance with TLS (verified with --tls-ca against the host it registered)"},
    {"refresh-interval", FlagType::kSeconds, "3", "seconds between table refreshes (polling)"},
    {"backend-timeout", FlagType::kSeconds, "9", "seconds to wait for a backend's reply"},
    {"max-backend-queue", FlagType::kCount, "65536",
     "requests per instance unwritten or in flight"},
    {"eject-after", FlagType::kCount, "3",
     "failed connects in a row before an instance is ejected"},
    {"eject-for", FlagType::kSeconds, "5",
     "first ejection period, seconds (doubles per failed probe, at most 60)"},
};

std::unique_ptr<RoleInstance> create(RoleEnv& env) {
  if (!env.flags.has("keepalive"))
    throw std::invalid_argument("--keepalive HOST:PORT is required for the proxy");
  return std::make_unique<ProxyRole>(env);
}

}  // namespace aiorpc::agents::proxy
