// Flag parsing and value checks.
#include "aiorpc/agents/flags.h"

#include <charconv>
#include <cmath>
#include <cstdlib>

#include "aiorpc/core/address.h"
#include "aiorpc/core/cidr.h"
#include "aiorpc/core/log.h"

namespace aiorpc::agents {

std::optional<std::string> Flags::check(FlagType type, std::string_view v) {
  switch (type) {
    case FlagType::kString:
      return std::nullopt;
    case FlagType::kSeconds: {
      std::string s(v);
      char* end = nullptr;
      double d = std::strtod(s.c_str(), &end);
      if (s.empty() || *end || !std::isfinite(d) || d < 0) return "expected seconds (>= 0)";
      return std::nullopt;
    }
    case FlagType::kCount:
    case FlagType::kBytes: {
      long long n = 0;
      auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
      if (ec != std::errc{} || p != v.data() + v.size() || n <= 0)
        return "expected a positive integer";
      return std::nullopt;
    }
    case FlagType::kEndpoint:
      if (!core::Address::parse(v)) return "expected HOST:PORT, [V6]:PORT or unix:/path";
      return std::nullopt;
    case FlagType::kAllowList:
      if (!core::AllowList::parse(v)) return "expected CIDR[,CIDR...] (e.g. 10.0.0.0/8,::1/128)";
      return std::nullopt;
    case FlagType::kBool:
      if (v != "true" && v != "false") return "expected true or false";
      return std::nullopt;
    case FlagType::kLogLevel:
      if (!core::log::parseLevel(v)) return "expected debug, info, warn or error";
      return std::nullopt;
  }
  return std::nullopt;
}

bool Flags::parse(std::span<const FlagSpec> specs, int argc, const char* const* argv) {
  for (const auto& s : specs)
    if (!s.def.empty()) values_[std::string(s.name)] = std::string(s.def);
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--help" || a == "-h") {
      help_ = true;
      continue;
    }
    if (a.substr(0, 2) != "--") {
      error_ = "unexpected argument '" + std::string(a) + "' (flags are --name=value)";
      return false;
    }
    a.remove_prefix(2);
    std::string_view name = a, value;
    bool has_value = false;
    if (auto eq = a.find('='); eq != std::string_view::npos) {
      name = a.substr(0, eq);
      value = a.substr(eq + 1);
      has_value = true;
    }
    const FlagSpec* spec = nullptr;
    for (const auto& s : specs)
      if (s.name == name) spec = &s;
    if (!spec) {
      error_ = "unknown flag --" + std::string(name) + " (see --help)";
      return false;
    }
    if (!has_value && spec->type == FlagType::kBool) {
      value = "true";
    } else if (!has_value) {
      if (i + 1 >= argc) {
        error_ = "flag --" + std::string(name) + " needs a value";
        return false;
      }
      value = argv[++i];
    }
    if (auto bad = check(spec->type, value)) {
      error_ = "bad value '" + std::string(value) + "' for --" + std::string(name) + ": " + *bad;
      return false;
    }
    values_[std::string(name)] = std::string(value);
  }
  return true;
}

bool Flags::has(std::string_view name) const { return values_.find(name) != values_.end(); }

std::string Flags::str(std::string_view name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::string() : it->second;
}

double Flags::seconds(std::string_view name) const {
  return std::strtod(str(name).c_str(), nullptr);
}

long long Flags::count(std::string_view name) const { return std::atoll(str(name).c_str()); }

}  // namespace aiorpc::agents
