// The etcd client against a real etcd (one member per test binary): the JSON gateway's quirks,
// leases, transactions, the watch stream, compaction, endpoint failover, and lifetimes.
#include "test/support/etcd.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <memory>
#include <optional>

#include "aiorpc/agents/etcd/client.h"
#include "aiorpc/agents/keepalive/etcd_store.h"
#include "aiorpc/core/http.h"
#include "test/support/loopback.h"
#include "test/support/run_until.h"

namespace core = aiorpc::core;
namespace etcd = aiorpc::agents::etcd;
using aiorpc::test::runUntil;

namespace {

aiorpc::test::EtcdProcess& server() {
  static aiorpc::test::EtcdProcess p;
  return p;
}

// A client on a started etcd (waits for its first successful read).
std::unique_ptr<etcd::Client> ready(core::Loop& loop, std::vector<std::string> eps = {}) {
  REQUIRE(server().started());
  if (eps.empty()) eps = {server().endpoint()};
  auto c = std::make_unique<etcd::Client>(loop, etcd::Client::Options{eps, 1.5});
  bool ok = false;
  for (int i = 0; i < 100 && !ok; ++i) {
    bool done = false;
    c->range("/", [&](etcd::Status s, int64_t, std::vector<etcd::KeyValue>&) {
      ok = static_cast<bool>(s);
      done = true;
    });
    runUntil(
        loop, [&] { return done; }, 5);
    if (!ok) {
      auto t = loop.after(0.1, [] {});
      runUntil(
          loop, [&] { return false; }, 0.1);
      loop.cancel(t);
    }
  }
  REQUIRE(ok);
  return c;
}

struct Range {
  etcd::Status status;
  int64_t revision = 0;
  std::vector<etcd::KeyValue> kvs;
};

Range range(core::Loop& loop, etcd::Client& c, const std::string& prefix) {
  std::optional<Range> r;
  c.range(prefix, [&](etcd::Status s, int64_t rev, std::vector<etcd::KeyValue>& kvs) {
    r = Range{s, rev, kvs};
  });
  REQUIRE(runUntil(
      loop, [&] { return r.has_value(); }, 10));
  return *r;
}

}  // namespace

