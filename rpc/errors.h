// RPC error kinds (SPEC §1) and the exception that carries an error reply.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

#include "aiorpc/rpc/object.h"

namespace aiorpc::rpc {

enum class Kind {
  kNoMethod,
  kArgument,
  kApplication,
  kTimeout,
  kConnection,
  kServiceNotFound,
  kServiceUnavailable,
  kOverloaded,
  kAuth,  // a write to a token-protected registry without the right token (or not its owner)
  kInternal,
  kNotSent,  // client-side only: the call never reached the wire (never sent as a reply)
  kOther,    // an error object that is not one of ours (a Python peer's, say)
};
constexpr int kKindCount = 12;

std::string_view kindName(Kind k) noexcept;
// `s` if it is valid UTF-8, else a copy with each invalid byte written as \xNN.
std::string validUtf8(std::string_view s);
// Whether `s` is valid UTF-8 (no overlong forms, surrogates or code points past U+10FFFF).
bool isUtf8(std::string_view s) noexcept;
Kind kindFromName(std::string_view s) noexcept;  // kOther when unknown
// The kind an error object is counted under in \0stats: ours by its name, anything else (a
// foreign peer's error passed on) as ApplicationError, never as a kind outside SPEC §1.
Kind countedKind(Object error) noexcept;
// The same, read from the error object's msgpack bytes (no decode).
Kind countedKind(std::string_view error_bytes) noexcept;

// An error reply: a kind and a message, or any error object a peer sent (kept intact in
// `object`, e.g. the Python server's ["<class 'X'>", text]). Handlers may throw it; clients
// throw it from co_await and SyncClient::call.
class RpcError : public std::runtime_error {
 public:
  RpcError(Kind kind, std::string message);
  // From a received error object.
  explicit RpcError(Value object);

  Kind kind() const noexcept { return kind_; }
  const std::string& message() const noexcept { return message_; }
  // What goes on the wire: [kind, message] for ours, the peer's object as is otherwise.
  Value object() const;
  bool hasPeerObject() const noexcept { return !peer_.isNil(); }
  // The outcome of one of our own calls (a reply, our timeout, a lost connection), as co_await
  // and SyncClient throw it. A handler that lets one escape answers its caller ApplicationError
  // with this error in the message (SPEC §2): the caller's own call did not time out. A handler
  // that means a kind throws an RpcError of its own.
  bool downstream() const noexcept { return downstream_; }
  RpcError& markDownstream() noexcept {
    downstream_ = true;
    return *this;
  }
  // ApplicationError's message for an escaped downstream error.
  std::string downstreamMessage() const;

 private:
  Kind kind_;
  std::string message_;
  Value peer_;
  bool downstream_ = false;
};

}  // namespace aiorpc::rpc
