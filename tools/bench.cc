// aiorpc bench: -c connections × -d requests in flight each, -s payload bytes, verifies every
// reply, prints calls/s and latency percentiles, and a machine-readable last line.
#include "tools/bench.h"

#include <fmt/format.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "aiorpc/core/connection.h"
#include "aiorpc/core/connector.h"
#include "aiorpc/core/log.h"
#include "aiorpc/rpc/client.h"
#include "aiorpc/rpc/codec.h"
#include "aiorpc/rpc/decoder.h"
#include "tools/args.h"

namespace aiorpc::tools {
namespace {

// utime + stime of a process, in seconds (from /proc/PID/stat).
double cpuSeconds(int pid) {
  std::string path = "/proc/" + std::to_string(pid) + "/stat";
  std::FILE* f = std::fopen(path.c_str(), "r");
  if (!f) return 0;
  char buf[1024];
  size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = 0;
  const char* p = std::strrchr(buf, ')');  // the command name may hold spaces
  unsigned long long ut = 0, st = 0;
  if (!p ||
      std::sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
    return 0;
  return static_cast<double>(ut + st) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double nowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

// Latency histogram: 1 µs buckets to 1 ms, 10 µs to 10 ms, 100 µs to 100 ms, 1 ms to 10 s.
class Histogram {
 public:
  void add(double ns) {
    double us = ns / 1000;
    size_t b = us < 1000    ? static_cast<size_t>(us)
               : us < 10000 ? 1000 + static_cast<size_t>((us - 1000) / 10)
               : us < 100000
                   ? 1900 + static_cast<size_t>((us - 10000) / 100)
                   : 2800 + std::min<size_t>(static_cast<size_t>((us - 100000) / 1000), 9899);
    ++b_[b];
    ++n_;
  }
  double percentile(double p) const {
    uint64_t want = static_cast<uint64_t>(std::ceil(p / 100 * static_cast<double>(n_)));
    uint64_t seen = 0;
    for (size_t i = 0; i < b_.size(); ++i) {
      seen += b_[i];
      if (seen >= want && b_[i]) return upper(i);
    }
    return 0;
  }
  uint64_t count() const { return n_; }

 private:
  static double upper(size_t b) {
    if (b < 1000) return static_cast<double>(b + 1);
    if (b < 1900) return 1000 + static_cast<double>(b - 1000 + 1) * 10;
    if (b < 2800) return 10000 + static_cast<double>(b - 1900 + 1) * 100;
    return 100000 + static_cast<double>(b - 2800 + 1) * 1000;
  }
  std::vector<uint64_t> b_ = std::vector<uint64_t>(12700);
  uint64_t n_ = 0;
};

struct Shared {
  BenchOptions opt;
  core::Loop* loop;
  std::string request;  // a request with msgid slot 0; msgid is a uint32 at id_offset
  size_t id_offset = 0;
  std::string expect;  // the reply's bytes after the msgid ("nil, [payload]")
  bool measuring = false, stopping = false;
  uint64_t calls = 0, errors = 0;
  Histogram hist;
  int open = 0;
  rpc::Target target;
  std::shared_ptr<core::TlsContext> tls;
};

// The measured window: sh.measuring from the end of the warm-up for opt.seconds, each --cpu-pid's
// CPU time read at both ends; then sh.stopping is set and `at_end` runs. Not movable: its timers
// point at it.
struct Window {
  double t0 = 0, t1 = 0;
  std::vector<double> cpu0, cpu1;
  Window(Shared& sh, std::function<void()> at_end) {
    const auto& pids = sh.opt.cpu_pids;
    cpu0.resize(pids.size());
    cpu1.resize(pids.size());
    sh.loop->after(sh.opt.warmup, [this, &sh, &pids] {
      sh.measuring = true;
      for (size_t i = 0; i < pids.size(); ++i) cpu0[i] = cpuSeconds(pids[i]);
      t0 = nowNs();
    });
    sh.loop->after(sh.opt.warmup + sh.opt.seconds, [this, &sh, &pids, at_end = std::move(at_end)] {
      for (size_t i = 0; i < pids.size(); ++i) cpu1[i] = cpuSeconds(pids[i]);
      t1 = nowNs();
      sh.measuring = false;
      sh.stopping = true;
      at_end();
    });
  }
  Window(const Window&) = delete;
  Window& operator=(const Window&) = delete;
  double seconds() const { return (t1 - t0) / 1e9; }
  // Process i's CPU time in the window per call, in 1/unit seconds (1e9: ns, 1e6: us).
  double cpuPerCall(const Shared& sh, size_t i, double unit) const {
    return sh.calls ? (cpu1[i] - cpu0[i]) * unit / static_cast<double>(sh.calls) : 0;
  }
};

class Conn final : public core::ConnectionHandler {
 public:
  Conn(Shared& sh, core::Fd fd) : sh_(sh), slots_(sh.opt.depth) {
    msgpack_unpacked_init(&unpacked_);
    conn_ = std::make_unique<core::Connection>(*sh.loop, std::move(fd), this);
    if (sh.target.tls) conn_->startTls(sh.tls, sh.target.host);
    conn_->setWaterMarks(SIZE_MAX, 0);
    for (int i = 0; i < sh_.opt.depth; ++i) send(static_cast<uint32_t>(i));
  }
  std::span<char> readBuffer() override { return in_.reserve(64 * 1024); }
  void onData(size_t n) override {
    in_.commit(n);
    if (sh_.opt.raw) return onRaw();
    // Each reply is matched byte for byte against the expected one (the usual case: no decode);
    // anything else (an error reply, another encoding) is decoded and checked field by field.
    while (in_.size() > 0) {
      auto r = in_.readable();
      size_t used = expected(r);
      if (!used && !(used = decoded(r))) break;
      in_.consume(used);
      if (conn_->closed()) return;
    }
    if (in_.size() > (64u << 20)) fatal("a reply of over 64 MiB");
  }
  void onClose(std::error_code why) override {
    if (!sh_.stopping)
      std::fprintf(stderr, "bench: connection closed: %s\n", why.message().c_str());
    --sh_.open;
  }
  ~Conn() { msgpack_unpacked_destroy(&unpacked_); }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;
  void close() { conn_->close(); }

 private:
  std::string_view payload() const {
    return std::string_view(sh_.request).substr(sh_.request.size() - sh_.opt.size);
  }
  void fatal(const std::string& why) {
    std::fprintf(stderr, "bench: %s\n", why.c_str());
    ++sh_.errors;
    conn_->close();
  }
  void send(uint32_t slot) {
    if (sh_.stopping) return;
    uint32_t id = (seq_++ << 16) | slot;
    slots_[slot] = {id, nowNs()};
    auto& out = conn_->out();
    out.append(sh_.request.data(), sh_.id_offset);
    unsigned char be[4] = {static_cast<unsigned char>(id >> 24),
                           static_cast<unsigned char>(id >> 16),
                           static_cast<unsigned char>(id >> 8), static_cast<unsigned char>(id)};
    out.append(be, 4);
    out.append(sh_.request.data() + sh_.id_offset + 4, sh_.request.size() - sh_.id_offset - 4);
    conn_->sent();
  }
  void complete(uint32_t id, bool ok) {
    uint32_t slot = id & 0xffff;
    if (slot >= slots_.size() || slots_[slot].id != id)
      return fatal("reply for a msgid not in flight");
    if (sh_.measuring) {
      ++sh_.calls;
      sh_.hist.add(nowNs() - slots_[slot].at);
      if (!ok) ++sh_.errors;
    }
    send(slot);
  }
  // [1, msgid, nil, [payload]] exactly as expected: its length, else 0.
  size_t expected(std::string_view r) {
    if (r.size() < 3 || r[0] != '\x94' || r[1] != '\x01') return 0;
    size_t id_len = 0;
    auto id = rpc::readUint(r.data() + 2, r.size() - 2, id_len);
    if (!id || *id > UINT32_MAX || r.substr(2 + id_len, sh_.expect.size()) != sh_.expect) return 0;
    complete(static_cast<uint32_t>(*id), true);
    return 2 + id_len + sh_.expect.size();
  }
  // Any other reply, decoded: its length, or 0 while incomplete.
  size_t decoded(std::string_view r) {
    size_t off = 0;
    auto st = msgpack_unpack_next(&unpacked_, r.data(), r.size(), &off);
    if (st == MSGPACK_UNPACK_CONTINUE) return 0;
    if (st != MSGPACK_UNPACK_SUCCESS) return fatal("invalid msgpack in a reply"), 0;
    rpc::Object m = unpacked_.data;
    auto id = m.isArray() && m.size() == 4 ? m[1].asUint() : std::nullopt;
    if (!id || m[0].asUint() != 1u) return fatal("malformed reply"), 0;
    bool ok = m[2].isNil();
    if (ok) {  // the payload must come back intact
      rpc::Object res = m[3];
      ok = res.isArray() && res.size() == 1 && res[0].isStrOrBin() && res[0].str() == payload();
    }
    if (!ok && sh_.measuring && sh_.errors < 3)
      std::fprintf(stderr, "bench: unexpected reply %s\n", m.toText(200).c_str());
    complete(static_cast<uint32_t>(*id), ok);
    return off;
  }
  void onRaw() {
    // The bare echo server sends our bytes back: match whole requests in order.
    size_t len = sh_.request.size();
    while (in_.size() >= len) {
      auto r = in_.readable();
      uint32_t id = static_cast<uint32_t>(static_cast<unsigned char>(r[sh_.id_offset])) << 24 |
                    static_cast<uint32_t>(static_cast<unsigned char>(r[sh_.id_offset + 1])) << 16 |
                    static_cast<uint32_t>(static_cast<unsigned char>(r[sh_.id_offset + 2])) << 8 |
                    static_cast<uint32_t>(static_cast<unsigned char>(r[sh_.id_offset + 3]));
      bool ok = r.substr(len - sh_.opt.size, sh_.opt.size) == payload();
      in_.consume(len);
      complete(id, ok);
      if (conn_->closed()) return;
    }
  }

  Shared& sh_;
  core::Buffer in_;
  msgpack_unpacked unpacked_;
  struct Slot {
    uint32_t id;
    double at;
  };
  std::vector<Slot> slots_;
  uint32_t seq_ = 0;
  std::unique_ptr<core::Connection> conn_;
};

// --reconnect: a worker connects (over TLS: a full handshake), makes one call, closes, and
// again: new connections per second, each with its first call.
class Churn final : public core::ConnectionHandler {
 public:
  Churn(Shared& sh) : sh_(sh), connector_(*sh.loop) {
    reply_ = std::string("\x94\x01\x00", 3) + sh.expect;  // [1, 0, nil, [payload]]
    start();
  }
  bool idle() const { return !conn_ && !connector_.busy(); }

 private:
  void start() {
    if (sh_.stopping) return;
    t0_ = nowNs();
    connector_.start(sh_.target.addr, 5, [this](core::Result<core::Fd> r) {
      if (!r) {
        ++sh_.errors;
        return start();
      }
      conn_ = std::make_unique<core::Connection>(*sh_.loop, std::move(r.value()), this);
      if (sh_.target.tls) conn_->startTls(sh_.tls, sh_.target.host);
      conn_->send(sh_.request);  // msgid 0
    });
  }
  std::span<char> readBuffer() override { return in_.reserve(sh_.expect.size() + 4096); }
  void onData(size_t n) override {
    in_.commit(n);
    if (in_.size() < reply_.size()) return;
    if (in_.readable() != reply_) {
      ++sh_.errors;
    } else if (sh_.measuring) {
      ++sh_.calls;
      sh_.hist.add(nowNs() - t0_);
    }
    finish();
  }
  void onClose(std::error_code why) override {
    if (closing_) return;
    if (!sh_.stopping)
      std::fprintf(stderr, "bench: connection closed: %s\n", why.message().c_str());
    ++sh_.errors;
    finish();
  }
  void finish() {
    in_.consume(in_.size());
    closing_ = true;
    conn_->close();
    closing_ = false;
    sh_.loop->deferDelete(std::move(conn_));
    start();
  }
  Shared& sh_;
  core::Connector connector_;
  core::Buffer in_;
  std::string reply_;
  std::unique_ptr<core::Connection> conn_;
  double t0_ = 0;
  bool closing_ = false;
};

int runReconnect(Shared& sh) {
  const BenchOptions& o = sh.opt;
  std::vector<std::unique_ptr<Churn>> workers;
  for (int i = 0; i < o.conns; ++i) workers.push_back(std::make_unique<Churn>(sh));
  Window w(sh, [] {});
  auto idle = [&] {
    return std::all_of(workers.begin(), workers.end(), [](auto& w) { return w->idle(); });
  };
  while (!sh.stopping || !idle()) sh.loop->runOnce();
  double secs = w.seconds();
  double rate = static_cast<double>(sh.calls) / secs;
  std::printf("%s %s: %d workers, each connect%s + one call + close, %.1f s\n", o.method.c_str(),
              o.endpoint.c_str(), o.conns, sh.target.tls ? " + TLS handshake" : "", secs);
  std::printf("  %.0f connections/s, %llu errors; connect to reply us: p50 %.0f  p99 %.0f\n", rate,
              static_cast<unsigned long long>(sh.errors), sh.hist.percentile(50),
              sh.hist.percentile(99));
  std::string cpu;
  for (size_t i = 0; i < o.cpu_pids.size(); ++i) {
    double us = w.cpuPerCall(sh, i, 1e6);
    std::printf("  server pid %d: %.1f us CPU per connection\n", o.cpu_pids[i], us);
    cpu += fmt::format(" cpu_us_per_conn_{}={:.1f}", i, us);
  }
  std::printf("RESULT connections_per_s=%.0f calls=%llu errors=%llu p50_us=%.0f p99_us=%.0f%s\n",
              rate, static_cast<unsigned long long>(sh.calls),
              static_cast<unsigned long long>(sh.errors), sh.hist.percentile(50),
              sh.hist.percentile(99), cpu.c_str());
  return sh.errors || sh.calls == 0 ? 1 : 0;
}

}  // namespace

CLI::App* addBenchCommand(CLI::App& app, BenchOptions& o) {
  auto* b = app.add_subcommand("bench", "load generator: calls/s, latency, server CPU per call");
  b->footer(
      "Closed loop: -c connections each keep -d requests in flight; every reply is checked.\n"
      "The last line is machine-readable: RESULT calls_per_s=... p50_us=... ...");
  b->option_defaults()->always_capture_default();
  b->add_option("endpoint", o.endpoint, "HOST:PORT of the server")->required();
  b->add_option("-c,--connections", o.conns, "connections")->check(integer(1, 10000));
  b->add_option("-d,--depth", o.depth, "requests in flight per connection")
      ->check(integer(1, 65535));
  b->add_option("-s,--size", o.size, "payload bytes")->check(integer(0, 64 << 20));
  b->add_option("-t,--seconds", o.seconds, "measured seconds")->check(seconds());
  b->add_option("-w,--warmup", o.warmup, "warm-up seconds before measuring")->check(seconds(true));
  b->add_option("-m,--method", o.method, "method to call with [payload]");
  b->add_flag("--bin", o.bin, "payload as bin (default str)");
  b->add_option("--proxy", o.proxy, "send invoke(SERVICE, METHOD, [payload]) through a proxy");
  b->add_flag("--map", o.map, "with --proxy: invoke's params in map form");
  b->add_option("--batch", o.batch,
                "with --proxy: batch_invoke of N items [SERVICE, METHOD, [payload]] per "
                "request (calls/s counts requests)")
      ->check(integer(1, 65535));
  b->add_flag("-e,--raw", o.raw, "raw mode: expects each request echoed back byte for byte");
  b->add_flag("--reconnect", o.reconnect,
              "each connection makes one call, closes and connects again (TLS: a handshake "
              "each): reports connections/s");
  b->add_option("--cpu-pid", o.cpu_pids, "report this process's CPU time per call (repeatable)")
      ->check(integer(1, 1 << 30))
      ->allow_extra_args(false);
  return b;
}

int runBench(const BenchOptions& o) {
  if (o.batch > 0 && o.proxy.empty()) {
    std::fprintf(stderr, "aiorpc bench: --batch needs --proxy SERVICE\n");
    return 2;
  }
  auto target = rpc::parseTarget(o.endpoint);
  if (!target) {
    std::fprintf(stderr, "aiorpc bench: bad address %s\n", o.endpoint.c_str());
    return 2;
  }
  core::prepareProcess();
  core::Loop loop;
  Shared sh;
  sh.opt = o;
  sh.target = *target;
  if (target->tls) sh.tls = o.tls ? o.tls : rpc::defaultTlsClient();
  sh.loop = &loop;
  // [0, <uint32 msgid>, method, [payload]]  or through a proxy:
  // [0, <uint32 msgid>, "invoke", [service, method, [payload]]]
  std::string payload(o.size, 'x');
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>('a' + i % 26);
  rpc::Packer p(sh.request);
  p.array(4);
  p.uinteger(0);
  sh.id_offset = sh.request.size() + 1;
  sh.request += '\xce';
  sh.request.append(4, '\0');
  auto item = [&](rpc::Packer& to) {  // [payload]: a call's params, and its result
    to.array(1);
    if (o.bin)
      to.bin(payload);
    else
      to.str(payload);
  };
  if (o.batch > 0) {  // (with --proxy: checked above)
    // [0, <uint32 msgid>, "batch_invoke", [[[service, method, [payload]], ...]]]
    p.str("batch_invoke");
    p.array(1);
    p.array(static_cast<uint32_t>(o.batch));
    for (int i = 0; i < o.batch; ++i) {
      p.array(3);
      p.str(o.proxy);
      p.str(o.method);
      item(p);
    }
    rpc::Packer e(sh.expect);  // nil, [[payload], ...] in item order
    e.nil();
    e.array(static_cast<uint32_t>(o.batch));
    for (int i = 0; i < o.batch; ++i) item(e);
  } else {
    if (!o.proxy.empty()) {
      p.str("invoke");
      if (o.map) {
        p.map(3);
        p.str("service"), p.str(o.proxy);
        p.str("method"), p.str(o.method);
        p.str("params");
      } else {
        p.array(3);
        p.str(o.proxy);
        p.str(o.method);
      }
    } else {
      p.str(o.method);
    }
    item(p);
    rpc::Packer e(sh.expect);  // the reply after its msgid: nil, [payload]
    e.nil();
    item(e);
  }
  if (o.reconnect) return runReconnect(sh);

  std::vector<std::unique_ptr<Conn>> conns;
  std::vector<std::unique_ptr<core::Connector>> connectors;
  int failed = 0;
  for (int i = 0; i < o.conns; ++i) {
    connectors.push_back(std::make_unique<core::Connector>(loop));
    connectors.back()->start(sh.target.addr, 5, [&](core::Result<core::Fd> r) {
      if (!r) {
        ++failed;
        return;
      }
      ++sh.open;
      conns.push_back(std::make_unique<Conn>(sh, std::move(r.value())));
    });
  }
  while (static_cast<int>(conns.size()) + failed < o.conns) loop.runOnce();
  if (failed) {
    std::fprintf(stderr, "aiorpc bench: %d connections to %s failed\n", failed, o.endpoint.c_str());
    return 2;
  }
  Window w(sh, [&] {
    for (auto& c : conns) c->close();
  });
  while (!sh.stopping || sh.open > 0) loop.runOnce();
  double secs = w.seconds();
  double rate = static_cast<double>(sh.calls) / secs;
  std::printf("%s %s: %d conns x %d in flight, %zu B payload, %.1f s\n",
              o.raw ? "raw" : o.method.c_str(), o.endpoint.c_str(), o.conns, o.depth, o.size, secs);
  std::printf("  %.0f calls/s, %llu calls, %llu errors\n", rate,
              static_cast<unsigned long long>(sh.calls),
              static_cast<unsigned long long>(sh.errors));
  std::printf("  latency us: p50 %.0f  p90 %.0f  p99 %.0f  p99.9 %.0f\n", sh.hist.percentile(50),
              sh.hist.percentile(90), sh.hist.percentile(99), sh.hist.percentile(99.9));
  std::string cpu;
  for (size_t i = 0; i < o.cpu_pids.size(); ++i) {
    double ns = w.cpuPerCall(sh, i, 1e9);
    std::printf("  server pid %d: %.0f ns CPU per call\n", o.cpu_pids[i], ns);
    cpu += fmt::format(" cpu_ns_per_call_{}={:.0f}", i, ns);
  }
  std::printf(
      "RESULT calls_per_s=%.0f calls=%llu errors=%llu p50_us=%.0f p90_us=%.0f p99_us=%.0f "
      "p999_us=%.0f conns=%d depth=%d size=%zu%s\n",
      rate, static_cast<unsigned long long>(sh.calls), static_cast<unsigned long long>(sh.errors),
      sh.hist.percentile(50), sh.hist.percentile(90), sh.hist.percentile(99),
      sh.hist.percentile(99.9), o.conns, o.depth, o.size, cpu.c_str());
  return sh.errors || sh.calls == 0 ? 1 : 0;
}

}  // namespace aiorpc::tools
