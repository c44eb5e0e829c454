// Connection over TLS: the handshake, the read and write paths through OpenSSL, and close.
//
// OpenSSL drives the socket itself (tls.cc's BIO): no copy between a memory BIO and the socket.
// Reads go straight into the handler's buffer (decrypted in place); the out queue is written
// one contiguous run (at most a 16 KiB block, so one record) per SSL_write, consumed only as
// OpenSSL reports it written, so stream positions keep meaning "handed to the kernel".
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <cerrno>
#include <new>

#include "aiorpc/core/connection.h"
#include "aiorpc/core/tls_detail.h"

namespace aiorpc::core {

namespace {
// OpenSSL's thread error queue must be empty before a call whose failure we classify; other
// users of OpenSSL in the process (libcurl) may have left something there.
inline void clearErrors() noexcept {
  if (ERR_peek_error() != 0) [[unlikely]]
    ERR_clear_error();
}
}  // namespace

void Connection::startTls(const std::shared_ptr<TlsContext>& ctx, std::string_view verify_host) {
  if (closed_ || tls_) return;
  SSL* ssl = SSL_new(ctx->raw());
  BIO* bio = ssl ? tls_detail::socketBio(fd_.get()) : nullptr;
  if (!bio) {
    SSL_free(ssl);
    ERR_clear_error();
    throw std::bad_alloc();
  }
  SSL_set_bio(ssl, bio, bio);
  tls_ = std::make_unique<Tls>(ctx, ssl);
  tls_->conn = this;
  if (ctx->side() == TlsContext::Side::kServer) {
    SSL_set_accept_state(ssl);
    tls_->hs_events = EV_READ;  // the ClientHello
    if (ctx->handshaking_count_ >= ctx->max_handshakes && !ctx->handshaking_.empty()) {
      auto* oldest = static_cast<Tls*>(ctx->handshaking_.front());
      ++ctx->evicted_;
      oldest->conn->close(sysError(ECONNABORTED));  // unlinks it
    }
    ctx->handshaking_.pushBack(tls_.get());
    tls_->listed = true;
    ++ctx->handshaking_count_;
  } else {
    SSL_set_connect_state(ssl);
    tls_->hs_events = EV_WRITE;  // the ClientHello goes out from the loop
    if (!verify_host.empty()) {
      std::string host(verify_host);
      if (host.size() > 2 && host.front() == '[' && host.back() == ']')
        host = host.substr(1, host.size() - 2);
      // An IP address is checked against the IP SANs; a name against the DNS SANs (no
      // partial wildcards), and sent as SNI.
      if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host.c_str()) != 1) {
        ERR_clear_error();
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        SSL_set1_host(ssl, host.c_str());
        SSL_set_tlsext_host_name(ssl, host.c_str());
      }
    }
  }
  tls_->timer.bind<&Connection::tlsTimeout>(loop_.raw(), this);
  tls_->timer.start(ctx->handshake_timeout);
  updateIo();
}

bool Connection::handshaking() const noexcept { return tls_ && tls_->handshaking; }

const std::string& Connection::peerCertificate() const noexcept {
  static const std::string none;
  return tls_ ? tls_->peer_subject : none;
}

bool Connection::tlsPending() const noexcept {
  return !tls_->handshaking && SSL_has_pending(tls_->ssl);
}

void Connection::tlsEvents(int& ev) const noexcept {
  if (tls_->handshaking) {
    ev = tls_->hs_events;
    return;
  }
  if (tls_->read_wants_write) ev |= EV_WRITE;
  if (tls_->write_wants_read) ev |= EV_READ;
}

void Connection::tlsUnlist() noexcept {
  tls_->timer.stop();
  if (tls_->listed) {
    tls_->unlink();
    tls_->listed = false;
    --tls_->ctx->handshaking_count_;
  }
}

void Connection::tlsTimeout(int) noexcept { close(sysError(ETIMEDOUT)); }

