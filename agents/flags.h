// Command-line flags for aiorpcd: `--flag=value` and `--flag value`, typed, with one clear
// error line on bad input.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "aiorpc/core/address.h"
#include "aiorpc/core/error.h"
#include "aiorpc/rpc/target.h"

namespace aiorpc::agents {

// kBool takes no value (`--flag`), or `--flag=true|false`.
enum class FlagType {
  kString,
  kSeconds,
  kCount,
  kBytes,
  kEndpoint,
  kEndpointList,
  kLogLevel,
  kAllowList,
  kBool
};

struct FlagSpec {
  std::string_view name;  // without the leading --
  FlagType type;
  std::string_view def;  // default text ("" = unset)
  std::string_view help;
};

class Flags {
 public:
  static constexpr size_t kMaxConfigBytes = 1 << 20;  // --config: a regular file up to 1 MiB
  // The --config file named in argv (if any): its `module = PATH` or `module = [PATH, ...]`
  // values, to load before parse() (a module's roles bring flags). Returns the error line.
  static std::optional<std::string> configModules(int argc, const char* const* argv,
                                                  std::vector<std::string>& out);
  // Parses argv against `specs`; on error returns false and sets error() to one line.
  bool parse(std::span<const FlagSpec> specs, int argc, const char* const* argv);
  const std::string& error() const noexcept { return error_; }
  bool has(std::string_view name) const;
  // Given on the command line or in --config (not merely defaulted).
  bool given(std::string_view name) const { return given_.count(std::string(name)) > 0; }
  std::string str(std::string_view name) const;
  double seconds(std::string_view name) const;
  long long count(std::string_view name) const;
  bool boolean(std::string_view name) const { return str(name) == "true"; }
  bool helpWanted() const noexcept { return help_; }
  // Checks a value of `type`; returns an explanation when bad.
  static std::optional<std::string> check(FlagType type, std::string_view value);
  // [tls://]HOST:PORT[,...] (a kEndpointList value); nullopt when any part is not an address.
  static std::optional<std::vector<rpc::Target>> endpointList(std::string_view value);

 private:
  std::map<std::string, std::string, std::less<>> values_;
  std::string error_;
  bool help_ = false;
  std::set<std::string> given_;
};

}  // namespace aiorpc::agents
