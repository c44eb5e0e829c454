// A role of aiorpcd: a service module with its own flags (nginx-style explicit module table).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "aiorpc/agents/flags.h"
#include "aiorpc/core/loop.h"
#include "aiorpc/core/metrics.h"
#include "aiorpc/rpc/server.h"

namespace aiorpc::agents {

// What the daemon gives a role.
struct RoleEnv {
  core::Loop& loop;
  const Flags& flags;
  std::string auth_token;  // from --auth-token-file (empty: none); never logged
  // SPEC §8: what tls:// targets and --backend-tls dial with (--tls-ca, and --tls-cert/--tls-key
  // presented when a server asks). Null: rpc::defaultTlsClient() (the system's trust store).
  // SIGHUP reloads it in place.
  std::shared_ptr<core::TlsContext> tls_client{};
};

// A running role. The daemon serves service() and drives the lifecycle.
class RoleInstance {
 public:
  virtual ~RoleInstance() = default;
  virtual rpc::Service& service() = 0;
  // The server is listening (on `bound`).
  virtual void started(rpc::Server&, const core::Address& /*bound*/) {}
  // Shutdown, first step (SPEC §7 drain handshake): stop announcing this instance (a heartbeat
  // sender stops its schedule and unregisters) and call `done` once the registry knows, or
  // return false at once (without keeping `done`) when it announces nothing. The daemon then
  // keeps serving for --drain-grace seconds so that proxies learn of it, and drains.
  virtual bool leave(core::Callback<void()>& /*done*/) { return false; }
  // The server has drained; finish and call `done`.
  virtual void stop(core::Callback<void()> done) { done(); }
  // SPEC §9 (--metrics-bind): the role's own series, written after the server's at each scrape.
  virtual void writeMetrics(core::MetricsText&) {}
  // Why /healthz should answer 503 now (a keepalive: "stale"); empty while healthy.
  virtual std::string unhealthy() const { return {}; }
};

struct Role {
  std::string_view name;
  std::string_view summary;
  std::string_view default_bind;
  std::span<const FlagSpec> flags;  // the role's own flags
  std::unique_ptr<RoleInstance> (*create)(RoleEnv&);
  // A service role: with --keepalive the daemon registers its service (heartbeats every
  // --heartbeat-interval) and unregisters it first thing on shutdown (the drain handshake).
  bool heartbeats;
};

// The role table (agents/registry.cc): adding a role is a folder, a subdir() line and one entry.
std::span<const Role> roles();
const Role* findRole(std::string_view name);

}  // namespace aiorpc::agents
