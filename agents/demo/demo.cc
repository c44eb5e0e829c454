// sample.foo: echo, add, default_params, set_cache/get_cache, sleep, notify, context_holder.
#include "aiorpc/agents/demo/demo.h"

#include "aiorpc/core/log.h"

namespace aiorpc::agents::demo {

using rpc::arg;
using rpc::Object;
using rpc::Value;

SampleFoo::SampleFoo(core::Loop& loop, rpc::Service& svc) : loop_(loop) {
  svc.def("echo", [](const rpc::Args& a) { return a.positionalOrNamed(); });

  svc.def(
      "add",
      [this](Object val) -> Value {
        if (val.isInt()) {
          auto v = val.asInt();
          if (!v) throw rpc::RpcError(rpc::Kind::kArgument, "argument 'val': integer out of range");
          if (float_total_) return rpc::toValue(total_float_ += static_cast<double>(*v));
          if (__builtin_add_overflow(total_int_, *v, &total_int_))
            throw rpc::RpcError(rpc::Kind::kApplication, "total overflows a 64-bit integer");
          return rpc::toValue(total_int_);
        }
        if (val.type() == MSGPACK_OBJECT_FLOAT32 || val.type() == MSGPACK_OBJECT_FLOAT64) {
          if (!float_total_) total_float_ = static_cast<double>(total_int_), float_total_ = true;
          return rpc::toValue(total_float_ += val.raw().via.f64);
        }
        throw rpc::RpcError(
            rpc::Kind::kArgument,
            std::string("argument 'val': expected a number, got ") + val.typeName());
      },
      arg("val"));

  svc.def(
      "default_params",
      [](Object a, Object b, Object c, Object d) {
        return std::tuple{a, b, c, d};
      },
      arg("a"), arg("b"), arg("c") = nullptr, arg("d") = 1);

  svc.def(
      "set_cache",
      [this](Object key, Object val) {
        cache_[rpc::packToString(key)] = Value::copyOf(val);
        return true;
      },
      arg("key"), arg("val"));

  svc.def(
      "get_cache",
      [this](Object key) -> Value {
        auto it = cache_.find(rpc::packToString(key));
        return it == cache_.end() ? Value() : it->second;
      },
      arg("key"));

  svc.def(
      "sleep",
      [this](double sec) -> core::Task<bool> {
        if (!(sec >= 0 && sec <= 3600))  // NaN fails every comparison: refused too
          throw rpc::RpcError(rpc::Kind::kArgument, "argument 'sec': expected 0..3600 seconds");
        co_await loop_.sleep(sec);
        co_return true;
      },
      arg("sec"));

  svc.def(
      "notify", [](std::string_view txt) { core::log::info("notify: {}", rpc::validUtf8(txt)); },
      arg("txt"));

  svc.def(
      "context_holder",
      [](const rpc::Context& ctx, Object message) {
        return std::tuple{ctx("peername"), ctx("__ident__"), message};
      },
      arg("context"), arg("message"));

  // Who the server sees: the peer's address and, on a mutual-TLS connection, its verified
  // certificate's subject (SPEC §8: ctx("peercert"); nil otherwise).
  svc.def("whoami", [](const rpc::Context& ctx) {
    return std::map<std::string, rpc::Value>{{"peername", ctx("peername")},
                                             {"peercert", ctx("peercert")}};
  });
}

namespace {

class DemoRole final : public RoleInstance {
 public:
  explicit DemoRole(RoleEnv& env) : svc_(env.flags.str("service-name")), foo_(env.loop, svc_) {}
  rpc::Service& service() override { return svc_; }

 private:
  rpc::Service svc_;
  SampleFoo foo_;
};

}  // namespace

const FlagSpec kFlags[1] = {
    {"service-name", FlagType::kString, "sample.foo", "the service's name (as registered)"},
};

std::unique_ptr<RoleInstance> create(RoleEnv& env) { return std::make_unique<DemoRole>(env); }

}  // namespace aiorpc::agents::demo
