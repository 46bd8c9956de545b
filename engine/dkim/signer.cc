// File: engine/dkim/signer.cc
// The pieces both engines share (header lists, tags, folding) and the native engine.
#include "engine/dkim/signer.h"

#include <openssl/evp.h>

#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "engine/base/status.h"
#include "engine/dkim/canonicalize.h"

namespace facteur::dkim {

const std::vector<std::string>& SignedHeaderNames() {
  static const auto* names = new std::vector<std::string>{
      "From", "Sender", "Reply-To", "Subject", "Date", "Message-ID", "To", "Cc",
      "MIME-Version", "Content-Type", "Content-Transfer-Encoding", "Content-ID",
      "Content-Description", "Resent-Date", "Resent-From", "Resent-Sender", "Resent-To",
      "Resent-Cc", "Resent-Message-ID", "In-Reply-To", "References", "List-Id", "List-Help",
      "List-Unsubscribe", "List-Subscribe", "List-Post", "List-Owner", "List-Archive",
      "List-Unsubscribe-Post"};
  return *names;
}

const std::vector<std::string>& OversignedHeaderNames() {
  static const auto* names = new std::vector<std::string>{
      "From", "Subject", "Date", "To", "Cc", "Reply-To", "Message-ID", "MIME-Version",
      "Content-Type", "List-Unsubscribe", "List-Unsubscribe-Post"};
  return *names;
}

std::vector<std::string> SignatureTags(const SigningKey& key, absl::Time now,
                                       std::string_view body_hash_base64,
                                       std::string_view header_list,
                                       std::string_view signature_base64) {
  return {"v=1;",
          absl::StrCat("a=", AlgorithmName(key.key->algorithm()), ";"),
          "c=relaxed/relaxed;",
          absl::StrCat("d=", key.domain, ";"),
          absl::StrCat("s=", key.selector, ";"),
          absl::StrCat("t=", absl::ToUnixSeconds(now), ";"),
          absl::StrCat("bh=", ToAbsl(body_hash_base64), ";"),
          absl::StrCat("h=", ToAbsl(header_list), ";"),
          absl::StrCat("b=", ToAbsl(signature_base64))};
}

std::string FoldSignatureTags(const std::vector<std::string>& tags, size_t initial, size_t margin,
                              const PrivateKey& key) {
  // A transcription of libopendkim 2.11's dkim_getsighdr_d(): same decisions, same columns.
  std::string out;
  size_t len = initial;
  bool first = true;
  for (const std::string& pv : tags) {
    const size_t equals = pv.find('=');
    const std::string_view which = std::string_view(pv).substr(0, equals);
    bool forcewrap = false;
    if (key.algorithm() == DkimAlgorithm::kRsaSha256 && which == "b") {
      const size_t signature_chars = ((static_cast<size_t>(key.bits()) / 8 + 2) / 3) * 4;
      forcewrap = len + which.size() + signature_chars + 1 >= margin;
    }
    if (len == 0 || first) {
      out.append(pv);
      len += pv.size();
      first = false;
    } else if (forcewrap || len + pv.size() > margin) {
      out.append("\r\n\t");
      len = 8;
      if (which == "h") {  // break at colons
        bool ifirst = true;
        for (absl::string_view name : absl::StrSplit(pv, ':', absl::SkipEmpty())) {
          if (ifirst) {
            out.append(name.data(), name.size());
            len += name.size();
            ifirst = false;
          } else if (len + name.size() + 1 > margin) {
            out.append(":\r\n\t ");
            len = 9;
            out.append(name.data(), name.size());
            len += name.size();
          } else {
            out.push_back(':');
            out.append(name.data(), name.size());
            len += 1 + name.size();
          }
        }
      } else if (which == "b" || which == "bh") {  // break at the margin
        const size_t offset = which.size() + 1;
        out.append(pv, 0, offset);
        len += offset;
        size_t x = offset;
        if (x < pv.size()) {
          out.push_back(pv[x++]);
        }
        ++len;
        while (x < pv.size()) {
          if (margin == len) {
            out.append("\r\n\t ");
            len = 9;
          }
          const size_t n = std::min(margin > len ? margin - len : pv.size(), pv.size() - x);
          out.append(pv, x, n);
          x += n;
          len += n;
        }
      } else {  // break at the delimiter only
        out.append(pv);
        len += pv.size();
      }
    } else {
      out.push_back(' ');
      out.append(pv);
      len += 1 + pv.size();
    }
  }
  return out;
}

namespace {

constexpr absl::string_view kFieldName = "DKIM-Signature: ";

std::string Base64(const unsigned char* data, size_t size) {
  std::string out(4 * ((size + 2) / 3), '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), data,
                          static_cast<int>(size));
  out.resize(n < 0 ? 0 : static_cast<size_t>(n));
  return out;
}

struct MdCtxDeleter {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
using MdCtx = std::unique_ptr<EVP_MD_CTX, MdCtxDeleter>;

std::string_view TrimmedName(std::string_view name) {
  while (!name.empty() && (name.back() == ' ' || name.back() == '\t')) name.remove_suffix(1);
  return name;
}

// The position of `name` in SignedHeaderNames() (case-insensitive), or -1.
int SignedNameIndex(std::string_view name) {
  const std::vector<std::string>& names = SignedHeaderNames();
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i].size() == name.size() && absl::EqualsIgnoreCase(ToAbsl(name), names[i])) {
      return static_cast<int>(i);
    }
  }
  return -1;
}

