// Token file, constant-time comparison, rate-limited audit log.
#include "aiorpc/agents/auth.h"

#include <sys/stat.h>

#include <cmath>
#include <fstream>

#include "aiorpc/core/log.h"

namespace aiorpc::agents {

std::optional<std::string> loadToken(const std::string& path, std::string& token) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return "cannot read token file " + path;
  if (st.st_mode & S_IROTH)
    return "token file " + path + " is readable by every user; chmod o-r it (e.g. chmod 600)";
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return "cannot read token file " + path;
  auto first = line.find_first_not_of(" \t\r\n");
  auto last = line.find_last_not_of(" \t\r\n");
  if (first == std::string::npos) return "token file " + path + " is empty";
  token = line.substr(first, last - first + 1);
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
