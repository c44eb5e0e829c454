// Server: accepts connections and serves one Service over msgpack-rpc (SPEC §1–3).
#pragma once

#include <array>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "aiorpc/core/cidr.h"
#include "aiorpc/core/listener.h"
#include "aiorpc/core/liveness.h"
#include "aiorpc/core/log.h"
#include "aiorpc/core/loop.h"
#include "aiorpc/core/tls.h"
#include "aiorpc/rpc/decoder.h"
#include "aiorpc/rpc/endpoint.h"
#include "aiorpc/rpc/service.h"

namespace aiorpc::rpc {

struct ServerOptions {
  Limits limits;
  double drain_timeout = 10;     // seconds to finish owed replies on close / shutdown
  size_t high_water = 4u << 20;  // stop reading from a peer whose replies pile up
  size_t low_water = 1u << 20;   // and resume below this
  // Replies queued for one peer past this close its connection (0: none). The default leaves
  // room for one largest message above the high-water mark.
  size_t max_output = (64u << 20) + (4u << 20);
  int max_messages_per_read = 1024;  // fairness between connections
  // Requests in progress (answered later) per connection; at the limit the connection is not
  // read until one finishes, so one peer cannot make us hold unbounded pending work.
  size_t max_pending = 2048;
  core::AllowList allow;  // peers outside are closed at accept (empty: everyone)
};

// The endpoints' counters (requests, errors, output_limit_closes: peers that did not read
// their replies...) and the server's own.
struct ServerStats : EndpointCounters {
  uint64_t connections_open = 0, connections_total = 0, bytes_out = 0;
  uint64_t refused = 0;  // peers outside the allow-list, closed at accept
  // Connections closed before their TLS handshake was done: plaintext or garbage, a certificate
  // refused, the handshake timeout, or evicted for a newer handshake (TlsContext).
  uint64_t tls_handshake_failures = 0;
  double started = 0;
};

class Server final : private Endpoint::Owner {
 public:
  Server(core::Loop& loop, Service& service, ServerOptions opts = {});
  // May be called from anywhere, a handler of this server's included: connections close, their
  // handlers' sleeps end, and nothing of the server runs afterwards (docs/architecture.md,
  // "Who owns a pending callback"). `service` may go after it.
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds `HOST:PORT`, `[v6]:PORT` or `unix:/path` (port 0: a free one). Several are allowed.
  // With `tls` (a server-side context) the listener is TLS-only (SPEC §8).
  core::Result<core::Address> listen(std::string_view spec,
                                     std::shared_ptr<core::TlsContext> tls = nullptr);
  core::Result<core::Address> listen(const core::Address& addr,
                                     std::shared_ptr<core::TlsContext> tls = nullptr);
  const std::vector<core::Address>& addresses() const noexcept { return bound_; }
  // Serves an already connected socket (socketpair, inherited fd, tests and fuzzing).
  void adopt(core::Fd fd) { accept(std::move(fd), nullptr); }

  // Graceful shutdown (SPEC §7): stop accepting and reading, close idle connections, finish and
  // write owed replies, then call `done` (after at most drain_timeout, closing what is left).
  void drain(core::Callback<void()> done);
  bool draining() const noexcept { return draining_; }
  // Runs when drain() starts (e.g. to answer long-polls at once).
  void onDrain(std::function<void()> fn) { drain_hooks_.push_back(std::move(fn)); }
  // Runs when a connection closes, with its session id (Responder::session()): a handler that
  // keeps replies for long (a long poll) drops that connection's at once.
  void onSessionClosed(std::function<void(uint64_t)> fn) { close_hooks_.push_back(std::move(fn)); }

  const ServerStats& stats() const noexcept { return stats_; }
  // SPEC §9: from now on every reply is counted by method and outcome, with its latency
  // (connections accepted before keep their own counting: call it before listen()).
  void enableMetrics();
  bool metricsEnabled() const noexcept { return metrics_ != nullptr; }
  const RequestMetrics* requestMetrics() const noexcept { return metrics_.get(); }
  // The server's series in the text format: requests (with enableMetrics()), connections,
  // refusals, protocol errors and bytes.
  void writeMetrics(core::MetricsText& out);
  // Adds `key` to the \0stats map; `fn` packs its value.
  void addStats(std::string key, std::function<void(Packer&)> fn);
  size_t connectionCount() const noexcept;
  core::Loop& loop() noexcept { return loop_; }
  const ServerOptions& options() const noexcept { return opts_; }
  // The connection with this session id (Context::session(), Responder::session()), to call
  // the peer back (SPEC §4: either side may send requests); null once it has gone. Look it up
  // again after a suspension: never keep the pointer.
  Endpoint* peer(uint64_t session) const noexcept { return peers_->find(session); }

 private:
  void accept(core::Fd fd, const std::shared_ptr<core::TlsContext>& tls);
  void refuse(const core::Address& peer);
  void handshakeFailed(const Endpoint& e, std::error_code why);
  void endpointClosed(Endpoint& e, std::error_code why) override;
  void control(std::string_view cmd, Object params, Invocation& inv) override;
  void maybeDrained();
  void packStats(Packer& p) const;
  uint64_t bytesOut() const noexcept;  // written to every peer, open and closed
  void packReflection(Packer& p) const;
  void onSweep(int) noexcept;
  static constexpr double kSweepEvery = 2.0;

  core::Loop& loop_;
  Service& service_;
  ServerOptions opts_;
  EndpointOptions eopts_;
  std::vector<std::unique_ptr<core::Listener>> listeners_;
  std::vector<core::Address> bound_;
  ServerStats stats_;
  std::unique_ptr<RequestMetrics> metrics_;  // before peers_: endpoints count into it
  std::shared_ptr<Peers> peers_;             // the connections, by session id
  uint64_t next_id_ = 1;
  std::vector<std::pair<std::string, std::function<void(Packer&)>>> extra_stats_;
  bool draining_ = false;
  core::Callback<void()> drained_;
  core::Loop::TimerId drain_timer_ = 0;
  std::vector<std::function<void()>> drain_hooks_;
  std::vector<std::function<void(uint64_t)>> close_hooks_;
  core::TimerWatcher sweep_;
  core::log::Throttle refused_log_{1};    // refusals are logged at most once a second
  core::log::Throttle handshake_log_{1};  // and failed TLS handshakes
  core::Liveness live_;
  core::Tasks tasks_{loop_};  // last: dropped first
};

}  // namespace aiorpc::rpc
