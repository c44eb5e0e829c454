// aiorpc: the command-line client. call / notify / services / stats / methods / wait / bench.
#include <fmt/format.h>

#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "aiorpc/agents/auth.h"
#include "aiorpc/rpc/client.h"
#include "aiorpc/version.h"
#include "tools/args.h"
#include "tools/bench.h"
#include "tools/json.h"

using namespace aiorpc;
using nlohmann::json;

namespace {

const char kParamsHelp[] =
    "PARAMS-JSON: an array (positional), an object (named), or one value; absent means nil.\n"
    "  bin is {\"$base64\": \"...\"}, ext {\"$ext\": T, \"$base64\": \"...\"}, NaN/inf\n"
    "  {\"$float\": \"nan\"|\"inf\"|\"-inf\"}, a map with non-string keys {\"$map\": [[k, v], "
    "...]};\n"
    "  results are printed the same way (lossless).\n";
const char kExitHelp[] =
    "Exit status: 0 ok; 1 error reply (KIND: message on stderr); 2 cannot connect (or the\n"
    "  connection was lost); 3 timeout; 64 bad usage.";
const char kWaitHelp[] =
    "Without --service: ready once the server answers (any reply). With --service NAME: a\n"
    "  keepalive is ready once it lists NAME, a proxy once it routes a call to NAME (its\n"
    "  \\0reflection). Tries every 0.1 s.\n"
    "Exit status: 0 ready; 3 not ready within --timeout; 64 bad usage.";

constexpr int kExitError = 1, kExitConnect = 2, kExitTimeout = 3, kExitUsage = 64;

// A peer's text for the terminal: valid UTF-8, control bytes shown as \xNN (a hostile server
// must not drive the terminal).
std::string printable(std::string_view text) {
  std::string s = rpc::validUtf8(text), out;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::string dump(const json& j, int indent = -1) {
  return j.dump(indent, ' ', false, json::error_handler_t::replace);
}

// reflection → one line per method: name(param, param=default, ...)
void printMethods(rpc::Object r) {
  auto methods = r.find("methods");
  if (!methods || !methods->isMap())
    return void(std::printf("%s\n", dump(tools::toJson(r)).c_str()));
  for (uint32_t i = 0; i < methods->size(); ++i) {
    std::string line = std::string(methods->key(i).str()) + "(";
    rpc::Object params = methods->val(i);
    for (uint32_t k = 0; k < params.size(); ++k) {
      if (k) line += ", ";
      rpc::Object prm = params[k];
      if (prm.isStrOrBin()) {
        line += std::string(prm.str());
      } else if (auto n = prm.find("name")) {
        auto d = prm.find("default");
        line += std::string(n->str()) + "=" + (d ? dump(tools::toJson(*d)) : "?");
      }
    }
    std::printf("%s)\n", line.c_str());
  }
}

enum class Show { kJson, kPretty, kMethods };

// Adds the registry token (--auth-token-file) to the params: map form is the only one that can
// carry it (SPEC §5). Returns an error text when the params cannot.
std::optional<std::string> withToken(std::optional<json>& params, const std::string& token) {
  if (token.empty()) return std::nullopt;
  if (!params || params->is_null()) params = json::object();
  if (!params->is_object() || params->contains("$map"))
    return "--auth-token-file needs named params (a JSON object, or none): only map-form params "
           "carry the token";
  (*params)["__auth__"] = token;
  return std::nullopt;
}

// --tls-ca/--tls-cert/--tls-key (SPEC §8): the context tls:// endpoints are dialled with; null
// (the system's trust store, no certificate) when none is given.
std::shared_ptr<core::TlsContext> g_tls;

rpc::ClientOptions baseOptions() {
  rpc::ClientOptions o;
  o.tls = g_tls;  // dropped for a plain endpoint
  return o;
}

// One attempt of `wait`: true when the target is ready.
bool readyOnce(const std::string& ep, const std::string& service, const std::string& token,
               double timeout) {
  rpc::ClientOptions o = baseOptions();
  o.timeout = timeout;
  o.connect_timeout = timeout;
  o.dead_after = INT_MAX;  // every attempt dials again
  rpc::SyncClient c(ep, o);
  rpc::Value stats;
  try {
    stats = c.request(std::string("\0stats", 6), nullptr);
  } catch (const rpc::RpcError& e) {
    // Any reply (an older server's NoMethodError too) means it answers.
    if (e.kind() == rpc::Kind::kConnection || e.kind() == rpc::Kind::kNotSent ||
        e.kind() == rpc::Kind::kTimeout)
      return false;
    return service.empty();
  }
  if (service.empty()) return true;
  auto reg = stats.view().find("registry");
  try {
    if (reg && reg->find("store")) {  // a keepalive: it lists the service
      std::optional<json> params;
      withToken(params, token);
      std::string bytes;
      rpc::Packer p(bytes);
      if (params) {
        tools::packJson(p, *params);
      } else {
        p.array(0);
      }
      rpc::Value v = c.request("get_services", rpc::Raw{bytes});
      auto list = v.view().find(service);
      return list && list->isArray() && list->size() > 0;
    }
    if (reg && reg->find("keepalive")) {  // a proxy: it routes a call there
      c.request("invoke", std::tuple{service, std::string("\0reflection", 11), nullptr});
      return true;
    }
  } catch (const rpc::RpcError&) {
    return false;
  }
  throw std::invalid_argument(ep + " is not a keepalive or a proxy: --service asks one of them");
}

int runWait(const std::string& ep, const std::string& service, const std::string& token,
            double timeout) {
  using Clock = std::chrono::steady_clock;
  auto deadline = Clock::now() + std::chrono::duration<double>(timeout);
  for (;;) {
    double left = std::chrono::duration<double>(deadline - Clock::now()).count();
    if (left <= 0) break;
    try {
      if (readyOnce(ep, service, token, std::min(left, 2.0))) return 0;
    } catch (const std::invalid_argument& e) {
      std::fprintf(stderr, "aiorpc: %s\n", e.what());
      return kExitUsage;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::fprintf(stderr, "aiorpc wait: %s not ready within %g s\n", ep.c_str(), timeout);
  return kExitTimeout;
}

int runCall(const std::string& cmd, const std::string& ep, const std::string& method,
            const std::optional<json>& params, double timeout, Show show = Show::kJson) {
  rpc::ClientOptions o = baseOptions();
  o.timeout = timeout;
  o.connect_timeout = std::min(timeout, 5.0);
  std::unique_ptr<rpc::SyncClient> c;
  try {
    c = std::make_unique<rpc::SyncClient>(ep, o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "aiorpc: %s\n", e.what());
    return kExitUsage;  // a bad address is bad usage
  }
  std::string bytes;
  rpc::Packer p(bytes);
  if (params) {
    tools::packJson(p, *params);
  } else {
    p.nil();
  }
  try {
    if (cmd == "notify") {
      c->notifyParams(method, rpc::Raw{bytes});
      return 0;
    }
    rpc::Value v = c->request(method, rpc::Raw{bytes});
    if (show == Show::kMethods) {
      printMethods(v.view());
    } else {
      std::printf("%s\n", dump(tools::toJson(v.view()), show == Show::kPretty ? 2 : -1).c_str());
    }
    return 0;
  } catch (const rpc::RpcError& e) {
    // A foreign peer's error object ([kind, text] in its own words, e.g. Python's
    // ["<class 'ValueError'>", "..."]) is shown as it came.
    rpc::Value obj = e.object();
    rpc::Object eo = obj.view();
    std::string kind(rpc::kindName(e.kind()));
    if (e.kind() == rpc::Kind::kOther && eo.isArray() && eo.size() == 2 && eo[0].isStrOrBin())
      kind = eo[0].str();
    std::fprintf(stderr, "%s: %s\n", printable(kind).c_str(), printable(e.message()).c_str());
    if (e.kind() == rpc::Kind::kConnection || e.kind() == rpc::Kind::kNotSent) return kExitConnect;
    // Our own call timing out is 3; a server's TimeoutError reply (a proxy's backend timed
    // out) is an error reply like any other.
    if (e.kind() == rpc::Kind::kTimeout && !e.hasPeerObject()) return kExitTimeout;
    return kExitError;
  }
}

}  // namespace

int main(int argc, char** argv) {
  // CLI11, as the daemon's flags: subcommands, strict numbers, --help per command.
  CLI::App app{"aiorpc: the msgpack-rpc command-line client", "aiorpc"};
  app.footer(std::string(kParamsHelp) + kExitHelp);
  app.set_version_flag("--version", std::string("aiorpc ") + AIORPC_VERSION_STRING);
  app.require_subcommand(1);
  app.option_defaults()->always_capture_default();
  double timeout = 10;
  bool raw_json = false;
  std::string endpoint, method, params_text, token_file, wait_service;
  core::TlsFiles tls_files;
  // Every command that dials: tls://HOST:PORT endpoints and the files to verify them with.
  auto tls = [&](CLI::App* c) {
    c->add_option("--tls-ca", tls_files.ca,
                  "tls:// endpoints: the CA file the server must chain to (default: the system's)");
    c->add_option("--tls-cert", tls_files.cert,
                  "tls:// endpoints: a PEM certificate to present when the server asks for one");
    c->add_option("--tls-key", tls_files.key, "the private key of --tls-cert");
  };
  auto common = [&](CLI::App* c, const char* what) {
    c->add_option("endpoint", endpoint, what)->required();
    c->add_option("--timeout", timeout, "seconds to wait for the reply")->check(tools::seconds());
    tls(c);
  };
  // Only where a registry may ask for it (its methods take map-form params).
  auto token = [&](CLI::App* c) {
    c->add_option("--auth-token-file", token_file,
                  "a file holding the registry's token (as aiorpcd takes it): sent as __auth__");
  };
  auto* call = app.add_subcommand("call", "call METHOD; prints the result as JSON on stdout");
  common(call, "HOST:PORT of the server");
  token(call);
  call->add_option("method", method, "METHOD")->required();
  auto* call_params = call->add_option("params", params_text, "PARAMS-JSON (see below)");
  auto* notify = app.add_subcommand("notify", "send METHOD as a notification (no reply)");
  notify->add_option("endpoint", endpoint, "HOST:PORT of the server")->required();
  tls(notify);
  token(notify);
  notify->add_option("method", method, "METHOD")->required();
  auto* notify_params = notify->add_option("params", params_text, "PARAMS-JSON (see below)");
  auto* services = app.add_subcommand("services", "the services a keepalive knows");
  common(services, "HOST:PORT of the keepalive");
  token(services);
  auto* wait = app.add_subcommand(
      "wait", "wait until a server answers, or a keepalive or proxy has a service (scripts)");
  wait->add_option("endpoint", endpoint, "HOST:PORT of the server")->required();
  wait->add_option("--service", wait_service, "NAME: wait until it is listed (or routed)");
  wait->add_option("--timeout", timeout, "seconds to wait in all")->check(tools::seconds());
  tls(wait);
  token(wait);
  wait->footer(kWaitHelp);
  auto* stats = app.add_subcommand("stats", "the server's \\0stats counters");
  common(stats, "HOST:PORT of the server");
  stats->add_flag("--json", raw_json, "one line of JSON");
  auto* methods = app.add_subcommand("methods", "the server's methods (\\0reflection)");
  common(methods, "HOST:PORT of the server");
  methods->add_flag("--json", raw_json, "the reflection as JSON");
  tools::BenchOptions bench;
  auto* bench_cmd = tools::addBenchCommand(app, bench);
  tls(bench_cmd);
  for (auto* c : {call, notify}) c->footer(std::string(kParamsHelp) + kExitHelp);
  for (auto* c : {services, stats, methods}) c->footer(kExitHelp);
  if (argc < 2) {
    std::fprintf(stderr, "aiorpc: a command is needed\n%s", app.help().c_str());
    return kExitUsage;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    std::fprintf(stderr, "aiorpc: %s\nusage: see aiorpc --help\n", e.what());
    return kExitUsage;
  }
  if (!tls_files.ca.empty() || !tls_files.cert.empty() || !tls_files.key.empty()) {
    std::string error;
    g_tls = core::TlsContext::make(core::TlsContext::Side::kClient, tls_files, error);
    if (!g_tls) {
      std::fprintf(stderr, "aiorpc: TLS: %s\n", error.c_str());
      return kExitUsage;
    }
  }
  if (bench_cmd->parsed()) {
    bench.tls = g_tls;
    return tools::runBench(bench);
  }
  std::string token_value;
  if (!token_file.empty()) {
    if (auto bad = agents::loadToken(token_file, token_value)) {
      std::fprintf(stderr, "aiorpc: %s\n", bad->c_str());
      return kExitUsage;
    }
  }
  if (wait->parsed()) return runWait(endpoint, wait_service, token_value, timeout);
  if (services->parsed()) {
    std::optional<json> params;
    withToken(params, token_value);
    return runCall("call", endpoint, "get_services", params, timeout);
  }
  if (stats->parsed() || methods->parsed()) {
    // Control commands start with a NUL byte, which no shell can pass in argv.
    std::string control = std::string(1, '\0') + (stats->parsed() ? "stats" : "reflection");
    Show show = raw_json ? Show::kJson : stats->parsed() ? Show::kPretty : Show::kMethods;
    return runCall("call", endpoint, control, std::nullopt, timeout, show);
  }
  std::optional<json> params;
  if (call_params->count() || notify_params->count()) {
    try {
      params = tools::parseJson(params_text);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "aiorpc: %s\n", e.what());
      return kExitUsage;
    }
  }
  if (auto bad = withToken(params, token_value)) {
    std::fprintf(stderr, "aiorpc: %s\n", bad->c_str());
    return kExitUsage;
  }
  return runCall(notify->parsed() ? "notify" : "call", endpoint, method, params, timeout);
}
