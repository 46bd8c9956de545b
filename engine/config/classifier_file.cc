// File: engine/config/classifier_file.cc
// TOML → ClassifierRule list. toml++ throws; ParseToml catches (toml_reader.h), so nothing
// crosses the module boundary (STYLE.md rule 1). Validation stops at the first error.
#include "engine/config/classifier_file.h"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/base/status.h"
#include "engine/config/embedded_files.h"
#include "engine/config/toml_reader.h"
#include "throttle/response_class.h"
#include "toml++/toml.h"

namespace facteur::config {
namespace {

// A classifier file is a few hundred rules; the cap keeps `/dev/zero` from eating memory.
constexpr size_t kMaxClassifierFileSize = 4 << 20;

const std::vector<std::string_view> kTopKeys = {"rule"};
const std::vector<std::string_view> kRuleKeys = {"name",     "sites", "code",
                                                 "enhanced", "text",  "class"};

// Rule and site names appear in events and logs: a conservative alphabet.
bool IsNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.';
}

bool IsName(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    if (!IsNameChar(c)) return false;
  }
  return true;
}

class Parser : private TomlReader {
 public:
  explicit Parser(std::string_view source_name) : TomlReader(source_name) {}

  absl::StatusOr<std::vector<throttle::ClassifierRule>> Parse(const toml::table& root) const {
    FACTEUR_RETURN_IF_ERROR(CheckKeys(root, "", kTopKeys));
    FACTEUR_ASSIGN_OR_RETURN(std::vector<const toml::table*> tables,
                             ArrayOfTables(root, "rule", "rule"));
    std::vector<throttle::ClassifierRule> rules;
    std::map<std::string, size_t, std::less<>> names;
    for (size_t i = 0; i < tables.size(); ++i) {
      const toml::table& table = *tables[i];
      const std::string prefix = absl::StrCat("rule[", i, "]");
      FACTEUR_RETURN_IF_ERROR(CheckKeys(table, prefix, kRuleKeys));
      throttle::ClassifierRule rule;

      FACTEUR_RETURN_IF_ERROR(ReadRequiredString(table, prefix, "name",
                                                 "the rule's name in events and logs", rule.name));
      const toml::node& name_node = *table.get("name");
      if (!IsName(rule.name) || rule.name == "default") {
        const char* why = rule.name == "default"
                              ? "' is reserved (it reports a class from the codes alone)"
                              : "' is not a name (1 to 64 letters, digits, '-', '_', '.')";
        return Error(name_node.source(), prefix + ".name", absl::StrCat("'", rule.name, why));
      }
      auto [at, inserted] = names.emplace(rule.name, i);
      if (!inserted) {
        return Error(name_node.source(), prefix + ".name",
                     absl::StrCat("duplicate rule name '", rule.name, "' (also rule[", at->second,
                                  "])"));
      }

      FACTEUR_RETURN_IF_ERROR(
          ReadCodes(table, prefix, "code", throttle::CheckRuleCode, rule.codes));
      FACTEUR_RETURN_IF_ERROR(
          ReadCodes(table, prefix, "enhanced", throttle::CheckRuleEnhanced, rule.enhanced_codes));
      FACTEUR_RETURN_IF_ERROR(ReadText(table, prefix, rule.text));
      FACTEUR_RETURN_IF_ERROR(ReadSites(table, prefix, rule.sites));
      FACTEUR_RETURN_IF_ERROR(ReadClass(table, prefix, rule.response_class));
      if (rule.codes.empty() && rule.enhanced_codes.empty() && rule.text.empty()) {
        return Error(table.source(), prefix,
                     "a rule needs at least one of code, enhanced and text (else it would match "
                     "every reply)");
      }
      rules.push_back(std::move(rule));
    }
    return rules;
  }

 private:
  // `code` or `enhanced`: one string, or an array of strings any of which matches; each checked
  // by `check` (throttle/classifier.h), the error placed at the string at fault.
  absl::Status ReadCodes(const toml::table& table, std::string_view prefix, std::string_view name,
                         absl::Status (*check)(std::string_view),
                         std::vector<std::string>& out) const {
    const toml::node* node = table.get(name);
    if (node == nullptr) return absl::OkStatus();
    const std::string key = Dotted(prefix, name);
    auto read_one = [&](const toml::node& element, const std::string& element_key) {
      const auto* value = element.as_string();
      if (value == nullptr) {
        return Error(element.source(), element_key,
                     absl::StrCat("must be a string or an array of strings, not ",
                                  TypeName(element)));
      }
      if (value->get().empty()) {
        return Error(element.source(), element_key,
                     "must not be empty (leave the key out to match anything)");
      }
      absl::Status status = check(value->get());
      if (!status.ok()) return Error(element.source(), element_key, status.message());
      out.push_back(value->get());
      return absl::OkStatus();
    };
    if (const toml::array* array = node->as_array()) {
      if (array->empty()) {
        return Error(node->source(), key,
                     "must not be empty (leave the key out to match anything)");
      }
      for (size_t i = 0; i < array->size(); ++i) {
        FACTEUR_RETURN_IF_ERROR(read_one(*array->get(i), absl::StrCat(key, "[", i, "]")));
      }
      return absl::OkStatus();
    }
    return read_one(*node, key);
  }

