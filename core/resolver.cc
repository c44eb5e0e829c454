// Resolver: c-ares on libev (socket state callback → io watchers, ares_timeout → a timer).
#include "aiorpc/core/resolver.h"

#include <ares.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "aiorpc/core/log.h"

namespace aiorpc::core {

struct Resolver::Sock {
  Resolver* r;
  int fd;
  IoWatcher io;
  void onIo(int revents) noexcept {
    Resolver* owner = r;  // c-ares may close this socket inside: `this` is freed then
    int f = fd;
    ares_process_fd(owner->channel_, (revents & EV_READ) ? f : ARES_SOCKET_BAD,
                    (revents & EV_WRITE) ? f : ARES_SOCKET_BAD);
    owner->rearm();
  }
};

struct Resolver::Query {
  Resolver* r;
  std::string name;
};

Resolver::Resolver(Loop& loop, ResolverOptions o) : loop_(loop), opts_(std::move(o)) {
  static std::once_flag once;
  std::call_once(once, [] { ares_library_init(ARES_LIB_INIT_ALL); });
  ares_options ao{};
  ao.sock_state_cb = &Resolver::onSockState;
  ao.sock_state_cb_data = this;
  ao.timeout = static_cast<int>(opts_.timeout * 1000);
  ao.tries = opts_.tries;
  int rc = ares_init_options(&channel_, &ao,
                             ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
  if (rc != ARES_SUCCESS) {
    error_ = std::string("c-ares: ") + ares_strerror(rc);
    channel_ = nullptr;
  } else if (!opts_.servers.empty()) {
    rc = ares_set_servers_ports_csv(channel_, opts_.servers.c_str());
    if (rc != ARES_SUCCESS) {
      error_ = "bad DNS servers '" + opts_.servers + "': " + ares_strerror(rc);
      ares_destroy(channel_);
      channel_ = nullptr;
    }
  }
  timer_.bind<&Resolver::onTimer>(loop.raw(), this);
}

Resolver::~Resolver() {
  timer_.stop();
  for (auto& [seq, t] : updates_) loop_.cancel(t);
  // Answers each query with ARES_EDESTRUCTION: onAnswer then frees its Query and calls no one.
  if (channel_) ares_destroy(channel_);
  socks_.clear();
}

bool Resolver::isName(std::string_view h) noexcept {
  if (h.empty() || h.size() > 253) return false;
  if (h.back() == '.') h.remove_suffix(1);
  size_t label = 0;
  for (char c : h) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_';
    if (!ok || ++label > 63) return false;
  }
  return label > 0;
}

const std::vector<Address>* Resolver::lookup(const std::string& name) {
  double now = loop_.now();
  auto it = cache_.find(name);
  if (it == cache_.end()) {
    if (cache_.size() >= opts_.max_names) {  // bounded: drop the entry that expires first
      auto oldest = std::min_element(cache_.begin(), cache_.end(), [](auto& a, auto& b) {
        return !a.second.querying && (b.second.querying || a.second.expires < b.second.expires);
      });
      if (oldest != cache_.end() && !oldest->second.querying) cache_.erase(oldest);
    }
    it = cache_.emplace(name, Entry{}).first;
  }
  Entry& e = it->second;
  if (!e.querying && (!e.resolved || now >= e.expires) && channel_) {
    e.querying = true;
    ++pending_;
    ares_addrinfo_hints hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    auto* q = new Query{this, name};
    ares_getaddrinfo(channel_, name.c_str(), nullptr, &hints, &Resolver::onAnswer, q);
    rearm();
  }
  return e.resolved ? &e.addrs : nullptr;
}

void Resolver::onAnswer(void* arg, int status, int, ares_addrinfo* res) {
  std::unique_ptr<Query> q(static_cast<Query*>(arg));
  if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED) {
    if (res) ares_freeaddrinfo(res);
    return;  // the resolver is going away
  }
  Resolver* r = q->r;
  --r->pending_;
  Entry& e = r->cache_[q->name];
  e.querying = false;
  e.resolved = true;
  e.addrs.clear();
  double ttl = r->opts_.negative_ttl;
  if (status == ARES_SUCCESS && res) {
    int min_ttl = -1;
    for (auto* n = res->nodes; n; n = n->ai_next) {
      if (n->ai_family != AF_INET && n->ai_family != AF_INET6) continue;
      e.addrs.push_back(Address::fromSockaddr(n->ai_addr, n->ai_addrlen));
      if (min_ttl < 0 || n->ai_ttl < min_ttl) min_ttl = n->ai_ttl;
    }
    if (!e.addrs.empty())
      ttl = std::clamp(static_cast<double>(min_ttl), r->opts_.min_ttl, r->opts_.max_ttl);
    // IPv4 first: the same choice on every proxy, and what most services listen on.
    std::stable_sort(e.addrs.begin(), e.addrs.end(), [](const Address& a, const Address& b) {
      return a.family() == AF_INET && b.family() != AF_INET;
    });
  }
  if (res) ares_freeaddrinfo(res);
  e.expires = r->loop_.now() + ttl;
  std::string name = q->name;
  // From the loop, never inside c-ares' processing.
  uint64_t seq = ++r->last_update_;
  r->updates_[seq] = r->loop_.after(0, [r, seq, name = std::move(name)] {
    r->updates_.erase(seq);
    if (r->on_update) r->on_update(name);
  });
}

void Resolver::onSockState(void* data, int fd, int readable, int writable) {
  auto* r = static_cast<Resolver*>(data);
  if (!readable && !writable) {
    r->socks_.erase(fd);
    return;
  }
  auto& s = r->socks_[fd];
  if (!s) {
    s = std::make_unique<Sock>();
    s->r = r;
    s->fd = fd;
    s->io.bind<&Sock::onIo>(r->loop_.raw(), s.get());
  }
  s->io.stop();
  s->io.set(fd, (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));
  s->io.start();
}

void Resolver::onTimer(int) noexcept {
  ares_process_fd(channel_, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
  rearm();
}

void Resolver::rearm() noexcept {
  timer_.stop();
  if (!channel_ || pending_ == 0) return;
  timeval tv{};
  if (ares_timeout(channel_, nullptr, &tv))
    timer_.start(static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6);
}

}  // namespace aiorpc::core
