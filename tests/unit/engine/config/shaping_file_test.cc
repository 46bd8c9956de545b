// The shaping file: the shipped deploy/shaping.toml parses and recognises the large providers by
// their real MX names; built-in reactions; inheritance ([defaults] → site → domain, file-wide →
// site reactions); every validation error names FILE:LINE:COL and the dotted key.
#include "engine/config/shaping_file.h"

#include <cstdlib>
#include <string>
#include <vector>

#include "engine/config/embedded_files.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "throttle/site_matcher.h"

namespace facteur::config {
namespace {

using throttle::ClassAction;
using throttle::ResponseClass;
using throttle::ShapingOptions;
using throttle::SiteLimits;
using throttle::SiteMatcher;
using throttle::SiteOptions;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

size_t Index(ResponseClass c) { return static_cast<size_t>(c); }

std::string ErrorOf(std::string_view text) {
  absl::StatusOr<ShapingOptions> options = ParseShapingFile(text, "shaping.toml");
  EXPECT_FALSE(options.ok()) << "parsed:\n" << text;
  if (options.ok()) return "";
  EXPECT_EQ(options.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(options.status().message());
}

// `text` fails at `line`:`column`, naming `key`, with a reason containing `reason`.
void ExpectError(std::string_view text, int line, int column, std::string_view key,
                 std::string_view reason) {
  std::string message = ErrorOf(text);
  EXPECT_THAT(message, StartsWith("shaping.toml:" + std::to_string(line) + ":" +
                                  std::to_string(column) + ": "))
      << text;
  EXPECT_THAT(message, HasSubstr("key '" + std::string(key) + "': ")) << text;
  EXPECT_THAT(message, HasSubstr(std::string(reason))) << text;
}

ShapingOptions ParseOk(std::string_view text) {
  absl::StatusOr<ShapingOptions> options = ParseShapingFile(text, "shaping.toml");
  EXPECT_TRUE(options.ok()) << options.status();
  return options.ok() ? *std::move(options) : ShapingOptions();
}

const SiteOptions* FindSite(const ShapingOptions& options, std::string_view name) {
  for (const SiteOptions& site : options.sites) {
    if (site.name == name) return &site;
  }
  return nullptr;
}

// The reaction a site has to `c`: its own, else the file-wide one.
ClassAction ActionOf(const ShapingOptions& options, const SiteOptions& site, ResponseClass c) {
  return site.actions[Index(c)].value_or(options.actions[Index(c)]);
}

// --- The shipped file ---------------------------------------------------------------------------

TEST(ShippedShapingTest, ParsesAndNamesTheLargeProviders) {
  absl::StatusOr<ShapingOptions> parsed = ParseShapingFile(EmbeddedShapingToml(), "shipped");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ShapingOptions options = DefaultShaping();
  std::vector<std::string> names;
  for (const SiteOptions& site : options.sites) names.push_back(site.name);
  EXPECT_THAT(names, ElementsAre("google", "outlook", "office365", "yahoo", "apple", "orange",
                                 "free", "sfr", "laposte", "gmx", "infomaniak", "ovh"));
  for (const SiteOptions& site : options.sites) {
    EXPECT_FALSE(site.mx_patterns.empty()) << site.name;
    // Every site states its own hourly rate rather than inheriting the unknown-site one.
    EXPECT_GT(site.limits.messages_per_hour, 0u) << site.name;
  }
}

TEST(ShippedShapingTest, IsTheFileInTheSourceTree) {
  const char* source_dir = std::getenv("FACTEUR_SOURCE_DIR");
  if (source_dir == nullptr) GTEST_SKIP() << "FACTEUR_SOURCE_DIR is not set (run through ctest)";
  absl::StatusOr<ShapingOptions> loaded =
      LoadShapingFile(std::string(source_dir) + "/deploy/shaping.toml");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ShapingOptions shipped = DefaultShaping();
  ASSERT_EQ(loaded->sites.size(), shipped.sites.size());
  for (size_t i = 0; i < shipped.sites.size(); ++i) {
    EXPECT_EQ(loaded->sites[i].name, shipped.sites[i].name);
    EXPECT_EQ(loaded->sites[i].mx_patterns, shipped.sites[i].mx_patterns);
  }
}

TEST(ShippedShapingTest, ConservativeDefaultsForUnknownMxSets) {
  ShapingOptions options = DefaultShaping();
  EXPECT_EQ(options.default_limits.max_connections, 2u);
  EXPECT_EQ(options.default_limits.max_messages_per_connection, 20u);
  EXPECT_EQ(options.default_limits.max_recipients_per_message, 50u);
  EXPECT_GT(options.default_limits.messages_per_hour, 0u);
  EXPECT_LE(options.default_limits.messages_per_hour, 1000u);
}

TEST(ShippedShapingTest, ProviderLimitsFromTheResearch) {
  ShapingOptions options = DefaultShaping();
  const SiteOptions* google = FindSite(options, "google");
  ASSERT_NE(google, nullptr);
  EXPECT_EQ(google->limits.max_connections, 5u);
  EXPECT_EQ(google->limits.max_messages_per_connection, 50u);
  ClassAction rate_limit = ActionOf(options, *google, ResponseClass::kRateLimit);
  EXPECT_GE(rate_limit.suspend, absl::Minutes(10));  // [1]: stop at least 10 minutes
  EXPECT_EQ(rate_limit.max_connections, 1u);          // [1]: resume on one connection
  EXPECT_LT(rate_limit.rate_factor, 1.0);

  const SiteOptions* orange = FindSite(options, "orange");
  ASSERT_NE(orange, nullptr);
  EXPECT_EQ(orange->limits.max_connections, 3u);
  EXPECT_EQ(orange->limits.connections_per_hour, 1000u);
  EXPECT_EQ(ActionOf(options, *orange, ResponseClass::kTooManyConnections).max_connections, 1u);
  // "1 conn 1 h" (providers.md §6); "Service refuse"/OFR_999: 1-2 h, the longer.
  EXPECT_EQ(ActionOf(options, *orange, ResponseClass::kTooManyConnections).hold, absl::Hours(1));
  EXPECT_EQ(ActionOf(options, *orange, ResponseClass::kRateLimit).suspend, absl::Hours(2));

  // Microsoft: 1 connection, a tenth of the rate, for 90 minutes (providers.md §1.3, §6).
  for (const char* name : {"outlook", "office365"}) {
    const SiteOptions* microsoft = FindSite(options, name);
    ASSERT_NE(microsoft, nullptr) << name;
    ClassAction throttled = ActionOf(options, *microsoft, ResponseClass::kRateLimit);
    EXPECT_EQ(throttled.max_connections, 1u) << name;
    EXPECT_EQ(throttled.hold, absl::Minutes(90)) << name;
    EXPECT_EQ(ActionOf(options, *microsoft, ResponseClass::kTooManyConnections).hold,
              absl::Hours(1))
        << name;
  }

  const SiteOptions* yahoo = FindSite(options, "yahoo");
  ASSERT_NE(yahoo, nullptr);
  EXPECT_EQ(yahoo->limits.max_messages_per_connection, 20u);
  // TS01 after 4 h in Yahoo's own help, TSS05 4 h (providers.md §1.2).
  EXPECT_EQ(ActionOf(options, *yahoo, ResponseClass::kRateLimit).suspend, absl::Hours(4));

  const SiteOptions* apple = FindSite(options, "apple");
  ASSERT_NE(apple, nullptr);
  EXPECT_EQ(apple->limits.max_messages_per_connection, 5u);

  const SiteOptions* free = FindSite(options, "free");
  ASSERT_NE(free, nullptr);
  EXPECT_EQ(ActionOf(options, *free, ResponseClass::kBlocklist).suspend, absl::Hours(24));
  // A site's blocklist reaction that only changes the pause keeps the file-wide preference.
  EXPECT_TRUE(ActionOf(options, *free, ResponseClass::kBlocklist).prefer_other_source);

  for (const SiteOptions& site : options.sites) {
    ClassAction greylist = ActionOf(options, site, ResponseClass::kGreylist);
    EXPECT_FALSE(greylist.reputation_hit) << site.name;
    EXPECT_EQ(greylist.suspend, absl::ZeroDuration()) << site.name;
  }
}

TEST(ShippedShapingTest, WarmupIsOptIn) {
  ShapingOptions options = DefaultShaping();
  ASSERT_EQ(options.warmup_plans.size(), 1u);
  EXPECT_EQ(options.warmup_plans[0].name, "conservative");
  const std::vector<uint32_t>& caps = options.warmup_plans[0].daily_caps;
  ASSERT_EQ(caps.size(), 30u);
  EXPECT_THAT(std::vector<uint32_t>(caps.begin(), caps.begin() + 10),
              ElementsAre(50, 100, 200, 400, 800, 1500, 3000, 5000, 7500, 10000));
  EXPECT_EQ(caps.back(), 175000u);
  EXPECT_TRUE(options.pool_warmup.empty());
}

TEST(ShippedShapingTest, RecognisesRealMxHostNames) {
  ShapingOptions options = DefaultShaping();
  SiteMatcher matcher(options);
  auto site = [&](std::vector<std::string> hosts) {
    SiteMatcher::Match match = matcher.ForDomain("recipient.example", hosts);
    return match.site == nullptr ? std::string("(none)") : match.site->name;
  };
  EXPECT_EQ(site({"gmail-smtp-in.l.google.com.", "alt1.gmail-smtp-in.l.google.com."}), "google");
  EXPECT_EQ(site({"aspmx.l.google.com", "alt1.aspmx.l.google.com", "aspmx2.googlemail.com"}),
            "google");
  EXPECT_EQ(site({"smtp.google.com"}), "google");
  EXPECT_EQ(site({"hotmail-com.olc.protection.outlook.com"}), "outlook");
  EXPECT_EQ(site({"example-com.mail.protection.outlook.com"}), "office365");
  EXPECT_EQ(site({"example-com.l-v1.mx.microsoft"}), "office365");
  EXPECT_EQ(site({"mta5.am0.yahoodns.net", "mta7.am0.yahoodns.net"}), "yahoo");
  EXPECT_EQ(site({"mx-aol.mail.gm0.yahoodns.net"}), "yahoo");
  EXPECT_EQ(site({"mx01.mail.icloud.com", "mx02.mail.icloud.com"}), "apple");
  EXPECT_EQ(site({"smtp-in.orange.fr"}), "orange");
  EXPECT_EQ(site({"mx1.free.fr", "mx2.free.fr"}), "free");
  EXPECT_EQ(site({"smtp-in.sfr.fr"}), "sfr");
  EXPECT_EQ(site({"mx.laposte.net"}), "laposte");
  EXPECT_EQ(site({"mx00.gmx.net", "mx01.gmx.net"}), "gmx");
  EXPECT_EQ(site({"mx-ha03.web.de", "mx-ha02.web.de"}), "gmx");
  EXPECT_EQ(site({"mta-gw.infomaniak.ch"}), "infomaniak");
  EXPECT_EQ(site({"mx1.mail.ovh.net", "mx2.mail.ovh.net"}), "ovh");
  // A customer's own server on an OVH VPS is not OVH's mail platform.
  EXPECT_EQ(site({"vps-1234abcd.vps.ovh.net"}), "(none)");
  EXPECT_EQ(site({"mail.example.org"}), "(none)");
}

// --- Built-in reactions and an empty file -------------------------------------------------------

TEST(ShapingFileTest, AnEmptyFileGivesTheBuiltInReactionsAndStructDefaults) {
  ShapingOptions options = ParseOk("");
  EXPECT_TRUE(options.sites.empty());
  EXPECT_TRUE(options.domains.empty());
  EXPECT_EQ(options.default_limits.max_connections, SiteLimits().max_connections);
  EXPECT_EQ(options.greylist.first_delay, absl::Minutes(5));
  EXPECT_EQ(options.backoff.max_suspension, absl::Hours(24));
  EXPECT_EQ(options.backoff.rate_memory, absl::Hours(1));
  EXPECT_EQ(ParseOk("[backoff]\nrate_memory = \"20m\"\n").backoff.rate_memory, absl::Minutes(20));

  const ClassAction& greylist = options.actions[Index(ResponseClass::kGreylist)];
  EXPECT_EQ(greylist.suspend, absl::ZeroDuration());
  EXPECT_FALSE(greylist.reputation_hit);

  const ClassAction& rate_limit = options.actions[Index(ResponseClass::kRateLimit)];
  EXPECT_EQ(rate_limit.suspend, absl::Minutes(10));
  EXPECT_EQ(rate_limit.rate_factor, 0.5);
  EXPECT_EQ(rate_limit.max_connections, 1u);
  EXPECT_TRUE(rate_limit.reputation_hit);

  const ClassAction& connections = options.actions[Index(ResponseClass::kTooManyConnections)];
  EXPECT_EQ(connections.suspend, absl::Minutes(1));
  EXPECT_EQ(connections.rate_factor, 1.0);
  EXPECT_EQ(connections.max_connections, 1u);

  const ClassAction& blocklist = options.actions[Index(ResponseClass::kBlocklist)];
  EXPECT_EQ(blocklist.suspend, absl::Hours(4));
  EXPECT_TRUE(blocklist.prefer_other_source);
  EXPECT_TRUE(blocklist.reputation_hit);

  for (ResponseClass c : {ResponseClass::kContent, ResponseClass::kAuthentication}) {
    EXPECT_TRUE(options.actions[Index(c)].reputation_hit);
    EXPECT_EQ(options.actions[Index(c)].suspend, absl::ZeroDuration());
  }
  for (ResponseClass c : {ResponseClass::kSuccess, ResponseClass::kUserUnknown,
                          ResponseClass::kMailboxFull, ResponseClass::kDomainNotFound,
                          ResponseClass::kOtherTransient, ResponseClass::kOtherPermanent}) {
    const ClassAction& action = options.actions[Index(c)];
    EXPECT_FALSE(action.reputation_hit) << throttle::ResponseClassName(c);
    EXPECT_EQ(action.suspend, absl::ZeroDuration());
    EXPECT_EQ(action.rate_factor, 1.0);
    EXPECT_EQ(action.max_connections, 0u);
    EXPECT_FALSE(action.prefer_other_source);
  }
}

// --- Inheritance --------------------------------------------------------------------------------

constexpr std::string_view kLayered = R"toml(
[defaults]
max_connections = 3
messages_per_hour = 100

[actions.rate_limit]
suspend = "30m"

[actions.greylist]
suspend = "0s"

[[site]]
name = "big"
mx = ["*.Big.Example.", "mx.other.example"]
[site.limits]
max_connections = 8
[site.actions.rate_limit]
rate_factor = 0.25
hold = "90m"
[site.actions.blocklist]
suspend = 0

[[site]]
name = "plain"
mx = ["mx.plain.example"]

[[domain]]
domain = "Gentle.Example"
site = "big"
[domain.limits]
messages_per_hour = 10

[[domain]]
domain = "moved.example"
site = "plain"

[[domain]]
domain = "alone.example"
limits = { max_connections = 1 }

[[warmup]]
name = "fast"
daily_caps = [10, 10, 20]

[warmup_pools]
new-ips = "fast"
"pool.two" = "fast"
)toml";

TEST(ShapingFileTest, LimitsAndReactionsInheritFromTheLevelAbove) {
  ShapingOptions options = ParseOk(kLayered);
  EXPECT_EQ(options.default_limits.max_connections, 3u);
  EXPECT_EQ(options.default_limits.max_messages_per_connection, 50u);  // struct default
  // File-wide reactions overlay the built-in ones.
  EXPECT_EQ(options.actions[Index(ResponseClass::kRateLimit)].suspend, absl::Minutes(30));
  EXPECT_EQ(options.actions[Index(ResponseClass::kRateLimit)].rate_factor, 0.5);

  ASSERT_EQ(options.sites.size(), 2u);
  const SiteOptions& big = options.sites[0];
  EXPECT_THAT(big.mx_patterns, ElementsAre("*.big.example", "mx.other.example"));
  EXPECT_EQ(big.limits.max_connections, 8u);
  EXPECT_EQ(big.limits.messages_per_hour, 100u);  // from [defaults]
  ASSERT_TRUE(big.actions[Index(ResponseClass::kRateLimit)].has_value());
  const ClassAction& rate_limit = *big.actions[Index(ResponseClass::kRateLimit)];
  EXPECT_EQ(rate_limit.rate_factor, 0.25);
  EXPECT_EQ(rate_limit.suspend, absl::Minutes(30));  // from [actions.rate_limit]
  EXPECT_EQ(rate_limit.max_connections, 1u);          // built in
  EXPECT_EQ(rate_limit.hold, absl::Minutes(90));
  EXPECT_EQ(options.actions[Index(ResponseClass::kRateLimit)].hold, absl::ZeroDuration());
  ASSERT_TRUE(big.actions[Index(ResponseClass::kBlocklist)].has_value());
  EXPECT_EQ(big.actions[Index(ResponseClass::kBlocklist)]->suspend, absl::ZeroDuration());
  EXPECT_TRUE(big.actions[Index(ResponseClass::kBlocklist)]->prefer_other_source);
  EXPECT_FALSE(big.actions[Index(ResponseClass::kGreylist)].has_value());

  EXPECT_EQ(options.sites[1].limits.max_connections, 3u);  // all from [defaults]

  ASSERT_EQ(options.domains.size(), 3u);
  EXPECT_EQ(options.domains[0].domain, "gentle.example");
  EXPECT_EQ(options.domains[0].site, "big");
  ASSERT_TRUE(options.domains[0].limits.has_value());
  EXPECT_EQ(options.domains[0].limits->max_connections, 8u);  // from its site
  EXPECT_EQ(options.domains[0].limits->messages_per_hour, 10u);
  EXPECT_FALSE(options.domains[1].limits.has_value());
  ASSERT_TRUE(options.domains[2].limits.has_value());
  EXPECT_EQ(options.domains[2].limits->max_connections, 1u);
  EXPECT_EQ(options.domains[2].limits->messages_per_hour, 100u);  // from [defaults]

  ASSERT_EQ(options.warmup_plans.size(), 1u);
  EXPECT_THAT(options.warmup_plans[0].daily_caps, ElementsAre(10, 10, 20));
  ASSERT_EQ(options.pool_warmup.size(), 2u);
  EXPECT_EQ(options.pool_warmup[0], (std::pair<std::string, std::string>("new-ips", "fast")));
  EXPECT_EQ(options.pool_warmup[1].first, "pool.two");

  // And the matcher on top: the override wins, with its own key.
  SiteMatcher matcher(options);
  std::vector<std::string> plain_mx = {"mx.plain.example"};
  SiteMatcher::Match match = matcher.ForDomain("gentle.example", plain_mx);
  EXPECT_EQ(match.key, "big/gentle.example");
  EXPECT_EQ(match.limits->messages_per_hour, 10u);
  std::vector<std::string> big_mx = {"MX1.big.example."};
  EXPECT_EQ(matcher.ForDomain("moved.example", big_mx).key, "plain");
}

// --- Errors -------------------------------------------------------------------------------------

TEST(ShapingFileErrorTest, SyntaxErrorsNameTheLineAndColumn) {
  std::string message = ErrorOf("[defaults]\nmax_connections = = 3\n");
  EXPECT_THAT(message, StartsWith("shaping.toml:2:"));
}

TEST(ShapingFileErrorTest, UnknownKeysAreRefusedWithASuggestion) {
  ExpectError("[default]\nmax_connections = 1\n", 1, 2, "default",
              "did you mean 'defaults'?");
  ExpectError("[defaults]\nmax_conections = 1\n", 2, 1, "defaults.max_conections",
              "did you mean 'defaults.max_connections'?");
  ExpectError(R"toml(
[[site]]
name = "a"
mx = ["mx.a.example"]
[[site]]
name = "b"
mx = ["mx.b.example"]
[[site]]
name = "c"
mx = ["mx.c.example"]
[site.limits]
max_connectons = 3
)toml",
              12, 1, "site[2].limits.max_connectons",
              "did you mean 'site[2].limits.max_connections'?");
  ExpectError("[actions.rate_limit]\nsuspnd = \"1m\"\n", 2, 1, "actions.rate_limit.suspnd",
              "did you mean 'actions.rate_limit.suspend'?");
  ExpectError("[[site]]\nname = \"a\"\nmx = [\"a.example\"]\nmxs = []\n", 4, 1, "site[0].mxs",
              "unknown key");
}

TEST(ShapingFileErrorTest, NumbersMustBeInSaneRanges) {
  ExpectError(R"toml(
[[site]]
name = "a"
mx = ["mx.a.example"]
[[site]]
name = "b"
mx = ["mx.b.example"]
[[site]]
name = "c"
mx = ["mx.c.example"]
[site.limits]
max_connections = 0
)toml",
              12, 19, "site[2].limits.max_connections", "between 1 and 10000, got 0");
  ExpectError("[defaults]\nmessages_per_hour = -5\n", 2, 21, "defaults.messages_per_hour",
              "got -5");
  ExpectError("[defaults]\nmax_messages_per_connection = \"50\"\n", 2, 31,
              "defaults.max_messages_per_connection", "must be an integer");
  ExpectError("[actions.rate_limit]\nrate_factor = 0\n", 2, 15, "actions.rate_limit.rate_factor",
              "between 0.01 and 1");
  ExpectError("[actions.blocklist]\nsuspend = \"8d\"\n", 2, 11, "actions.blocklist.suspend",
              "is not a duration");
  ExpectError("[actions.blocklist]\nsuspend = \"200h\"\n", 2, 11, "actions.blocklist.suspend",
              "at most 168h");
  ExpectError("[actions.blocklist]\nsuspend = -1\n", 2, 11, "actions.blocklist.suspend",
              "positive number of seconds");
  ExpectError("[actions.rate_limit]\nhold = \"200h\"\n", 2, 8, "actions.rate_limit.hold",
              "at most 168h");
  ExpectError("[backoff]\nrecovery_step = 2\n", 2, 17, "backoff.recovery_step", "between");
  ExpectError("[greylist]\nbackoff = 0.5\n", 2, 11, "greylist.backoff", "between 1 and 10");
  ExpectError("[greylist]\nmax_delay = \"2m\"\n", 2, 13, "greylist.max_delay",
              "shorter than greylist.first_delay");
  ExpectError("[greylist]\nfirst_delay = \"2h\"\n", 2, 15, "greylist.first_delay",
              "shorter than greylist.first_delay");
}

