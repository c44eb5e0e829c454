// Client: pipelined msgpack-rpc calls over one lazily (re)connected connection (SPEC §4).
#pragma once

#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

#include "aiorpc/core/callback.h"
#include "aiorpc/core/connection.h"
#include "aiorpc/core/connector.h"
#include "aiorpc/core/future.h"
#include "aiorpc/core/tls.h"
#include "aiorpc/rpc/codec.h"
#include "aiorpc/rpc/decoder.h"
#include "aiorpc/rpc/endpoint.h"
#include "aiorpc/rpc/errors.h"
#include "aiorpc/rpc/target.h"

namespace aiorpc::rpc {

struct ClientOptions {
  double timeout = 10;  // per call, seconds
  double connect_timeout = 5;
  int dead_after = 3;   // more than this many consecutive connect failures: dead
  double dead_for = 5;  // fail fast this long after the last failure
  Limits limits;
  // Replies are framed by the scanner alone and not decoded: a result reaches the callback as
  // its msgpack bytes in Response::raw_result (Response::result stays nil), ready to be
  // forwarded as they are (the proxy does); an error reply's error object likewise, in
  // Response::raw_error (Response::error stays nil; Response::outcome() decodes either).
  bool raw_results = false;
  // Bytes of requests queued for the peer (unsent, or not yet taken by the kernel) past which
  // the peer counts as broken (it stops reading): the connection is closed (from the loop,
  // never inside send()), calls not yet written fail as not-sent, the next call reconnects.
  // Calls made while that much waits for a connect fail as not-sent. 0: no limit.
  size_t max_output = 0;
  // TLS (SPEC §8): dial with this client-side context (its CA verifies the server; its
  // certificate is presented when the server asks for one). A `tls://` spec without one uses
  // defaultTlsClient().
  std::shared_ptr<core::TlsContext> tls;
  // The name the server's certificate must carry (a DNS name or an IP address). Default: the
  // host as the spec wrote it, or the address's IP.
  std::string server_name;
};

// A client context on the system's trust store, made on first use (throws std::runtime_error
// when the store cannot be loaded).
std::shared_ptr<core::TlsContext> defaultTlsClient();

// A named argument: call("f", kw("city", c)) sends params as a map.
template <class T>
struct Kw {
  std::string_view name;
  const T& value;
};
template <class T>
Kw<T> kw(std::string_view name, const T& v) {
  return {name, v};
}
template <class T>
struct IsKw : std::false_type {};
template <class T>
struct IsKw<Kw<T>> : std::true_type {};

class Service;

// Connector, reconnect and dead-peer policy around one Endpoint at a time (the connection's
// calls, and, with serve(), what the peer asks of us).
class Client final : private Endpoint::Owner {
 public:
  Client(core::Loop& loop, core::Address addr, ClientOptions opts = {});
  // A target dialled with TLS uses opts.tls, or defaultTlsClient(); its host as written is the
  // name checked (unless opts.server_name). A plain target drops opts.tls.
  Client(core::Loop& loop, const Target& t, ClientOptions opts);
  // Parses `spec` (HOST:PORT, [v6]:PORT, unix:/path, or tls://HOST:PORT: see Target);
  // throws std::invalid_argument if bad.
  Client(core::Loop& loop, std::string_view spec, ClientOptions opts = {});
  // Pending calls are dropped: their callbacks are destroyed, never called (no user code runs
  // inside a destructor; a Future's waiter sees BrokenPromise), calls refused or failed but not
  // yet told included. May be called from anywhere, this client's own callbacks and handlers
  // included (docs/architecture.md, "Who owns a pending callback").
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Positional params (nil when none), or a map when every argument is kw(...). The returned
  // Future's cancel() drops the call (the Future fails with core::BrokenPromise).
  template <class... A>
  CallFuture call(std::string_view method, const A&... args);
  // Params sent exactly as given (any encodable value; Object/Value included).
  template <class P>
  CallFuture request(std::string_view method, const P& params);
  template <class... A>
  void notify(std::string_view method, const A&... args);
  template <class P>
  void notifyParams(std::string_view method, const P& params) {
    sendNotify(method, [&](Packer& p) { p.pack(params); });
  }

  // Low level: `params` packs the params value; `done` runs exactly once, never inside send(),
  // unless the returned handle cancels the call first (then never; a call refused at once, by
  // a dead peer or a full queue, gets its outcome from the loop and cancels the same way).
  // `handle` false: no handle (Endpoint::call), for callers that never cancel.
  CallHandle send(std::string_view method, core::FunctionRef<void(Packer&)> params,
                  ResponseFn&& done, double timeout = -1, bool handle = true);
  void sendNotify(std::string_view method, core::FunctionRef<void(Packer&)> params);

  const core::Address& address() const noexcept { return addr_; }
  size_t inFlight() const noexcept { return ep_ ? ep_->callsInFlight() : 0; }
  bool connected() const noexcept { return ep_ && ep_->open(); }
  bool dead() const noexcept;
  uint64_t lateReplies() const noexcept { return late_replies_ + (ep_ ? ep_->lateReplies() : 0); }
  // Serves `service` to the peer (SPEC §4: a server may call its client back, as neovim does);
  // without one, the peer's requests are answered NoMethodError. `service` outlives the client.
  void serve(Service& service);
  double lastUsed() const noexcept { return last_used_; }
  // Closes the connection; pending calls fail from the loop, never inside close() (dropped
  // uncalled if the client is destroyed first); the next call reconnects.
  void close();
  // Starts a connect now if there is no connection (a probe: no call waits on it).
  void connectNow() { connect(); }
  // Called with the outcome of every connect attempt, always from the loop (never inside a call
  // into the client): true once connected; false when the connect failed (refused, timed out)
  // or the connection was reset before its first byte came back with requests written on it.
  // A connection the peer resets or closes before its first byte back, with requests written,
  // is reported false too (whether or not the connect itself had been reported true). Over
  // TLS, connected means the handshake is done, and a failed handshake is a failed connect. One
  // attempt is one call however many requests waited on it (the proxy's ejection counts these,
  // not calls).
  void onConnectResult(core::Callback<void(bool)> fn) { connect_result_ = std::move(fn); }

