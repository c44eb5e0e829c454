// Endpoint: one msgpack-rpc connection, both directions (SPEC §1–4). The server's connections
// and the client's connection are the same class: it frames and classifies what arrives,
// serves requests (when it has a Service), completes the calls it sent, and writes every reply
// through one function.
//
// Lifetime rules (docs/architecture.md, "Who owns a pending callback"):
// - No user callback runs inside a destructor or inside the call that started the work: a
//   destroyed endpoint drops its pending calls uncalled; call()'s outcome always comes later.
// - Endpoints live in a Peers table owned by their Server or Client and are found by id:
//   Responders, posted tasks and reply routing look them up, never keep pointers. An outcome
//   decided before it is delivered (a call refused at once, the calls of a closed connection)
//   waits in that table too, so destroying the owner drops it uncalled.
// - The owner may be destroyed from inside any upcall (a handler, a reply's callback): code
//   that called out holds a core::Liveness::Watch and stops when it says the endpoint is gone;
//   an endpoint disposed of while busy is orphaned (closed, calls dropped) and freed from the loop.
// - A Context owns what it shows (addresses by value).
#pragma once

#include <array>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "aiorpc/core/callback.h"
#include "aiorpc/core/connection.h"
#include "aiorpc/core/future.h"
#include "aiorpc/core/liveness.h"
#include "aiorpc/core/loop.h"
#include "aiorpc/core/watcher.h"
#include "aiorpc/rpc/decoder.h"
#include "aiorpc/rpc/errors.h"
#include "aiorpc/rpc/responder.h"

namespace aiorpc::rpc {

class Service;
class Invocation;
struct MethodInfo;

struct EndpointOptions {
  Limits limits;
  double drain_timeout = 10;     // seconds to finish owed replies once closing
  size_t high_water = 4u << 20;  // stop reading from a peer whose replies pile up
  size_t low_water = 1u << 20;   // and resume below this
  // Bytes queued for the peer past which it counts as broken (it does not read): the
  // connection is closed from the loop, never inside the write. 0: no limit.
  size_t max_output = 0;
  int max_messages_per_read = 1024;  // fairness between connections
  // Requests being served (answered later) per connection; at the limit the connection is not
  // read until one finishes, so one peer cannot make us hold unbounded pending work.
  size_t max_pending = 2048;
  // Input taken frame by frame (the scanner alone frames): a result reaches its callback as
  // msgpack bytes (Response::raw_result; an error reply's error: raw_error), ready to be
  // forwarded as they are, and a request for
  // a method with a raw handler (Service::raw) is offered as bytes; the rest is decoded in place.
  bool frames = false;
  double call_timeout = 10;  // seconds, for calls made without one
  // Counts every reply by method and outcome, with its latency (SPEC §9); null: not counted.
  RequestMetrics* metrics = nullptr;
};

// What endpoints count; a server's endpoints share one set.
struct EndpointCounters {
  uint64_t requests = 0, notifications = 0, bytes_in = 0, in_flight = 0, dropped_replies = 0;
  uint64_t protocol_errors = 0, output_limit_closes = 0;
  std::array<uint64_t, kKindCount> errors{};
};

// How a call ended, in the one classification that Response (a view, during its callback) and
// Outcome (owned) share: a result, the peer's error object (kept intact), or a failure named by
// a Kind (for a call of ours: kTimeout, kConnection or kNotSent).
enum class Ended : uint8_t { kResult, kPeerError, kFailure };

// One call's outcome, owned: a result, the peer's error object (kept intact), or a failure
// (Kind + message). The one owned outcome: a Future settles with it (Response::outcome), a
// proxy keeps one per batch item, a handler may answer with one (Responder::answer).
struct Outcome {
  using Type = Ended;
  Type type = Type::kFailure;
  Value value;                  // kResult: the result; kPeerError: the error object
  Kind kind = Kind::kInternal;  // kFailure
  std::string message;          // kFailure
  bool ok() const noexcept { return type == Type::kResult; }
  static Outcome result(Value v) { return {Type::kResult, std::move(v), Kind::kInternal, {}}; }
  static Outcome failure(Kind k, std::string m) { return {Type::kFailure, {}, k, std::move(m)}; }
  // Not ok: the error as an exception, marked as having come from downstream (a handler that
  // lets it escape answers ApplicationError). ok: nullptr.
  std::exception_ptr exception() const;
};

// One call's outcome as low-level callbacks see it. The objects are views valid during the
// callback; keep() makes an owning Value (sharing the received zone, no copy).
struct Response {
  Ended type = Ended::kResult;
  Kind kind = Kind::kInternal;  // kFailure: kTimeout, kConnection or kNotSent
  Object result, error;         // kResult / kPeerError
  std::string_view raw_result;  // kResult with raw_results: the result's bytes
  std::string_view raw_error;   // kPeerError with raw_results: the error's bytes (error nil)
  std::string message;          // kFailure
  bool ok() const noexcept { return type == Ended::kResult; }
  bool failed(Kind k) const noexcept { return type == Ended::kFailure && kind == k; }
  Value keep(Object o);
  // The kind of a call that did not succeed: the failure's, or the peer's error object's own
  // (kInternal for a result: never asked).
  Kind failureKind() const noexcept;
  // The outcome, owned (a raw result decoded once; views kept by sharing the received zone).
  Outcome outcome();