TEST(ShapingFileErrorTest, ClassNamesAreChecked) {
  std::string message = ErrorOf("[actions.rate_limits]\nsuspend = \"1m\"\n");
  EXPECT_THAT(message, StartsWith("shaping.toml:1:10: key 'actions.rate_limits': "));
  EXPECT_THAT(message, HasSubstr("unknown reply class; did you mean 'rate_limit'? "
                                 "the classes are greylist, rate_limit, "
                                 "too_many_connections, blocklist, content, authentication, "
                                 "user_unknown, mailbox_full, domain_not_found, "
                                 "other_transient, other_permanent"));
  ExpectError("[actions.success]\nsuspend = \"1m\"\n", 1, 10, "actions.success",
              "unknown reply class");
  ExpectError("[[site]]\nname = \"a\"\nmx = [\"a.example\"]\n[site.actions.greylisted]\n"
              "suspend = 0\n",
              4, 15, "site[0].actions.greylisted", "did you mean 'greylist'? the classes are");
  ExpectError("[actions.spam]\nsuspend = 0\n", 1, 10, "actions.spam",
              "unknown reply class; the classes are");
  ExpectError("[actions]\nrate_limit = 3\n", 2, 14, "actions.rate_limit", "must be a table");
}

TEST(ShapingFileErrorTest, SiteNamesAreUniqueMetricLabels) {
  ExpectError("[[site]]\nname = \"Google\"\nmx = [\"a.example\"]\n", 2, 8, "site[0].name",
              "a-z, 0-9, '_' and '-'");
  ExpectError("[[site]]\nname = \"a.b\"\nmx = [\"a.example\"]\n", 2, 8, "site[0].name",
              "metric label");
  ExpectError("[[site]]\nname = \"" + std::string(33, 'x') + "\"\nmx = [\"a.example\"]\n", 2, 8,
              "site[0].name", "1 to 32 characters");
  ExpectError("[[site]]\nmx = [\"a.example\"]\n", 1, 1, "site[0].name", "required");
  ExpectError("[[site]]\nname = \"a\"\nmx = [\"a.example\"]\n[[site]]\nname = \"a\"\n"
              "mx = [\"b.example\"]\n",
              5, 8, "site[1].name", "duplicate site name 'a' (also site[0])");
}

