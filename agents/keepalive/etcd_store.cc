// The registry on etcd: writes with leases and transactions, a cache fed by range + watch.
#include "aiorpc/agents/keepalive/etcd_store.h"

#include <cmath>

#include "aiorpc/core/address.h"
#include "aiorpc/core/log.h"

namespace aiorpc::agents::keepalive {

namespace {

std::string pct(const std::string& name) {
  std::string out;
  for (char c : name) {
    if (c == '%')
      out += "%25";
    else if (c == '/')
      out += "%2F";
    else
      out += c;
  }
  return out;
}

std::optional<std::string> unpct(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    if (s.substr(i, 3) == "%25")
      out += '%';
    else if (s.substr(i, 3) == "%2F")
      out += '/';
    else
      return std::nullopt;
    i += 2;
  }
  return out;
}

std::string encodeValue(const RecordKey& r, const std::string& ident_packed,
                        const std::string& owner) {
  std::string s;
  rpc::Packer p(s);
  p.map(3);
  p.str("endpoint");
  p.array(2);
  p.str(r.host);
  p.integer(r.port);
  p.str("ident");
  p.raw(ident_packed);
  p.str("owner");
  p.str(owner);
  return s;
}

std::string keyPrefix(const std::string& prefix) { return prefix + "/v1/svc/"; }

}  // namespace

std::string etcdKey(const std::string& prefix, const RecordKey& r) {
  std::string host = r.host.find(':') != std::string::npos ? "[" + r.host + "]" : r.host;
  return keyPrefix(prefix) + pct(r.name) + "/" + host + ":" + std::to_string(r.port);
}

std::optional<RecordKey> parseEtcdKey(const std::string& prefix, std::string_view key) {
  std::string head = keyPrefix(prefix);
  if (key.substr(0, head.size()) != head) return std::nullopt;
  key.remove_prefix(head.size());
  size_t slash = key.find('/');
  if (slash == std::string_view::npos || slash == 0) return std::nullopt;
  auto name = unpct(key.substr(0, slash));
  if (!name) return std::nullopt;
  auto hp = core::splitHostPort(key.substr(slash + 1));
  if (!hp || hp->port == 0) return std::nullopt;
  return RecordKey{*name, std::string(hp->host), hp->port};
}

EtcdStore::EtcdStore(core::Loop& loop, Registry& cache, Options opts,
                     core::Callback<void()> changed)
    : loop_(loop),
      cache_(cache),
      opts_(std::move(opts)),
      changed_(std::move(changed)),
      etcd_(loop, etcd::Client::Options{opts_.endpoints, 1.5}) {
  // etcd's leases are whole seconds; it may raise a TTL to its minimum (said when it does).
  lease_ttl_ = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(opts_.ttl)));
  resync();
}

EtcdStore::~EtcdStore() { loop_.cancel(retry_); }

void EtcdStore::trouble(const etcd::Status& s) {
  if (s.overloaded) return;  // our own queue is full: etcd is fine
  trouble(s.error);
}

void EtcdStore::trouble(const std::string& why) {
  if (!stale_) {
    stale_ = true;
    core::log::warn(
        "keepalive: etcd unavailable ({}): answering reads from the cache (stale), refusing "
        "writes until it is back",
        why);
    changed_();
  }
  if (!resyncing_ && !retry_)
    retry_ = loop_.after(1.0, [this] {
      retry_ = 0;
      resync();
    });
}

// The whole prefix read again (at start, after an outage, after a compaction), then a watch
// from the next revision.
void EtcdStore::resync() {
  if (resyncing_) return;
  resyncing_ = true;
  if (watch_) etcd_.cancelWatch(watch_), watch_ = 0;
  etcd_.range(keyPrefix(opts_.prefix),
              [this](etcd::Status s, int64_t rev, std::vector<etcd::KeyValue>& kvs) {
                resyncing_ = false;
                if (!s) return trouble(s);
                std::unordered_map<std::string, Meta> old = std::move(meta_);
                meta_.clear();
                cache_.clear();
                for (const auto& kv : kvs) {
                  apply(kv, false);
                  auto was = old.find(kv.key);
                  if (was != old.end() && was->second.lease == kv.lease)
                    meta_[kv.key].renewed = was->second.renewed;
                }
                revision_ = rev;
                cache_.setVersion(static_cast<uint64_t>(rev));
                if (stale_)
                  core::log::info("keepalive: etcd reachable again ({} records)", cache_.size());
                stale_ = false;
                watch_failures_ = 0;
                startWatch();
                changed_();
              });
}

