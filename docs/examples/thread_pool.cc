// Worker threads meet the loop: a method computes on a small thread pool and replies from the
// loop (Loop::postFromThread, libev's ev_async underneath). The loop stays single-threaded:
// workers never touch the server, they hand a finished value back.
// Serves "collatz(n)" (steps to reach 1) on the address given (default 127.0.0.1:0) until
// SIGINT/SIGTERM; prints "listening on HOST:PORT".
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "aiorpc/rpc/server.h"

using namespace aiorpc;
using namespace aiorpc::rpc;

// A plain fixed-size pool: jobs in, run on a worker. Nothing aiorpc-specific.
class Pool {
 public:
  explicit Pool(unsigned n) {
    for (unsigned i = 0; i < n; ++i) threads_.emplace_back([this] { work(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> l(mu_);
      done_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  void submit(std::function<void()> job) {
    {
      std::lock_guard<std::mutex> l(mu_);
      jobs_.push_back(std::move(job));
    }
    cv_.notify_one();
  }

 private:
  void work() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [this] { return done_ || !jobs_.empty(); });
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool done_ = false;
  std::vector<std::thread> threads_;
};

int main(int argc, char** argv) {
  core::Loop loop;
  Pool pool(4);
  Service svc("math");
  svc.def(
      "collatz",
      [&](uint64_t n, Reply<uint64_t> reply) {
        // The reply stays on the loop's side: the worker gets a number, gives a number back.
        auto r = std::make_shared<Reply<uint64_t>>(std::move(reply));
        pool.submit([&loop, n, r = std::move(r)]() mutable {
          uint64_t steps = 0;
          for (uint64_t x = n == 0 ? 1 : n; x != 1; ++steps) x = x % 2 ? 3 * x + 1 : x / 2;
          // The reply is moved, not copied, back: the worker keeps no reference, so the last one
          // goes on the loop's thread, where a reply (even a dropped one's error) is written.
          loop.postFromThread([r = std::move(r), steps] { (*r)(steps); });  // thread-safe
        });
      },
      arg("n"));
  Server server(loop, svc);
  auto bound = server.listen(argc > 1 ? argv[1] : "127.0.0.1:0");
  if (!bound) return std::fprintf(stderr, "listen: %s\n", bound.error().message().c_str()), 2;
  std::printf("listening on %s\n", bound->toString().c_str());
  std::fflush(stdout);
  loop.onSignal(SIGTERM, [&](int) { server.drain([&] { loop.stop(); }); });
  loop.onSignal(SIGINT, [&](int) { server.drain([&] { loop.stop(); }); });
  loop.run();
  return 0;
}
