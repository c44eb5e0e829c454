// Registry: heartbeat, unregister, expiry, the get_services() shape.
#include "aiorpc/agents/keepalive/registry.h"

#include <cmath>

namespace aiorpc::agents::keepalive {

Registry::Registry(Clock now, double ttl)
    : now_(std::move(now)),
      ttl_(ttl),
      version_(static_cast<uint64_t>(std::llround(now_() * 1000))) {
  if (version_ == 0) version_ = 1;
}

Registry::Change Registry::setPacked(const std::string& name, const std::string& host, int port,
                                     std::string packed, std::string_view owner,
                                     bool replace_owner) {
  auto svc = services_.try_emplace(name).first;
  auto [ep, added] = svc->second.try_emplace({host, port});
  Record& r = ep->second;
  bool changed = added || r.ident != packed;
  if (added) {
    r.svc = svc;
    r.self = ep;
    ++count_;
    if (svc->second.size() == 1) bytes_ += 5 + name.size() + 5;  // the name, its list's header
    bytes_ += recordBytes(host, 0);
  }
  if (added || replace_owner) {
    if (!added && --owners_[r.owner] == 0) owners_.erase(r.owner);
    r.owner = owner;
    ++owners_[r.owner];
  }
  bytes_ += packed.size();
  bytes_ -= r.ident.size();
  r.ident = std::move(packed);
  r.seen = now_();
  lru_.pushBack(&r);  // to the tail: refreshed last
  if (changed) ++version_;
  return added ? kAdded : changed ? kIdentChanged : kUnchanged;
}

size_t Registry::recordBytes(const std::string& host, size_t ident) {
  // {"ident": ident, "endpoint": [host, port]}: map, two keys, array, host and port headers
  return 1 + 6 + ident + 9 + 1 + 5 + host.size() + 5;
}

void Registry::erase(Record& r) {
  r.unlink();
  bytes_ -= recordBytes(r.self->first.first, r.ident.size());
  if (--owners_[r.owner] == 0) owners_.erase(r.owner);
  auto svc = r.svc;
  if (svc->second.size() == 1) bytes_ -= 5 + svc->first.size() + 5;
  svc->second.erase(r.self);
  if (svc->second.empty()) services_.erase(svc);
  --count_;
  ++version_;
}

bool Registry::unregister(const std::string& name, const std::string& host, int port) {
  auto svc = services_.find(name);
  if (svc == services_.end()) return false;
  auto ep = svc->second.find({host, port});
  if (ep == svc->second.end()) return false;
  erase(ep->second);
  return true;
}

const Registry::Record* Registry::find(const std::string& name, const std::string& host,
                                       int port) const {
  auto svc = services_.find(name);
  if (svc == services_.end()) return nullptr;
  auto ep = svc->second.find({host, port});
  return ep == svc->second.end() ? nullptr : &ep->second;
}

const std::string* Registry::owner(const std::string& name, const std::string& host,
                                   int port) const {
  const Record* r = find(name, host, port);
  return r ? &r->owner : nullptr;
}

const std::string* Registry::identPacked(const std::string& name, const std::string& host,
                                         int port) const {
  const Record* r = find(name, host, port);
  return r ? &r->ident : nullptr;
}

size_t Registry::ownedBy(const std::string& owner) const {
  auto it = owners_.find(owner);
  return it == owners_.end() ? 0 : it->second;
}

size_t Registry::expire(const Expired& each) {
  double limit = now_() - ttl_;
  size_t n = 0;
  while (!lru_.empty()) {
    auto* r = static_cast<Record*>(lru_.front());
    if (r->seen > limit) break;  // everything after it was refreshed later still
    if (each) each(r->svc->first, r->self->first.first, r->self->first.second);
    erase(*r);
    ++n;
  }
  return n;
}

void Registry::clear() {
  while (!lru_.empty()) erase(*static_cast<Record*>(lru_.front()));
}

void Registry::packServices(rpc::Packer& p) const {
  p.map(static_cast<uint32_t>(services_.size()));
  for (const auto& [name, eps] : services_) {
    p.str(name);
    p.array(static_cast<uint32_t>(eps.size()));
    for (const auto& [key, r] : eps) {
      p.map(2);
      p.str("ident");
      p.raw(r.ident);
      p.str("endpoint");
      p.array(2);
      p.str(key.first);
      p.integer(key.second);
    }
  }
}

}  // namespace aiorpc::agents::keepalive