 private:
  template <class... A>
  static void packArgs(Packer& p, const A&... args);
  static CallFuture futureFor(std::string method, Client& c,
                              core::FunctionRef<void(Packer&)> params);
  Endpoint& endpoint();  // the current one, made when there is none
  void connect();
  void endpointClosed(Endpoint& e, std::error_code why) override;
  void endpointReady(Endpoint& e) override;
  void countFailure() noexcept;  // a failed connect (or TLS handshake): toward dead()
  // Out of the table and no longer current (freed from the loop); its late replies counted.
  void retire(Endpoint& e);

  core::Loop& loop_;
  core::Address addr_;
  ClientOptions opts_;  // opts_.server_name: set when opts_.tls is
  EndpointOptions eopts_;
  core::Connector connector_;
  EndpointCounters counters_;
  std::shared_ptr<Peers> peers_;  // the current endpoint (and closed ones until freed)
  Endpoint* ep_ = nullptr;        // owned by peers_
  uint64_t next_id_ = 1;
  Service* service_ = nullptr;
  bool connecting_ = false;
  bool closing_ = false;  // inside close(): the connection ends by our will
  int failures_ = 0;
  double last_failure_ = 0;
  double last_used_ = 0;
  uint64_t late_replies_ = 0;  // on connections gone
  core::Callback<void(bool)> connect_result_;
  core::Tasks tasks_{loop_};  // last: dropped first
};

template <class... A>
void Client::packArgs(Packer& p, const A&... args) {
  constexpr size_t n = sizeof...(A);
  constexpr size_t nkw = (0 + ... + IsKw<A>::value);
  static_assert(nkw == 0 || nkw == n, "use kw() for all arguments or for none");
  if constexpr (n == 0) {
    p.nil();
  } else if constexpr (nkw == n) {
    p.map(static_cast<uint32_t>(n));
    ((p.str(args.name), p.pack(args.value)), ...);
  } else {
    p.array(static_cast<uint32_t>(n));
    (p.pack(args), ...);
  }
}

template <class... A>
CallFuture Client::call(std::string_view method, const A&... args) {
  return futureFor(std::string(method), *this, [&](Packer& p) { packArgs(p, args...); });
}

template <class P>
CallFuture Client::request(std::string_view method, const P& params) {
  return futureFor(std::string(method), *this, [&](Packer& p) { p.pack(params); });
}

template <class... A>
void Client::notify(std::string_view method, const A&... args) {
  sendNotify(method, [&](Packer& p) { packArgs(p, args...); });
}

// One Client per endpoint, shared by every handler of the process; connections idle for
// `idle_close` seconds are closed (the Client object stays, so references stay valid).
class ClientPool {
 public:
  ClientPool(core::Loop& loop, ClientOptions opts = {}, double idle_close = 60);
  // Its clients go, each dropping its pending calls uncalled (see ~Client).
  ~ClientPool();
  Client& get(const core::Address& addr);
  Client& get(std::string_view spec);  // throws std::invalid_argument on a bad address
  size_t size() const noexcept { return clients_.size(); }

 private:
  void onSweep(int) noexcept;
  core::Loop& loop_;
  ClientOptions opts_;
  double idle_close_;
  std::unordered_map<std::string, std::unique_ptr<Client>> clients_;
  core::TimerWatcher sweep_;
};

// Blocking client for scripts and tests: runs its own loop until each call completes.
class SyncClient {
 public:
  explicit SyncClient(std::string_view spec, ClientOptions opts = {});
  ~SyncClient();

  // The result, or throws RpcError (TimeoutError, ConnectionError, the server's error...).
  template <class R = Value, class... A>
  R call(std::string_view method, const A&... args) {
    return as<R>(wait(client_->call(method, args...)));
  }
  template <class R = Value, class P>
  R request(std::string_view method, const P& params) {
    return as<R>(wait(client_->request(method, params)));
  }
  // Sent once this returns, or throws RpcError(kConnection) when the server is unreachable.
  template <class... A>
  void notify(std::string_view method, const A&... args) {
    client_->notify(method, args...);
    flush();
  }
  template <class P>
  void notifyParams(std::string_view method, const P& params) {
    client_->notifyParams(method, params);
    flush();
  }
  Client& client() noexcept { return *client_; }
  core::Loop& loop() noexcept { return *loop_; }

 private:
  Value wait(core::Future<Value> f);
  void flush();
  template <class R>
  static R as(Value v) {
    if constexpr (std::is_same_v<R, Value>) {
      return v;
    } else {
      R out{};
      std::string why;
      if (!decode(v.view(), out, why)) throw RpcError(Kind::kArgument, "result: " + why);
      return out;
    }
  }
  std::unique_ptr<core::Loop> loop_;
  std::unique_ptr<Client> client_;
};

}  // namespace aiorpc::rpc
