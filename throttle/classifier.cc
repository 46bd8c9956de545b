// File: throttle/classifier.cc
#include "throttle/classifier.h"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "re2/re2.h"
#include "re2/set.h"

namespace facteur::throttle {
namespace {

// Every pattern is matched byte by byte (Latin-1: any octet is a character, so a reply in
// ISO-8859-1, in UTF-8 or in neither is searched alike) and without regard to case.
RE2::Options PatternOptions(bool captures) {
  RE2::Options options;
  options.set_encoding(RE2::Options::EncodingLatin1);
  options.set_case_sensitive(false);
  options.set_log_errors(false);
  options.set_never_capture(!captures);
  return options;
}

// The one RE2::Set holding every rule's pattern gets more room than a lone RE2 (8 MiB): its
// program and DFA cache grow with the number of rules. A Set that still runs out of memory on a
// reply falls back on the rules' own RE2s (Classify), so this bounds speed, not correctness.
constexpr int64_t kSetMaxMemory = 64 << 20;

re2::StringPiece Piece(std::string_view s) { return re2::StringPiece(s.data(), s.size()); }

absl::Status Invalid(std::string_view reason) {
  return absl::InvalidArgumentError(absl::string_view(reason.data(), reason.size()));
}

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// An enhanced status code "class.subject.detail" (RFC 3463 §2: class 2, 4 or 5; subject and
// detail of one to three digits).
struct EnhancedCode {
  int klass = -1;  // -1: not a valid code
  int subject = 0;
  int detail = 0;
};

bool ParseNumber(std::string_view digits, int& out) {
  if (digits.empty() || digits.size() > 3) return false;
  int value = 0;
  for (char c : digits) {
    if (!IsDigit(c)) return false;
    value = value * 10 + (c - '0');
  }
  out = value;
  return true;
}

EnhancedCode ParseEnhanced(std::string_view text) {
  EnhancedCode code;
  size_t first = text.find('.');
  if (first != 1) return code;
  size_t second = text.find('.', first + 1);
  if (second == std::string_view::npos) return code;
  int subject = 0;
  int detail = 0;
  if (text[0] != '2' && text[0] != '4' && text[0] != '5') return code;
  if (!ParseNumber(text.substr(first + 1, second - first - 1), subject)) return code;
  if (!ParseNumber(text.substr(second + 1), detail)) return code;
  code.klass = text[0] - '0';
  code.subject = subject;
  code.detail = detail;
  return code;
}

// A rule's `code`: three characters, each a digit or 'x'; empty matches any code.
struct CodePattern {
  std::string pattern;

  bool Matches(int code) const {
    if (pattern.empty()) return true;
    if (code < 100 || code > 999) return false;
    const char digits[3] = {static_cast<char>('0' + code / 100),
                            static_cast<char>('0' + code / 10 % 10),
                            static_cast<char>('0' + code % 10)};
    for (size_t i = 0; i < 3; ++i) {
      if (pattern[i] != 'x' && pattern[i] != digits[i]) return false;
    }
    return true;
  }
};

// A rule's `enhanced`: "4.7.28", "5.1.*", "x.7.26"; empty matches any, including none.
struct EnhancedPattern {
  bool any = true;
  int klass = -1;   // -1: 4 or 5
  int subject = 0;
  int detail = -1;  // -1: any

