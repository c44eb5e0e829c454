// aiorpcd: the aiorpc daemon. `aiorpcd --role=NAME [flags]`; roles come from agents/registry.cc.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "agents/auth.h"
#include "agents/role.h"
#include "core/log.h"
#include "rpc/server.h"

using namespace aiorpc;
namespace clog = core::log;

namespace {

const agents::FlagSpec kCommon[] = {
    {"role", agents::FlagType::kString, "", "the role to run (required)"},
    {"bind", agents::FlagType::kEndpoint, "",
     "HOST:PORT, [V6]:PORT or unix:/path (port 0: any free)"},
    {"log-level", agents::FlagType::kLogLevel, "info", "debug, info, warn or error"},
    {"log-file", agents::FlagType::kString, "", "append logs here instead of stderr"},
    {"pid-file", agents::FlagType::kString, "", "write the process id here"},
    {"drain-timeout", agents::FlagType::kSeconds, "10",
     "seconds to finish owed replies on shutdown"},
    {"drain-grace", agents::FlagType::kSeconds, "1",
     "seconds to keep serving after unregistering on shutdown (0: none)"},
    {"max-message-size", agents::FlagType::kBytes, "67108864", "largest message accepted, bytes"},
    {"max-elements", agents::FlagType::kCount, "4194304",
     "container elements declared per message"},
    {"keepalive", agents::FlagType::kEndpoint, "",
     "keepalive HOST:PORT to register with / learn from"},
    {"allow", agents::FlagType::kAllowList, "",
     "accept connections only from these CIDR ranges (unix peers always; default: all)"},
    {"auth-token-file", agents::FlagType::kString, "",
     "registry token: keepalive requires it for writes, services and proxies send it"},
};

void usage(std::FILE* out) {
  std::fprintf(out, "usage: aiorpcd --role=NAME [--flag=value | --flag value]...\n\nroles:\n");
  for (const auto& r : agents::roles())
    std::fprintf(out, "  %-10s %.*s (default bind %.*s)\n", std::string(r.name).c_str(),
                 static_cast<int>(r.summary.size()), r.summary.data(),
                 static_cast<int>(r.default_bind.size()), r.default_bind.data());
  auto flags = [&](std::span<const agents::FlagSpec> specs) {
    for (const auto& f : specs)
      std::fprintf(out, "  --%-20s %.*s%s%.*s%s\n", std::string(f.name).c_str(),
                   static_cast<int>(f.help.size()), f.help.data(), f.def.empty() ? "" : " (",
                   static_cast<int>(f.def.size()), f.def.data(), f.def.empty() ? "" : ")");
  };
  std::fprintf(out, "\nflags of every role:\n");
  flags(kCommon);
  for (const auto& r : agents::roles()) {
    if (r.flags.empty()) continue;
    std::fprintf(out, "\nflags of role %s:\n", std::string(r.name).c_str());
    flags(r.flags);
  }
}

int fail(const std::string& msg) {
  std::fprintf(stderr, "aiorpcd: %s\n", msg.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  // Find the role first: its flags join the common ones.
  std::string role_name;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--role=", 0) == 0) role_name = a.substr(7);
    if (a == "--role" && i + 1 < argc) role_name = argv[i + 1];
  }
  const agents::Role* role = agents::findRole(role_name);
  std::vector<agents::FlagSpec> specs(std::begin(kCommon), std::end(kCommon));
  if (role) specs.insert(specs.end(), role->flags.begin(), role->flags.end());
  agents::Flags flags;
  bool ok = flags.parse(specs, argc, argv);
  if (flags.helpWanted()) {
    usage(stdout);
    return 0;
  }
  if (!ok) return fail(flags.error());
  if (role_name.empty()) return fail("--role is required (see --help)");
  if (!role) return fail("unknown role '" + role_name + "' (see --help)");

  clog::setLevel(*clog::parseLevel(flags.str("log-level")));
  if (auto r = clog::setFile(flags.str("log-file")); !r)
    return fail("cannot open --log-file: " + r.error().message());
  core::prepareProcess();

  rpc::ServerOptions opts;
  opts.drain_timeout = flags.seconds("drain-timeout");
  opts.limits.max_message_size = static_cast<size_t>(flags.count("max-message-size"));
  opts.limits.max_elements = static_cast<size_t>(flags.count("max-elements"));

  opts.allow = *core::AllowList::parse(flags.str("allow"));  // checked by the flag parser
  std::string token;
  if (flags.has("auth-token-file")) {
    if (auto bad = agents::loadToken(flags.str("auth-token-file"), token)) return fail(*bad);
  }

  core::Loop loop;
  agents::RoleEnv env{loop, flags, std::move(token)};
  std::unique_ptr<agents::RoleInstance> instance;
  try {
    instance = role->create(env);
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  rpc::Server server(loop, instance->service(), opts);
  std::string bind = flags.has("bind") ? flags.str("bind") : std::string(role->default_bind);
  auto bound = server.listen(bind);
  if (!bound) return fail("cannot listen on " + bind + ": " + bound.error().message());
  // SPEC §7: unregister first, keep serving for --drain-grace so that proxies stop routing
  // here, then drain (requests that still arrive are answered ServiceUnavailable), then stop.
  bool stopping = false;
  double grace = flags.seconds("drain-grace");
  auto drain = [&] { server.drain([&] { instance->stop([&] { loop.stop(); }); }); };
  auto shutdown = [&](int sig) {
    if (stopping) return;
    stopping = true;
    core::Callback<void()> left = [&] {
      if (grace <= 0) return drain();
      clog::info("unregistered; serving {} s more before draining", grace);
      loop.after(grace, drain);
    };
    clog::info("signal {}: leaving and draining", sig);
    if (!instance->leave(left)) drain();
  };
  // Handlers before the "listening on" line: a supervisor may signal as soon as it sees it.
  loop.onSignal(SIGINT, shutdown);
  loop.onSignal(SIGTERM, shutdown);
  std::printf("listening on %s\n", bound->toString().c_str());
  std::fflush(stdout);
  clog::info("aiorpcd role {} listening on {}", role->name, bound->toString());

  std::string pid_file = flags.str("pid-file");
  if (!pid_file.empty()) std::ofstream(pid_file) << getpid() << "\n";

  instance->started(server, *bound);
  loop.run();
  // Sockets closed gracefully are still lingering (their peers read the last replies): exiting
  // now would reset them. Bounded by Loop::kLingerSeconds.
  while (loop.lingering() > 0) loop.runOnce();
  loop.cancelAll();  // while the role's state is still alive
  clog::info("aiorpcd stopped");
  if (!pid_file.empty()) ::unlink(pid_file.c_str());
  return 0;
}
