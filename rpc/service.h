// Service: a named table of methods declared with parameter names and defaults (like pybind11's
// def("f", fn, arg("x"), arg("y") = 1)); arguments are converted by the callable's signature.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "aiorpc/core/address.h"
#include "aiorpc/core/callback.h"
#include "aiorpc/core/future.h"
#include "aiorpc/rpc/codec.h"
#include "aiorpc/rpc/errors.h"
#include "aiorpc/rpc/responder.h"

namespace aiorpc::rpc {

// A declared parameter: arg("x"), or arg("y") = default.
struct Arg {
  std::string name;
  std::optional<Value> def;
  template <class T>
  Arg& operator=(const T& v) {
    def = toValue(v);
    return *this;
  }
};
inline Arg arg(std::string name) { return Arg{std::move(name), std::nullopt}; }

// What a context method (first parameter `Context`) gets: ctx("__ident__") or ctx("ident") is
// the value sent under that dunder key; ctx("peername") / ctx("sockname") are [ip, port] of the
// connection (nil on unix sockets) and cannot be spoofed; ctx("peercert") is the verified client
// certificate's subject on a mutual-TLS connection (RFC 4514, nil otherwise); unknown keys give
// nil.
//
// A Context owns what it shows: the addresses are copies, so a handler may keep its Context
// (by value, across co_await) after the connection has gone. The dunder values are views into
// the request, valid while the request's reply is owed (the responder keeps them alive).
class Context {
 public:
  Context(Object params, const core::Address& peer, const core::Address& local,
          uint64_t session = 0, std::string peercert = {})
      : params_(params),
        peer_(peer),
        local_(local),
        session_(session),
        peercert_(std::move(peercert)) {}
  Value operator()(std::string_view key) const;
  Value operator[](std::string_view key) const { return (*this)(key); }
  Value peername() const { return (*this)("peername"); }
  // The value sent under a dunder key, as a view (no copy); valid while the request is.
  std::optional<Object> find(std::string_view dunder_key) const noexcept {
    return params_.find(dunder_key);
  }
  const core::Address* peer() const noexcept { return &peer_; }
  // The connection's id: Server::peer(session) calls back on it (SPEC §4: both directions).
  uint64_t session() const noexcept { return session_; }
  // The verified client certificate's subject (empty: none).
  const std::string& peerCertificate() const noexcept { return peercert_; }

 private:
  Object params_;
  core::Address peer_, local_;
  uint64_t session_;
  std::string peercert_;
};

// Map keys that start and end with "__" are context, never arguments.
bool isDunder(Object key) noexcept;
bool isDunder(std::string_view name) noexcept;

// What a variadic method gets: the positional and named arguments as they came (named without
// dunder keys). Encodable: positionalOrNamed() is the demo echo's answer.
class Args {
 public:
  explicit Args(Object params) : params_(params) {}
  uint32_t positionalCount() const noexcept;
  Object positional(uint32_t i) const noexcept;
  uint32_t namedCount() const noexcept;
  std::optional<Object> named(std::string_view key) const noexcept;
  Object params() const noexcept { return params_; }

  struct Positional {
    Object params;
  };
  struct Named {
    Object params;
  };
  struct PositionalOrNamed {
    Object params;  // by value: handlers return these after their Args is gone
  };
  Positional positional() const noexcept { return {params_}; }
  Named named() const noexcept { return {params_}; }
  PositionalOrNamed positionalOrNamed() const noexcept { return {params_}; }

 private:
  Object params_;
};

template <>
struct Encode<Args::Positional> {
  static void pack(Packer& p, const Args::Positional& v);
};
template <>
struct Encode<Args::Named> {
  static void pack(Packer& p, const Args::Named& v);
};
template <>
struct Encode<Args::PositionalOrNamed> {
  static void pack(Packer& p, const Args::PositionalOrNamed& v);
};

constexpr size_t kMaxParams = 16;

// One request being dispatched; built by the server on its stack.
class Invocation {
 public:
  Object bound[kMaxParams];  // declared parameters in order (context excluded)
  Object params;             // as received
  const Context* context = nullptr;
  const struct MethodInfo* method = nullptr;

  // Synchronous answer, written in place.
  virtual void replyValue(core::FunctionRef<void(Packer&)> write) = 0;
  virtual void replyError(Kind k, std::string_view message) = 0;
  virtual void replyErrorObject(Object error) = 0;  // a peer's error object, passed on intact
  // The right to answer later (takes the request's zone).
  virtual Responder detach() = 0;

 protected:
  ~Invocation() = default;
};

// A request handed over as the peer encoded it (Service::raw): no decode. The bytes are valid
// during the call only. The handler answers through detach() (at once or later), or declines
// (returns false, before detaching) and the request takes the decoded path.
class RawRequest {
 public:
  std::string_view params;  // the params item's bytes
  // A notification (offered only to a handler registered with notifications = true): there
  // is no reply; detach() gives a Responder whose answers go nowhere.
  bool notification = false;
  virtual Responder detach() = 0;

