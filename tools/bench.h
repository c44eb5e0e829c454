// `aiorpc bench`: a closed-loop load generator (in the spirit of redis-benchmark).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace aiorpc::core {
class TlsContext;
}

namespace aiorpc::tools {

struct BenchOptions {
  std::string endpoint;
  int conns = 1, depth = 1;
  size_t size = 16;
  double seconds = 5, warmup = 1;
  std::string method = "echo", proxy;
  std::vector<int> cpu_pids;  // servers whose CPU time per call to report
  bool bin = false, raw = false, reconnect = false, map = false;
  int batch = 0;                          // with proxy: batch_invoke of this many items per request
  std::shared_ptr<core::TlsContext> tls;  // for a tls:// endpoint (null: the system's CAs)
};

// `bench` as a subcommand of the CLI's parser, filling `o`.
CLI::App* addBenchCommand(CLI::App& app, BenchOptions& o);

// Runs the load; exit status 0, 1 (errors or no calls) or 2 (cannot connect).
int runBench(const BenchOptions& o);

}  // namespace aiorpc::tools
