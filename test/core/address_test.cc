// Address parsing and printing.
#include "aiorpc/core/address.h"

#include <doctest/doctest.h>

using aiorpc::core::Address;

TEST_SUITE("address") {
  TEST_CASE("ipv4, ipv6 and unix round-trip") {
    auto a = Address::parse("127.0.0.1:8080");
    REQUIRE(a.ok());
    CHECK(a->toString() == "127.0.0.1:8080");
    CHECK(a->port() == 8080);
    auto b = Address::parse("[::1]:0");
    REQUIRE(b.ok());
    CHECK(b->toString() == "[::1]:0");
    auto c = Address::parse("unix:/tmp/x.sock");
    REQUIRE(c.ok());
    CHECK(c->isUnix());
    CHECK(c->toString() == "unix:/tmp/x.sock");
    CHECK(Address::parse("localhost:1")->toString() == "127.0.0.1:1");
  }

  TEST_CASE("bad addresses are clear errors") {
    for (const char* bad : {"", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1",
                            "::1:80", "[::1]80", "[::1]", "unix:", "1.2.3.4:8x", ":80"}) {
      CAPTURE(bad);
      auto r = Address::parse(bad);
      CHECK_FALSE(r.ok());
      CHECK(r.error() == aiorpc::core::Errc::kBadAddress);
    }
  }

  TEST_CASE("ipv4-mapped ipv6 prints as dotted ipv4") {
    auto a = Address::parse("[::ffff:10.1.2.3]:9");
    REQUIRE(a.ok());
    CHECK(a->host() == "10.1.2.3");
  }
}
