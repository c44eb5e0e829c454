// Keepalive Registry against a manual clock: refresh, expiry, sorting, versions.
#include "aiorpc/agents/keepalive/registry.h"

#include <doctest/doctest.h>

#include "aiorpc/rpc/object.h"

using namespace aiorpc;
using aiorpc::agents::keepalive::Registry;

namespace {
std::string services(const Registry& r) {
  std::string bytes;
  rpc::Packer p(bytes);
  r.packServices(p);
  return rpc::Value::fromBytes(bytes)->view().toText(10000);
}
rpc::Value v(const char* s) { return rpc::toValue(std::string(s)); }
}  // namespace

TEST_SUITE("keepalive registry") {
  TEST_CASE("lists are sorted by host bytes then port number; empty names absent") {
    double now = 1000;
    Registry r([&] { return now; }, 30);
    r.heartbeat("svc", "127.0.0.2", 80, v("b"));
    r.heartbeat("svc", "127.0.0.10", 9000, v("c"));
    r.heartbeat("svc", "127.0.0.10", 800, v("a"));
    r.heartbeat("other", "h", 1, rpc::Value());
    CHECK(services(r) ==
          "{\"other\": [{\"ident\": nil, \"endpoint\": [\"h\", 1]}], "
          "\"svc\": [{\"ident\": \"a\", \"endpoint\": [\"127.0.0.10\", 800]}, "
          "{\"ident\": \"c\", \"endpoint\": [\"127.0.0.10\", 9000]}, "
          "{\"ident\": \"b\", \"endpoint\": [\"127.0.0.2\", 80]}]}");
    CHECK(r.unregister("other", "h", 1));
    CHECK_FALSE(r.unregister("other", "h", 1));
    CHECK(services(r).find("other") == std::string::npos);
  }

  TEST_CASE("expiry after the TTL, refresh postpones it, costs only the expired") {
    double now = 0;
    Registry r([&] { return now; }, 30);
    r.heartbeat("a", "h", 1, rpc::Value());
    now = 10;
    r.heartbeat("b", "h", 2, rpc::Value());
    now = 25;
    r.heartbeat("a", "h", 1, rpc::Value());  // refresh: a now expires at 55
    now = 39.9;
    CHECK(r.expire() == 0);
    now = 40;
    CHECK(r.expire() == 1);  // b
    CHECK(r.size() == 1);
    now = 54.9;
    CHECK(r.expire() == 0);
    now = 55;
    CHECK(r.expire() == 1);
    CHECK(services(r) == "{}");
  }

  TEST_CASE("version moves only when get_services() output would") {
    double now = 1234.5678;
    Registry r([&] { return now; }, 30);
    uint64_t v0 = r.version();
    CHECK(v0 == 1234568);  // seeded from the start time in ms
    CHECK(r.heartbeat("s", "h", 1, v("id")));
    CHECK(r.version() == v0 + 1);
    CHECK_FALSE(r.heartbeat("s", "h", 1, v("id")));  // a refreshing heartbeat
    CHECK(r.version() == v0 + 1);
    CHECK(r.heartbeat("s", "h", 1, v("new ident")));
    CHECK(r.version() == v0 + 2);
    CHECK(r.unregister("s", "h", 1));
    CHECK(r.version() == v0 + 3);
    CHECK_FALSE(r.unregister("s", "h", 1));
    CHECK(r.version() == v0 + 3);
  }

  TEST_CASE("heartbeat keeps the first owner; put takes the one given") {
    double now = 0;
    Registry r([&] { return now; }, 30);
    CHECK(r.heartbeat("s", "h", 1, v("id"), "10.0.0.1") == Registry::kAdded);
    CHECK(r.heartbeat("s", "h", 1, v("id"), "10.0.0.2") == Registry::kUnchanged);
    REQUIRE(r.owner("s", "h", 1));
    CHECK(*r.owner("s", "h", 1) == "10.0.0.1");
    uint64_t before = r.version();
    CHECK(r.putPacked("s", "h", 1, rpc::packToString(v("id").view()), "10.0.0.2") ==
          Registry::kUnchanged);  // owner only
    CHECK(*r.owner("s", "h", 1) == "10.0.0.2");
    CHECK(r.version() == before);  // the owner is not in get_services()
    CHECK(r.putPacked("s", "h", 2, rpc::packToString(v("id").view()), "10.0.0.3") ==
          Registry::kAdded);
    CHECK(*r.owner("s", "h", 2) == "10.0.0.3");
    CHECK(r.size() == 2);
  }

  TEST_CASE("100,000 records: refresh and expire in bulk") {
    double now = 0;
    Registry r([&] { return now; }, 30);
    for (int i = 0; i < 100000; ++i)
      r.heartbeat("svc" + std::to_string(i % 100), "127.0.0." + std::to_string(i % 250),
                  1 + i / 250, rpc::Value());
    CHECK(r.size() == 100000);
    now = 20;
    for (int i = 0; i < 50000; ++i)
      r.heartbeat("svc" + std::to_string(i % 100), "127.0.0." + std::to_string(i % 250),
                  1 + i / 250, rpc::Value());
    now = 31;
    CHECK(r.expire() == 50000);
    now = 51;
    CHECK(r.expire() == 50000);
    CHECK(r.size() == 0);
  }
}
