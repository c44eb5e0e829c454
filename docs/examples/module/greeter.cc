// A role module for aiorpcd: the service "greeter" (greet(name), count()) with a flag of its
// own. Build it against the installed headers, then run it like a built-in role:
//
//   c++ -std=c++20 -O2 -shared -fPIC greeter.cc $(pkg-config --cflags aiorpc) -o libgreeter.so
//   aiorpcd --module=./libgreeter.so --role=greeter --greeting=hi --keepalive 127.0.0.1:7999
//
// It gets everything a built-in role gets: its flags in --help and --config, heartbeats with
// --keepalive (unregistered first on SIGTERM), the drain, \0stats, logging.
#include <aiorpc/aiorpc.h>

#include <memory>
#include <string>

namespace {

using namespace aiorpc;

class Greeter final : public agents::RoleInstance {
 public:
  explicit Greeter(agents::RoleEnv& env)
      : svc_(env.flags.str("greeter-name")), greeting_(env.flags.str("greeting")) {
    svc_.def(
        "greet",
        [this](std::string_view name) {
          ++count_;
          return greeting_ + ", " + std::string(name);
        },
        rpc::arg("name"));
    svc_.def("count", [this] { return count_; });
  }
  rpc::Service& service() override { return svc_; }

 private:
  rpc::Service svc_;
  std::string greeting_;
  int64_t count_ = 0;
};

const agents::FlagSpec kFlags[] = {
    {"greeting", agents::FlagType::kString, "hello", "how to greet"},
    {"greeter-name", agents::FlagType::kString, "greeter", "the service's name (as registered)"},
};

std::unique_ptr<agents::RoleInstance> create(agents::RoleEnv& env) {
  return std::make_unique<Greeter>(env);
}

const agents::Role kRoles[] = {
    {"greeter", "greets by name (docs/examples/module)", "127.0.0.1:10020", kFlags, create, true},
};

}  // namespace

AIORPC_MODULE(kRoles)
