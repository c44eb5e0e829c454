// libcurl multi-socket on libev (see `man curl_multi_socket_action`).
#include "aiorpc/core/http.h"

#include <curl/curl.h>

#include <mutex>
#include <unordered_map>

#include "aiorpc/core/watcher.h"

namespace aiorpc::core {

namespace {
// Bodies larger than this fail the transfer (a peer cannot make us hold more).
constexpr size_t kMaxBody = 64u << 20;

void globalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// Verification stays on (peer and host); TLS 1.2 at least, as for our own links (SPEC §8).
void setTls(CURL* e, const HttpTlsFiles& f) {
  curl_easy_setopt(e, CURLOPT_SSLVERSION, CURL_SSLVERSION_TLSv1_2);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
  if (!f.ca.empty()) curl_easy_setopt(e, CURLOPT_CAINFO, f.ca.c_str());
  if (!f.cert.empty()) curl_easy_setopt(e, CURLOPT_SSLCERT, f.cert.c_str());
  if (!f.key.empty()) curl_easy_setopt(e, CURLOPT_SSLKEY, f.key.c_str());
#if LIBCURL_VERSION_NUM >= 0x075700
  curl_easy_setopt(e, CURLOPT_CA_CACHE_TIMEOUT, 0L);  // a new CA file counts from the next connect
#endif
}
}  // namespace

struct Http::Impl {
  struct Sock {
    Impl* impl;
    curl_socket_t fd;
    IoWatcher io;
    void onIo(int revents) noexcept {
      int flags =
          (revents & EV_READ ? CURL_CSELECT_IN : 0) | (revents & EV_WRITE ? CURL_CSELECT_OUT : 0);
      impl->action(fd, flags);
    }
  };
  struct Transfer {
    Id id = 0;
    CURL* easy = nullptr;
    curl_slist* headers = nullptr;
    bool streaming = false;
    bool cancelled = false;  // while in a batch of finished transfers
    std::string pending;     // stream data not yet delivered
    HttpResponse resp;
    Callback<void(std::string_view)> data;
    Callback<void(HttpResponse&)> done;
    char errbuf[CURL_ERROR_SIZE] = {};
    ~Transfer() {
      if (easy) curl_easy_cleanup(easy);
      if (headers) curl_slist_free_all(headers);
    }
  };

  Loop& loop;
  CURLM* multi = nullptr;
  TimerWatcher timer;
  std::unordered_map<curl_socket_t, std::unique_ptr<Sock>> socks;
  // By id. A callback may destroy the Http: code that ran one goes on only while this table
  // (freed with the Http) still exists.
  using Transfers = std::unordered_map<Id, std::unique_ptr<Transfer>>;
  std::shared_ptr<Transfers> transfers = std::make_shared<Transfers>();
  Id last_id = 0;
  std::vector<std::unique_ptr<Transfer>> completing;
  std::vector<std::unique_ptr<Transfer>>* completing_now = nullptr;  // being answered
  // Cancelled transfers, freed when no callback runs (one may cancel its own transfer).
  std::vector<std::unique_ptr<Transfer>> dead;

