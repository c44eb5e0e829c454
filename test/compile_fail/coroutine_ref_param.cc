// Must not compile: a coroutine handler whose parameter refers into the request's stack frame
// (dead after its first co_await). test/compile_fail/check.py expects Service::def's message,
// for each of the shapes below (chosen with -DSHAPE=N).
#include "aiorpc/core/loop.h"
#include "aiorpc/rpc/service.h"

using namespace aiorpc;

void declare(core::Loop& loop, rpc::Service& s) {
#if SHAPE == 0
  s.def(
      "f",
      [&loop](const rpc::Context& ctx) -> core::Task<int> {
        co_await loop.sleep(1);
        co_return ctx.session() > 0;
      },
      rpc::arg("ctx"));
#elif SHAPE == 1
  s.def(
      "f",
      [&loop](const std::string& x) -> core::Task<size_t> {
        co_await loop.sleep(1);
        co_return x.size();
      },
      rpc::arg("x"));
#elif SHAPE == 2
  s.def("f", [&loop](const rpc::Args& a) -> core::Task<int> {
    co_await loop.sleep(1);
    co_return a.positionalCount();
  });
#else
  // The control: by value compiles (check.py expects success for SHAPE 3).
  s.def(
      "f",
      [&loop](rpc::Context ctx, std::string x) -> core::Task<size_t> {
        co_await loop.sleep(1);
        co_return x.size() + ctx.session();
      },
      rpc::arg("ctx"), rpc::arg("x"));
#endif
}
