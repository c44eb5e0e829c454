// Fuzz target: arbitrary bytes into a real server connection (decoder, limits, dispatcher,
// every demo method), then the peer half-closes. No crash, no leak, bounded memory.
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "aiorpc/agents/demo/demo.h"
#include "aiorpc/core/log.h"
#include "aiorpc/rpc/server.h"

using namespace aiorpc;

namespace {

struct World {
  core::Loop loop;
  rpc::Service svc{"sample.foo"};
  agents::demo::SampleFoo foo{loop, svc};
  std::unique_ptr<rpc::Server> server;
  World() {
    core::log::setLevel(core::LogLevel::kOff);
    rpc::ServerOptions o;
    o.limits.max_message_size = 1 << 20;
    o.limits.max_elements = 1 << 16;
    o.drain_timeout = 0.05;
    server = std::make_unique<rpc::Server>(loop, svc, o);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World* w = new World();  // one loop for the whole run, like a long-lived server
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) return 0;
  w->server->adopt(core::Fd(sv[0]));
  size_t off = 0;
  char sink[65536];
  // Feed in pieces, reading replies as they come, then half-close and let it drain.
  for (int spins = 0; spins < 10000 && off < size; ++spins) {
    ssize_t n = ::write(sv[1], data + off, std::min<size_t>(size - off, 4096));
    if (n > 0) off += static_cast<size_t>(n);
    w->loop.runOnce();
    while (::read(sv[1], sink, sizeof sink) > 0) {
    }
  }
  ::shutdown(sv[1], SHUT_WR);
  for (int spins = 0; spins < 10000 && w->server->connectionCount() > 0; ++spins) {
    w->loop.runOnce();
    while (::read(sv[1], sink, sizeof sink) > 0) {
    }
  }
  ::close(sv[1]);
  // The timers this input set are still pending here (sleeps of any length the input asked
  // for): a short timer must still fire on time beside them. A NaN or an infinity that got
  // into libev's timer heap breaks that, so such inputs are within the fuzzer's reach.
  bool fired = false;
  double start = w->loop.now();
  w->loop.after(0.001, [&] { fired = true; });
  while (!fired && w->loop.now() - start < 2) w->loop.runOnce();
  if (!fired) __builtin_trap();  // the timers of the process are broken
  w->loop.cancelAll();  // then abandon the sleeps (they answer nobody): memory stays bounded
  for (int i = 0; i < 4; ++i) w->loop.runOnce();
  return 0;
}