TEST_SUITE("etcd client (real etcd)") {
  TEST_CASE("prefixEnd") {
    CHECK(etcd::prefixEnd("/a/") == "/a0");
    CHECK(etcd::prefixEnd(std::string("a\xff", 2)) == "b");
    CHECK(etcd::prefixEnd("") == std::string(1, '\0'));
  }

  TEST_CASE("an empty range has no kvs (omitted) and a revision; bytes round-trip") {
    core::Loop loop;
    auto c = ready(loop);
    Range r = range(loop, *c, "/empty/");
    CHECK(r.status);
    CHECK(r.revision > 0);
    CHECK(r.kvs.empty());
    std::string key = std::string("/bytes/%/\xff\x00x", 9), value = std::string("\0\x01\xfe", 3);
    bool put = false;
    c->put(key, value, 0, [&](etcd::Status s) { put = static_cast<bool>(s); });
    REQUIRE(runUntil(loop, [&] { return put; }));
    r = range(loop, *c, "/bytes/");
    REQUIRE(r.kvs.size() == 1);
    CHECK(r.kvs[0].key == key);
    CHECK(r.kvs[0].value == value);
    CHECK(r.kvs[0].lease == 0);  // omitted: no lease
    CHECK(r.kvs[0].mod_revision == r.revision);
  }

  TEST_CASE("a range of more keys than a page: every key once, all at one revision") {
    core::Loop loop;
    auto c = ready(loop);
    std::vector<etcd::Client::Put> puts;
    int done = 0;
    for (int i = 0; i < 1300; ++i) {
      puts.push_back({fmt::format("/paged/{:05}", i), "v", 0, 0});
      if (puts.size() == 100 || i == 1299) {
        c->putAll(puts, [&](etcd::Status s, bool written) { done += s && written; });
        puts.clear();
      }
    }
    REQUIRE(runUntil(loop, [&] { return done == 13; }));
    Range r = range(loop, *c, "/paged/");  // three pages of 512
    REQUIRE(r.status);
    REQUIRE(r.kvs.size() == 1300);
    int64_t newest = 0;
    for (int i = 0; i < 1300; ++i) {
      CHECK(r.kvs[i].key == fmt::format("/paged/{:05}", i));
      newest = std::max(newest, r.kvs[i].mod_revision);
    }
    CHECK(r.revision >= newest);
  }

  TEST_CASE("putAll writes all or none; removeIf compares the revision") {
    core::Loop loop;
    auto c = ready(loop);
    std::optional<bool> w;
    c->putAll({{"/all/a", "1", 0, 0}, {"/all/b", "1", 0, 0}},
              [&](etcd::Status s, bool written) { w = s && written; });
    REQUIRE(runUntil(loop, [&] { return w.has_value(); }));
    CHECK(*w);
    w.reset();  // /all/b exists: neither is written
    c->putAll({{"/all/c", "1", 0, 0}, {"/all/b", "2", 0, 0}},
              [&](etcd::Status s, bool written) { w = s && written; });
    REQUIRE(runUntil(loop, [&] { return w.has_value(); }));
    CHECK_FALSE(*w);
    Range r = range(loop, *c, "/all/");
    REQUIRE(r.kvs.size() == 2);
    std::optional<bool> removed;
    c->removeIf("/all/a", r.kvs[0].mod_revision + 1, [&](etcd::Status, bool rm) { removed = rm; });
    REQUIRE(runUntil(loop, [&] { return removed.has_value(); }));
    CHECK_FALSE(*removed);
    removed.reset();
    c->removeIf("/all/a", r.kvs[0].mod_revision, [&](etcd::Status, bool rm) { removed = rm; });
    REQUIRE(runUntil(loop, [&] { return removed.has_value(); }));
    CHECK(*removed);
    CHECK(range(loop, *c, "/all/").kvs.size() == 1);
  }

  TEST_CASE(
      "putIf: create-if-absent once; compare on mod_revision; the failure shows the current") {
    core::Loop loop;
    auto c = ready(loop);
    struct Out {
      etcd::Status s;
      bool written;
      std::optional<etcd::KeyValue> cur;
    };
    auto putIf = [&](const std::string& v, int64_t expect) {
      std::optional<Out> o;
      c->putIf("/txn/k", v, 0, expect,
               [&](etcd::Status s, bool w, std::optional<etcd::KeyValue> cur) {
                 o = Out{s, w, std::move(cur)};
               });
      REQUIRE(runUntil(loop, [&] { return o.has_value(); }));
      return *o;
    };
    Out a = putIf("one", 0);
    CHECK(a.s);
    CHECK(a.written);
    Out b = putIf("two", 0);  // exists now: not written twice
    CHECK(b.s);
    CHECK_FALSE(b.written);
    REQUIRE(b.cur);
    CHECK(b.cur->value == "one");
    Out stale = putIf("three", b.cur->mod_revision - 1);
    CHECK_FALSE(stale.written);
    Out d = putIf("four", b.cur->mod_revision);
    CHECK(d.written);
    CHECK(range(loop, *c, "/txn/").kvs.at(0).value == "four");
  }

  TEST_CASE("leases: grant, keepalive, revoke; a gone lease answers without TTL (ttl 0)") {
    core::Loop loop;
    auto c = ready(loop);
    int64_t id = 0, granted = 0;
    c->grant(3, [&](etcd::Status s, int64_t i, int64_t g) {
      CHECK(s);
      id = i, granted = g;
    });
    REQUIRE(runUntil(loop, [&] { return id != 0; }));
    CHECK(granted >= 3);
    std::optional<int64_t> ttl;
    c->keepAlive(id, [&](etcd::Status s, int64_t t) {
      CHECK(s);
      ttl = t;
    });
    REQUIRE(runUntil(loop, [&] { return ttl.has_value(); }));
    CHECK(*ttl >= 1);
    // a key on the lease goes with it
    bool put = false;
    c->put("/lease/k", "v", id, [&](etcd::Status s) { put = static_cast<bool>(s); });
    REQUIRE(runUntil(loop, [&] { return put; }));
    CHECK(range(loop, *c, "/lease/").kvs.at(0).lease == id);
    std::optional<bool> found;
    c->revoke(id, [&](etcd::Status s, bool f) {
      CHECK(s);
      found = f;
    });
    REQUIRE(runUntil(loop, [&] { return found.has_value(); }));
    CHECK(*found);
    CHECK(range(loop, *c, "/lease/").kvs.empty());
    ttl.reset();
    c->keepAlive(id, [&](etcd::Status s, int64_t t) {
      CHECK(s);
      ttl = t;
    });
    REQUIRE(runUntil(loop, [&] { return ttl.has_value(); }));
    CHECK(*ttl == 0);
    found.reset();
    c->revoke(id, [&](etcd::Status s, bool f) {
      CHECK(s);
      found = f;
    });
    REQUIRE(runUntil(loop, [&] { return found.has_value(); }));
    CHECK_FALSE(*found);
  }

  TEST_CASE("watch: a PUT event has no type, DELETE does; revisions come with the events") {
    core::Loop loop;
    auto c = ready(loop);
    int64_t from = range(loop, *c, "/w/").revision + 1;
    std::vector<etcd::Event> seen;
    int64_t last_rev = 0;
    bool created = false, ended = false;
    c->watch(
        "/w/", from, 0,
        [&](std::vector<etcd::Event>& evs, int64_t rev) {
          for (auto& e : evs) seen.push_back(e);
          last_rev = rev;
        },
        [&] { created = true; }, [&](etcd::Status, int64_t) { ended = true; });
    REQUIRE(runUntil(loop, [&] { return created; }));
    bool put = false, gone = false;
    c->put("/w/a", "1", 0, [&](etcd::Status s) { put = static_cast<bool>(s); });
    REQUIRE(runUntil(loop, [&] { return put; }));
    c->remove("/w/a", [&](etcd::Status s) { gone = static_cast<bool>(s); });
    REQUIRE(runUntil(loop, [&] { return gone && seen.size() >= 2; }));
    CHECK_FALSE(seen[0].deleted);
    CHECK(seen[0].kv.key == "/w/a");
    CHECK(seen[0].kv.value == "1");
    CHECK(seen[1].deleted);
    CHECK(seen[1].kv.key == "/w/a");
    CHECK(last_rev == seen[1].kv.mod_revision);
    CHECK_FALSE(ended);
  }

  TEST_CASE("a watch from a compacted revision ends with compact_revision") {
    core::Loop loop;
    auto c = ready(loop);
    for (int i = 0; i < 3; ++i) {
      bool put = false;
      c->put("/compact/k", std::to_string(i), 0, [&](etcd::Status) { put = true; });
      REQUIRE(runUntil(loop, [&] { return put; }));
    }
    int64_t now = range(loop, *c, "/compact/").revision;
    core::Http http(loop);
    bool compacted = false;
    core::HttpRequest req;
    req.url = "http://" + server().endpoint() + "/v3/kv/compaction";
    req.body = "{\"revision\": \"" + std::to_string(now) + "\", \"physical\": true}";
    http.request(std::move(req), [&](core::HttpResponse& r) { compacted = r.ok(); });
    REQUIRE(runUntil(loop, [&] { return compacted; }));
    std::optional<int64_t> compact;
    c->watch(
        "/compact/", now - 2, 0, [](std::vector<etcd::Event>&, int64_t) {}, [] {},
        [&](etcd::Status s, int64_t cr) {
          CHECK_FALSE(s);
          compact = cr;
        });
    REQUIRE(runUntil(loop, [&] { return compact.has_value(); }));
    CHECK(*compact == now);
  }

  TEST_CASE("a dead endpoint is skipped; every endpoint dead fails within the timeouts") {
    core::Loop loop;
    std::string dead = "127.0.0.1:" + std::to_string(aiorpc::test::freePort());
    auto c = ready(loop, {dead, server().endpoint()});
    CHECK(c->endpoint() == server().endpoint());
    etcd::Client none(loop, {{dead, "127.0.0.1:" + std::to_string(aiorpc::test::freePort())}, 1});
    std::optional<etcd::Status> st;
    none.range("/", [&](etcd::Status s, int64_t, std::vector<etcd::KeyValue>&) { st = s; });
    REQUIRE(runUntil(
        loop, [&] { return st.has_value(); }, 5));
    CHECK_FALSE(*st);
    CHECK(st->error.find("127.0.0.1") != std::string::npos);
    // a watch on a dead endpoint ends (and the next one goes to the other endpoint)
    bool ended = false;
    none.watch(
        "/", 0, 0, [](std::vector<etcd::Event>&, int64_t) {}, [] {},
        [&](etcd::Status s, int64_t) { ended = !s; });
    REQUIRE(runUntil(
        loop, [&] { return ended; }, 5));
  }

  TEST_CASE("calls in flight are bounded; the rest wait in order; past the queue they fail") {
    core::Loop loop;
    ready(loop);  // etcd is up
    etcd::Client::Options o{{server().endpoint()}, 1.5};
    o.max_in_flight = 2;
    o.max_queued = 3;
    etcd::Client c(loop, o);
    std::vector<int> order;
    int ok = 0, overloaded = 0;
    for (int i = 0; i < 10; ++i)
      c.range("/", [&, i](etcd::Status s, int64_t, std::vector<etcd::KeyValue>&) {
        if (s) ++ok, order.push_back(i);
        if (!s && s.overloaded) ++overloaded;
      });
    CHECK(c.queued() == 3);
    REQUIRE(runUntil(loop, [&] { return ok + overloaded == 10; }));
    CHECK(ok == 5);  // two sent at once, three waited
    CHECK(overloaded == 5);
    std::sort(order.begin(), order.end());            // (two at a time: they may finish either way)
    CHECK(order == std::vector<int>{0, 1, 2, 3, 4});  // the first five, not the later ones
    CHECK(c.queued() == 0);
  }

  TEST_CASE("destroying the client drops every callback; cancelWatch too") {
    core::Loop loop;
    auto c = ready(loop);
    bool ran = false;
    c->range("/", [&](etcd::Status, int64_t, std::vector<etcd::KeyValue>&) { ran = true; });
    c->grant(5, [&](etcd::Status, int64_t, int64_t) { ran = true; });
    auto w = c->watch(
        "/", 0, 0, [&](std::vector<etcd::Event>&, int64_t) { ran = true; }, [&] { ran = true; },
        [&](etcd::Status, int64_t) { ran = true; });
    c->cancelWatch(w);
    CHECK_FALSE(c->watching(w));
    c.reset();
    runUntil(
        loop, [] { return false; }, 0.3);
    CHECK_FALSE(ran);
  }
}

