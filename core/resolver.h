// Non-blocking DNS: c-ares driven by the core loop, with a cache (STYLE rule 11: no
// getaddrinfo on the loop).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "aiorpc/core/address.h"
#include "aiorpc/core/loop.h"
#include "aiorpc/core/watcher.h"

struct ares_channeldata;  // c-ares' channel (ares.h stays out of this header)
struct ares_addrinfo;

namespace aiorpc::core {

struct ResolverOptions {
  double timeout = 1;  // seconds per try (c-ares doubles it for later tries)
  int tries = 2;
  std::string servers;  // "IP[:PORT],..." instead of the system's resolv.conf (empty: system)
  double min_ttl = 1, max_ttl = 300;  // how long an answer is kept, from its DNS TTL
  double negative_ttl = 5;            // how long "no such name" / a timeout is kept
  size_t max_names = 4096;            // cache entries at most (the oldest go first)
};

// Single-threaded, on the loop. lookup() never blocks and never calls back: it returns what
// the cache knows and, when that is missing or stale, starts one query for the name; when a
// query ends, `on_update` (set by the owner) runs from the loop with the name. Destroying the
// resolver cancels what is in flight without calling anyone.
class Resolver {
 public:
  Resolver(Loop& loop, ResolverOptions o = {});
  // Lookups and updates not yet delivered are dropped uncalled (docs/architecture.md, "Who
  // owns a pending callback").
  ~Resolver();
  Resolver(const Resolver&) = delete;
  Resolver& operator=(const Resolver&) = delete;

  // A valid DNS name (letters, digits, '-', '.', labels of 1-63, at most 253)?
  static bool isName(std::string_view host) noexcept;

  // The addresses known for `name` (port 0), possibly stale; empty when the name does not
  // resolve (or not yet); null while the first look-up is under way.
  const std::vector<Address>* lookup(const std::string& name);
  Callback<void(const std::string&)> on_update;
  bool ok() const noexcept { return channel_ != nullptr; }
  const std::string& error() const noexcept { return error_; }
  const ResolverOptions& options() const noexcept { return opts_; }
  size_t pending() const noexcept { return pending_; }

 private:
  struct Entry {
    std::vector<Address> addrs;
    double expires = 0;
    bool resolved = false, querying = false;
  };
  struct Sock;
  struct Query;
  static void onSockState(void* data, int fd, int readable, int writable);
  static void onAnswer(void* arg, int status, int timeouts, ::ares_addrinfo* res);
  void onTimer(int) noexcept;
  void rearm() noexcept;

  Loop& loop_;
  ResolverOptions opts_;
  ::ares_channeldata* channel_ = nullptr;
  std::string error_;
  std::unordered_map<int, std::unique_ptr<Sock>> socks_;
  std::unordered_map<std::string, Entry> cache_;
  TimerWatcher timer_;
  size_t pending_ = 0;
  // Updates on their way to on_update (one timer each, at most one per query ended), by
  // sequence number: the destructor cancels them, so none runs after the resolver has gone.
  std::unordered_map<uint64_t, Loop::TimerId> updates_;
  uint64_t last_update_ = 0;
};

}  // namespace aiorpc::core
