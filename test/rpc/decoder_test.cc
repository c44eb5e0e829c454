// Decoder and Scanner: every split point, many messages per read, every limit.
#include "aiorpc/rpc/decoder.h"

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "aiorpc/rpc/codec.h"

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

// Feeds `bytes` in chunks of the given sizes (cycled) and collects what comes out, each
// message rendered up to `text_limit` bytes.
Fed feed(const std::string& bytes, const std::vector<size_t>& chunks, Limits l = {},
         size_t text_limit = 1000) {
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
      out.texts.push_back(o.toText(text_limit));
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

// A random msgpack item: every type family, nested to `depth`, sized to cross the fixed,
// 8-, 16- and (for strings) 32-bit header forms.
void randomItem(std::mt19937& g, std::string& out, int depth) {
  auto pick = [&](uint32_t n) { return static_cast<uint32_t>(g() % n); };
  auto be = [&](uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; --i) out += static_cast<char>(v >> (8 * i));
  };
  switch (depth > 0 ? pick(8) : pick(5)) {
    case 0: {  // any scalar type byte with its fixed-size body
      static const unsigned char kTypes[] = {0x00, 0x7f, 0xe0, 0xc0, 0xc2, 0xc3, 0xca,
                                             0xcb, 0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd1,
                                             0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8};
      static const int kBody[] = {0, 0, 0, 0, 0, 0, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8, 2, 3, 5, 9, 17};
      size_t k = pick(sizeof kTypes);
      out += static_cast<char>(kTypes[k]);
      out.append(static_cast<size_t>(kBody[k]), 'x');
      break;
    }
    case 1:
    case 2: {  // str or bin of a length that picks the header form
      static const uint32_t kLens[] = {0, 5, 31, 32, 255, 256, 70000};
      uint32_t len = kLens[pick(out.size() > 100000 ? 3 : 7)];  // bounded stream size
      bool bin = pick(2);
      if (!bin && len < 32) {
        out += static_cast<char>(0xa0 | len);
      } else {
        int w = len < 256 ? 1 : len < 65536 ? 2 : 4;
        out += static_cast<char>((bin ? 0xc4 : 0xd9) + (w == 1 ? 0 : w == 2 ? 1 : 2));
        be(len, w);
      }
      out.append(len, 's');
      break;
    }
    case 3: {  // ext8/16
      uint32_t len = pick(2) ? 3 : 300;
      out += static_cast<char>(len < 256 ? 0xc7 : 0xc8);
      be(len, len < 256 ? 1 : 2);
      out += '\x05';
      out.append(len, 'e');
      break;
    }
    case 4:
      out += static_cast<char>(pick(128));
      break;
    default: {  // array or map, fix or 16-bit header
      uint32_t n = pick(4) || out.size() > 100000 ? pick(4) : 16 + pick(3);
      bool map = pick(2);
      if (n < 16)
        out += static_cast<char>((map ? 0x80 : 0x90) | n);
      else {
        out += static_cast<char>(map ? 0xde : 0xdc);
        be(n, 2);
      }
      for (uint32_t i = 0; i < (map ? 2 * n : n); ++i) randomItem(g, out, depth - 1);
    }
  }
}

struct Scanned {
  bool failed = false;
  bool boundary = false;
  std::string error;
  bool operator==(const Scanned&) const = default;
};
[[maybe_unused]] doctest::String toString(const Scanned& s) {
  return fmt::format("failed {} at boundary {} '{}'", s.failed, s.boundary, s.error).c_str();
}

Scanned scanInChunks(const std::string& bytes, size_t chunk, const Limits& l) {
  Scanner s(l);
  Scanned r;
  for (size_t pos = 0; pos < bytes.size() && !s.failed(); pos += chunk)
    s.feed(bytes.data() + pos, std::min(chunk, bytes.size() - pos));
  r.failed = s.failed();
  r.boundary = s.atBoundary();
  r.error = s.error();
  return r;
}

}  // namespace

