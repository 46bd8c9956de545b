#include "engine/tls/tls_engine.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <climits>

#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "engine/tls/tls_context.h"
#include "engine/tls/tls_error.h"

namespace facteur::tls {

absl::StatusOr<std::unique_ptr<TlsEngine>> TlsEngine::Wrap(SSL* ssl) {
  BIO* rbio = BIO_new(BIO_s_mem());
  BIO* wbio = BIO_new(BIO_s_mem());
  if (rbio == nullptr || wbio == nullptr) {
    BIO_free(rbio);
    BIO_free(wbio);
    SSL_free(ssl);
    return OpenSslStatus("BIO_new(BIO_s_mem)");
  }
  // An empty input BIO means "no data yet" (WANT_READ), not end of file.
  BIO_set_mem_eof_return(rbio, -1);
  SSL_set_bio(ssl, rbio, wbio);
  return absl::WrapUnique(new TlsEngine(ssl, rbio, wbio));
}

absl::StatusOr<std::unique_ptr<TlsEngine>> TlsEngine::NewServer(const TlsServerContext& context) {
  ClearOpenSslErrors();
  SSL* ssl = SSL_new(context.native());
  if (ssl == nullptr) return OpenSslStatus("SSL_new");
  SSL_set_accept_state(ssl);
  return Wrap(ssl);
}

absl::StatusOr<std::unique_ptr<TlsEngine>> TlsEngine::NewClient(SSL_CTX* ctx,
                                                                const std::string& server_name) {
  ClearOpenSslErrors();
  SSL* ssl = SSL_new(ctx);
  if (ssl == nullptr) return OpenSslStatus("SSL_new");
  if (!server_name.empty() && SSL_set_tlsext_host_name(ssl, server_name.c_str()) != 1) {
    SSL_free(ssl);
    return OpenSslStatus("SSL_set_tlsext_host_name");
  }
  SSL_set_connect_state(ssl);
  return Wrap(ssl);
}

TlsEngine::~TlsEngine() { SSL_free(ssl_); }

void TlsEngine::FeedCiphertext(std::string_view bytes) {
  while (!bytes.empty()) {
    int chunk = static_cast<int>(std::min<size_t>(bytes.size(), INT_MAX));
    // A memory BIO grows as needed: BIO_write only fails on allocation failure.
    int n = BIO_write(rbio_, bytes.data(), chunk);
    if (n <= 0) return;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
}

absl::StatusOr<HandshakeProgress> TlsEngine::Handshake() {
  if (handshake_done_) return HandshakeProgress::kDone;
  ClearOpenSslErrors();
  int rc = SSL_do_handshake(ssl_);
  if (rc == 1) {
    handshake_done_ = true;
    return HandshakeProgress::kDone;
  }
  int error = SSL_get_error(ssl_, rc);
  if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
    return HandshakeProgress::kWantMore;
  }
  if (error == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
    return absl::UnavailableError("TLS handshake: unexpected end of stream");
  }
  return OpenSslStatus("TLS handshake", absl::StatusCode::kUnavailable);
}

absl::Status TlsEngine::ReadPlaintext(std::string* out) {
  if (peer_closed_) return absl::OkStatus();
  ClearOpenSslErrors();
  char buffer[16384];
  for (;;) {
    int n = SSL_read(ssl_, buffer, sizeof(buffer));
    if (n > 0) {
      out->append(buffer, static_cast<size_t>(n));
      continue;
    }
    int error = SSL_get_error(ssl_, n);
    switch (error) {
      case SSL_ERROR_WANT_READ:
      case SSL_ERROR_WANT_WRITE:
        return absl::OkStatus();
      case SSL_ERROR_ZERO_RETURN:
        peer_closed_ = true;
        return absl::OkStatus();
      case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0) return absl::UnavailableError("TLS read: unexpected end");
        [[fallthrough]];
      default:
        return OpenSslStatus("TLS read", absl::StatusCode::kUnavailable);
    }
  }
}

absl::Status TlsEngine::WritePlaintext(std::string_view bytes) {
  if (!handshake_done_) return absl::FailedPreconditionError("TLS write before handshake");
  if (shutdown_sent_) return absl::FailedPreconditionError("TLS write after close_notify");
  ClearOpenSslErrors();
  while (!bytes.empty()) {
    int chunk = static_cast<int>(std::min<size_t>(bytes.size(), 1 << 20));
    int n = SSL_write(ssl_, bytes.data(), chunk);
    if (n <= 0) return OpenSslStatus("TLS write", absl::StatusCode::kUnavailable);
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

bool TlsEngine::TakeCiphertext(std::string* out) {
  size_t pending = BIO_ctrl_pending(wbio_);
  if (pending == 0) return false;
  size_t old_size = out->size();
  out->resize(old_size + pending);
  int n = BIO_read(wbio_, out->data() + old_size, static_cast<int>(pending));
  out->resize(old_size + static_cast<size_t>(n > 0 ? n : 0));
  return n > 0;
}

void TlsEngine::Shutdown() {
  if (shutdown_sent_) return;
  shutdown_sent_ = true;
  ClearOpenSslErrors();
  // Without a completed handshake there is no session to close; an alert would only confuse.
  if (handshake_done_) SSL_shutdown(ssl_);
  ClearOpenSslErrors();
}

SessionInfo TlsEngine::info() const {
  SessionInfo info;
  info.version = SSL_get_version(ssl_);
  const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl_);
  if (cipher != nullptr) {
    info.cipher = SSL_CIPHER_get_name(cipher);
    info.bits = SSL_CIPHER_get_bits(cipher, nullptr);
  }
  return info;
}

}  // namespace facteur::tls