 protected:
  ~RawRequest() = default;
};
using RawHandler = std::function<bool(RawRequest&)>;

struct MethodInfo {
  std::string name;
  uint32_t id = 0;  // 1, 2, ... in order of declaration (RequestMetrics; 0 is "other")
  RawHandler raw;   // a fast path for requests taken as bytes (Service::raw), tried first
  bool raw_notifications = false;  // notifications are offered to `raw` too
  std::vector<Arg> params;         // declared parameters (context excluded)
  std::string context_name;        // "ctx"/"context" when the first parameter is the Context
  bool variadic = false;
  std::function<void(Invocation&)> invoke;
};

namespace detail {

template <class T>
struct Sig : Sig<decltype(&T::operator())> {};
template <class C, class R, class... A>
struct Sig<R (C::*)(A...) const> {
  using ret = R;
  using args = std::tuple<A...>;
};
template <class C, class R, class... A>
struct Sig<R (C::*)(A...)> : Sig<R (C::*)(A...) const> {};
template <class R, class... A>
struct Sig<R (*)(A...)> {
  using ret = R;
  using args = std::tuple<A...>;
};
template <class R, class... A>
struct Sig<R(A...)> : Sig<R (*)(A...)> {};

template <class T>
struct IsFuture : std::false_type {};
template <class T>
struct IsFuture<core::Future<T>> : std::true_type {};
template <class T>
struct IsReply : std::false_type {};
template <class T>
struct IsReply<Reply<T>> : std::true_type {};

template <class T>
using Bare = std::remove_cvref_t<T>;

template <class T>
struct Holder {  // storage for a converted argument
  Bare<T> v{};
};

// Converts bound[i] into the i-th declared parameter; false with `why` on failure.
template <class T>
bool convert(Object o, Holder<T>& h, std::string& why) {
  return decode(o, h.v, why);
}

template <class R, class Write>
void deliver(Invocation& inv, Write&& call) {
  if constexpr (std::is_void_v<R>) {
    call();
    inv.replyValue([](Packer& p) { p.nil(); });
  } else if constexpr (IsFuture<R>::value) {
    R fut = call();
    if (fut.done()) {
      if (fut.failed()) {
        Responder r = inv.detach();
        r.fail(fut.exception());
        return;
      }
      if constexpr (std::is_void_v<typename R::value_type>) {
        inv.replyValue([](Packer& p) { p.nil(); });
      } else {
        inv.replyValue([&](Packer& p) { p.pack(fut.get()); });
      }
      return;
    }
    fut.then([r = inv.detach()](R& f) mutable {
      if (f.failed()) {
        r.fail(f.exception());
      } else if constexpr (std::is_void_v<typename R::value_type>) {
        r.reply(nullptr);
      } else {
        r.reply(f.get());
      }
    });
  } else {
    auto&& v = call();
    inv.replyValue([&](Packer& p) { p.pack(v); });
  }
}

}  // namespace detail

// Binds `inv.params` to `m`'s parameters (SPEC §2) and invokes it; every path answers through
// `inv` exactly once. Exceptions thrown by the handler become ApplicationError (RpcError: its own).
void dispatch(const MethodInfo& m, Invocation& inv);

class Service {
 public:
  explicit Service(std::string name) : name_(std::move(name)) {}
  const std::string& name() const noexcept { return name_; }

  // Declares `name`. `fn`'s parameters: an optional first `Context`, then the declared
  // parameters (one Arg each, converted by type), or a single `const Args&` for a variadic
  // method; an optional last `Reply<T>` makes it continuation-style. It returns a value, void,
  // or Task<T> (a coroutine).
  template <class F, class... A>
  Service& def(std::string name, F fn, A... specs);

  const MethodInfo* find(std::string_view name) const;
  // Adds a fast path to `name` (declared with def()): a request for it is offered to `fn` as
  // bytes before anything is decoded (a connection to a service with one reads frame by
  // frame). Requests `fn` declines take the declared method; so do notifications, unless
  // `notifications` (then `fn` sees them too, RawRequest::notification set).
  Service& raw(std::string_view name, RawHandler fn, bool notifications = false);
  bool hasRaw() const noexcept { return has_raw_; }

  // Access control: when set, every call of one of this service's methods (requests and
  // notifications; control commands excepted) is first shown to `guard` with the method name
  // and the request's context; a returned error is the reply and the method does not run.
  using Denial = std::optional<std::pair<Kind, std::string>>;
  using Guard = std::function<Denial(std::string_view method, const Context& ctx)>;
  void setGuard(Guard g) { guard_ = std::move(g); }
  const Guard& guard() const noexcept { return guard_; }

  const std::map<std::string, MethodInfo, std::less<>>& methods() const noexcept {
    return methods_;
  }

