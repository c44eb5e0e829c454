// The reference ceiling: a minimal epoll byte-echo server (no parsing, no framework).
// Usage: epoll_echo PORT   (prints "listening on 127.0.0.1:PORT")
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(argc > 1 ? std::atoi(argv[1]) : 0));
  if (bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a) || listen(ls, 1024))
    return perror("bind"), 2;
  socklen_t len = sizeof a;
  getsockname(ls, reinterpret_cast<sockaddr*>(&a), &len);
  std::printf("listening on 127.0.0.1:%d\n", ntohs(a.sin_port));
  std::fflush(stdout);
  int ep = epoll_create1(0);
  epoll_event ev{EPOLLIN, {.fd = ls}};
  epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
  std::unordered_map<int, std::string> pending;  // bytes the kernel refused
  static char buf[256 * 1024];
  epoll_event evs[256];
  for (;;) {
    int n = epoll_wait(ep, evs, 256, -1);
    for (int i = 0; i < n; ++i) {
      int fd = evs[i].data.fd;
      if (fd == ls) {
        int c;
        while ((c = accept4(ls, nullptr, nullptr, SOCK_NONBLOCK)) >= 0) {
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          epoll_event ce{EPOLLIN, {.fd = c}};
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
        }
        continue;
      }
      std::string& out = pending[fd];
      if (!out.empty()) {
        ssize_t w = write(fd, out.data(), out.size());
        if (w > 0) out.erase(0, static_cast<size_t>(w));
        if (out.empty()) {
          epoll_event ce{EPOLLIN, {.fd = fd}};
          epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ce);
        }
        continue;
      }
      ssize_t r = read(fd, buf, sizeof buf);
      if (r <= 0) {
        if (r < 0 && errno == EAGAIN) continue;
        close(fd);
        pending.erase(fd);
        continue;
      }
      ssize_t w = write(fd, buf, static_cast<size_t>(r));
      if (w < r) {
        out.assign(buf + (w > 0 ? w : 0), static_cast<size_t>(r - (w > 0 ? w : 0)));
        epoll_event ce{EPOLLOUT, {.fd = fd}};
        epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ce);
      }
    }
  }
}
