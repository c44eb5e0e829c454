// core::Http (libcurl multi-socket on the loop) against a small blocking HTTP server on a
// thread: unary requests, timeouts, streamed bodies, cancel and destroy from inside callbacks.
#include "aiorpc/core/http.h"

#include <doctest/doctest.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "test/support/run_until.h"

namespace core = aiorpc::core;
using aiorpc::test::runUntil;

namespace {

// GET/POST /ok → "hello"; /echo → the request body; /chunks → 3 chunks 50 ms apart;
// /slow → nothing for 3 s; anything else → 404.
class TinyServer {
 public:
  TinyServer() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    ::listen(fd_, 16);
    thread_ = std::thread([this] { serve(); });
  }
  // Every handler thread is joined here: none outlives the server (they read stop_).
  ~TinyServer() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
    std::lock_guard<std::mutex> lock(mu_);
    for (int c : conns_) ::shutdown(c, SHUT_RDWR);  // unblocks a handler's read
    for (auto& t : workers_) t.join();
    for (int c : conns_) ::close(c);
  }
  std::string url(const std::string& path) const {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }

 private:
  void serve() {
    while (!stop_) {
      int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      std::lock_guard<std::mutex> lock(mu_);
      conns_.push_back(c);
      workers_.emplace_back([this, c] { handle(c); });
    }
  }
  static void send(int c, const std::string& s) {
    (void)!::send(c, s.data(), s.size(), MSG_NOSIGNAL);
  }
  void handle(int c) {
    std::string req;
    char buf[4096];
    size_t body_at = std::string::npos;
    size_t want = 0;
    while (true) {
      ssize_t n = ::read(c, buf, sizeof buf);
      if (n <= 0) break;
      req.append(buf, static_cast<size_t>(n));
      if (body_at == std::string::npos && (body_at = req.find("\r\n\r\n")) != std::string::npos) {
        body_at += 4;
        auto cl = req.find("Content-Length: ");
        if (cl != std::string::npos && cl < body_at) want = std::stoul(req.substr(cl + 16));
      }
      if (body_at != std::string::npos && req.size() >= body_at + want) break;
    }
    std::string path = req.substr(req.find(' ') + 1);
    path = path.substr(0, path.find(' '));
    std::string body = body_at == std::string::npos ? "" : req.substr(body_at);
    auto reply = [&](const std::string& status, const std::string& b) {
      send(c, "HTTP/1.1 " + status + "\r\nContent-Length: " + std::to_string(b.size()) +
                  "\r\nConnection: close\r\n\r\n" + b);
    };
    if (path == "/ok") {
      reply("200 OK", "hello");
    } else if (path == "/echo") {
      reply("200 OK", body);
    } else if (path == "/chunks") {
      send(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
      for (int i = 0; i < 3; ++i) {
        std::string piece = "line" + std::to_string(i) + "\n";
        char head[16];
        std::snprintf(head, sizeof head, "%zx\r\n", piece.size());
        send(c, head + piece + "\r\n");
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      send(c, "0\r\n\r\n");
    } else if (path == "/slow") {
      for (int i = 0; i < 30 && !stop_; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    } else {
      reply("404 Not Found", "no");
    }
    ::shutdown(c, SHUT_RDWR);  // closed by the destructor, after the join (no fd reuse race)
  }
  int fd_ = -1, port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::vector<int> conns_;
  std::vector<std::thread> workers_;
};

core::HttpRequest req(const std::string& url, std::string body = {}, double timeout = 5) {
  core::HttpRequest r;
  r.url = url;
  r.body = std::move(body);
  r.timeout = timeout;
  return r;
}

}  // namespace

TEST_SUITE("http") {
  TEST_CASE("a request and its reply; the body is posted; a 404 is a status, not an error") {
    TinyServer srv;
    core::Loop loop;
    core::Http http(loop);
    std::optional<core::HttpResponse> ok, echo, missing;
    http.request(req(srv.url("/ok")), [&](core::HttpResponse& r) { ok = r; });
    http.request(req(srv.url("/echo"), std::string(100000, 'x')),
                 [&](core::HttpResponse& r) { echo = r; });
    http.request(req(srv.url("/nope")), [&](core::HttpResponse& r) { missing = r; });
    CHECK(http.active() == 3);
    REQUIRE(runUntil(loop, [&] { return ok && echo && missing; }));
    CHECK(ok->ok());
    CHECK(ok->body == "hello");
    CHECK(echo->body == std::string(100000, 'x'));
    CHECK(missing->status == 404);
    CHECK_FALSE(missing->ok());
    CHECK(missing->error.empty());
    CHECK(http.active() == 0);
  }

  TEST_CASE("a timeout and a refused connect are errors, not hangs") {
    TinyServer srv;
    core::Loop loop;
    core::Http http(loop);
    std::optional<core::HttpResponse> slow, refused;
    auto t0 = std::chrono::steady_clock::now();
    http.request(req(srv.url("/slow"), {}, 0.3), [&](core::HttpResponse& r) { slow = r; });
    http.request(req("http://127.0.0.1:1/"), [&](core::HttpResponse& r) { refused = r; });
    REQUIRE(runUntil(loop, [&] { return slow && refused; }));
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2));
    CHECK(slow->status == 0);
    CHECK_FALSE(slow->error.empty());
    CHECK_FALSE(refused->error.empty());
  }

  TEST_CASE("a stream delivers its pieces in order, then done") {
    TinyServer srv;
    core::Loop loop;
    core::Http http(loop);
    std::string got;
    int pieces = 0;
    bool done = false;
    http.stream(
        req(srv.url("/chunks"), {}, 0), [&](std::string_view d) { got += d, ++pieces; },
        [&](core::HttpResponse& r) {
          CHECK(r.ok());
          CHECK(r.body.empty());  // not kept for streams
          done = true;
        });
    REQUIRE(runUntil(loop, [&] { return done; }));
    CHECK(got == "line0\nline1\nline2\n");
    CHECK(pieces >= 2);  // 50 ms apart: more than one delivery
  }

  TEST_CASE("cancel from inside the transfer's own callback, and destroy from inside another") {
    TinyServer srv;
    core::Loop loop;
    auto http = std::make_unique<core::Http>(loop);
    bool done_ran = false;
    int data_ran = 0;
    core::Http::Id id = 0;
    id = http->stream(
        req(srv.url("/chunks"), {}, 0),
        [&](std::string_view) {
          ++data_ran;
          http->cancel(id);  // frees the transfer that runs this callback: after it returns
        },
        [&](core::HttpResponse&) { done_ran = true; });
    runUntil(
        loop, [] { return false; }, 0.4);
    CHECK(data_ran == 1);
    CHECK_FALSE(done_ran);
    http->cancel(id);  // unknown now: ignored
    bool second = false, third = false;
    http->request(req(srv.url("/ok")), [&](core::HttpResponse&) {
      second = true;
      http.reset();  // the Http goes away inside its callback; the other request with it
    });
    http->request(req(srv.url("/slow"), {}, 2), [&](core::HttpResponse&) { third = true; });
    REQUIRE(runUntil(loop, [&] { return second; }));
    runUntil(
        loop, [] { return false; }, 0.2);
    CHECK_FALSE(third);
  }

  TEST_CASE("an http_proxy in the environment is never used (only the URL's own host is dialled)") {
    TinyServer srv;
    core::Loop loop;
    core::Http http(loop);
    ::setenv("http_proxy", "http://127.0.0.1:1", 1);
    ::setenv("HTTP_PROXY", "http://127.0.0.1:1", 1);
    std::optional<core::HttpResponse> r;
    http.request(req(srv.url("/ok")), [&](core::HttpResponse& x) { r = x; });
    REQUIRE(runUntil(loop, [&] { return r.has_value(); }));
    ::unsetenv("http_proxy");
    ::unsetenv("HTTP_PROXY");
    CHECK(r->ok());
    CHECK(r->body == "hello");
  }
}
