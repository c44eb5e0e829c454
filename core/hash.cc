// XXH3 inlined here (header-only use of libxxhash): for names of 5-20 bytes it costs about a
// third of libstdc++'s std::hash (murmur) or a byte-at-a-time FNV-1a.
#include "aiorpc/core/hash.h"

#include <sys/random.h>
#include <unistd.h>

#include <chrono>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace aiorpc::core {
namespace {

uint64_t makeSeed() noexcept {
  uint64_t seed = 0;
  if (::getrandom(&seed, sizeof seed, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof seed))
    seed = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
           (static_cast<uint64_t>(::getpid()) << 32);
  return seed;
}

const uint64_t kSeed = makeSeed();

}  // namespace

uint64_t hashBytes(std::string_view s) noexcept {
  return XXH3_64bits_withSeed(s.data(), s.size(), kSeed);
}

}  // namespace aiorpc::core
