// Listener: accept loop and EMFILE/ENFILE handling (libev's "special problem of accept()ing").
#include "aiorpc/core/listener.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "aiorpc/core/log.h"
#include "aiorpc/core/platform.h"

namespace aiorpc::core {

Listener::Listener(Loop& loop, Callback<void(Fd, const Address&)> on_accept)
    : loop_(loop), on_accept_(std::move(on_accept)) {
  io_.bind<&Listener::onReadable>(loop.raw(), this);
}

Listener::~Listener() { stop(); }

namespace {
// May `addr`'s path be bound? Missing: yes. A socket nobody listens on (a crashed server's):
// yes, after unlinking it. Anything else: the error to report.
std::error_code claimUnixPath(const Address& addr) {
  std::string path = addr.host();
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return {};
  if (!S_ISSOCK(st.st_mode)) return sysError(EEXIST);  // never delete a user's file
  auto probe = newSocket(AF_UNIX);
  if (!probe) return probe.error();
  int r = ::connect(probe.value().get(), addr.sockaddr_ptr(), addr.length());
  if (r == 0 || errno == EAGAIN || errno == EINPROGRESS) return sysError(EADDRINUSE);  // alive
  if (errno != ECONNREFUSED) return sysError(errno);
  ::unlink(path.c_str());  // stale
  return {};
}
}  // namespace

Result<Address> Listener::listen(const Address& addr, int backlog) {
  stop();
  auto s = newSocket(addr.family());
  if (!s) return s.error();
  Fd fd = std::move(s.value());
  int one = 1;
  if (addr.isUnix()) {
    if (auto ec = claimUnixPath(addr)) return ec;
  } else {
    (void)::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  }
  if (::bind(fd.get(), addr.sockaddr_ptr(), addr.length()) != 0) return sysError(errno);
  if (::listen(fd.get(), backlog) != 0) return sysError(errno);
  bound_ = addr.isUnix() ? addr : localAddress(fd.get());
  if (addr.isUnix()) {
    struct stat st {};
    if (::lstat(addr.host().c_str(), &st) == 0) unix_dev_ = st.st_dev, unix_ino_ = st.st_ino;
  }
  fd_ = std::move(fd);
  reserve_ = Fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  io_.set(fd_.get(), EV_READ);
  io_.start();
  return bound_;
}

void Listener::stop() noexcept {
  io_.stop();
  if (fd_ && bound_.isUnix()) {
    // Only our own socket file: another server may have replaced it meanwhile.
    struct stat st {};
    std::string path = bound_.host();
    if (::lstat(path.c_str(), &st) == 0 && st.st_dev == unix_dev_ && st.st_ino == unix_ino_)
      ::unlink(path.c_str());
  }
  fd_.reset();
}

void Listener::shedOne() noexcept {
  // Out of fds: the pending connection would make the level-triggered watcher spin. Give back
  // the spare fd, accept the peer and close it at once (it sees a clean close), retake the spare.
  reserve_.reset();
  int c = ::accept(fd_.get(), nullptr, nullptr);
  if (c >= 0) ::close(c);
  reserve_ = Fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (loop_.now() - last_emfile_log_ >= 1.0) {
    last_emfile_log_ = loop_.now();
    log::error("accept: out of file descriptors; shedding connections ({} so far)", accept_errors_);
  }
}

void Listener::onReadable(int) noexcept {
  // Bounded per wake-up so one busy listener cannot starve established connections.
  for (int i = 0; i < 64 && fd_; ++i) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    int c = platform::acceptStream(fd_.get(), reinterpret_cast<sockaddr*>(&ss), &len);
    if (c < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      ++accept_errors_;
      if (errno == EMFILE || errno == ENFILE) {
        shedOne();
        continue;
      }
      log::warn("accept: {}", sysError(errno).message());
      return;
    }
    Address peer = Address::fromSockaddr(reinterpret_cast<sockaddr*>(&ss), len);
    on_accept_(Fd(c), peer);
  }
}

}  // namespace aiorpc::core
