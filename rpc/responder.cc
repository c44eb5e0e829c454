// Responder.
#include "aiorpc/rpc/responder.h"

#include <cstring>
#include <new>
#include <utility>

#include "aiorpc/rpc/endpoint.h"
#include "aiorpc/rpc/zone_pool.h"

namespace aiorpc::rpc {

void packError(Packer& p, Kind kind, std::string_view message) {
  p.array(2);
  p.str(kindName(kind));
  p.str(validUtf8(message));
}

void Responder::settle() noexcept {
  if (!done_) error(Kind::kInternal, "handler dropped the reply");
  release();
}

void Responder::release() noexcept {
  if (!zone_) return;
  if (own_zone_) {
    msgpack_zone_free(zone_);
  } else {
    giveZone(zone_);
  }
  zone_ = nullptr;
  own_zone_ = false;
}

size_t Responder::peerOutputBytes() const {
  return hub_.expired() ? 0 : raw_hub_->outputBytes(session_);
}

void Responder::compact() {
  if (!zone_ || own_zone_) return;
  std::string bytes;
  Packer(bytes).pack(msgid_);
  msgpack_zone* z = msgpack_zone_new(bytes.size() + 64);
  if (!z) throw std::bad_alloc();
  char* copy = static_cast<char*>(msgpack_zone_malloc_no_align(z, bytes.size()));
  std::memcpy(copy, bytes.data(), bytes.size());
  msgpack_object o;
  size_t off = 0;
  if (!copy || msgpack_unpack(copy, bytes.size(), &off, z, &o) != MSGPACK_UNPACK_SUCCESS) {
    msgpack_zone_free(z);
    return;  // keep the request's zone: nothing lost but memory
  }
  giveZone(zone_);
  zone_ = z;
  own_zone_ = true;
  msgid_ = Object(o);
}

void Responder::send(const ReplyBody& body) {
  if (done_) return;
  done_ = true;
  if (!hub_.expired()) raw_hub_->reply(session_, msgid_, body, tag_);
  release();
}

void Responder::error(Kind kind, std::string_view message) {
  send(ReplyBody::ofError(kind, message));
}

void Responder::error(const RpcError& e) {
  if (!e.hasPeerObject()) return error(e.kind(), e.message());
  errorObject(e.object());
}

void Responder::errorObject(Object err) { send(ReplyBody::ofErrorObject(err)); }

void Responder::errorBytes(std::string_view bytes) { send(ReplyBody::ofErrorBytes(bytes)); }

ReplyBody replyForCurrentException(std::string& text) {
  try {
    throw;
  } catch (const RpcError& e) {
    if (e.downstream()) {
      text = e.downstreamMessage();
      return ReplyBody::ofError(Kind::kApplication, text);
    }
    if (e.hasPeerObject()) return ReplyBody::ofErrorObject(e.object());
    text = e.message();
    return ReplyBody::ofError(e.kind(), text);
  } catch (const std::exception& e) {
    text = e.what();
  } catch (...) {
    text = "unknown exception";
  }
  return ReplyBody::ofError(Kind::kApplication, text);
}

void Responder::fail(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (...) {
    std::string text;
    send(replyForCurrentException(text));
  }
}

void Responder::answer(const Outcome& o) {
  switch (o.type) {
    case Outcome::Type::kResult:
      return reply(o.value);
    case Outcome::Type::kPeerError:
      return errorObject(o.value.view());
    case Outcome::Type::kFailure:
      return error(o.kind, o.message);
  }
}

}  // namespace aiorpc::rpc