TEST_SUITE("etcd client lifetime (real etcd)") {
  TEST_CASE("a call refused because the queue is full, then the client destroyed: never runs") {
    // No etcd needed: the first call hangs in its connect, the second waits, the third is
    // refused at once (its outcome due from the loop) and must go with the client.
    core::Loop loop;
    aiorpc::test::Hanging hang;
    etcd::Client::Options o{{"127.0.0.1:" + std::to_string(hang.port)}, 5};
    o.max_in_flight = 1;
    o.max_queued = 1;
    auto c = std::make_unique<etcd::Client>(loop, o);
    int ran = 0;
    auto count = [&](etcd::Status, int64_t, std::vector<etcd::KeyValue>&) { ++ran; };
    c->range("/a", count);
    c->range("/b", count);
    auto refused = std::make_shared<int>(0);  // the refused callback holds this
    c->range("/c", [&ran, refused](etcd::Status s, int64_t, std::vector<etcd::KeyValue>&) {
      ++ran;
      CHECK(s.overloaded);
    });
    CHECK(refused.use_count() == 2);
    c.reset();
    CHECK(refused.use_count() == 1);  // dropped with the client
    runUntil(
        loop, [] { return false; }, 0.1);
    CHECK(ran == 0);
  }

  TEST_CASE("the client destroyed inside a watch's callbacks: nothing runs after, nothing read") {
    core::Loop loop;
    // inside `created`
    auto c = ready(loop);
    int calls = 0;
    c->watch(
        "/life/", 0, 0, [&](std::vector<etcd::Event>&, int64_t) { ++calls; },
        [&] {
          ++calls;
          c.reset();
        },
        [&](etcd::Status, int64_t) { ++calls; });
    REQUIRE(runUntil(loop, [&] { return !c; }));
    runUntil(
        loop, [] { return false; }, 0.2);
    CHECK(calls == 1);
    // inside `events`: two watches on one client see the same put; the first to be told
    // destroys the client, and the other is never called
    c = ready(loop);
    int64_t from = range(loop, *c, "/life/").revision + 1;
    int created = 0, events = 0, ended = 0;
    for (int i = 0; i < 2; ++i)
      c->watch(
          "/life/", from, 0,
          [&](std::vector<etcd::Event>&, int64_t) {
            ++events;
            c.reset();
          },
          [&] { ++created; }, [&](etcd::Status, int64_t) { ++ended; });
    REQUIRE(runUntil(loop, [&] { return created == 2; }));
    auto writer = ready(loop);
    bool put = false;
    writer->put("/life/a", "1", 0, [&](etcd::Status s) { put = static_cast<bool>(s); });
    REQUIRE(runUntil(loop, [&] { return put && !c; }));
    runUntil(
        loop, [] { return false; }, 0.2);
    CHECK(events == 1);
    CHECK(ended == 0);
  }

  TEST_CASE("a watch cancelled inside its own callback gets nothing more") {
    core::Loop loop;
    auto c = ready(loop);
    int64_t from = range(loop, *c, "/own/").revision + 1;
    bool put = false;
    c->put("/own/a", "1", 0, [&](etcd::Status s) { put = static_cast<bool>(s); });
    REQUIRE(runUntil(loop, [&] { return put; }));
    put = false;
    c->put("/own/b", "2", 0, [&](etcd::Status s) { put = static_cast<bool>(s); });
    REQUIRE(runUntil(loop, [&] { return put; }));
    int batches = 0, ended = 0;
    etcd::Client::WatchId w = 0;
    w = c->watch(
        "/own/", from, 0,
        [&](std::vector<etcd::Event>&, int64_t) {
          ++batches;
          c->cancelWatch(w);
        },
        [] {}, [&](etcd::Status, int64_t) { ++ended; });
    REQUIRE(runUntil(loop, [&] { return batches > 0; }));
    CHECK_FALSE(c->watching(w));
    put = false;
    c->put("/own/c", "3", 0, [&](etcd::Status s) { put = static_cast<bool>(s); });
    REQUIRE(runUntil(loop, [&] { return put; }));
    runUntil(
        loop, [] { return false; }, 0.2);
    CHECK(batches == 1);
    CHECK(ended == 0);
  }
}

