// Test helpers on loopback: a port whose connects hang.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <vector>

namespace aiorpc::test {

// A loopback port whose connects hang: a listener with a full backlog that never accepts.
struct Hanging {
  int fd = -1;
  std::vector<int> fillers;
  int port = 0;
  Hanging() {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 0) != 0) return;
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
    for (int i = 0; i < 4; ++i) {  // fill the accept queue (backlog 0 holds one or two)
      int c = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
      (void)::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a);
      fillers.push_back(c);
    }
  }
  ~Hanging() {
    for (int c : fillers) ::close(c);
    ::close(fd);
  }
  Hanging(const Hanging&) = delete;
  Hanging& operator=(const Hanging&) = delete;
};

}  // namespace aiorpc::test