  std::function<msgpack_zone*()> release_zone;  // set by the endpoint
  std::shared_ptr<msgpack_zone> zone;
};
using ResponseFn = core::Callback<void(Response&)>;

class Endpoint;
class Peers;

// A call in flight, found by id in its owner's table (the endpoint's id and the msgid), or a
// call refused at once (endpoint 0: its key among the table's decided outcomes): cancel()
// drops it: its callback is destroyed, never called, and a reply that still comes is counted
// as late. Harmless once the call has completed, its connection closed or its owner gone;
// it holds no pointer to the loop or the owner.
class CallHandle {
 public:
  CallHandle() = default;
  CallHandle(std::weak_ptr<Peers> peers, uint64_t endpoint, uint64_t call) noexcept
      : peers_(std::move(peers)), endpoint_(endpoint), call_(call) {}
  // True when the call was still pending (and is now dropped). False once its outcome is
  // decided by its connection closing (the callback still gets that).
  bool cancel() noexcept;

 private:
  std::weak_ptr<Peers> peers_;
  uint64_t endpoint_ = 0;  // 0: call_ is a refused call's key in the table's decided outcomes
  uint64_t call_ = 0;      // the msgid on that endpoint
};

// The Future of one call, with its handle: co_await it, .then() it, or cancel() the call. A
// cancelled call's Future fails with core::BrokenPromise (the operation was abandoned), from a
// task posted to the loop, never inside cancel(). Dropping the Future does not cancel the call.
class [[nodiscard]] CallFuture : public core::Future<Value> {
 public:
  CallFuture() = default;
  CallFuture(core::Future<Value> f, CallHandle h) noexcept
      : core::Future<Value>(std::move(f)), handle_(std::move(h)) {}
  // True when the call was still pending (and is now dropped).
  bool cancel() noexcept { return handle_.cancel(); }

 private:
  CallHandle handle_;
};

// A Future for one call: `start` is given the callback that settles it and returns its handle.
CallFuture futureOf(core::FunctionRef<CallHandle(ResponseFn)> start);

// The endpoints of one Server or Client, by id, and the outcomes decided for its calls but not
// yet delivered. Responders, CallHandles and posted tasks reach it through a weak_ptr.
class Peers final : public ReplyHub, public std::enable_shared_from_this<Peers> {
 public:
  Peers(core::Loop& l, EndpointCounters& c) : loop(l), counters(c) {}
  // Disposes of every endpoint (Endpoint::dispose) and drops undelivered outcomes uncalled.
  ~Peers() override;
  // The same, for an owner that is going (from its destructor, maybe inside an upcall).
  void clear() noexcept;
  Endpoint* find(uint64_t id) const noexcept {
    auto it = map.find(id);
    return it == map.end() ? nullptr : it->second.get();
  }
  // The endpoint `id` of a table that may have gone (with its owner): null then.
  static Endpoint* find(const std::weak_ptr<Peers>& peers, uint64_t id) noexcept {
    auto p = peers.lock();
    return p ? p->find(id) : nullptr;
  }
  // Out of the table, for its owner to free from the loop; null when it is not in it.
  std::unique_ptr<Endpoint> take(uint64_t id) noexcept {
    auto it = map.find(id);
    if (it == map.end()) return nullptr;
    auto e = std::move(it->second);
    map.erase(it);
    return e;
  }
  bool reply(uint64_t session, Object msgid, const ReplyBody& body, const CallTag& tag) override;
  size_t outputBytes(uint64_t session) const override;

