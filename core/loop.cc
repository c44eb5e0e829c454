// The reactor loop.
#include "aiorpc/core/loop.h"

#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <stdexcept>
#include <string_view>
#include <thread>
#include <utility>

#include "aiorpc/core/log.h"
#include "aiorpc/core/platform.h"

namespace aiorpc::core {

struct Loop::OneShot : ListNode {  // in its owner's list while it has one (sleep())
  Loop* loop;
  TimerId id;
  Callback<void()> cb;
  TimerWatcher w;
  void fire(int) noexcept {
    auto cb_local = std::move(cb);
    loop->cancel(id);  // frees this
    cb_local();
  }
};

struct Loop::Sig {
  int signo;
  Callback<void(int)> cb;
  SignalWatcher w;
  void fire(int) noexcept { cb(signo); }
};

struct Loop::Linger {
  Loop* loop;
  Fd fd;
  IoWatcher io;
  TimerWatcher timer;
  void onRead(int) noexcept {
    if (discard()) done();  // EOF or an error: the peer has everything it will ever read
  }
  // Reads and drops what has arrived (bounded work per call); true at EOF or on an error.
  bool discard() noexcept {
    char sink[16 * 1024];
    for (int i = 0; i < 16; ++i) {
      ssize_t n = ::read(fd.get(), sink, sizeof sink);
      if (n > 0) continue;
      return !(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR));
    }
    return false;
  }
  // Replies the peer has not received yet (its window was full) are still in our send queue:
  // closing with unread input now would reset and destroy them. Linger on while they drain,
  // up to kMaxLingerSeconds in all (nginx's lingering_time).
  void onTimer(int) noexcept {
    if (discard()) return done();  // EOF meanwhile
    if (platform::unsentBytes(fd.get()) > 0 && loop->now() - started < kMaxLingerSeconds) {
      timer.start(0.25);
      return;
    }
    done();
  }
  double started = 0;
  void done() noexcept { loop->endLinger(this); }
};

namespace {
unsigned backendFlags(LoopBackend b) noexcept {
  if (b == LoopBackend::kAuto) {
    const char* env = std::getenv("AIORPC_LOOP_BACKEND");
    std::string_view e = env ? env : "";
    b = e == "poll"     ? LoopBackend::kPoll
        : e == "select" ? LoopBackend::kSelect
        : e == "epoll"  ? LoopBackend::kEpoll
        : e == "kqueue" ? LoopBackend::kKqueue
                        : LoopBackend::kAuto;
  }
  switch (b) {
    case LoopBackend::kPoll:
      return EVBACKEND_POLL;
    case LoopBackend::kSelect:
      return EVBACKEND_SELECT;
    case LoopBackend::kEpoll:
      return EVBACKEND_EPOLL;
    case LoopBackend::kKqueue:
      return EVBACKEND_KQUEUE;
    case LoopBackend::kAuto:
      break;
  }
  return ev_recommended_backends();
}
}  // namespace

namespace {
// Where promises broken on this thread resume their waiters (STYLE rule 8): a task posted to the
// innermost loop running here (a SyncClient's nested loop takes over for its run), else to the
// newest loop made on this thread and still alive (a promise broken between runs, e.g. a call
// cancelled or a client destroyed by the program's own code): through its thread-safe queue,
// since it may be running on another thread; it resumes at that loop's next run, or as it is
// destroyed. No loop: at once. Any thread may destroy a loop, so the registry is shared.
struct Loops {
  std::mutex mu;
  std::vector<std::pair<std::thread::id, Loop*>> all;  // guarded by mu
};
Loops& loops() {
  static auto* a = new Loops;  // never freed: a static Loop may be destroyed after statics here
  return *a;
}
thread_local std::vector<Loop*> t_running;

void postToRunning(void* l, Callback<void()> task) { static_cast<Loop*>(l)->post(std::move(task)); }

void postToNewest(void*, Callback<void()> task) {
  {
    std::lock_guard<std::mutex> lock(loops().mu);  // held: the loop cannot go meanwhile
    auto me = std::this_thread::get_id();
    for (auto it = loops().all.rbegin(); it != loops().all.rend(); ++it)
      if (it->first == me) return it->second->postFromThread(std::move(task));
  }
  task();
}

void pointDeferral() noexcept {
  detail::t_deferral = t_running.empty() ? detail::Deferral{postToNewest, nullptr}
                                         : detail::Deferral{postToRunning, t_running.back()};
}

// For the length of a run (or of the teardown): this loop is where broken promises resume.
class DeferTo {
 public:
  explicit DeferTo(Loop* loop) : loop_(loop) {
    t_running.push_back(loop);
    pointDeferral();
  }
  ~DeferTo() {
    auto it = std::find(t_running.rbegin(), t_running.rend(), loop_);
    if (it != t_running.rend()) t_running.erase(std::next(it).base());
    pointDeferral();
  }
  DeferTo(const DeferTo&) = delete;
  DeferTo& operator=(const DeferTo&) = delete;

