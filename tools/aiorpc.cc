// aiorpc: the command-line client. call / notify / services / bench.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "rpc/client.h"
#include "tools/bench.h"
#include "tools/json.h"

using namespace aiorpc;
using nlohmann::json;

namespace {

const char kUsage[] =
    "usage:\n"
    "  aiorpc call HOST:PORT METHOD [PARAMS-JSON] [--timeout S]\n"
    "      prints the result as JSON (bin as {\"$base64\": ...}); exit 0 on success,\n"
    "      1 on an error reply (KIND: message on stderr), 2 when the server is unreachable\n"
    "  aiorpc notify HOST:PORT METHOD [PARAMS-JSON]\n"
    "  aiorpc services KEEPALIVE-HOST:PORT     the services a keepalive knows\n"
    "  aiorpc bench HOST:PORT [options]         load generator; aiorpc bench --help\n"
    "PARAMS-JSON: an array (positional), an object (named), or one value; absent means nil.\n";

int usage(const char* why) {
  if (why) std::fprintf(stderr, "aiorpc: %s\n", why);
  std::fputs(kUsage, why ? stderr : stdout);
  return 2;
}

int runCall(const std::string& cmd, const std::string& ep, const std::string& method,
            const std::optional<json>& params, double timeout) {
  rpc::ClientOptions o;
  o.timeout = timeout;
  o.connect_timeout = std::min(timeout, 5.0);
  std::unique_ptr<rpc::SyncClient> c;
  try {
    c = std::make_unique<rpc::SyncClient>(ep, o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "aiorpc: %s\n", e.what());
    return 2;
  }
  auto pack = [&](rpc::Packer& p) {
    if (params) {
      tools::packJson(p, *params);
    } else {
      p.nil();
    }
  };
  std::string bytes;
  rpc::Packer p(bytes);
  pack(p);
  try {
    if (cmd == "notify") {
      c->notifyParams(method, rpc::Raw{bytes});
      return 0;
    }
    rpc::Value v = c->request(method, rpc::Raw{bytes});
    std::printf(
        "%s\n",
        tools::toJson(v.view()).dump(-1, ' ', false, json::error_handler_t::replace).c_str());
    return 0;
  } catch (const rpc::RpcError& e) {
    // A foreign peer's error object ([kind, text] in its own words, e.g. Python's
    // ["<class 'ValueError'>", "..."]) is shown as it came.
    rpc::Value obj = e.object();
    rpc::Object o = obj.view();
    std::string kind(rpc::kindName(e.kind()));
    if (e.kind() == rpc::Kind::kOther && o.isArray() && o.size() == 2 && o[0].isStrOrBin())
      kind = rpc::validUtf8(o[0].str());
    std::fprintf(stderr, "%s: %s\n", kind.c_str(), rpc::validUtf8(e.message()).c_str());
    return e.kind() == rpc::Kind::kConnection || e.kind() == rpc::Kind::kNotSent ? 2 : 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h") return usage(nullptr), 0;
  const std::string cmd = args[0];
  if (cmd == "bench") return tools::benchMain(argc - 1, argv + 1);
  double timeout = 10;
  std::vector<std::string> pos;
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i].rfind("--timeout", 0) == 0) {
      std::string v = args[i].size() > 9 && args[i][9] == '=' ? args[i].substr(10)
                      : i + 1 < args.size()                   ? args[++i]
                                                              : "";
      char* end = nullptr;
      timeout = std::strtod(v.c_str(), &end);
      if (v.empty() || *end || !std::isfinite(timeout) || timeout <= 0)
        return usage("bad --timeout");
      continue;
    }
    pos.push_back(args[i]);
  }
  if (cmd == "services") {
    if (pos.size() != 1) return usage("services takes KEEPALIVE-HOST:PORT");
    return runCall("call", pos[0], "get_services", std::nullopt, timeout);
  }
  if (cmd != "call" && cmd != "notify") return usage(("unknown command '" + cmd + "'").c_str());
  if (pos.size() < 2 || pos.size() > 3) return usage("expected HOST:PORT METHOD [PARAMS-JSON]");
  std::optional<json> params;
  if (pos.size() == 3) {
    try {
      params = json::parse(pos[2]);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "aiorpc: PARAMS-JSON is not valid JSON: %s\n", e.what());
      return 2;
    }
  }
  return runCall(cmd, pos[0], pos[1], params, timeout);
}
