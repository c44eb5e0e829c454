// Packer and decode(): every supported type, its limits, str vs bin, the smallest forms.
#include "rpc/codec.h"

#include <doctest/doctest.h>

#include <cstdint>
#include <limits>

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
}  // namespace

TEST_SUITE("codec") {
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