  // An outcome decided before its callback may run: kept here under a key until a task posted
  // by deliverLater() runs it, or cancelDecided() or this table's end drops it uncalled.
  uint64_t decide(ResponseFn done, Kind failure, std::string why);
  // Delivers the decided outcomes `keys` in order from the loop, stopping (the rest dropped
  // uncalled, here) if a callback destroys the owner.
  void deliverLater(std::vector<uint64_t> keys);
  // A call refused at once: decided and delivered from the loop; its handle cancels it.
  CallHandle refuse(ResponseFn done, Kind failure, std::string why);
  bool cancelDecided(uint64_t key) noexcept { return decided_.erase(key) > 0; }

  core::Loop& loop;
  EndpointCounters& counters;
  std::unordered_map<uint64_t, std::unique_ptr<Endpoint>> map;

 private:
  struct Decided {
    ResponseFn done;
    Kind failure;
    std::string message;
  };
  std::unordered_map<uint64_t, Decided> decided_;
  uint64_t next_key_ = 0;
};

class Endpoint final : public core::ConnectionHandler {
 public:
  // The Server or Client that holds the endpoint.
  class Owner {
   public:
    // The connection closed (`why` empty: an orderly close). Called before the endpoint's own
    // calls are failed; the owner takes it out of its table (freeing it from the loop).
    virtual void endpointClosed(Endpoint& e, std::error_code why) = 0;
    // A control command request ("\0name"). By default: NoMethodError.
    virtual void control(std::string_view cmd, Object params, Invocation& inv);
    // The connection's TLS handshake is done (called from inside the connection: post work
    // that may destroy anything).
    virtual void endpointReady(Endpoint&) {}

   protected:
    ~Owner() = default;
  };

  // `service` may be null: requests are then answered NoMethodError. Not connected until
  // attach(): calls made before wait in memory and go out first.
  // `remote` names the peer in messages (a client's dial address); by default its address.
  Endpoint(core::Loop& loop, const EndpointOptions& opts, Service* service, Owner& owner,
           const std::shared_ptr<Peers>& peers, uint64_t id, core::Address remote = {});
  // Pending calls are dropped uncalled; replies still owed are dropped (counted); sleeps its
  // handlers started end (BrokenPromise, from the loop).
  ~Endpoint();
  // How an owner that is going lets go of an endpoint: freed now, or, when it is inside one of
  // its upcalls (the owner destroyed from a handler or a callback), orphaned now (closed, its
  // calls dropped uncalled, every Liveness::Watch told) and freed from the loop.
  static void dispose(std::unique_ptr<Endpoint> e) noexcept;
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;

  // Connected: reads and writes start. With `tls`, over TLS (core::Connection::startTls; a
  // client passes the name the server's certificate must carry). Throws std::bad_alloc (and
  // is then not attached) when the TLS state cannot be made.
  void attach(core::Fd fd, const std::shared_ptr<core::TlsContext>& tls = nullptr,
              std::string_view verify_host = {});
  // Closed before its TLS handshake was done (a plaintext or failed peer).
  bool handshakeFailed() const noexcept { return conn_ && conn_->handshaking(); }
  uint64_t id() const noexcept { return id_; }
  bool attached() const noexcept { return conn_.has_value(); }
  bool open() const noexcept { return conn_ && !conn_->closed(); }
  const core::Address& peer() const noexcept;
  const core::Address& local() const noexcept;
  void setService(Service* s) noexcept {
    service_ = s;
    last_method_ = nullptr;
  }

  // Calls the peer. `done` runs exactly once, always from the loop, never inside call(), unless
  // the returned handle cancels the call first or the owner goes first (then never).
  // `handle` false: an empty handle comes back (no reference count taken per call), for
  // callers that never cancel (the proxy).
  CallHandle call(std::string_view method, core::FunctionRef<void(Packer&)> params,
                  ResponseFn&& done, double timeout, bool handle = true);
  // Drops a pending call (its callback destroyed uncalled); false when it is not pending.
  bool cancel(uint32_t msgid) noexcept;
  void notify(std::string_view method, core::FunctionRef<void(Packer&)> params);
  // The same as a Future (params sent exactly as given): co_await peer->request("f", params).
  template <class P>
  CallFuture request(std::string_view method, const P& params, double timeout = -1) {
    return futureOf([&](ResponseFn done) {
      return call(
          method, [&](Packer& p) { p.pack(params); }, std::move(done), timeout);
    });
  }
  size_t callsInFlight() const noexcept { return calls_in_flight_; }
  // Never attached (the connect failed): every call fails as not sent, with `why`.
  void abandon(const std::string& why);
  size_t unsentBytes() const noexcept { return unsent_.size(); }
  uint64_t lateReplies() const noexcept { return late_replies_; }

