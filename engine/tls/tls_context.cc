#include "engine/tls/tls_context.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/rand.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cerrno>
#include <string>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/memory/memory.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status.h"
#include "engine/tls/tls_error.h"

namespace facteur::tls {
namespace {

constexpr long kTenYearsSeconds = 10L * 365 * 24 * 3600 + 3 * 24 * 3600;

absl::StatusOr<SSL_CTX*> NewServerCtx() {
  ClearOpenSslErrors();
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) return OpenSslStatus("SSL_CTX_new");
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
    SSL_CTX_free(ctx);
    return OpenSslStatus("SSL_CTX_set_min_proto_version");
  }
  // Renegotiation is a known DoS and injection vector; compression leaks (CRIME).
  SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION |
                               SSL_OP_NO_RENEGOTIATION);
  // Memory BIOs never refuse a write, but keep SSL_write's all-or-nothing contract explicit.
  SSL_CTX_clear_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  return ctx;
}

absl::Status Load(const std::string& cert_path, const std::string& key_path, SSL_CTX* ctx) {
  if (SSL_CTX_use_certificate_chain_file(ctx, cert_path.c_str()) != 1) {
    return OpenSslStatus(absl::StrCat("load certificate ", cert_path),
                         absl::StatusCode::kInvalidArgument);
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, key_path.c_str(), SSL_FILETYPE_PEM) != 1) {
    return OpenSslStatus(absl::StrCat("load private key ", key_path),
                         absl::StatusCode::kInvalidArgument);
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    return OpenSslStatus(absl::StrCat("key ", key_path, " does not match ", cert_path),
                         absl::StatusCode::kInvalidArgument);
  }
  return absl::OkStatus();
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// Writes `data` to `path` with `mode`, through a temporary file renamed into place so that a
// crash never leaves half a key behind.
absl::Status WriteFileAtomically(const std::string& path, const std::string& data, mode_t mode) {
  std::string tmp = path + ".tmp";
  ::unlink(tmp.c_str());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) return ErrnoStatus(absl::StrCat("create ", tmp), errno);
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      return ErrnoStatus(absl::StrCat("write ", tmp), e);
    }
    done += static_cast<size_t>(n);
  }
  // The umask may have narrowed `mode`; the key's mode is part of the contract.
  if (::fchmod(fd, mode) != 0 || ::fsync(fd) != 0) {
    int e = errno;
    ::close(fd);
    return ErrnoStatus(absl::StrCat("fchmod/fsync ", tmp), e);
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return ErrnoStatus(absl::StrCat("rename ", tmp), errno);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> BioContents(BIO* bio) {
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  if (len < 0) return OpenSslStatus("BIO_get_mem_data");
  return std::string(data, static_cast<size_t>(len));
}

absl::Status GenerateSelfSigned(const std::string& cert_path, const std::string& key_path,
                                const std::string& hostname) {
  ClearOpenSslErrors();
  EVP_PKEY* key = EVP_EC_gen("P-256");
  if (key == nullptr) return OpenSslStatus("EVP_EC_gen P-256");
  auto free_key = absl::MakeCleanup([key] { EVP_PKEY_free(key); });
  X509* cert = X509_new();
  if (cert == nullptr) return OpenSslStatus("X509_new");
  auto free_cert = absl::MakeCleanup([cert] { X509_free(cert); });

  X509_set_version(cert, 2);  // v3, for subjectAltName
  unsigned char serial_bytes[16];
  if (RAND_bytes(serial_bytes, sizeof(serial_bytes)) != 1) return OpenSslStatus("RAND_bytes");
  serial_bytes[0] &= 0x7f;  // a positive serial (RFC 5280 §4.1.2.2)
  BIGNUM* serial = BN_bin2bn(serial_bytes, sizeof(serial_bytes), nullptr);
  if (serial == nullptr || BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(cert)) == nullptr) {
    BN_free(serial);
    return OpenSslStatus("serial number");
  }
  BN_free(serial);
  X509_gmtime_adj(X509_getm_notBefore(cert), -3600);  // tolerate a peer's clock skew
  X509_gmtime_adj(X509_getm_notAfter(cert), kTenYearsSeconds);
  if (X509_set_pubkey(cert, key) != 1) return OpenSslStatus("X509_set_pubkey");
  X509_NAME* name = X509_get_subject_name(cert);
  if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                 reinterpret_cast<const unsigned char*>(hostname.c_str()), -1, -1,
                                 0) != 1) {
    return OpenSslStatus("X509 subject CN");
  }
  if (X509_set_issuer_name(cert, name) != 1) return OpenSslStatus("X509_set_issuer_name");

  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, cert, cert, nullptr, nullptr, 0);
  std::string san = "DNS:" + hostname;
  const std::pair<int, std::string> extensions[] = {
      {NID_subject_alt_name, san},
      {NID_basic_constraints, "critical,CA:FALSE"},
      {NID_key_usage, "critical,digitalSignature"},
      {NID_ext_key_usage, "serverAuth"},
  };
  for (const auto& [nid, value] : extensions) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, nid, value.c_str());
    if (ext == nullptr) return OpenSslStatus(absl::StrCat("X509 extension ", value));
    int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    if (ok != 1) return OpenSslStatus("X509_add_ext");
  }
  if (X509_sign(cert, key, EVP_sha256()) == 0) return OpenSslStatus("X509_sign");

  BIO* key_bio = BIO_new(BIO_s_mem());
  BIO* cert_bio = BIO_new(BIO_s_mem());
  auto free_bios = absl::MakeCleanup([key_bio, cert_bio] {
    BIO_free(key_bio);
    BIO_free(cert_bio);
  });
  if (key_bio == nullptr || cert_bio == nullptr) return OpenSslStatus("BIO_new");
  if (PEM_write_bio_PrivateKey(key_bio, key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return OpenSslStatus("PEM_write_bio_PrivateKey");
  }
  if (PEM_write_bio_X509(cert_bio, cert) != 1) return OpenSslStatus("PEM_write_bio_X509");
  FACTEUR_ASSIGN_OR_RETURN(std::string key_pem, BioContents(key_bio));
  FACTEUR_ASSIGN_OR_RETURN(std::string cert_pem, BioContents(cert_bio));
  // The key first: a cert without its key would be reloaded as a broken pair.
  FACTEUR_RETURN_IF_ERROR(WriteFileAtomically(key_path, key_pem, 0600));
  FACTEUR_RETURN_IF_ERROR(WriteFileAtomically(cert_path, cert_pem, 0644));
  return absl::OkStatus();
}

}  // namespace

