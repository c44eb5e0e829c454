// core::HttpServer: answers to libcurl (core::Http, an independent client) and to raw sockets
// that send what clients should not: oversized heads, trickles, bodies, pipelines never read,
// more connections than allowed; and a handler that destroys the server.
#include "aiorpc/core/http_server.h"

#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "aiorpc/core/http.h"
#include "aiorpc/core/tls.h"
#include "test/support/certs.h"
#include "test/support/run_until.h"

namespace core = aiorpc::core;
using aiorpc::test::runUntil;

namespace {

// A blocking client socket read without blocking: `in` gathers what came, `eof` a close.
struct Peer {
  int fd = -1;
  std::string in;
  bool eof = false;
  explicit Peer(int port) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  }
  ~Peer() { ::close(fd); }
  void send(std::string_view s) const {
    REQUIRE(::send(fd, s.data(), s.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(s.size()));
  }
  // Reads what is there; true once `pred` holds.
  bool poll() {
    char b[65536];
    for (;;) {
      ssize_t n = ::recv(fd, b, sizeof b, MSG_DONTWAIT);
      if (n > 0) {
        in.append(b, static_cast<size_t>(n));
      } else {
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) eof = true;
        return eof;
      }
    }
  }
  size_t count(std::string_view what) const {
    size_t n = 0;
    for (size_t at = in.find(what); at != std::string::npos; at = in.find(what, at + 1)) ++n;
    return n;
  }
};

struct Fixture {
  core::Loop loop;
  int calls = 0;
  std::string big;  // /big's body
  std::unique_ptr<core::HttpServer> server;
  int port = 0;
  explicit Fixture(core::HttpServerOptions opts = {}) {
    server = std::make_unique<core::HttpServer>(
        loop,
        [this](std::string_view method, std::string_view path) -> core::HttpAnswer {
          ++calls;
          if (path == "/hello") return {200, "text/plain", std::string(method) + " hello\n"};
          if (path == "/big") return {200, "text/plain", big};
          return {404, "text/plain", "not found\n"};
        },
        std::move(opts));
    auto bound = server->listen(*core::Address::parse("127.0.0.1:0"));
    REQUIRE(bound);
    port = bound->port();
  }
  std::string url(std::string_view path) const {
    return "http://127.0.0.1:" + std::to_string(port) + std::string(path);
  }
  // Runs the loop until the peer's bytes satisfy `pred` (or it closed and `pred` still fails).
  bool until(Peer& p, const std::function<bool()>& pred, double timeout = 5) {
    return runUntil(
        loop, [&] { return (p.poll(), pred()); }, timeout);
  }
};

}  // namespace

