// aiorpcd: the aiorpc daemon. `aiorpcd --role=NAME [flags]`; roles come from agents/registry.cc.
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "aiorpc/agents/auth.h"
#include "aiorpc/agents/heartbeat.h"
#include "aiorpc/agents/metrics.h"
#include "aiorpc/agents/module.h"
#include "aiorpc/agents/role.h"
#include "aiorpc/core/log.h"
#include "aiorpc/rpc/server.h"
#include "aiorpc/version.h"

using namespace aiorpc;
namespace clog = core::log;

namespace {

// How long the exit waits for lingering sockets (see the end of main).
constexpr double kExitLingerSeconds = 1.0;

const agents::FlagSpec kCommon[] = {
    {"role", agents::FlagType::kString, "", "the role to run (required)"},
    {"bind", agents::FlagType::kEndpoint, "",
     "HOST:PORT, [V6]:PORT or unix:/path (port 0: any free)"},
    {"log-level", agents::FlagType::kLogLevel, "info", "debug, info, warn or error"},
    {"log-file", agents::FlagType::kString, "",
     "append logs here instead of stderr (SIGHUP reopens it: logrotate)"},
    {"log-format", agents::FlagType::kString, "text", "text or json (one object per line)"},
    {"pid-file", agents::FlagType::kString, "", "write the process id here"},
    {"drain-timeout", agents::FlagType::kSeconds, "10",
     "seconds to finish owed replies on shutdown"},
    {"drain-grace", agents::FlagType::kSeconds, "1",
     "seconds to keep serving after unregistering on shutdown (0: none)"},
    {"max-message-size", agents::FlagType::kBytes, "67108864", "largest message accepted, bytes"},
    {"max-elements", agents::FlagType::kCount, "4194304",
     "container elements declared per message"},
    {"max-pending", agents::FlagType::kCount, "2048",
     "requests in progress per connection; past it the connection is not read"},
    {"max-output-buffer", agents::FlagType::kBytes, "",
     "replies queued for one client past this close it (default: max-message-size + 4 MiB)"},
    {"keepalive", agents::FlagType::kEndpointList, "",
     "keepalive HOST:PORT[,HOST:PORT...] to register with (all of them) / learn from (one at a "
     "time, the next when one fails)"},
    {"allow", agents::FlagType::kAllowList, "",
     "accept connections only from these CIDR ranges (unix peers always; default: all)"},
    {"auth-token-file", agents::FlagType::kString, "",
     "registry token: keepalive requires it for writes, services and proxies send it"},
    {"heartbeat-interval", agents::FlagType::kSeconds, "3",
     "service roles with --keepalive: seconds between heartbeats"},
    {"module", agents::FlagType::kString, "",
     "load roles from a module (PATH.so; on the command line, repeatable)"},
    {"tls-cert", agents::FlagType::kString, "",
     "PEM certificate (chain): with --tls-key every --bind listener is TLS-only; also presented "
     "when a server we dial asks for a client certificate"},
    {"tls-key", agents::FlagType::kString, "", "PEM private key of --tls-cert"},
    {"tls-client-ca", agents::FlagType::kString, "",
     "require client certificates that chain to this CA file (mutual TLS)"},
    {"tls-ca", agents::FlagType::kString, "",
     "CA file that servers we dial over TLS must chain to (default: the system's trust store)"},
    {"tls-handshake-timeout", agents::FlagType::kSeconds, "10",
     "seconds a TLS handshake may take, in and out"},
    {"metrics-bind", agents::FlagType::kEndpoint, "",
     "serve GET /metrics (Prometheus) and /healthz over HTTP on HOST:PORT or unix:/path "
     "(default: off; --allow applies; HTTPS with --tls-cert, mutual with --tls-client-ca)"},
};

// SPEC §8: the server context (with --tls-cert/--tls-key) and the client one (with any TLS
// flag: what tls:// targets, --backend-tls and https etcd members are dialled with).
struct TlsSetup {
  std::shared_ptr<core::TlsContext> server, client;
};

std::optional<std::string> makeTls(const agents::Flags& flags, TlsSetup& out) {
  using Side = core::TlsContext::Side;
  std::string cert = flags.str("tls-cert"), key = flags.str("tls-key");
  if (cert.empty() != key.empty()) return std::string("--tls-cert and --tls-key go together");
  if (flags.has("tls-client-ca") && cert.empty())
    return std::string("--tls-client-ca needs --tls-cert and --tls-key (a TLS listener)");
  double timeout = flags.seconds("tls-handshake-timeout");
  if (timeout <= 0) return std::string("--tls-handshake-timeout must be > 0");
  std::string error;
  if (!cert.empty()) {
    out.server =
        core::TlsContext::make(Side::kServer, {cert, key, flags.str("tls-client-ca")}, error);
    if (!out.server) return "TLS: " + error;
    out.server->handshake_timeout = timeout;
  }
  if (!cert.empty() || flags.has("tls-ca") || flags.given("tls-handshake-timeout")) {
    out.client = core::TlsContext::make(Side::kClient, {cert, key, flags.str("tls-ca")}, error);
    if (!out.client) return "TLS: " + error;
    out.client->handshake_timeout = timeout;
  }
  return std::nullopt;
}

// SIGHUP: new material for new connections; a file that fails keeps the old (SPEC §8).
void reloadTls(const TlsSetup& tls) {
  for (const auto& [ctx, what] :
       {std::pair{tls.server.get(), "server"}, {tls.client.get(), "client"}}) {
    if (!ctx) continue;
    std::string error = ctx->reload();
    if (error.empty())
      clog::info("SIGHUP: TLS {} certificates reloaded", what);
    else
      clog::error("SIGHUP: TLS {} certificates not reloaded (the old ones stay): {}", what, error);
  }
}

// Built-in roles, then those of the modules loaded with --module.
std::vector<const agents::Role*> g_roles;

const agents::Role* findRole(std::string_view name) {
  for (const auto* r : g_roles)
    if (r->name == name) return r;
  return nullptr;
}

// dlopen()s a role module and checks it; the handle stays open for the process's life.
std::optional<std::string> loadModule(const std::string& path) {
  void* h = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) return std::string("cannot load module: ") + ::dlerror();
  auto entry = reinterpret_cast<const agents::ModuleInfo* (*)()>(::dlsym(h, "aiorpc_module"));
  if (!entry) return "module " + path + " has no aiorpc_module() entry point (AIORPC_MODULE)";
  const agents::ModuleInfo* info = nullptr;
  try {
    info = entry();
  } catch (const std::exception& e) {
    return "module " + path + ": aiorpc_module() threw: " + e.what();
  } catch (...) {
    return "module " + path + ": aiorpc_module() threw";
  }
  if (!info || info->abi != agents::kModuleAbi)
    return "module " + path + " was built against aiorpc " +
           (info && info->version ? info->version : "?") + ", this aiorpcd is " +
           AIORPC_VERSION_STRING + ": rebuild it against this version";
  for (const auto& r : info->roles) {
    std::string what = "module " + path + ": role '" + std::string(r.name) + "'";
    if (r.name.empty()) return "module " + path + ": a role without a name";
    if (findRole(r.name)) return what + " exists";
    if (!r.create) return what + " has no create function";
    for (const auto& f : r.flags) {
      bool daemons = f.name == "config" || f.name == "help" || f.name == "version" ||
                     std::any_of(std::begin(kCommon), std::end(kCommon),
                                 [&](const agents::FlagSpec& c) { return c.name == f.name; });
      if (daemons || f.name.empty())
        return what + ": flag --" + std::string(f.name) +
               " is the daemon's own (role flags need names of their own)";
    }
    g_roles.push_back(&r);
  }
  return std::nullopt;
}

