// Connection over TLS (SPEC §8), both ends ours, on real sockets, with certificates made by the
// openssl CLI (test/support/make_certs.sh). Independent peers (Python's ssl, openssl s_client)
// are in test/proc/tls_test.py.
#include "aiorpc/core/tls.h"

#include <doctest/doctest.h>
#include <openssl/x509_vfy.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <string>

#include "aiorpc/core/connection.h"
#include "test/support/certs.h"
#include "test/support/core_peer.h"
#include "test/support/run_until.h"

using namespace aiorpc::core;
using aiorpc::test::Recorder;
using aiorpc::test::runUntil;
using aiorpc::test::socketPair;

namespace {

const std::string& certs() { return aiorpc::test::certDir(); }
std::string file(const std::string& name) { return aiorpc::test::certFile(name); }

std::shared_ptr<TlsContext> server(const std::string& leaf = "server", std::string ca = "") {
  return aiorpc::test::tlsContext(TlsContext::Side::kServer, leaf, ca);
}

std::shared_ptr<TlsContext> client(const std::string& ca = "ca.pem", const std::string& leaf = "") {
  return aiorpc::test::tlsContext(TlsContext::Side::kClient, leaf, ca);
}

// A server and a client Recorder joined by a socketpair, TLS started on both.
struct Pair {
  Loop& loop;
  std::unique_ptr<Recorder> s, c;
  Pair(Loop& l, const std::shared_ptr<TlsContext>& sctx, const std::shared_ptr<TlsContext>& cctx,
       const std::string& host = "localhost")
      : loop(l) {
    auto [a, b] = socketPair();
    s = std::make_unique<Recorder>(loop, std::move(a));
    c = std::make_unique<Recorder>(loop, std::move(b));
    s->conn->startTls(sctx);
    c->conn->startTls(cctx, host);
  }
};

std::string pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 7) % 26);
  return s;
}

}  // namespace

