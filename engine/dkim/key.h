// File: engine/dkim/key.h
// DKIM private keys: read once from a PEM file (refused when group or others may read it),
// checked against the algorithm they are declared for (RSA 1024–4096 bits for rsa-sha256,
// Ed25519 for ed25519-sha256, RFC 8463), held as a parsed OpenSSL EVP_PKEY so that signing never
// parses a key again; also key generation and the DNS record that publishes the public half
// (RFC 6376 §3.6.1).
// Thread contract: a PrivateKey is immutable once loaded and shared read-only by every signing
// thread (OpenSSL allows concurrent signing with one EVP_PKEY).
#pragma once

#include <array>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/config/config.h"

typedef struct evp_pkey_st EVP_PKEY;

namespace facteur::dkim {

using config::DkimAlgorithm;

// "rsa-sha256" / "ed25519-sha256": the a= value (RFC 6376 §3.5, RFC 8463 §3).
const char* AlgorithmName(DkimAlgorithm algorithm);

class PrivateKey {
 public:
  ~PrivateKey();
  PrivateKey(const PrivateKey&) = delete;
  PrivateKey& operator=(const PrivateKey&) = delete;

  // Reads `path`. FailedPrecondition naming the file when its mode lets group or others in
  // (a DKIM key lets anyone who holds it sign as the domain); NotFound / PermissionDenied when
  // it cannot be read; InvalidArgument when it is not a PEM private key of `algorithm` (or an
  // RSA key outside 1024–4096 bits).
  static absl::StatusOr<std::unique_ptr<PrivateKey>> LoadFile(const std::string& path,
                                                              DkimAlgorithm algorithm);
  // The same from PEM text (tests, keygen). `origin` names the key in error messages.
  static absl::StatusOr<std::unique_ptr<PrivateKey>> FromPem(std::string pem,
                                                             DkimAlgorithm algorithm,
                                                             std::string origin);
  // A fresh key: RSA of `rsa_bits` bits, or Ed25519 (rsa_bits ignored).
  static absl::StatusOr<std::unique_ptr<PrivateKey>> Generate(DkimAlgorithm algorithm,
                                                              int rsa_bits);

  DkimAlgorithm algorithm() const { return algorithm_; }
  int bits() const { return bits_; }  // RSA modulus size; 256 for Ed25519
  EVP_PKEY* pkey() const { return pkey_; }
  // PKCS#8 PEM, as read or generated (libopendkim takes the key as text).
  const std::string& pem() const { return pem_; }
  const std::string& origin() const { return origin_; }

  // The signature of a SHA-256 `digest` (the header hash): RSASSA-PKCS1-v1_5 with SHA-256
  // (RFC 6376 §3.3.1) or PureEdDSA over the hash (RFC 8463 §3). Thread-safe. Initialised
  // OpenSSL RSA contexts are kept for reuse, so a signature costs what the algorithm costs;
  // Ed25519 signs with libsodium.
  absl::StatusOr<std::string> SignDigest(std::string_view digest) const;

  // The p= value of the DNS record: base64 of the DER SubjectPublicKeyInfo for RSA (RFC 6376
  // §3.6.1), of the raw 32-byte public key for Ed25519 (RFC 8463 §4).
  std::string PublicKeyBase64() const;
  // "v=DKIM1; k=rsa; p=..." / "v=DKIM1; k=ed25519; p=...".
  std::string DnsRecord() const;

 private:
  PrivateKey();

  DkimAlgorithm algorithm_ = DkimAlgorithm::kRsaSha256;
  int bits_ = 0;
  EVP_PKEY* pkey_ = nullptr;  // owned

  // RSA contexts ready to sign with pkey_, not in use; at most one per thread that ever signed
  // at once.
  struct Contexts;
  // Ed25519 only: libsodium's secret key (seed ‖ public key), wiped on destruction.
  std::array<unsigned char, 64> ed25519_secret_{};
  std::unique_ptr<Contexts> contexts_;
  std::string pem_;
  std::string origin_;
};

// The p= value of a DKIM key record ("v=DKIM1; k=rsa; p=MIIB..."), tags parsed per RFC 6376
// §3.6.1 (white space in the value removed); NotFound when the record has no p= tag.
absl::StatusOr<std::string> PublicKeyOfRecord(std::string_view record);

// The most recent OpenSSL error as text, emptying the error queue of this thread.
std::string OpenSslError();

}  // namespace facteur::dkim
