// The keepalive service table: records keyed by (name, host, port), expired after a fixed TTL.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <unordered_map>
#include <utility>

#include "aiorpc/core/list.h"
#include "aiorpc/rpc/codec.h"

namespace aiorpc::agents::keepalive {

// The largest table a keepalive serves, in get_services()/watch bytes: a new record that could
// take it past this is refused (Overloaded). Every proxy reads registry replies of up to 64 MiB
// (rpc's default message limit), so whatever a keepalive can hold, every proxy can read: 48 MiB
// leaves room for several keepalives on one etcd admitting records at the same moment.
constexpr size_t kMaxTableBytes = 48u << 20;

// Not tied to the loop: time comes from `now` (tests pass a manual clock).
//
// Expiry is O(expired): with one TTL for every record, the records in refresh order are also in
// expiry order, so an intrusive list (a refresh moves its record to the tail) makes expire() pop
// from the head until it meets a live record. libev's "Be smart about timeouts", strategy 4.
class Registry {
 public:
  using Clock = std::function<double()>;
  Registry(Clock now, double ttl);

  // Adds or refreshes. Non-zero (true) when get_services() output changed: a new record, or a
  // new ident. `owner` (the source IP of the heartbeat that created the record) is kept for
  // unregister's owner check; refreshes do not change it.
  enum Change : int { kUnchanged = 0, kAdded, kIdentChanged };
  Change heartbeat(const std::string& name, const std::string& host, int port, rpc::Object ident,
                   std::string_view owner = {}) {
    return set(name, host, port, ident, owner, false);
  }
  // The record exactly as given (its ident packed), its owner too: a cache of another store
  // takes that store's record as it is now.
  Change putPacked(const std::string& name, const std::string& host, int port, std::string packed,
                   std::string_view owner) {
    return setPacked(name, host, port, std::move(packed), owner, true);
  }
  // True if a record was removed.
  bool unregister(const std::string& name, const std::string& host, int port);
  // The record's owner, or null when there is no such record.
  const std::string* owner(const std::string& name, const std::string& host, int port) const;
  // The record's ident (packed), or null when there is no such record.
  const std::string* identPacked(const std::string& name, const std::string& host, int port) const;
  // Records registered from `owner`.
  size_t ownedBy(const std::string& owner) const;
  // An upper bound of packServices()'s size in bytes.
  size_t tableBytes() const noexcept { return bytes_; }
  // The most packServices() may grow for one more record (a new name, the largest host and
  // ident): a table kept under a bound minus this stays under it after any one heartbeat.
  static constexpr size_t kMaxRecordBytes = 2 * (5 + 255) + 1024 + 32;
  // Removes records not refreshed for the TTL; returns how many.
  // `each` (when set) is told every record that goes, before it goes.
  using Expired = std::function<void(const std::string& name, const std::string& host, int port)>;
  size_t expire(const Expired& each = {});
  // Removes every record (a cache about to be filled again).
  void clear();
  // A cache of another store (etcd) takes that store's version (its revision).
  void setVersion(uint64_t v) noexcept { version_ = v; }

  // {name: [{"ident": ident, "endpoint": [host, port]}, ...]}, lists sorted by (host, port).
  void packServices(rpc::Packer& p) const;
  uint64_t version() const noexcept { return version_; }
  size_t size() const noexcept { return count_; }
  size_t services() const noexcept { return services_.size(); }  // names with a record
  double ttl() const noexcept { return ttl_; }

 private:
  struct Record;
  using Endpoints = std::map<std::pair<std::string, int>, Record>;  // sorted: host bytes, port
  using Services = std::map<std::string, Endpoints>;
  // Map nodes are stable, so a record keeps iterators to itself for O(1) removal from the
  // list head. The ident is kept packed (a few bytes), not as a zone (8 KiB each).
  struct Record : core::ListNode {
    std::string ident;
    std::string owner;
    double seen = 0;
    Services::iterator svc;
    Endpoints::iterator self;
  };

  Clock now_;
  double ttl_;
  Services services_;
  core::ListNode lru_;  // least recently refreshed first
  size_t count_ = 0;
  size_t bytes_ = 5;                                // the outer map's header
  std::unordered_map<std::string, size_t> owners_;  // records per owner
  uint64_t version_;

  static size_t recordBytes(const std::string& host, size_t ident);
  const Record* find(const std::string& name, const std::string& host, int port) const;
  Change set(const std::string& name, const std::string& host, int port, rpc::Object ident,
             std::string_view owner, bool replace_owner) {
    return setPacked(name, host, port, rpc::packToString(ident), owner, replace_owner);
  }
  Change setPacked(const std::string& name, const std::string& host, int port, std::string packed,
                   std::string_view owner, bool replace_owner);
  void erase(Record& r);
};

}  // namespace aiorpc::agents::keepalive