 private:
  Loop* loop_;
};
}  // namespace

Loop::Loop(LoopBackend backend)
    : loop_(ev_loop_new(static_cast<unsigned>(EVFLAG_NOENV) | backendFlags(backend))) {
  if (!loop_) loop_ = ev_loop_new(static_cast<unsigned>(EVFLAG_NOENV));  // not available here
  prepare_.bind<&Loop::onPrepare>(loop_, this);
  prepare_.start();
  ev_unref(loop_);  // the prepare watcher alone must not keep run() going
  check_.bind<&Loop::onCheck>(loop_, this);
  check_.start();
  ev_unref(loop_);
  idle_.bind<&Loop::onIdle>(loop_, this);
  async_.bind<&Loop::onAsync>(loop_, this);
  async_.keepLoopAlive(false);  // waiting for worker threads alone does not keep run() going
  async_.start();
  {
    std::lock_guard<std::mutex> lock(loops().mu);
    loops().all.emplace_back(std::this_thread::get_id(), this);
  }
  pointDeferral();
}

void Loop::postFromThread(Callback<void()> cb) {
  {
    std::lock_guard<std::mutex> lock(remote_mu_);
    remote_.push_back(std::move(cb));
  }
  async_.send();
}

void Loop::onAsync(int) noexcept {
  std::vector<Callback<void()>> batch;
  {
    std::lock_guard<std::mutex> lock(remote_mu_);
    batch.swap(remote_);
  }
  for (auto& cb : batch) cb();
}

Loop::~Loop() {
  {
    std::lock_guard<std::mutex> lock(loops().mu);
    std::erase_if(loops().all, [this](const auto& e) { return e.second == this; });
  }
  DeferTo defer(this);  // what the teardown breaks resumes from the posted rounds below
  while (!lingering_.empty()) endLinger(lingering_.back().get());
  {  // what came through the thread-safe queue (broken promises among it) runs here too
    std::lock_guard<std::mutex> lock(remote_mu_);
    for (auto& cb : remote_) posted_.push_back(std::move(cb));
    remote_.clear();
  }
  // Run what was posted (deferred deletes among it) so nothing leaks.
  for (int i = 0; i < 16 && !posted_.empty(); ++i) runPosted();
  cancelAll();
  cancelling_ = true;  // nothing new from here on
  for (int i = 0; i < 16 && !posted_.empty(); ++i) runPosted();
  posted_.clear();
  for (auto& s : signals_) {
    ev_ref(loop_);  // balance the ev_unref of onSignal before stopping
    s->w.stop();
  }
  signals_.clear();
  async_.stop();
  {
    std::lock_guard<std::mutex> lock(remote_mu_);
    remote_.clear();
  }
  ev_ref(loop_);
  prepare_.stop();
  ev_ref(loop_);
  check_.stop();
  idle_.stop();
  ev_loop_destroy(loop_);
}

void Loop::linger(Fd fd) noexcept {
  if (!fd) return;
  if (::shutdown(fd.get(), SHUT_WR) != 0 || lingering_.size() >= kMaxLingering) return;
  try {
    auto l = std::make_unique<Linger>();
    l->loop = this;
    l->fd = std::move(fd);
    l->io.bind<&Linger::onRead>(loop_, l.get());
    l->io.set(l->fd.get(), EV_READ);
    l->io.start();
    ev_unref(loop_);
    l->started = now();
    l->timer.bind<&Linger::onTimer>(loop_, l.get());
    l->timer.start(kLingerSeconds);
    ev_unref(loop_);
    lingering_.push_back(std::move(l));
  } catch (const std::bad_alloc&) {
  }  // `fd` (if still ours) closes here
}

void Loop::endLinger(Linger* l) noexcept {
  for (auto& p : lingering_) {
    if (p.get() != l) continue;
    ev_ref(loop_);
    l->io.stop();
    ev_ref(loop_);
    l->timer.stop();
    std::swap(p, lingering_.back());
    lingering_.pop_back();  // closes the socket
    return;
  }
}

struct ev_loop* rawLoop(Loop& loop) noexcept {
  return loop.raw();
}

const char* Loop::backendName() const noexcept {
  switch (ev_backend(loop_)) {
    case EVBACKEND_SELECT:
      return "select";
    case EVBACKEND_POLL:
      return "poll";
    case EVBACKEND_EPOLL:
      return "epoll";
    case EVBACKEND_KQUEUE:
      return "kqueue";
    default:
      return "other";
  }
}

