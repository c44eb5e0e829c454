// A line-echo server on aiorpc::core alone: what a C++ author writes to embed the reactor.
// Usage: line_echo [HOST:PORT]   (default 127.0.0.1:0; prints "listening on HOST:PORT")
#include <cstdio>
#include <map>
#include <memory>

#include "aiorpc/core/connection.h"
#include "aiorpc/core/listener.h"
#include "aiorpc/core/log.h"

using namespace aiorpc::core;

class Session final : public ConnectionHandler {
 public:
  Session(Loop& loop, Fd fd, std::map<Session*, std::unique_ptr<Session>>& all)
      : conn_(loop, std::move(fd), this), all_(all) {}
  std::span<char> readBuffer() override { return in_.reserve(16 * 1024); }
  void onData(size_t n) override {
    in_.commit(n);
    auto text = in_.readable();
    auto end = text.rfind('\n');
    if (end == std::string_view::npos) return;  // wait for a whole line
    conn_.send(text.substr(0, end + 1));        // queued; flushed once per loop iteration
    in_.consume(end + 1);
  }
  void onHighWater(Connection& c) override { c.pauseReading(); }  // backpressure
  void onLowWater(Connection& c) override { c.resumeReading(); }
  void onClose(std::error_code) override {  // free only after the callback stack unwinds
    auto it = all_.find(this);
    conn_.loop().deferDelete(std::move(it->second));
    all_.erase(it);
  }

 private:
  Connection conn_;
  Buffer in_;
  std::map<Session*, std::unique_ptr<Session>>& all_;
};

int main(int argc, char** argv) {
  prepareProcess();  // ignore SIGPIPE, raise the fd limit
  Loop loop;
  std::map<Session*, std::unique_ptr<Session>> sessions;
  Listener listener(loop, [&](Fd fd, const Address&) {
    auto s = std::make_unique<Session>(loop, std::move(fd), sessions);
    sessions[s.get()] = std::move(s);
  });
  auto bound = listener.listen(*Address::parse(argc > 1 ? argv[1] : "127.0.0.1:0"));
  if (!bound) return std::fprintf(stderr, "listen: %s\n", bound.error().message().c_str()), 2;
  std::printf("listening on %s\n", bound->toString().c_str());
  std::fflush(stdout);
  loop.onSignal(SIGTERM, [&](int) { listener.stop(), loop.stop(); });
  loop.onSignal(SIGINT, [&](int) { listener.stop(), loop.stop(); });
  loop.run();
}