void usage(std::FILE* out) {
  std::fprintf(out, "usage: aiorpcd --role=NAME [--flag=value | --flag value]...\n\nroles:\n");
  for (const auto* r : g_roles)
    std::fprintf(out, "  %-10s %.*s (default bind %.*s)\n", std::string(r->name).c_str(),
                 static_cast<int>(r->summary.size()), r->summary.data(),
                 static_cast<int>(r->default_bind.size()), r->default_bind.data());
  auto flags = [&](std::span<const agents::FlagSpec> specs) {
    for (const auto& f : specs)
      std::fprintf(out, "  --%-20s %.*s%s%.*s%s\n", std::string(f.name).c_str(),
                   static_cast<int>(f.help.size()), f.help.data(), f.def.empty() ? "" : " (",
                   static_cast<int>(f.def.size()), f.def.data(), f.def.empty() ? "" : ")");
  };
  std::fprintf(out, "\nflags of every role:\n");
  std::fprintf(out, "  --%-20s %s\n", "config",
               "read flags from FILE: `name = value` lines (TOML/INI), e.g. ttl = 10; "
               "flags on the command line override it");
  flags(kCommon);
  for (const auto* r : g_roles) {
    if (r->flags.empty()) continue;
    std::fprintf(out, "\nflags of role %s:\n", std::string(r->name).c_str());
    flags(r->flags);
  }
}