void Loop::run() {
  DeferTo defer(this);
  ev_run(loop_, 0);
}
void Loop::runOnce() {
  DeferTo defer(this);
  ev_run(loop_, EVRUN_ONCE);
}
void Loop::stop() noexcept { ev_break(loop_, EVBREAK_ALL); }

void Loop::post(Callback<void()> cb) {
  posted_.push_back(std::move(cb));
  idle_.start();
}

void Loop::runPosted() noexcept {
  running_.swap(posted_);
  for (auto& cb : running_) cb();
  running_.clear();
}

void Loop::onIdle(int) noexcept {
  if (posted_.empty()) idle_.stop();
}

void Loop::onCheck(int) noexcept {
  runPosted();
  if (posted_.empty()) idle_.stop();
}

void Loop::onPrepare(int) noexcept {
  // Posted work first (it may write), then the batched flush of every dirty output queue.
  runPosted();
  while (!flush_list_.empty()) {
    auto* f = static_cast<Flushable*>(flush_list_.front());
    f->unlink();
    f->flush();
  }
  if (posted_.empty()) idle_.stop();
}

Loop::TimerId Loop::after(double sec, Callback<void()> cb) { return start(sec, std::move(cb), 0); }

Loop::TimerId Loop::start(double sec, Callback<void()> cb, Owner owner) {
  if (!std::isfinite(sec)) throw std::invalid_argument("timer duration is not a finite number");
  if (cancelling_) return 0;  // shutting down: `cb` is dropped
  // An id is its slot (low 32 bits) and the slot's generation (high bits): an id kept after
  // its timer ended never cancels the next timer in that slot.
  uint32_t slot;
  if (!free_timer_ids_.empty()) {
    slot = static_cast<uint32_t>(free_timer_ids_.back());
    free_timer_ids_.pop_back();
  } else {
    timers_.emplace_back();
    generations_.push_back(0);
    slot = static_cast<uint32_t>(timers_.size());
  }
  TimerId id = (static_cast<TimerId>(++generations_[slot - 1]) << 32) | slot;
  auto t = std::make_unique<OneShot>();
  t->loop = this;
  t->id = id;
  t->cb = std::move(cb);
  t->w.bind<&OneShot::fire>(loop_, t.get());
  t->w.start(sec < 0 ? 0 : sec);
  if (owner) owned_[owner].pushBack(t.get());
  timers_[slot - 1] = std::move(t);
  return id;
}

Future<void> Loop::sleep(double sec) {
  Promise<void> p;
  auto f = p.future();
  start(
      sec, [p = std::move(p)]() mutable { p.setValue(); }, owner_);
  return f;
}

void Loop::cancelOwned(Owner owner) noexcept {
  auto it = owned_.find(owner);
  if (it == owned_.end()) return;
  // Dropping a sleep's callback fails its future (BrokenPromise): the coroutine waiting on it
  // resumes, and may set timers of its own meanwhile; take the ids first.
  std::vector<TimerId> ids;
  for (ListNode* n = it->second.front(); n != &it->second; n = n->next)
    ids.push_back(static_cast<OneShot*>(n)->id);
  for (TimerId id : ids) cancel(id);
  it = owned_.find(owner);
  if (it != owned_.end() && it->second.empty()) owned_.erase(it);
}

void Loop::cancelAll() noexcept {
  DeferTo defer(this);
  // Repeat: a dropped callback breaks a promise whose waiter resumes from a posted task (run
  // here), and a resumed coroutine may set a new timer.
  for (int round = 0; round < 16 && (!timers_.empty() || !posted_.empty()); ++round) {
    auto timers = std::move(timers_);
    timers_.clear();
    free_timer_ids_.clear();
    timers.clear();
    runPosted();
  }
  owned_.clear();
}

bool Loop::cancel(TimerId id) noexcept {
  uint64_t slot = id & 0xffffffffu;
  if (slot == 0 || slot > timers_.size() || !timers_[slot - 1] || timers_[slot - 1]->id != id)
    return false;
  timers_[slot - 1].reset();
  free_timer_ids_.push_back(slot);
  return true;
}

void Loop::onSignal(int signo, Callback<void(int)> cb) {
  for (auto& s : signals_)
    if (s->signo == signo) {
      s->cb = std::move(cb);
      return;
    }
  auto s = std::make_unique<Sig>();
  s->signo = signo;
  s->cb = std::move(cb);
  s->w.bind<&Sig::fire>(loop_, s.get());
  s->w.set(signo);
  s->w.start();
  ev_unref(loop_);  // a signal handler alone does not keep run() going
  signals_.push_back(std::move(s));
}

long prepareProcess() noexcept {
  std::signal(SIGPIPE, SIG_IGN);
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) log::warn("cannot raise RLIMIT_NOFILE");
  }
  return static_cast<long>(rl.rlim_cur);
}

}  // namespace aiorpc::core
