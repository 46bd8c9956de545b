// File: engine/dkim/opendkim_signer.cc
// The opendkim engine: libopendkim 2.11 (Debian's libopendkim11) behind the Signer interface.
// It is the reference the native engine is tested against, and a fallback. libopendkim keeps
// the key as PEM text and parses it for every message (deps.md: ~1k RSA / 2.3k Ed25519
// signatures/s per process), which is why native is the default.
// libopendkim takes the signature time from a library-wide option (DKIM_OPTS_FIXEDTIME), so each
// signing borrows a whole DKIM_LIB from a small free list: nothing is shared between threads
// that sign at once, and t= comes from our clock.
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "engine/base/status.h"
#include "engine/dkim/signer.h"

// dkim.h uses C99 _Bool and includes <stdbool.h> only under HAVE_STDBOOL_H (deps.md).
#define _Bool bool
#include <dkim.h>
#undef _Bool

namespace facteur::dkim {
namespace {

struct LibDeleter {
  void operator()(DKIM_LIB* lib) const { dkim_close(lib); }
};
using Lib = std::unique_ptr<DKIM_LIB, LibDeleter>;

struct DkimDeleter {
  void operator()(DKIM* dkim) const { dkim_free(dkim); }
};
using Handle = std::unique_ptr<DKIM, DkimDeleter>;

// NULL-terminated array of C strings for dkim_options(); the strings outlive the call.
std::vector<const char*> CArray(const std::vector<std::string>& names) {
  std::vector<const char*> out;
  for (const std::string& n : names) out.push_back(n.c_str());
  out.push_back(nullptr);
  return out;
}

absl::StatusOr<Lib> NewLib() {
  Lib lib(dkim_init(nullptr, nullptr));
  if (lib == nullptr) return absl::InternalError("dkim_init failed");
  // Our own lines always end in CRLF; FIXCRLF only makes libopendkim add the CRLF a body
  // without a final one lacks (RFC 6376 §3.4.4) instead of refusing it.
  unsigned int flags = DKIM_LIBFLAGS_FIXCRLF;
  std::vector<const char*> sign = CArray(SignedHeaderNames());
  std::vector<const char*> oversign = CArray(OversignedHeaderNames());
  const char** sign_ptr = sign.data();
  const char** oversign_ptr = oversign.data();
  if (dkim_options(lib.get(), DKIM_OP_SETOPT, DKIM_OPTS_FLAGS, &flags, sizeof(flags)) !=
          DKIM_STAT_OK ||
      dkim_options(lib.get(), DKIM_OP_SETOPT, DKIM_OPTS_SIGNHDRS, sign_ptr, sizeof(sign_ptr)) !=
          DKIM_STAT_OK ||
      dkim_options(lib.get(), DKIM_OP_SETOPT, DKIM_OPTS_OVERSIGNHDRS, oversign_ptr,
                   sizeof(oversign_ptr)) != DKIM_STAT_OK) {
    return absl::InternalError("dkim_options failed");
  }
  return lib;
}

class OpenDkimSigner final : public Signer {
 public:
  const char* engine_name() const override { return "opendkim"; }

  absl::StatusOr<std::string> Sign(const SigningKey& key, std::string_view message,
                                   const mail::HeaderSection& section,
                                   absl::Time now) const override {
    FACTEUR_ASSIGN_OR_RETURN(Lib lib, Acquire());
    absl::StatusOr<std::string> result = SignWith(lib.get(), key, message, section, now);
    Release(std::move(lib));
    return result;
  }

