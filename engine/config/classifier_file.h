// File: engine/config/classifier_file.h
// The classifier file (deploy/classifier.toml) → the response classifier's rules
// (throttle/classifier.h). The file is a list of [[rule]] tables:
//
//   [[rule]]
//   name = "gmail-rate-limit"          # required, unique
//   sites = ["google"]                 # optional: the sites the rule applies to
//   code = "421"                       # optional: "421", "4xx", "45x"
//   enhanced = "4.7.28"                # optional: "4.7.28", "5.1.*", "x.7.26"
//   text = "unusual rate"              # optional: RE2 pattern, case-insensitive, unanchored
//   class = "rate_limit"               # required: a ResponseClass name but "success"
//
// The first matching rule wins, in file order. Every error is "FILE:LINE:COL: key
// 'rule[3].class': reason" (STYLE.md rule 8); unknown keys are refused.
// Thread contract: stateless functions.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "throttle/classifier.h"

namespace facteur::config {

// The rules of the classifier file `text`; `source_name` (a path, "<default classifier>") starts
// every error message. Each field is checked as ResponseClassifier::Create would check it, so
// that rules parsed here compile.
absl::StatusOr<std::vector<throttle::ClassifierRule>> ParseClassifierFile(
    std::string_view text, std::string_view source_name);

// The rules of the classifier file at `path` (at most 4 MiB).
absl::StatusOr<std::vector<throttle::ClassifierRule>> LoadClassifierFile(const std::string& path);

// The rules shipped in deploy/classifier.toml, compiled in (embedded_files.h). Aborts with a
// message if the shipped file is invalid: a bug, which classifier_file_test catches.
std::vector<throttle::ClassifierRule> DefaultClassifierRules();

}  // namespace facteur::config
