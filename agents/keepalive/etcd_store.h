// The keepalive's registry on etcd (SPEC §5, replicated registry): one key per record,
// `<prefix>/v1/svc/<name>/<host>:<port>`, each on a lease of its own with the keepalive's TTL, so
// etcd expires what no keepalive refreshes. get_services and watch are served from a local
// cache (a Registry) fed by one range read and a watch; its version is etcd's revision.
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

namespace aiorpc::agents::keepalive {

struct RecordKey {
  std::string name, host;
  int port = 0;
};

// The etcd key of a record, and back (nullopt for keys of another shape). Names are
// percent-encoded where they hold '/' or '%'; IPv6 hosts are bracketed.
std::string etcdKey(const std::string& prefix, const RecordKey& r);
std::optional<RecordKey> parseEtcdKey(const std::string& prefix, std::string_view key);

class EtcdStore {
 public:
  struct Options {
    std::vector<std::string> endpoints;
    std::string prefix = "/aiorpc/default";
    double ttl = 30;
  };
  // `cache` is filled from etcd; `changed` runs (from the loop) whenever it or stale() changed.
  EtcdStore(core::Loop& loop, Registry& cache, Options opts, core::Callback<void()> changed);
  // Its etcd calls and retry timer go with it, uncalled (docs/architecture.md, "Who owns a
  // pending callback").
  ~EtcdStore();

  // The error is set when the write did not reach etcd (stale).
  using Done = core::Callback<void(const std::optional<std::string>& error, Registry::Change)>;
  void heartbeat(const RecordKey& r, std::string ident_packed, const std::string& owner, Done done);
  void unregister(const RecordKey& r,
                  core::Callback<void(const std::optional<std::string>&, bool)> done);

  bool stale() const noexcept { return stale_; }
  bool synced() const noexcept { return revision_ > 0; }
  int64_t leaseTtl() const noexcept { return lease_ttl_; }
  const std::string& endpoint() const noexcept { return etcd_.endpoint(); }

 private:
  struct Meta {  // what the cache does not keep: the record's lease and bytes
    int64_t lease = 0, mod_revision = 0;
    std::string value;
    double renewed = -1e18;  // when this instance last renewed its lease
  };
  void resync();
  void startWatch();
  void apply(const etcd::KeyValue& kv, bool deleted);
  void trouble(const std::string& why);
  void trouble(const etcd::Status& s);
  void write(const RecordKey& r, const std::string& key, std::string value, const Meta* old);
  void finish(const std::string& key, const std::optional<std::string>& error,
              Registry::Change change);

  core::Loop& loop_;
  Registry& cache_;
  Options opts_;
  core::Callback<void()> changed_;
  etcd::Client etcd_;
  std::unordered_map<std::string, Meta> meta_;  // by etcd key
  // Writes or renewals in flight, by key: later heartbeats of the same record wait on them.
  std::unordered_map<std::string, std::vector<Done>> inflight_;
  int64_t revision_ = 0, lease_ttl_ = 0;
  etcd::Client::WatchId watch_ = 0;
  int watch_failures_ = 0;
  bool stale_ = false, resyncing_ = false;
  core::Loop::TimerId retry_ = 0;
};

}  // namespace aiorpc::agents::keepalive
