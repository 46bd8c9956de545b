#include "engine/policy/sender_policy.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace facteur::policy {
namespace {

mail::Mailbox Box(std::string local, std::string domain) {
  return mail::Mailbox{std::move(local), std::move(domain)};
}

struct Case {
  std::vector<std::string> grants;
  mail::Mailbox address;
  bool allowed;
  const char* why;
};

TEST(MaySendAsTest, Table) {
  const std::vector<Case> cases = {
      {{"alice@example.com"}, Box("alice", "example.com"), true, "exact"},
      {{"alice@example.com"}, Box("Alice", "EXAMPLE.com"), true, "case of the address"},
      {{"ALICE@Example.com"}, Box("alice", "example.com"), true, "case of the grant"},
      {{"alice@example.com"}, Box("bob", "example.com"), false, "other local part"},
      {{"alice@example.com"}, Box("alice", "example.org"), false, "other domain"},
      {{"@example.com"}, Box("anyone", "example.com"), true, "domain grant"},
      {{"@example.com"}, Box("anyone", "Example.COM"), true, "domain grant, case"},
      {{"@EXAMPLE.com"}, Box("anyone", "example.com"), true, "domain grant in capitals"},
      {{"@example.com"}, Box("anyone", "news.example.com"), false, "subdomain refused"},
      {{"@example.com"}, Box("anyone", "example.com.evil.net"), false, "suffix trick refused"},
      {{"@example.com"}, Box("anyone", "badexample.com"), false, "not a label boundary"},
      {{"@example.com"}, Box("anyone", "example.org"), false, "other domain"},
      {{"alice@example.com"}, Box("alice@example.com", "evil.net"), false, "quoted local part"},
      {{}, Box("alice", "example.com"), false, "no grants"},
      {{"@example.com", "bob@example.org"}, Box("bob", "example.org"), true, "second grant"},
      {{"@example.com"}, Box("", ""), false, "null sender"},
      {{"@"}, Box("a", ""), false, "degenerate grant"},
      {{"élise@exemple.fr"}, Box("élise", "Exemple.fr"), true, "UTF-8 local part"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(MaySendAs(c.grants, c.address), c.allowed) << c.why;
  }
}

TEST(SenderRefusalTest, Sentence) {
  EXPECT_EQ(SenderRefusal("alice", Box("x", "y.com")),
            "Sender address <x@y.com> is not among the addresses account 'alice' may send as");
}

}  // namespace
}  // namespace facteur::policy
