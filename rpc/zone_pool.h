// A per-thread pool of msgpack zones: a request whose handler suspends takes its zone from
// here instead of msgpack-c allocating a fresh 8 KiB one, and gives it back when answered.
#pragma once

#include <msgpack.h>

namespace aiorpc::rpc {

msgpack_zone* takeZone();
// Clears `z` (running its finalizers) and keeps it for reuse, or frees it when the pool is full.
void giveZone(msgpack_zone* z) noexcept;

}  // namespace aiorpc::rpc
