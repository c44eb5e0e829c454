// The registry on etcd: batched writes on shared leases, owner checks by transaction, a cache
// fed by range + watch, and a canary that proves the watch current.
#include "aiorpc/agents/keepalive/etcd_store.h"

#include <charconv>
#include <cmath>
#include <random>

#include "aiorpc/core/liveness.h"
#include "aiorpc/rpc/errors.h"
#include "aiorpc/rpc/object.h"

namespace aiorpc::agents::keepalive {

namespace {

constexpr size_t kBatch = 128;  // puts per transaction (etcd's default --max-txn-ops)
constexpr size_t kMaxValue = 4096;

bool escaped(unsigned char c) {
  return c == '%' || c == '/' || c == '[' || c == ']' || c < 0x20 || c == 0x7f;
}

std::string pct(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (escaped(c))
      out += fmt::format("%{:02X}", c);
    else
      out += ch;
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
    unsigned v = 0;
    if (i + 3 > s.size()) return std::nullopt;
    auto [end, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 3, v, 16);
    if (ec != std::errc() || end != s.data() + i + 3) return std::nullopt;
    out += static_cast<char>(v);
    i += 2;
  }
  return out;
}

std::string keyPrefix(const std::string& prefix) { return prefix + "/v1/svc/"; }
std::string watchPrefix(const std::string& prefix) { return prefix + "/v1/"; }

// `ttl`: the lease's TTL as its writer asked for it, so that every instance renews it in time.
std::string encodeValue(const RecordKey& r, const std::string& ident_packed,
                        const std::string& owner, int64_t ttl) {
  std::string s;
  rpc::Packer p(s);
  p.map(4);
  p.str("endpoint");
  p.array(2);
  p.str(r.host);
  p.integer(r.port);
  p.str("ident");
  p.raw(ident_packed);
  p.str("owner");
  p.str(owner);
  p.str("ttl");
  p.integer(ttl);
  return s;
}

struct Decoded {
  std::string ident, owner;
  int64_t ttl = 0;  // 0: not said (a value written by an older keepalive)
};

// A value of ours for this key, or why not.
std::optional<Decoded> decodeValue(const RecordKey& r, const std::string& value, std::string* why) {
  auto fail = [why](const char* w) {
    *why = w;
    return std::nullopt;
  };
  if (value.size() > kMaxValue) return fail("a value over 4 KiB");
  auto v = rpc::Value::fromBytes(value);
  if (!v || !v->view().isMap()) return fail("not a msgpack map");
  auto ep = v->view().find("endpoint");
  if (!ep || !ep->isArray() || ep->size() != 2 || !(*ep)[0].isStrOrBin() || !(*ep)[1].isInt() ||
      (*ep)[0].str() != r.host || (*ep)[1].asInt() != std::optional<int64_t>(r.port))
    return fail("its endpoint is not its key's");
  auto ident = v->view().find("ident");
  if (!ident) return fail("no ident");
  Decoded d;
  d.ident = rpc::packToString(*ident);
  if (d.ident.size() > 1024) return fail("an ident over 1 KiB");
  if (auto o = v->view().find("owner")) {
    if (!o->isStrOrBin() || o->str().size() > 255) return fail("an owner that is not a short str");
    d.owner = std::string(o->str());
  }
  if (auto t = v->view().find("ttl"); t && t->isInt() && t->asInt() && *t->asInt() > 0)
    d.ttl = *t->asInt();
  return d;
}

}  // namespace

std::string etcdKey(const std::string& prefix, const RecordKey& r) {
  std::string host = r.host.find(':') != std::string::npos ? "[" + pct(r.host) + "]" : pct(r.host);
  return keyPrefix(prefix) + pct(r.name) + "/" + host + ":" + std::to_string(r.port);
}

