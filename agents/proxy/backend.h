// One backend instance of the proxy: a pipelined client plus counters and ejection state.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>

#include "aiorpc/rpc/client.h"

namespace aiorpc::agents::proxy {

struct EjectPolicy {
  int after = 3;    // failed connect attempts in a row before ejection
  double base = 5;  // first period of an ejection episode, seconds; doubles per failed probe
  double max = 60;
};

// Outlier ejection (SPEC §6) without the loop: tests drive it with a manual clock.
//
// It counts connect attempts, never calls: one refused connect with 500 calls waiting on it is
// one failure. `after` failures in a row eject the instance for `base` seconds. When the period
// is over the owner probes it with one connect of its own (probeDue / probeStarted): success
// re-admits it, failure starts the next period, twice as long (at most `max`). Only a reply
// resets the count of failures in a row: a connect that is accepted and then reset or closed
// before its first reply is a failed attempt (SPEC §6), so an instance that accepts and drops
// every connection is ejected like one that refuses. While ejected, calls go elsewhere unless every
// candidate is ejected or has refused the call (panic routing: longest ejected first, see since()).
class Ejection {
 public:
  explicit Ejection(EjectPolicy p) : p_(p) {}

  bool ejected() const noexcept { return ejected_; }
  // When the current ejection began (earliest first is the panic order) and when it ends.
  double since() const noexcept { return since_; }
  double until() const noexcept { return until_; }
  double period() const noexcept { return ejected_ ? period_ : 0; }
  bool probeDue(double now) const noexcept { return ejected_ && !probing_ && now >= until_; }
  void probeStarted() noexcept { probing_ = true; }

  // One connect attempt failed (refused, timed out, reset before a byte came back). Returns
  // true when this failure starts an ejection period (a new episode or the next, doubled one).
  bool connectFailed(double now) noexcept {
    ++connect_failures_;
    if (ejected_) {
      // A failure inside the period (a panic-routed call) changes nothing; one after it (the
      // probe, or a panic-routed connect once the period was over) starts the next period.
      if (now < until_) return false;
      period_ = std::min(period_ * 2, p_.max);
      until_ = now + period_;
      probing_ = false;
      return true;
    }
    if (++in_a_row_ < p_.after) return false;
    ejected_ = true;
    ++ejections_;
    in_a_row_ = 0;
    period_ = std::min(p_.base, p_.max);
    since_ = now;
    until_ = now + period_;
    probing_ = false;
    return true;
  }
  // A connect succeeded: its probe re-admits an ejected instance (returns true), but the count
  // of failures in a row stays until a reply comes.
  bool connected() noexcept {
    probing_ = false;
    if (!ejected_) return false;
    ejected_ = false;
    period_ = 0;
    return true;
  }
  // A reply came back. Returns true when this re-admits an ejected instance.
  bool succeeded() noexcept {
    in_a_row_ = 0;
    probing_ = false;
    if (!ejected_) return false;
    ejected_ = false;
    period_ = 0;
    return true;
  }

  uint64_t connectFailures() const noexcept { return connect_failures_; }
  uint64_t ejections() const noexcept { return ejections_; }

 private:
  EjectPolicy p_;
  int in_a_row_ = 0;
  bool ejected_ = false, probing_ = false;
  double period_ = 0, since_ = 0, until_ = 0;
  uint64_t connect_failures_ = 0, ejections_ = 0;
};

// A backend instance, named by (host, port) as data: the address is built from an IP literal,
// never parsed from a string, so no keepalive record can make the proxy dial a unix socket.
// Its client reports every connect attempt to its Ejection (attempts, not calls); `on_change`
// hears when that ejects or re-admits it (the proxy logs and schedules the probe).
struct Backend {
  enum class Change { kEjected, kReadmitted };
  Backend(core::Loop& loop, uint64_t id, std::string name, const core::Address& addr,
          rpc::ClientOptions o, EjectPolicy e)
      : loop(loop), id(id), name(std::move(name)), client(loop, addr, o), eject(e) {
    client.onConnectResult([this](bool ok) { connectResult(ok); });
  }
  ~Backend() { loop.cancel(probe_timer); }
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  void connectResult(bool ok) {
    if (ok ? eject.connected() : eject.connectFailed(loop.now()))
      if (on_change) on_change(*this, ok ? Change::kReadmitted : Change::kEjected);
  }
  // A reply came back: a working instance.
  void answered() {
    if (eject.succeeded() && on_change) on_change(*this, Change::kReadmitted);
  }

  core::Loop& loop;
  uint64_t id;       // calls remember the instances they tried by id, never by pointer
  std::string name;  // host:port ([v6]:port)
  rpc::Client client;
  Ejection eject;
  std::function<void(Backend&, Change)> on_change;
  uint64_t requests = 0, errors = 0;
  size_t in_flight = 0;  // unwritten or awaiting a reply
  int listed = 0;        // in how many services of the current table
  bool denied = false;   // outside --backend-allow: never dialled
  core::Loop::TimerId probe_timer = 0;
};

}  // namespace aiorpc::agents::proxy
