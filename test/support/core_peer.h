// Test helpers: a recording ConnectionHandler and blocking-socket utilities.
#pragma once

#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <memory>
#include <string>

#include "aiorpc/core/connection.h"

namespace aiorpc::test {

// Owns a Connection and records what happens to it.
struct Recorder final : core::ConnectionHandler {
  std::unique_ptr<core::Connection> conn;
  core::Buffer in;
  std::string data;
  int closes = 0, eofs = 0, highs = 0, lows = 0;
  std::error_code why;
  std::function<void(Recorder&)> on_data;

  Recorder(core::Loop& loop, core::Fd fd)
      : conn(std::make_unique<core::Connection>(loop, std::move(fd), this)) {}
  std::span<char> readBuffer() override { return in.reserve(4096); }
  void onData(size_t n) override {
    in.commit(n);
    data.append(in.readable());
    in.consume(in.size());
    if (on_data) on_data(*this);
  }
  void onEof(core::Connection& c) override {
    ++eofs;
    c.closeAfterFlush();
  }
  void onHighWater(core::Connection&) override { ++highs; }
  void onLowWater(core::Connection&) override { ++lows; }
  void onClose(std::error_code e) override {
    ++closes;
    why = e;
  }
};

inline std::pair<core::Fd, core::Fd> socketPair() {
  int sv[2];
  ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv);
  return {core::Fd(sv[0]), core::Fd(sv[1])};
}

}  // namespace aiorpc::test