void EtcdStore::startWatch() {
  watch_ = etcd_.watch(
      keyPrefix(opts_.prefix), revision_ + 1,
      [this](std::vector<etcd::Event>& evs, int64_t) {
        // The version is the last change's revision (the same on every instance that saw it).
        for (const auto& e : evs) {
          apply(e.kv, e.deleted);
          revision_ = std::max(revision_, e.kv.mod_revision);
        }
        cache_.setVersion(static_cast<uint64_t>(revision_));
        changed_();
      },
      [this] { watch_failures_ = 0; },
      [this](etcd::Status s, int64_t compact) {
        watch_ = 0;
        if (compact > 0) {
          core::log::info("keepalive: etcd compacted past revision {}: reading the registry again",
                          revision_);
          return resync();
        }
        // Re-established from the last revision seen, on the next endpoint; after a failure on
        // each of them, the store is stale until a read succeeds.
        if (++watch_failures_ >= static_cast<int>(opts_.endpoints.size())) return trouble(s);
        retry_ = loop_.after(0.2, [this] {
          retry_ = 0;
          if (!watch_ && !resyncing_) startWatch();
        });
      });
}

void EtcdStore::apply(const etcd::KeyValue& kv, bool deleted) {
  auto rk = parseEtcdKey(opts_.prefix, kv.key);
  if (!rk) return;
  if (deleted) {
    cache_.unregister(rk->name, rk->host, rk->port);
    meta_.erase(kv.key);
    return;
  }
  auto v = rpc::Value::fromBytes(kv.value);
  if (!v || !v->view().isMap()) {
    core::log::warn("keepalive: etcd key {} holds no record (ignored)", kv.key);
    return;
  }
  rpc::Object ident;
  std::string owner;
  if (auto i = v->view().find("ident")) ident = *i;
  if (auto o = v->view().find("owner"); o && o->isStrOrBin()) owner = std::string(o->str());
  // The record as etcd has it now (a put may have changed its owner).
  Meta& m = meta_[kv.key];
  cache_.put(rk->name, rk->host, rk->port, ident, owner);
  if (m.lease != kv.lease) m.renewed = loop_.now();  // a new lease starts at its full TTL
  m.lease = kv.lease;
  m.mod_revision = kv.mod_revision;
  m.value = kv.value;
}

void EtcdStore::finish(const std::string& key, const std::optional<std::string>& error,
                       Registry::Change change) {
  auto it = inflight_.find(key);
  if (it == inflight_.end()) return;
  auto waiters = std::move(it->second);
  inflight_.erase(it);
  for (auto& d : waiters) d(error, change);
}

void EtcdStore::heartbeat(const RecordKey& r, std::string ident_packed, const std::string& owner,
                          Done done) {
  if (stale_ || !synced())
    return done("the registry's store (etcd) is unavailable", Registry::kUnchanged);
  std::string key = etcdKey(opts_.prefix, r);
  if (auto fl = inflight_.find(key); fl != inflight_.end()) {
    fl->second.push_back(std::move(done));
    return;
  }
  // The owner stays the one who registered the record.
  const std::string* registered = cache_.owner(r.name, r.host, r.port);
  std::string value = encodeValue(r, ident_packed, registered ? *registered : owner);
  auto m = meta_.find(key);
  if (m != meta_.end() && m->second.value == value) {
    // Unchanged: renew the lease, at most once per TTL/3 (never a put: no revision, no wake-up).
    if (loop_.now() - m->second.renewed < static_cast<double>(lease_ttl_) / 3)
      return done(std::nullopt, Registry::kUnchanged);
    inflight_[key].push_back(std::move(done));
    int64_t lease = m->second.lease;
    etcd_.keepAlive(lease, [this, key, r, value, lease](etcd::Status s, int64_t ttl) {
      if (!s) {
        trouble(s);
        return finish(key, "etcd: " + s.error, Registry::kUnchanged);
      }
      auto m = meta_.find(key);
      if (ttl > 0) {
        if (m != meta_.end() && m->second.lease == lease) m->second.renewed = loop_.now();
        return finish(key, std::nullopt, Registry::kUnchanged);
      }
      // The lease is gone (expired during an outage, or revoked): a new one, the record again.
      core::log::info("keepalive: the lease of {} is gone: registering it again", key);
      write(r, key, value, nullptr);
    });
    return;
  }
  inflight_[key].push_back(std::move(done));
  write(r, key, std::move(value), m == meta_.end() ? nullptr : &m->second);
}

