// Responder.
#include "rpc/responder.h"

#include <utility>

#include "rpc/zone_pool.h"

namespace aiorpc::rpc {

void packError(Packer& p, Kind kind, std::string_view message) {
  p.array(2);
  p.str(kindName(kind));
  p.str(validUtf8(message));
}

Responder& Responder::operator=(Responder&& o) noexcept {
  if (this != &o) {
    if (!done_) error(Kind::kInternal, "handler dropped the reply");
    release();
    hub_ = std::move(o.hub_);
    session_ = o.session_;
    msgid_ = o.msgid_;
    zone_ = std::exchange(o.zone_, nullptr);
    done_ = std::exchange(o.done_, true);
  }
  return *this;
}

Responder::~Responder() {
  if (!done_) error(Kind::kInternal, "handler dropped the reply");
  release();
}

void Responder::release() noexcept {
  giveZone(zone_);
  zone_ = nullptr;
}

core::OutQueue* Responder::begin() {
  if (done_) return nullptr;
  done_ = true;
  auto hub = hub_.lock();
  if (!hub) return nullptr;
  core::OutQueue* out = hub->beginReply(session_, msgid_);
  if (!out) hub->dropped(session_);
  return out;
}

void Responder::end(bool error) {
  if (auto hub = hub_.lock()) hub->endReply(session_, error);
  release();
}

void Responder::error(Kind kind, std::string_view message) {
  if (auto* out = begin()) {
    Packer p(*out);
    packError(p, kind, message);
    p.nil();
    if (auto hub = hub_.lock()) hub->countError(kind);
    end(true);
  }
}

void Responder::error(const RpcError& e) {
  if (!e.hasPeerObject()) return error(e.kind(), e.message());
  errorObject(e.object());
}

void Responder::errorObject(Object err) {
  if (auto* out = begin()) {
    Packer p(*out);
    p.object(err);
    p.nil();
    if (auto hub = hub_.lock()) hub->countError(Kind::kOther);
    end(true);
  }
}

void Responder::fail(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const RpcError& r) {
    error(r);
  } catch (const std::exception& x) {
    error(Kind::kApplication, x.what());
  } catch (...) {
    error(Kind::kApplication, "unknown exception");
  }
}

}  // namespace aiorpc::rpc
