#include "engine/tls/tls_client_context.h"

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/stat.h>

#include <cstdlib>

#include "absl/memory/memory.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/tls/tls_error.h"

namespace facteur::tls {
namespace {

// The system CA bundle: $SSL_CERT_FILE, else OpenSSL's default (Debian: /usr/lib/ssl/cert.pem,
// a link to ca-certificates' /etc/ssl/certs/ca-certificates.crt).
std::string SystemBundlePath() {
  const char* from_env = std::getenv(X509_get_default_cert_file_env());
  return from_env != nullptr && *from_env != '\0' ? from_env : X509_get_default_cert_file();
}

}  // namespace

absl::StatusOr<std::unique_ptr<TlsClientContext>> TlsClientContext::Create(
    const std::string& extra_ca_file) {
  ClearOpenSslErrors();
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr) return OpenSslStatus("SSL_CTX_new");
  auto context = absl::WrapUnique(new TlsClientContext(ctx));
  // RFC 8996 retired TLS 1.0 and 1.1; RFC 7525 §3.1.1 asks for 1.2 at least.
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
    return OpenSslStatus("SSL_CTX_set_min_proto_version");
  }
  // Compression leaks (CRIME); renegotiation is a known injection vector.
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  // Memory BIOs never refuse a write, but keep SSL_write's all-or-nothing contract explicit.
  SSL_CTX_clear_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  // Per connection: TlsEngine::NewClient decides whether a failed verification is fatal.
  SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);

  // First: a bad file fails before the (slower) system bundle is parsed.
  if (!extra_ca_file.empty() && SSL_CTX_load_verify_file(ctx, extra_ca_file.c_str()) != 1) {
    return OpenSslStatus(absl::StrCat("load CA file ", extra_ca_file),
                         absl::StatusCode::kInvalidArgument);
  }
  // The bundle is loaded eagerly. SSL_CTX_set_default_verify_paths() would also add the hashed
  // directory, which OpenSSL searches lazily, reading files during a handshake on a ring
  // thread whenever an issuer is not in memory (STYLE.md rule 3). It remains the fallback on
  // a system without a bundle file.
  std::string bundle = SystemBundlePath();
  struct stat st;
  if (::stat(bundle.c_str(), &st) == 0) {
    if (SSL_CTX_load_verify_file(ctx, bundle.c_str()) != 1) {
      return OpenSslStatus(absl::StrCat("load system CA bundle ", bundle),
                           absl::StatusCode::kInvalidArgument);
    }
  } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
    return OpenSslStatus("SSL_CTX_set_default_verify_paths");
  }
  ClearOpenSslErrors();
  return context;
}

TlsClientContext::~TlsClientContext() { SSL_CTX_free(ctx_); }

}  // namespace facteur::tls