void Connection::tlsIo(int revents) noexcept {
  if (tls_->handshaking) {
    tlsHandshake();
    return;
  }
  // A write that waits for input, or a read that waits for room, is retried on that event.
  if ((revents & EV_WRITE) || (tls_->write_wants_read && (revents & EV_READ))) {
    bool read_too = tls_->read_wants_write && (revents & EV_WRITE);
    tls_->write_wants_read = false;
    tlsFlush();
    if (closed_) return;
    if (read_too) {
      tls_->read_wants_write = false;
      updateIo();
      tlsRead();
      return;
    }
  }
  if ((revents & EV_READ) && !paused_ && !eof_ && !close_after_flush_) tlsRead();
}

void Connection::tlsHandshake() noexcept {
  if (!tls_->opened && tls_->ctx->side() == TlsContext::Side::kServer) {
    // A TLS client opens with a handshake record (type 22). Anything else is closed at once
    // (OpenSSL would take a msgpack array's first byte, 0x9N, for an SSLv2 record header and
    // wait for kilobytes that never come, until the handshake timeout).
    unsigned char first;
    ssize_t n = ::recv(fd_.get(), &first, 1, MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (n <= 0) return close(n == 0 ? std::error_code() : sysError(errno));
    if (first != 22) return close(Errc::kNotTls);
    tls_->opened = true;
  }
  clearErrors();
  int r = SSL_do_handshake(tls_->ssl);
  if (r != 1) {
    int e = SSL_get_error(tls_->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      tls_->hs_events = e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE;
      updateIo();
      return;
    }
    close(tls_detail::failure(tls_->ssl, r));
    return;
  }
  tlsUnlist();  // off the handshake list, deadline stopped
  tls_->handshaking = false;
  if (X509* cert = SSL_get0_peer_certificate(tls_->ssl);
      cert && tls_->ctx->side() == TlsContext::Side::kServer)
    tls_->peer_subject = tls_detail::subjectOf(cert);
  updateIo();
  handler_->onHandshakeDone(*this);
  if (closed_) return;
  if (!out_.empty()) {
    tlsFlush();  // what was queued during the handshake
    if (closed_) return;
  }
  // The peer's first requests may have come with its last handshake flight, already read.
  if (SSL_has_pending(tls_->ssl)) io_.feed(EV_READ);
}

void Connection::tlsRead() noexcept {
  std::span<char> buf;
  if (!takeReadBuffer(buf)) return;
  clearErrors();
  size_t n = 0;
  int r = SSL_read_ex(tls_->ssl, buf.data(), buf.size(), &n);
  if (r == 1) {
    deliver(n);
    // More may be decrypted or buffered already: read it this iteration, after the others.
    if (!closed_ && !paused_ && !eof_ && SSL_has_pending(tls_->ssl)) io_.feed(EV_READ);
    return;
  }
  switch (SSL_get_error(tls_->ssl, r)) {
    case SSL_ERROR_WANT_READ:
      return;
    case SSL_ERROR_WANT_WRITE:
      tls_->read_wants_write = true;
      updateIo();
      return;
    case SSL_ERROR_ZERO_RETURN:  // close_notify, or an EOF (SSL_OP_IGNORE_UNEXPECTED_EOF)
      eof_ = true;
      updateIo();
      handler_->onEof(*this);
      return;
    default:
      close(tls_detail::failure(tls_->ssl, r));
  }
}

void Connection::tlsFlush() noexcept {
  if (closed_ || tls_->handshaking) return;  // goes out when the handshake is done
  while (!out_.empty()) {
    std::string_view run = out_.front();
    size_t n = 0;
    clearErrors();
    int r = SSL_write_ex(tls_->ssl, run.data(), run.size(), &n);
    if (r == 1) {
      out_.consume(n);
      continue;
    }
    int e = SSL_get_error(tls_->ssl, r);
    if (e == SSL_ERROR_WANT_WRITE) break;
    if (e == SSL_ERROR_WANT_READ) {
      tls_->write_wants_read = true;
      updateIo();
      break;
    }
    close(tls_detail::failure(tls_->ssl, r));
    return;
  }
  afterWrite();
}

void Connection::tlsShutdown() noexcept {
  if (tls_->handshaking || tls_->shut) return;
  tls_->shut = true;
  clearErrors();
  (void)SSL_shutdown(tls_->ssl);  // best effort: a full socket loses only the close_notify
  ERR_clear_error();
}

}  // namespace aiorpc::core