TEST_SUITE("registry keys on etcd") {
  using aiorpc::agents::keepalive::etcdKey;
  using aiorpc::agents::keepalive::parseEtcdKey;
  using aiorpc::agents::keepalive::RecordKey;

  TEST_CASE("names with / and % are percent-encoded, IPv6 hosts bracketed; and back") {
    CHECK(etcdKey("/p", {"sample.foo", "127.0.0.1", 80}) == "/p/v1/svc/sample.foo/127.0.0.1:80");
    CHECK(etcdKey("/p", {"a/b%c", "::1", 9}) == "/p/v1/svc/a%2Fb%25c/[::1]:9");
    for (RecordKey r : {RecordKey{"a/b%c", "::1", 9}, RecordKey{"x", "db.example", 65535},
                        RecordKey{"%2F", "10.0.0.1", 1}}) {
      auto back = parseEtcdKey("/p", etcdKey("/p", r));
      REQUIRE(back);
      CHECK(back->name == r.name);
      CHECK(back->host == r.host);
      CHECK(back->port == r.port);
    }
  }

  TEST_CASE("every byte that could change a key's structure is escaped, in name and host") {
    CHECK(etcdKey("/p", {"n[1]", "h/x", 5}) == "/p/v1/svc/n%5B1%5D/h%2Fx:5");
    CHECK(etcdKey("/p", {"a\x01"
                         "b",
                         "[::1]", 5}) == "/p/v1/svc/a%01b/[%5B::1%5D]:5");
    for (RecordKey r :
         {RecordKey{"n/[%]\x01", "h[1]", 1}, RecordKey{"x", "[x", 2}, RecordKey{"x", "y]", 3},
          RecordKey{"x", "v1/svc/evil/127.0.0.1", 80}, RecordKey{"x", "100%", 4},
          RecordKey{"x", "tab\there", 5}, RecordKey{"x", "[::1]:5", 6}, RecordKey{"a:b", "q", 7},
          RecordKey{"x", "\x7f", 8}, RecordKey{"\xc3\xa9", "\xe2\x82\xac", 9}}) {
      auto back = parseEtcdKey("/p", etcdKey("/p", r));
      REQUIRE_MESSAGE(back, etcdKey("/p", r));
      CHECK(*back == r);
    }
    // another spelling of a record's key is not one of ours (one key per record)
    for (const char* k : {"/p/v1/svc/%41/h:1", "/p/v1/svc/a/h:01", "/p/v1/svc/a/%3A:1",
                          "/p/v1/svc/a/h:+1", "/p/v1/svc/%ff/h:1", "/p/v1/svc/a/[h]:1"})
      CHECK_MESSAGE(!parseEtcdKey("/p", k), k);
  }

  TEST_CASE("keys of another shape or prefix are not records") {
    for (const char* k : {"/q/v1/svc/a/h:1", "/p/v1/svc/a", "/p/v1/svc/a/h", "/p/v1/svc/a/h:0",
                          "/p/v1/svc/a/h:65536", "/p/v1/svc/a/h:1x", "/p/v1/svc//h:1",
                          "/p/v1/svc/a%2/h:1", "/p/v1/svc/a/[::1:1", "/p/v1/svc/a/:1"})
      CHECK_MESSAGE(!parseEtcdKey("/p", k), k);
  }
}