// Opens, locks and writes `path`; on failure an invalid Fd and `error` says why (exit 2). A
// symbolic link is refused (O_NOFOLLOW: it would make us overwrite its target), and so is
// anything but a regular file.
core::Fd writePidFile(const std::string& path, std::string& error) {
  core::Fd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0644));
  if (!fd) {
    error = "cannot open --pid-file " + path + ": " + std::strerror(errno) +
            (errno == ELOOP ? " (a symbolic link: refused)" : "");
    return {};
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    error = "--pid-file " + path + " is not a regular file";
    return {};
  }
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    char buf[32] = {};
    ssize_t n = ::pread(fd.get(), buf, sizeof buf - 1, 0);
    std::string other = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
    while (!other.empty() && (other.back() == '\n' || other.back() == ' ')) other.pop_back();
    error = "--pid-file " + path + " is locked by another aiorpcd (pid " + other + ")";
    return {};
  }
  std::string text = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd.get(), 0) != 0 ||
      ::pwrite(fd.get(), text.data(), text.size(), 0) != static_cast<ssize_t>(text.size())) {
    error = "cannot write --pid-file " + path + ": " + std::strerror(errno);
    return {};
  }
  return fd;
}

// Readiness and status for systemd (Type=notify), never blocking: sd_notify's datagram socket
// blocks when NOTIFY_SOCKET's queue is full (the daemon then never served and ignored SIGTERM).
// A message that does not fit now is dropped with a warning. Nothing without NOTIFY_SOCKET.
void notifySystemd(const std::string& message) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (!path || !*path) return;
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  size_t len = std::strlen(path);
  if ((path[0] != '/' && path[0] != '@') || len >= sizeof sa.sun_path) return;
  std::memcpy(sa.sun_path, path, len);
  if (path[0] == '@') sa.sun_path[0] = '\0';  // the abstract namespace
  core::Fd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return;
  auto salen = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len);
  if (::sendto(fd.get(), message.data(), message.size(), MSG_NOSIGNAL | MSG_DONTWAIT,
               reinterpret_cast<const sockaddr*>(&sa), salen) < 0)
    clog::warn("readiness notification to {} not sent: {}", path, std::strerror(errno));
}