  // The one function that writes a reply: [1, msgid, error, result]. `owed`: a reply that was
  // detached (counted in flight). Returns false when the connection has gone (dropped).
  bool writeReply(Object msgid, const ReplyBody& body, bool owed, const CallTag& tag);

  // Stop reading; close once every owed reply is written (at most drain_timeout from now).
  void finish();
  // The server drains (SPEC §7): nothing owed closes now; with replies owed it keeps reading
  // and answers new requests ServiceUnavailable ("draining"), then closes.
  void drain();
  void close(std::error_code why = {});
  // For the owner's periodic sweep: frees the decoder of a connection quiet since the last
  // sweep (true when freed), and looks at the peer of one we do not read.
  bool sweep();
  size_t pendingOutput() const noexcept { return conn_ ? conn_->pendingBytes() : 0; }
  uint64_t bytesWritten() const noexcept { return conn_ ? conn_->out().written() : 0; }
  bool heardFromPeer() const noexcept { return read_ > 0; }
  bool holdsBuffer() const noexcept { return dec_ != nullptr; }
  bool readingPaused() const noexcept { return open() && conn_->readingPaused(); }
  // A connection we do not read would never notice its peer's reset: look.
  void checkPeer() noexcept {
    if (open()) conn_->checkPeer();
  }

 private:
  class Served;  // a request of the peer being served (endpoint.cc)
  friend class Served;
  struct Pending {
    ResponseFn done;
    uint64_t seq = 0;
    uint64_t end = 0;     // stream position of the request's last byte
    bool queued = false;  // in the connection's output queue (else still in unsent_)
  };
  // The slab of calls in flight: a msgid's low kSlotBits index slots_, its high bits are the
  // slot's generation (so a late reply to a reused slot matches nothing). No hashing, and no
  // allocation once the slab has grown to the peak number in flight. The calls in flight are
  // also a list in deadline order (prev/next slot indices): a call's deadline goes with its
  // reply, so what the endpoint holds follows the calls in flight, not the call rate.
  static constexpr uint32_t kSlotBits = 20;
  static constexpr uint32_t kNil = UINT32_MAX;
  struct Slot {
    Pending p;
    double at = 0;  // deadline
    uint32_t id = 0;
    uint32_t prev = kNil, next = kNil;
    bool used = false;
  };
  void linkDeadline(uint32_t s, double at) noexcept;
  void unlinkDeadline(uint32_t s) noexcept;
  Pending* findPending(uint32_t id) noexcept;
  Pending* addPending(uint32_t& id);
  void erasePending(uint32_t id) noexcept;
  // Every call in flight fails (ConnectionError if its bytes left by `written`, else not-sent):
  // decided in the owner's table now, delivered from the loop.
  void failCalls(uint64_t written, const std::string& why);
  // Every call in flight out of the slab (deadlines and timer stopped): the caller decides
  // their outcomes or drops them.
  std::vector<Slot> takeCalls() noexcept;
  // Runs the call's callback (which may destroy our owner: the caller's Watch tells).
  void completeCall(uint64_t id, Response& r);
  void orphan() noexcept;
  void onTimer(int) noexcept;
  void armTimer();
  uint64_t queue(core::FunctionRef<void(Packer&)> write);

  std::span<char> readBuffer() override;
  void onData(size_t n) override;
  void onEof(core::Connection&) override { finish(); }
  void onHandshakeDone(core::Connection&) override { owner_.endpointReady(*this); }
  // Over the high-water mark a serving endpoint stops reading its peer (backpressure on the
  // requests that make replies pile up). Its own calls' replies then wait too: a server that
  // calls back a client which does not read stalls that connection until the output drains
  // (or the output limit closes it). A client endpoint without a service never stops reading.
  void onHighWater(core::Connection& c) override;
  void onLowWater(core::Connection& c) override;
  // The peer does not read: it counts as broken; closed from the loop, never inside a write.
  void onOverLimit(core::Connection& c) override;
  void onClose(std::error_code why) override;