std::optional<RecordKey> parseEtcdKey(const std::string& prefix, std::string_view key) {
  std::string head = keyPrefix(prefix);
  if (key.substr(0, head.size()) != head) return std::nullopt;
  std::string_view rest = key.substr(head.size());
  size_t slash = rest.find('/');
  if (slash == std::string_view::npos || slash == 0) return std::nullopt;
  std::string_view hp = rest.substr(slash + 1);
  size_t colon;
  std::string_view host;
  if (!hp.empty() && hp[0] == '[') {
    size_t close = hp.find(']');
    if (close == std::string_view::npos || close + 1 >= hp.size() || hp[close + 1] != ':')
      return std::nullopt;
    host = hp.substr(1, close - 1);
    colon = close + 1;
  } else {
    colon = hp.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    host = hp.substr(0, colon);
  }
  std::string_view port_text = hp.substr(colon + 1);
  int port = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || end != port_text.data() + port_text.size() || port < 1 || port > 65535)
    return std::nullopt;
  auto name = unpct(rest.substr(0, slash));
  auto h = unpct(host);
  if (!name || !h || h->empty() || !rpc::isUtf8(*name) || !rpc::isUtf8(*h)) return std::nullopt;
  RecordKey r{std::move(*name), std::move(*h), port};
  // One key per record: another spelling of it (%41 for A, a leading zero) is not ours.
  if (etcdKey(prefix, r) != key) return std::nullopt;
  return r;
}

struct EtcdStore::Write {
  RecordKey r;
  std::string key, ident, from, value;
  bool check_owner = false;
  int64_t expect = 0;  // the revision the value replaces (0: there is none)
  Registry::Change change = Registry::kAdded;
  bool counted = false;  // counted in pending_new_
};

// A heartbeat or unregister that came while its record was being written: run again after.
struct EtcdStore::Waiting {
  bool unregister = false;
  RecordKey r;
  std::string ident, from;
  bool check_owner = false;
  Done done;
};

EtcdStore::EtcdStore(core::Loop& loop, Registry& cache, Options opts,
                     core::Callback<void()> changed)
    : loop_(loop),
      cache_(cache),
      opts_(std::move(opts)),
      changed_(std::move(changed)),
      etcd_(loop, etcd::Client::Options{
                      .endpoints = opts_.endpoints, .https = opts_.https, .tls = opts_.tls}) {
  // etcd's leases are whole seconds; it may raise a TTL to its minimum (said when it does).
  lease_ttl_ = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(opts_.ttl)));
  std::random_device rd;
  // Keepalives sharing a cluster spread their watches over its members.
  watch_endpoint_ = rd() % opts_.endpoints.size();
  nonce_ = fmt::format("{:08x}{:08x}", rd(), rd());
  canary_key_ = opts_.prefix + "/v1/alive";
  resync();
  tasks_.after(opts_.store_timeout / 3, [this] { tick(); });
}

EtcdStore::~EtcdStore() { loop_.cancel(retry_); }

size_t EtcdStore::pendingNewFrom(const std::string& from) const {
  auto it = pending_from_.find(from);
  return it == pending_from_.end() ? 0 : it->second;
}

void EtcdStore::trouble(const etcd::Status& s) {
  if (s.overloaded) return;  // our own queue is full: etcd is fine
  trouble(s.error);
}

