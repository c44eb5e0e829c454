// TLS test material: test/support/make_certs.sh run once per test process into a temporary
// folder (removed at exit). Needs AIORPC_SOURCE_DIR (test/meson.build defines it).
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>

#include "aiorpc/core/tls.h"

namespace aiorpc::test {

inline const std::string& certDir() {
  static const struct Dir {
    std::string path = std::string(std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp") +
                       "/aiorpc-tls-test-" + std::to_string(::getpid());
    Dir() {
      std::string cmd = std::string(AIORPC_SOURCE_DIR) + "/test/support/make_certs.sh " + path;
      if (std::system(cmd.c_str()) != 0) throw std::runtime_error("make_certs.sh failed");
    }
    ~Dir() { (void)std::system(("rm -rf " + path).c_str()); }
  } dir;
  return dir.path;
}

inline std::string certFile(const std::string& name) { return certDir() + "/" + name; }

// A context of `side` from make_certs.sh's files: `leaf` (.pem/.key, "" for none) and `ca`
// ("" for none: a client then uses the system's store).
inline std::shared_ptr<core::TlsContext> tlsContext(core::TlsContext::Side side,
                                                    const std::string& leaf,
                                                    const std::string& ca) {
  core::TlsFiles f;
  if (!leaf.empty()) f.cert = certFile(leaf + ".pem"), f.key = certFile(leaf + ".key");
  if (!ca.empty()) f.ca = certFile(ca);
  std::string error;
  auto c = core::TlsContext::make(side, f, error);
  if (!c) throw std::runtime_error("TLS context: " + error);
  return c;
}

}  // namespace aiorpc::test
