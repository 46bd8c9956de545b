// File: engine/dkim/signer.h
// One interface for making a DKIM-Signature (RFC 6376), with two engines behind it:
//   native   — canonicalisation, body hash and header hash here, the signature by OpenSSL EVP on
//              a key parsed once at load (fast: see bench/dkim);
//   opendkim — libopendkim 2.11, the reference, which parses the key again for every message.
// Both sign relaxed/relaxed, no l=, the header fields of SignedHeaderNames() that the message
// has (RFC 6376 §5.4) plus one more instance of each OversignedHeaderName() so that no such
// field can be added after signing (§8.15), t= from the caller's clock, and fold the field the
// way libopendkim does: given the same key, message and time both produce the same bytes
// (RSA PKCS#1 v1.5 and Ed25519 signatures are deterministic), which the differential test checks.
// Thread contract: a Signer is immutable after construction; Sign() may run on many threads
// at once.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/config/config.h"
#include "engine/dkim/key.h"
#include "engine/mail/header.h"

namespace facteur::dkim {

// Header fields signed when present: RFC 6376 §5.4.1's list, plus Message-ID, MIME and the
// RFC 8058 one-click List-Unsubscribe-Post. From is required by §5.4.
const std::vector<std::string>& SignedHeaderNames();
// Signed once more than they occur (absent ones once), so none can be added: From, Subject,
// Date, To, Cc, Reply-To, Message-ID, MIME-Version, Content-Type, List-Unsubscribe,
// List-Unsubscribe-Post.
const std::vector<std::string>& OversignedHeaderNames();

// The column where libopendkim folds the field (DKIM_HDRMARGIN).
inline constexpr size_t kFoldMargin = 75;

// What a signature is made with: d=, s= and the key.
struct SigningKey {
  std::string domain;
  std::string selector;
  // Shared by every signing-table snapshot that lists this key (a reload keeps keys in use by
  // signatures in flight alive until they finish).
  std::shared_ptr<const PrivateKey> key;
};

class Signer {
 public:
  virtual ~Signer() = default;
  // "native" or "opendkim", for metrics and logs.
  virtual const char* engine_name() const = 0;
  // The DKIM-Signature field to prepend to `message` (a whole RFC 5322 message with CRLF line
  // ends; `section` is its parsed header section), made with `key` at time `now`:
  // "DKIM-Signature: v=1; a=...\r\n\t...\r\n". Errors: Internal (the crypto library failed),
  // InvalidArgument (a message the engine cannot sign).
  virtual absl::StatusOr<std::string> Sign(const SigningKey& key, std::string_view message,
                                           const mail::HeaderSection& section,
                                           absl::Time now) const = 0;
};

std::unique_ptr<Signer> MakeNativeSigner();
// Internal when libopendkim cannot be initialised.
absl::StatusOr<std::unique_ptr<Signer>> MakeOpenDkimSigner();
absl::StatusOr<std::unique_ptr<Signer>> MakeSigner(config::DkimEngine engine);

// --- Pieces shared by the engines (exposed for tests) ---

// The tag list of a signature, in libopendkim's order, each tag but the last with its ';':
// v=1; a=; c=relaxed/relaxed; d=; s=; t=; bh=; h=; b=.
std::vector<std::string> SignatureTags(const SigningKey& key, absl::Time now,
                                       std::string_view body_hash_base64,
                                       std::string_view header_list,
                                       std::string_view signature_base64);
// Joins `tags` into the value of the field the way libopendkim's dkim_getsighdr_d() folds it:
// tags separated by one space while they fit within `margin` columns, else on a new line
// starting with a tab; h= breaks at colons, bh= and b= at the margin (continuation lines start
// with tab and space); for RSA, b= always starts a new line. `initial` is the width already
// taken on the first line ("DKIM-Signature: " = 16). Line breaks are CRLF.
std::string FoldSignatureTags(const std::vector<std::string>& tags, size_t initial, size_t margin,
                              const PrivateKey& key);

}  // namespace facteur::dkim
