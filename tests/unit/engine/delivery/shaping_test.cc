// Tests of the shaping snapshot's ForKey: what a site key a shard already knows stands for in a
// new snapshot (a SIGHUP reload must find the new limits of the sites it has state for).
#include "engine/delivery/shaping.h"

#include <memory>
#include <utility>

#include "gtest/gtest.h"

namespace facteur::delivery {
namespace {

std::unique_ptr<Shaping> MakeShaping(uint32_t google_connections) {
  throttle::ShapingOptions options;
  throttle::SiteOptions google;
  google.name = "google";
  google.mx_patterns = {"*.google.com"};
  google.limits.max_connections = google_connections;
  options.sites.push_back(std::move(google));
  options.default_limits.max_connections = 3;
  throttle::DomainOverride override;
  override.domain = "example.com";
  override.limits = throttle::SiteLimits{};
  override.limits->max_connections = 9;
  options.domains.push_back(std::move(override));
  absl::StatusOr<std::unique_ptr<Shaping>> shaping = Shaping::Create(std::move(options), {});
  EXPECT_TRUE(shaping.ok()) << shaping.status();
  return shaping.ok() ? *std::move(shaping) : nullptr;
}

TEST(ShapingTest, ForKeyFindsWhatForDomainMatched) {
  std::unique_ptr<Shaping> shaping = MakeShaping(7);
  ASSERT_NE(shaping, nullptr);
  const std::vector<std::string> google_mx = {"aspmx.l.google.com"};
  const std::vector<std::string> other_mx = {"mx.other.test"};
  for (const auto& [domain, hosts] :
       {std::pair{"gmail.com", google_mx}, std::pair{"example.com", google_mx},
        std::pair{"other.test", other_mx}}) {
    const throttle::SiteMatcher::Match matched = shaping->matcher().ForDomain(domain, hosts);
    const throttle::SiteMatcher::Match again = shaping->ForKey(matched.key);
    EXPECT_EQ(again.key, matched.key);
    EXPECT_EQ(again.site, matched.site) << matched.key;
    EXPECT_EQ(again.limits, matched.limits) << matched.key;
  }
}

TEST(ShapingTest, ForKeyInANewSnapshotGivesItsLimits) {
  std::unique_ptr<Shaping> reloaded = MakeShaping(12);
  ASSERT_NE(reloaded, nullptr);
  EXPECT_EQ(reloaded->ForKey("google").limits->max_connections, 12u);
  EXPECT_EQ(reloaded->ForKey("google/example.com").limits->max_connections, 9u);
  EXPECT_EQ(reloaded->ForKey("mx:mx.other.test").limits->max_connections, 3u);
  EXPECT_EQ(reloaded->ForKey("mx:mx.other.test").site, nullptr);
  // A site the new file no longer names: the default limits.
  EXPECT_EQ(reloaded->ForKey("yahoo").site, nullptr);
  EXPECT_EQ(reloaded->ForKey("yahoo").limits->max_connections, 3u);
  // A route: no site, no limits (they are [delivery]'s).
  EXPECT_EQ(reloaded->ForKey("route:[127.0.0.1]:25").limits, nullptr);
}

}  // namespace
}  // namespace facteur::delivery