TEST_SUITE("tls") {
  TEST_CASE("bytes queued in place go out through TLS in order, released once written") {
    Loop loop;
    Pair p(loop, server(), client());
    std::string big = pattern(1 << 20);
    int released = 0;
    p.c->conn->send("a");
    p.c->conn->out().appendRef(
        big, [](void* ctx) noexcept { ++*static_cast<int*>(ctx); }, &released);
    p.c->conn->send("z");
    p.c->conn->sent();
    REQUIRE(runUntil(loop, [&] { return p.s->data.size() == big.size() + 2; }));
    CHECK(p.s->data == "a" + big + "z");
    CHECK(released == 1);
  }

  TEST_CASE("bytes queued before the handshake go both ways once it is done, in order") {
    Loop loop;
    Pair p(loop, server(), client());
    std::string big = pattern(3 << 20);  // several records and many partial writes
    p.c->conn->send("hello ");
    p.c->conn->send(big);
    CHECK(p.c->conn->handshaking());
    REQUIRE(runUntil(loop, [&] { return p.s->data.size() == big.size() + 6; }));
    CHECK(p.s->data == "hello " + big);
    CHECK_FALSE(p.c->conn->handshaking());
    CHECK(p.s->conn->peerCertificate().empty());  // not mutual: none asked
    p.s->conn->send(big);
    REQUIRE(runUntil(loop, [&] { return p.c->data.size() == big.size(); }));
    CHECK(p.c->data == big);
    // A graceful close: the peer sees close_notify as an EOF, not an error.
    p.s->conn->closeAfterFlush();
    REQUIRE(runUntil(loop, [&] { return p.c->closes == 1; }));
    CHECK(p.c->eofs == 1);
    CHECK_FALSE(p.c->why);
  }

  TEST_CASE("mutual TLS: the server sees the client's verified subject") {
    Loop loop;
    Pair p(loop, server("server", "ca.pem"), client("ca.pem", "client"));
    p.c->conn->send("x");
    REQUIRE(runUntil(loop, [&] { return p.s->data == "x"; }));
    CHECK(p.s->conn->peerCertificate() == "CN=client1,O=aiorpc tests");
    CHECK(p.c->conn->peerCertificate().empty());  // a client keeps no subject
  }

  TEST_CASE("mutual TLS: no certificate, or one from another CA, is refused") {
    for (std::string leaf : {"", "client2"}) {
      CAPTURE(leaf);
      Loop loop;
      Pair p(loop, server("server", "ca.pem"), client("ca.pem", leaf));
      p.c->conn->send("x");
      REQUIRE(runUntil(loop, [&] { return p.s->closes == 1; }));
      CHECK(p.s->data.empty());
      CHECK(p.s->why);
      if (!leaf.empty()) CHECK(p.s->why.category() == x509Category());
    }
  }

  TEST_CASE("the client refuses a wrong name, an expired certificate and an unknown CA") {
    struct Case {
      const char* leaf;
      const char* host;
      int err;
    } cases[] = {
        {"wrongname", "localhost", X509_V_ERR_HOSTNAME_MISMATCH},
        {"server", "other.example", X509_V_ERR_HOSTNAME_MISMATCH},
        {"server", "127.0.0.2", X509_V_ERR_IP_ADDRESS_MISMATCH},
        {"expired", "localhost", X509_V_ERR_CERT_HAS_EXPIRED},
        {"untrusted", "localhost", X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY},
    };
    for (const auto& k : cases) {
      CAPTURE(k.leaf);
      CAPTURE(k.host);
      Loop loop;
      Pair p(loop, server(k.leaf), client(), k.host);
      p.c->conn->send("secret");
      REQUIRE(runUntil(loop, [&] { return p.c->closes == 1; }));
      CHECK(p.c->why == std::error_code(k.err, x509Category()));
      CHECK(p.c->conn->handshaking());
      runUntil(
          loop, [&] { return p.s->closes == 1; }, 2);
      CHECK(p.s->data.empty());  // nothing was sent to the wrong server
    }
    // The IP SANs match an IP dialled.
    Loop loop;
    Pair p(loop, server(), client(), "127.0.0.1");
    p.c->conn->send("ok");
    REQUIRE(runUntil(loop, [&] { return p.s->data == "ok"; }));
  }

  TEST_CASE("a plaintext peer is closed, never answered") {
    Loop loop;
    auto [a, b] = socketPair();
    Recorder s(loop, std::move(a));
    s.conn->startTls(server());
    const char req[] = "\x94\x00\x01\xa4\x65\x63\x68\x6f\x90";  // [0, 1, "echo", []]
    REQUIRE(::write(b.get(), req, sizeof req - 1) == sizeof req - 1);
    REQUIRE(runUntil(
        loop, [&] { return s.closes == 1; }, 1));  // at once, not at the timeout
    CHECK(s.why == make_error_code(Errc::kNotTls));
    CHECK(s.data.empty());
    char buf[256];
    CHECK(::read(b.get(), buf, sizeof buf) <= 0);  // nothing answered (EOF, or a reset)
  }

  TEST_CASE("a silent peer is closed at the handshake timeout") {
    Loop loop;
    auto ctx = server();
    ctx->handshake_timeout = 0.2;
    auto [a, b] = socketPair();
    Recorder s(loop, std::move(a));
    s.conn->startTls(ctx);
    CHECK(ctx->handshakes() == 1);
    REQUIRE(runUntil(loop, [&] { return s.closes == 1; }));
    CHECK(s.why == std::error_code(ETIMEDOUT, std::system_category()));
    CHECK(ctx->handshakes() == 0);
  }

  TEST_CASE("handshakes in progress are bounded: the oldest goes for a new one") {
    Loop loop;
    auto ctx = server();
    ctx->max_handshakes = 2;
    std::vector<std::unique_ptr<Recorder>> rs;
    std::vector<Fd> peers;
    for (int i = 0; i < 3; ++i) {
      auto [a, b] = socketPair();
      rs.push_back(std::make_unique<Recorder>(loop, std::move(a)));
      rs.back()->conn->startTls(ctx);
      peers.push_back(std::move(b));
    }
    CHECK(rs[0]->closes == 1);
    CHECK(rs[0]->why == std::error_code(ECONNABORTED, std::system_category()));
    CHECK(rs[1]->closes == 0);
    CHECK(ctx->handshakes() == 2);
    CHECK(ctx->handshakesEvicted() == 1);
    // A real client still gets through (the oldest silent one makes room).
    auto [a, b] = socketPair();
    Recorder s(loop, std::move(a)), c(loop, std::move(b));
    s.conn->startTls(ctx);
    c.conn->startTls(client(), "localhost");
    c.conn->send("hi");
    REQUIRE(runUntil(loop, [&] { return s.data == "hi"; }));
    CHECK(ctx->handshakes() == 1);  // rs[2] is still waiting; rs[1] made room
  }

  TEST_CASE("input read ahead by OpenSSL is delivered after a pause") {
    Loop loop;
    Pair p(loop, server(), client());
    std::string big = pattern(1 << 20);
    p.s->on_data = [](Recorder& r) { r.conn->pauseReading(); };
    p.c->conn->send(big);
    REQUIRE(runUntil(loop, [&] { return !p.s->data.empty(); }));
    size_t first = p.s->data.size();
    runUntil(
        loop, [] { return false; }, 0.1);
    CHECK(p.s->data.size() == first);  // paused: nothing more delivered
    p.s->on_data = nullptr;
    p.s->conn->resumeReading();
    REQUIRE(runUntil(loop, [&] { return p.s->data.size() == big.size(); }));
    CHECK(p.s->data == big);
  }

  TEST_CASE("a connection closed and freed from inside its own read upcall") {
    Loop loop;
    Pair p(loop, server(), client());
    p.s->on_data = [&](Recorder& r) {
      r.conn->close();
      loop.deferDelete(std::move(r.conn));
    };
    p.c->conn->send(pattern(100000));
    REQUIRE(runUntil(loop, [&] { return p.s->closes == 1; }));
    REQUIRE(runUntil(loop, [&] { return p.c->closes == 1; }));
  }

  TEST_CASE("reload: new material for new connections; a broken file keeps the old") {
    Loop loop;
    std::string dir = certs() + "/reload";
    REQUIRE(std::system(("mkdir -p " + dir + " && cp " + file("server.pem") + " " +
                         file("server.key") + " " + dir)
                            .c_str()) == 0);
    std::string error;
    auto ctx = TlsContext::make(TlsContext::Side::kServer,
                                {dir + "/server.pem", dir + "/server.key", ""}, error);
    REQUIRE(ctx);
    std::ofstream(dir + "/server.pem") << "garbage\n";
    CHECK_FALSE(ctx->reload().empty());
    {
      Pair p(loop, ctx, client());
      p.c->conn->send("still");
      REQUIRE(runUntil(loop, [&] { return p.s->data == "still"; }));
    }
    // A renewed certificate: new connections present it.
    REQUIRE(std::system(("cp " + file("server2.pem") + " " + dir + "/server.pem && cp " +
                         file("server2.key") + " " + dir + "/server.key")
                            .c_str()) == 0);
    CHECK(ctx->reload().empty());
    Pair p(loop, ctx, client());
    p.c->conn->send("new");
    REQUIRE(runUntil(loop, [&] { return p.s->data == "new"; }));
  }

  TEST_CASE("make: a missing or mismatched file is named in the error") {
    std::string error;
    CHECK_FALSE(TlsContext::make(TlsContext::Side::kServer,
                                 {file("nope.pem"), file("server.key"), ""}, error));
    CHECK(error.find("nope.pem") != std::string::npos);
    CHECK_FALSE(TlsContext::make(TlsContext::Side::kServer,
                                 {file("server.pem"), file("client.key"), ""}, error));
    INFO(error);
    CHECK(error.find("mismatch") != std::string::npos);
    CHECK_FALSE(TlsContext::make(TlsContext::Side::kServer, {}, error));
    CHECK_FALSE(TlsContext::make(TlsContext::Side::kClient, {"", "", file("broken.pem")}, error));
  }
}
