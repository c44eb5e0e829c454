// Levelled logging: a timestamp, the level and one line.
#include "aiorpc/core/log.h"

#include <sys/time.h>

#include <algorithm>
#include <cstdio>
#include <ctime>

namespace aiorpc::core::log {
namespace {

LogLevel g_level = LogLevel::kInfo;
std::FILE* g_file = nullptr;  // nullptr: stderr
std::string g_path;
Format g_format = Format::kText;

// JSON string contents: quotes, backslashes and control bytes escaped; other bytes as they are
// (messages are valid UTF-8 where they carry peer text: rpc::validUtf8).
void appendJson(std::string& out, std::string_view s) {
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
        } else {
          out += c;
        }
    }
  }
}

const char* name(LogLevel l) {
  switch (l) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
    case LogLevel::kOff:
      break;
  }
  return "?";
}

}  // namespace

void setLevel(LogLevel l) noexcept { g_level = l; }
LogLevel level() noexcept { return g_level; }

Result<LogLevel> parseLevel(std::string_view s) {
  for (auto l : {LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarn, LogLevel::kError})
    if (s == name(l)) return l;
  return std::make_error_code(std::errc::invalid_argument);
}

Result<void> setFile(const std::string& path) {
  std::FILE* f = nullptr;
  if (!path.empty()) {
    f = std::fopen(path.c_str(), "a");
    if (!f) return sysError(errno);
  }
  if (g_file) std::fclose(g_file);
  g_file = f;
  g_path = path;
  return {};
}

Result<void> reopen() {
  if (g_path.empty()) return {};
  std::string path = g_path;
  return setFile(path);
}

void setFormat(Format f) noexcept { g_format = f; }

namespace {
bool isControl(char c) noexcept {
  auto u = static_cast<unsigned char>(c);
  return u < 0x20 || u == 0x7f;
}
}  // namespace

void write(LogLevel l, std::string_view msg) noexcept {
  timeval tv{};
  gettimeofday(&tv, nullptr);
  tm t{};
  gmtime_r(&tv.tv_sec, &t);
  char ts[32];
  std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &t);
  std::FILE* out = g_file ? g_file : stderr;
  if (g_format == Format::kJson) {
    try {
      std::string line = fmt::format("{{\"ts\":\"{}.{:03d}Z\",\"level\":\"{}\",\"msg\":\"", ts,
                                     static_cast<int>(tv.tv_usec / 1000), name(l));
      appendJson(line, msg);
      line += "\"}\n";
      std::fwrite(line.data(), 1, line.size(), out);
      std::fflush(out);
      return;
    } catch (...) {  // out of memory: the plain line below
    }
  }
  // One message, one line: control bytes (a newline in a service name a peer chose, a
  // terminal escape) are written escaped, so no peer can forge a line or rewrite the screen.
  std::string escaped;
  if (std::any_of(msg.begin(), msg.end(), isControl)) {
    try {
      escaped.reserve(msg.size() + 16);
      for (char c : msg) {
        if (!isControl(c)) {
          escaped += c;
          continue;
        }
        char hex[8];
        std::snprintf(hex, sizeof hex, "\\x%02x", static_cast<unsigned char>(c));
        escaped += c == '\n' ? "\\n" : c == '\t' ? "\\t" : c == '\r' ? "\\r" : hex;
      }
      msg = escaped;
    } catch (...) {
      msg = "(a log line with control bytes, dropped: out of memory)";
    }
  }
  std::fprintf(out, "%s.%03dZ %-5s %.*s\n", ts, static_cast<int>(tv.tv_usec / 1000), name(l),
               static_cast<int>(msg.size()), msg.data());
  std::fflush(out);
}

}  // namespace aiorpc::core::log
