// Tests of engine/config/classifier_file.h: the [[rule]] tables, every error with its line and
// column, and the shipped deploy/classifier.toml.
#include "engine/config/classifier_file.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <unistd.h>

#include "engine/config/embedded_files.h"
#include "engine/config/toml_reader.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace facteur::config {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using throttle::ClassifierRule;
using throttle::ResponseClass;

std::string ErrorOf(std::string_view text) {
  absl::StatusOr<std::vector<ClassifierRule>> rules = ParseClassifierFile(text, "c.toml");
  EXPECT_FALSE(rules.ok()) << "parsed:\n" << text;
  if (rules.ok()) return "";
  EXPECT_EQ(rules.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(rules.status().message());
}

// `text` fails at `line`:`column`, naming `key`, with a reason containing `reason`.
void ExpectError(std::string_view text, int line, int column, std::string_view key,
                 std::string_view reason) {
  std::string message = ErrorOf(text);
  EXPECT_THAT(message, StartsWith("c.toml:" + std::to_string(line) + ":" +
                                  std::to_string(column) + ": "))
      << text;
  EXPECT_THAT(message, HasSubstr("key '" + std::string(key) + "': ")) << text;
  EXPECT_THAT(message, HasSubstr(std::string(reason))) << text;
}

std::vector<ClassifierRule> ParseOk(std::string_view text) {
  absl::StatusOr<std::vector<ClassifierRule>> rules = ParseClassifierFile(text, "c.toml");
  EXPECT_TRUE(rules.ok()) << rules.status();
  return rules.ok() ? *std::move(rules) : std::vector<ClassifierRule>();
}

TEST(ParseClassifierFileTest, EveryKeyIsRead) {
  std::vector<ClassifierRule> rules = ParseOk(R"(
[[rule]]
name = "gmail-rate"
sites = ["google", "google-workspace"]
code = "421"
enhanced = "4.7.28"
text = 'unusual\s+rate'
class = "rate_limit"

[[rule]]
name = "lists"
code = ["450", "5xx"]
enhanced = ["x.7.26", "5.1.*"]
class = "authentication"
)");
  ASSERT_EQ(rules.size(), 2u);
  EXPECT_EQ(rules[0].name, "gmail-rate");
  EXPECT_THAT(rules[0].sites, ElementsAre("google", "google-workspace"));
  EXPECT_THAT(rules[0].codes, ElementsAre("421"));
  EXPECT_THAT(rules[0].enhanced_codes, ElementsAre("4.7.28"));
  EXPECT_EQ(rules[0].text, "unusual\\s+rate");
  EXPECT_EQ(rules[0].response_class, ResponseClass::kRateLimit);
  EXPECT_EQ(rules[1].name, "lists");
  EXPECT_TRUE(rules[1].sites.empty());
  EXPECT_THAT(rules[1].codes, ElementsAre("450", "5xx"));
  EXPECT_THAT(rules[1].enhanced_codes, ElementsAre("x.7.26", "5.1.*"));
  EXPECT_EQ(rules[1].text, "");
  EXPECT_EQ(rules[1].response_class, ResponseClass::kAuthentication);

  // What was read classifies as written.
  absl::StatusOr<throttle::ResponseClassifier> classifier =
      throttle::ResponseClassifier::Create(rules);
  ASSERT_TRUE(classifier.ok()) << classifier.status();
  EXPECT_EQ(classifier->Classify(421, "4.7.28", "an UNUSUAL  rate", "google").rule, "gmail-rate");
  EXPECT_EQ(classifier->Classify(421, "4.7.28", "an unusual rate", "yahoo").rule, "default");
  EXPECT_EQ(classifier->Classify(550, "5.1.3", "", "").rule, "lists");
}

TEST(ParseClassifierFileTest, EmptyFileHasNoRules) {
  EXPECT_TRUE(ParseOk("").empty());
  EXPECT_TRUE(ParseOk("# only a comment\n").empty());
}

TEST(ParseClassifierFileTest, EveryClassNameButSuccessIsAccepted) {
  for (size_t i = 1; i < throttle::kResponseClassCount; ++i) {
    std::string text = "[[rule]]\nname = \"r\"\ntext = \"x\"\nclass = \"" +
                       std::string(throttle::kResponseClassNames[i]) + "\"\n";
    std::vector<ClassifierRule> rules = ParseOk(text);
    ASSERT_EQ(rules.size(), 1u);
    EXPECT_EQ(static_cast<size_t>(rules[0].response_class), i);
  }
}

TEST(ClassifierFileErrorTest, TomlSyntaxErrorHasLineAndColumn) {
  std::string message = ErrorOf("[[rule]]\nname = \"a\nclass = \"content\"\n");
  EXPECT_THAT(message, StartsWith("c.toml:2:"));
}

TEST(ClassifierFileErrorTest, UnknownKeys) {
  ExpectError("[[rules]]\nname = \"a\"\n", 1, 3, "rules", "did you mean 'rule'?");
  ExpectError("[[rule]]\nname = \"a\"\ntext = \"x\"\nclas = \"content\"\n", 4, 1, "rule[0].clas",
              "did you mean 'rule[0].class'?");
  ExpectError("[[rule]]\nname = \"a\"\ntext = \"x\"\nclass = \"content\"\ncolour = 1\n", 5, 1,
              "rule[0].colour", "unknown key");
  ExpectError("rule = 3\n", 1, 8, "rule", "must be an array of tables");
}

TEST(ClassifierFileErrorTest, Names) {
  ExpectError("[[rule]]\ntext = \"x\"\nclass = \"content\"\n", 1, 1, "rule[0].name", "required");
  ExpectError("[[rule]]\nname = \"\"\ntext = \"x\"\nclass = \"content\"\n", 2, 8, "rule[0].name",
              "must not be empty");
  ExpectError("[[rule]]\nname = \"a b\"\ntext = \"x\"\nclass = \"content\"\n", 2, 8,
              "rule[0].name", "is not a name");
  ExpectError("[[rule]]\nname = \"default\"\ntext = \"x\"\nclass = \"content\"\n", 2, 8,
              "rule[0].name", "reserved");
  ExpectError(
      "[[rule]]\nname = \"a\"\ntext = \"x\"\nclass = \"content\"\n"
      "[[rule]]\nname = \"a\"\ntext = \"y\"\nclass = \"content\"\n",
      6, 8, "rule[1].name", "duplicate rule name 'a' (also rule[0])");
}

TEST(ClassifierFileErrorTest, ClassIsRequiredAndNamed) {
  ExpectError("[[rule]]\nname = \"a\"\ntext = \"x\"\n", 1, 1, "rule[0].class", "required");
  std::string message = ErrorOf("[[rule]]\nname = \"a\"\ntext = \"x\"\nclass = \"ratelimit\"\n");
  EXPECT_THAT(message, StartsWith("c.toml:4:9: key 'rule[0].class': 'ratelimit' is not a "
                                  "response class ("));
  // The error lists the valid names (all but "success").
  for (size_t i = 1; i < throttle::kResponseClassCount; ++i) {
    EXPECT_THAT(message, HasSubstr("\"" + std::string(throttle::kResponseClassNames[i]) + "\""));
  }
  EXPECT_THAT(message, ::testing::Not(HasSubstr("\"success\"")));
  ExpectError("[[rule]]\nname = \"a\"\ntext = \"x\"\nclass = \"success\"\n", 4, 9,
              "rule[0].class", "2xx reply is always success");
  ExpectError("[[rule]]\nname = \"a\"\ntext = \"x\"\nclass = 3\n", 4, 9, "rule[0].class",
              "must be a string");
}

TEST(ClassifierFileErrorTest, CodesAndEnhancedCodes) {
  ExpectError("[[rule]]\nname = \"a\"\ncode = \"42\"\nclass = \"content\"\n", 3, 8,
              "rule[0].code", "'42' is not a 4xx or 5xx reply code");
  ExpectError("[[rule]]\nname = \"a\"\ncode = \"250\"\nclass = \"content\"\n", 3, 8,
              "rule[0].code", "2xx reply is always success");
  ExpectError("[[rule]]\nname = \"a\"\ncode = [\"421\", \"4z1\"]\nclass = \"content\"\n", 3, 16,
              "rule[0].code[1]", "digit or 'x'");
  ExpectError("[[rule]]\nname = \"a\"\ncode = 421\nclass = \"content\"\n", 3, 8, "rule[0].code",
              "must be a string or an array of strings, not an integer");
  ExpectError("[[rule]]\nname = \"a\"\ncode = []\nclass = \"content\"\n", 3, 8, "rule[0].code",
              "must not be empty");
  ExpectError("[[rule]]\nname = \"a\"\ncode = \"\"\nclass = \"content\"\n", 3, 8, "rule[0].code",
              "must not be empty");
  ExpectError("[[rule]]\nname = \"a\"\nenhanced = \"5.1\"\nclass = \"content\"\n", 3, 12,
              "rule[0].enhanced", "'5.1' is not an enhanced status code");
  ExpectError("[[rule]]\nname = \"a\"\nenhanced = [\"5.1.1\", \"5.1.x\"]\nclass = \"content\"\n",
              3, 22, "rule[0].enhanced[1]", "not an enhanced status code");
}

TEST(ClassifierFileErrorTest, TextIsAnRe2Pattern) {
  ExpectError("[[rule]]\nname = \"a\"\ntext = '(unclosed'\nclass = \"content\"\n", 3, 8,
              "rule[0].text", "not a valid RE2 pattern: missing ): (unclosed");
  ExpectError("[[rule]]\nname = \"a\"\ntext = '(?<=x)y'\nclass = \"content\"\n", 3, 8,
              "rule[0].text", "not a valid RE2 pattern");
  ExpectError("[[rule]]\nname = \"a\"\ntext = 'spam|'\nclass = \"content\"\n", 3, 8,
              "rule[0].text", "matches the empty text");
  ExpectError("[[rule]]\nname = \"a\"\ntext = ''\nclass = \"content\"\n", 3, 8, "rule[0].text",
              "must not be empty");
}

TEST(ClassifierFileErrorTest, Sites) {
  ExpectError("[[rule]]\nname = \"a\"\ntext = \"x\"\nsites = \"google\"\nclass = \"content\"\n", 4,
              9, "rule[0].sites", "must be an array of site names");
  ExpectError("[[rule]]\nname = \"a\"\ntext = \"x\"\nsites = []\nclass = \"content\"\n", 4, 9,
              "rule[0].sites", "at least one site");
  ExpectError("[[rule]]\nname = \"a\"\ntext = \"x\"\nsites = [\"ok\", 1]\nclass = \"content\"\n", 4,
              16, "rule[0].sites[1]", "must be a site name");
  ExpectError("[[rule]]\nname = \"a\"\ntext = \"x\"\nsites = [\"no way\"]\nclass = \"content\"\n",
              4, 10, "rule[0].sites[0]", "is not a site name");
}

TEST(ClassifierFileErrorTest, ARuleMustSaySomething) {
  ExpectError("\n[[rule]]\nname = \"a\"\nsites = [\"google\"]\nclass = \"content\"\n", 2, 1,
              "rule[0]", "at least one of code, enhanced and text");
}

TEST(ClassifierFileErrorTest, LaterRulesAreNumbered) {
  ExpectError(
      "[[rule]]\nname = \"a\"\ntext = \"x\"\nclass = \"content\"\n\n"
      "[[rule]]\nname = \"b\"\ntext = \"x\"\nclass = \"content\"\n\n"
      "[[rule]]\nname = \"c\"\ntext = \"x\"\nclass = \"contnet\"\n",
      14, 9, "rule[2].class", "'contnet' is not a response class");
}

TEST(LoadClassifierFileTest, ReadsAFileAndNamesItInErrors) {
  char path[] = "/tmp/classifier_file_test_XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  const std::string text = "[[rule]]\nname = \"a\"\ntext = \"x\"\nclass = \"nope\"\n";
  ASSERT_EQ(write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
  close(fd);
  absl::StatusOr<std::vector<ClassifierRule>> rules = LoadClassifierFile(path);
  ASSERT_FALSE(rules.ok());
  EXPECT_THAT(std::string(rules.status().message()),
              StartsWith(std::string(path) + ":4:9: key 'rule[0].class'"));
  std::remove(path);
  rules = LoadClassifierFile(path);
  ASSERT_FALSE(rules.ok());
  EXPECT_THAT(std::string(rules.status().message()), HasSubstr(path));
}

// ---- The shipped file ----

TEST(ShippedClassifierTest, EmbeddedFileParsesAndCompiles) {
  std::vector<ClassifierRule> rules = DefaultClassifierRules();
  EXPECT_GE(rules.size(), 50u);
  absl::StatusOr<throttle::ResponseClassifier> classifier =
      throttle::ResponseClassifier::Create(rules);
  ASSERT_TRUE(classifier.ok()) << classifier.status();
  EXPECT_EQ(classifier->rule_count(), rules.size());
}

TEST(ShippedClassifierTest, EmbeddedTextIsTheFileInTheTree) {
  const char* source_dir = std::getenv("FACTEUR_SOURCE_DIR");
  if (source_dir == nullptr) GTEST_SKIP() << "FACTEUR_SOURCE_DIR not set (run under ctest)";
  std::ifstream in(std::string(source_dir) + "/deploy/classifier.toml", std::ios::binary);
  ASSERT_TRUE(in.good());
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_EQ(text.str(), EmbeddedClassifierToml());
  EXPECT_TRUE(LoadClassifierFile(std::string(source_dir) + "/deploy/classifier.toml").ok());
}

TEST(ShippedClassifierTest, SitesAreTheShapingFileNames) {
  // A site the shipped shaping file does not name would make a rule silently dead.
  absl::StatusOr<toml::table> shaping = ParseToml(EmbeddedShapingToml(), "shaping.toml");
  ASSERT_TRUE(shaping.ok()) << shaping.status();
  std::set<std::string> known;
  if (const toml::array* sites = (*shaping)["site"].as_array()) {
    for (const toml::node& site : *sites) {
      if (const toml::table* table = site.as_table()) {
        if (std::optional<std::string> name = (*table)["name"].value<std::string>()) {
          known.insert(*name);
        }
      }
    }
  }
  ASSERT_FALSE(known.empty()) << "deploy/shaping.toml names no [[site]]";
  int site_rules = 0;
  for (const ClassifierRule& rule : DefaultClassifierRules()) {
    for (const std::string& site : rule.sites) {
      EXPECT_TRUE(known.count(site)) << rule.name << ": " << site;
      ++site_rules;
    }
  }
  EXPECT_GT(site_rules, 0);
}

TEST(ShippedClassifierTest, EveryClassButSuccessHasARule) {
  std::set<ResponseClass> classes;
  for (const ClassifierRule& rule : DefaultClassifierRules()) classes.insert(rule.response_class);
  for (size_t i = 1; i < throttle::kResponseClassCount; ++i) {
    EXPECT_TRUE(classes.count(static_cast<ResponseClass>(i))) << throttle::kResponseClassNames[i];
  }
}

}  // namespace
}  // namespace facteur::config
