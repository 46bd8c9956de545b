// File: throttle/classifier.h
// The response classifier (../shared/DESIGN.md §5): every reply a remote server gives — code,
// enhanced status code (RFC 3463), text — becomes a ResponseClass, plus the retry delay the text
// announces ("Greylisted for 300 seconds"). Rules come from the classifier file
// (deploy/classifier.toml, read by engine/config/classifier_file.h); what each class does to a
// (source, site) pair is the shaping file's business (throttle/shaping.h).
//
// Precedence (../shared/research/providers.md §4.1): a 2xx is success whatever the rules say;
// otherwise the first rule that matches, in file order (provider and site rules come first in the
// file, because providers reuse the registered codes with their own meanings: Gmail's 450 4.2.1 is
// a rate limit, not a disabled mailbox); otherwise the enhanced code's registered meaning
// (DefaultClass), read together with the basic code, which decides whether the failure is
// permanent at all; otherwise the basic code.
//
// Reply texts are hostile input: patterns are RE2 (linear time, no backtracking), matched over
// the first kMaxClassifiedText bytes, case-insensitively, each byte one Latin-1 character (so
// that any byte sequence, UTF-8 or not, is matched without error).
//
// Thread contract: a ResponseClassifier is immutable after Create and thread-safe (RE2 guards its
// own caches); movable, not copyable.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "throttle/response_class.h"

namespace facteur::throttle {

// One [[rule]] of the classifier file. A rule matches a reply when every field it sets matches;
// a field left empty matches anything. A rule must set at least one of codes, enhanced_codes and
// text.
struct ClassifierRule {
  // Unique name, reported in Classification::rule (events, logs). Default: "".
  std::string name;
  // Basic reply codes, any of which matches: "421" exactly, or with 'x' for any digit ("4xx",
  // "45x"). A 2xx never reaches the rules. Default: {} (any code).
  std::vector<std::string> codes;
  // Enhanced status codes, any of which matches: "4.7.28" exactly, "5.1.*" any detail,
  // "x.7.26" either class (Gmail sends 421 5.7.32). Default: {} (any, including none).
  std::vector<std::string> enhanced_codes;
  // RE2 pattern searched in the reply text, case-insensitively, unanchored; "" any.
  // Default: "".
  std::string text;
  // The sites (throttle/shaping.h SiteOptions::name) the rule applies to; empty: every site,
  // including replies from no known site. Default: {}.
  std::vector<std::string> sites;
  // The class a matching reply gets. Default: kOtherPermanent.
  ResponseClass response_class = ResponseClass::kOtherPermanent;
};

struct Classification {
  // Default: kOtherTransient.
  ResponseClass response_class = ResponseClass::kOtherTransient;
  // The delay the reply text announces (AnnouncedRetryDelay); nullopt when it names none.
  // Default: nullopt.
  std::optional<absl::Duration> retry_after;
  // Name of the rule that matched, or "default" when the class came from the codes alone.
  // Default: "default".
  std::string rule = "default";
};

// Reply text past this many bytes is not looked at: a reply may be 64 KiB (the SMTP client's
// bound), but every provider puts its code in the first lines, and the bound caps the work one
// hostile reply can cause.
inline constexpr size_t kMaxClassifiedText = 16 * 1024;

// Announced delays longer than this are ignored as absurd (a typo, or a server that says
// "come back tomorrow" to mean "go away"): the retry schedule decides instead.
inline constexpr absl::Duration kMaxAnnouncedRetryDelay = absl::Hours(24);

// Each field of a rule checked on its own, so that the file reader can point at the key:
// OK, or InvalidArgument with a reason that does not repeat the field's name.
absl::Status CheckRuleCode(std::string_view code);
absl::Status CheckRuleEnhanced(std::string_view enhanced);
absl::Status CheckRuleText(std::string_view pattern);  // the reason quotes RE2's error
absl::Status CheckRuleClass(ResponseClass response_class);

// The class of a non-2xx reply from its codes alone: the enhanced code's registered meaning
// (RFC 3463, IANA registry: x.1.1 user_unknown, x.1.2 and x.1.10 domain_not_found, x.2.2
// mailbox_full, x.7.20-27 authentication, 4.7.28 rate_limit, ...) where the basic code agrees
// (a 4xx is never user_unknown: Postfix says "450 4.1.1" while it verifies an address), else
// 4xx other_transient, 5xx other_permanent. A 2xx is success; any other code (a made-up or
// protocol-confused reply) other_transient, so that nothing bounces on it.
ResponseClass DefaultClass(int code, std::string_view enhanced_code);

// The delay a reply text announces before a retry: "try again in 300 seconds", "Greylisted for
// 300 seconds", "please come back in 00:05:00" (milter-greylist), "retry in 5 minutes". nullopt
// when the text names none ("Try again later"), or a zero or longer than
// kMaxAnnouncedRetryDelay.
std::optional<absl::Duration> AnnouncedRetryDelay(std::string_view text);

class ResponseClassifier {
 public:
  // Compiles the rules (every pattern once, all of them into one RE2::Set as well, so that a
  // reply's text is scanned once whatever the number of rules). Errors name the rule: "rule 3
  // ('gmail-rate'): text: ...".
  static absl::StatusOr<ResponseClassifier> Create(std::vector<ClassifierRule> rules);

  ResponseClassifier(ResponseClassifier&&) noexcept;
  ResponseClassifier& operator=(ResponseClassifier&&) noexcept;
  ~ResponseClassifier();

  // The class of one reply from `site` ("" when the destination belongs to no known site).
  // `enhanced_code` is "" when the reply carries none; text lines are separated by '\n'.
  Classification Classify(int code, std::string_view enhanced_code, std::string_view text,
                          std::string_view site) const;

  size_t rule_count() const;

 private:
  struct Compiled;
  explicit ResponseClassifier(std::unique_ptr<const Compiled> compiled);

  std::unique_ptr<const Compiled> compiled_;
};

}  // namespace facteur::throttle
