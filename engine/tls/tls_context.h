// File: engine/tls/tls_context.h
// TlsServerContext owns one OpenSSL SSL_CTX configured with the server policy: TLS 1.2 minimum,
// the server's cipher preference, no compression, no renegotiation, session tickets allowed.
// It loads a certificate chain and key from PEM files, or makes (once) and reloads a
// self-signed pair for a host name. Loading reads files: call it at startup or on a worker
// pool, never on a ring thread (STYLE.md rule 3).
// Thread contract: immutable after construction; native() may be shared by TlsEngines on
// every shard (SSL_CTX is internally synchronised for SSL_new and the session cache).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"

typedef struct ssl_ctx_st SSL_CTX;

namespace facteur::tls {

class TlsServerContext {
 public:
  // Loads `cert_pem_path` (leaf first, then the chain) and its private key.
  static absl::StatusOr<std::unique_ptr<TlsServerContext>> FromFiles(
      const std::string& cert_pem_path, const std::string& key_pem_path);

  // Loads dir/cert.pem and dir/key.pem if both exist; otherwise creates `dir` (0700), makes an
  // EC P-256 key (written 0600) and a self-signed certificate valid 10 years whose CN and
  // subjectAltName DNS are `hostname`, then loads them. The same dir gives the same cert.
  static absl::StatusOr<std::unique_ptr<TlsServerContext>> SelfSigned(
      const std::string& dir, const std::string& hostname);

  ~TlsServerContext();
  TlsServerContext(const TlsServerContext&) = delete;
  TlsServerContext& operator=(const TlsServerContext&) = delete;

  // Borrowed; valid as long as this context.
  SSL_CTX* native() const { return ctx_; }

 private:
  explicit TlsServerContext(SSL_CTX* ctx) : ctx_(ctx) {}
  SSL_CTX* ctx_;  // owned
};

}  // namespace facteur::tls
