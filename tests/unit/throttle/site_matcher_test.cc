// SiteMatcher: real MX host names of the large providers, suffix versus exact patterns, case and
// trailing dots, first-site-wins order, unknown MX sets (sorted, de-duplicated, capped keys), and
// [[domain]] overrides winning over MX patterns.
#include "throttle/site_matcher.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace facteur::throttle {
namespace {

using ::testing::StartsWith;

SiteOptions Site(std::string name, std::vector<std::string> patterns, uint32_t connections) {
  SiteOptions site;
  site.name = std::move(name);
  site.mx_patterns = std::move(patterns);
  site.limits.max_connections = connections;
  return site;
}

// Patterns as deploy/shaping.toml ships them.
ShapingOptions Providers() {
  ShapingOptions options;
  options.sites.push_back(Site("google", {"*.google.com", "*.googlemail.com"}, 5));
  options.sites.push_back(Site("outlook", {"*.olc.protection.outlook.com"}, 5));
  options.sites.push_back(
      Site("office365", {"*.mail.protection.outlook.com", "*.mx.microsoft"}, 5));
  options.sites.push_back(Site("yahoo", {"*.yahoodns.net"}, 5));
  options.sites.push_back(Site("apple", {"*.icloud.com"}, 10));
  options.sites.push_back(Site("orange", {"smtp-in.orange.fr"}, 3));
  options.sites.push_back(Site("free", {"*.free.fr"}, 2));
  options.sites.push_back(Site("laposte", {"*.laposte.net"}, 2));
  options.sites.push_back(Site("gmx", {"*.gmx.net", "*.web.de"}, 4));
  options.default_limits.max_connections = 1;
  return options;
}

SiteMatcher::Match Of(const SiteMatcher& matcher, std::string_view domain,
                      std::vector<std::string> hosts) {
  return matcher.ForDomain(domain, hosts);
}

std::string SiteOf(const SiteMatcher& matcher, std::string_view domain,
                   std::vector<std::string> hosts) {
  SiteMatcher::Match match = matcher.ForDomain(domain, hosts);
  EXPECT_NE(match.limits, nullptr);
  return match.site == nullptr ? "(none)" : match.site->name;
}

TEST(SiteMatcherTest, RealMxHostsOfTheLargeProviders) {
  const ShapingOptions options = Providers();
  const SiteMatcher matcher(options);
  EXPECT_EQ(SiteOf(matcher, "gmail.com",
                   {"gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com"}),
            "google");
  EXPECT_EQ(SiteOf(matcher, "example.org",
                   {"aspmx.l.google.com", "alt1.aspmx.l.google.com", "aspmx2.googlemail.com"}),
            "google");
  EXPECT_EQ(SiteOf(matcher, "hotmail.com", {"hotmail-com.olc.protection.outlook.com"}), "outlook");
  EXPECT_EQ(SiteOf(matcher, "example.com", {"example-com.mail.protection.outlook.com"}),
            "office365");
  EXPECT_EQ(SiteOf(matcher, "example.net", {"example-net.s-v1.mx.microsoft"}), "office365");
  EXPECT_EQ(SiteOf(matcher, "yahoo.com", {"mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net"}),
            "yahoo");
  EXPECT_EQ(SiteOf(matcher, "aol.com", {"mx-aol.mail.gm0.yahoodns.net"}), "yahoo");
  EXPECT_EQ(SiteOf(matcher, "icloud.com", {"mx01.mail.icloud.com", "mx02.mail.icloud.com"}),
            "apple");
  EXPECT_EQ(SiteOf(matcher, "wanadoo.fr", {"smtp-in.orange.fr"}), "orange");
  EXPECT_EQ(SiteOf(matcher, "free.fr", {"mx1.free.fr", "mx2.free.fr"}), "free");
  EXPECT_EQ(SiteOf(matcher, "laposte.net", {"mx.laposte.net"}), "laposte");
  EXPECT_EQ(SiteOf(matcher, "gmx.de", {"mx00.gmx.net", "mx01.gmx.net"}), "gmx");
  EXPECT_EQ(SiteOf(matcher, "web.de", {"mx-ha03.web.de"}), "gmx");
}

TEST(SiteMatcherTest, AMatchedSiteGivesItsNameAsKeyAndItsOwnLimits) {
  const ShapingOptions options = Providers();
  const SiteMatcher matcher(options);
  SiteMatcher::Match match = Of(matcher, "gmail.com", {"gmail-smtp-in.l.google.com"});
  ASSERT_NE(match.site, nullptr);
  EXPECT_EQ(match.site, &options.sites[0]);
  EXPECT_EQ(match.key, "google");
  EXPECT_EQ(match.limits, &options.sites[0].limits);
  EXPECT_EQ(match.limits->max_connections, 5u);
}

TEST(SiteMatcherTest, ASuffixPatternNeedsALabelBeforeIt) {
  const ShapingOptions options = Providers();
  const SiteMatcher matcher(options);
  // "*.google.com" is "a name ending in .google.com": not google.com itself, not a name that
  // merely ends with the same characters.
  EXPECT_EQ(SiteOf(matcher, "a.example", {"google.com"}), "(none)");
  EXPECT_EQ(SiteOf(matcher, "a.example", {"mx.notgoogle.com"}), "(none)");
  EXPECT_EQ(SiteOf(matcher, "a.example", {"google.com.evil.example"}), "(none)");
  // An exact pattern matches that name alone.
  EXPECT_EQ(SiteOf(matcher, "a.example", {"smtp-in.orange.fr"}), "orange");
  EXPECT_EQ(SiteOf(matcher, "a.example", {"mx.smtp-in.orange.fr"}), "(none)");
  EXPECT_EQ(SiteOf(matcher, "a.example", {"orange.fr"}), "(none)");
}

TEST(SiteMatcherTest, CaseAndTrailingDotsAreIgnored) {
  ShapingOptions options = Providers();
  options.sites.push_back(Site("mixed", {"MX.Example.ORG.", "*.Upper.Example."}, 1));
  const SiteMatcher matcher(options);
  EXPECT_EQ(SiteOf(matcher, "gmail.com", {"Gmail-SMTP-In.L.Google.COM."}), "google");
  EXPECT_EQ(SiteOf(matcher, "wanadoo.fr", {"SMTP-IN.ORANGE.FR."}), "orange");
  EXPECT_EQ(SiteOf(matcher, "x.example", {"mx.example.org"}), "mixed");
  EXPECT_EQ(SiteOf(matcher, "x.example", {"MX1.upper.example."}), "mixed");
}

TEST(SiteMatcherTest, TheFirstSiteInFileOrderWinsWhateverTheMxOrder) {
  ShapingOptions options;
  options.sites.push_back(Site("first", {"*.example.net"}, 1));
  options.sites.push_back(Site("second", {"mx.b.example.org", "*.example.net"}, 1));
  const SiteMatcher matcher(options);
  EXPECT_EQ(SiteOf(matcher, "d.example", {"mx.b.example.org", "mx.a.example.net"}), "first");
  EXPECT_EQ(SiteOf(matcher, "d.example", {"mx.a.example.net", "mx.b.example.org"}), "first");
  EXPECT_EQ(SiteOf(matcher, "d.example", {"mx.b.example.org"}), "second");
  // One known host among unknown ones puts the domain in that site.
  EXPECT_EQ(SiteOf(matcher, "d.example", {"backup.mx.example", "mx.b.example.org"}), "second");
}

TEST(SiteMatcherTest, AMoreSpecificSuffixOfALaterSiteDoesNotBeatAnEarlierSite) {
  ShapingOptions options;
  options.sites.push_back(Site("broad", {"*.example.com"}, 1));
  options.sites.push_back(Site("narrow", {"*.mail.example.com"}, 1));
  const SiteMatcher matcher(options);
  EXPECT_EQ(SiteOf(matcher, "d.example", {"mx1.mail.example.com"}), "broad");
}

TEST(SiteMatcherTest, AnUnknownMxSetFormsASiteKeyedBySortedLowerCaseUniqueHosts) {
  const ShapingOptions options = Providers();
  const SiteMatcher matcher(options);
  SiteMatcher::Match match = Of(matcher, "corp.example",
                                {"MX2.Corp.Example.", "mx1.corp.example", "mx2.corp.example"});
  EXPECT_EQ(match.site, nullptr);
  EXPECT_EQ(match.key, "mx:mx1.corp.example,mx2.corp.example");
  EXPECT_EQ(match.limits, &options.default_limits);
  // The same set, listed otherwise, by another domain: the same site.
  EXPECT_EQ(Of(matcher, "other.example", {"mx1.corp.example", "MX2.corp.example"}).key,
            "mx:mx1.corp.example,mx2.corp.example");
  EXPECT_NE(Of(matcher, "other.example", {"mx1.corp.example"}).key, match.key);
}

TEST(SiteMatcherTest, ADomainWithoutMxIsItsOwnHost) {
  ShapingOptions options = Providers();
  const SiteMatcher matcher(options);
  // RFC 5321 §5.1: no MX records → the domain itself is the implicit MX.
  EXPECT_EQ(Of(matcher, "Host.Example.", {}).key, "mx:host.example");
  EXPECT_EQ(SiteOf(matcher, "smtp-in.orange.fr", {}), "orange");
}

TEST(SiteMatcherTest, ALongUnknownKeyIsCappedAndStillDistinct) {
  const ShapingOptions options;
  const SiteMatcher matcher(options);
  std::vector<std::string> hosts;
  for (int i = 0; i < 40; ++i) hosts.push_back("mx" + std::to_string(i) + ".big.example");
  std::vector<std::string> others = hosts;
  others.back() = "mx99.big.example";  // sorts last: the cut prefix is the same
  SiteMatcher::Match a = matcher.ForDomain("big.example", hosts);
  SiteMatcher::Match b = matcher.ForDomain("big.example", others);
  EXPECT_EQ(a.key.size(), SiteMatcher::kMaxUnknownKeyLength);
  EXPECT_EQ(b.key.size(), SiteMatcher::kMaxUnknownKeyLength);
  EXPECT_THAT(a.key, StartsWith("mx:mx0.big.example,mx1.big.example,mx10.big.example,"));
  EXPECT_NE(a.key, b.key);
  // Stable: the same set gives the same key (it is shared across a fleet).
  EXPECT_EQ(matcher.ForDomain("big.example", hosts).key, a.key);
}

TEST(SiteMatcherTest, ADomainOverrideByNameWinsOverMxPatterns) {
  ShapingOptions options = Providers();
  DomainOverride to_orange;
  to_orange.domain = "Partner.Example";
  to_orange.site = "orange";
  options.domains.push_back(to_orange);
  const SiteMatcher matcher(options);
  SiteMatcher::Match match = Of(matcher, "partner.example.", {"aspmx.l.google.com"});
  ASSERT_NE(match.site, nullptr);
  EXPECT_EQ(match.site->name, "orange");
  EXPECT_EQ(match.key, "orange");
  EXPECT_EQ(match.limits, &match.site->limits);
  // Only that domain: not a subdomain of it.
  EXPECT_EQ(SiteOf(matcher, "sub.partner.example", {"aspmx.l.google.com"}), "google");
}

TEST(SiteMatcherTest, AnOverrideWithItsOwnLimitsFormsItsOwnSite) {
  ShapingOptions options = Providers();
  DomainOverride slow;
  slow.domain = "slow.example";
  slow.site = "google";
  slow.limits = SiteLimits();
  slow.limits->max_connections = 1;
  slow.limits->messages_per_hour = 60;
  options.domains.push_back(slow);
  DomainOverride own;  // limits only: keeps its MX match
  own.domain = "own.example";
  own.limits = SiteLimits();
  own.limits->max_connections = 7;
  options.domains.push_back(own);
  const SiteMatcher matcher(options);

  SiteMatcher::Match match = Of(matcher, "SLOW.example", {"mx.unknown.example"});
  ASSERT_NE(match.site, nullptr);
  EXPECT_EQ(match.site->name, "google");  // google's reactions to replies
  EXPECT_EQ(match.key, "google/slow.example");
  EXPECT_EQ(match.limits, &*options.domains[0].limits);
  EXPECT_EQ(match.limits->messages_per_hour, 60u);

  match = Of(matcher, "own.example", {"mx01.mail.icloud.com"});
  EXPECT_EQ(match.key, "apple/own.example");
  EXPECT_EQ(match.site->name, "apple");
  EXPECT_EQ(match.limits->max_connections, 7u);

  match = Of(matcher, "own.example", {"mx.own.example"});
  EXPECT_EQ(match.site, nullptr);
  EXPECT_EQ(match.key, "mx:mx.own.example/own.example");
  EXPECT_EQ(match.limits->max_connections, 7u);
}

TEST(SiteMatcherTest, AnOverrideNamingNoSiteKeepsItsMxMatch) {
  ShapingOptions options = Providers();
  DomainOverride stray;
  stray.domain = "stray.example";
  stray.site = "nonexistent";
  options.domains.push_back(stray);
  const SiteMatcher matcher(options);
  EXPECT_EQ(SiteOf(matcher, "stray.example", {"mx00.gmx.net"}), "gmx");
}

TEST(SiteMatcherTest, SiteByName) {
  const ShapingOptions options = Providers();
  const SiteMatcher matcher(options);
  ASSERT_NE(matcher.SiteByName("apple"), nullptr);
  EXPECT_EQ(matcher.SiteByName("apple"), &options.sites[4]);
  EXPECT_EQ(matcher.SiteByName("Apple"), nullptr);
  EXPECT_EQ(matcher.SiteByName("nope"), nullptr);
}

// What an operator types (`site suspend Apple`) finds the site whatever its case.
TEST(SiteMatcherTest, SiteByNameIgnoringCase) {
  const ShapingOptions options = Providers();
  const SiteMatcher matcher(options);
  EXPECT_EQ(matcher.SiteByNameIgnoringCase("Apple"), &options.sites[4]);
  EXPECT_EQ(matcher.SiteByNameIgnoringCase("APPLE"), &options.sites[4]);
  EXPECT_EQ(matcher.SiteByNameIgnoringCase("apple"), &options.sites[4]);
  EXPECT_EQ(matcher.SiteByNameIgnoringCase("nope"), nullptr);
}

}  // namespace
}  // namespace facteur::throttle
