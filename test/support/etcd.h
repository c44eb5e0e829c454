// A real single-member etcd for unit tests: free loopback ports, a temporary data dir, SIGKILL
// and removal at the end. Skips nothing: etcd-server is a test dependency (scripts/install-deps).
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

extern char** environ;

namespace aiorpc::test {

// A port nothing listens on now (bound to 0 and closed).
inline int freePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// Started in the constructor, ready (its client port accepts) when started() is true. A port
// picked free can be taken before etcd binds it (another test's connect, the other build's suite
// running at the same time): etcd then exits, and it is started again on new ports.
class EtcdProcess {
 public:
  EtcdProcess() {
    char tmpl[] = "/tmp/aiorpc-etcd-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    for (int attempt = 0; attempt < 3 && pid_ == 0; ++attempt) {
      spawn(attempt);
      if (pid_ > 0 && !waitReady()) {
        reap();
        pid_ = 0;
      }
    }
  }
  ~EtcdProcess() {
    reap();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  EtcdProcess(const EtcdProcess&) = delete;
  EtcdProcess& operator=(const EtcdProcess&) = delete;
  bool started() const noexcept { return pid_ > 0; }
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(client_); }

 private:
  void spawn(int attempt) {
    client_ = freePort();
    int peer = freePort();
    std::string c = "http://127.0.0.1:" + std::to_string(client_);
    std::string p = "http://127.0.0.1:" + std::to_string(peer);
    std::vector<std::string> args = {"etcd",
                                     "--name=t",
                                     "--data-dir=" + dir_ + "/data" + std::to_string(attempt),
                                     "--listen-client-urls=" + c,
                                     "--advertise-client-urls=" + c,
                                     "--listen-peer-urls=" + p,
                                     "--initial-advertise-peer-urls=" + p,
                                     "--initial-cluster=t=" + p,
                                     "--heartbeat-interval=50",
                                     "--election-timeout=500"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    if (posix_spawnp(&pid_, "etcd", &fa, nullptr, argv.data(), environ) != 0) pid_ = 0;
    posix_spawn_file_actions_destroy(&fa);
  }

  // True once the client port accepts a connection; false if etcd exited or took over 20 s.
  bool waitReady() {
    for (int i = 0; i < 400; ++i) {
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;  // reaped
        return false;
      }
      int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(static_cast<uint16_t>(client_));
      bool up = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
      ::close(fd);
      if (up) return true;
      ::usleep(50 * 1000);
    }
    return false;
  }

  void reap() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  pid_t pid_ = 0;
  std::string dir_;
  int client_ = 0;
};

}  // namespace aiorpc::test
