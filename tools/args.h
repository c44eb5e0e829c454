// Strict value checks for the CLI's options (CLI11 validators): what the daemon's flags refuse,
// the CLI refuses too (NaN, inf, trailing garbage, out-of-range numbers).
#pragma once

#include <CLI/CLI.hpp>
#include <charconv>
#include <cmath>
#include <string>

namespace aiorpc::tools {

// Seconds: a finite number, > 0 (or >= 0 with zero_ok).
inline CLI::Validator seconds(bool zero_ok = false) {
  return CLI::Validator(
      [zero_ok](std::string& v) -> std::string {
        double d = 0;
        auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), d);
        if (ec != std::errc{} || p != v.data() + v.size() || !std::isfinite(d) || d < 0 ||
            (d == 0 && !zero_ok))
          return "bad value '" + v + "': expected seconds (" + (zero_ok ? ">= 0" : "> 0") + ")";
        return {};
      },
      "");
}

// An integer in [lo, hi], all of the text (CLI11's own conversion checks the range of the type).
inline CLI::Validator integer(long long lo, long long hi) {
  return CLI::Validator(
      [lo, hi](std::string& v) -> std::string {
        long long n = 0;
        auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
        if (ec != std::errc{} || p != v.data() + v.size() || n < lo || n > hi)
          return "bad value '" + v + "': expected an integer from " + std::to_string(lo) + " to " +
                 std::to_string(hi);
        return {};
      },
      "");
}

}  // namespace aiorpc::tools