class NativeSigner final : public Signer {
 public:
  NativeSigner() : sha256_(EVP_MD_fetch(nullptr, "SHA256", nullptr)) {}
  ~NativeSigner() override { EVP_MD_free(sha256_); }

  const char* engine_name() const override { return "native"; }

  absl::StatusOr<std::string> Sign(const SigningKey& key, std::string_view message,
                                   const mail::HeaderSection& section,
                                   absl::Time now) const override {
    if (sha256_ == nullptr) return absl::InternalError("SHA-256 is not available");
    MdCtx md(EVP_MD_CTX_new());
    if (md == nullptr) return absl::ResourceExhaustedError("EVP_MD_CTX_new");

    // Body hash (RFC 6376 §3.7), relaxed body.
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_size = 0;
    if (EVP_DigestInit_ex(md.get(), sha256_, nullptr) != 1) return Failure("digest init");
    const std::string_view body =
        section.body_offset < message.size() ? message.substr(section.body_offset) : "";
    CanonicalizeBody(Canonicalization::kRelaxed, body, [&md](std::string_view piece) {
      EVP_DigestUpdate(md.get(), piece.data(), piece.size());
    });
    if (EVP_DigestFinal_ex(md.get(), digest, &digest_size) != 1) return Failure("digest");
    const std::string body_hash = Base64(digest, digest_size);

    // h=: the signed fields in message order, then the over-signed names once more.
    // Each h= name takes the last instance not yet used (RFC 6376 §5.4.2): the instances of
    // each signed name are chained from the last one back (`previous`), and taking one moves
    // the name's head down its chain; names with no instance left add nothing.
    const std::vector<std::string>& signed_names = SignedHeaderNames();
    std::vector<int> head(signed_names.size(), -1);
    std::vector<int> previous(section.fields.size(), -1);
    std::vector<int> order;  // name indexes in h= order
    std::string header_list;
    for (size_t i = 0; i < section.fields.size(); ++i) {
      const std::string_view name = TrimmedName(section.fields[i].name);
      const int index = SignedNameIndex(name);
      if (index < 0) continue;
      previous[i] = head[index];
      head[index] = static_cast<int>(i);
      order.push_back(index);
      if (!header_list.empty()) header_list.push_back(':');
      header_list.append(name);
    }
    for (const std::string& name : OversignedHeaderNames()) {
      order.push_back(SignedNameIndex(name));
      if (!header_list.empty()) header_list.push_back(':');
      header_list.append(name);
    }

    // Header hash (§3.7), then this field with an empty b=, without its CRLF.
    if (EVP_DigestInit_ex(md.get(), sha256_, nullptr) != 1) return Failure("digest init");
    std::string canonical;
    canonical.reserve(section.body_offset + 1024);
    for (int index : order) {
      const int field = head[index];
      if (field < 0) continue;
      AppendCanonicalHeader(Canonicalization::kRelaxed, section.fields[field].raw, true,
                            &canonical);
      head[index] = previous[field];
    }
    std::vector<std::string> tags = SignatureTags(key, now, body_hash, header_list, "");
    std::string unsigned_field = absl::StrCat(
        kFieldName, FoldSignatureTags(tags, kFieldName.size(), kFoldMargin, *key.key));
    AppendCanonicalHeader(Canonicalization::kRelaxed, unsigned_field, false, &canonical);
    if (EVP_DigestUpdate(md.get(), canonical.data(), canonical.size()) != 1 ||
        EVP_DigestFinal_ex(md.get(), digest, &digest_size) != 1) {
      return Failure("digest");
    }

    // The signature over the header hash (RFC 6376 §3.7, RFC 8463 §3).
    FACTEUR_ASSIGN_OR_RETURN(
        std::string signature,
        key.key->SignDigest(std::string_view(reinterpret_cast<const char*>(digest), digest_size)));
    tags.back().append(
        Base64(reinterpret_cast<const unsigned char*>(signature.data()), signature.size()));
    std::string field = absl::StrCat(
        kFieldName, FoldSignatureTags(tags, kFieldName.size(), kFoldMargin, *key.key), "\r\n");
    return field;
  }

 private:
  static absl::Status Failure(std::string_view what) {
    return absl::InternalError(absl::StrCat("DKIM ", ToAbsl(what), ": ", OpenSslError()));
  }

  EVP_MD* sha256_;  // fetched once: an implicit fetch per call would lock a global store
};

}  // namespace

std::unique_ptr<Signer> MakeNativeSigner() { return std::make_unique<NativeSigner>(); }

absl::StatusOr<std::unique_ptr<Signer>> MakeSigner(config::DkimEngine engine) {
  if (engine == config::DkimEngine::kOpenDkim) return MakeOpenDkimSigner();
  return MakeNativeSigner();
}

}  // namespace facteur::dkim
