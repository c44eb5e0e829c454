// HTTP/1.1 requests driven by the core loop: libcurl's multi-socket API on libev (no thread,
// nothing blocking). Socket interest becomes io watchers (CURLMOPT_SOCKETFUNCTION), curl's
// timeout one timer (CURLMOPT_TIMERFUNCTION). core/ knows nothing of what the bodies mean.
//
// Lifetime (STYLE rules 8-9): callbacks run from the loop, never inside a call of this class's
// API and never from the destructor; the destructor and cancel() drop callbacks without
// running them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "aiorpc/core/callback.h"
#include "aiorpc/core/loop.h"

namespace aiorpc::core {

// https: the server's certificate must chain to `ca` (empty: the system's trust store) and
// name the host; `cert`/`key` are presented when the server asks for a client certificate.
// Files are read for each new connection (a reload needs no restart).
struct HttpTlsFiles {
  std::string ca, cert, key;
};

struct HttpRequest {
  std::string url;
  const HttpTlsFiles* tls = nullptr;  // for https URLs; outlives the request (its owner's)
  std::string body;                   // POSTed when not empty (and always for streams)
  std::vector<std::string> headers;   // "Name: value"
  double timeout = 2;                 // the whole transfer; streams: 0 = none
  double connect_timeout = 1;
};

struct HttpResponse {
  long status = 0;    // HTTP status; 0 when the transfer failed (error says why)
  std::string error;  // curl's message for a transport failure or timeout
  std::string body;   // unary requests only
  bool ok() const noexcept { return error.empty() && status >= 200 && status < 300; }
};

class Http {
 public:
  using Id = uint64_t;
  explicit Http(Loop& loop);
  // Transfers in flight are dropped, their callbacks never called; safe from inside one of
  // them (docs/architecture.md, "Who owns a pending callback").
  ~Http();
  Http(const Http&) = delete;
  Http& operator=(const Http&) = delete;

  // One request; `done` runs once, from the loop.
  Id request(HttpRequest req, Callback<void(HttpResponse&)> done);
  // A long response read as it arrives: `data` gets each piece in order, `done` runs once at the
  // end (the body is not kept). Both from the loop.
  Id stream(HttpRequest req, Callback<void(std::string_view)> data,
            Callback<void(HttpResponse&)> done);
  // Drops a transfer without running its callbacks. Unknown ids are ignored.
  void cancel(Id id) noexcept;
  size_t active() const noexcept;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace aiorpc::core
