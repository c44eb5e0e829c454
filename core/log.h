// Levelled one-line logging on fmt, to stderr or a file.
#pragma once

#include <fmt/format.h>

#include <string>
#include <string_view>
#include <utility>

#include "aiorpc/core/error.h"

namespace aiorpc::core {

enum class LogLevel { kDebug, kInfo, kWarn, kError, kOff };

namespace log {

// Not thread-safe by design: aiorpc is single-threaded. Every line is flushed as written.
void setLevel(LogLevel l) noexcept;
LogLevel level() noexcept;
Result<LogLevel> parseLevel(std::string_view s);
// Appends to `path`; an empty path means stderr.
Result<void> setFile(const std::string& path);
// Opens the log file again under its name (after logrotate moved it away; SIGHUP).
Result<void> reopen();
// One line per message: `TIME LEVEL message` (text), or a JSON object
// {"ts": "...", "level": "...", "msg": "..."} for log shippers.
enum class Format { kText, kJson };
void setFormat(Format f) noexcept;
void write(LogLevel l, std::string_view msg) noexcept;

template <class... T>
void at(LogLevel l, fmt::format_string<T...> f, T&&... a) noexcept {
  if (l < level()) return;
  try {
    write(l, fmt::format(f, std::forward<T>(a)...));
  } catch (...) {  // a log line that cannot be formatted is not worth a crash
  }
}
template <class... T>
void debug(fmt::format_string<T...> f, T&&... a) noexcept {
  at(LogLevel::kDebug, f, std::forward<T>(a)...);
}
template <class... T>
void info(fmt::format_string<T...> f, T&&... a) noexcept {
  at(LogLevel::kInfo, f, std::forward<T>(a)...);
}
template <class... T>
void warn(fmt::format_string<T...> f, T&&... a) noexcept {
  at(LogLevel::kWarn, f, std::forward<T>(a)...);
}
template <class... T>
void error(fmt::format_string<T...> f, T&&... a) noexcept {
  at(LogLevel::kError, f, std::forward<T>(a)...);
}

// One line per `period` seconds at most for a message that can come in floods (refused peers,
// a keepalive that does not answer): admit() says whether to log now, held() how many were not
// logged since the last line.
class Throttle {
 public:
  explicit Throttle(double period) noexcept : period_(period) {}
  bool admit(double now) noexcept {
    if (now - last_ < period_) {
      ++held_;
      return false;
    }
    last_ = now;
    return true;
  }
  uint64_t held() noexcept { return std::exchange(held_, 0); }

 private:
  double period_, last_ = -1e18;
  uint64_t held_ = 0;
};

}  // namespace log
}  // namespace aiorpc::core
