// Allow-list ranges: IPv4, IPv6, IPv4-mapped peers, prefixes at byte and bit boundaries.
#include "aiorpc/core/cidr.h"

#include <doctest/doctest.h>

using aiorpc::core::Address;
using aiorpc::core::AllowList;
using aiorpc::core::Cidr;

namespace {
Address ip(const char* host) { return *Address::fromIp(host, 1); }
}  // namespace

TEST_SUITE("cidr") {
  TEST_CASE("ranges match what they cover and nothing else") {
    auto lo = *Cidr::parse("127.0.0.0/8");
    CHECK(lo.contains(ip("127.0.0.1")));
    CHECK(lo.contains(ip("127.255.255.255")));
    CHECK_FALSE(lo.contains(ip("128.0.0.1")));
    auto one = *Cidr::parse("127.0.0.1");  // a single host
    CHECK(one.contains(ip("127.0.0.1")));
    CHECK_FALSE(one.contains(ip("127.0.0.2")));
    auto bits = *Cidr::parse("10.0.0.128/25");
    CHECK(bits.contains(ip("10.0.0.200")));
    CHECK_FALSE(bits.contains(ip("10.0.0.127")));
    auto any = *Cidr::parse("0.0.0.0/0");
    CHECK(any.contains(ip("8.8.8.8")));
    CHECK_FALSE(any.contains(ip("::1")));  // families do not mix
    auto v6 = *Cidr::parse("fd00::/8");
    CHECK(v6.contains(ip("fd12:3456::1")));
    CHECK_FALSE(v6.contains(ip("fe80::1")));
    CHECK((*Cidr::parse("::1/128")).contains(ip("::1")));
  }

  TEST_CASE("an IPv4-mapped IPv6 peer matches IPv4 ranges") {
    CHECK((*Cidr::parse("127.0.0.0/8")).contains(ip("::ffff:127.0.0.9")));
    CHECK_FALSE((*Cidr::parse("127.0.0.0/8")).contains(ip("::ffff:10.0.0.1")));
  }

  TEST_CASE("an IPv4-mapped range is the IPv4 range it names (it never matched before)") {
    for (const char* text : {"::ffff:127.0.0.1/128", "::ffff:127.0.0.1", "::ffff:127.0.0.0/104",
                             "::FFFF:7f00:1/128"}) {
      CAPTURE(text);
      auto r = Cidr::parse(text);
      REQUIRE(r.ok());
      CHECK(r->contains(ip("127.0.0.1")));         // an IPv4 peer
      CHECK(r->contains(ip("::ffff:127.0.0.1")));  // the same peer on a dual-stack listener
      CHECK_FALSE(r->contains(ip("10.0.0.1")));
    }
    auto wide = Cidr::parse("::ffff:0.0.0.0/96");  // every IPv4 address
    REQUIRE(wide.ok());
    CHECK(wide->contains(ip("192.0.2.7")));
    auto v6 = Cidr::parse("::/0");  // a prefix shorter than 96 stays IPv6
    REQUIRE(v6.ok());
    CHECK(v6->contains(ip("::1")));
  }

  TEST_CASE("bad ranges are refused") {
    for (const char* bad : {"", "/8", "127.0.0.1/33", "::1/129", "127.0.0.1/-1", "127.0.0.1/",
                            "127.0.0.1/8x", "host.example/8", "[::1]/128", "1.2.3/8"})
      CHECK_FALSE(Cidr::parse(bad));
  }

  TEST_CASE("allow lists: empty allows all, unix peers always, lists of ranges") {
    AllowList all = *AllowList::parse("");
    CHECK(all.allows(ip("203.0.113.1")));
    AllowList l = *AllowList::parse("127.0.0.2/32, ::1/128");
    CHECK(l.allows(ip("127.0.0.2")));
    CHECK(l.allows(ip("::1")));
    CHECK_FALSE(l.allows(ip("127.0.0.1")));
    CHECK(l.allows(*Address::parse("unix:/tmp/x.sock")));
    CHECK_FALSE(AllowList::parse("127.0.0.1/32,,"));
    CHECK_FALSE(AllowList::parse("127.0.0.1/32,nope"));
  }
}
