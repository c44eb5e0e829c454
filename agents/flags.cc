// Flag parsing and value checks.
#include "aiorpc/agents/flags.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>

#include "aiorpc/agents/auth.h"
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
    case FlagType::kEndpointList:
      if (!endpointList(v)) return "expected [tls://]HOST:PORT[,[tls://]HOST:PORT...]";
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

namespace {

// The path after --config in argv, "" when there is none.
std::string configPath(int argc, const char* const* argv) {
  std::string path;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--config" && i + 1 < argc) path = argv[i + 1];
    if (a.rfind("--config=", 0) == 0) path = std::string(a.substr(9));
  }
  return path;
}

std::string_view trim(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t' || v.back() == '\r'))
    v.remove_suffix(1);
  return v;
}

// Top-level `key = value` lines of a config file (before any section), value as written.
std::vector<std::pair<std::string, std::string>> configEntries(std::string_view text) {
  std::vector<std::pair<std::string, std::string>> out;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = trim(text.substr(0, nl));
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line[0] == '[') break;  // a section (refused by the parser)
    size_t eq = line.find('=');
    if (eq == std::string_view::npos) continue;
    out.emplace_back(std::string(trim(line.substr(0, eq))), std::string(trim(line.substr(eq + 1))));
  }
  return out;
}

std::string unquote(std::string_view v) {
  v = trim(v);
  if (v.size() >= 2 && (v.front() == '"' || v.front() == '\'') && v.back() == v.front())
    v = v.substr(1, v.size() - 2);
  return std::string(v);
}

}  // namespace

std::optional<std::string> Flags::configModules(int argc, const char* const* argv,
                                                std::vector<std::string>& out) {
  std::string path = configPath(argc, argv), text;
  if (path.empty()) return std::nullopt;
  if (auto bad = readRegularFile(path, kMaxConfigBytes, &text, "--config file")) return bad;
  for (const auto& [key, value] : configEntries(text)) {
    if (key != "module") continue;
    std::string_view v = value;
    if (!v.empty() && v.front() == '[' && v.back() == ']') {
      v = v.substr(1, v.size() - 2);
      while (!v.empty()) {
        size_t comma = v.find(',');
        if (auto one = unquote(v.substr(0, comma)); !one.empty()) out.push_back(one);
        if (comma == std::string_view::npos) break;
        v.remove_prefix(comma + 1);
      }
    } else if (auto one = unquote(v); !one.empty()) {
      out.push_back(one);
    }
  }
  return std::nullopt;
}

bool Flags::parse(std::span<const FlagSpec> specs, int argc, const char* const* argv) {
  // CLI11 (Debian's libcli11-dev): --flag=value and --flag value, strict checks per type, and
  // --config FILE with `name = value` lines (TOML/INI); the command line overrides the file.
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--help" || a == "-h") help_ = true;
  }
  if (help_) return true;
  // The config file: a regular file of bounded size only (a FIFO would hang start-up,
  // /dev/zero grew to 4 GB), checked before CLI11 reads it.
  if (std::string path = configPath(argc, argv); !path.empty()) {
    std::string text;  // (CLI11 reads it again)
    if (auto bad = readRegularFile(path, kMaxConfigBytes, &text, "--config file")) {
      error_ = *bad;
      return false;
    }
    // An array for a flag that takes one value is refused (CLI11 kept its last element).
    for (const auto& entry : configEntries(text)) {
      const std::string &key = entry.first, &value = entry.second;  // (captured below)
      auto spec = std::find_if(specs.begin(), specs.end(), [&](auto& s) { return s.name == key; });
      bool list = spec != specs.end() &&
                  (spec->type == FlagType::kEndpointList || spec->type == FlagType::kAllowList);
      if (!value.empty() && value[0] == '[' && !list && key != "module") {
        error_ = "--config: '" + key + "' takes one value, not an array";
        return false;
      }
    }
  }
  CLI::App app{"aiorpcd"};
  app.set_help_flag();
  app.set_config("--config", "", "read flags from FILE (name = value lines)");
  // A key the command line would refuse is refused in the file too (a typo such as `alow` left a
  // keepalive open that was meant to be closed), sections included.
  app.allow_config_extras(CLI::config_extras_mode::error);
  std::map<std::string, std::string, std::less<>> parsed;
  for (const auto& s : specs) {
    std::string name(s.name);
    if (parsed.count(name)) continue;  // the same flag in two tables: one option
    auto* opt = app.add_option("--" + name, parsed[name]);
    FlagType type = s.type;
    if (type == FlagType::kEndpointList || type == FlagType::kAllowList) {
      // A list: a TOML array, or the flag given several times, is joined (it kept the last).
      opt->delimiter(',')->multi_option_policy(CLI::MultiOptionPolicy::Join);
    } else {
      opt->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // a later flag overrides
    }
    if (type == FlagType::kBool) opt->expected(0, 1);  // --flag alone means true
    opt->check(
        [type](const std::string& v) -> std::string {
          if (type == FlagType::kBool && v.empty()) return {};
          auto bad = check(type, v);
          return bad ? "bad value '" + v + "': " + *bad : std::string();
        },
        std::string(s.help));
  }
  try {
    app.parse(argc, const_cast<char**>(argv));
  } catch (const CLI::ParseError& e) {
    error_ = e.what();
    for (char& c : error_)
      if (c == '\n') c = ' ';
    // CLI11 words an unknown key of the file as "INI was not able to parse KEY": name it.
    if (auto at = error_.find("INI was not able to parse "); at != std::string::npos) {
      std::string key = error_.substr(at + 26);
      if (auto dot = key.find('.'); dot != std::string::npos)
        error_ = "--config: section [" + key.substr(0, dot) +
                 "] is not allowed (every flag is a top-level key)";
      else
        error_ = "--config: unknown key '" + key + "' (see --help)";
      return false;
    }
    if (error_.find("not expected") != std::string::npos) error_ += " (see --help)";
    return false;
  }
  for (const auto& s : specs)
    if (!s.def.empty()) values_[std::string(s.name)] = std::string(s.def);
  for (auto& entry : parsed) {
    const std::string& name = entry.first;  // not a structured binding: lambdas capture it
    if (app.count("--" + name) == 0) continue;
    given_.insert(name);
    auto spec = std::find_if(specs.begin(), specs.end(), [&](auto& s) { return s.name == name; });
    values_[name] = spec->type == FlagType::kBool && entry.second.empty() ? "true" : entry.second;
  }
  return true;
}

std::optional<std::vector<rpc::Target>> Flags::endpointList(std::string_view v) {
  std::vector<rpc::Target> out;
  while (true) {
    size_t comma = v.find(',');
    auto a = rpc::parseTarget(v.substr(0, comma));
    if (!a) return std::nullopt;
    out.push_back(*a);
    if (comma == std::string_view::npos) return out;
    v.remove_prefix(comma + 1);
  }
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
