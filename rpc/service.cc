// Binding params to declared parameters, context lookup, variadic args, reflection.
#include "aiorpc/rpc/service.h"

#include <fmt/format.h>

#include "aiorpc/core/hash.h"

namespace aiorpc::rpc {

bool isDunder(std::string_view s) noexcept {
  return s.size() >= 4 && s.substr(0, 2) == "__" && s.substr(s.size() - 2) == "__";
}

bool isDunder(Object key) noexcept { return key.isStrOrBin() && isDunder(key.str()); }

Value Context::operator()(std::string_view key) const {
  if (key == "peername" || key == "sockname") {
    const core::Address* a = key == "peername" ? &peer_ : &local_;
    if (a->isUnix() || a->family() == 0) return Value();
    return toValue(std::tuple<std::string, int>(a->host(), a->port()));
  }
  if (key == "peercert") return peercert_.empty() ? Value() : toValue(peercert_);
  if (!params_.isMap()) return Value();
  std::string k = isDunder(key) ? std::string(key) : "__" + std::string(key) + "__";
  if (auto v = params_.find(k)) return Value::copyOf(*v);
  return Value();
}

uint32_t Args::positionalCount() const noexcept {
  if (params_.isArray()) return params_.size();
  return params_.isNil() || params_.isMap() ? 0 : 1;
}

Object Args::positional(uint32_t i) const noexcept {
  return params_.isArray() ? params_[i] : params_;
}

uint32_t Args::namedCount() const noexcept {
  uint32_t n = 0;
  if (params_.isMap())
    for (uint32_t i = 0; i < params_.size(); ++i) n += !isDunder(params_.key(i));
  return n;
}

std::optional<Object> Args::named(std::string_view key) const noexcept {
  if (isDunder(key)) return std::nullopt;
  return params_.find(key);
}

void Encode<Args::Positional>::pack(Packer& p, const Args::Positional& v) {
  Args a(v.params);
  if (v.params.isArray()) {
    p.object(v.params);
    return;
  }
  p.array(a.positionalCount());
  if (a.positionalCount()) p.object(v.params);
}

void Encode<Args::Named>::pack(Packer& p, const Args::Named& v) {
  Args a(v.params);
  p.map(a.namedCount());
  for (uint32_t i = 0; v.params.isMap() && i < v.params.size(); ++i) {
    if (isDunder(v.params.key(i))) continue;
    p.object(v.params.key(i));
    p.object(v.params.val(i));
  }
}

void Encode<Args::PositionalOrNamed>::pack(Packer& p, const Args::PositionalOrNamed& v) {
  Args a(v.params);
  if (a.positionalCount() > 0) {
    p.pack(a.positional());
  } else {
    p.pack(a.named());
  }
}

namespace {

// Fills inv.bound from params; false with a message naming the parameter.
bool bind(const MethodInfo& m, Invocation& inv, std::string& why) {
  const size_t n = m.params.size();
  bool set[kMaxParams] = {};
  Object params = inv.params;
  if (params.isArray() || (!params.isNil() && !params.isMap())) {
    uint32_t count = params.isArray() ? params.size() : 1;
    if (count > n) {
      why = fmt::format("{}() takes {} argument{} but {} were given", m.name, n, n == 1 ? "" : "s",
                        count);
      return false;
    }
    for (uint32_t i = 0; i < count; ++i) {
      inv.bound[i] = params.isArray() ? params[i] : params;
      set[i] = true;
    }
  } else if (params.isMap()) {
    for (uint32_t i = 0; i < params.size(); ++i) {
      Object k = params.key(i);
      if (isDunder(k)) continue;
      size_t j = 0;
      while (j < n && !(k.isStrOrBin() && k.str() == m.params[j].name)) ++j;
      if (j == n) {
        why = fmt::format("{}() got an unexpected argument {}", m.name, k.toText(80));
        return false;
      }
      if (set[j]) {
        why = fmt::format("{}() got argument '{}' twice", m.name, m.params[j].name);
        return false;
      }
      inv.bound[j] = params.val(i);
      set[j] = true;
    }
  }
  for (size_t j = 0; j < n; ++j) {
    if (set[j]) continue;
    if (!m.params[j].def) {
      why = fmt::format("{}() missing required argument '{}'", m.name, m.params[j].name);
      return false;
    }
    inv.bound[j] = m.params[j].def->view();
  }
  return true;
}

}  // namespace

void dispatch(const MethodInfo& m, Invocation& inv) {
  inv.method = &m;
  std::string why;
  if (!m.variadic && !bind(m, inv, why)) {
    inv.replyError(Kind::kArgument, why);
    return;
  }
  try {
    m.invoke(inv);
  } catch (...) {
    std::string text;
    ReplyBody b = replyForCurrentException(text);
    if (b.type == ReplyBody::Type::kErrorObject) return inv.replyErrorObject(b.error);
    inv.replyError(b.kind, b.message);
  }
}

uint64_t Service::hashOf(std::string_view s) noexcept { return core::hashBytes(s); }

void Service::index(std::string_view name, const MethodInfo* m) {
  if (2 * (indexed_ + 1) > index_.size()) {  // grow, keeping it at most half full
    std::vector<IndexSlot> old(std::max<size_t>(16, 2 * index_.size()));
    old.swap(index_);
    indexed_ = 0;
    for (const IndexSlot& s : old)
      if (s.method) index(s.name, s.method);
  }
  uint64_t h = hashOf(name);
  size_t mask = index_.size() - 1;
  for (size_t i = h & mask;; i = (i + 1) & mask) {
    IndexSlot& s = index_[i];
    if (!s.method) {
      s = {h, name, m};
      ++indexed_;
      return;
    }
    if (s.hash == h && s.name == name) {  // redefined
      s.method = m;
      return;
    }
  }
}

Service& Service::raw(std::string_view name, RawHandler fn, bool notifications) {
  auto it = methods_.find(name);
  if (it == methods_.end())
    throw std::logic_error("raw(" + std::string(name) + "): declare it with def() first");
  it->second.raw = std::move(fn);
  it->second.raw_notifications = notifications;
  has_raw_ = true;
  return *this;
}

const MethodInfo* Service::find(std::string_view name) const {
  if (index_.empty()) return nullptr;
  uint64_t h = hashOf(name);
  size_t mask = index_.size() - 1;
  for (size_t i = h & mask;; i = (i + 1) & mask) {
    const IndexSlot& s = index_[i];
    if (!s.method) return nullptr;
    if (s.hash == h && s.name == name) return s.method;
  }
}

}  // namespace aiorpc::rpc