TEST_SUITE("keepalive store on etcd") {
  using aiorpc::agents::keepalive::EtcdStore;
  using aiorpc::agents::keepalive::RecordKey;
  using aiorpc::agents::keepalive::Registry;

  TEST_CASE("a renewal that finds the lease gone grants a new one and writes the record again") {
    core::Loop loop;
    ready(loop);
    Registry cache([&loop] { return loop.now(); }, 1e9);
    int changes = 0;
    EtcdStore store(loop, cache, EtcdStore::Options{{server().endpoint()}, "/store-lease", 3},
                    [&] { ++changes; });
    REQUIRE(runUntil(loop, [&] { return store.synced(); }));
    RecordKey r{"svc", "127.0.0.1", 4242};
    std::string ident = "\xc0";  // nil
    auto beat = [&] {
      std::optional<std::optional<std::string>> out;
      store.heartbeat(r, ident, "127.0.0.1", true, [&](const EtcdStore::Result& res) {
        out = res.kind == EtcdStore::Result::kOk ? std::nullopt : std::optional(res.error);
      });
      REQUIRE(runUntil(loop, [&] { return out.has_value(); }));
      return *out;
    };
    CHECK_FALSE(beat());
    REQUIRE(runUntil(loop, [&] { return cache.size() == 1; }));
    // Whose lease is it? Read the key from another client on another loop, and revoke that
    // lease while this loop stands still: the store has not seen the delete when it renews.
    core::Loop other;
    auto c = ready(other);
    auto kvs = range(other, *c, "/store-lease/v1/svc/");
    REQUIRE(kvs.kvs.size() == 1);
    int64_t lease = kvs.kvs[0].lease;
    REQUIRE(lease != 0);
    runUntil(
        loop, [] { return false; }, 1.1);  // a renewal is due (TTL/3 = 1 s)
    std::optional<bool> found;
    c->revoke(lease, [&](etcd::Status, bool f) { found = f; });
    REQUIRE(runUntil(other, [&] { return found.has_value(); }));
    REQUIRE(*found);
    CHECK_FALSE(beat());  // keepalive answers without TTL: a new lease, the record again
    REQUIRE(runUntil(other, [&] {
      auto now = range(other, *c, "/store-lease/v1/svc/");
      return now.kvs.size() == 1 && now.kvs[0].lease != lease && now.kvs[0].lease != 0;
    }));
    REQUIRE(runUntil(loop, [&] { return cache.size() == 1; }));
    CHECK_FALSE(store.stale());
  }

  TEST_CASE("a watch started from a compacted revision makes the store read the prefix again") {
    core::Loop loop;
    ready(loop);
    Registry cache([&loop] { return loop.now(); }, 1e9);
    EtcdStore* seen = nullptr;
    bool went_stale = false;  // a compaction is no outage: the store never says stale
    EtcdStore store(loop, cache, EtcdStore::Options{{server().endpoint()}, "/store-compact", 30},
                    [&] { went_stale = went_stale || (seen && seen->stale()); });
    seen = &store;
    // The range has been read; its watch (from the next revision) is not sent yet: that takes
    // another turn of this loop, which stands still while another client writes and compacts.
    REQUIRE(runUntil(loop, [&] { return store.synced(); }));
    core::Loop other;
    auto c = ready(other);
    for (int port : {5001, 5002}) {
      std::string value;
      aiorpc::rpc::Packer p(value);
      p.map(3);
      p.str("endpoint"), p.array(2), p.str("127.0.0.1"), p.integer(port);
      p.str("ident"), p.nil();
      p.str("owner"), p.str("127.0.0.1");
      bool put = false;
      c->put(aiorpc::agents::keepalive::etcdKey("/store-compact", {"svc", "127.0.0.1", port}),
             value, 0, [&](etcd::Status s) { put = static_cast<bool>(s); });
      REQUIRE(runUntil(other, [&] { return put; }));
    }
    int64_t now = range(other, *c, "/store-compact/").revision;
    core::Http http(other);
    core::HttpRequest req;
    req.url = "http://" + server().endpoint() + "/v3/kv/compaction";
    req.body = "{\"revision\": \"" + std::to_string(now) + "\", \"physical\": true}";
    bool compacted = false;
    http.request(std::move(req), [&](core::HttpResponse& r) { compacted = r.ok(); });
    REQUIRE(runUntil(other, [&] { return compacted; }));
    // Without the re-read the store would start its watch from the compacted revision again
    // and again, and never see these two records.
    REQUIRE(runUntil(loop, [&] { return cache.size() == 2; }));
    CHECK_FALSE(went_stale);
  }

  TEST_CASE("a record put again with another owner: the cache has the new owner") {
    core::Loop loop;
    ready(loop);
    Registry cache([&loop] { return loop.now(); }, 1e9);
    EtcdStore store(loop, cache, EtcdStore::Options{{server().endpoint()}, "/store-owner", 30},
                    [] {});
    REQUIRE(runUntil(loop, [&] { return store.synced(); }));
    auto c = ready(loop);
    auto putOwner = [&](const char* owner) {
      std::string value;
      aiorpc::rpc::Packer p(value);
      p.map(3);
      p.str("endpoint"), p.array(2), p.str("127.0.0.1"), p.integer(5001);
      p.str("ident"), p.nil();
      p.str("owner"), p.str(owner);
      bool put = false;
      c->put(aiorpc::agents::keepalive::etcdKey("/store-owner", {"svc", "127.0.0.1", 5001}), value,
             0, [&](etcd::Status s) { put = static_cast<bool>(s); });
      REQUIRE(runUntil(loop, [&] { return put; }));
    };
    putOwner("127.0.0.1");
    REQUIRE(runUntil(loop, [&] { return cache.owner("svc", "127.0.0.1", 5001) != nullptr; }));
    CHECK(*cache.owner("svc", "127.0.0.1", 5001) == "127.0.0.1");
    putOwner("127.0.0.2");
    REQUIRE(runUntil(loop, [&] { return *cache.owner("svc", "127.0.0.1", 5001) == "127.0.0.2"; }));
    CHECK(cache.size() == 1);
  }

  TEST_CASE("two stores on one prefix: one record, written once; unregister revokes") {
    core::Loop loop;
    ready(loop);
    Registry ca([&loop] { return loop.now(); }, 1e9), cb([&loop] { return loop.now(); }, 1e9);
    EtcdStore a(loop, ca, EtcdStore::Options{{server().endpoint()}, "/store-two", 30}, [] {});
    EtcdStore b(loop, cb, EtcdStore::Options{{server().endpoint()}, "/store-two", 30}, [] {});
    REQUIRE(runUntil(loop, [&] { return a.synced() && b.synced(); }));
    RecordKey r{"svc", "::1", 7};
    int done = 0;
    std::vector<Registry::Change> changes;
    for (EtcdStore* s : {&a, &b})
      s->heartbeat(r, "\xc0", "::1", true, [&](const EtcdStore::Result& res) {
        CHECK(res.kind == EtcdStore::Result::kOk);
        changes.push_back(res.change);
        ++done;
      });
    REQUIRE(runUntil(loop, [&] { return done == 2; }));
    // the same new record heard by both at once: one wrote it, the other found it there
    std::sort(changes.begin(), changes.end());
    CHECK(changes == std::vector<Registry::Change>{Registry::kUnchanged, Registry::kAdded});
    REQUIRE(runUntil(loop, [&] { return ca.size() == 1 && cb.size() == 1; }));
    CHECK(ca.version() == cb.version());
    std::optional<bool> removed;
    b.unregister(r, "::1", true, [&](const EtcdStore::Result& res) {
      CHECK(res.kind == EtcdStore::Result::kOk);
      removed = res.removed;
    });
    REQUIRE(runUntil(loop, [&] { return removed.has_value(); }));
    CHECK(*removed);
    REQUIRE(runUntil(loop, [&] { return ca.size() == 0 && cb.size() == 0; }));
  }
}
