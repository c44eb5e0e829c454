// TlsContext: building and reloading OpenSSL contexts; the socket BIO; error categories.
// (Connection's TLS states are in tls_connection.cc.)
#include "aiorpc/core/tls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "aiorpc/core/platform.h"
#include "aiorpc/core/tls_detail.h"

namespace aiorpc::core {
namespace {

class TlsCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "tls"; }
  std::string message(int c) const override {
    const char* r = ERR_reason_error_string(static_cast<unsigned long>(c));
    return std::string("TLS: ") + (r ? r : "error");
  }
};

class X509Category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "x509"; }
  std::string message(int c) const override {
    return std::string("certificate verify failed: ") + X509_verify_cert_error_string(c);
  }
};

// The socket BIO: OpenSSL reads and writes the connection's socket through it. Ours rather
// than BIO_s_socket so that sends carry MSG_NOSIGNAL (a reset peer must not SIGPIPE an
// embedder) and so that the fd stays the Connection's (the BIO never closes it).
int bioWrite(BIO* b, const char* p, int n) {
  BIO_clear_retry_flags(b);
  int fd = static_cast<int>(reinterpret_cast<intptr_t>(BIO_get_data(b)));
  ssize_t w;
  do {
    w = ::send(fd, p, static_cast<size_t>(n), platform::kSendFlags);
  } while (w < 0 && errno == EINTR);
  if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) BIO_set_retry_write(b);
  return static_cast<int>(w);
}

int bioRead(BIO* b, char* p, int n) {
  BIO_clear_retry_flags(b);
  int fd = static_cast<int>(reinterpret_cast<intptr_t>(BIO_get_data(b)));
  ssize_t r;
  do {
    r = ::read(fd, p, static_cast<size_t>(n));
  } while (r < 0 && errno == EINTR);
  if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) BIO_set_retry_read(b);
  return static_cast<int>(r);
}

long bioCtrl(BIO*, int cmd, long, void*) { return cmd == BIO_CTRL_FLUSH ? 1 : 0; }

int bioCreate(BIO* b) {
  BIO_set_init(b, 1);
  return 1;
}

const BIO_METHOD* socketMethod() {
  static BIO_METHOD* m = [] {
    BIO_METHOD* bm = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "aiorpc socket");
    BIO_meth_set_write(bm, bioWrite);
    BIO_meth_set_read(bm, bioRead);
    BIO_meth_set_ctrl(bm, bioCtrl);
    BIO_meth_set_create(bm, bioCreate);
    return bm;
  }();
  return m;
}

// OpenSSL's queued errors as one line (the last is the most specific), and the queue emptied.
std::string takeErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    const char* r =
        ERR_SYSTEM_ERROR(e) ? std::strerror(ERR_GET_REASON(e)) : ERR_reason_error_string(e);
    if (!r) continue;
    if (!out.empty()) out += ": ";
    out += r;
  }
  return out.empty() ? "unknown error" : out;
}

}  // namespace

const std::error_category& tlsCategory() noexcept {
  static const TlsCategory c;
  return c;
}

const std::error_category& x509Category() noexcept {
  static const X509Category c;
  return c;
}

namespace tls_detail {

BIO* socketBio(int fd) {
  BIO* b = BIO_new(socketMethod());
  if (b) BIO_set_data(b, reinterpret_cast<void*>(static_cast<intptr_t>(fd)));
  return b;
}

std::error_code failure(SSL* ssl, int ret) {
  std::error_code ec;
  int e = SSL_get_error(ssl, ret);
  if (e == SSL_ERROR_SYSCALL) {
    ec = errno ? sysError(errno) : sysError(ECONNRESET);
  } else if (long v = SSL_get_verify_result(ssl); v != X509_V_OK) {
    ec = {static_cast<int>(v), x509Category()};
  } else if (unsigned long last = ERR_peek_last_error(); ERR_SYSTEM_ERROR(last)) {
    ec = sysError(ERR_GET_REASON(last));
  } else if (last) {
    ec = {static_cast<int>(ERR_PACK(ERR_GET_LIB(last), 0, ERR_GET_REASON(last))), tlsCategory()};
  } else {
    ec = sysError(EPROTO);
  }
  ERR_clear_error();
  return ec;
}

std::string subjectOf(X509* cert) {
  BIO* b = BIO_new(BIO_s_mem());
  if (!b) return {};
  X509_NAME_print_ex(b, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253);
  char* p = nullptr;
  long n = BIO_get_mem_data(b, &p);
  std::string s(p, n > 0 ? static_cast<size_t>(n) : 0);
  BIO_free(b);
  return s;
}

}  // namespace tls_detail

