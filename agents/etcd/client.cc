// etcd v3 JSON gateway client.
#include "aiorpc/agents/etcd/client.h"

#include <charconv>
#include <nlohmann/json.hpp>

#include "aiorpc/core/log.h"

namespace aiorpc::agents::etcd {

using nlohmann::json;

namespace {

const char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string b64(std::string_view in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = static_cast<uint8_t>(in[i]) << 16 | static_cast<uint8_t>(in[i + 1]) << 8 |
                 static_cast<uint8_t>(in[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out += kB64[(v >> s) & 63];
  }
  if (size_t r = in.size() - i) {
    uint32_t v = static_cast<uint8_t>(in[i]) << 16;
    if (r == 2) v |= static_cast<uint8_t>(in[i + 1]) << 8;
    out += kB64[(v >> 18) & 63];
    out += kB64[(v >> 12) & 63];
    out += r == 2 ? kB64[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string unb64(std::string_view in) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    const char* p = c ? std::strchr(kB64, c) : nullptr;
    if (!p) continue;  // '=' padding (etcd's own output is valid base64)
    acc = acc << 6 | static_cast<uint32_t>(p - kB64);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  return out;
}

// Anything the gateway sends that is not what etcd sends: the line or body is dropped whole.
struct Malformed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// int64 fields arrive as strings; absent means 0 (defaults are omitted).
int64_t i64(const json& j, const char* key) {
  if (!j.is_object()) throw Malformed(std::string("not an object where '") + key + "' belongs");
  auto it = j.find(key);
  if (it == j.end()) return 0;
  if (it->is_number_integer()) return it->get<int64_t>();
  if (!it->is_string()) throw Malformed(std::string("'") + key + "' is not an integer");
  const std::string& t = it->get_ref<const std::string&>();
  int64_t v = 0;
  auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
  if (ec != std::errc() || end != t.data() + t.size() || t.empty())
    throw Malformed(std::string("'") + key + "' is not an integer");
  return v;
}

std::string str(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) return std::string();
  if (!it->is_string()) throw Malformed(std::string("'") + key + "' is not a string");
  return unb64(it->get_ref<const std::string&>());
}

// j[key] if it is an object (absent: an empty one); anything else is malformed.
const json& obj(const json& j, const char* key) {
  static const json kEmpty = json::object();
  if (!j.is_object()) throw Malformed(std::string("not an object where '") + key + "' belongs");
  auto it = j.find(key);
  if (it == j.end()) return kEmpty;
  if (!it->is_object()) throw Malformed(std::string("'") + key + "' is not an object");
  return *it;
}
const json& arr(const json& j, const char* key) {
  static const json kEmpty = json::array();
  auto it = j.find(key);
  if (it == j.end()) return kEmpty;
  if (!it->is_array()) throw Malformed(std::string("'") + key + "' is not an array");
  return *it;
}

KeyValue kvOf(const json& j) {
  if (!j.is_object()) throw Malformed("a key-value that is not an object");
  KeyValue kv;
  kv.key = str(j, "key");
  kv.value = str(j, "value");
  kv.create_revision = i64(j, "create_revision");
  kv.mod_revision = i64(j, "mod_revision");
  kv.lease = i64(j, "lease");
  return kv;
}

bool boolean(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) return false;
  if (!it->is_boolean()) throw Malformed(std::string("'") + key + "' is not a boolean");
  return it->get<bool>();
}

std::string num(int64_t v) { return std::to_string(v); }

}  // namespace

std::string prefixEnd(std::string prefix) {
  while (!prefix.empty()) {
    if (static_cast<uint8_t>(prefix.back()) < 0xff) {
      prefix.back() = static_cast<char>(prefix.back() + 1);
      return prefix;
    }
    prefix.pop_back();
  }
  return std::string(1, '\0');  // every key
}

struct Client::Call {
  const char* path;
  std::string body;
  core::Callback<void(Status, std::string&)> done;
  size_t tried = 0;
  std::string last_error;
};

struct Client::WatchState {
  WatchId id;
  core::Http::Id http = 0;
  size_t endpoint = 0;
  std::string line;  // a response object not yet complete
  core::Callback<void(std::vector<Event>&, int64_t)> events;
  core::Callback<void()> created;
  core::Callback<void(Status, int64_t)> ended;
};

Client::Client(core::Loop& loop, Options opts)
    : loop_(loop), opts_(std::move(opts)), http_(loop), watches_(std::make_shared<Watches>()) {
  if (opts_.endpoints.empty()) throw std::invalid_argument("etcd: no endpoint");
}

Client::~Client() = default;

Client::WatchState* Client::find(const std::weak_ptr<Watches>& table, WatchId id) noexcept {
  auto t = table.lock();
  if (!t) return nullptr;
  for (const auto& w : *t)
    if (w->id == id) return w.get();
  return nullptr;
}

void Client::post(const char* path, std::string body,
                  core::Callback<void(Status, std::string&)> done) {
  auto call = std::make_shared<Call>();
  call->path = path;
  call->body = std::move(body);
  call->done = std::move(done);
  if (in_flight_ >= opts_.max_in_flight) {
    if (queue_.size() >= opts_.max_queued) {
      Status s{false, "etcd client: over " + std::to_string(opts_.max_queued) + " calls waiting",
               true};
      tasks_.post([call, s]() mutable {  // ours: dropped uncalled if this client goes first
        std::string none;
        call->done(s, none);
      });
      return;
    }
    queue_.push_back(std::move(call));
    return;
  }
  ++in_flight_;
  attempt(std::move(call));
}

void Client::next() {
  --in_flight_;
  if (queue_.empty()) return;
  auto call = std::move(queue_.front());
  queue_.pop_front();
  ++in_flight_;
  attempt(std::move(call));
}

// One endpoint after another until one answers (any HTTP status below 500: the request was
// handled) or every one has failed once.
void Client::attempt(std::shared_ptr<Call> call) {
  size_t idx = current_;
  core::HttpRequest req;
  req.url = base(idx) + call->path;
  if (opts_.https) req.tls = &opts_.tls;
  req.body = call->body;
  req.timeout = opts_.timeout;
  req.connect_timeout = std::min(opts_.timeout, 1.0);
  http_.request(std::move(req), [this, call, idx, t0 = loop_.now()](core::HttpResponse& r) {
    bool answered = r.error.empty() && r.status > 0 && r.status < 500;
    ++(!answered ? metrics_.failed : r.status == 200 ? metrics_.ok : metrics_.refused);
    timings_.record(&metrics_.latency, t0);
    if (answered) {
      current_ = idx;
      next();
      if (r.status == 200) return call->done(Status{}, r.body);
      std::string msg;
      try {
        msg = json::parse(r.body).value("message", r.body);
      } catch (const std::exception&) {
        msg = r.body;
      }
      return call->done(Status{false, fmt::format("HTTP {}: {}", r.status, msg)}, r.body);
    }
    call->last_error = fmt::format("{}: {}", opts_.endpoints[idx],
                                   r.error.empty() ? fmt::format("HTTP {}", r.status) : r.error);
    if (++call->tried >= opts_.endpoints.size()) {
      next();
      return call->done(Status{false, call->last_error}, r.body);
    }
    if (current_ == idx) current_ = (idx + 1) % opts_.endpoints.size();
    attempt(call);
  });
}

// Pages of at most `limit` keys, every page read at the first one's revision (one snapshot);
// a page that fails is asked again once with a quarter of the limit (a page of huge values can
// pass the body limit), down to one key per page.
struct Client::RangeRead {
  std::string from, end;
  int64_t revision = 0;
  int64_t limit = 512;
  bool retried = false;
  std::vector<KeyValue> kvs;
  core::Callback<void(Status, int64_t, std::vector<KeyValue>&)> done;
};

void Client::range(const std::string& prefix,
                   core::Callback<void(Status, int64_t, std::vector<KeyValue>&)> done) {
  auto r = std::make_shared<RangeRead>();
  r->from = prefix;
  r->end = prefixEnd(prefix);
  r->done = std::move(done);
  rangePage(std::move(r));
}

void Client::rangePage(std::shared_ptr<RangeRead> r) {
  json body = {{"key", b64(r->from)}, {"range_end", b64(r->end)}, {"limit", num(r->limit)}};
  if (r->revision) body["revision"] = num(r->revision);
  post("/v3/kv/range", body.dump(), [this, r](Status s, std::string& text) mutable {
    bool more = false;
    if (s) try {
        json j = json::parse(text);
        if (!r->revision) r->revision = i64(obj(j, "header"), "revision");
        const json& kvs = arr(j, "kvs");
        for (const auto& kv : kvs) r->kvs.push_back(kvOf(kv));
        more = boolean(j, "more") && !kvs.empty();
        if (more) r->from = r->kvs.back().key + std::string(1, '\0');
      } catch (const std::exception& e) {
        ++malformed_;
        s = Status{false, std::string("etcd range: ") + e.what()};
      }
    if (!s && r->limit > 1 && !r->retried) {
      r->limit = std::max<int64_t>(1, r->limit / 4);
      r->retried = true;
      return rangePage(std::move(r));
    }
    if (!s) {
      r->kvs.clear();
      return r->done(s, 0, r->kvs);
    }
    r->retried = false;
    if (more) return rangePage(std::move(r));
    r->done(s, r->revision, r->kvs);
  });
}

void Client::get(const std::string& key,
                 core::Callback<void(Status, std::optional<KeyValue>)> done) {
  json body = {{"key", b64(key)}};
  post("/v3/kv/range", body.dump(),
       [this, done = std::move(done)](Status s, std::string& text) mutable {
         if (!s) return done(s, std::nullopt);
         std::optional<KeyValue> kv;
         try {
           json j = json::parse(text);
           for (const auto& one : arr(j, "kvs")) kv = kvOf(one);
         } catch (const std::exception& e) {
           ++malformed_;
           return done(Status{false, std::string("etcd range: ") + e.what()}, std::nullopt);
         }
         done(s, std::move(kv));
       });
}

void Client::grant(int64_t ttl, core::Callback<void(Status, int64_t, int64_t)> done) {
  json body = {{"TTL", num(ttl)}};
  post("/v3/lease/grant", body.dump(),
       [done = std::move(done)](Status s, std::string& text) mutable {
         if (!s) return done(s, 0, 0);
         try {
           json j = json::parse(text);
           done(s, i64(j, "ID"), i64(j, "TTL"));
         } catch (const std::exception& e) {
           done(Status{false, std::string("etcd grant: ") + e.what()}, 0, 0);
         }
       });
}

void Client::keepAlive(int64_t lease, core::Callback<void(Status, int64_t)> done) {
  json body = {{"ID", num(lease)}};
  post("/v3/lease/keepalive", body.dump(),
       [done = std::move(done)](Status s, std::string& text) mutable {
         if (!s) return done(s, 0);
         try {
           // One object (or one per line, the gateway streams): {"result": {"ID", "TTL"}}; no
           // TTL when the lease is gone.
           std::string first = text.substr(0, text.find('\n'));
           json j = json::parse(first);
           if (j.contains("error")) return done(Status{false, j["error"].dump()}, 0);
           done(s, i64(obj(j, "result"), "TTL"));
         } catch (const std::exception& e) {
           done(Status{false, std::string("etcd keepalive: ") + e.what()}, 0);
         }
       });
}

void Client::revoke(int64_t lease, core::Callback<void(Status, bool)> done) {
  json body = {{"ID", num(lease)}};
  post("/v3/lease/revoke", body.dump(),
       [done = std::move(done)](Status s, std::string& text) mutable {
         if (!s && text.find("lease not found") != std::string::npos) return done(Status{}, false);
         done(s, static_cast<bool>(s));
       });
}

namespace {
json compareFor(const std::string& key, int64_t expect_mod) {
  return expect_mod == 0
             ? json{{"key", b64(key)}, {"target", "CREATE"}, {"create_revision", "0"}}
             : json{{"key", b64(key)}, {"target", "MOD"}, {"mod_revision", num(expect_mod)}};
}
json putOp(const std::string& key, const std::string& value, int64_t lease) {
  json put = {{"key", b64(key)}, {"value", b64(value)}};
  if (lease) put["lease"] = num(lease);
  return {{"request_put", put}};
}
}  // namespace

void Client::putIf(const std::string& key, const std::string& value, int64_t lease,
                   int64_t expect_mod,
                   core::Callback<void(Status, bool, std::optional<KeyValue>)> done) {
  json body = {{"compare", json::array({compareFor(key, expect_mod)})},
               {"success", json::array({putOp(key, value, lease)})},
               {"failure", json::array({{{"request_range", {{"key", b64(key)}}}}})}};
  post("/v3/kv/txn", body.dump(),
       [this, done = std::move(done)](Status s, std::string& text) mutable {
         if (!s) return done(s, false, std::nullopt);
         try {
           json j = json::parse(text);
           if (boolean(j, "succeeded")) return done(s, true, std::nullopt);
           std::optional<KeyValue> current;
           for (const auto& r : arr(j, "responses"))
             for (const auto& kv : arr(obj(r, "response_range"), "kvs")) current = kvOf(kv);
           done(s, false, std::move(current));
         } catch (const std::exception& e) {
           ++malformed_;
           done(Status{false, std::string("etcd txn: ") + e.what()}, false, std::nullopt);
         }
       });
}

// A transaction whose caller wants only whether its comparisons held.
void Client::txn(std::string body, core::Callback<void(Status, bool)> done) {
  post("/v3/kv/txn", std::move(body),
       [this, done = std::move(done)](Status s, std::string& text) mutable {
         if (!s) return done(s, false);
         try {
           done(s, boolean(json::parse(text), "succeeded"));
         } catch (const std::exception& e) {
           ++malformed_;
           done(Status{false, std::string("etcd txn: ") + e.what()}, false);
         }
       });
}

void Client::putAll(const std::vector<Put>& puts, core::Callback<void(Status, bool)> done) {
  json cmp = json::array(), ops = json::array();
  for (const auto& p : puts) {
    cmp.push_back(compareFor(p.key, p.expect_mod));
    ops.push_back(putOp(p.key, p.value, p.lease));
  }
  txn(json{{"compare", cmp}, {"success", ops}}.dump(), std::move(done));
}

void Client::removeIf(const std::string& key, int64_t expect_mod,
                      core::Callback<void(Status, bool)> done) {
  json del = {{"request_delete_range", {{"key", b64(key)}}}};
  txn(json{{"compare", json::array({compareFor(key, expect_mod)})}, {"success", json::array({del})}}
          .dump(),
      std::move(done));
}

void Client::put(const std::string& key, const std::string& value, int64_t lease,
                 core::Callback<void(Status)> done) {
  json body = {{"key", b64(key)}, {"value", b64(value)}};
  if (lease) body["lease"] = num(lease);
  post("/v3/kv/put", body.dump(),
       [done = std::move(done)](Status s, std::string&) mutable { done(s); });
}

void Client::remove(const std::string& key, core::Callback<void(Status)> done) {
  json body = {{"key", b64(key)}};
  post("/v3/kv/deleterange", body.dump(),
       [done = std::move(done)](Status s, std::string&) mutable { done(s); });
}

Client::WatchId Client::watch(const std::string& prefix, int64_t from, size_t endpoint,
                              core::Callback<void(std::vector<Event>&, int64_t)> events,
                              core::Callback<void()> created,
                              core::Callback<void(Status, int64_t)> ended) {
  auto w = std::make_unique<WatchState>();
  w->id = ++last_watch_;
  w->endpoint = endpoint % opts_.endpoints.size();
  w->events = std::move(events);
  w->created = std::move(created);
  w->ended = std::move(ended);
  // fragment: etcd splits a response bigger than its request limit (a catch-up over many
  // revisions) instead of sending one unbounded line.
  json create = {{"key", b64(prefix)}, {"range_end", b64(prefixEnd(prefix))}, {"fragment", true}};
  if (from > 0) create["start_revision"] = num(from);
  core::HttpRequest req;
  req.url = base(w->endpoint) + "/v3/watch";
  if (opts_.https) req.tls = &opts_.tls;
  req.body = json{{"create_request", create}}.dump();
  req.headers.push_back("Grpc-Metadata-hasleader: true");  // no leader: the stream ends
  req.timeout = 0;
  req.connect_timeout = std::min(opts_.timeout, 1.0);
  WatchState* ws = w.get();
  WatchId id = w->id;
  auto finish = [this, id](Status s, int64_t compact) {
    for (auto it = watches_->begin(); it != watches_->end(); ++it) {
      if ((*it)->id != id) continue;
      auto w = std::move(*it);
      watches_->erase(it);
      if (w->http) http_.cancel(w->http);
      if (w->ended) w->ended(s, compact);
      return;
    }
  };
  ws->http = http_.stream(
      std::move(req),
      [this, ws, id, finish](std::string_view data) {
        // Each byte is scanned for a newline once; a line longer than the limit ends the watch
        // (it is started again from the last revision applied).
        size_t scanned = ws->line.size();
        ws->line.append(data);
        size_t start = 0, nl;
        // Copies: the user may destroy the client (and this callback with it) or cancel.
        std::weak_ptr<Watches> table = watches_;
        const WatchId wid = id;
        while ((nl = ws->line.find('\n', scanned)) != std::string::npos) {
          std::string_view one(ws->line.data() + start, nl - start);
          scanned = start = nl + 1;
          if (one.empty()) continue;
          std::vector<Event> evs;
          int64_t rev = 0;
          bool was_created = false;
          try {
            json j = json::parse(one);
            if (j.is_object() && j.contains("error"))
              return finish(Status{false, "etcd watch: " + j["error"].dump()}, 0);
            const json& r = obj(j, "result");
            if (boolean(r, "canceled")) {
              int64_t compact = i64(r, "compact_revision");
              auto reason = r.find("cancel_reason");
              return finish(
                  Status{false, "etcd watch canceled: " + (reason != r.end() && reason->is_string()
                                                               ? reason->get<std::string>()
                                                               : std::string())},
                  compact);
            }
            was_created = boolean(r, "created");
            for (const auto& e : arr(r, "events")) {
              Event ev;
              auto type = e.is_object() ? e.find("type") : e.end();
              if (type != e.end() && !type->is_string()) throw Malformed("'type' is not a string");
              ev.deleted = type != e.end() && type->get_ref<const std::string&>() == "DELETE";
              ev.kv = kvOf(obj(e, "kv"));
              evs.push_back(std::move(ev));
            }
            rev = i64(obj(r, "header"), "revision");
          } catch (const std::exception& e) {
            // What etcd would never send: the events in it cannot be known, so the stream ends
            // and the reader starts again from the last revision it applied.
            ++malformed_;
            return finish(Status{false, std::string("etcd watch: malformed response: ") + e.what()},
                          0);
          }
          if (was_created && ws->created) {
            ws->created();
            if (!find(table, wid)) return;
          }
          if (!evs.empty() && ws->events) {
            ws->events(evs, rev);
            if (!find(table, wid)) return;
          }
        }
        ws->line.erase(0, start);
        if (ws->line.size() > kMaxWatchLine) {
          ++malformed_;
          return finish(
              Status{false, fmt::format("etcd watch: a response over {} bytes", kMaxWatchLine)}, 0);
        }
      },
      [ws, finish](core::HttpResponse& r) {
        ws->http = 0;  // finished: nothing to cancel
        finish(Status{false, r.error.empty() ? fmt::format("etcd watch ended (HTTP {})", r.status)
                                             : "etcd watch: " + r.error},
               0);
      });
  watches_->push_back(std::move(w));
  return id;
}

bool Client::watching(WatchId id) const noexcept { return find(watches_, id) != nullptr; }

void Client::cancelWatch(WatchId id) noexcept {
  for (auto it = watches_->begin(); it != watches_->end(); ++it) {
    if ((*it)->id != id) continue;
    if ((*it)->http) http_.cancel((*it)->http);
    watches_->erase(it);
    return;
  }
}

}  // namespace aiorpc::agents::etcd
