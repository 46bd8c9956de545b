// File: engine/tls/tls_client_context.h
// TlsClientContext owns the OpenSSL SSL_CTX of outbound connections: TLS 1.2 minimum, the
// system trust store (plus an extra CA file, e.g. a private smarthost's or a test server's),
// no compression. Whether a given connection verifies the peer is decided per connection
// (TlsEngine::NewClient's `verify_peer`), because the policy is per destination domain.
// Loading reads files: at startup only. The system store is read whole here (the CA bundle
// file), not looked up lazily in a hashed directory, so that no handshake reads a file.
// Thread contract: immutable after construction; shared by the TlsEngines of every shard.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"

typedef struct ssl_ctx_st SSL_CTX;

namespace facteur::tls {

class TlsClientContext {
 public:
  // `extra_ca_file`: PEM certificates trusted besides the system store; "" for none.
  static absl::StatusOr<std::unique_ptr<TlsClientContext>> Create(const std::string& extra_ca_file);
  ~TlsClientContext();
  TlsClientContext(const TlsClientContext&) = delete;
  TlsClientContext& operator=(const TlsClientContext&) = delete;

  SSL_CTX* native() const { return ctx_; }

 private:
  explicit TlsClientContext(SSL_CTX* ctx) : ctx_(ctx) {}
  SSL_CTX* ctx_;  // owned
};

}  // namespace facteur::tls