 private:
  absl::StatusOr<std::string> SignWith(DKIM_LIB* lib, const SigningKey& key,
                                       std::string_view message,
                                       const mail::HeaderSection& section, absl::Time now) const {
    uint64_t fixed_time = static_cast<uint64_t>(absl::ToUnixSeconds(now));
    if (dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_FIXEDTIME, &fixed_time,
                     sizeof(fixed_time)) != DKIM_STAT_OK) {
      return absl::InternalError("dkim_options(FIXEDTIME) failed");
    }
    DKIM_STAT status = DKIM_STAT_OK;
    const dkim_alg_t algorithm = key.key->algorithm() == DkimAlgorithm::kEd25519Sha256
                                     ? DKIM_SIGN_ED25519SHA256
                                     : DKIM_SIGN_RSASHA256;
    Handle dkim(dkim_sign(lib, reinterpret_cast<const unsigned char*>("facteur"), nullptr,
                          reinterpret_cast<dkim_sigkey_t>(const_cast<char*>(key.key->pem().c_str())),
                          reinterpret_cast<const unsigned char*>(key.selector.c_str()),
                          reinterpret_cast<const unsigned char*>(key.domain.c_str()),
                          DKIM_CANON_RELAXED, DKIM_CANON_RELAXED, algorithm, -1, &status));
    if (dkim == nullptr) return Failure("dkim_sign", status, nullptr);
    std::string field;
    for (const mail::HeaderField& f : section.fields) {
      // One field without its final CRLF, folding kept.
      field.assign(f.raw.data(), f.raw.size());
      if (field.size() >= 2 && field.compare(field.size() - 2, 2, "\r\n") == 0) field.resize(field.size() - 2);
      status = dkim_header(dkim.get(), reinterpret_cast<u_char*>(field.data()), field.size());
      if (status != DKIM_STAT_OK) return Failure("dkim_header", status, dkim.get());
    }
    status = dkim_eoh(dkim.get());
    if (status != DKIM_STAT_OK) return Failure("dkim_eoh", status, dkim.get());
    if (section.body_offset < message.size()) {
      std::string_view body = message.substr(section.body_offset);
      status = dkim_body(dkim.get(), reinterpret_cast<u_char*>(const_cast<char*>(body.data())),
                         body.size());
      if (status != DKIM_STAT_OK) return Failure("dkim_body", status, dkim.get());
    }
    status = dkim_eom(dkim.get(), nullptr);
    if (status != DKIM_STAT_OK) return Failure("dkim_eom", status, dkim.get());
    unsigned char* value = nullptr;
    size_t length = 0;
    status = dkim_getsighdr_d(dkim.get(), std::strlen(DKIM_SIGNHEADER) + 2, &value, &length);
    if (status != DKIM_STAT_OK) return Failure("dkim_getsighdr_d", status, dkim.get());
    // Folded with bare LFs (deps.md): a message's lines end in CRLF.
    std::string out = absl::StrCat(DKIM_SIGNHEADER, ": ");
    out.reserve(out.size() + length + 16);
    for (size_t i = 0; i < length; ++i) {
      char c = static_cast<char>(value[i]);
      if (c == '\n' && (i == 0 || value[i - 1] != '\r')) out.push_back('\r');
      out.push_back(c);
    }
    out.append("\r\n");
    return out;
  }

  static absl::Status Failure(const char* call, DKIM_STAT status, DKIM* dkim) {
    const char* detail = dkim != nullptr ? dkim_geterror(dkim) : nullptr;
    return absl::InternalError(absl::StrCat("libopendkim ", call, ": ", dkim_getresultstr(status),
                                            detail != nullptr ? absl::StrCat(" (", detail, ")")
                                                              : std::string()));
  }

  absl::StatusOr<Lib> Acquire() const {
    {
      absl::MutexLock lock(&mutex_);
      if (!free_.empty()) {
        Lib lib = std::move(free_.back());
        free_.pop_back();
        return lib;
      }
    }
    return NewLib();
  }

  void Release(Lib lib) const {
    absl::MutexLock lock(&mutex_);
    free_.push_back(std::move(lib));
  }

  mutable absl::Mutex mutex_;
  // Libraries not in use; at most as many as threads ever signed at once.
  mutable std::vector<Lib> free_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<Signer>> MakeOpenDkimSigner() {
  // Fail at startup, not on the first message, when the library cannot be set up.
  FACTEUR_RETURN_IF_ERROR(NewLib().status());
  return std::make_unique<OpenDkimSigner>();
}

}  // namespace facteur::dkim