  // `text`: an RE2 pattern, the error quoting RE2's.
  absl::Status ReadText(const toml::table& table, std::string_view prefix,
                        std::string& out) const {
    const toml::node* node = table.get("text");
    if (node == nullptr) return absl::OkStatus();
    const std::string key = Dotted(prefix, "text");
    FACTEUR_RETURN_IF_ERROR(ReadString(table, prefix, "text", out));
    if (out.empty()) {
      return Error(node->source(), key, "must not be empty (leave the key out to match anything)");
    }
    absl::Status status = throttle::CheckRuleText(out);
    if (!status.ok()) return Error(node->source(), key, status.message());
    return absl::OkStatus();
  }

  absl::Status ReadSites(const toml::table& table, std::string_view prefix,
                         std::vector<std::string>& out) const {
    const toml::node* node = table.get("sites");
    if (node == nullptr) return absl::OkStatus();
    const std::string key = Dotted(prefix, "sites");
    const toml::array* array = node->as_array();
    if (array == nullptr) {
      return Error(node->source(), key,
                   absl::StrCat("must be an array of site names ([\"google\"]), not ",
                                TypeName(*node)));
    }
    if (array->empty()) {
      return Error(node->source(), key,
                   "must name at least one site (leave the key out to mean every site)");
    }
    for (size_t i = 0; i < array->size(); ++i) {
      const toml::node& element = *array->get(i);
      const std::string element_key = absl::StrCat(key, "[", i, "]");
      const auto* value = element.as_string();
      if (value == nullptr) {
        return Error(element.source(), element_key,
                     absl::StrCat("must be a site name (a string), not ", TypeName(element)));
      }
      if (!IsName(value->get())) {
        return Error(element.source(), element_key,
                     absl::StrCat("'", ToAbsl(value->get()),
                                  "' is not a site name (1 to 64 letters, digits, '-', '_', '.')"));
      }
      out.push_back(value->get());
    }
    return absl::OkStatus();
  }

  absl::Status ReadClass(const toml::table& table, std::string_view prefix,
                         throttle::ResponseClass& out) const {
    std::string name;
    FACTEUR_RETURN_IF_ERROR(
        ReadRequiredString(table, prefix, "class", "the class a matching reply gets", name));
    const toml::node& node = *table.get("class");
    const std::string key = Dotted(prefix, "class");
    std::optional<throttle::ResponseClass> parsed = throttle::ParseResponseClass(name);
    if (!parsed.has_value()) {
      std::string choices;
      bool first = true;
      for (std::string_view candidate : throttle::kResponseClassNames) {
        if (candidate == throttle::ResponseClassName(throttle::ResponseClass::kSuccess)) continue;
        absl::StrAppend(&choices, first ? "" : ", ", "\"", ToAbsl(candidate), "\"");
        first = false;
      }
      return Error(node.source(), key,
                   absl::StrCat("'", name, "' is not a response class (", choices, ")"));
    }
    absl::Status status = throttle::CheckRuleClass(*parsed);
    if (!status.ok()) return Error(node.source(), key, status.message());
    out = *parsed;
    return absl::OkStatus();
  }
};

}  // namespace

absl::StatusOr<std::vector<throttle::ClassifierRule>> ParseClassifierFile(
    std::string_view text, std::string_view source_name) {
  FACTEUR_ASSIGN_OR_RETURN(toml::table root, ParseToml(text, source_name));
  return Parser(source_name).Parse(root);
}

absl::StatusOr<std::vector<throttle::ClassifierRule>> LoadClassifierFile(const std::string& path) {
  FACTEUR_ASSIGN_OR_RETURN(std::string text, ReadTextFile(path, kMaxClassifierFileSize));
  return ParseClassifierFile(text, path);
}

std::vector<throttle::ClassifierRule> DefaultClassifierRules() {
  absl::StatusOr<std::vector<throttle::ClassifierRule>> rules =
      ParseClassifierFile(EmbeddedClassifierToml(), "<default classifier>");
  if (!rules.ok()) {
    // The embedded text is ours: failing here is a bug that classifier_file_test catches.
    std::fprintf(stderr, "facteur: the embedded deploy/classifier.toml is invalid: %s\n",
                 std::string(rules.status().message()).c_str());
    std::abort();
  }
  return *std::move(rules);
}

}  // namespace facteur::config
