// Heartbeat sender: keeps a service registered with a keepalive (SPEC §5).
#pragma once

#include <memory>
#include <string>

#include "aiorpc/core/loop.h"
#include "aiorpc/rpc/client.h"

namespace aiorpc::agents {

struct HeartbeatOptions {
  core::Address keepalive;
  std::string service;
  int port = 0;         // the port this service listens on
  double interval = 3;  // seconds between the end of one heartbeat and the next
  std::string token;    // sent as __auth__ in map-form params when set (never logged)
};

// Sends heartbeat(name, nil, port) at once, then `interval` after each one completes. The
// keepalive records the source address. Failures are logged (at most one line per 10 s) and
// retried; never fatal. stop() unregisters (bounded by a short timeout), then calls `done`.
class Heartbeat {
 public:
  Heartbeat(core::Loop& loop, HeartbeatOptions opts);
  ~Heartbeat();
  void stop(core::Callback<void()> done);
  uint64_t sent() const noexcept { return sent_; }
  uint64_t failed() const noexcept { return failed_; }

 private:
  void beat();
  core::Loop& loop_;
  HeartbeatOptions opts_;
  rpc::Client client_;
  core::Loop::TimerId timer_ = 0;
  bool stopping_ = false;
  double last_log_ = -1e9;
  uint64_t sent_ = 0, failed_ = 0;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace aiorpc::agents
