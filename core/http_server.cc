// HTTP/1.1 for operators' endpoints (see http_server.h): heads parsed strictly, answers made at
// once, every resource bounded.
#include "aiorpc/core/http_server.h"

#include <fmt/format.h>

#include <array>
#include <charconv>

#include "aiorpc/core/connection.h"
#include "aiorpc/core/listener.h"
#include "aiorpc/core/log.h"
#include "aiorpc/core/tls.h"
#include "aiorpc/core/watcher.h"

namespace aiorpc::core {

namespace {
// Output queued past this stops reading (pipelined requests wait in the buffer) until it drains
// below the low mark: a peer that sends requests and never reads costs one answer more at most.
constexpr size_t kHighWater = 1 << 20, kLowWater = 256 << 10;

std::string_view reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 431:
      return "Request Header Fields Too Large";
    case 503:
      return "Service Unavailable";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Unknown";
  }
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// A token character (RFC 9110 §5.6.2), for methods and header names.
bool isToken(std::string_view s) {
  if (s.empty()) return false;
  for (unsigned char c : s) {
    if (c <= 32 || c >= 127) return false;
    if (std::string_view("\"(),/:;<=>?@[\\]{}").find(static_cast<char>(c)) !=
        std::string_view::npos)
      return false;
  }
  return true;
}
}  // namespace

struct HttpServer::Conn final : ListNode, ConnectionHandler {
  Conn(HttpServer& s, Fd fd) : server(&s), conn(s.loop_, std::move(fd), this) {
    conn.setWaterMarks(kHighWater, kLowWater);
    if (s.opts_.tls) conn.startTls(s.opts_.tls);
    idle.bind<&Conn::onIdle>(s.loop_, this);
    idle.start(s.opts_.idle_timeout);
  }

  std::span<char> readBuffer() override { return buf; }
  void onData(size_t n) override {
    head.append(buf.data(), n);
    process();
  }
  void onHighWater(Connection&) override { conn.pauseReading(); }
  void onLowWater(Connection&) override {
    conn.resumeReading();
    tasks.post([this] { process(); });  // requests that arrived meanwhile (not inside a write)
  }
  void onClose(std::error_code) override {
    idle.stop();
    if (server) server->closed(*this);  // frees this from the loop
  }
  void onIdle(int) noexcept { conn.close(); }

  void process() {
    while (!conn.closed() && !conn.readingPaused()) {
      size_t end = head.find("\r\n\r\n");
      size_t limit = server->opts_.max_head;
      if (end == std::string::npos ? head.size() > limit : end + 4 > limit) {
        answer({431, "text/plain; charset=utf-8", "request head too large\n"}, false, false);
        return;
      }
      if (end == std::string::npos) return;
      bool keep = serve(std::string_view(head.data(), end));
      // (The handler may have destroyed the server: then this connection is closed.)
      if (!keep || !server || conn.closed()) return;
      head.erase(0, end + 4);
      // A complete request: this connection is the newest, its idle time starts again.
      server->conns_.pushBack(this);
      idle.start(server->opts_.idle_timeout);
    }
  }