// A new or changed record: a lease of its own, then a transaction (create-if-absent, or
// compare the revision the cache knows), so two instances hearing the same new service do not
// both write it.
void EtcdStore::write(const RecordKey& r, const std::string& key, std::string value,
                      const Meta* old) {
  int64_t expect = old ? old->mod_revision : 0, old_lease = old ? old->lease : 0;
  Registry::Change change = old ? Registry::kIdentChanged : Registry::kAdded;
  etcd_.grant(lease_ttl_, [this, key, value = std::move(value), expect, old_lease, change, r](
                              etcd::Status s, int64_t id, int64_t granted) mutable {
    if (!s) {
      trouble(s);
      return finish(key, "etcd: " + s.error, Registry::kUnchanged);
    }
    if (granted > lease_ttl_) {
      core::log::info("keepalive: etcd raised the lease TTL from {} s to its minimum, {} s",
                      lease_ttl_, granted);
      lease_ttl_ = granted;
    }
    etcd_.putIf(key, value, id, expect,
                [this, key, value, id, old_lease, change](etcd::Status s, bool written,
                                                          std::optional<etcd::KeyValue> cur) {
                  if (!s) {
                    trouble(s);
                    etcd_.revoke(id, [](etcd::Status, bool) {});
                    return finish(key, "etcd: " + s.error, Registry::kUnchanged);
                  }
                  if (written) {
                    if (old_lease && old_lease != id)
                      etcd_.revoke(old_lease, [](etcd::Status, bool) {});
                    Meta& m = meta_[key];
                    m.lease = id;
                    m.value = value;  // (the watch brings its revision)
                    m.renewed = loop_.now();
                    return finish(key, std::nullopt, change);
                  }
                  // Another writer was first. The same record: use its lease (ours goes).
                  // Something else: it is newer than our cache; this heartbeat's next round
                  // compares with it again.
                  etcd_.revoke(id, [](etcd::Status, bool) {});
                  if (cur && cur->value == value) {
                    Meta& m = meta_[key];
                    m.lease = cur->lease;
                    m.mod_revision = cur->mod_revision;
                    m.value = cur->value;
                    m.renewed = loop_.now();
                  }
                  finish(key, std::nullopt, Registry::kUnchanged);
                });
  });
}

void EtcdStore::unregister(const RecordKey& r,
                           core::Callback<void(const std::optional<std::string>&, bool)> done) {
  if (stale_ || !synced()) return done("the registry's store (etcd) is unavailable", false);
  std::string key = etcdKey(opts_.prefix, r);
  auto m = meta_.find(key);
  if (m == meta_.end()) return done(std::nullopt, false);
  auto shared = std::make_shared<decltype(done)>(std::move(done));
  auto removeKey = [this, key, shared] {
    etcd_.remove(key, [this, shared](etcd::Status s) {
      if (!s) trouble(s);
      (*shared)(s ? std::nullopt : std::optional<std::string>("etcd: " + s.error), bool(s));
    });
  };
  // Revoking the record's lease deletes it; a lease already gone leaves a key to delete.
  etcd_.revoke(m->second.lease, [this, shared, removeKey](etcd::Status s, bool found) {
    if (!s) {
      trouble(s);
      return (*shared)("etcd: " + s.error, false);
    }
    if (found) return (*shared)(std::nullopt, true);
    removeKey();
  });
}

}  // namespace aiorpc::agents::keepalive
