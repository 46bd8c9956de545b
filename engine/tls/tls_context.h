// File: engine/tls/tls_context.h
// TlsServerContext owns one OpenSSL SSL_CTX configured with the server policy: TLS 1.2 minimum,
// the server's cipher preference, no compression, no renegotiation, session tickets allowed.
// It loads a certificate chain and key from PEM files, or makes (once) and reloads a
// self-signed pair for a host name. Loading reads files: call it at startup or on a worker
// pool, never on a ring thread (STYLE.md rule 3). A reload (SIGHUP) swaps in a whole new
// SSL_CTX: connections accepted afterwards present the new certificate, sessions already open
// keep the one they started with (each SSL holds a reference to its SSL_CTX).
// Thread contract: thread-safe. current() may be called from every shard (SSL_CTX is
// internally synchronised for SSL_new and the session cache); Reload*() from the controlling
// thread, while the shards take current() under a mutex held only to copy a shared_ptr.
#pragma once

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

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

  // The SSL_CTX new connections use now. Shared by this context and whoever holds the copy
  // (TlsEngine::NewServer holds it only for SSL_new, which takes its own reference).
  std::shared_ptr<SSL_CTX> current() const;

  // Loads `cert_pem_path` and `key_pem_path` into a new SSL_CTX and, if they load and match,
  // makes it current. On any error the current one stays and the error says why.
  absl::Status ReloadFromFiles(const std::string& cert_pem_path, const std::string& key_pem_path);

 private:
  explicit TlsServerContext(std::shared_ptr<SSL_CTX> ctx) : ctx_(std::move(ctx)) {}

  mutable absl::Mutex mutex_;
  std::shared_ptr<SSL_CTX> ctx_ ABSL_GUARDED_BY(mutex_);  // freed with SSL_CTX_free
};

}  // namespace facteur::tls