  // One request head (without its blank line); false: close after the answer.
  bool serve(std::string_view req) {
    size_t eol = req.find("\r\n");
    std::string_view line = req.substr(0, eol);
    std::string_view headers = eol == std::string_view::npos ? "" : req.substr(eol + 2);
    size_t sp1 = line.find(' '), sp2 = line.rfind(' ');
    if (sp1 == std::string_view::npos || sp2 == sp1) return bad("malformed request line");
    std::string_view method = line.substr(0, sp1), target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    std::string_view version = line.substr(sp2 + 1);
    if (!isToken(method) || target.empty() || target.find(' ') != std::string_view::npos)
      return bad("malformed request line");
    if (version.substr(0, 5) != "HTTP/" || version.size() != 8 || version[6] != '.')
      return bad("malformed HTTP version");
    if (version != "HTTP/1.1" && version != "HTTP/1.0")
      return answer({505, "text/plain; charset=utf-8", "HTTP/1.0 and HTTP/1.1 only\n"}, false,
                    false);
    bool keep = version == "HTTP/1.1";
    while (!headers.empty()) {
      size_t e = headers.find("\r\n");
      std::string_view h = headers.substr(0, e);
      headers = e == std::string_view::npos ? "" : headers.substr(e + 2);
      size_t colon = h.find(':');
      if (colon == std::string_view::npos || !isToken(h.substr(0, colon)))
        return bad("malformed header line");  // (obsolete folding included)
      std::string_view name = h.substr(0, colon), value = trim(h.substr(colon + 1));
      if (iequals(name, "connection")) {
        if (iequals(value, "close")) keep = false;
        if (iequals(value, "keep-alive")) keep = true;
      } else if (iequals(name, "transfer-encoding") ||
                 (iequals(name, "content-length") && value != "0")) {
        return bad("request bodies are not accepted");  // we could not find the next request
      }
    }
    bool head_only = method == "HEAD";
    if (method != "GET" && !head_only)
      return answer({405, "text/plain; charset=utf-8", "GET or HEAD only\n"}, keep, false);
    std::string_view path = target.substr(0, target.find('?'));
    auto handler = server->handler_;  // kept alive even if the handler destroys the server
    return answer((*handler)(method, path), keep, head_only);
  }

  bool bad(std::string_view why) {
    return answer({400, "text/plain; charset=utf-8", std::string(why) + "\n"}, false, false);
  }

  bool answer(const HttpAnswer& a, bool keep, bool head_only) {
    if (conn.closed()) return false;
    auto& out = conn.out();
    std::string head =
        fmt::format("HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}\r\n", a.status,
                    reason(a.status), a.content_type, a.body.size(),
                    a.status == 405 ? "Allow: GET, HEAD\r\n"
                    : keep          ? ""
                                    : "Connection: close\r\n");
    out.append(head);
    if (!head_only) out.append(a.body);
    conn.sent();
    if (!keep) conn.closeAfterFlush();
    return keep;
  }

  HttpServer* server;  // null once the server has gone
  Connection conn;
  TimerWatcher idle;
  std::string head;  // bytes of requests not yet answered
  std::array<char, 4096> buf;
  Tasks tasks{conn.loop()};  // last: dropped first
};

HttpServer::HttpServer(Loop& loop, Handler handler, HttpServerOptions opts)
    : loop_(loop),
      handler_(std::make_shared<Handler>(std::move(handler))),
      opts_(std::move(opts)) {}

HttpServer::~HttpServer() { stop(); }

Result<Address> HttpServer::listen(const Address& addr) {
  listener_ = std::make_unique<Listener>(
      loop_, [this](Fd fd, const Address& peer) { accept(std::move(fd), peer); });
  return listener_->listen(addr);
}

void HttpServer::stop() noexcept {
  if (listener_) listener_->stop();
  while (!conns_.empty()) {
    auto* c = static_cast<Conn*>(conns_.front());
    c->server = nullptr;
    c->unlink();
    --count_;
    c->conn.close();  // onClose does not come back here
    loop_.deferDelete(std::unique_ptr<Conn>(c));
  }
}

void HttpServer::accept(Fd fd, const Address& peer) {
  if (!opts_.allow.allows(peer)) {
    ++refused_;
    return;  // (fd closes)
  }
  if (count_ >= opts_.max_connections && !conns_.empty()) {
    ++evicted_;
    static_cast<Conn*>(conns_.front())->conn.close();  // the longest without a request
  }
  auto* c = new Conn(*this, std::move(fd));
  conns_.pushBack(c);
  ++count_;
}

void HttpServer::closed(Conn& c) noexcept {
  c.unlink();
  c.server = nullptr;
  --count_;
  loop_.deferDelete(std::unique_ptr<Conn>(&c));
}

}  // namespace aiorpc::core