TEST(ShapingFileErrorTest, MxPatternsAreChecked) {
  ExpectError("[[site]]\nname = \"a\"\n", 1, 1, "site[0].mx", "required");
  ExpectError("[[site]]\nname = \"a\"\nmx = []\n", 3, 6, "site[0].mx", "at least one");
  ExpectError("[[site]]\nname = \"a\"\nmx = \"*.a.example\"\n", 3, 6, "site[0].mx",
              "must be an array");
  ExpectError("[[site]]\nname = \"a\"\nmx = [\"mx.a.example\", \"mx*.a.example\"]\n", 3, 23,
              "site[0].mx[1]", "'*' is allowed only as a whole first label");
  ExpectError("[[site]]\nname = \"a\"\nmx = [\"*.*.a.example\"]\n", 3, 7, "site[0].mx[0]",
              "'*' is allowed only");
  ExpectError("[[site]]\nname = \"a\"\nmx = [\"a.*\"]\n", 3, 7, "site[0].mx[0]",
              "'*' is allowed only");
  ExpectError("[[site]]\nname = \"a\"\nmx = [\"*\"]\n", 3, 7, "site[0].mx[0]",
              "'*' is allowed only");
  ExpectError("[[site]]\nname = \"a\"\nmx = [\"*.com\"]\n", 3, 7, "site[0].mx[0]",
              "whole top-level domain");
  ExpectError("[[site]]\nname = \"a\"\nmx = [\"\"]\n", 3, 7, "site[0].mx[0]",
              "is not a host name");
  ExpectError("[[site]]\nname = \"a\"\nmx = [\"mx..a.example\"]\n", 3, 7, "site[0].mx[0]",
              "is not a host name");
  ExpectError("[[site]]\nname = \"a\"\nmx = [\"mx a.example\"]\n", 3, 7, "site[0].mx[0]",
              "is not a host name");
  ExpectError("[[site]]\nname = \"a\"\nmx = [3]\n", 3, 7, "site[0].mx[0]",
              "must be a host name pattern string");
  ExpectError("[[site]]\nname = \"a\"\nmx = [\"*.a.example\"]\n[[site]]\nname = \"b\"\n"
              "mx = [\"*.A.example.\"]\n",
              6, 7, "site[1].mx[0]", "'*.a.example' is listed twice (also by site[0], 'a')");
}

