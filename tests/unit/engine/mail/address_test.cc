#include "engine/mail/address.h"

#include <ostream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace facteur::mail {
namespace {

using ::testing::ElementsAre;

struct MailboxCase {
  std::string text;
  bool allow_utf8;
  bool valid;
  std::string local_part = "";  // expected, when valid
  std::string domain = "";
};

void PrintTo(const MailboxCase& c, std::ostream* os) { *os << ::testing::PrintToString(c.text); }

class ParseMailboxTest : public ::testing::TestWithParam<MailboxCase> {};

TEST_P(ParseMailboxTest, Parses) {
  const MailboxCase& c = GetParam();
  absl::StatusOr<Mailbox> mailbox = ParseMailbox(c.text, c.allow_utf8);
  ASSERT_EQ(mailbox.ok(), c.valid) << "input: " << c.text << " status: " << mailbox.status();
  if (!c.valid) {
    EXPECT_EQ(mailbox.status().code(), absl::StatusCode::kInvalidArgument);
    return;
  }
  EXPECT_EQ(mailbox->local_part, c.local_part);
  EXPECT_EQ(mailbox->domain, c.domain);
  // The serialised form parses back to the same mailbox.
  absl::StatusOr<Mailbox> again = ParseMailbox(mailbox->ToString(), c.allow_utf8);
  ASSERT_TRUE(again.ok()) << mailbox->ToString();
  EXPECT_EQ(*again, *mailbox);
}

const std::string k64(64, 'a');
const std::string k63Label(63, 'b');

INSTANTIATE_TEST_SUITE_P(
    Valid, ParseMailboxTest,
    ::testing::Values(
        MailboxCase{"jean@asso.org", false, true, "jean", "asso.org"},
        MailboxCase{"jean.dupont@asso.org", false, true, "jean.dupont", "asso.org"},
        MailboxCase{"a+tag@x.example", false, true, "a+tag", "x.example"},
        MailboxCase{"!#$%&'*+-/=?^_`{|}~@x.example", false, true, "!#$%&'*+-/=?^_`{|}~",
                    "x.example"},
        MailboxCase{"\"john doe\"@x.example", false, true, "john doe", "x.example"},
        MailboxCase{"\"a\\\"b\\\\c\"@x.example", false, true, "a\"b\\c", "x.example"},
        MailboxCase{"\"a..b\"@x.example", false, true, "a..b", "x.example"},
        MailboxCase{"\"a@b\"@x.example", false, true, "a@b", "x.example"},
        MailboxCase{"user@localhost", false, true, "user", "localhost"},
        MailboxCase{"user@[192.0.2.1]", false, true, "user", "[192.0.2.1]"},
        MailboxCase{"user@[IPv6:2001:db8::1]", false, true, "user", "[IPv6:2001:db8::1]"},
        MailboxCase{"user@[ipv6:::1]", false, true, "user", "[ipv6:::1]"},
        MailboxCase{"user@a-b.c0.example", false, true, "user", "a-b.c0.example"},
        MailboxCase{k64 + "@x.example", false, true, k64, "x.example"},
        MailboxCase{"u@" + k63Label + ".example", false, true, "u", k63Label + ".example"},
        MailboxCase{"jos\xC3\xA9@x.example", true, true, "jos\xC3\xA9", "x.example"},
        MailboxCase{"user@\xC3\xA9t\xC3\xA9.example", true, true, "user",
                    "\xC3\xA9t\xC3\xA9.example"},
        MailboxCase{"\"\xE2\x82\xAC \"@x.example", true, true, "\xE2\x82\xAC ", "x.example"}));

INSTANTIATE_TEST_SUITE_P(
    Invalid, ParseMailboxTest,
    ::testing::Values(
        MailboxCase{"", false, false}, MailboxCase{"jean", false, false},
        MailboxCase{"jean@", false, false}, MailboxCase{"@asso.org", false, false},
        MailboxCase{".jean@asso.org", false, false}, MailboxCase{"jean.@asso.org", false, false},
        MailboxCase{"je..an@asso.org", false, false},
        MailboxCase{"je an@asso.org", false, false},
        MailboxCase{"a@b@asso.org", false, false},
        MailboxCase{"\"unterminated@asso.org", false, false},
        MailboxCase{"\"a\"b@asso.org", false, false},
        MailboxCase{"\"tab\there\"@asso.org", false, false},
        MailboxCase{"a@-x.example", false, false}, MailboxCase{"a@x-.example", false, false},
        MailboxCase{"a@x..example", false, false}, MailboxCase{"a@x.example.", false, false},
        MailboxCase{"a@x_y.example", false, false},
        MailboxCase{k64 + "a@x.example", false, false},
        MailboxCase{"u@" + k63Label + "b.example", false, false},
        MailboxCase{"u@" + std::string(250, 'a'), false, false},  // label over 63 octets
        MailboxCase{"a@[192.0.2.256]", false, false},
        MailboxCase{"a@[192.0.2.1", false, false},
        MailboxCase{"a@[IPv6:2001:db8::g]", false, false},
        MailboxCase{"a@[IPv6:192.0.2.1]", false, false},
        MailboxCase{"a@[x400:c=fr]", false, false},
        MailboxCase{"jos\xC3\xA9@x.example", false, false},
        MailboxCase{"user@\xC3\xA9t\xC3\xA9.example", false, false},
        MailboxCase{"jos\xC3@x.example", true, false},           // truncated sequence
        MailboxCase{"jos\xC0\xA9@x.example", true, false},       // overlong
        MailboxCase{"jos\xED\xA0\x80@x.example", true, false},   // surrogate
        MailboxCase{"user@\xFF.example", true, false}));

TEST(AsciiDomainTest, ULabelsBecomeALabelsAndAsciiIsLowercased) {
  EXPECT_EQ(*AsciiDomain("B\xc3\xbc" "cher.Example"), "xn--bcher-kva.example");
  EXPECT_EQ(*AsciiDomain("BÜCHER.example"), "xn--bcher-kva.example");  // UTS #46 maps case
  EXPECT_EQ(*AsciiDomain("Mail.Example.ORG"), "mail.example.org");
  EXPECT_EQ(*AsciiDomain("xn--bcher-kva.example"), "xn--bcher-kva.example");
  // Nontransitional (IDNA2008): ß keeps its own A-label instead of becoming "ss".
  EXPECT_EQ(*AsciiDomain("stra\xc3\x9f" "e.example"), "xn--strae-oqa.example");
  // A symbol IDNA2008 disallows, and octets that are no UTF-8.
  EXPECT_FALSE(AsciiDomain("\xe2\x98\x83.example").ok());
  EXPECT_FALSE(AsciiDomain("\xff\xfe.example").ok());
  // Characters UTS #46 maps to ASCII no host name holds: "℀" to "a/c", "﹫" to "@", a
  // full-width dot to a doubled or a trailing one.
  EXPECT_FALSE(AsciiDomain("\xe2\x84\x80.example").ok());
  EXPECT_FALSE(AsciiDomain("\xef\xb9\xabx.b\xc3\xbc" "cher.example").ok());
  EXPECT_FALSE(AsciiDomain("b\xc3\xbc" "cher\xef\xbc\x8e\xef\xbc\x8e" "example").ok());
  EXPECT_FALSE(AsciiDomain("b\xc3\xbc" "cher.example\xef\xbc\x8e").ok());
}

TEST(MailboxTest, LengthLimitsAreExact) {
  // A 254-octet mailbox is a 256-octet path: the largest allowed.
  const std::string domain = std::string(63, 'a') + "." + std::string(63, 'b') + "." +
                             std::string(63, 'c') + "." + std::string(61, 'd');
  ASSERT_EQ(domain.size(), 253u);
  EXPECT_TRUE(IsValidDomain(domain, false));
  EXPECT_FALSE(ParseMailbox("u@" + domain, false).ok());  // 255 octets
  EXPECT_TRUE(ParseMailbox("u@" + domain.substr(1), false).ok());  // 254 octets
}

TEST(MailboxTest, ToStringQuotesWhenNeeded) {
  EXPECT_EQ((Mailbox{"jean", "asso.org"}).ToString(), "jean@asso.org");
  EXPECT_EQ((Mailbox{"john doe", "x.example"}).ToString(), "\"john doe\"@x.example");
  EXPECT_EQ((Mailbox{"a\"b\\", "x"}).ToString(), "\"a\\\"b\\\\\"@x");
  EXPECT_EQ((Mailbox{".a", "x"}).ToString(), "\".a\"@x");
  EXPECT_EQ((Mailbox{"", "x"}).ToString(), "\"\"@x");
  EXPECT_EQ((Mailbox{"Postmaster", ""}).ToString(), "Postmaster");
}

TEST(MailboxTest, CanonicalAndUtf8) {
  EXPECT_EQ((Mailbox{"Jean.Dupont", "Asso.ORG"}).Canonical(), "jean.dupont@asso.org");
  EXPECT_EQ((Mailbox{"JOS\xC3\x89", "X"}).Canonical(), "jos\xC3\x89@x");  // ASCII only
  EXPECT_FALSE((Mailbox{"jean", "asso.org"}).NeedsSmtpUtf8());
  EXPECT_TRUE((Mailbox{"jos\xC3\xA9", "asso.org"}).NeedsSmtpUtf8());
  EXPECT_TRUE((Mailbox{"jose", "\xC3\xA9t\xC3\xA9.fr"}).NeedsSmtpUtf8());
}

struct DomainCase {
  std::string domain;
  bool allow_utf8;
  bool valid;
};

void PrintTo(const DomainCase& c, std::ostream* os) { *os << ::testing::PrintToString(c.domain); }

class IsValidDomainTest : public ::testing::TestWithParam<DomainCase> {};

TEST_P(IsValidDomainTest, Checks) {
  EXPECT_EQ(IsValidDomain(GetParam().domain, GetParam().allow_utf8), GetParam().valid)
      << GetParam().domain;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, IsValidDomainTest,
    ::testing::Values(DomainCase{"example.org", false, true}, DomainCase{"localhost", false, true},
                      DomainCase{"3com.example", false, true}, DomainCase{"a", false, true},
                      DomainCase{"xn--tt-bma.example", false, true},
                      DomainCase{"[198.51.100.7]", false, true},
                      DomainCase{"[IPv6:::ffff:192.0.2.1]", false, true},
                      DomainCase{"\xC3\xA9t\xC3\xA9.fr", true, true},
                      DomainCase{"", false, false}, DomainCase{".example", false, false},
                      DomainCase{"ex ample.org", false, false},
                      DomainCase{"-a.example", false, false},
                      DomainCase{std::string(64, 'a') + ".example", false, false},
                      DomainCase{std::string(256, 'a'), false, false},
                      DomainCase{"[01.2.3.4]", false, false}, DomainCase{"[]", false, false},
                      DomainCase{"[1.2.3]", false, false},
                      DomainCase{"\xC3\xA9t\xC3\xA9.fr", false, false},
                      DomainCase{"\xC3.fr", true, false}));

struct AddressListCase {
  const char* name;
  std::string value;
  std::vector<std::string> want;  // ToString() of each mailbox; empty: an error
};

void PrintTo(const AddressListCase& c, std::ostream* os) {
  *os << ::testing::PrintToString(c.value);
}

class ParseAddressListTest : public ::testing::TestWithParam<AddressListCase> {};

TEST_P(ParseAddressListTest, Parses) {
  const AddressListCase& c = GetParam();
  absl::StatusOr<std::vector<Mailbox>> mailboxes = ParseAddressList(c.value);
  if (c.want.empty()) {
    ASSERT_FALSE(mailboxes.ok()) << "parsed " << mailboxes->size() << " from " << c.value;
    EXPECT_EQ(mailboxes.status().code(), absl::StatusCode::kInvalidArgument);
    return;
  }
  ASSERT_TRUE(mailboxes.ok()) << c.value << ": " << mailboxes.status();
  std::vector<std::string> got;
  for (const Mailbox& m : *mailboxes) got.push_back(m.ToString());
  EXPECT_EQ(got, c.want);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ParseAddressListTest,
    ::testing::Values(
        AddressListCase{"addr_spec", "jean.dupont@asso.org", {"jean.dupont@asso.org"}},
        AddressListCase{"name_addr", "Jean Dupont <jean.dupont@asso.org>",
                        {"jean.dupont@asso.org"}},
        AddressListCase{"quoted_name_with_comma", "\"Dupont, Jean\" <j@asso.org>",
                        {"j@asso.org"}},
        AddressListCase{"angle_only", "<j@asso.org>", {"j@asso.org"}},
        AddressListCase{"trailing_comment", "j@asso.org (Jean Dupont)", {"j@asso.org"}},
        AddressListCase{"nested_comments", "(a (nested \\) comment)) Jean <j@asso.org> (x)",
                        {"j@asso.org"}},
        AddressListCase{"comment_inside_addr", "j(comment)@(another)asso.org", {"j@asso.org"}},
        AddressListCase{"several", "a@x.example, \"B\" <b@y.example>,c@z.example",
                        {"a@x.example", "b@y.example", "c@z.example"}},
        AddressListCase{"group", "Team: a@x.example, B <b@y.example>;",
                        {"a@x.example", "b@y.example"}},
        AddressListCase{"group_and_mailbox", "Team: a@x.example;, c@z.example",
                        {"a@x.example", "c@z.example"}},
        AddressListCase{"empty_group_and_mailbox", "undisclosed-recipients:;, c@z.example",
                        {"c@z.example"}},
        AddressListCase{"folded", "Jean\r\n Dupont\r\n\t<jean@asso.org>", {"jean@asso.org"}},
        AddressListCase{"final_crlf", "jean@asso.org\r\n", {"jean@asso.org"}},
        AddressListCase{"obs_phrase_dot", "John Q. Public <jqp@x.example>", {"jqp@x.example"}},
        AddressListCase{"obs_local_part", "\"a\".b@x.example", {"a.b@x.example"}},
        AddressListCase{"quoted_local_part", "\"john doe\"@x.example",
                        {"\"john doe\"@x.example"}},
        AddressListCase{"obs_trailing_empty", "a@x.example,,", {"a@x.example"}},
        AddressListCase{"obs_route", "<@relay.example:a@x.example>", {"a@x.example"}},
        AddressListCase{"domain_literal", "a@[192.0.2.1]", {"a@[192.0.2.1]"}},
        AddressListCase{"encoded_word_name", "=?UTF-8?Q?Jos=C3=A9?= <jose@x.example>",
                        {"jose@x.example"}},
        AddressListCase{"utf8_rfc6532", "Jos\xC3\xA9 <jos\xC3\xA9@\xC3\xA9t\xC3\xA9.fr>",
                        {"jos\xC3\xA9@\xC3\xA9t\xC3\xA9.fr"}},
        AddressListCase{"undisclosed_only", "undisclosed-recipients:;", {}},
        AddressListCase{"empty", "", {}},
        AddressListCase{"only_comment", "(nobody)", {}},
        AddressListCase{"display_name_only", "Jean Dupont", {}},
        AddressListCase{"unclosed_angle", "Jean <j@asso.org", {}},
        AddressListCase{"missing_comma", "a@x.example b@y.example", {}},
        AddressListCase{"words_before_at", "Jean j@asso.org", {}},
        AddressListCase{"nested_group", "A: B: c@d.example;;", {}},
        AddressListCase{"unclosed_group", "A: c@d.example", {}},
        AddressListCase{"unterminated_comment", "j@asso.org (oops", {}},
        AddressListCase{"unterminated_quote", "\"Jean <j@asso.org>", {}},
        AddressListCase{"bare_lf", "Jean\n<j@asso.org>", {}},
        AddressListCase{"malformed_utf8", "Jos\xC3 <j@asso.org>", {}},
        AddressListCase{"trailing_dot_domain", "j@asso.org.", {}}),
    [](const ::testing::TestParamInfo<AddressListCase>& info) { return info.param.name; });

TEST(ParseAddressListTest, KeepsUnquotedLocalPart) {
  absl::StatusOr<std::vector<Mailbox>> mailboxes =
      ParseAddressList("\"Dupont, Jean\" <\"jean dupont\"@Asso.org>");
  ASSERT_TRUE(mailboxes.ok());
  EXPECT_THAT(*mailboxes, ElementsAre(Mailbox{"jean dupont", "Asso.org"}));
}

TEST(NamesNoMailboxTest, EmptyValuesAndMemberlessGroupsOnly) {
  for (const char* nobody : {"", "  ", "undisclosed-recipients:;", "undisclosed-recipients: (none);",
                             "a:;, b: ;", "(just a comment)"}) {
    EXPECT_TRUE(NamesNoMailbox(nobody)) << nobody;
  }
  for (const char* somebody : {"a@x.example", "team: a@x.example;", "root", "a@@x", "team:"}) {
    EXPECT_FALSE(NamesNoMailbox(somebody)) << somebody;
  }
}

}  // namespace
}  // namespace facteur::mail
