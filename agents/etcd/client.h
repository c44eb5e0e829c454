// An etcd v3 client over etcd's JSON gateway (POST /v3/...), on core::Http: nothing blocks the
// loop. Every unary call has a timeout and moves to the next endpoint when one fails (transport
// error, timeout, 5xx); the watch asks for a leader (Grpc-Metadata-hasleader) so that a member
// cut off from the quorum ends it instead of going silent.
//
// Gateway quirks handled here: int64 fields arrive as strings, keys and values as base64,
// default values are omitted (a PUT event has no "type", a keepalive on an expired lease answers
// 200 without "TTL", an empty range has no "kvs").
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "aiorpc/core/callback.h"
#include "aiorpc/core/http.h"
#include "aiorpc/core/metrics.h"

namespace aiorpc::agents::etcd {

struct KeyValue {
  std::string key, value;
  int64_t create_revision = 0, mod_revision = 0, lease = 0;
};

struct Event {
  bool deleted = false;
  KeyValue kv;
};

struct Status {
  bool ok = true;
  std::string error;        // the last endpoint's, for logs
  bool overloaded = false;  // refused before it was sent: the queue is full (etcd is fine)
  explicit operator bool() const noexcept { return ok; }
};

// The first key after every key that starts with `prefix` (etcd's range_end for a prefix).
std::string prefixEnd(std::string prefix);

class Client {
 public:
  struct Options {
    std::vector<std::string> endpoints;  // host:port
    double timeout = 1.5;                // per unary call and endpoint
    // Unary calls in flight at once (one connection each); the rest wait in order, their
    // timeout not yet running. Past max_queued waiting, a call fails at once (overloaded).
    size_t max_in_flight = 32, max_queued = 65536;
    bool https = false;  // every member over TLS, verified with `tls`
    core::HttpTlsFiles tls{};
  };
  Client(core::Loop& loop, Options opts);
  // Drops every callback (none runs afterwards), calls refused but not yet told included. May be
  // called from anywhere, its own callbacks included (docs/architecture.md).
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Every key under `prefix`, read in pages at one revision (one consistent snapshot).
  void range(const std::string& prefix,
             core::Callback<void(Status, int64_t revision, std::vector<KeyValue>&)> done);
  // One key (nullopt: there is none).
  void get(const std::string& key, core::Callback<void(Status, std::optional<KeyValue>)> done);
  // Lease of `ttl` seconds; `granted` may be more (etcd's minimum).
  void grant(int64_t ttl, core::Callback<void(Status, int64_t id, int64_t granted)> done);
  // ttl 0: the lease is gone (expired or revoked).
  void keepAlive(int64_t lease, core::Callback<void(Status, int64_t ttl)> done);
  // found false: there was no such lease (already expired or revoked).
  void revoke(int64_t lease, core::Callback<void(Status, bool found)> done);
  // Puts key=value with the lease if the key does not exist (expect_mod == 0) or was last
  // written at revision expect_mod; otherwise `current` holds what is there (if anything).
  void putIf(const std::string& key, const std::string& value, int64_t lease, int64_t expect_mod,
             core::Callback<void(Status, bool written, std::optional<KeyValue> current)> done);
  // Every put, or none: each one's key must not exist (expect_mod 0) or be at expect_mod.
  struct Put {
    std::string key, value;
    int64_t lease = 0, expect_mod = 0;
  };
  void putAll(const std::vector<Put>& puts, core::Callback<void(Status, bool written)> done);
  // Deletes `key` if it was last written at revision expect_mod.
  void removeIf(const std::string& key, int64_t expect_mod,
                core::Callback<void(Status, bool removed)> done);
  void put(const std::string& key, const std::string& value, int64_t lease,
           core::Callback<void(Status)> done);
  void remove(const std::string& key, core::Callback<void(Status)> done);

  // Events under `prefix` from revision `from` on, from the member endpoints[endpoint % n],
  // delivered in order with the revision they bring the reader to. `ended` runs once when the
  // stream stops for any reason (then start another): compact_revision > 0 means `from` was
  // compacted away (re-read the prefix). A response etcd would never send (not JSON, fields of
  // the wrong type, a line over kMaxWatchLine) ends the stream and is counted in malformed().
  using WatchId = uint64_t;
  static constexpr size_t kMaxWatchLine = 16u << 20;
  WatchId watch(const std::string& prefix, int64_t from, size_t endpoint,
                core::Callback<void(std::vector<Event>&, int64_t revision)> events,
                core::Callback<void()> created,
                core::Callback<void(Status, int64_t compact_revision)> ended);
  void cancelWatch(WatchId id) noexcept;
  bool watching(WatchId id) const noexcept;

  const std::string& endpoint() const noexcept { return opts_.endpoints[current_]; }
  std::string base(size_t idx) const {
    return (opts_.https ? "https://" : "http://") + opts_.endpoints[idx];
  }
  // Unary calls move off endpoints[idx] if they were going there (a member known to be sick).
  void avoid(size_t idx) noexcept {
    if (current_ == idx % opts_.endpoints.size())
      current_ = (current_ + 1) % opts_.endpoints.size();
  }
  const std::vector<std::string>& endpoints() const noexcept { return opts_.endpoints; }
  // Responses dropped because etcd would never send them (malformed JSON, wrong types).
  uint64_t malformed() const noexcept { return malformed_; }
  size_t queued() const noexcept { return queue_.size(); }
  // Every request to a member (SPEC §9): answered (ok: 200; refused: another status below 500)
  // or failed (no answer, a timeout, a 5xx), and how long each took.
  struct Metrics {
    uint64_t ok = 0, refused = 0, failed = 0;
    core::LatencyHistogram latency;
  };
  const Metrics& metrics() noexcept {
    timings_.settle();
    return metrics_;
  }

  struct Call;
  struct RangeRead;

 private:
  void rangePage(std::shared_ptr<RangeRead> r);
  void txn(std::string body, core::Callback<void(Status, bool)> done);
  void post(const char* path, std::string body, core::Callback<void(Status, std::string&)> done);
  void attempt(std::shared_ptr<Call> call);
  void next();  // a call finished: start the next one waiting

  core::Loop& loop_;
  Options opts_;
  core::Http http_;
  size_t current_ = 0;  // the endpoint that answered last
  size_t in_flight_ = 0;
  std::deque<std::shared_ptr<Call>> queue_;
  struct WatchState;
  using Watches = std::vector<std::unique_ptr<WatchState>>;
  // Found by id: a watch's stream, having called the user, goes on only while its id is still in
  // this table (the table goes with the client; cancelWatch takes the id out).
  std::shared_ptr<Watches> watches_;  // made in the constructor (WatchState is private)
  static WatchState* find(const std::weak_ptr<Watches>& table, WatchId id) noexcept;
  WatchId last_watch_ = 0;
  uint64_t malformed_ = 0;
  Metrics metrics_;
  core::Timings timings_{loop_};  // after metrics_, which it points into
  core::Tasks tasks_{loop_};      // last: dropped first
};

}  // namespace aiorpc::agents::etcd
