// aiorpc: the command-line client. call / notify / services / bench.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "aiorpc/rpc/client.h"
#include "aiorpc/version.h"
#include "tools/bench.h"
#include "tools/json.h"

using namespace aiorpc;
using nlohmann::json;

namespace {

const char kUsage[] =
    "usage:\n"
    "  aiorpc call HOST:PORT METHOD [PARAMS-JSON] [--timeout S]\n"
    "      prints the result as JSON on stdout\n"
    "  aiorpc notify HOST:PORT METHOD [PARAMS-JSON]\n"
    "  aiorpc services KEEPALIVE-HOST:PORT     the services a keepalive knows\n"
    "  aiorpc stats HOST:PORT [--json]          the server's \\0stats counters\n"
    "  aiorpc methods HOST:PORT [--json]        the server's methods (\\0reflection)\n"
    "  aiorpc bench HOST:PORT [options]         load generator; aiorpc bench --help\n"
    "  aiorpc --version\n"
    "PARAMS-JSON: an array (positional), an object (named), or one value; absent means nil.\n"
    "  bin is {\"$base64\": \"...\"}, ext {\"$ext\": T, \"$base64\": \"...\"}, NaN/inf\n"
    "  {\"$float\": \"nan\"|\"inf\"|\"-inf\"}, a map with non-string keys {\"$map\": [[k, v], "
    "...]};\n"
    "  results are printed the same way (lossless).\n"
    "exit status: 0 ok; 1 error reply (KIND: message on stderr); 2 cannot connect (or the\n"
    "  connection was lost); 3 timeout; 64 bad usage.\n";

constexpr int kExitError = 1, kExitConnect = 2, kExitTimeout = 3, kExitUsage = 64;

int usage(const char* why) {
  if (why) std::fprintf(stderr, "aiorpc: %s\n", why);
  std::fputs(kUsage, why ? stderr : stdout);
  return why ? kExitUsage : 0;
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
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) return usage("a command is needed");
  if (args[0] == "--help" || args[0] == "-h") return usage(nullptr);
  if (args[0] == "--version") return std::printf("aiorpc %s\n", AIORPC_VERSION_STRING), 0;
  const std::string cmd = args[0];
  if (cmd == "bench") return tools::benchMain(argc - 1, argv + 1);
  double timeout = 10;
  bool raw_json = false;
  std::vector<std::string> pos;
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "--json") {
      raw_json = true;
      continue;
    }
    if (args[i].rfind("--timeout", 0) == 0) {
      std::string v = args[i].size() > 9 && args[i][9] == '=' ? args[i].substr(10)
                      : i + 1 < args.size()                   ? args[++i]
                                                              : "";
      char* end = nullptr;
      timeout = std::strtod(v.c_str(), &end);
      if (v.empty() || *end || !std::isfinite(timeout) || timeout <= 0)
        return usage("bad --timeout (seconds > 0)");
      continue;
    }
    if (args[i].rfind("--", 0) == 0) return usage(("unknown option " + args[i]).c_str());
    pos.push_back(args[i]);
  }
  if (cmd == "services" || cmd == "stats" || cmd == "methods") {
    if (pos.size() != 1) return usage((cmd + " takes HOST:PORT").c_str());
    if (cmd == "services") return runCall("call", pos[0], "get_services", std::nullopt, timeout);
    // Control commands start with a NUL byte, which no shell can pass in argv.
    std::string control = std::string(1, '\0') + (cmd == "stats" ? "stats" : "reflection");
    Show show = raw_json ? Show::kJson : cmd == "stats" ? Show::kPretty : Show::kMethods;
    return runCall("call", pos[0], control, std::nullopt, timeout, show);
  }
  if (cmd != "call" && cmd != "notify") return usage(("unknown command '" + cmd + "'").c_str());
  if (pos.size() < 2 || pos.size() > 3) return usage("expected HOST:PORT METHOD [PARAMS-JSON]");
  std::optional<json> params;
  if (pos.size() == 3) {
    try {
      params = tools::parseJson(pos[2]);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "aiorpc: %s\n", e.what());
      return kExitUsage;
    }
  }
  return runCall(cmd, pos[0], pos[1], params, timeout);
}
