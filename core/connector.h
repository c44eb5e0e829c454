// A non-blocking connect with a timeout.
#pragma once

#include "aiorpc/core/address.h"
#include "aiorpc/core/callback.h"
#include "aiorpc/core/loop.h"
#include "aiorpc/core/socket.h"

namespace aiorpc::core {

// One connect attempt at a time. The callback always runs later, from the loop (never inside
// start()), exactly once per start() unless cancel() or destruction comes first.
class Connector {
 public:
  using Done = Callback<void(Result<Fd>)>;
  explicit Connector(Loop& loop);
  ~Connector() { cancel(); }
  Connector(const Connector&) = delete;
  Connector& operator=(const Connector&) = delete;

  void start(const Address& addr, double timeout_s, Done done);
  void cancel() noexcept;
  bool busy() const noexcept { return static_cast<bool>(done_); }

 private:
  void onWritable(int) noexcept;
  void onTimeout(int) noexcept;
  void finish(Result<Fd> r) noexcept;

  Fd fd_;
  IoWatcher io_;
  TimerWatcher timer_;
  Done done_;
  std::error_code pending_error_;  // an immediate failure, reported from the timer
};

}  // namespace aiorpc::core
