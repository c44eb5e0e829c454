// aiorpc: the command-line client. call / notify / services / bench.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

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

constexpr int kExitError = 1, kExitConnect = 2, kExitTimeout = 3, kExitUsage = 64;

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

int runCall(const std::string& cmd, const std::string& ep, const std::string& method,
            const std::optional<json>& params, double timeout, Show show = Show::kJson) {
  rpc::ClientOptions o;
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
      kind = rpc::validUtf8(eo[0].str());
    std::fprintf(stderr, "%s: %s\n", kind.c_str(), rpc::validUtf8(e.message()).c_str());
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
  std::string endpoint, method, params_text;
  auto common = [&](CLI::App* c, const char* what) {
    c->add_option("endpoint", endpoint, what)->required();
    c->add_option("--timeout", timeout, "seconds to wait for the reply")->check(tools::seconds());
  };
  auto* call = app.add_subcommand("call", "call METHOD; prints the result as JSON on stdout");
  common(call, "HOST:PORT of the server");
  call->add_option("method", method, "METHOD")->required();
  auto* call_params = call->add_option("params", params_text, "PARAMS-JSON (see below)");
  auto* notify = app.add_subcommand("notify", "send METHOD as a notification (no reply)");
  common(notify, "HOST:PORT of the server");
  notify->add_option("method", method, "METHOD")->required();
  auto* notify_params = notify->add_option("params", params_text, "PARAMS-JSON (see below)");
  auto* services = app.add_subcommand("services", "the services a keepalive knows");
  common(services, "HOST:PORT of the keepalive");
  auto* stats = app.add_subcommand("stats", "the server's \\0stats counters");
  common(stats, "HOST:PORT of the server");
  stats->add_flag("--json", raw_json, "one line of JSON");
  auto* methods = app.add_subcommand("methods", "the server's methods (\\0reflection)");
  common(methods, "HOST:PORT of the server");
  methods->add_flag("--json", raw_json, "the reflection as JSON");
  tools::BenchOptions bench;
  auto* bench_cmd = tools::addBenchCommand(app, bench);
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
  if (bench_cmd->parsed()) return tools::runBench(bench);
  if (services->parsed()) return runCall("call", endpoint, "get_services", std::nullopt, timeout);
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
  return runCall(notify->parsed() ? "notify" : "call", endpoint, method, params, timeout);
}
