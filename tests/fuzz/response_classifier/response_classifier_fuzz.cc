// Fuzz target: a remote reply through the shipped response classifier (deploy/classifier.toml).
// The input's first line is "CODE ENHANCED SITE" (space-separated, any of them may be missing or
// garbage), the rest is the reply text. Invariants: no crash; a 2xx is success; the class is a
// valid one, and the rule is "default" or a rule of the file; a class from the codes alone never
// makes a 4xx a bounce (user_unknown, domain_not_found); an announced delay is in (0, 24h];
// the same reply classifies the same way twice, and text past kMaxClassifiedText changes
// nothing. The text is also tried as a rule pattern (RE2 must refuse, never crash).
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "engine/config/classifier_file.h"
#include "throttle/classifier.h"

namespace {

using facteur::throttle::Classification;
using facteur::throttle::ResponseClass;
using facteur::throttle::ResponseClassifier;

void Check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
  }
}

struct Shipped {
  Shipped() : classifier(Make()) {
    for (const auto& rule : facteur::config::DefaultClassifierRules()) names.insert(rule.name);
  }
  static ResponseClassifier Make() {
    auto created = ResponseClassifier::Create(facteur::config::DefaultClassifierRules());
    Check(created.ok(), "the shipped rules compile");
    return *std::move(created);
  }
  ResponseClassifier classifier;
  std::set<std::string, std::less<>> names;
};

std::string_view NextField(std::string_view& line) {
  size_t space = line.find(' ');
  std::string_view field = line.substr(0, space);
  line = space == std::string_view::npos ? std::string_view() : line.substr(space + 1);
  return field;
}

bool Same(const Classification& a, const Classification& b) {
  return a.response_class == b.response_class && a.rule == b.rule && a.retry_after == b.retry_after;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Shipped* const shipped = new Shipped();
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t newline = input.find('\n');
  std::string_view header = input.substr(0, newline);
  const std::string_view text =
      newline == std::string_view::npos ? std::string_view() : input.substr(newline + 1);
  const std::string_view code_field = NextField(header);
  const std::string_view enhanced = NextField(header);
  const std::string_view site = NextField(header);
  int code = 0;
  std::from_chars(code_field.data(), code_field.data() + code_field.size(), code);

  const ResponseClassifier& classifier = shipped->classifier;
  const Classification got = classifier.Classify(code, enhanced, text, site);
  Check(static_cast<size_t>(got.response_class) < facteur::throttle::kResponseClassCount,
        "a valid class");
  Check((code >= 200 && code < 300) == (got.response_class == ResponseClass::kSuccess),
        "success exactly for a 2xx");
  Check(got.rule == "default" || shipped->names.count(got.rule) == 1,
        "the rule is 'default' or a rule of the file");
  if (got.rule == "default" && code >= 400 && code < 500) {
    Check(got.response_class != ResponseClass::kUserUnknown &&
              got.response_class != ResponseClass::kDomainNotFound,
          "the codes alone never make a 4xx a bounce");
  }
  if (got.retry_after.has_value()) {
    Check(*got.retry_after > absl::ZeroDuration() &&
              *got.retry_after <= facteur::throttle::kMaxAnnouncedRetryDelay,
          "an announced delay in (0, 24h]");
  }
  Check(Same(got, classifier.Classify(code, enhanced, text, site)), "deterministic");
  if (text.size() > facteur::throttle::kMaxClassifiedText) {
    Check(Same(got, classifier.Classify(code, enhanced,
                                        text.substr(0, facteur::throttle::kMaxClassifiedText),
                                        site)),
          "text past kMaxClassifiedText is not looked at");
  }
  // The text as a rule's pattern: compiled or refused with a reason.
  absl::Status pattern = facteur::throttle::CheckRuleText(text.substr(0, 1024));
  Check(pattern.ok() || !pattern.message().empty(), "a refused pattern says why");
  return 0;
}
