// Tests of the router: which route a domain takes, and the sources of each pool.
#include "engine/delivery/router.h"
#include "engine/delivery/shaping.h"

#include <sys/socket.h>

#include "absl/strings/str_cat.h"
#include "engine/base/status.h"
#include "engine/config/config.h"
#include "gtest/gtest.h"

namespace facteur::delivery {
namespace {

config::Config ConfigWith(std::string_view extra) {
  absl::StatusOr<config::Config> config = config::ParseConfig(
      absl::StrCat("hostname = \"relay.example.org\"\n", ToAbsl(extra)), "test.toml");
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : config::Config();
}

TEST(RouterTest, MxOfTheDomainWithoutRoutes) {
  absl::StatusOr<Router> router = Router::Create(ConfigWith(""));
  ASSERT_TRUE(router.ok()) << router.status();
  Destination d = router->Route("Example.ORG");
  EXPECT_EQ(d.key, "mx:example.org");
  EXPECT_TRUE(d.mx_lookup);
  EXPECT_EQ(d.host, "example.org");
  EXPECT_EQ(d.port, 25);
  EXPECT_EQ(d.tls, config::DeliveryTlsPolicy::kOpportunistic);
  ASSERT_EQ(router->Sources(d.pool).size(), 1u);
  EXPECT_EQ(router->Sources(d.pool)[0].ehlo_name, "relay.example.org");
  EXPECT_FALSE(router->Sources(d.pool)[0].bind.has_value());
}

TEST(RouterTest, ExactThenLongestParentThenWildcard) {
  absl::StatusOr<Router> router = Router::Create(ConfigWith(R"toml(
[delivery]
smtp_port = 2525
[[source]]
name = "a"
address = "127.0.0.2"
ehlo_name = "out-a.example.org"
pool = "bulk"
[[source]]
name = "b"
[[route]]
domain = "example.net"
destination = "[127.0.0.9]:2600"
tls = "none"
[[route]]
domain = ".example.net"
destination = "smarthost.example.com"
[[route]]
domain = ".deep.example.net"
tls = "required"
pool = "bulk"
[[route]]
domain = "*"
destination = "[relay.example.com]:587"
)toml"));
  ASSERT_TRUE(router.ok()) << router.status();
  Destination exact = router->Route("example.net");
  EXPECT_EQ(exact.key, "route:[127.0.0.9]:2600");
  EXPECT_FALSE(exact.mx_lookup);
  EXPECT_EQ(exact.host, "127.0.0.9");
  EXPECT_EQ(exact.port, 2600);
  EXPECT_EQ(exact.tls, config::DeliveryTlsPolicy::kNone);

  Destination parent = router->Route("mail.example.net");
  EXPECT_TRUE(parent.mx_lookup);
  EXPECT_EQ(parent.host, "smarthost.example.com");
  EXPECT_EQ(parent.port, 2525);

  Destination deep = router->Route("a.deep.example.net");
  EXPECT_EQ(deep.key, "mx:a.deep.example.net");  // a policy-only route: MX of the domain
  EXPECT_EQ(deep.tls, config::DeliveryTlsPolicy::kRequired);
  EXPECT_EQ(deep.pool, "bulk");
  ASSERT_EQ(router->Sources("bulk").size(), 1u);
  EXPECT_EQ(router->Sources("bulk")[0].ip, "127.0.0.2");
  ASSERT_TRUE(router->Sources("bulk")[0].bind.has_value());
  EXPECT_EQ(router->Sources("bulk")[0].bind->family(), AF_INET);

  Destination other = router->Route("elsewhere.org");
  EXPECT_EQ(other.key, "route:[relay.example.com]:587");
  EXPECT_FALSE(other.mx_lookup);
  EXPECT_EQ(other.host, "relay.example.com");
  EXPECT_EQ(other.port, 587);
  EXPECT_TRUE(router->Sources("no-such-pool").empty());
  // By name, whatever the pool.
  ASSERT_NE(router->SourceNamed("a"), nullptr);
  EXPECT_EQ(router->SourceNamed("a")->ip, "127.0.0.2");
  ASSERT_NE(router->SourceNamed("b"), nullptr);
  EXPECT_EQ(router->SourceNamed("b")->ip, "");
  EXPECT_EQ(router->SourceNamed("c"), nullptr);
}

}  // namespace
}  // namespace facteur::delivery

namespace facteur::delivery {
namespace {

// Metric labels stay bounded whatever the MX sets and overrides (DESIGN.md §6).
TEST(SiteLabelTest, NamedSitesRoutesAndOther) {
  EXPECT_EQ(SiteLabel("google"), "google");
  EXPECT_EQ(SiteLabel("google/example.com"), "google");
  EXPECT_EQ(SiteLabel("mx:mx1.example.net,mx2.example.net"), "other");
  EXPECT_EQ(SiteLabel("mx:mx.example.net/example.net"), "other");
  EXPECT_EQ(SiteLabel("route:[smtp.example.net]:587"), "route");
  EXPECT_EQ(SiteLabel(""), "other");
}

}  // namespace
}  // namespace facteur::delivery