int fail(const std::string& msg) {
  std::fprintf(stderr, "aiorpcd: %s\n", msg.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::string_view(argv[i]) == "--version")
      return std::printf("aiorpcd %s\n", AIORPC_VERSION_STRING), 0;
  // Every role's flags are known to the parser (the role may come from --config); a flag of
  // another role than the chosen one is refused afterwards.
  for (const auto& r : agents::roles()) g_roles.push_back(&r);
  for (int i = 1; i < argc; ++i) {  // modules first: their roles bring flags of their own
    std::string_view a = argv[i];
    std::string path;
    if (a.substr(0, 9) == "--module=") path = std::string(a.substr(9));
    if (a == "--module" && i + 1 < argc) path = argv[++i];
    if (path.empty()) continue;
    if (auto bad = loadModule(path)) return fail(*bad);
  }
  std::vector<std::string> config_modules;  // `module = ...` in the --config file
  if (auto bad = agents::Flags::configModules(argc, argv, config_modules)) return fail(*bad);
  for (const auto& path : config_modules)
    if (auto bad = loadModule(path)) return fail(*bad);
  std::vector<agents::FlagSpec> specs(std::begin(kCommon), std::end(kCommon));
  for (const auto* r : g_roles) specs.insert(specs.end(), r->flags.begin(), r->flags.end());
  agents::Flags flags;
  bool ok = flags.parse(specs, argc, argv);
  if (flags.helpWanted()) {
    usage(stdout);
    return 0;
  }
  if (!ok) return fail(flags.error());
  std::string role_name = flags.str("role");
  const agents::Role* role = findRole(role_name);
  if (role_name.empty()) return fail("--role is required (see --help)");
  if (!role) return fail("unknown role '" + role_name + "' (see --help)");
  for (const auto* r : g_roles) {
    if (r == role) continue;
    for (const auto& f : r->flags) {
      bool ours = std::any_of(role->flags.begin(), role->flags.end(),
                              [&](const agents::FlagSpec& g) { return g.name == f.name; });
      if (flags.given(f.name) && !ours)
        return fail("--" + std::string(f.name) + " is a flag of role " + std::string(r->name) +
                    ", not of " + role_name);
    }
  }

  clog::setLevel(*clog::parseLevel(flags.str("log-level")));
  if (auto r = clog::setFile(flags.str("log-file")); !r)
    return fail("cannot open --log-file: " + r.error().message());
  std::string log_format = flags.str("log-format");
  if (log_format != "text" && log_format != "json")
    return fail("bad value '" + log_format + "' for --log-format: expected text or json");
  clog::setFormat(log_format == "json" ? clog::Format::kJson : clog::Format::kText);
  core::prepareProcess();

  rpc::ServerOptions opts;
  opts.drain_timeout = flags.seconds("drain-timeout");
  opts.limits.max_message_size = static_cast<size_t>(flags.count("max-message-size"));
  opts.limits.max_elements = static_cast<size_t>(flags.count("max-elements"));
  opts.max_pending = static_cast<size_t>(flags.count("max-pending"));
  opts.max_output = flags.has("max-output-buffer")
                        ? static_cast<size_t>(flags.count("max-output-buffer"))
                        : opts.limits.max_message_size + opts.high_water;

  opts.allow = *core::AllowList::parse(flags.str("allow"));  // checked by the flag parser
  std::string token;
  if (flags.has("auth-token-file")) {
    if (auto bad = agents::loadToken(flags.str("auth-token-file"), token)) return fail(*bad);
  }

  TlsSetup tls;
  if (auto bad = makeTls(flags, tls)) return fail(*bad);

  core::Loop loop;
  agents::RoleEnv env{loop, flags, std::move(token), tls.client};
  std::unique_ptr<agents::RoleInstance> instance;
  try {
    instance = role->create(env);
  } catch (const std::exception& e) {
    return fail(e.what());
  } catch (...) {  // a module's create() that throws something else
    return fail("role " + role_name + ": its create function threw (not a std::exception)");
  }
  if (!instance) return fail("role " + role_name + ": its create function returned nothing");
  // The pid file is locked for the daemon's life: a second daemon with the same file refuses
  // to start instead of overwriting it.
  std::string pid_file = flags.str("pid-file");
  core::Fd pid_fd;
  if (!pid_file.empty()) {
    std::string error;
    pid_fd = writePidFile(pid_file, error);
    if (!pid_fd) return fail(error);
  }
  // A start that fails from here on leaves no pid file behind (it is ours: we hold its lock).
  struct PidFileGuard {
    const std::string& path;
    const core::Fd& fd;
    bool keep = false;
    ~PidFileGuard() {
      if (fd && !keep) ::unlink(path.c_str());
    }
  } pid_guard{pid_file, pid_fd};
  rpc::Server server(loop, instance->service(), opts);
  std::string bind = flags.has("bind") ? flags.str("bind") : std::string(role->default_bind);
  auto bound = server.listen(bind, tls.server);
  if (!bound) return fail("cannot listen on " + bind + ": " + bound.error().message());
  std::unique_ptr<agents::MetricsEndpoint> metrics;  // SPEC §9
  std::optional<core::Address> metrics_at;
  if (flags.has("metrics-bind")) {
    metrics =
        std::make_unique<agents::MetricsEndpoint>(loop, server, *instance, opts.allow, tls.server);
    auto at = metrics->listen(flags.str("metrics-bind"));
    if (!at)
      return fail("cannot listen on " + flags.str("metrics-bind") +
                  " (--metrics-bind): " + at.error().message());
    metrics_at = *at;
  }
  // SPEC §7: unregister first, keep serving for --drain-grace so that proxies stop routing
  // here, then drain (requests that still arrive are answered ServiceUnavailable), then stop.
  std::unique_ptr<agents::Heartbeat> heartbeat;  // service roles with --keepalive
  bool stopping = false;
  double grace = flags.seconds("drain-grace");
  auto drain = [&] { server.drain([&] { instance->stop([&] { loop.stop(); }); }); };
  auto shutdown = [&](int sig) {
    if (stopping) return;
    stopping = true;
    notifySystemd("STOPPING=1");
    core::Callback<void()> left = [&] {
      if (grace <= 0) return drain();
      clog::info("unregistered; serving {} s more before draining", grace);
      loop.after(grace, drain);
    };
    clog::info("signal {}: leaving and draining", sig);
    if (heartbeat) return heartbeat->stop(std::move(left));  // unregister, then the grace
    if (!instance->leave(left)) drain();
  };
  // Handlers before the "listening on" line: a supervisor may signal as soon as it sees it.
  loop.onSignal(SIGINT, shutdown);
  loop.onSignal(SIGTERM, shutdown);
  loop.onSignal(SIGHUP, [&tls](int) {  // logrotate, certificate renewal; the daemon goes on
    reloadTls(tls);
    if (auto r = clog::reopen(); !r) {
      clog::error("SIGHUP: cannot reopen --log-file: {}", r.error().message());
      return;
    }
    clog::info("SIGHUP: log file reopened");
  });
  std::printf("listening on %s\n", bound->toString().c_str());
  if (metrics_at) std::printf("metrics on %s\n", metrics_at->toString().c_str());
  std::fflush(stdout);
  clog::info("aiorpcd role {} listening on {}", role->name, bound->toString());
  if (metrics_at) clog::info("metrics on {}", metrics_at->toString());

  instance->started(server, *bound);
  if (role->heartbeats && flags.has("keepalive"))
    heartbeat = std::make_unique<agents::Heartbeat>(
        loop, agents::HeartbeatOptions{
                  *agents::Flags::endpointList(flags.str("keepalive")), instance->service().name(),
                  bound->port(), flags.seconds("heartbeat-interval"), env.auth_token, tls.client});
  // Readiness for systemd (Type=notify); does nothing without NOTIFY_SOCKET.
  notifySystemd(
      fmt::format("READY=1\nSTATUS=listening on {}\nMAINPID={}", bound->toString(), ::getpid()));
  loop.run();
  // Sockets closed gracefully are still lingering (their peers read the last replies): exiting
  // at once would reset them. A second at most: a peer that does not read (its window full)
  // cannot hold the exit, so every stop ends within --drain-grace + --drain-timeout + 2 s (the
  // unregister takes one at most).
  for (double until = loop.now() + kExitLingerSeconds; loop.lingering() > 0 && loop.now() < until;)
    loop.runOnce();
  clog::info("aiorpcd stopped");
  return 0;
}