  bool Matches(const EnhancedCode& code) const {
    if (any) return true;
    if (code.klass < 0) return false;
    return (klass < 0 || klass == code.klass) && subject == code.subject &&
           (detail < 0 || detail == code.detail);
  }
};

absl::StatusOr<CodePattern> ParseCodePattern(std::string_view text) {
  CodePattern pattern;
  if (text.empty()) return pattern;
  if (text.size() != 3 || (text[0] != '4' && text[0] != '5')) {
    if (text.size() == 3 && text[0] == '2') {
      return Invalid("a 2xx reply is always success and never reaches the rules");
    }
    return Invalid(absl::StrCat("'", absl::string_view(text.data(), text.size()),
                                "' is not a 4xx or 5xx reply code (write \"421\", \"45x\" "
                                "or \"5xx\")"));
  }
  pattern.pattern.push_back(text[0]);
  for (size_t i = 1; i < 3; ++i) {
    char c = text[i] == 'X' ? 'x' : text[i];
    if (c != 'x' && !IsDigit(c)) {
      return Invalid(absl::StrCat("'", absl::string_view(text.data(), text.size()),
                                  "' is not a reply code: each of the last two characters is a "
                                  "digit or 'x'"));
    }
    pattern.pattern.push_back(c);
  }
  return pattern;
}

absl::StatusOr<EnhancedPattern> ParseEnhancedPattern(std::string_view text) {
  EnhancedPattern pattern;
  if (text.empty()) return pattern;
  const std::string quoted = absl::StrCat("'", absl::string_view(text.data(), text.size()), "'");
  const std::string format = " is not an enhanced status code (write \"4.7.28\", \"5.1.*\" or "
                             "\"x.7.26\": class 4, 5 or x, subject, detail or *)";
  size_t first = text.find('.');
  size_t second = first == std::string_view::npos ? first : text.find('.', first + 1);
  if (first != 1 || second == std::string_view::npos) return Invalid(quoted + format);
  pattern.any = false;
  switch (text[0]) {
    case '4': case '5': pattern.klass = text[0] - '0'; break;
    case 'x': case 'X': pattern.klass = -1; break;
    case '2': return Invalid("a 2xx reply is always success and never reaches the rules");
    default: return Invalid(quoted + format);
  }
  if (!ParseNumber(text.substr(first + 1, second - first - 1), pattern.subject)) {
    return Invalid(quoted + format);
  }
  std::string_view detail = text.substr(second + 1);
  if (detail == "*") {
    pattern.detail = -1;
  } else if (!ParseNumber(detail, pattern.detail)) {
    return Invalid(quoted + format);
  }
  return pattern;
}

absl::StatusOr<std::unique_ptr<RE2>> CompileText(std::string_view pattern) {
  auto regex = std::make_unique<RE2>(Piece(pattern), PatternOptions(/*captures=*/false));
  if (!regex->ok()) {
    return Invalid(absl::StrCat("not a valid RE2 pattern: ", regex->error()));
  }
  // "spam|" or "(a)?" would match every reply: surely a slip, and a rule that must not hide the
  // rules after it.
  if (RE2::PartialMatch("", *regex)) {
    return Invalid("the pattern matches the empty text, hence every reply; leave text out to "
                   "mean any text");
  }
  return regex;
}

// user_unknown and domain_not_found are said by a permanent reply only: a 4xx with x.1.1 is an
// address still being verified, or a directory that is down.
ResponseClass IfPermanent(bool permanent, ResponseClass klass) {
  return permanent ? klass : ResponseClass::kOtherTransient;
}

// Lazily computed text match over the rule set: the Set scan runs once per reply, and only when
// a rule with a pattern is reached.
class TextMatches {
 public:
  TextMatches(const RE2::Set* set, std::string_view text) : set_(set), text_(text) {}

  bool Matches(int set_index, const RE2& own) {
    if (!scanned_) Scan();
    if (set_failed_) return RE2::PartialMatch(Piece(text_), own);
    return std::binary_search(hits_.begin(), hits_.end(), set_index);
  }

 private:
  void Scan() {
    scanned_ = true;
    RE2::Set::ErrorInfo error{RE2::Set::kNoError};
    if (!set_->Match(Piece(text_), &hits_, &error) && error.kind != RE2::Set::kNoError) {
      // The Set's DFA ran out of memory on this text: ask each rule's own RE2 instead (still
      // linear; RE2 falls back on its NFA by itself).
      set_failed_ = true;
      return;
    }
    std::sort(hits_.begin(), hits_.end());
  }

