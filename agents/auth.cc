// Token file, constant-time comparison, rate-limited audit log.
#include "aiorpc/agents/auth.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "aiorpc/core/log.h"

namespace aiorpc::agents {

std::optional<std::string> readRegularFile(const std::string& path, size_t max, std::string* out,
                                           std::string_view what, mode_t* mode) {
  std::string name = std::string(what) + " " + path;
  core::Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
  if (!fd) return "cannot read " + name + " (not readable: " + std::strerror(errno) + ")";
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return "cannot read " + name + ": " + std::strerror(errno);
  if (!S_ISREG(st.st_mode)) return name + " is not a regular file";
  if (static_cast<uint64_t>(st.st_size) > max)
    return name + " is over " + std::to_string(max) + " bytes";
  if (mode) *mode = st.st_mode;
  if (!out) return std::nullopt;
  out->clear();
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return "cannot read " + name + ": " + std::strerror(errno);
    if (n == 0) return std::nullopt;
    if (out->size() + static_cast<size_t>(n) > max)  // (it grew while we read)
      return name + " is over " + std::to_string(max) + " bytes";
    out->append(buf, static_cast<size_t>(n));
  }
}

std::string secretPath(const std::string& path) {
  const char* creds = std::getenv("CREDENTIALS_DIRECTORY");
  if (path.empty() || path[0] == '/' || !creds || !*creds) return path;
  return std::string(creds) + "/" + path;
}

std::optional<std::string> loadToken(const std::string& given, std::string& token) {
  std::string text, path = secretPath(given);
  mode_t mode = 0;
  if (auto bad = readRegularFile(path, 4096, &text, "token file", &mode)) return bad;
  if (mode & S_IROTH)
    return "token file " + path + " is readable by every user; chmod o-r it (e.g. chmod 600)";
  std::string line = text.substr(0, text.find('\n'));
  auto first = line.find_first_not_of(" \t\r\n");
  auto last = line.find_last_not_of(" \t\r\n");
  if (first == std::string::npos) return "token file " + path + " is empty";
  token = line.substr(first, last - first + 1);
  if (token.size() < kMinTokenBytes)
    return "token file " + path + " holds " + std::to_string(token.size()) +
           " bytes: a token needs at least " + std::to_string(kMinTokenBytes) +
           " (e.g. head -c 32 /dev/urandom | base64)";
  return std::nullopt;
}

bool constantTimeEquals(std::string_view a, std::string_view b) noexcept {
  // Walk the expected token's length whatever the guess is; fold every difference in.
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < b.size(); ++i) {
    unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ static_cast<unsigned char>(b[i]));
  }
  return diff == 0;
}

bool Audit::admit() {
  double second = std::floor(loop_.now());
  if (second != second_) {
    summarise();
    second_ = second, lines_ = 0;
  }
  if (lines_ < kPerSecond) return ++lines_, true;
  if (suppressed_++ == 0)  // the summary line comes when this second is over
    flush_timer_ = loop_.after(second_ + 1 - loop_.now(), [this] {
      flush_timer_ = 0;
      summarise();
    });
  return false;
}

void Audit::summarise() {
  loop_.cancel(flush_timer_);
  flush_timer_ = 0;
  if (suppressed_ == 0) return;
  core::log::info("audit: {} more event(s) in that second not logged (flood)", suppressed_);
  suppressed_ = 0;
}

}  // namespace aiorpc::agents
