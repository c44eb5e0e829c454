// The keepalive's registry on etcd (SPEC §5, replicated registry): one key per record,
// `<prefix>/v1/svc/<name>/<host>:<port>`. get_services and watch are served from a local cache
// (a Registry) fed by one range read and a watch; its version is etcd's revision.
//
// Leases: records registered together share one lease (one grant and one transaction for up to
// 128 new records), so a fleet registering at once costs a few etcd requests, not two per record.
// Expiry stays per record: a shared lease is never renewed; a record on one moves to a lease of
// its own at its first renewal, and one that is not heartbeated again dies with the shared lease.
// Renewal follows each lease's own TTL (learned from etcd), whoever granted it.
//
// Owner checks (without a token, only the registering address may change a record's ident or
// unregister it) are decided by transactions that compare the revision the owner was read at:
// never by the cache alone, which may lag.
//
// Liveness: the watch proves it is current. Every store_timeout/3 the store writes a canary key
// under the watched prefix and expects to read it back through its watch within store_timeout;
// a watch that does not deliver it (a hung member, a member cut off) is moved to the next member
// and the registry read again, and until a watch is current again the store is stale.
//
// Nothing read from etcd is trusted more than a heartbeat: a value that is not a record of ours
// (it does not parse, its endpoint is not its key's, its ident is over 1 KiB) is not listed,
// counted and logged (rate-limited); the next heartbeat of that record overwrites it.
//
// Writes answer once etcd has acknowledged them. While etcd cannot be reached or has no quorum
// the store is stale: reads answer from the cache, writes fail (the caller answers
// ServiceUnavailable), and it heals by itself when etcd is back.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "aiorpc/agents/etcd/client.h"
#include "aiorpc/agents/keepalive/registry.h"
#include "aiorpc/core/liveness.h"
#include "aiorpc/core/log.h"

namespace aiorpc::agents::keepalive {

struct RecordKey {
  std::string name, host;
  int port = 0;
  bool operator==(const RecordKey&) const = default;
};

// The etcd key of a record, and back (nullopt for keys of another shape). Name and host are
// percent-encoded where they hold a byte that could change the key's structure ('/', '[', ']',
// '%', ':' in names, control bytes); hosts with ':' (IPv6) are bracketed.
std::string etcdKey(const std::string& prefix, const RecordKey& r);
std::optional<RecordKey> parseEtcdKey(const std::string& prefix, std::string_view key);

class EtcdStore {
 public:
  struct Options {
    std::vector<std::string> endpoints;
    std::string prefix = "/aiorpc/default";
    double ttl = 30;
    double store_timeout = 3;  // a watch that does not prove itself current this long moves
    bool https = false;        // over TLS (etcd::Client::Options)
    core::HttpTlsFiles tls{};
  };
  // `cache` is filled from etcd; `changed` runs (from the loop) whenever it or stale() changed.
  EtcdStore(core::Loop& loop, Registry& cache, Options opts, core::Callback<void()> changed);
  // Its etcd calls and timers go with it, uncalled (docs/architecture.md, "Who owns a pending
  // callback").
  ~EtcdStore();

  struct Result {
    enum Kind { kOk, kUnavailable, kNotOwner } kind = kOk;
    std::string error;  // kUnavailable: why; kNotOwner: the registered owner
    Registry::Change change = Registry::kUnchanged;
    bool removed = false;  // unregister
  };
  using Done = core::Callback<void(const Result&)>;
  // `from` is the sender's address: the owner of a record it creates. With check_owner, a
  // heartbeat from another address may refresh a record but not change its ident.
  void heartbeat(const RecordKey& r, std::string ident_packed, const std::string& from,
                 bool check_owner, Done done);
  // With check_owner, only the record's owner may remove it.
  void unregister(const RecordKey& r, const std::string& from, bool check_owner, Done done);

  // Stale: not yet read, etcd unreachable, or a watch that fell behind and has not been
  // re-established since (a read of the whole prefix alone does not end it: the new watch must
  // be created by its member).
  bool stale() const noexcept { return !synced() || unreachable_ || watch_behind_; }
  bool synced() const noexcept { return synced_; }
  int64_t leaseTtl() const noexcept { return lease_ttl_; }
  const std::string& endpoint() const noexcept { return etcd_.endpoint(); }
  const std::string& watchEndpoint() const noexcept { return etcd_.endpoints()[watch_endpoint_]; }
  // New records accepted but not yet in the cache (written, or being written): counted against
  // the bounds with the cache's.
  size_t pendingNew() const noexcept { return pending_new_; }
  size_t pendingNewFrom(const std::string& from) const;