namespace {

// A server SSL_CTX with the pair loaded, owned by the shared_ptr (SSL_CTX_free).
absl::StatusOr<std::shared_ptr<SSL_CTX>> LoadServerCtx(const std::string& cert_pem_path,
                                                       const std::string& key_pem_path) {
  FACTEUR_ASSIGN_OR_RETURN(SSL_CTX * raw, NewServerCtx());
  std::shared_ptr<SSL_CTX> ctx(raw, SSL_CTX_free);
  FACTEUR_RETURN_IF_ERROR(Load(cert_pem_path, key_pem_path, ctx.get()));
  return ctx;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TlsServerContext>> TlsServerContext::FromFiles(
    const std::string& cert_pem_path, const std::string& key_pem_path) {
  FACTEUR_ASSIGN_OR_RETURN(std::shared_ptr<SSL_CTX> ctx,
                           LoadServerCtx(cert_pem_path, key_pem_path));
  return absl::WrapUnique(new TlsServerContext(std::move(ctx)));
}

std::shared_ptr<SSL_CTX> TlsServerContext::current() const {
  absl::MutexLock lock(&mutex_);
  return ctx_;
}

absl::Status TlsServerContext::ReloadFromFiles(const std::string& cert_pem_path,
                                               const std::string& key_pem_path) {
  FACTEUR_ASSIGN_OR_RETURN(std::shared_ptr<SSL_CTX> ctx,
                           LoadServerCtx(cert_pem_path, key_pem_path));
  std::shared_ptr<SSL_CTX> old;
  {
    absl::MutexLock lock(&mutex_);
    old = std::exchange(ctx_, std::move(ctx));
  }
  return absl::OkStatus();  // `old` is freed here, or by the last connection still using it
}

absl::StatusOr<std::unique_ptr<TlsServerContext>> TlsServerContext::SelfSigned(
    const std::string& dir, const std::string& hostname) {
  if (hostname.empty()) return absl::InvalidArgumentError("self-signed TLS: empty hostname");
  std::string cert_path = dir + "/cert.pem";
  std::string key_path = dir + "/key.pem";
  if (!FileExists(cert_path) || !FileExists(key_path)) {
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
      return ErrnoStatus(absl::StrCat("mkdir ", dir), errno);
    }
    FACTEUR_RETURN_IF_ERROR(GenerateSelfSigned(cert_path, key_path, hostname));
  }
  return FromFiles(cert_path, key_path);
}

TlsServerContext::~TlsServerContext() = default;

}  // namespace facteur::tls
