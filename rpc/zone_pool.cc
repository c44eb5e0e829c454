// The zone pool.
#include "aiorpc/rpc/zone_pool.h"

#include <new>
#include <vector>

namespace aiorpc::rpc {
namespace {

struct Pool {
  std::vector<msgpack_zone*> free;
  ~Pool() {
    for (auto* z : free) msgpack_zone_free(z);
  }
};
thread_local Pool t_pool;
constexpr size_t kMax = 1024;  // 8 MiB of kept chunks at most

}  // namespace

msgpack_zone* takeZone() {
  if (!t_pool.free.empty()) {
    msgpack_zone* z = t_pool.free.back();
    t_pool.free.pop_back();
    return z;
  }
  msgpack_zone* z = msgpack_zone_new(MSGPACK_ZONE_CHUNK_SIZE);
  if (!z) throw std::bad_alloc();
  return z;
}

void giveZone(msgpack_zone* z) noexcept {
  if (!z) return;
  if (t_pool.free.size() >= kMax) return msgpack_zone_free(z);
  msgpack_zone_clear(z);  // keeps its first chunk: the next user allocates nothing
  t_pool.free.push_back(z);
}

}  // namespace aiorpc::rpc
