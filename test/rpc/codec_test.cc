// Packer and decode(): every supported type, its limits, str vs bin, the smallest forms.
#include "aiorpc/rpc/codec.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <limits>

#include "aiorpc/rpc/service.h"

using namespace aiorpc::rpc;

namespace {
template <class T>
Value v(const T& x) {
  return toValue(x);
}
template <class T>
bool dec(Object o, T& out) {
  std::string why;
  return decode(o, out, why);
}
template <class T>
std::string why(Object o) {
  T out{};
  std::string w;
  CHECK_FALSE(decode(o, out, w));
  return w;
}
// The same values packed by msgpack-c's own packer: the reference for our header forms.
struct Reference {
  std::string bytes;
  msgpack_packer pk;
  Reference() {
    msgpack_packer_init(&pk, &bytes, [](void* d, const char* b, size_t n) {
      static_cast<std::string*>(d)->append(b, n);
      return 0;
    });
  }
};

// What an output queue holds, as a string (drained through a socket pair).
std::string drain(aiorpc::core::OutQueue& q) {
  int fds[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
  REQUIRE(fcntl(fds[1], F_SETFL, O_NONBLOCK) == 0);
  std::string out;
  while (!q.empty()) {
    REQUIRE((q.writeTo(fds[1]) > 0 || errno == EAGAIN));
    char buf[65536];
    ssize_t n;
    while ((n = recv(fds[0], buf, sizeof buf, MSG_DONTWAIT)) > 0)
      out.append(buf, static_cast<size_t>(n));
  }
  close(fds[0]);
  close(fds[1]);
  return out;
}
}  // namespace

TEST_SUITE("codec") {
  TEST_CASE("countedKind reads an error's bytes as it reads the decoded error") {
    using namespace std::string_literals;
    const std::string samples[] = {
        "\x92\xad"
        "ArgumentError\xa3"
        "bad"s,  // ours, fixstr
        "\x92\xd9\x0d"
        "ArgumentError\xd9\x03"
        "bad"s,                                         // ours, str8
        "\xdc\x00\x02\xa7Timeout\xa1x"s,                // array16 (a name that is not a kind)
        "\xdc\x00\x02\xacTimeoutError\xa1x"s,           // array16
        "\xdd\x00\x00\x00\x01\xb2ServiceUnavailable"s,  // array32, one element
        "\x92\xc4\x0d"
        "ArgumentError\xa1x"s,                  // bin kind
        "\x92\xacNotSentError\xa1x"s,           // client-side only: ApplicationError
        "\x92\xb4<class 'ValueError'>\xa2no"s,  // foreign
        "\x90"s,                                // empty array
        "\xdc\x00\x00"s,                        // empty array16
        "\xa5"
        "error"s,         // not an array
        "\x92\x01\x02"s,  // no string first
        "\xc0"s,          // nil
    };
    for (const auto& b : samples) {
      CAPTURE(b);
      auto v = Value::fromBytes(b);
      REQUIRE(v);
      CHECK(countedKind(std::string_view(b)) == countedKind(v->view()));
    }
    CHECK(countedKind(std::string_view("\x92\xd9\x0d"
                                       "ArgumentError\xa1x"s)) == Kind::kArgument);
    CHECK(countedKind(std::string_view("\x92\xd9"s)) == Kind::kApplication);  // cut short
  }
  TEST_CASE("Packer writes the bytes msgpack-c's packer writes, into strings and queues") {
    Reference ref;
    std::string mine;
    aiorpc::core::OutQueue q;
    Packer a(mine), b(q);
    auto both = [&](auto f) {
      f(a);
      f(b);
    };
    for (int64_t v : std::initializer_list<int64_t>{
             0,         1,      127,    128,        255,
             256,       65535,  65536,  4294967295, 4294967296,
             INT64_MAX, -1,     -32,    -33,        -128,
             -129,      -32768, -32769, INT32_MIN,  int64_t{INT32_MIN} - 1,
             INT64_MIN}) {
      msgpack_pack_int64(&ref.pk, v);
      both([&](Packer& p) { p.integer(v); });
    }
    for (uint64_t v : {uint64_t{0}, uint64_t{200}, uint64_t{UINT64_MAX}}) {
      msgpack_pack_uint64(&ref.pk, v);
      both([&](Packer& p) { p.uinteger(v); });
    }
    for (double d : {0.0, -1.5, 1e300}) {
      msgpack_pack_double(&ref.pk, d);
      both([&](Packer& p) { p.real(d); });
    }
    msgpack_pack_float(&ref.pk, 2.5f);
    both([&](Packer& p) { p.real32(2.5f); });
    msgpack_pack_nil(&ref.pk);
    msgpack_pack_true(&ref.pk);
    msgpack_pack_false(&ref.pk);
    both([&](Packer& p) { p.nil(), p.boolean(true), p.boolean(false); });
    for (size_t n : {0, 1, 31, 32, 255, 256, 65535, 65536, 70000}) {
      std::string s(n, 'z');
      msgpack_pack_str_with_body(&ref.pk, s.data(), n);
      msgpack_pack_bin_with_body(&ref.pk, s.data(), n);
      msgpack_pack_ext_with_body(&ref.pk, s.data(), n, 7);
      both([&](Packer& p) { p.str(s), p.bin(s), p.ext(7, s); });
    }
    for (size_t n : {2, 4, 8, 16, 17}) {  // the fixext sizes and one beside them
      std::string s(n, 'e');
      msgpack_pack_ext_with_body(&ref.pk, s.data(), n, -3);
      both([&](Packer& p) { p.ext(-3, s); });
    }
    for (uint32_t n : {0u, 15u, 16u, 65535u, 65536u}) {
      msgpack_pack_array(&ref.pk, n);
      msgpack_pack_map(&ref.pk, n);
      both([&](Packer& p) { p.array(n), p.map(n); });
    }
    CHECK(mine == ref.bytes);
    CHECK(drain(q) == ref.bytes);  // headers cross block boundaries here (over 16 KiB)
  }

  TEST_CASE("a request's or reply's head in one append: the bytes msgpack-c's packer writes") {
    Reference ref;
    std::string mine;
    aiorpc::core::OutQueue q;
    Packer a(mine), b(q);
    for (uint64_t id :
         {uint64_t{0}, uint64_t{127}, uint64_t{128}, uint64_t{255}, uint64_t{256}, uint64_t{65535},
          uint64_t{65536}, uint64_t{UINT32_MAX}, uint64_t{UINT32_MAX} + 1, uint64_t{UINT64_MAX}}) {
      for (size_t n : {0, 1, 31, 32, 300}) {  // fixstr and not
        std::string method(n, 'm');
        msgpack_pack_array(&ref.pk, 4);
        msgpack_pack_uint64(&ref.pk, 0);
        msgpack_pack_uint64(&ref.pk, id);
        msgpack_pack_str_with_body(&ref.pk, method.data(), n);
        a.requestHead(id, method);
        b.requestHead(id, method);
      }
      msgpack_pack_array(&ref.pk, 4);
      msgpack_pack_uint64(&ref.pk, 1);
      msgpack_pack_uint64(&ref.pk, id);
      msgpack_pack_nil(&ref.pk);
      a.replyHead(id);
      b.replyHead(id);
    }
    CHECK(mine == ref.bytes);
    CHECK(drain(q) == ref.bytes);
  }

  TEST_CASE("Packer::object re-encodes every msgpack type as msgpack-c does") {
    Reference ref;
    ref.bytes =
        std::string("\x9c\xc0\xc3\x05\xd0\x80\xca\x40\x20\x00\x00\xcb\x3f\xf8\0\0\0\0\0\0", 20) +
        "\xa2hi\xc4\x01\xff\xd4\x05\x01\x81\xa1k\x91\x90\xc7\x03\x02"
        "abc\x80";
    auto value = Value::fromBytes(ref.bytes);
    REQUIRE(value);
    std::string mine;
    Packer(mine).object(value->view());
    CHECK(mine == ref.bytes);
    Reference again;
    msgpack_pack_object(&again.pk, value->view().raw());
    CHECK(again.bytes == ref.bytes);
  }

  TEST_CASE("integers use the smallest form; non-negative ones the unsigned forms") {
    CHECK(packToString(0) == std::string("\x00", 1));
    CHECK(packToString(127) == "\x7f");
    CHECK(packToString(128) == "\xcc\x80");
    CHECK(packToString(-1) == "\xff");
    CHECK(packToString(-33) == "\xd0\xdf");
    CHECK(packToString(int64_t{65536}) == std::string("\xce\x00\x01\x00\x00", 5));
    CHECK(packToString(std::string(31, 'a'))[0] == '\xbf');
    CHECK(packToString(std::string(32, 'a'))[0] == '\xd9');
    CHECK(packToString(Bin{"ab"}) ==
          "\xc4\x02"
          "ab");
  }

  TEST_CASE("integer conversion checks range and sign") {
    int8_t i8;
    uint8_t u8;
    uint64_t u64;
    int64_t i64;
    CHECK(dec(v(127), i8));
    CHECK(i8 == 127);
    CHECK(why<int8_t>(v(128)) == "integer 128 out of range");
    CHECK(why<uint8_t>(v(-1)) == "integer -1 out of range");
    CHECK(dec(v(255), u8));
    CHECK(dec(v(UINT64_MAX), u64));
    CHECK(u64 == UINT64_MAX);
    CHECK(why<int64_t>(v(UINT64_MAX)).find("out of range") != std::string::npos);
    CHECK(dec(v(INT64_MIN), i64));
    CHECK(why<int>(v(1.5)) == "expected int, got float");
    CHECK(why<int>(v(true)) == "expected int, got bool");
  }

  TEST_CASE("floats accept integers; nothing else converts implicitly") {
    double d;
    CHECK(dec(v(3), d));
    CHECK(d == 3.0);
    CHECK(dec(v(-2.5), d));
    CHECK(why<double>(v("1.0")) == "expected float, got str");
    bool b;
    CHECK(why<bool>(v(1)) == "expected bool, got int");
    CHECK(dec(v(false), b));
  }

  TEST_CASE("strings accept str and bin; bin accepts str") {
    std::string s;
    std::string_view sv;
    Bin bin;
    CHECK(dec(v("abc"), s));
    CHECK(dec(v(Bin{"xyz"}), s));
    CHECK(s == "xyz");
    Value keep = v("view");
    CHECK(dec(keep.view(), sv));
    CHECK(sv == "view");
    CHECK(dec(v("as bin"), bin));
    CHECK(bin.data == "as bin");
    CHECK(why<std::string>(v(1)) == "expected str, got int");
    std::string raw("\xff\xfe\x00z", 4);  // never validated
    CHECK(dec(v(raw), s));
    CHECK(s == raw);
  }

  TEST_CASE("nil, optional, containers, tuples") {
    std::optional<int> o;
    CHECK(dec(v(nullptr), o));
    CHECK(!o);
    CHECK(dec(v(5), o));
    CHECK(*o == 5);
    std::vector<int> vec;
    CHECK(dec(v(std::vector<int>{1, 2, 3}), vec));
    CHECK(vec == std::vector<int>{1, 2, 3});
    CHECK(why<std::vector<int>>(v(std::tuple{1, "x"})) == "item 1: expected int, got str");
    std::map<std::string, double> m;
    CHECK(dec(v(std::map<std::string, int>{{"a", 1}}), m));
    CHECK(m["a"] == 1.0);
    std::tuple<int, std::string> t;
    CHECK(dec(v(std::tuple{7, "s"}), t));
    CHECK(t == std::tuple{7, std::string("s")});
    CHECK(why<std::tuple<int, int>>(v(std::vector<int>{1})) ==
          "expected array of 2, got array of 1");
    std::nullptr_t n;
    CHECK(why<std::nullptr_t>(v(0)) == "expected nil, got int");
    CHECK(dec(v(nullptr), n));
  }

  TEST_CASE("Value copies are deep and independent of the source zone") {
    Value c;
    {
      Value src = v(std::map<std::string, std::vector<std::string>>{{"k", {"a", "b"}}});
      c = Value::copyOf(src.view());
    }
    CHECK(c.view().toText() == "{\"k\": [\"a\", \"b\"]}");
  }

  TEST_CASE("toText escapes bytes so the text is printable") {
    CHECK(v(std::string("a\xff\"b", 4)).view().toText() == "\"a\\xff\\x22b\"");
  }
}

TEST_SUITE("service") {
  TEST_CASE("method lookup: hundreds of names, misses, redefinition") {
    Service s("t");
    for (int i = 0; i < 300; ++i) s.def("m" + std::to_string(i), [i] { return i; });
    for (int i = 0; i < 300; ++i) {
      const MethodInfo* m = s.find("m" + std::to_string(i));
      REQUIRE(m);
      CHECK(m == &s.methods().find("m" + std::to_string(i))->second);
    }
    CHECK(s.find("m300") == nullptr);
    CHECK(s.find("") == nullptr);
    CHECK(s.find(std::string_view("m1\0", 3)) == nullptr);
    const MethodInfo* before = s.find("m7");
    s.def("m7", [] { return -1; });
    CHECK(s.find("m7") == before);  // the map slot is reused; the lookup still finds it
    CHECK(s.methods().size() == 300);
    CHECK(Service("empty").find("x") == nullptr);
  }
}