TEST(ShapingFileErrorTest, DomainOverridesAreChecked) {
  ExpectError("[[domain]]\nsite = \"x\"\n", 1, 1, "domain[0].domain", "required");
  ExpectError("[[domain]]\ndomain = \"a.example\"\nsite = \"nope\"\n", 3, 8, "domain[0].site",
              "no [[site]] is named 'nope'");
  ExpectError("[[site]]\nname = \"big\"\nmx = [\"*.big.example\"]\n[[domain]]\n"
              "domain = \"a.example\"\nsite = \"bgi\"\n",
              6, 8, "domain[0].site", "(the sites are big)");
  ExpectError("[[domain]]\ndomain = \"a.example\"\n", 1, 1, "domain[0]", "changes nothing");
  ExpectError("[[domain]]\ndomain = \"*.a.example\"\nlimits = {max_connections = 1}\n", 2, 10,
              "domain[0].domain", "is not a domain name");
  ExpectError("[[domain]]\ndomain = \"a.example\"\nlimits = {max_connections = 1}\n"
              "[[domain]]\ndomain = \"A.example\"\nlimits = {max_connections = 2}\n",
              5, 10, "domain[1].domain", "duplicate domain 'a.example' (also domain[0])");
  ExpectError("[[domain]]\ndomain = \"a.example\"\nlimits = {max_connexions = 1}\n", 3, 11,
              "domain[0].limits.max_connexions", "did you mean");
  ExpectError("[[domain]]\ndomain = \"a.example\"\nlimits = 3\n", 3, 10, "domain[0].limits",
              "must be a table");
}

