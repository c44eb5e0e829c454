// Client, ClientPool, SyncClient.
#include "aiorpc/rpc/client.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "aiorpc/core/log.h"
#include "aiorpc/rpc/zone_pool.h"

namespace aiorpc::rpc {

namespace log = core::log;

namespace {
core::Address parseOrThrow(std::string_view spec) {
  auto a = core::Address::parse(spec);
  if (!a) throw std::invalid_argument("bad address '" + std::string(spec) + "'");
  return *a;
}

Target targetOrThrow(std::string_view spec) {
  auto t = parseTarget(spec);
  if (!t) throw std::invalid_argument("bad address '" + std::string(spec) + "'");
  return *t;
}

ClientOptions withTls(ClientOptions o, const Target& t) {
  if (!t.tls) {
    o.tls = nullptr;
    return o;
  }
  if (!o.tls) o.tls = defaultTlsClient();
  if (o.server_name.empty()) o.server_name = t.host;
  return o;
}
}  // namespace

core::Result<Target> parseTarget(std::string_view spec) {
  Target t;
  constexpr std::string_view kTls = "tls://";
  if (spec.substr(0, kTls.size()) == kTls) {
    t.tls = true;
    spec.remove_prefix(kTls.size());
  }
  auto a = core::Address::parse(spec);
  if (!a) return a.error();
  if (t.tls && a->isUnix()) return core::Errc::kBadAddress;  // a certificate names a host
  t.addr = *a;
  if (!a->isUnix()) {
    std::string_view h = spec.substr(0, spec.rfind(':'));
    if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
    t.host = h;
  }
  return t;
}

std::shared_ptr<core::TlsContext> defaultTlsClient() {
  static std::shared_ptr<core::TlsContext> ctx = [] {
    std::string error;
    auto c = core::TlsContext::make(core::TlsContext::Side::kClient, {}, error);
    if (!c) throw std::runtime_error("TLS: " + error);
    return c;
  }();
  return ctx;
}

namespace {
EndpointOptions endpointOptions(const ClientOptions& o) {
  EndpointOptions e;
  e.limits = o.limits;
  e.max_output = o.max_output;
  e.frames = o.raw_results;
  e.call_timeout = o.timeout;
  return e;
}
}  // namespace

Client::Client(core::Loop& loop, core::Address addr, ClientOptions opts)
    : loop_(loop),
      addr_(addr),
      opts_(std::move(opts)),
      eopts_(endpointOptions(opts_)),
      connector_(loop),
      peers_(std::make_shared<Peers>(loop, counters_)) {
  if (opts_.tls && opts_.server_name.empty()) opts_.server_name = addr_.host();
}

Client::Client(core::Loop& loop, std::string_view spec, ClientOptions opts)
    : Client(loop, targetOrThrow(spec), std::move(opts)) {}

Client::Client(core::Loop& loop, const Target& t, ClientOptions opts)
    : Client(loop, t.addr, withTls(std::move(opts), t)) {}

Client::~Client() {
  connector_.cancel();
  // Every endpoint drops its pending calls without running them, and so do outcomes decided
  // but not yet delivered: no user callback inside a destructor or after it.
  ep_ = nullptr;
  peers_->clear();
}

bool Client::dead() const noexcept {
  return failures_ > opts_.dead_after && loop_.now() - last_failure_ < opts_.dead_for;
}

void Client::serve(Service& service) {
  service_ = &service;
  for (auto& [id, e] : peers_->map) e->setService(&service);
}

Endpoint& Client::endpoint() {
  if (!ep_) {
    uint64_t id = next_id_++;
    auto e = std::make_unique<Endpoint>(loop_, eopts_, service_, static_cast<Owner&>(*this), peers_,
                                        id, addr_);
    ep_ = e.get();
    peers_->map.emplace(id, std::move(e));
  }
  return *ep_;
}

CallFuture Client::futureFor(std::string method, Client& c,
                             core::FunctionRef<void(Packer&)> params) {
  return futureOf([&](ResponseFn done) { return c.send(method, params, std::move(done)); });
}

CallHandle Client::send(std::string_view method, core::FunctionRef<void(Packer&)> params,
                        ResponseFn&& done, double timeout, bool handle) {
  last_used_ = loop_.now();
  // Fail fast, but from the loop: callbacks never run inside send().
  if (dead())
    return peers_->refuse(std::move(done), Kind::kNotSent,
                          fmt::format("{} is dead after {} failed connects; retrying after {} s",
                                      addr_.toString(), failures_, opts_.dead_for));
  if (opts_.max_output && !connected() && ep_ && ep_->unsentBytes() > opts_.max_output)
    return peers_->refuse(std::move(done), Kind::kNotSent,
                          fmt::format("over {} bytes wait for the connect to {}", opts_.max_output,
                                      addr_.toString()));
  CallHandle h = endpoint().call(method, params, std::move(done), timeout, handle);
  connect();
  return h;
}

void Client::sendNotify(std::string_view method, core::FunctionRef<void(Packer&)> params) {
  last_used_ = loop_.now();
  if (dead()) return;
  endpoint().notify(method, params);
  connect();
}

void Client::connect() {
  if (connecting_ || connected()) return;
  connecting_ = true;
  connector_.start(addr_, opts_.connect_timeout, [this](core::Result<core::Fd> r) {
    connecting_ = false;
    std::error_code why = r.error();
    if (r) {
      try {
        endpoint().attach(std::move(r.value()), opts_.tls, opts_.server_name);
        if (!opts_.tls) failures_ = 0;  // over TLS: once the handshake is done
        if (connect_result_ && !opts_.tls) connect_result_(true);
        return;
      } catch (const std::bad_alloc&) {  // no memory for the TLS state: a failed connect
        why = core::sysError(ENOMEM);
      }
    }
    countFailure();
    std::weak_ptr<Peers> peers = peers_;
    if (connect_result_) connect_result_(false);
    if (peers.expired() || !ep_) return;  // the callback destroyed this client
    // Every call made for this connect fails as not sent (from the loop: we are in a callback).
    Endpoint* e = ep_;
    retire(*e);  // freed from the loop: alive for abandon()
    e->abandon(fmt::format("connect to {} failed: {}", addr_.toString(), why.message()));
  });
}

void Client::close() {
  connector_.cancel();
  connecting_ = false;
  closing_ = true;  // (onClose comes from inside close())
  if (ep_) ep_->close();
  closing_ = false;
}

void Client::endpointClosed(Endpoint& e, std::error_code) {
  // Reset or closed by the peer before the first byte came back, with requests written: the
  // peer never served this connection (it crashed, is refusing, or accepts and drops): a failed
  // connect attempt, not a lost call. A close of our own (close()) is none.
  // A TLS handshake that failed (a certificate refused) is a failed connect too.
  bool failed_handshake = !closing_ && e.handshakeFailed();
  bool failed_connect =
      failed_handshake || (!closing_ && !e.heardFromPeer() && e.bytesWritten() > 0);
  if (failed_handshake) countFailure();
  if (failed_connect && connect_result_) {
    tasks_.post([this] {
      if (connect_result_) connect_result_(false);
    });
  }
  retire(e);
}

void Client::countFailure() noexcept {
  ++failures_;
  last_failure_ = loop_.now();
}

void Client::endpointReady(Endpoint&) {
  failures_ = 0;
  tasks_.post([this] {  // from the loop: the callback may destroy this client
    if (connect_result_) connect_result_(true);
  });
}

void Client::retire(Endpoint& e) {
  late_replies_ += e.lateReplies();
  if (ep_ == &e) ep_ = nullptr;
  if (auto owned = peers_->take(e.id())) loop_.deferDelete(std::move(owned));
}

ClientPool::ClientPool(core::Loop& loop, ClientOptions opts, double idle_close)
    : loop_(loop), opts_(opts), idle_close_(idle_close) {
  sweep_.bind<&ClientPool::onSweep>(loop, this);
  sweep_.keepLoopAlive(false);  // the sweep alone does not keep the loop running
  sweep_.start(idle_close / 2, idle_close / 2);
}

ClientPool::~ClientPool() { sweep_.stop(); }

Client& ClientPool::get(const core::Address& addr) {
  auto& c = clients_[addr.toString()];
  if (!c) c = std::make_unique<Client>(loop_, addr, opts_);
  return *c;
}

Client& ClientPool::get(std::string_view spec) { return get(parseOrThrow(spec)); }

void ClientPool::onSweep(int) noexcept {
  double now = loop_.now();
  for (auto& [k, c] : clients_)
    if (c->connected() && c->inFlight() == 0 && now - c->lastUsed() >= idle_close_) c->close();
}

SyncClient::SyncClient(std::string_view spec, ClientOptions opts)
    : loop_(std::make_unique<core::Loop>()),
      client_(std::make_unique<Client>(*loop_, spec, opts)) {}

SyncClient::~SyncClient() {
  client_.reset();
  loop_->runOnce();  // let deferred deletes run
}

Value SyncClient::wait(core::Future<Value> f) {
  while (!f.done()) loop_->runOnce();
  return std::move(f.get());
}

void SyncClient::flush() {
  // A notification has no reply: a \0stats round trip proves it went out in order before it.
  // Any reply will do (an older server answers NoMethodError); only a lost connection counts.
  // Its params are an empty array, not nil: msgpack-rpc's params are an array, and a peer
  // such as neovim closes the connection on a nil, dropping the notification still queued.
  try {
    wait(client_->request(std::string_view("\0stats", 6), Raw{std::string_view("\x90", 1)}));
  } catch (const RpcError& e) {
    if (e.kind() == Kind::kConnection || e.kind() == Kind::kNotSent || e.kind() == Kind::kTimeout)
      throw;
  }
}

}  // namespace aiorpc::rpc
