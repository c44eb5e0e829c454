// Mutual TLS in one process: a server that requires client certificates from a CA, and a
// client that presents one and verifies the server by name (SPEC §8). docs/embedding.md shows
// its lines; test/proc/tls_test.py runs it with certificates from test/support/make_certs.sh.
//
//   mutual_tls CERT-DIR   (ca.pem, server.pem/key, client.pem/key); prints the greeting and
//                         the client certificate's subject as the server saw it, exit 0.
#include <aiorpc/aiorpc.h>

#include <cstdio>
#include <string>

using namespace aiorpc;
using rpc::arg;

int main(int argc, char** argv) {
  if (argc != 2) return std::fprintf(stderr, "usage: mutual_tls CERT-DIR\n"), 64;
  std::string dir = argv[1];
  core::prepareProcess();
  core::Loop loop;

  // The server: every connection on this listener is TLS; clients must present a certificate
  // that chains to ca.pem. Handlers see its subject (ctx("peercert"), ctx.peerCertificate()).
  std::string error;
  auto server_tls = core::TlsContext::make(
      core::TlsContext::Side::kServer,
      {.cert = dir + "/server.pem", .key = dir + "/server.key", .ca = dir + "/ca.pem"}, error);
  if (!server_tls) return std::fprintf(stderr, "server TLS: %s\n", error.c_str()), 2;
  rpc::Service svc{"sample.tls"};
  svc.def(
      "greet",
      [](const rpc::Context& ctx, std::string_view name) {
        return "hello " + std::string(name) + " (" + ctx.peerCertificate() + ")";
      },
      arg("ctx"), arg("name"));
  rpc::Server server{loop, svc};
  auto bound = server.listen("127.0.0.1:0", server_tls);
  if (!bound) return std::fprintf(stderr, "listen: %s\n", bound.error().message().c_str()), 2;

  // The client: verifies the server against ca.pem and the name it dials, and presents its own
  // certificate when asked.
  auto client_tls = core::TlsContext::make(
      core::TlsContext::Side::kClient,
      {.cert = dir + "/client.pem", .key = dir + "/client.key", .ca = dir + "/ca.pem"}, error);
  if (!client_tls) return std::fprintf(stderr, "client TLS: %s\n", error.c_str()), 2;
  rpc::ClientOptions opts;
  opts.tls = client_tls;
  rpc::Client client{loop, "tls://localhost:" + std::to_string(bound->port()), opts};

  int rc = 1;
  auto call = client.call("greet", "ann");
  call.then([&](auto& done) {
    try {
      std::printf("%s\n", std::string(done.get().view().str()).c_str());
      rc = 0;
    } catch (const rpc::RpcError& e) {
      std::fprintf(stderr, "call: %s\n", e.what());
    }
    loop.stop();
  });
  loop.run();
  return rc;
}