 private:
  std::string name_;
  std::map<std::string, MethodInfo, std::less<>> methods_;  // sorted by bytes (reflection)
  // The per-request lookup: open addressing (FNV-1a, linear probing, at most half full).
  struct IndexSlot {
    uint64_t hash = 0;
    std::string_view name;
    const MethodInfo* method = nullptr;
  };
  static uint64_t hashOf(std::string_view s) noexcept;
  void index(std::string_view name, const MethodInfo* m);
  std::vector<IndexSlot> index_;
  size_t indexed_ = 0;
  Guard guard_;
  bool has_raw_ = false;
};

template <class F, class... A>
Service& Service::def(std::string name, F fn, A... specs) {
  using S = detail::Sig<std::conditional_t<std::is_function_v<F>, F, F>>;
  using Params = typename S::args;
  using R = typename S::ret;
  constexpr size_t n = std::tuple_size_v<Params>;
  constexpr bool has_ctx = [] {
    if constexpr (n > 0)
      return std::is_same_v<detail::Bare<std::tuple_element_t<0, Params>>, Context>;
    return false;
  }();
  constexpr bool has_reply = [] {
    if constexpr (n > 0)
      return detail::IsReply<detail::Bare<std::tuple_element_t<n - 1, Params>>>::value;
    return false;
  }();
  constexpr size_t first = has_ctx ? 1 : 0;
  constexpr size_t last = has_reply ? n - 1 : n;  // declared parameters are [first, last)
  constexpr bool variadic = [] {
    if constexpr (last - first == 1)
      return std::is_same_v<detail::Bare<std::tuple_element_t<first, Params>>, Args>;
    return false;
  }();
  static_assert(last - first <= kMaxParams, "too many parameters");
  constexpr bool by_reference = []<size_t... I>(std::index_sequence<I...>) {
    return (std::is_reference_v<std::tuple_element_t<I, Params>> || ...);
  }
  (std::make_index_sequence<n>{});
  static_assert(!detail::IsFuture<R>::value || !by_reference,
                "a handler returning Task<T> or Future<T> (a coroutine) takes its parameters by "
                "value: write `Context ctx`, `Args args`, `std::string s` instead of `const "
                "Context&`, `const Args&`, `const std::string&`: a reference points into the "
                "request's stack frame, which is gone after the first co_await");
  static_assert(!has_reply || std::is_void_v<R>, "a Reply<T> handler returns void");

  MethodInfo m;
  m.name = name;
  m.variadic = variadic;
  std::vector<Arg> given{std::move(specs)...};
  if constexpr (has_ctx) {
    m.context_name = "ctx";
    if (given.size() == last - first + 1) {
      m.context_name = given.front().name;
      given.erase(given.begin());
    }
  }
  if (!variadic) {
    if (given.size() != last - first)
      throw std::logic_error("def(" + name + "): one arg() per declared parameter");
    m.params = std::move(given);
  }
  m.invoke = [fn = std::move(fn)](Invocation& inv) mutable {
    [&]<size_t... I>(std::index_sequence<I...>) {
      std::tuple<detail::Holder<std::tuple_element_t<first + I, Params>>...> held;
      if constexpr (!variadic) {
        std::string why;
        size_t bad = SIZE_MAX;
        bool ok =
            ((detail::convert(inv.bound[I], std::get<I>(held), why) || (bad = I, false)) && ...);
        if (!ok) {
          inv.replyError(Kind::kArgument,
                         "argument '" + inv.method->params[bad].name + "': " + why);
          return;
        }
      }
      auto call = [&]() -> decltype(auto) {
        auto tail = [&]() -> decltype(auto) {
          if constexpr (variadic) {
            Args a(inv.params);
            if constexpr (has_reply) {
              using RT = detail::Bare<std::tuple_element_t<n - 1, Params>>;
              if constexpr (has_ctx)
                return fn(*inv.context, a, RT(inv.detach()));
              else
                return fn(a, RT(inv.detach()));
            } else if constexpr (has_ctx) {
              return fn(*inv.context, a);
            } else {
              return fn(a);
            }
          } else if constexpr (has_reply) {
            using RT = detail::Bare<std::tuple_element_t<n - 1, Params>>;
            if constexpr (has_ctx)
              return fn(*inv.context, std::move(std::get<I>(held).v)..., RT(inv.detach()));
            else
              return fn(std::move(std::get<I>(held).v)..., RT(inv.detach()));
          } else if constexpr (has_ctx) {
            return fn(*inv.context, std::move(std::get<I>(held).v)...);
          } else {
            return fn(std::move(std::get<I>(held).v)...);
          }
        };
        return tail();
      };
      if constexpr (has_reply) {
        call();
      } else {
        detail::deliver<R>(inv, call);
      }
    }
    (std::make_index_sequence < variadic ? 0 : last - first > {});
  };
  auto& slot = methods_[name];
  // A new name is the n-th declared (methods are never removed); a redefinition keeps its id.
  uint32_t id = slot.id ? slot.id : static_cast<uint32_t>(methods_.size());
  slot = std::move(m);
  slot.id = id;
  index(methods_.find(name)->first, &slot);  // map keys and values are stable
  return *this;
}

}  // namespace aiorpc::rpc
