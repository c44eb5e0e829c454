// etcd v3 JSON gateway client.
#include "aiorpc/agents/etcd/client.h"

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

// int64 fields arrive as strings; absent means 0 (defaults are omitted).
int64_t i64(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) return 0;
  if (it->is_string()) return std::stoll(it->get<std::string>());
  if (it->is_number_integer()) return it->get<int64_t>();
  return 0;
}

std::string str(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? unb64(it->get<std::string>()) : std::string();
}

KeyValue kvOf(const json& j) {
  KeyValue kv;
  kv.key = str(j, "key");
  kv.value = str(j, "value");
  kv.create_revision = i64(j, "create_revision");
  kv.mod_revision = i64(j, "mod_revision");
  kv.lease = i64(j, "lease");
  return kv;
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
  req.url = "http://" + opts_.endpoints[idx] + call->path;
  req.body = call->body;
  req.timeout = opts_.timeout;
  req.connect_timeout = std::min(opts_.timeout, 1.0);
  http_.request(std::move(req), [this, call, idx](core::HttpResponse& r) {
    if (r.error.empty() && r.status > 0 && r.status < 500) {
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

void Client::range(const std::string& prefix,
                   core::Callback<void(Status, int64_t, std::vector<KeyValue>&)> done) {
  json body = {{"key", b64(prefix)}, {"range_end", b64(prefixEnd(prefix))}};
  post("/v3/kv/range", body.dump(), [done = std::move(done)](Status s, std::string& text) mutable {
    std::vector<KeyValue> kvs;
    if (!s) return done(s, 0, kvs);
    try {
      json j = json::parse(text);
      for (const auto& kv : j.value("kvs", json::array())) kvs.push_back(kvOf(kv));
      done(s, i64(j.value("header", json::object()), "revision"), kvs);
    } catch (const std::exception& e) {
      kvs.clear();
      done(Status{false, std::string("etcd range: ") + e.what()}, 0, kvs);
    }
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
           done(s, i64(j.value("result", json::object()), "TTL"));
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

void Client::putIf(const std::string& key, const std::string& value, int64_t lease,
                   int64_t expect_mod,
                   core::Callback<void(Status, bool, std::optional<KeyValue>)> done) {
  json put = {{"key", b64(key)}, {"value", b64(value)}};
  if (lease) put["lease"] = num(lease);
  json cmp = expect_mod == 0
                 ? json{{"key", b64(key)}, {"target", "CREATE"}, {"create_revision", "0"}}
                 : json{{"key", b64(key)}, {"target", "MOD"}, {"mod_revision", num(expect_mod)}};
  json body = {{"compare", json::array({cmp})},
               {"success", json::array({{{"request_put", put}}})},
               {"failure", json::array({{{"request_range", {{"key", b64(key)}}}}})}};
  post("/v3/kv/txn", body.dump(), [done = std::move(done)](Status s, std::string& text) mutable {
    if (!s) return done(s, false, std::nullopt);
    try {
      json j = json::parse(text);
      if (j.value("succeeded", false)) return done(s, true, std::nullopt);
      std::optional<KeyValue> current;
      for (const auto& r : j.value("responses", json::array()))
        for (const auto& kv : r.value("response_range", json::object()).value("kvs", json::array()))
          current = kvOf(kv);
      done(s, false, std::move(current));
    } catch (const std::exception& e) {
      done(Status{false, std::string("etcd txn: ") + e.what()}, false, std::nullopt);
    }
  });
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

Client::WatchId Client::watch(const std::string& prefix, int64_t from,
                              core::Callback<void(std::vector<Event>&, int64_t)> events,
                              core::Callback<void()> created,
                              core::Callback<void(Status, int64_t)> ended) {
  auto w = std::make_unique<WatchState>();
  w->id = ++last_watch_;
  w->endpoint = current_;
  w->events = std::move(events);
  w->created = std::move(created);
  w->ended = std::move(ended);
  json create = {{"key", b64(prefix)}, {"range_end", b64(prefixEnd(prefix))}};
  if (from > 0) create["start_revision"] = num(from);
  core::HttpRequest req;
  req.url = "http://" + opts_.endpoints[w->endpoint] + "/v3/watch";
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
      if (!s && current_ == w->endpoint) current_ = (w->endpoint + 1) % opts_.endpoints.size();
      if (w->ended) w->ended(s, compact);
      return;
    }
  };
  ws->http = http_.stream(
      std::move(req),
      [this, ws, id, finish](std::string_view data) {
        ws->line.append(data);
        size_t nl;
        while ((nl = ws->line.find('\n')) != std::string::npos) {
          std::string one = ws->line.substr(0, nl);
          ws->line.erase(0, nl + 1);
          if (one.empty()) continue;
          json j;
          try {
            j = json::parse(one);
          } catch (const std::exception& e) {
            return finish(Status{false, std::string("etcd watch: ") + e.what()}, 0);
          }
          if (j.contains("error"))
            return finish(Status{false, "etcd watch: " + j["error"].dump()}, 0);
          const json& r = j.value("result", json::object());
          if (r.value("canceled", false)) {
            int64_t compact = i64(r, "compact_revision");
            return finish(Status{false, "etcd watch canceled: " + r.value("cancel_reason", "")},
                          compact);
          }
          // Copies: the user may destroy the client (and this callback with it) or cancel.
          std::weak_ptr<Watches> table = watches_;
          const WatchId wid = id;
          if (r.value("created", false) && ws->created) {
            ws->created();
            if (!find(table, wid)) return;
          }
          std::vector<Event> evs;
          for (const auto& e : r.value("events", json::array())) {
            Event ev;
            ev.deleted = e.value("type", "PUT") == "DELETE";
            ev.kv = kvOf(e.value("kv", json::object()));
            evs.push_back(std::move(ev));
          }
          int64_t rev = i64(r.value("header", json::object()), "revision");
          if (!evs.empty() && ws->events) {
            ws->events(evs, rev);
            if (!find(table, wid)) return;
          }
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
