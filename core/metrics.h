// Metrics kept on the loop's thread (SPEC §9): plain counters and latency histograms (arrays,
// no atomics, no locks, no allocation per observation), the Prometheus text format (0.0.4)
// they are written in, and the standard process_* series.
//
// Why not prometheus-cpp's core: its Counter and Histogram are atomic (a compare-and-swap per
// bucket per observation), which the single-threaded hot path neither needs nor can afford
// (SPEC §9: counting costs at most 3 % of a call); using only its serializer would mean
// rebuilding its whole data model (strings and vectors per series) at every scrape, where this
// writer appends straight into one buffer.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "aiorpc/core/loop.h"

namespace aiorpc::core {

// Buckets from 50 µs to 10 s (SPEC §9), upper bounds in seconds; one more counts the rest.
inline constexpr std::array<double, 17> kLatencyBounds = {
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3,
    50e-3, 100e-3, 250e-3, 500e-3, 1,    2.5,    5,    10};

struct LatencyHistogram {
  std::array<uint64_t, kLatencyBounds.size() + 1> counts{};  // per bucket, not cumulative
  double sum = 0;
  static size_t bucketOf(double seconds) noexcept {
    size_t i = 0;
    while (i < kLatencyBounds.size() && seconds > kLatencyBounds[i]) ++i;
    return i;
  }
  void observe(double seconds, uint64_t n = 1) noexcept {
    if (!(seconds >= 0)) seconds = 0;  // a clock step back (or NaN) counts as no time
    counts[bucketOf(seconds)] += n;
    sum += seconds * static_cast<double>(n);
  }
  uint64_t count() const noexcept {
    uint64_t n = 0;
    for (auto c : counts) n += c;
    return n;
  }
};

// Durations measured without a clock read per call: a call records its histogram and its start
// (the loop's time when its request was read, Loop::now()); once per loop iteration, after the
// replies are written and before the loop sleeps, the clock is read once and every recorded call
// is observed with its duration. So a reply's time is the time until it was handed to the
// kernel, the batching of writes included.
//
// The histograms must outlive their pending observations: an owner that frees one calls
// settle() first. Destroying a Timings drops what is pending.
class Timings final : private Flushable {
 public:
  explicit Timings(Loop& loop) : loop_(loop) {}
  Timings(const Timings&) = delete;
  Timings& operator=(const Timings&) = delete;
  void record(LatencyHistogram* h, double start) {
    // Calls of one method read together (a pipelined batch) are one entry.
    if (!pending_.empty() && pending_.back().h == h && pending_.back().start == start) [[likely]]
      return void(++pending_.back().n);
    pending_.push_back({h, start, 1});
    loop_.wantFlush(this);
  }
  // Observes what is pending now.
  void settle() noexcept { flush(); }

 private:
  void flush() noexcept override;
  struct Pending {
    LatencyHistogram* h;
    double start;
    uint64_t n;
  };
  Loop& loop_;
  std::vector<Pending> pending_;
};

// Writes the text exposition format 0.0.4: a family's HELP and TYPE lines, then its samples.
// Label values and help text are escaped as the format requires (\\, \", \n).
class MetricsText {
 public:
  using Labels = std::initializer_list<std::pair<std::string_view, std::string_view>>;
  enum class Type { kCounter, kGauge, kHistogram };
  void family(std::string_view name, Type type, std::string_view help);
  void sample(std::string_view name, Labels labels, double value);
  void sample(std::string_view name, Labels labels, uint64_t value);
  void sample(std::string_view name, double value) { sample(name, {}, value); }
  void sample(std::string_view name, uint64_t value) { sample(name, {}, value); }
  // name_bucket{...,le=...} (cumulative), name_sum and name_count.
  void histogram(std::string_view name, Labels labels, const LatencyHistogram& h);
  // Shorthands: the family line and one unlabelled sample.
  void counter(std::string_view name, std::string_view help, uint64_t value);
  void gauge(std::string_view name, std::string_view help, double value);
  const std::string& text() const noexcept { return out_; }
  std::string take() noexcept { return std::move(out_); }

 private:
  void labels(Labels labels, std::string_view le = {});
  std::string out_;
};

// process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, process_max_fds,
// process_start_time_seconds (Prometheus's client conventions). Where the platform cannot tell
// (no /proc), a series is left out rather than made up.
void writeProcessMetrics(MetricsText& out);

}  // namespace aiorpc::core