  void process();
  void processFrames(core::Liveness::Watch& w);  // process() with raw_results
  void caughtUp();                               // process() has handled every whole message read
  bool readBeforeDrain() const noexcept { return read_ - dec_->after() <= drain_mark_; }
  bool goOn(int& budget);  // after a message: false to stop reading for now
  void resumeLater();      // process() again from the loop, reading resumed if allowed
  void resumed();
  void closeOverLimit();
  // Runs `step` on this endpoint from the loop, if it is still in its owner's table then.
  template <void (Endpoint::*step)()>
  void later() {
    loop_.post([peers = peers_, id = id_] {
      if (Endpoint* e = Peers::find(peers, id)) (e->*step)();
    });
  }
  // The one classification of a decoded message: request, notification, reply or malformed.
  // A handler or a reply's callback may destroy our owner: the caller's Watch tells.
  void handle(Object msg);
  // A successful reply read in place: true done, false not one (decode it).
  bool rawReply(std::string_view m);
  // A request taken by its method's raw handler: true done, false decode it.
  bool rawRequest(std::string_view m);
  class RawServed;
  // Serves a request or notification of the peer (calls of ours are call()/request()).
  void serve(Object msgid, Object method, Object params, bool notify);
  void protocolError(const std::string& why);
  void detached();  // a request of the peer will be answered later

  core::Liveness live_;  // told in orphan() (from the destructor or dispose())
  core::Loop& loop_;
  const EndpointOptions& opts_;
  Service* service_;
  // The method this connection asked for last: a peer mostly calls one method after another, and
  // a name compare costs less than a hash and a probe. (Methods are never removed: the pointer
  // stays valid while the service lives.)
  const MethodInfo* last_method_ = nullptr;
  const MethodInfo* findMethod(std::string_view name) noexcept;
  Owner& owner_;
  std::weak_ptr<Peers> peers_;
  Peers* peers_raw_;  // the same table, for Responders (which check peers_ before using it)
  EndpointCounters& counters_;
  uint64_t id_;
  core::Address remote_;
  bool named_;                            // remote_ was given (else taken from the connection)
  core::Loop::Owner sleeps_;              // sleeps its handlers start end when it closes
  std::optional<core::Connection> conn_;  // from attach()
  // Created on the first read; freed by the owner's sweep once the connection has been quiet
  // with nothing buffered (an unpacker holds ~24 KiB: its buffer and an 8 KiB zone chunk).
  std::unique_ptr<Decoder> dec_;
  static constexpr size_t kMinRead = 16 * 1024, kMaxRead = 256 * 1024;
  size_t read_size_ = kMinRead, offered_ = 0;
  // The connection's state. Phases only move forward: kOpen (reading and serving), kFinishing
  // (reading stopped after a protocol error, the peer's EOF or the drain; closes once the
  // replies owed are written, at most drain_timeout later), kGone (orphaned or being
  // destroyed: its owner has let go, nothing more runs). The drain is not a phase of its own
  // but a mark in the input (drain_mark_): requests before it are served, after it refused.
  enum class Phase : uint8_t { kOpen, kFinishing, kGone };
  Phase phase_ = Phase::kOpen;
  bool finishing() const noexcept { return phase_ != Phase::kOpen; }
  static constexpr uint64_t kNoDrain = UINT64_MAX;
  bool draining() const noexcept { return drain_mark_ != kNoDrain; }
  // Why reading is paused, besides finishing (any bit set: not read, not processed).
  enum : uint8_t {
    kOverHighWater = 1,  // replies pile up for the peer: resumed below the low-water mark
    kAtMaxPending = 2,   // max_pending requests in progress: resumed when one finishes
  };
  uint8_t paused_ = 0;
  // Tasks posted for this endpoint and not yet run (each at most once at a time).
  enum : uint8_t { kResume = 1, kCloseOverLimit = 2 };
  uint8_t posted_ = 0;
  bool active_ = true;    // read since the owner's last sweep
  size_t in_flight_ = 0;  // replies owed to the peer
  uint64_t read_ = 0;     // bytes read from the peer
  double read_at_ = 0;    // loop time of the last read (with metrics: requests' start)
  // The drain (SPEC §7): requests read before it (ending at or before drain_mark_) are served as
  // usual, also those held back by backpressure; those read after it are refused.
  uint64_t drain_mark_ = kNoDrain;
  bool held_ = false;  // process() stopped with whole messages possibly left (paused, budget)
  core::Loop::TimerId drain_timer_ = 0;
  // Our calls.
  std::string unsent_;  // requests made before attach()
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_slots_;
  size_t calls_in_flight_ = 0;
  uint32_t first_ = kNil, last_ = kNil;  // the deadline list: earliest first
  core::TimerWatcher timer_;             // at the first deadline, or earlier (re-armed lazily)
  uint64_t seq_ = 0;
  uint64_t late_replies_ = 0;
};

}  // namespace aiorpc::rpc