TEST_SUITE("decoder") {
  TEST_CASE("feedOne reports every message end; itemLength measures items") {
    std::mt19937 g(7);
    for (int round = 0; round < 100; ++round) {
      std::string bytes;
      std::vector<size_t> ends;
      int messages = 1 + static_cast<int>(g() % 5);
      for (int m = 0; m < messages; ++m) {
        size_t n = g() % 5;
        size_t at = bytes.size();
        bytes += static_cast<char>(0x90 | n);
        for (size_t i = 0; i < n; ++i) {
          size_t item = bytes.size();
          randomItem(g, bytes, 4);
          CHECK(itemLength(bytes.data() + item, bytes.size() - item) == bytes.size() - item);
          CHECK(itemLength(bytes.data() + item, bytes.size() - item - 1) == 0);  // cut: none
        }
        CHECK(itemLength(bytes.data() + at, bytes.size() - at) == bytes.size() - at);
        ends.push_back(bytes.size());
      }
      for (size_t chunk : {size_t{1}, size_t{13}, bytes.size()}) {
        CAPTURE(round);
        CAPTURE(chunk);
        Scanner s{Limits{}};
        std::vector<size_t> seen;
        size_t pos = 0, fed = 0;  // pos: scanned so far; fed: bytes available to the scanner
        while (pos < bytes.size()) {
          fed = std::min(bytes.size(), std::max(fed, pos) + chunk);
          while (pos < fed) {
            pos += s.feedOne(bytes.data() + pos, fed - pos);
            if (s.failed()) FAIL(s.error());  // (not REQUIRE per call: millions of them)
            if (!s.atBoundary()) break;
            seen.push_back(pos);
          }
        }
        CHECK(seen == ends);
      }
    }
  }

  TEST_CASE("readUint reads every unsigned form, refuses others and cut ones") {
    for (uint64_t v : {uint64_t{0}, uint64_t{127}, uint64_t{128}, uint64_t{65535}, uint64_t{65536},
                       uint64_t{4294967296}, UINT64_MAX}) {
      std::string s = packToString(v);
      size_t len = 0;
      CHECK(readUint(s.data(), s.size(), len) == v);
      CHECK(len == s.size());
      CHECK_FALSE(readUint(s.data(), s.size() - 1, len));  // cut
    }
    size_t len = 0;
    for (std::string s : {packToString(-1), packToString("x"), packToString(nullptr)})
      CHECK_FALSE(readUint(s.data(), s.size(), len));
  }

  TEST_CASE("readStr reads str and bin in every length form, refuses others and cut ones") {
    for (size_t n : {size_t{0}, size_t{31}, size_t{32}, size_t{255}, size_t{256}, size_t{65536}}) {
      std::string text(n, 'a');
      for (std::string s : {packToString(text), packToString(Bin{text})}) {
        size_t len = 0;
        auto got = readStr(s.data(), s.size(), len);
        REQUIRE(got);
        CHECK(*got == text);
        CHECK(len == s.size());
        CHECK_FALSE(readStr(s.data(), s.size() - 1, len));  // cut (header or payload)
      }
    }
    size_t len = 0;
    for (std::string s : {packToString(1), packToString(nullptr), packToString(std::tuple{"x"})})
      CHECK_FALSE(readStr(s.data(), s.size(), len));
    CHECK_FALSE(readStr("", 0, len));
  }

  TEST_CASE("scanner: whole-message fast path agrees with the byte-by-byte path") {
    // Random streams of messages, valid and corrupted, under tight and default limits: the
    // result of one feed (fast path for each whole message) must equal feeding one byte at a
    // time (the incremental path only) and feeding odd-sized chunks (both, mixed).
    std::mt19937 g(20261126);
    Limits tight;
    tight.max_message_size = 2000;
    tight.max_elements = 40;
    tight.max_depth = 4;
    int failures = 0;
    for (int round = 0; round < 600; ++round) {
      std::string bytes;
      int messages = 1 + static_cast<int>(g() % 4);
      for (int m = 0; m < messages; ++m) {
        if (g() % 2) {  // a request's or a reply's shape: the head the fast path reads in place
          bool request = g() % 2;
          bytes += request ? B("\x94\x00") : B("\x94\x01");
          Packer p(bytes);
          p.uinteger(uint64_t{1} << (g() % 64));  // every msgid form
          if (request)
            p.str(std::string(g() % 3 ? g() % 40 : 300, 'm'));  // fixstr, str8, str16
          else
            p.nil();
          randomItem(g, bytes, 5);
          continue;
        }
        size_t n = g() % 5;
        bytes += static_cast<char>(0x90 | n);
        for (size_t i = 0; i < n; ++i) randomItem(g, bytes, 5);
      }
      if (round % 3 == 0)  // corrupt a byte: invalid types, lengths past the end, wrong sizes
        bytes[g() % bytes.size()] = static_cast<char>(g() % 256);
      if (round % 7 == 0) bytes.resize(g() % bytes.size());  // cut mid-message
      if (bytes.empty()) continue;
      for (const Limits& l : {Limits{}, tight}) {
        CAPTURE(round);
        auto whole = scanInChunks(bytes, bytes.size(), l);
        CHECK(scanInChunks(bytes, 1, l) == whole);
        CHECK(scanInChunks(bytes, 13, l) == whole);
        failures += whole.failed;
      }
    }
    CHECK(failures > 100);  // the corruptions and tight limits did reach the error paths
  }

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

  TEST_CASE("random streams in random chunks decode as each message alone does") {
    // Messages large and small (zones fill and are recycled between and during reads);
    // each must decode to what msgpack_unpack makes of its bytes alone.
    std::mt19937 g(99);
    for (int round = 0; round < 40; ++round) {
      std::string bytes;
      std::vector<std::string> expect;
      int messages = 1 + static_cast<int>(g() % 30);
      for (int m = 0; m < messages; ++m) {
        size_t at = bytes.size();
        size_t n = g() % 5;
        bytes += static_cast<char>(0x90 | n);
        for (size_t i = 0; i < n; ++i) randomItem(g, bytes, 3);
        auto v = Value::fromBytes(std::string_view(bytes).substr(at));
        REQUIRE(v);
        expect.push_back(v->view().toText(1u << 30));
      }
      std::vector<size_t> chunks;
      for (int k = 0; k < 8; ++k) chunks.push_back(1 + g() % (k % 2 ? 50 : 70000));
      auto got = feed(bytes, chunks, Limits{}, 1u << 30);
      REQUIRE_FALSE(got.error);
      CAPTURE(round);
      CHECK(got.texts == expect);
    }
  }

  TEST_CASE("framing: a partly read message moves to the buffer's front, no new buffer") {
    // msgpack-c alone allocates a new buffer (copying the partial tail) whenever a read needs
    // room past the end while a message is partly read; framed input moves the tail instead.
    // Also with frames decoded in between (zone recycled first) and one zone released (its
    // buffer never moved: a new one is taken).
    Decoder d(Limits{}, 16 * 1024);
    std::string bytes;
    std::vector<std::string> want;
    for (int i = 0; i < 300; ++i) {
      std::string m;
      Packer p(m);
      p.pack(std::tuple{0, i, "m",
                        std::string(3000 + 37 * static_cast<size_t>(i % 50), 'a' + i % 26)});
      want.push_back(m);
      bytes += m;
    }
    std::vector<std::string> got;
    std::set<const void*> buffers;
    size_t pos = 0;
    bool released = false;
    while (pos < bytes.size()) {
      size_t n = std::min<size_t>(7000, bytes.size() - pos);
      auto buf = d.buffer(n);
      buffers.insert(d.storage());
      std::memcpy(buf.data(), bytes.data() + pos, n);
      d.feedFrames(n);
      pos += n;
      std::string_view frame;
      while (d.nextFrame(frame) == Decoder::Status::kMessage) {
        got.emplace_back(frame);
        if (got.size() % 7 == 0) {  // decoded in place now and then
          Object o;
          REQUIRE(d.decodeFrame(o));
          CHECK(o[1].asUint() == got.size() - 1);
          if (got.size() == 140 && !released) {
            msgpack_zone_free(d.releaseZone());
            released = true;
          }
        }
      }
    }
    CHECK(got == want);
    // One buffer (its pointer moves only when msgpack-c reallocates it) plus the one taken
    // after the released zone pinned it; msgpack-c's way took one per refill (~150 here).
    CHECK(buffers.size() <= 4);
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
    // At the limit and one past it, whole (the fast paths) and byte by byte, for a request, a
    // reply and another array.
    for (int head : {0, 1, 2}) {
      for (int n : {6, 7}) {
        std::string m;
        Packer r(m);
        std::vector<int> items(static_cast<size_t>(n), 1);
        if (head == 0) r.pack(std::tuple{0, 1, "m", items});
        if (head == 1) r.pack(std::tuple{1, 1, nullptr, items});
        if (head == 2) r.pack(std::tuple{5, 1, 2, items});
        CAPTURE(head);
        CAPTURE(n);
        CHECK(feed(m, {m.size()}, l).error == (n == 7));
        CHECK(feed(m, {1}, l).error == (n == 7));
      }
    }
  }

  TEST_CASE("depth 32 is accepted and 33 refused") {
    std::string ok = B("\x94\x00\x01\xa1m") + std::string(31, '\x91') + "\x01";
    CHECK_FALSE(feed(ok, {1}).error);
    CHECK_FALSE(feed(ok, {ok.size()}).error);  // whole: the request's fast path
    std::string bad = B("\x94\x00\x01\xa1m") + std::string(32, '\x91') + "\x01";
    for (size_t chunk : {size_t{1}, bad.size()}) {
      auto r = feed(bad, {chunk});
      CHECK(r.error);
      CHECK(r.why == "message nested deeper than 32");
    }
    std::string reply = B("\x94\x01\x01\xc0") + std::string(32, '\x91') + "\x01";
    CHECK(feed(reply, {reply.size()}).why == "message nested deeper than 32");
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

  TEST_CASE("a large payload on its way gets its whole room at once (no doubling copies)") {
    std::string s;
    Packer p(s);
    p.pack(std::tuple{0, 1, "echo", std::tuple{Bin{std::string(3u << 20, 'q')}}});
    Decoder d(Limits{}, 4096);
    size_t pos = 0;
    auto give = [&](size_t n) {
      auto buf = d.buffer(n);
      REQUIRE(buf.size() >= n);
      std::memcpy(buf.data(), s.data() + pos, n);
      d.feed(n);
      pos += n;
    };
    give(100);  // the header and the first bytes of the payload
    Object o;
    CHECK(d.next(o) == Decoder::Status::kNeedMore);
    size_t rest = s.size() - pos;
    auto room = d.buffer(16 * 1024);
    CHECK(room.size() >= rest);  // one growth, to the declared size
    const char* at = room.data();
    while (pos < s.size()) {
      size_t n = std::min<size_t>(64 * 1024, s.size() - pos);
      CHECK(d.buffer(n).data() == at + (pos - 100));  // never moved again
      give(n);
    }
    REQUIRE(d.next(o) == Decoder::Status::kMessage);
    CHECK(o[3][0].str().size() == 3u << 20);
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