  struct Counters {
    uint64_t bad_values = 0;     // values under our keys that are not records
    uint64_t bad_responses = 0;  // malformed etcd responses (the client's count)
    uint64_t watch_moves = 0;    // watches moved for not proving themselves current
    uint64_t registered_batches = 0;
    uint64_t removed = 0;  // records the watch saw deleted (lease expiry or an unregister)
  };
  // The etcd client's requests and their latency (SPEC §9).
  const etcd::Client::Metrics& etcdMetrics() noexcept { return etcd_.metrics(); }
  Counters counters() const noexcept {
    Counters c = counters_;
    c.bad_responses = etcd_.malformed();
    return c;
  }

 private:
  struct Meta {  // what the cache does not keep: the key's revision and lease (its owner and
                 // ident are the cache's)
    int64_t lease = 0, mod_revision = 0;
    bool foreign = false;    // not a record of ours (not in the cache): overwritten when heard
    double renewed = -1e18;  // when its lease was last renewed or granted, as far as we know
    int64_t ttl = 0;         // the lease's TTL, 0 while unknown (a lease another instance made)
  };
  struct Write;  // a record to put
  struct Waiting;

  void resync();
  void startWatch();
  void watchFailed(const etcd::Status& s, int64_t compact);
  void tick();
  void apply(const etcd::KeyValue& kv, bool deleted);
  void forget(const std::string& key);
  void trouble(const std::string& why);
  void trouble(const etcd::Status& s);
  Write makeWrite(const RecordKey& r, const std::string& key, std::string ident,
                  const std::string& from, const std::string& owner, bool check_owner,
                  int64_t expect, Registry::Change change) const;
  void submit(Write w);
  void flush();
  void writeOne(std::shared_ptr<Write> w, int64_t lease, int64_t granted, int tries,
                core::Callback<void(bool used)> after);
  void renew(const std::string& key, Meta& m, const RecordKey& r, std::string ident_packed,
             const std::string& from, bool check_owner);
  void removeRead(const RecordKey& r, const std::string& key, const std::string& from,
                  bool check_owner, int tries);
  void uncount(Write& w, bool written);
  void settle(const std::string& key);
  void written(const std::string& key, int64_t lease, int64_t ttl);
  void setLease(Meta& m, int64_t lease, int64_t ttl);
  void finish(const std::string& key, const Result& result);
  void leaseRef(int64_t lease, int delta);
  bool leaseShared(int64_t lease) const;
  void revokeUnlessShared(int64_t lease, const std::string& key);

  core::Loop& loop_;
  Registry& cache_;
  Options opts_;
  core::Callback<void()> changed_;
  etcd::Client etcd_;
  std::unordered_map<std::string, Meta> meta_;      // by etcd key
  std::unordered_map<int64_t, size_t> lease_refs_;  // keys on each lease (from meta_)
  // Heartbeats of a record wait while one of it is being written: each runs again after it.
  std::unordered_map<std::string, std::vector<std::unique_ptr<Waiting>>> inflight_;
  std::vector<Write> batch_;
  bool flush_posted_ = false;
  size_t pending_new_ = 0;
  std::unordered_map<std::string, size_t> pending_from_;
  std::unordered_map<std::string, std::string> awaiting_;  // written, not yet seen: key → from
  int64_t revision_ = 0, lease_ttl_ = 0;
  bool synced_ = false, unreachable_ = false, watch_behind_ = false, resyncing_ = false;
  etcd::Client::WatchId watch_ = 0;
  size_t watch_endpoint_ = 0;
  int watch_failures_ = 0;
  core::Loop::TimerId retry_ = 0;
  // The canary: the value this instance wrote last, when, and whether its watch has shown it.
  std::string nonce_, canary_, canary_key_;  // canary_key_: <prefix>/v1/alive
  uint64_t canary_seq_ = 0;
  double canary_sent_ = 0;
  bool canary_seen_ = true, canary_writing_ = false;
  Counters counters_;
  core::log::Throttle bad_log_{10}, watch_log_{10};
  core::Liveness liveness_;
  core::Tasks tasks_{loop_};  // last: dropped first
};

}  // namespace aiorpc::agents::keepalive
