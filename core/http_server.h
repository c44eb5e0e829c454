// A small HTTP/1.1 server on the loop, for operators' endpoints (SPEC §9: /metrics, /healthz):
// GET and HEAD, keep-alive and pipelining, no request bodies. Every answer is made by the
// handler at once, on the loop's thread.
//
// Bounded for a port that may face anyone: a request head over max_head bytes is answered 431
// and the connection closed; past max_connections a new connection closes the one that has
// waited longest since its last complete request (a scraper always gets in, and clients that
// trickle or idle go first); a connection without a complete request for idle_timeout seconds
// is closed, however slowly bytes arrive. Peers outside `allow` are closed at accept. With a
// TLS context every connection is HTTPS.
//
// Why not libmicrohttpd: driving it from our loop means its epoll fd on Linux and select()'s
// fd sets (FD_SETSIZE) elsewhere, it refuses rather than evicts past its connection limit, and
// the allow-list, unix sockets and lingering close are ours already; on core's Listener and
// Connection the whole server is the two hundred lines below.
//
// Lifetime (STYLE rules 8-9): the handler runs from the loop only; the destructor closes every
// connection without calling it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "aiorpc/core/address.h"
#include "aiorpc/core/cidr.h"
#include "aiorpc/core/error.h"
#include "aiorpc/core/list.h"
#include "aiorpc/core/loop.h"

namespace aiorpc::core {

class Listener;

class TlsContext;

struct HttpServerOptions {
  size_t max_head = 8 << 10;
  size_t max_connections = 64;
  double idle_timeout = 10;
  AllowList allow;
  // A server-side context: HTTPS on every connection (mutual when the context asks for client
  // certificates). Its handshake timeout applies; idle_timeout counts from the accept as well.
  std::shared_ptr<TlsContext> tls;
};

struct HttpAnswer {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

class HttpServer {
 public:
  // `handler` gets the method (GET or HEAD) and the path (the target without its query).
  using Handler = std::function<HttpAnswer(std::string_view method, std::string_view path)>;
  HttpServer(Loop& loop, Handler handler, HttpServerOptions opts = {});
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds HOST:PORT, [v6]:PORT or unix:/path (port 0: a free one).
  Result<Address> listen(const Address& addr);
  // Stops accepting and closes every connection.
  void stop() noexcept;
  size_t connections() const noexcept { return count_; }
  uint64_t refused() const noexcept { return refused_; }  // outside the allow-list
  uint64_t evicted() const noexcept { return evicted_; }  // closed for a newer connection

  struct Conn;

 private:
  void accept(Fd fd, const Address& peer);
  void closed(Conn& c) noexcept;

  Loop& loop_;
  std::shared_ptr<Handler> handler_;
  HttpServerOptions opts_;
  std::unique_ptr<Listener> listener_;
  ListNode conns_;  // by the time of their last complete request, oldest first
  size_t count_ = 0;
  uint64_t refused_ = 0, evicted_ = 0;
};

}  // namespace aiorpc::core
