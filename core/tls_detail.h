// What core's TLS sources share (not installed).
#pragma once

#include <openssl/ssl.h>

#include <memory>
#include <string>
#include <system_error>

#include "aiorpc/core/connection.h"
#include "aiorpc/core/list.h"
#include "aiorpc/core/tls.h"
#include "aiorpc/core/watcher.h"

namespace aiorpc::core {

// A connection's TLS state. In its context's list of handshakes while the handshake runs.
struct Connection::Tls : ListNode {
  Tls(std::shared_ptr<TlsContext> c, SSL* s) : ctx(std::move(c)), ssl(s) {}
  ~Tls() { SSL_free(ssl); }
  Tls(const Tls&) = delete;
  Tls& operator=(const Tls&) = delete;

  std::shared_ptr<TlsContext> ctx;  // its handshake list outlives the node
  SSL* ssl;
  Connection* conn = nullptr;
  TimerWatcher timer;  // the handshake's deadline
  std::string peer_subject;
  int hs_events = 0;                                        // what the handshake waits for
  bool handshaking = true, listed = false, opened = false;  // opened: a first byte seen
  bool read_wants_write = false, write_wants_read = false, shut = false;
};

}  // namespace aiorpc::core

namespace aiorpc::core::tls_detail {

// A BIO on the connection's socket (never closes it).
BIO* socketBio(int fd);
// Why the SSL call that returned `ret` failed (verification result, OpenSSL's reason, errno);
// OpenSSL's error queue is left empty.
std::error_code failure(SSL* ssl, int ret);
// A certificate's subject as an RFC 4514 string.
std::string subjectOf(X509* cert);

}  // namespace aiorpc::core::tls_detail
