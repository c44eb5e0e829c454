// TLS material for connections (SPEC §8): a reloadable OpenSSL context for one side.
//
// A Connection given a TlsContext (Connection::startTls) runs TLS 1.2 or 1.3 over its socket,
// non-blocking on the loop: OpenSSL reads and writes the socket itself, through a small BIO of
// ours that sends with MSG_NOSIGNAL (no SIGPIPE for embedders) and adds no copy. Each SSL holds
// a reference to the OpenSSL context it was made from, so reload() changes what new connections
// get while open ones keep theirs.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <system_error>

#include "aiorpc/core/list.h"

typedef struct ssl_ctx_st SSL_CTX;  // NOLINT: OpenSSL's own spelling; no OpenSSL header here

namespace aiorpc::core {

// OpenSSL's errors (a packed library and reason) and certificate verification results
// (X509_V_ERR_*, e.g. "certificate has expired", "hostname mismatch"): a failed handshake
// closes its connection with one of these.
const std::error_category& tlsCategory() noexcept;
const std::error_category& x509Category() noexcept;

struct TlsFiles {
  // PEM. The certificate file may hold the chain. A server needs both; a client presents them
  // when a server asks for a certificate (none given: it has none to present).
  std::string cert, key;
  // Server: a client must present a certificate that chains to this CA file (mutual TLS);
  // empty: clients are not asked for one. Client: the server's certificate must chain to it;
  // empty: the system's trust store.
  std::string ca;
};

class TlsContext {
 public:
  enum class Side : unsigned char { kServer, kClient };

  // Loads the files (blocking reads of a few small files: start-up and reload only). Null with
  // `error` set (which file, and OpenSSL's reason) when one fails to load.
  static std::shared_ptr<TlsContext> make(Side side, TlsFiles files, std::string& error);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  // Loads the same files again for the connections made from now on. On failure the material
  // in use stays and the error is returned; empty: reloaded.
  std::string reload();

  Side side() const noexcept { return side_; }
  const TlsFiles& files() const noexcept { return files_; }
  SSL_CTX* raw() const noexcept { return ctx_; }

  // Seconds a handshake may take (SPEC §8: --tls-handshake-timeout); over it the connection
  // closes with ETIMEDOUT.
  double handshake_timeout = 10;
  // Server handshakes in progress on this context. A new one over the bound closes the oldest
  // (a legitimate client finishes in milliseconds: the ones a slow or idle peer holds open go).
  size_t max_handshakes = 1024;
  size_t handshakes() const noexcept { return handshaking_count_; }
  unsigned long handshakesEvicted() const noexcept { return evicted_; }

 private:
  friend class Connection;
  TlsContext(Side side, TlsFiles files) : side_(side), files_(std::move(files)) {}
  static SSL_CTX* build(Side side, const TlsFiles& files, std::string& error);

  Side side_;
  TlsFiles files_;
  SSL_CTX* ctx_ = nullptr;
  ListNode handshaking_;  // Connection::Tls nodes, oldest first
  size_t handshaking_count_ = 0;
  unsigned long evicted_ = 0;
};

}  // namespace aiorpc::core
