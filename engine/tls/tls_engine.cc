#include "engine/tls/tls_engine.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <climits>

#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status.h"
#include "engine/tls/tls_context.h"
#include "engine/tls/tls_error.h"

namespace facteur::tls {
namespace {

bool IsIpLiteral(const std::string& name) {
  unsigned char buffer[sizeof(in6_addr)];
  return inet_pton(AF_INET, name.c_str(), buffer) == 1 ||
         inet_pton(AF_INET6, name.c_str(), buffer) == 1;
}

}  // namespace

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
  // SSL_new takes its own reference: the session keeps this SSL_CTX after a reload swaps it.
  SSL* ssl = SSL_new(context.current().get());
  if (ssl == nullptr) return OpenSslStatus("SSL_new");
  SSL_set_accept_state(ssl);
  return Wrap(ssl);
}

absl::StatusOr<std::unique_ptr<TlsEngine>> TlsEngine::NewClient(SSL_CTX* ctx,
                                                                const std::string& server_name,
                                                                bool verify_peer) {
  // A name from DNS may carry the root's trailing dot; neither SNI (RFC 6066 §3) nor the
  // certificate's names do.
  std::string name = server_name;
  if (!name.empty() && name.back() == '.') name.pop_back();
  if (verify_peer && name.empty()) {
    return absl::InvalidArgumentError("TLS: verifying the peer needs a server name");
  }
  ClearOpenSslErrors();
  SSL* ssl = SSL_new(ctx);
  if (ssl == nullptr) return OpenSslStatus("SSL_new");
  auto fail = [ssl](std::string_view operation) {
    SSL_free(ssl);
    return OpenSslStatus(operation);
  };
  if (!name.empty()) {
    // The name is checked even when verification is not required, so that info() can tell
    // a verified session from an opportunistic one.
    if (IsIpLiteral(name)) {
      // RFC 6066 §3: no SNI for an address; the certificate must name it in an iPAddress SAN.
      if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name.c_str()) != 1) {
        return fail("X509_VERIFY_PARAM_set1_ip_asc");
      }
    } else {
      if (SSL_set_tlsext_host_name(ssl, name.c_str()) != 1) return fail("SSL_set_tlsext_host_name");
      if (SSL_set1_host(ssl, name.c_str()) != 1) return fail("SSL_set1_host");
      // RFC 6125 §7.2: a wildcard is the whole left-most label or nothing.
      SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    }
  }
  SSL_set_verify(ssl, verify_peer ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nullptr);
  SSL_set_connect_state(ssl);
  FACTEUR_ASSIGN_OR_RETURN(std::unique_ptr<TlsEngine> engine, Wrap(ssl));
  engine->verify_name_ = std::move(name);
  engine->verify_peer_ = verify_peer;
  return engine;
}

absl::Status TlsEngine::WithVerifyReason(absl::Status status) const {
  if (!verify_peer_) return status;
  long result = SSL_get_verify_result(ssl_);
  if (result == X509_V_OK) return status;
  std::string reason = X509_verify_cert_error_string(result);
  if (result == X509_V_ERR_HOSTNAME_MISMATCH || result == X509_V_ERR_IP_ADDRESS_MISMATCH) {
    absl::StrAppend(&reason, " (expected ", verify_name_, ")");
  }
  return absl::Status(status.code(),
                      absl::StrCat(status.message(), "; peer certificate: ", reason));
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
  return WithVerifyReason(OpenSslStatus("TLS handshake", absl::StatusCode::kUnavailable));
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
  // OpenSSL verifies the chain and the name even under SSL_VERIFY_NONE and keeps the result.
  info.peer_verified = !verify_name_.empty() && handshake_done_ &&
                       SSL_get0_peer_certificate(ssl_) != nullptr &&
                       SSL_get_verify_result(ssl_) == X509_V_OK;
  return info;
}

}  // namespace facteur::tls