void EtcdStore::trouble(const std::string& why) {
  if (!unreachable_) {
    unreachable_ = true;
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

// The whole prefix read again (at start, after an outage, a compaction or a watch that fell
// behind), then a watch from the next revision.
void EtcdStore::resync() {
  if (resyncing_) return;
  resyncing_ = true;
  if (watch_) etcd_.cancelWatch(watch_), watch_ = 0;
  etcd_.range(keyPrefix(opts_.prefix),
              [this](etcd::Status s, int64_t rev, std::vector<etcd::KeyValue>& kvs) {
                resyncing_ = false;
                if (!s) return trouble(s);
                std::string before;
                uint64_t version = cache_.version();
                if (synced_) {
                  rpc::Packer p(before);
                  cache_.packServices(p);
                }
                std::unordered_map<std::string, Meta> old = std::move(meta_);
                meta_.clear();
                lease_refs_.clear();
                cache_.clear();
                for (const auto& kv : kvs) {
                  apply(kv, false);
                  auto was = old.find(kv.key);
                  auto now = meta_.find(kv.key);
                  if (was != old.end() && now != meta_.end() && was->second.lease == kv.lease) {
                    now->second.renewed = was->second.renewed;
                    now->second.ttl = was->second.ttl;
                  }
                }
                revision_ = rev;
                while (!awaiting_.empty()) settle(awaiting_.begin()->first);
                std::string after;
                if (synced_) {
                  rpc::Packer p(after);
                  cache_.packServices(p);
                }
                // The version moves when the table did (and never backwards); the first read sets
                // it.
                cache_.setVersion(!synced_          ? static_cast<uint64_t>(rev)
                                  : before != after ? std::max(version, static_cast<uint64_t>(rev))
                                                    : version);
                if (unreachable_)
                  core::log::info("keepalive: etcd reachable again ({} records)", cache_.size());
                unreachable_ = false;
                synced_ = true;
                watch_failures_ = 0;
                startWatch();
                changed_();
              });
}

void EtcdStore::startWatch() {
  canary_seen_ = true;  // nothing outstanding: the next tick writes one for this watch
  watch_ = etcd_.watch(
      watchPrefix(opts_.prefix), revision_ + 1, watch_endpoint_,
      [this](std::vector<etcd::Event>& evs, int64_t rev) {
        uint64_t base = cache_.version();
        int64_t changed_at = 0;
        for (const auto& e : evs) {
          uint64_t v = cache_.version();
          apply(e.kv, e.deleted);
          if (cache_.version() != v) changed_at = std::max(changed_at, e.kv.mod_revision);
          revision_ = std::max(revision_, e.kv.mod_revision);
        }
        revision_ = std::max(revision_, rev);
        if (changed_at) {
          // The version is the last change's revision (the same on every instance that saw it).
          cache_.setVersion(std::max(base, static_cast<uint64_t>(changed_at)));
          changed_();
        } else {
          cache_.setVersion(base);
        }
      },
      [this] {
        watch_failures_ = 0;
        if (watch_behind_) {
          watch_behind_ = false;
          changed_();
        }
      },
      [this](etcd::Status s, int64_t compact) { watchFailed(s, compact); });
}

void EtcdStore::watchFailed(const etcd::Status& s, int64_t compact) {
  watch_ = 0;
  if (compact > 0) {  // no events were missed: the read that follows is current
    core::log::info("keepalive: etcd compacted past revision {}: reading the registry again",
                    revision_);
    return resync();
  }
  if (!watch_behind_) {  // events may come meanwhile that this instance does not see
    watch_behind_ = true;
    changed_();
  }
  // Re-established from the last revision seen, on the next member; after a failure on each of
  // them, the store is unreachable until a read succeeds.
  watch_endpoint_ = (watch_endpoint_ + 1) % opts_.endpoints.size();
  if (++watch_failures_ >= static_cast<int>(opts_.endpoints.size())) return trouble(s);
  if (watch_log_.admit(loop_.now())) {  // (a member sending garbage ends every watch)
    uint64_t held = watch_log_.held();
    core::log::info("keepalive: etcd watch ended ({}): watching {} from revision {}{}",
                    rpc::validUtf8(s.error.substr(0, 300)), watchEndpoint(), revision_ + 1,
                    held ? fmt::format(" ({} more since the last line)", held) : std::string());
  }
  retry_ = loop_.after(0.2, [this] {
    retry_ = 0;
    if (!watch_ && !resyncing_) startWatch();
  });
}

// Every store_timeout/3: the canary. A watch that has not shown the last one within
// store_timeout of its writing is behind (its member hung or cut off): moved and read again.
void EtcdStore::tick() {
  tasks_.after(opts_.store_timeout / 3, [this] { tick(); });
  if (!synced_ || resyncing_ || !watch_) return;
  double now = loop_.now();
  if (!canary_seen_) {
    // (a canary whose write has not been answered yet counts too: without quorum, or with the
    // member the write went to hung, the write alone can take several seconds)
    if (now - canary_sent_ < opts_.store_timeout) return;
    ++counters_.watch_moves;
    std::string from = watchEndpoint();
    etcd_.avoid(watch_endpoint_);  // the re-read does not wait on it either
    watch_endpoint_ = (watch_endpoint_ + 1) % opts_.endpoints.size();
    core::log::warn(
        "keepalive: the etcd watch on {} has shown nothing for {:.1f} s while etcd moved on "
        "(a hung or cut-off member): stale until a watch on {} is current",
        from, now - canary_sent_, watchEndpoint());
    etcd_.cancelWatch(watch_);
    watch_ = 0;
    watch_behind_ = true;
    changed_();
    return resync();
  }
  if (canary_writing_) return;
  canary_ = fmt::format("{}:{}", nonce_, ++canary_seq_);
  canary_sent_ = now;
  canary_seen_ = false;
  canary_writing_ = true;
  etcd_.put(canary_key_, canary_, 0, [this](etcd::Status s) {
    canary_writing_ = false;
    if (!s) trouble(s);
  });
}

void EtcdStore::leaseRef(int64_t lease, int delta) {
  if (!lease) return;
  if (delta > 0) {
    ++lease_refs_[lease];
    return;
  }
  auto it = lease_refs_.find(lease);
  if (it != lease_refs_.end() && --it->second == 0) lease_refs_.erase(it);
}

bool EtcdStore::leaseShared(int64_t lease) const {
  auto it = lease_refs_.find(lease);
  return it != lease_refs_.end() && it->second > 1;
}

// Revokes `lease` unless a key other than `key` is on it (a shared lease stays).
void EtcdStore::revokeUnlessShared(int64_t lease, const std::string& key) {
  if (!lease) return;
  auto refs = lease_refs_.find(lease);
  size_t others = refs == lease_refs_.end() ? 0 : refs->second;
  auto m = meta_.find(key);
  if (others && m != meta_.end() && m->second.lease == lease) --others;
  if (!others) etcd_.revoke(lease, [](etcd::Status, bool) {});
}

void EtcdStore::forget(const std::string& key) {
  auto it = meta_.find(key);
  if (it == meta_.end()) return;
  leaseRef(it->second.lease, -1);
  meta_.erase(it);
}

void EtcdStore::apply(const etcd::KeyValue& kv, bool deleted) {
  if (kv.key == canary_key_) {  // (every event passes here: the key is made once)
    if (!deleted && kv.value == canary_) canary_seen_ = true;
    return;
  }
  auto rk = parseEtcdKey(opts_.prefix, kv.key);
  if (!rk) {
    if (!deleted && kv.key.rfind(keyPrefix(opts_.prefix), 0) == 0) {
      ++counters_.bad_values;
      if (bad_log_.admit(loop_.now()))
        core::log::warn("keepalive: etcd key {} is not a record key (ignored; {} more held)",
                        rpc::validUtf8(kv.key.substr(0, 300)), bad_log_.held());
    }
    return;
  }
  settle(kv.key);
  if (deleted) {
    forget(kv.key);
    counters_.removed += cache_.unregister(rk->name, rk->host, rk->port);
    return;
  }
  Meta& m = meta_[kv.key];
  std::string why;
  auto rec = decodeValue(*rk, kv.value, &why);
  // (its TTL unknown until its value or a renewal says)
  if (m.lease != kv.lease) setLease(m, kv.lease, rec ? rec->ttl : 0);
  m.mod_revision = kv.mod_revision;
  if (!rec) {
    // Not a record of ours: not listed; the record's next heartbeat overwrites it.
    m.foreign = true;
    cache_.unregister(rk->name, rk->host, rk->port);
    ++counters_.bad_values;
    if (bad_log_.admit(loop_.now()))
      core::log::warn(
          "keepalive: etcd key {} holds no record ({}): not listed until its next heartbeat "
          "({} more held)",
          rpc::validUtf8(kv.key.substr(0, 300)), why, bad_log_.held());
    return;
  }
  m.foreign = false;
  cache_.putPacked(rk->name, rk->host, rk->port, std::move(rec->ident), rec->owner);
}

void EtcdStore::finish(const std::string& key, const Result& result) {
  auto it = inflight_.find(key);
  if (it == inflight_.end()) return;
  auto waiting = std::move(it->second);
  inflight_.erase(it);
  core::Liveness::Watch alive(liveness_);
  for (size_t i = 0; i < waiting.size(); ++i) {
    auto& w = *waiting[i];
    if (i == 0) {
      w.done(result);
    } else if (w.unregister) {
      unregister(w.r, w.from, w.check_owner, std::move(w.done));
    } else {
      heartbeat(w.r, std::move(w.ident), w.from, w.check_owner, std::move(w.done));
    }
    if (alive.gone()) return;
  }
}

// A write of the record as `owner` registered it, replacing what etcd has at revision `expect`.
EtcdStore::Write EtcdStore::makeWrite(const RecordKey& r, const std::string& key, std::string ident,
                                      const std::string& from, const std::string& owner,
                                      bool check_owner, int64_t expect,
                                      Registry::Change change) const {
  Write w{r, key, std::move(ident), from, {}, check_owner, expect, change};
  w.value = encodeValue(r, w.ident, owner, lease_ttl_);
  return w;
}

void EtcdStore::heartbeat(const RecordKey& r, std::string ident_packed, const std::string& from,
                          bool check_owner, Done done) {
  if (!synced_ || unreachable_)
    return done(Result{Result::kUnavailable, "the registry's store (etcd) is unavailable"});
  std::string key = etcdKey(opts_.prefix, r);
  auto& queue = inflight_[key];
  queue.push_back(std::make_unique<Waiting>(Waiting{
      false, r, queue.empty() ? std::string() : ident_packed, from, check_owner, std::move(done)}));
  if (queue.size() > 1) return;  // runs again when the one in flight is done
  auto m = meta_.find(key);
  const std::string* ident = cache_.identPacked(r.name, r.host, r.port);
  const std::string* owner = cache_.owner(r.name, r.host, r.port);
  if (m != meta_.end() && !m->second.foreign && ident) {
    if (*ident == ident_packed)
      return renew(key, m->second, r, std::move(ident_packed), from, check_owner);
    if (check_owner && *owner != from) {
      // The cache says another address owns it: asked of etcd (the cache may lag), and the
      // write that follows compares the revision that answer was read at.
      etcd_.get(key, [this, key, r, ident = std::move(ident_packed), from](
                         etcd::Status s, std::optional<etcd::KeyValue> cur) mutable {
        if (!s) {
          trouble(s);
          return finish(key, Result{Result::kUnavailable, "etcd: " + s.error});
        }
        std::string why;
        std::optional<Decoded> d = cur ? decodeValue(r, cur->value, &why) : std::nullopt;
        if (d && d->owner != from) return finish(key, Result{Result::kNotOwner, d->owner});
        submit(makeWrite(r, key, std::move(ident), from, d ? d->owner : from, true,
                         cur ? cur->mod_revision : 0,
                         d ? Registry::kIdentChanged : Registry::kAdded));
      });
      return;
    }
    return submit(makeWrite(r, key, std::move(ident_packed), from, *owner, check_owner,
                            m->second.mod_revision, Registry::kIdentChanged));
  }
  // A new record (or a value at its key that is not one): created, bounded by the caller.
  Write w = makeWrite(r, key, std::move(ident_packed), from, from, check_owner,
                      m != meta_.end() ? m->second.mod_revision : 0, Registry::kAdded);
  w.counted = true;
  ++pending_new_;
  ++pending_from_[from];
  submit(std::move(w));
}

// An unchanged record: its lease renewed, at most once per a third of the lease's own TTL. A
// record on a shared lease (registered in a batch) moves to a lease of its own instead.
void EtcdStore::renew(const std::string& key, Meta& m, const RecordKey& r, std::string ident_packed,
                      const std::string& from, bool check_owner) {
  double now = loop_.now();
  if (m.ttl > 0 && now - m.renewed < static_cast<double>(m.ttl) / 3) return finish(key, Result{});
  if (leaseShared(m.lease)) {
    // (written again: its value says its new lease's TTL)
    auto one = std::make_shared<Write>(makeWrite(r, key, std::move(ident_packed), from,
                                                 *cache_.owner(r.name, r.host, r.port), check_owner,
                                                 m.mod_revision, Registry::kUnchanged));
    etcd_.grant(lease_ttl_, [this, one](etcd::Status s, int64_t id, int64_t granted) {
      if (!s) {
        trouble(s);
        return finish(one->key, Result{Result::kUnavailable, "etcd: " + s.error});
      }
      writeOne(one, id, granted, 0, [this, id](bool used) {
        if (!used) etcd_.revoke(id, [](etcd::Status, bool) {});
      });
    });
    return;
  }
  int64_t lease = m.lease;
  etcd_.keepAlive(lease, [this, key, lease, r, ident = std::move(ident_packed), from, check_owner](
                             etcd::Status s, int64_t ttl) mutable {
    if (!s) {
      trouble(s);
      return finish(key, Result{Result::kUnavailable, "etcd: " + s.error});
    }
    auto m = meta_.find(key);
    if (ttl > 0) {
      if (m != meta_.end() && m->second.lease == lease) {
        m->second.renewed = loop_.now();
        m->second.ttl = ttl;
      }
      return finish(key, Result{});
    }
    // The lease is gone (expired during an outage, or revoked): the record written again.
    core::log::info("keepalive: the lease of {} is gone: registering it again",
                    rpc::validUtf8(key));
    const std::string* owner = cache_.owner(r.name, r.host, r.port);
    submit(makeWrite(r, key, std::move(ident), from, owner ? *owner : from, check_owner,
                     m != meta_.end() ? m->second.mod_revision : 0, Registry::kUnchanged));
  });
}

void EtcdStore::submit(Write w) {
  batch_.push_back(std::move(w));
  if (batch_.size() >= kBatch) return flush();
  if (!flush_posted_) {
    flush_posted_ = true;
    tasks_.post([this] {
      flush_posted_ = false;
      flush();
    });
  }
}

// The writes gathered in this turn of the loop: one lease, one transaction. If any of them
// meets something unexpected (another writer was first), each is tried on its own.
void EtcdStore::flush() {
  if (batch_.empty()) return;
  auto batch = std::make_shared<std::vector<std::shared_ptr<Write>>>();
  for (auto& w : batch_) batch->push_back(std::make_shared<Write>(std::move(w)));
  batch_.clear();
  ++counters_.registered_batches;
  auto fail = [this, batch](const etcd::Status& s) {
    trouble(s);
    core::Liveness::Watch alive(liveness_);  // a caller may destroy this store when told
    for (auto& w : *batch) {
      uncount(*w, false);
      finish(w->key, Result{Result::kUnavailable, "etcd: " + s.error});
      if (alive.gone()) return;
    }
  };
  etcd_.grant(lease_ttl_, [this, batch, fail](etcd::Status s, int64_t id, int64_t granted) {
    if (!s) return fail(s);
    if (granted > lease_ttl_) {
      core::log::info("keepalive: etcd raised the lease TTL from {} s to its minimum, {} s",
                      lease_ttl_, granted);
      lease_ttl_ = granted;
    }
    std::vector<etcd::Client::Put> puts;
    for (auto& w : *batch) puts.push_back({w->key, w->value, id, w->expect});
    etcd_.putAll(puts, [this, batch, fail, id, granted](etcd::Status s, bool written) {
      if (!s) {
        etcd_.revoke(id, [](etcd::Status, bool) {});
        return fail(s);
      }
      if (written) {
        for (auto& w : *batch) this->written(w->key, id, granted), uncount(*w, true);
        core::Liveness::Watch alive(liveness_);
        for (auto& w : *batch) {
          finish(w->key, Result{Result::kOk, {}, w->change});
          if (alive.gone()) return;
        }
        return;
      }
      // One of them met another writer: each on its own, on the same lease.
      auto left = std::make_shared<size_t>(batch->size());
      auto used = std::make_shared<bool>(false);
      for (auto& w : *batch)
        writeOne(w, id, granted, 0, [this, left, used, id](bool u) {
          *used = *used || u;
          if (--*left == 0 && !*used) etcd_.revoke(id, [](etcd::Status, bool) {});
        });
    });
  });
}

// A new record counts against the bounds until the cache has it: while it is written, and,
// once written, until the watch brings it (settle()).
void EtcdStore::uncount(Write& w, bool written) {
  if (!w.counted) return;
  w.counted = false;
  if (written && !cache_.identPacked(w.r.name, w.r.host, w.r.port) &&
      awaiting_.emplace(w.key, w.from).second)
    return;
  --pending_new_;
  if (--pending_from_[w.from] == 0) pending_from_.erase(w.from);
}

void EtcdStore::settle(const std::string& key) {
  auto it = awaiting_.find(key);
  if (it == awaiting_.end()) return;
  --pending_new_;
  if (--pending_from_[it->second] == 0) pending_from_.erase(it->second);
  awaiting_.erase(it);
}

// One write compared with what etcd holds; retried (at most 3 times) against what it finds.
void EtcdStore::writeOne(std::shared_ptr<Write> w, int64_t lease, int64_t granted, int tries,
                         core::Callback<void(bool used)> after) {
  etcd_.putIf(w->key, w->value, lease, w->expect,
              [this, w, lease, granted, tries, after = std::move(after)](
                  etcd::Status s, bool ok, std::optional<etcd::KeyValue> cur) mutable {
                auto done = [&](const Result& r, bool used) {
                  uncount(*w, r.kind == Result::kOk);
                  after(used);
                  finish(w->key, r);
                };
                if (!s) {
                  trouble(s);
                  return done(Result{Result::kUnavailable, "etcd: " + s.error}, false);
                }
                if (ok) {
                  written(w->key, lease, granted);
                  return done(Result{Result::kOk, {}, w->change}, true);
                }
                if (cur && cur->value == w->value) {  // the same record, written by another
                  Meta& m = meta_[w->key];
                  // (another lease's TTL is learned at its renewal)
                  setLease(m, cur->lease, m.lease == cur->lease ? m.ttl : 0);
                  m.mod_revision = cur->mod_revision;
                  return done(Result{Result::kOk, {}, Registry::kUnchanged}, false);
                }
                if (tries >= 3)
                  return done(Result{Result::kUnavailable,
                                     "etcd: the record kept changing while it was written"},
                              false);
                std::string why;
                std::optional<Decoded> d = cur ? decodeValue(w->r, cur->value, &why) : std::nullopt;
                if (d && w->check_owner && d->owner != w->from && d->ident != w->ident)
                  return done(Result{Result::kNotOwner, d->owner}, false);
                // Compared again with what is there now: a record keeps its owner; a foreign
                // value is overwritten; a key gone meanwhile is created.
                w->expect = cur ? cur->mod_revision : 0;
                w->value = encodeValue(w->r, w->ident, d ? d->owner : w->from, lease_ttl_);
                if (!d) w->change = Registry::kAdded;
                writeOne(std::move(w), lease, granted, tries + 1, std::move(after));
              });
}

// What this instance wrote: its lease and TTL are known (the watch brings the revision).
void EtcdStore::written(const std::string& key, int64_t lease, int64_t ttl) {
  Meta& m = meta_[key];
  int64_t old = m.lease;
  setLease(m, lease, ttl);
  if (old != lease) revokeUnlessShared(old, key);
}

// The key is now on `lease` (with `ttl`, 0 if unknown), from now on: a lease starts at its full
// TTL when granted or renewed, and the key counts as one of its users.
void EtcdStore::setLease(Meta& m, int64_t lease, int64_t ttl) {
  if (m.lease != lease) {
    leaseRef(m.lease, -1);
    leaseRef(lease, +1);
  }
  m.lease = lease;
  m.renewed = loop_.now();
  m.ttl = ttl;
}

void EtcdStore::unregister(const RecordKey& r, const std::string& from, bool check_owner,
                           Done done) {
  if (!synced_ || unreachable_)
    return done(Result{Result::kUnavailable, "the registry's store (etcd) is unavailable"});
  std::string key = etcdKey(opts_.prefix, r);
  auto& queue = inflight_[key];
  queue.push_back(
      std::make_unique<Waiting>(Waiting{true, r, {}, from, check_owner, std::move(done)}));
  if (queue.size() > 1) return;
  removeRead(r, key, from, check_owner, 0);
}

// Read from etcd (not the cache), the owner checked, then deleted if it is still what was read.
void EtcdStore::removeRead(const RecordKey& r, const std::string& key, const std::string& from,
                           bool check_owner, int tries) {
  etcd_.get(key, [this, r, key, from, check_owner, tries](etcd::Status s,
                                                          std::optional<etcd::KeyValue> cur) {
    if (!s) {
      trouble(s);
      return finish(key, Result{Result::kUnavailable, "etcd: " + s.error});
    }
    std::string why;
    std::optional<Decoded> d = cur ? decodeValue(r, cur->value, &why) : std::nullopt;
    if (!d) return finish(key, Result{});  // no record there (a foreign value is not one)
    if (check_owner && d->owner != from) return finish(key, Result{Result::kNotOwner, d->owner});
    int64_t lease = cur->lease;
    etcd_.removeIf(key, cur->mod_revision,
                   [this, r, key, from, check_owner, tries, lease](etcd::Status s, bool removed) {
                     if (!s) {
                       trouble(s);
                       return finish(key, Result{Result::kUnavailable, "etcd: " + s.error});
                     }
                     if (!removed) {
                       if (tries >= 3)
                         return finish(
                             key, Result{Result::kUnavailable,
                                         "etcd: the record kept changing while it was removed"});
                       return removeRead(r, key, from, check_owner, tries + 1);
                     }
                     revokeUnlessShared(lease, key);  // its lease goes with it, if only its
                     Result res;
                     res.removed = true;
                     finish(key, res);
                   });
  });
}

}  // namespace aiorpc::agents::keepalive