  const RE2::Set* set_;
  std::string_view text_;
  bool scanned_ = false;
  bool set_failed_ = false;
  std::vector<int> hits_;
};

}  // namespace

struct ResponseClassifier::Compiled {
  struct Rule {
    std::string name;
    std::vector<CodePattern> codes;         // empty: any
    std::vector<EnhancedPattern> enhanced;  // empty: any
    std::unique_ptr<RE2> text;  // null: any text
    int set_index = -1;
    std::vector<std::string> sites;
    ResponseClass response_class = ResponseClass::kOtherPermanent;
  };
  std::vector<Rule> rules;
  std::unique_ptr<RE2::Set> set;  // every rule's pattern, Add()ed in rule order
};

absl::Status CheckRuleCode(std::string_view code) { return ParseCodePattern(code).status(); }

absl::Status CheckRuleEnhanced(std::string_view enhanced) {
  return ParseEnhancedPattern(enhanced).status();
}

absl::Status CheckRuleText(std::string_view pattern) {
  if (pattern.empty()) return absl::OkStatus();
  return CompileText(pattern).status();
}

absl::Status CheckRuleClass(ResponseClass response_class) {
  if (response_class == ResponseClass::kSuccess) {
    return Invalid("'success' is not a rule's class: a 2xx reply is always success, and no "
                   "4xx or 5xx reply is");
  }
  if (static_cast<size_t>(response_class) >= kResponseClassCount) {
    return Invalid("not a response class");
  }
  return absl::OkStatus();
}

ResponseClass DefaultClass(int code, std::string_view enhanced_code) {
  if (code >= 200 && code < 300) return ResponseClass::kSuccess;
  const bool transient = code >= 400 && code < 500;
  const bool permanent = code >= 500 && code < 600;
  if (!transient && !permanent) return ResponseClass::kOtherTransient;
  const EnhancedCode enhanced = ParseEnhanced(enhanced_code);
  if (enhanced.klass >= 0) {
    // RFC 3463 §3 subjects and the IANA "SMTP Enhanced Status Codes" registry.
    switch (enhanced.subject * 1000 + enhanced.detail) {
      case 1001:  // X.1.1 bad destination mailbox address
      case 1006:  // X.1.6 destination mailbox has moved, no forwarding address
      case 2001:  // X.2.1 mailbox disabled, not accepting messages
      case 7013:  // X.7.13 user account disabled (RFC 7372)
      case 7017:  // X.7.17 mailbox owner has changed (RFC 7293, RRVS)
      case 7018:  // X.7.18 domain owner has changed (RFC 7293)
        return IfPermanent(permanent, ResponseClass::kUserUnknown);
      case 1002:  // X.1.2 bad destination system address
      case 1010:  // X.1.10 recipient address has null MX (RFC 7505 §4.2)
        return IfPermanent(permanent, ResponseClass::kDomainNotFound);
      case 2002:  // X.2.2 mailbox full
        return ResponseClass::kMailboxFull;
      case 7020:  // X.7.20-22 no passing / acceptable / author-matched DKIM (RFC 7372)
      case 7021:
      case 7022:
      case 7023:  // X.7.23 SPF validation failed (RFC 7372)
      case 7024:  // X.7.24 SPF validation error
      case 7025:  // X.7.25 reverse DNS validation failed
      case 7026:  // X.7.26 multiple authentication checks failed
      case 7027:  // X.7.27 sender address has null MX (RFC 7505 §4.2)
      case 7029:  // X.7.29 ARC validation failure (RFC 8617)
      case 7030:  // X.7.30 REQUIRETLS support required (RFC 8689)
        return ResponseClass::kAuthentication;
      case 7028:  // X.7.28 mail flood detected: a deferral slows down, a refusal is a block
                  // (Gmail's 550 5.7.28 "...has been blocked")
        return transient ? ResponseClass::kRateLimit : ResponseClass::kBlocklist;
      default:
        break;
    }
  }
  return transient ? ResponseClass::kOtherTransient : ResponseClass::kOtherPermanent;
}

std::optional<absl::Duration> AnnouncedRetryDelay(std::string_view text) {
  if (text.size() > kMaxClassifiedText) text = text.substr(0, kMaxClassifiedText);
  // A retry word, then within a few words "in|for|after" and the delay: "try again in 300
  // seconds", "Greylisted for 300 seconds", "retry in 5 min", "please come back in 00:05:00".
  // The retry word keeps "too many messages in 1 hour" (a limit's window) out.
  static const RE2* const kNumber = new RE2(
      R"((?:again|retry|try|come back|gr[ae]y-?list|wait|resend|reconnect)[^\n]{0,40}?)"
      R"(\b(?:in|for|after|within)\s+(?:about\s+|at least\s+|approximately\s+)?)"
      R"((\d{1,9})\s*(seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h|days?|d)\b)",
      PatternOptions(/*captures=*/true));
  static const RE2* const kClock = new RE2(
      R"((?:again|retry|try|come back|gr[ae]y-?list|wait|resend|reconnect)[^\n]{0,40}?)"
      R"(\b(?:in|for|after|within)\s+(\d{1,3}):([0-5]\d):([0-5]\d)\b)",
      PatternOptions(/*captures=*/true));
  int64_t seconds = 0;
  int64_t hours = 0;
  int minutes = 0;
  int secs = 0;
  std::string unit;
  if (RE2::PartialMatch(Piece(text), *kClock, &hours, &minutes, &secs)) {
    seconds = hours * 3600 + minutes * 60 + secs;
  } else if (RE2::PartialMatch(Piece(text), *kNumber, &seconds, &unit)) {
    std::transform(unit.begin(), unit.end(), unit.begin(),
                   [](char c) { return static_cast<char>(c | 0x20); });
    switch (unit[0]) {
      case 'm': seconds *= 60; break;
      case 'h': seconds *= 3600; break;
      case 'd': seconds *= 86400; break;
      default: break;
    }
  } else {
    return std::nullopt;
  }
  const absl::Duration delay = absl::Seconds(seconds);
  if (delay <= absl::ZeroDuration() || delay > kMaxAnnouncedRetryDelay) return std::nullopt;
  return delay;
}

ResponseClassifier::ResponseClassifier(std::unique_ptr<const Compiled> compiled)
    : compiled_(std::move(compiled)) {}
ResponseClassifier::ResponseClassifier(ResponseClassifier&&) noexcept = default;
ResponseClassifier& ResponseClassifier::operator=(ResponseClassifier&&) noexcept = default;
ResponseClassifier::~ResponseClassifier() = default;

absl::StatusOr<ResponseClassifier> ResponseClassifier::Create(std::vector<ClassifierRule> rules) {
  auto compiled = std::make_unique<Compiled>();
  RE2::Options set_options = PatternOptions(/*captures=*/false);
  set_options.set_max_mem(kSetMaxMemory);
  compiled->set = std::make_unique<RE2::Set>(set_options, RE2::UNANCHORED);
  std::set<std::string, std::less<>> names;
  int set_size = 0;
  for (size_t i = 0; i < rules.size(); ++i) {
    ClassifierRule& rule = rules[i];
    auto fail = [&](std::string_view field, const absl::Status& status) {
      return absl::InvalidArgumentError(absl::StrCat(
          "rule ", i, " ('", rule.name, "'): ", absl::string_view(field.data(), field.size()),
          field.empty() ? "" : ": ", status.message()));
    };
    if (rule.name.empty()) return fail("", Invalid("a rule needs a name"));
    if (rule.name == "default") {
      return fail("", Invalid("'default' names the code-only classification, not a rule"));
    }
    if (!names.insert(rule.name).second) return fail("", Invalid("duplicate rule name"));
    if (rule.codes.empty() && rule.enhanced_codes.empty() && rule.text.empty()) {
      return fail("", Invalid("a rule needs a code, an enhanced code or a text"));
    }
    Compiled::Rule out;
    for (const std::string& text : rule.codes) {
      absl::StatusOr<CodePattern> code = ParseCodePattern(text);
      if (!code.ok() || text.empty()) {
        return fail("code", text.empty() ? Invalid("empty code") : code.status());
      }
      out.codes.push_back(*std::move(code));
    }
    for (const std::string& text : rule.enhanced_codes) {
      absl::StatusOr<EnhancedPattern> enhanced = ParseEnhancedPattern(text);
      if (!enhanced.ok() || text.empty()) {
        return fail("enhanced", text.empty() ? Invalid("empty enhanced code") : enhanced.status());
      }
      out.enhanced.push_back(*enhanced);
    }
    if (absl::Status status = CheckRuleClass(rule.response_class); !status.ok()) {
      return fail("class", status);
    }
    if (!rule.text.empty()) {
      absl::StatusOr<std::unique_ptr<RE2>> text = CompileText(rule.text);
      if (!text.ok()) return fail("text", text.status());
      out.text = *std::move(text);
      std::string error;
      out.set_index = compiled->set->Add(Piece(rule.text), &error);
      if (out.set_index != set_size) {
        return fail("text", Invalid(absl::StrCat("not a valid RE2 pattern: ", error)));
      }
      ++set_size;
    }
    for (const std::string& site : rule.sites) {
      if (site.empty()) return fail("sites", Invalid("a site name must not be empty"));
    }
    out.name = std::move(rule.name);
    out.sites = std::move(rule.sites);
    out.response_class = rule.response_class;
    compiled->rules.push_back(std::move(out));
  }
  if (!compiled->set->Compile()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the ", set_size, " rule patterns are too large to compile together"));
  }
  return ResponseClassifier(std::move(compiled));
}

Classification ResponseClassifier::Classify(int code, std::string_view enhanced_code,
                                            std::string_view text, std::string_view site) const {
  Classification result;
  if (code >= 200 && code < 300) {
    result.response_class = ResponseClass::kSuccess;
    return result;
  }
  if (text.size() > kMaxClassifiedText) text = text.substr(0, kMaxClassifiedText);
  result.retry_after = AnnouncedRetryDelay(text);
  const EnhancedCode enhanced = ParseEnhanced(enhanced_code);
  TextMatches matches(compiled_->set.get(), text);
  for (const Compiled::Rule& rule : compiled_->rules) {
    if (!rule.codes.empty() &&
        std::none_of(rule.codes.begin(), rule.codes.end(),
                     [code](const CodePattern& pattern) { return pattern.Matches(code); })) {
      continue;
    }
    if (!rule.enhanced.empty() &&
        std::none_of(rule.enhanced.begin(), rule.enhanced.end(),
                     [&enhanced](const EnhancedPattern& pattern) {
                       return pattern.Matches(enhanced);
                     })) {
      continue;
    }
    if (!rule.sites.empty() &&
        std::find(rule.sites.begin(), rule.sites.end(), site) == rule.sites.end()) {
      continue;
    }
    if (rule.text != nullptr && !matches.Matches(rule.set_index, *rule.text)) continue;
    result.response_class = rule.response_class;
    result.rule = rule.name;
    return result;
  }
  result.response_class = DefaultClass(code, enhanced_code);
  return result;
}

size_t ResponseClassifier::rule_count() const { return compiled_->rules.size(); }

}  // namespace facteur::throttle
