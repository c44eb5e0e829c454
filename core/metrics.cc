#include "aiorpc/core/metrics.h"

#include <dirent.h>
#include <fmt/format.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace aiorpc::core {

void Timings::flush() noexcept {
  if (pending_.empty()) return;
  ev_now_update(loop_.raw());  // one clock read for every reply of this iteration
  double now = loop_.now();
  for (const auto& p : pending_) p.h->observe(now - p.start, p.n);
  pending_.clear();
}

namespace {
void escape(std::string& out, std::string_view s, bool quote) {
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && quote) {
      out += "\\\"";
    } else {
      out += c;
    }
  }
}

void number(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
  } else if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
  } else {
    fmt::format_to(std::back_inserter(out), "{}", v);  // shortest exact form
  }
}
}  // namespace

void MetricsText::family(std::string_view name, Type type, std::string_view help) {
  out_ += "# HELP ";
  out_ += name;
  out_ += ' ';
  escape(out_, help, false);
  out_ += "\n# TYPE ";
  out_ += name;
  out_ += type == Type::kCounter ? " counter\n"
          : type == Type::kGauge ? " gauge\n"
                                 : " histogram\n";
}

void MetricsText::labels(Labels labels, std::string_view le) {
  if (labels.size() == 0 && le.empty()) return;
  out_ += '{';
  bool first = true;
  for (const auto& [k, v] : labels) {
    if (!first) out_ += ',';
    first = false;
    out_ += k;
    out_ += "=\"";
    escape(out_, v, true);
    out_ += '"';
  }
  if (!le.empty()) {
    if (!first) out_ += ',';
    out_ += "le=\"";
    out_ += le;
    out_ += '"';
  }
  out_ += '}';
}

void MetricsText::sample(std::string_view name, Labels l, double value) {
  out_ += name;
  labels(l);
  out_ += ' ';
  number(out_, value);
  out_ += '\n';
}

void MetricsText::sample(std::string_view name, Labels l, uint64_t value) {
  out_ += name;
  labels(l);
  fmt::format_to(std::back_inserter(out_), " {}\n", value);
}

void MetricsText::histogram(std::string_view name, Labels l, const LatencyHistogram& h) {
  // The bounds' text once per process (fmt's shortest form: 5e-05, 0.0001, ... 10).
  static const std::array<std::string, kLatencyBounds.size()> les = [] {
    std::array<std::string, kLatencyBounds.size()> a;
    for (size_t i = 0; i < a.size(); ++i) a[i] = fmt::format("{}", kLatencyBounds[i]);
    return a;
  }();
  uint64_t cumulative = 0;
  for (size_t i = 0; i < h.counts.size(); ++i) {
    cumulative += h.counts[i];
    out_ += name;
    out_ += "_bucket";
    labels(l, i < les.size() ? std::string_view(les[i]) : std::string_view("+Inf"));
    fmt::format_to(std::back_inserter(out_), " {}\n", cumulative);
  }
  out_ += name;
  out_ += "_sum";
  labels(l);
  out_ += ' ';
  number(out_, h.sum);
  out_ += '\n';
  out_ += name;
  out_ += "_count";
  labels(l);
  fmt::format_to(std::back_inserter(out_), " {}\n", cumulative);
}

void MetricsText::counter(std::string_view name, std::string_view help, uint64_t value) {
  family(name, Type::kCounter, help);
  sample(name, value);
}

void MetricsText::gauge(std::string_view name, std::string_view help, double value) {
  family(name, Type::kGauge, help);
  sample(name, value);
}

namespace {
// The process's start as seconds since the epoch: /proc/self/stat's starttime (clock ticks
// after boot) plus the boot time from /proc/stat. Read once: it does not change.
double processStart() {
  static const double start = [] {
    std::ifstream stat("/proc/self/stat");
    std::string s((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    auto paren = s.rfind(')');  // the command name may hold spaces and parentheses
    if (paren == std::string::npos) return -1.0;
    std::istringstream rest(s.substr(paren + 2));
    std::string field;
    // Fields after the name start at 3 (state); starttime is field 22.
    for (int i = 3; i < 22 && rest >> field; ++i) {
    }
    unsigned long long ticks = 0;
    if (!(rest >> ticks)) return -1.0;
    std::ifstream boot("/proc/stat");
    std::string key;
    unsigned long long btime = 0;
    while (boot >> key) {
      if (key == "btime") {
        boot >> btime;
        break;
      }
      boot.ignore(1 << 20, '\n');
    }
    long hz = ::sysconf(_SC_CLK_TCK);
    if (!btime || hz <= 0) return -1.0;
    return static_cast<double>(btime) + static_cast<double>(ticks) / static_cast<double>(hz);
  }();
  return start;
}

long residentBytes() {
  std::ifstream statm("/proc/self/statm");
  unsigned long long size = 0, resident = 0;
  if (!(statm >> size >> resident)) return -1;
  return static_cast<long>(resident * static_cast<unsigned long long>(::sysconf(_SC_PAGESIZE)));
}

long openFds() {
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) d = ::opendir("/dev/fd");  // the BSDs and macOS (fdescfs)
  if (!d) return -1;
  long n = 0;
  while (auto* e = ::readdir(d)) n += e->d_name[0] != '.';
  ::closedir(d);
  return n - 1;  // the directory's own descriptor
}
}  // namespace

void writeProcessMetrics(MetricsText& out) {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  double cpu = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
               static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  out.family("process_cpu_seconds_total", MetricsText::Type::kCounter,
             "Total user and system CPU time spent in seconds.");
  out.sample("process_cpu_seconds_total", cpu);
  if (long rss = residentBytes(); rss >= 0)
    out.gauge("process_resident_memory_bytes", "Resident memory size in bytes.",
              static_cast<double>(rss));
  if (long fds = openFds(); fds >= 0)
    out.gauge("process_open_fds", "Number of open file descriptors.", static_cast<double>(fds));
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
    out.gauge("process_max_fds", "Maximum number of open file descriptors.",
              static_cast<double>(rl.rlim_cur));
  if (double start = processStart(); start > 0)
    out.gauge("process_start_time_seconds",
              "Start time of the process since unix epoch in seconds.", start);
}

}  // namespace aiorpc::core
