// Conversion error messages.
#include "rpc/codec.h"

namespace aiorpc::rpc::detail {

bool fail(std::string& why, const char* expected, Object got) {
  why = std::string("expected ") + expected + ", got " + got.typeName();
  return false;
}

bool failRange(std::string& why, Object got) {
  why = "integer " + got.toText(40) + " out of range";
  return false;
}

}  // namespace aiorpc::rpc::detail