SSL_CTX* TlsContext::build(Side side, const TlsFiles& f, std::string& error) {
  bool server = side == Side::kServer;
  if (server && (f.cert.empty() || f.key.empty())) {
    error = "a TLS server needs a certificate and a key";
    return nullptr;
  }
  if (f.cert.empty() != f.key.empty()) {
    error = "a certificate needs its key (and a key its certificate)";
    return nullptr;
  }
  ERR_clear_error();
  SSL_CTX* ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  auto fail = [&](const std::string& what) {
    error = what + ": " + takeErrors();
    SSL_CTX_free(ctx);
    return nullptr;
  };
  if (!ctx) return fail("cannot make a TLS context");
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(
      ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_COMPRESSION);
  // Partial writes: SSL_write returns after each record, so the out queue is consumed as the
  // kernel takes it; the retry after WANT_WRITE may pass the queue's front again (same bytes,
  // maybe longer). Idle connections give their 16 KiB+ buffers back.
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_read_ahead(ctx, 1);  // one read per batch of records, not two per record
  if (!f.cert.empty()) {           // (and so a key: checked above)
    if (SSL_CTX_use_certificate_chain_file(ctx, f.cert.c_str()) != 1)
      return fail("certificate " + f.cert);
    if (SSL_CTX_use_PrivateKey_file(ctx, f.key.c_str(), SSL_FILETYPE_PEM) != 1)
      return fail("key " + f.key);
    if (SSL_CTX_check_private_key(ctx) != 1)
      return fail("key " + f.key + " does not match certificate " + f.cert);
  }
  if (server) {
    static const unsigned char kSid[] = "aiorpc";
    SSL_CTX_set_session_id_context(ctx, kSid, sizeof kSid - 1);
    SSL_CTX_set_num_tickets(ctx, 1);  // resumption offered: one ticket is enough per client
    if (!f.ca.empty()) {
      if (SSL_CTX_load_verify_locations(ctx, f.ca.c_str(), nullptr) != 1)
        return fail("client CA " + f.ca);
      STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(f.ca.c_str());
      if (!names) return fail("client CA " + f.ca);
      SSL_CTX_set_client_CA_list(ctx, names);
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    }
  } else {
    if (f.ca.empty() ? SSL_CTX_set_default_verify_paths(ctx) != 1
                     : SSL_CTX_load_verify_locations(ctx, f.ca.c_str(), nullptr) != 1)
      return fail(f.ca.empty() ? std::string("the system's trust store") : "CA " + f.ca);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  }
  return ctx;
}

std::shared_ptr<TlsContext> TlsContext::make(Side side, TlsFiles files, std::string& error) {
  SSL_CTX* ctx = build(side, files, error);
  if (!ctx) return nullptr;
  std::shared_ptr<TlsContext> c(new TlsContext(side, std::move(files)));
  c->ctx_ = ctx;
  return c;
}

TlsContext::~TlsContext() { SSL_CTX_free(ctx_); }

std::string TlsContext::reload() {
  std::string error;
  SSL_CTX* ctx = build(side_, files_, error);
  if (!ctx) return error;
  SSL_CTX_free(ctx_);  // connections made from it hold their own reference
  ctx_ = ctx;
  return {};
}

}  // namespace aiorpc::core
