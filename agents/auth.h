// Access control helpers shared by the roles: the registry write token and the audit log.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "aiorpc/core/log.h"
#include "aiorpc/core/loop.h"

namespace aiorpc::agents {

// Reads a small regular file whole into `*out` (null: only checks it): anything else is refused
// with an error line (a FIFO would hang start-up, a device could be endless), and so is one
// over `max` bytes. Never blocks on the file's kind (opened non-blocking, checked before
// reading). `mode`, when given, gets the file's mode bits.
std::optional<std::string> readRegularFile(const std::string& path, size_t max, std::string* out,
                                           std::string_view what, mode_t* mode = nullptr);

// Reads a token file: the first line, surrounding white space removed. Returns an error line
// when the file cannot be read, is empty, or can be read by every user (mode o+r): a token
// anyone on the machine can read protects nothing.
// A relative path names a systemd credential: under $CREDENTIALS_DIRECTORY when it is set
// (LoadCredential= in the unit), else the path as given.
std::string secretPath(const std::string& path);
// Tokens shorter than this are refused (a guessable token, or the unit's placeholder).
constexpr size_t kMinTokenBytes = 16;
std::optional<std::string> loadToken(const std::string& path, std::string& token);

// Compares without an early exit, so the time taken does not tell how much of a guess was
// right (only the length may leak, as with any such comparison).
bool constantTimeEquals(std::string_view a, std::string_view b) noexcept;

// Security-relevant events at info level, at most kPerSecond lines a second; the rest of a
// flood is counted and summarised in one line when the next second begins.
class Audit {
 public:
  explicit Audit(core::Loop& loop) : loop_(loop) {}
  ~Audit() { loop_.cancel(flush_timer_); }
  Audit(const Audit&) = delete;
  Audit& operator=(const Audit&) = delete;
  template <class... A>
  void log(fmt::format_string<A...> f, A&&... a) {
    if (!admit()) return;
    core::log::info("audit: {}", fmt::format(f, std::forward<A>(a)...));
  }
  static constexpr int kPerSecond = 20;

 private:
  bool admit();
  void summarise();
  core::Loop& loop_;
  core::Loop::TimerId flush_timer_ = 0;
  double second_ = -1;
  int lines_ = 0;
  uint64_t suppressed_ = 0;
};

}  // namespace aiorpc::agents