  explicit Impl(Loop& l) : loop(l) {
    globalInit();
    multi = curl_multi_init();
    curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, &Impl::onSocket);
    curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, this);
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, &Impl::onTimer);
    curl_multi_setopt(multi, CURLMOPT_TIMERDATA, this);
    timer.bind<&Impl::onTimeout>(loop, this);
  }
  ~Impl() {
    timer.stop();
    for (auto& [id, t] : *transfers) curl_multi_remove_handle(multi, t->easy);
    transfers->clear();
    curl_multi_cleanup(multi);
    socks.clear();
  }

  static int onSocket(CURL*, curl_socket_t fd, int what, void* userp, void*) {
    auto* self = static_cast<Impl*>(userp);
    if (what == CURL_POLL_REMOVE) {
      self->socks.erase(fd);
      return 0;
    }
    auto& s = self->socks[fd];
    if (!s) {
      s = std::make_unique<Sock>();
      s->impl = self;
      s->fd = fd;
      s->io.bind<&Sock::onIo>(self->loop, s.get());
    }
    int ev = (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
    s->io.stop();
    s->io.set(fd, ev);
    s->io.start();
    return 0;
  }
  static int onTimer(CURLM*, long timeout_ms, void* userp) {
    auto* self = static_cast<Impl*>(userp);
    if (timeout_ms < 0) {
      self->timer.stop();
    } else {
      self->timer.start(static_cast<double>(timeout_ms) / 1000.0);
    }
    return 0;
  }
  void onTimeout(int) noexcept { action(CURL_SOCKET_TIMEOUT, 0); }

  static size_t onWrite(char* p, size_t size, size_t n, void* ud) {
    auto* t = static_cast<Transfer*>(ud);
    std::string& into = t->streaming ? t->pending : t->resp.body;
    if (into.size() + n > kMaxBody) return 0;  // aborts the transfer (CURLE_WRITE_ERROR)
    into.append(p, size * n);
    return size * n;
  }

  // curl's work for one event, then the callbacks (outside curl: they may start or cancel
  // transfers, or destroy the Http).
  void action(curl_socket_t fd, int flags) noexcept {
    int running = 0;
    curl_multi_socket_action(multi, fd, flags, &running);
    std::weak_ptr<Transfers> guard = transfers;
    deliver(guard);
    if (!guard.expired()) dead.clear();
  }

  void deliver(const std::weak_ptr<Transfers>& guard) noexcept {
    // Stream data first, in arrival order per transfer.
    std::vector<Id> ids;
    for (auto& [id, t] : *transfers)
      if (t->streaming && !t->pending.empty()) ids.push_back(id);
    for (Id id : ids) {
      auto it = transfers->find(id);
      if (it == transfers->end()) continue;
      std::string chunk = std::move(it->second->pending);
      it->second->pending.clear();
      if (it->second->data) it->second->data(chunk);
      if (guard.expired()) return;
    }
    // Finished transfers: taken out of curl and the map first (a callback may cancel or start
    // others), then answered in order; cancel() clears the callbacks of one still waiting here.
    int left = 0;
    while (CURLMsg* m = curl_multi_info_read(multi, &left)) {
      if (m->msg != CURLMSG_DONE) continue;
      Transfer* raw = nullptr;
      curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, reinterpret_cast<char**>(&raw));
      CURLcode code = m->data.result;
      auto it = raw ? transfers->find(raw->id) : transfers->end();
      if (it == transfers->end()) continue;
      std::unique_ptr<Transfer> t = std::move(it->second);
      transfers->erase(it);
      if (code == CURLE_OK) {
        curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->resp.status);
      } else {
        t->resp.error = t->errbuf[0] ? t->errbuf : curl_easy_strerror(code);
      }
      completing.push_back(std::move(t));
    }
    for (auto& t : completing) curl_multi_remove_handle(multi, t->easy);
    auto batch = std::move(completing);
    completing.clear();
    completing_now = &batch;
    for (size_t i = 0; i < batch.size(); ++i) {
      Transfer& t = *batch[i];
      if (t.cancelled) continue;
      if (t.streaming && !t.pending.empty() && t.data) {
        std::string chunk = std::move(t.pending);
        t.data(chunk);
        if (guard.expired()) return;
      }
      if (t.done && !t.cancelled) t.done(t.resp);
      if (guard.expired()) return;
    }
    completing_now = nullptr;
  }

  Id start(HttpRequest& req, bool streaming, Callback<void(std::string_view)> data,
           Callback<void(HttpResponse&)> done) {
    auto t = std::make_unique<Transfer>();
    t->id = ++last_id;
    t->streaming = streaming;
    t->data = std::move(data);
    t->done = std::move(done);
    t->easy = curl_easy_init();
    CURL* e = t->easy;
    curl_easy_setopt(e, CURLOPT_URL, req.url.c_str());
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROXY, "");  // never an http_proxy from the environment
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    if (req.tls) setTls(e, *req.tls);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &Impl::onWrite);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, t.get());
    curl_easy_setopt(e, CURLOPT_PRIVATE, t.get());
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
    if (!req.body.empty() || streaming)
      curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, req.body.c_str());
    t->headers = curl_slist_append(t->headers, "Expect:");  // no 100-continue round trip
    t->headers = curl_slist_append(t->headers, "Content-Type: application/json");
    for (const auto& h : req.headers) t->headers = curl_slist_append(t->headers, h.c_str());
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
    auto ms = [](double s) { return static_cast<long>(TimerWatcher::sane(s) * 1000); };
    if (req.timeout > 0) curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, ms(req.timeout));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, std::max(1L, ms(req.connect_timeout)));
    Id id = t->id;
    transfers->emplace(id, std::move(t));
    curl_multi_add_handle(multi, e);  // starts on the loop (curl sets a 0 s timer)
    return id;
  }
};

Http::Http(Loop& loop) : impl_(std::make_unique<Impl>(loop)) {}
Http::~Http() = default;

Http::Id Http::request(HttpRequest req, Callback<void(HttpResponse&)> done) {
  return impl_->start(req, false, nullptr, std::move(done));
}

Http::Id Http::stream(HttpRequest req, Callback<void(std::string_view)> data,
                      Callback<void(HttpResponse&)> done) {
  return impl_->start(req, true, std::move(data), std::move(done));
}

void Http::cancel(Id id) noexcept {
  auto it = impl_->transfers->find(id);
  if (it == impl_->transfers->end()) {
    if (impl_->completing_now)
      for (auto& t : *impl_->completing_now)
        if (t->id == id) t->cancelled = true;
    return;
  }
  curl_multi_remove_handle(impl_->multi, it->second->easy);
  impl_->dead.push_back(std::move(it->second));
  impl_->transfers->erase(it);
}

size_t Http::active() const noexcept { return impl_->transfers->size(); }

}  // namespace aiorpc::core