TEST_SUITE("http_server") {
  TEST_CASE("libcurl gets the handler's answers; unknown paths 404; the query is not the path") {
    Fixture f;
    core::Http http(f.loop);
    core::HttpResponse a, b;
    core::HttpRequest ra, rb;
    ra.url = f.url("/hello?x=1");
    rb.url = f.url("/nope");
    http.request(std::move(ra), [&](core::HttpResponse& r) { a = r; });
    http.request(std::move(rb), [&](core::HttpResponse& r) { b = r; });
    REQUIRE(runUntil(f.loop, [&] { return a.status && b.status; }));
    CHECK(a.status == 200);
    CHECK(a.body == "GET hello\n");
    CHECK(b.status == 404);
    CHECK(f.server->connections() >= 1);  // keep-alive: curl's connections stay open
  }

  TEST_CASE("pipelined requests are answered in order; HEAD has no body; close is honoured") {
    Fixture f;
    Peer p(f.port);
    p.send(
        "GET /hello HTTP/1.1\r\nHost: x\r\n\r\nHEAD /hello HTTP/1.1\r\n\r\n"
        "GET /hello HTTP/1.1\r\nConnection: close\r\n\r\nGET /hello HTTP/1.1\r\n\r\n");
    REQUIRE(f.until(p, [&] { return p.eof; }));
    CHECK(p.count("HTTP/1.1 200 OK") == 3);  // the fourth came after the close
    CHECK(p.count("GET hello\n") == 2);
    CHECK(p.in.find("HEAD hello") == std::string::npos);
    CHECK(p.in.find("Connection: close") != std::string::npos);
    CHECK(f.calls == 3);
  }

  TEST_CASE("malformed or unsupported requests get their status and loses nothing else") {
    struct Case {
      const char* request;
      const char* status;
      bool closes;
    };
    const Case cases[] = {
        {"POST /hello HTTP/1.1\r\n\r\n", "HTTP/1.1 405", false},
        {"GET /hello HTTP/2.0\r\n\r\n", "HTTP/1.1 505", true},
        {"GET /hello\r\n\r\n", "HTTP/1.1 400", true},
        {"GET  HTTP/1.1\r\n\r\n", "HTTP/1.1 400", true},
        {"G(T /hello HTTP/1.1\r\n\r\n", "HTTP/1.1 400", true},
        {"GET /hello HTTP/1.1\r\nno colon\r\n\r\n", "HTTP/1.1 400", true},
        {"GET /hello HTTP/1.1\r\n folded: x\r\n\r\n", "HTTP/1.1 400", true},
        {"GET /hello HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", "HTTP/1.1 400", true},
        {"GET /hello HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "HTTP/1.1 400",
         true},
        {"GET /hello HTTP/1.0\r\n\r\n", "HTTP/1.1 200", true},
    };
    for (const auto& c : cases) {
      CAPTURE(c.request);
      Fixture f;
      Peer p(f.port);
      p.send(c.request);
      REQUIRE(f.until(p, [&] { return p.in.find("\r\n\r\n") != std::string::npos; }));
      CHECK(p.in.rfind(c.status, 0) == 0);
      if (c.closes) {
        CHECK(f.until(p, [&] { return p.eof; }));
      } else {
        p.send("GET /hello HTTP/1.1\r\n\r\n");  // the connection still serves
        CHECK(f.until(p, [&] { return p.count("GET hello") == 1; }));
      }
    }
  }

  TEST_CASE("a head past max_head is answered 431 and closed, whatever its shape") {
    for (std::string head :
         {"GET /" + std::string(9000, 'a') + " HTTP/1.1\r\n\r\n",
          "GET / HTTP/1.1\r\nX: " + std::string(9000, 'b') + "\r\n\r\n", std::string(20000, 'c')}) {
      Fixture f;
      Peer p(f.port);
      p.send(head);
      REQUIRE(f.until(p, [&] { return p.eof; }));
      CHECK(p.in.rfind("HTTP/1.1 431", 0) == 0);
      CHECK(f.calls == 0);
    }
  }

  TEST_CASE("a trickle does not keep a connection: idle_timeout counts from the last request") {
    core::HttpServerOptions o;
    o.idle_timeout = 0.3;
    Fixture f(o);
    Peer p(f.port);
    std::string req = "GET /hello HTTP/1.1\r\nX-Pad: " + std::string(200, 'x');
    size_t sent = 0;
    double t0 = f.loop.now();
    // A byte every 20 ms: bytes keep coming, the head never completes.
    core::TimerWatcher tick;
    struct Drip {
      Peer& p;
      std::string& req;
      size_t& sent;
      void on(int) {
        if (sent < req.size()) ::send(p.fd, req.data() + sent++, 1, MSG_NOSIGNAL);
      }
    } drip{p, req, sent};
    tick.bind<&Drip::on>(f.loop.raw(), &drip);
    tick.start(0.02, 0.02);
    REQUIRE(f.until(p, [&] { return p.eof; }));
    CHECK(sent < req.size());
    CHECK(f.loop.now() - t0 < 2);
    CHECK(f.calls == 0);
  }

  TEST_CASE("past max_connections the connection longest without a request goes") {
    core::HttpServerOptions o;
    o.max_connections = 4;
    Fixture f(o);
    std::vector<std::unique_ptr<Peer>> idle;
    for (int i = 0; i < 4; ++i) {
      idle.push_back(std::make_unique<Peer>(f.port));
      REQUIRE(runUntil(f.loop, [&] { return f.server->connections() == idle.size(); }));
    }
    idle[0]->send("GET /hello HTTP/1.1\r\n\r\n");  // the first becomes the newest
    REQUIRE(f.until(*idle[0], [&] { return idle[0]->count("GET hello") == 1; }));
    Peer scraper(f.port);
    scraper.send("GET /hello HTTP/1.1\r\n\r\n");
    REQUIRE(f.until(scraper, [&] { return scraper.count("GET hello") == 1; }));
    CHECK(f.until(*idle[1], [&] { return idle[1]->eof; }));  // the oldest idle one
    CHECK(f.server->connections() == 4);
    CHECK(f.server->evicted() == 1);
    idle[0]->poll();
    CHECK(!idle[0]->eof);
  }

  TEST_CASE("a peer that pipelines and never reads costs a bounded number of answers") {
    Fixture f;
    f.big.assign(100 << 10, 'x');
    Peer p(f.port);
    int small = 1 << 14;  // a small receive buffer: the kernel holds little for us
    ::setsockopt(p.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    std::string reqs;
    for (int i = 0; i < 400; ++i) reqs += "GET /big HTTP/1.1\r\n\r\n";  // 8,800 bytes
    p.send(reqs);
    runUntil(
        f.loop, [] { return false; }, 0.5);
    // The kernel's buffers (a few MB on loopback) and the 1 MiB high-water mark, not 400.
    CHECK(f.calls < 100);
    int before = f.calls;
    // Reading on: every request is answered.
    REQUIRE(f.until(
        p, [&] { return p.count("HTTP/1.1 200") == 400; }, 20));
    CHECK(before < f.calls);
    CHECK(f.calls == 400);
  }

  TEST_CASE("peers outside the allow-list are closed at accept") {
    core::HttpServerOptions o;
    o.allow = *core::AllowList::parse("10.0.0.0/8");
    Fixture f(o);
    Peer p(f.port);
    REQUIRE(f.until(p, [&] { return p.eof; }));
    CHECK(f.server->refused() == 1);
    CHECK(f.calls == 0);
  }

  TEST_CASE("with a TLS context it is HTTPS, mutual when asked; plaintext gets nothing") {
    using aiorpc::test::certFile;
    using aiorpc::test::tlsContext;
    using Side = core::TlsContext::Side;
    core::HttpServerOptions o;
    o.tls = tlsContext(Side::kServer, "server", "ca.pem");  // client certificates from ca
    Fixture f(o);
    core::Http http(f.loop);
    core::HttpTlsFiles with_cert{certFile("ca.pem"), certFile("client.pem"),
                                 certFile("client.key")};
    core::HttpTlsFiles without_cert{certFile("ca.pem"), "", ""};
    core::HttpResponse a, b;
    core::HttpRequest ra, rb;
    ra.url = rb.url = "https://localhost:" + std::to_string(f.port) + "/hello";
    ra.tls = &with_cert;
    rb.tls = &without_cert;
    http.request(std::move(ra), [&](core::HttpResponse& r) { a = r; });
    http.request(std::move(rb), [&](core::HttpResponse& r) { b = r; });
    REQUIRE(runUntil(
        f.loop, [&] { return (a.status || !a.error.empty()) && (b.status || !b.error.empty()); }));
    CHECK(a.status == 200);
    CHECK(a.body == "GET hello\n");
    CHECK(b.status == 0);  // no client certificate: the handshake fails
    Peer p(f.port);
    p.send("GET /hello HTTP/1.1\r\n\r\n");
    REQUIRE(f.until(p, [&] { return p.eof; }));
    CHECK(p.in.find("HTTP/1.1") == std::string::npos);
    CHECK(f.calls == 1);
  }

  TEST_CASE("a handler that destroys the server: the answer is dropped, nothing else runs") {
    core::Loop loop;
    std::unique_ptr<core::HttpServer> server;
    int calls = 0;
    server = std::make_unique<core::HttpServer>(loop, [&](std::string_view, std::string_view) {
      ++calls;
      server.reset();
      return core::HttpAnswer{200, "text/plain", "gone\n"};
    });
    auto bound = server->listen(*core::Address::parse("127.0.0.1:0"));
    REQUIRE(bound);
    Peer p(bound->port());
    p.send("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
    REQUIRE(runUntil(loop, [&] { return (p.poll(), p.eof); }));
    CHECK(calls == 1);
    CHECK(!server);
  }
}
