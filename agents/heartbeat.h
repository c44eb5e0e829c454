// Heartbeat sender: keeps a service registered with one or more keepalives (SPEC §5).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "aiorpc/core/log.h"
#include "aiorpc/core/loop.h"
#include "aiorpc/rpc/client.h"

namespace aiorpc::agents {

struct HeartbeatOptions {
  std::vector<rpc::Target> keepalives;  // every one of them is told (tls:// with `tls`)
  std::string service;
  int port = 0;         // the port this service listens on
  double interval = 3;  // seconds between the end of one heartbeat and the next
  std::string token;    // sent as __auth__ in map-form params when set (never logged)
  std::shared_ptr<core::TlsContext> tls{};  // for tls:// keepalives (null: the system's CAs)
};

// Sends heartbeat(name, nil, port) to every keepalive at once, then to each `interval` after its
// last one completed: each keepalive on its own schedule, so one that is down or slow delays
// no other. The keepalive records the source address. Failures are logged (at most one line per
// keepalive per 10 s) and retried at the interval, forever: a live service never expires for
// want of a retry. stop() stops every schedule and unregisters from every keepalive at once
// (a heartbeat in flight is not waited for: the unregister follows it on its connection), each
// bounded by kUnregisterTimeout, then calls `done`: no late heartbeat brings the record back,
// and a keepalive that accepts and never answers delays a stop by one second at most.
class Heartbeat {
 public:
  Heartbeat(core::Loop& loop, HeartbeatOptions opts);
  // Heartbeats and unregisters in flight and its timers are dropped, uncalled; stop()'s `done`
  // never runs after it (docs/architecture.md, "Who owns a pending callback").
  ~Heartbeat();
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;
  void stop(core::Callback<void()> done);
  static constexpr double kUnregisterTimeout = 1.0;
  uint64_t sent() const noexcept { return sent_; }
  uint64_t failed() const noexcept { return failed_; }

 private:
  struct Target {
    rpc::Target keepalive;
    std::unique_ptr<rpc::Client> client;
    core::Loop::TimerId timer = 0;
    bool unregistered = false;
    core::log::Throttle log{10};  // failures: a line per 10 s at most
  };
  void beat(Target& t);
  void unregister(Target& t);
  void unregistered();
  core::Loop& loop_;
  HeartbeatOptions opts_;
  std::vector<std::unique_ptr<Target>> targets_;
  bool stopping_ = false;
  size_t left_ = 0;  // unregisters not yet answered
  core::Callback<void()> done_;
  uint64_t sent_ = 0, failed_ = 0;
  core::Tasks tasks_{loop_};  // last: dropped first
};

}  // namespace aiorpc::agents
