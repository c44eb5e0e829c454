// Decoder and Scanner: every split point, many messages per read, every limit.
#include "rpc/decoder.h"

#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

#include "rpc/codec.h"

using namespace aiorpc::rpc;

namespace {

// Bytes of a literal, embedded NULs included.
template <size_t N>
std::string B(const char (&s)[N]) {
  return std::string(s, N - 1);
}

struct Fed {
  std::vector<std::string> texts;  // each message rendered
  bool error = false;
  std::string why;
};

// Feeds `bytes` in chunks of the given sizes (cycled) and collects what comes out.
Fed feed(const std::string& bytes, const std::vector<size_t>& chunks, Limits l = {}) {
  Decoder d(l, 64);
  Fed out;
  size_t pos = 0, k = 0;
  while (pos < bytes.size() && !out.error) {
    size_t n = std::min(chunks[k++ % chunks.size()], bytes.size() - pos);
    auto buf = d.buffer(n);
    std::memcpy(buf.data(), bytes.data() + pos, n);
    d.feed(n);
    pos += n;
    Object o;
    for (;;) {
      auto st = d.next(o);
      if (st == Decoder::Status::kNeedMore) break;
      if (st == Decoder::Status::kError) {
        out.error = true;
        out.why = d.error();
        break;
      }
      out.texts.push_back(o.toText(1000));
    }
  }
  return out;
}

std::string sample() {
  std::string s;
  Packer p(s);
  p.pack(std::tuple{0, 1, "echo", std::tuple{"héllo", 3.5, -7, std::vector<int>{1, 2, 3}}});
  p.pack(std::tuple{2, "notify", std::map<std::string, int>{{"a", 1}, {"b", 2}}});
  p.pack(std::tuple{0, 4294967296ull, "x", nullptr});
  p.pack(std::tuple{0, 2, "bin", std::tuple{Bin{std::string(300, '\xff')}}});
  return s;
}

}  // namespace

TEST_SUITE("decoder") {
  TEST_CASE("every split point of a stream gives the same messages") {
    std::string bytes = sample();
    auto whole = feed(bytes, {bytes.size()});
    REQUIRE_FALSE(whole.error);
    REQUIRE(whole.texts.size() == 4);
    for (size_t cut = 1; cut < bytes.size(); ++cut) {
      CAPTURE(cut);
      auto two = feed(bytes, {cut, bytes.size()});
      CHECK_FALSE(two.error);
      CHECK(two.texts == whole.texts);
    }
    auto bytewise = feed(bytes, {1});
    CHECK(bytewise.texts == whole.texts);
  }

  TEST_CASE("hundreds of messages in one read") {
    std::string bytes;
    for (int i = 0; i < 500; ++i) bytes += sample();
    auto r = feed(bytes, {bytes.size()});
    CHECK_FALSE(r.error);
    CHECK(r.texts.size() == 2000);
  }

  TEST_CASE("the message itself must be an array") {
    auto r = feed("\x01", {1});
    CHECK(r.error);
    CHECK(r.why == "message is not an array");
  }

  TEST_CASE("invalid type byte is an error, after the good messages before it") {
    std::string bytes = sample() + B("\x94\x00\x01\xa4"
                                     "echo"
                                     "\xc1");
    auto r = feed(bytes, {7});
    CHECK(r.error);
    CHECK(r.texts.size() == 4);
  }

  TEST_CASE("huge declared containers are refused before any allocation") {
    // 5 bytes asking msgpack-c for 2^32-1 elements (it would allocate 128 GiB)
    auto r = feed(B("\xdd\xff\xff\xff\xff"), {5});
    CHECK(r.error);
    CHECK(r.why.find("cannot fit the size limit") != std::string::npos);
    // a map header of 2^31 entries inside a valid request
    r = feed(B("\x94\x00\x01\xa4"
               "echo"
               "\xdf\x7f\xff\xff\xff"),
             {3});
    CHECK(r.error);
    // millions of elements within the size limit but over max_elements
    Limits l;
    l.max_elements = 1000;
    std::string big =
        B("\x94\x00\x01\xa4"
          "echo"
          "\xdc\x03\xe9");
    r = feed(big, {big.size()}, l);
    CHECK(r.error);
    CHECK(r.why.find("more than 1000 elements") != std::string::npos);
  }

  TEST_CASE("element limit counts a map entry as two") {
    Limits l;
    l.max_elements = 10;
    std::string s;
    Packer p(s);
    // 4 (message) + 3 map entries = 10 elements: fine
    p.pack(std::tuple{0, 1, "m", std::map<int, int>{{1, 1}, {2, 2}, {3, 3}}});
    CHECK_FALSE(feed(s, {s.size()}, l).error);
    s.clear();
    Packer q(s);
    q.pack(std::tuple{0, 1, "m", std::map<int, int>{{1, 1}, {2, 2}, {3, 3}, {4, 4}}});
    CHECK(feed(s, {s.size()}, l).error);
  }

  TEST_CASE("depth 32 is accepted and 33 refused") {
    std::string ok = B("\x94\x00\x01\xa1m") + std::string(31, '\x91') + "\x01";
    CHECK_FALSE(feed(ok, {1}).error);
    std::string bad = B("\x94\x00\x01\xa1m") + std::string(32, '\x91') + "\x01";
    auto r = feed(bad, {1});
    CHECK(r.error);
    CHECK(r.why == "message nested deeper than 32");
  }

  TEST_CASE("size limit is checked while the message is still arriving") {
    Limits l;
    l.max_message_size = 100;
    std::string s;
    Packer p(s);
    p.pack(std::tuple{0, 1, "m", std::string(80, 'a')});
    CHECK_FALSE(feed(s, {1}, l).error);
    s.clear();
    Packer q(s);
    q.pack(std::tuple{0, 1, "m", std::string(200, 'a')});
    // refused on the str header, before the 200 bytes arrive
    auto r = feed(s.substr(0, 12), {12}, l);
    CHECK(r.error);
  }

  TEST_CASE("zone reuse: in-place handling does not grow memory") {
    std::string one = sample();
    Decoder d(Limits{}, 4096);
    for (int round = 0; round < 2000; ++round) {
      auto buf = d.buffer(one.size());
      std::memcpy(buf.data(), one.data(), one.size());
      d.feed(one.size());
      Object o;
      int n = 0;
      while (d.next(o) == Decoder::Status::kMessage) ++n;
      REQUIRE(n == 4);
    }
    CHECK(d.pending() == 0);
  }
}