TEST(ShapingFileErrorTest, WarmupPlansAreChecked) {
  ExpectError("[[warmup]]\nname = \"a\"\n", 1, 1, "warmup[0].daily_caps", "required");
  ExpectError("[[warmup]]\nname = \"a\"\ndaily_caps = []\n", 3, 14, "warmup[0].daily_caps",
              "array of 1 to 366");
  ExpectError("[[warmup]]\nname = \"a\"\ndaily_caps = [10, 0]\n", 3, 19,
              "warmup[0].daily_caps[1]", "between 1 and");
  ExpectError("[[warmup]]\nname = \"a\"\ndaily_caps = [100, 1000, 200]\n", 3, 26,
              "warmup[0].daily_caps[2]", "must not go down (200 after 1000)");
  ExpectError("[[warmup]]\nname = \"a\"\ndaily_caps = [1]\n[[warmup]]\nname = \"a\"\n"
              "daily_caps = [1]\n",
              5, 8, "warmup[1].name", "duplicate warmup plan 'a'");
  ExpectError("[[warmup]]\nname = \"slow\"\ndaily_caps = [1]\n[warmup_pools]\nnew = \"fast\"\n",
              5, 7, "warmup_pools.new", "no [[warmup]] plan is named 'fast' (the plans are slow)");
  ExpectError("[warmup_pools]\nnew = 3\n", 2, 7, "warmup_pools.new",
              "must be a warmup plan name");
  ExpectError("[[warmup]]\nname = \"a\"\ndaily_caps = [1]\n[warmup_pools]\n\"a b\" = \"a\"\n", 5,
              1, "warmup_pools.a b", "a pool name is 1 to 64 printable characters");
}

TEST(ShapingFileTest, LoadNamesAMissingFile) {
  absl::StatusOr<ShapingOptions> options = LoadShapingFile("/nonexistent/shaping.toml");
  ASSERT_FALSE(options.ok());
  EXPECT_THAT(std::string(options.status().message()), HasSubstr("/nonexistent/shaping.toml"));
}

}  // namespace
}  // namespace facteur::config
