#include "engine/mail/command.h"

#include <ostream>
#include <string>

#include "gtest/gtest.h"

namespace facteur::mail {
namespace {

struct CommandCase {
  std::string line;
  Verb verb;
  std::string verb_text;
  std::string argument;
};

void PrintTo(const CommandCase& c, std::ostream* os) { *os << ::testing::PrintToString(c.line); }

class ParseCommandTest : public ::testing::TestWithParam<CommandCase> {};

TEST_P(ParseCommandTest, Splits) {
  const CommandCase& c = GetParam();
  const Command command = ParseCommand(c.line);
  EXPECT_EQ(command.verb, c.verb) << c.line;
  EXPECT_EQ(command.verb_text, c.verb_text);
  EXPECT_EQ(command.argument, c.argument);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ParseCommandTest,
    ::testing::Values(
        CommandCase{"EHLO client.example", Verb::kEhlo, "EHLO", "client.example"},
        CommandCase{"helo client.example", Verb::kHelo, "helo", "client.example"},
        CommandCase{"MAIL FROM:<a@b.example> SIZE=10", Verb::kMail, "MAIL",
                    "FROM:<a@b.example> SIZE=10"},
        CommandCase{"rcpt  TO:<a@b.example>  ", Verb::kRcpt, "rcpt", "TO:<a@b.example>"},
        CommandCase{"DATA", Verb::kData, "DATA", ""},
        CommandCase{"BDAT 1000 LAST", Verb::kBdat, "BDAT", "1000 LAST"},
        CommandCase{"RSET", Verb::kRset, "RSET", ""},
        CommandCase{"noop x", Verb::kNoop, "noop", "x"},
        CommandCase{"QuIt", Verb::kQuit, "QuIt", ""},
        CommandCase{"VRFY postmaster", Verb::kVrfy, "VRFY", "postmaster"},
        CommandCase{"EXPN list", Verb::kExpn, "EXPN", "list"},
        CommandCase{"HELP", Verb::kHelp, "HELP", ""},
        CommandCase{"STARTTLS", Verb::kStartTls, "STARTTLS", ""},
        CommandCase{"starttls ", Verb::kStartTls, "starttls", ""},
        CommandCase{"AUTH PLAIN AGFAAGI=", Verb::kAuth, "AUTH", "PLAIN AGFAAGI="},
        CommandCase{"MAILFROM:<a@b>", Verb::kUnknown, "MAILFROM:<a@b>", ""},
        CommandCase{"", Verb::kUnknown, "", ""},
        CommandCase{" EHLO x", Verb::kUnknown, "", "EHLO x"},
        CommandCase{"XCLIENT ADDR=1.2.3.4", Verb::kUnknown, "XCLIENT", "ADDR=1.2.3.4"}));

// A refusal: the exact code, enhanced code, and a word of its text.
struct RefusalCase {
  std::string argument;
  int code;
  std::string enhanced;
  std::string text_contains;
};

void PrintTo(const RefusalCase& c, std::ostream* os) {
  *os << ::testing::PrintToString(c.argument);
}

class MailFromRefusalTest : public ::testing::TestWithParam<RefusalCase> {};

TEST_P(MailFromRefusalTest, Refuses) {
  const RefusalCase& c = GetParam();
  const ReplyOr<MailFromArguments> result = ParseMailFrom(c.argument);
  const Reply* refusal = RefusalOf(result);
  ASSERT_NE(refusal, nullptr) << "accepted: " << c.argument;
  EXPECT_EQ(refusal->code, c.code) << c.argument << " -> " << refusal->text;
  EXPECT_EQ(refusal->enhanced, c.enhanced) << c.argument;
  EXPECT_NE(refusal->text.find(c.text_contains), std::string::npos) << refusal->text;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, MailFromRefusalTest,
    ::testing::Values(
        RefusalCase{"", 501, "5.5.4", "Syntax: MAIL FROM:<address>"},
        RefusalCase{"TO:<a@b.example>", 501, "5.5.4", "Syntax: MAIL FROM:<address>"},
        RefusalCase{"FROM:a@b.example", 501, "5.5.4", "Syntax: MAIL FROM:<address>"},
        RefusalCase{"FROM:<a@b.example", 501, "5.5.4", "Syntax"},
        RefusalCase{"FROM:<a@b.example>SIZE=1", 501, "5.5.4", "Syntax"},
        RefusalCase{"FROM <a@b.example>", 501, "5.5.4", "Syntax"},
        RefusalCase{"FROM:<a@b.example> SIZE=", 501, "5.5.4", "SIZE"},
        RefusalCase{"FROM:<a@b.example> SIZE", 501, "5.5.4", "SIZE"},
        RefusalCase{"FROM:<a@b.example> SIZE=12a", 501, "5.5.4", "SIZE"},
        RefusalCase{"FROM:<a@b.example> SIZE=123456789012345678901", 501, "5.5.4", "SIZE"},
        RefusalCase{"FROM:<a@b.example> SIZE=1 size=2", 501, "5.5.4", "Duplicate"},
        RefusalCase{"FROM:<a@b.example> BODY=9BIT", 501, "5.5.4", "BODY"},
        RefusalCase{"FROM:<a@b.example> SMTPUTF8=yes", 501, "5.5.4", "SMTPUTF8"},
        RefusalCase{"FROM:<a@b.example> RET=ALL", 501, "5.5.4", "RET"},
        RefusalCase{"FROM:<a@b.example> ENVID=" + std::string(101, 'x'), 501, "5.5.4", "ENVID"},
        RefusalCase{"FROM:<a@b.example> ENVID=ab+zz", 501, "5.5.4", "ENVID"},
        RefusalCase{"FROM:<a@b.example> AUTH=a+2", 501, "5.5.4", "AUTH"},
        RefusalCase{"FROM:<a@b.example> -SIZE=1", 501, "5.5.4", "Malformed parameter"},
        RefusalCase{"FROM:<a@b.example> X\nY", 501, "5.5.4", "Malformed parameter X?Y"},
        RefusalCase{"FROM:<a@b.example> XYZ=1", 555, "5.5.4", "Unsupported parameter XYZ"},
        RefusalCase{"FROM:<a@b.example> NOTIFY=NEVER", 555, "5.5.4", "Unsupported parameter"},
        RefusalCase{"FROM:<jean@asso..org>", 501, "5.1.7", "Sender address"},
        RefusalCase{"FROM:<jean>", 501, "5.1.7", "Sender address"},
        RefusalCase{"FROM:<@relay:jean>", 501, "5.1.7", "Sender address"},
        RefusalCase{"FROM:<relay:jean@asso.org>", 501, "5.1.7", "Sender address"},
        RefusalCase{"FROM:<" + std::string(65, 'a') + "@asso.org>", 501, "5.1.7", "64 octets"},
        RefusalCase{"FROM:<@" + std::string(60, 'r') + ",@" + std::string(60, 'r') + ",@" +
                        std::string(60, 'r') + ":" + std::string(60, 'a') + "@asso.org>",
                    501, "5.1.7", "too long"},
        RefusalCase{"FROM:<Postmaster>", 501, "5.1.7", "Sender address"},
        RefusalCase{"FROM:<jos\xC3\xA9@asso.org>", 553, "5.6.7",
                    "Non-ASCII address requires SMTPUTF8"},
        RefusalCase{"FROM:<jos\xC3@asso.org> SMTPUTF8", 501, "5.1.7", "UTF-8"}));

class RcptToRefusalTest : public ::testing::TestWithParam<RefusalCase> {};

TEST_P(RcptToRefusalTest, Refuses) {
  const RefusalCase& c = GetParam();
  const ReplyOr<RcptToArguments> result = ParseRcptTo(c.argument, /*smtputf8=*/false);
  const Reply* refusal = RefusalOf(result);
  ASSERT_NE(refusal, nullptr) << "accepted: " << c.argument;
  EXPECT_EQ(refusal->code, c.code) << c.argument << " -> " << refusal->text;
  EXPECT_EQ(refusal->enhanced, c.enhanced) << c.argument;
  EXPECT_NE(refusal->text.find(c.text_contains), std::string::npos) << refusal->text;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, RcptToRefusalTest,
    ::testing::Values(
        RefusalCase{"FROM:<a@b.example>", 501, "5.5.4", "Syntax: RCPT TO:<address>"},
        RefusalCase{"TO:a@b.example", 501, "5.5.4", "Syntax: RCPT TO:<address>"},
        RefusalCase{"TO:<>", 501, "5.1.3", "Recipient address"},
        RefusalCase{"TO:<a@b.example> NOTIFY=NEVER,SUCCESS", 501, "5.5.4", "NOTIFY"},
        RefusalCase{"TO:<a@b.example> NOTIFY=SOMETIMES", 501, "5.5.4", "NOTIFY"},
        RefusalCase{"TO:<a@b.example> NOTIFY=SUCCESS,", 501, "5.5.4", "NOTIFY"},
        RefusalCase{"TO:<a@b.example> NOTIFY", 501, "5.5.4", "NOTIFY"},
        RefusalCase{"TO:<a@b.example> ORCPT=a@b.example", 501, "5.5.4", "ORCPT"},
        RefusalCase{"TO:<a@b.example> ORCPT=;a@b.example", 501, "5.5.4", "ORCPT"},
        RefusalCase{"TO:<a@b.example> ORCPT=rfc822;a+zz", 501, "5.5.4", "ORCPT"},
        RefusalCase{"TO:<a@b.example> NOTIFY=DELAY notify=FAILURE", 501, "5.5.4", "Duplicate"},
        RefusalCase{"TO:<a@b.example> SIZE=10", 555, "5.5.4", "Unsupported parameter SIZE"},
        RefusalCase{"TO:<a@b.example> SMTPUTF8", 555, "5.5.4", "Unsupported parameter"},
        RefusalCase{"TO:<a b@b.example>", 501, "5.1.3", "Recipient address"},
        RefusalCase{"TO:<a@[300.1.1.1]>", 501, "5.1.3", "Recipient address"},
        RefusalCase{"TO:<postmaster@>", 501, "5.1.3", "Recipient address"},
        RefusalCase{"TO:<jos\xC3\xA9@asso.org>", 553, "5.6.7",
                    "Non-ASCII address requires SMTPUTF8"},
        RefusalCase{"TO:<a@\xC3\xA9t\xC3\xA9.fr>", 553, "5.6.7", "SMTPUTF8"}));

TEST(ParseMailFromTest, AcceptsParameters) {
  const ReplyOr<MailFromArguments> result = ParseMailFrom(
      "from:<jean@asso.org> size=12345 body=8bitmime ret=hdrs ENVID=QQ+2B314 AUTH=<>");
  ASSERT_EQ(RefusalOf(result), nullptr) << RefusalOf(result)->text;
  const MailFromArguments& args = std::get<MailFromArguments>(result);
  ASSERT_TRUE(args.sender.has_value());
  EXPECT_EQ(*args.sender, (Mailbox{"jean", "asso.org"}));
  EXPECT_EQ(args.size, 12345u);
  EXPECT_EQ(args.body, BodyType::k8BitMime);
  EXPECT_FALSE(args.smtputf8);
  EXPECT_EQ(args.ret, "HDRS");
  EXPECT_EQ(args.envid, "QQ+2B314");
}

struct MailFromCase {
  std::string argument;
  std::optional<Mailbox> sender;
};

void PrintTo(const MailFromCase& c, std::ostream* os) {
  *os << ::testing::PrintToString(c.argument);
}

class MailFromAcceptTest : public ::testing::TestWithParam<MailFromCase> {};

TEST_P(MailFromAcceptTest, Accepts) {
  const ReplyOr<MailFromArguments> result = ParseMailFrom(GetParam().argument);
  ASSERT_EQ(RefusalOf(result), nullptr) << GetParam().argument << " -> "
                                        << RefusalOf(result)->Format();
  EXPECT_EQ(std::get<MailFromArguments>(result).sender, GetParam().sender);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, MailFromAcceptTest,
    ::testing::Values(
        MailFromCase{"FROM:<>", std::nullopt},
        MailFromCase{"FROM: <>", std::nullopt},
        MailFromCase{"FROM:<> BODY=7BIT", std::nullopt},
        MailFromCase{"FROM:   <a@b.example>", Mailbox{"a", "b.example"}},
        MailFromCase{"FROM:<a@b.example>   SIZE=1  ", Mailbox{"a", "b.example"}},
        MailFromCase{"FROM:<@relay.example,@hub.example:a@b.example>", Mailbox{"a", "b.example"}},
        MailFromCase{"FROM:<\"john > doe\"@b.example> SIZE=5", Mailbox{"john > doe", "b.example"}},
        MailFromCase{"FROM:<a@[192.0.2.1]>", Mailbox{"a", "[192.0.2.1]"}},
        MailFromCase{"FROM:<a@b.example> SIZE=18446744073709551615", Mailbox{"a", "b.example"}},
        MailFromCase{"FROM:<jos\xC3\xA9@asso.org> SMTPUTF8",
                     Mailbox{"jos\xC3\xA9", "asso.org"}},
        MailFromCase{"FROM:<a@b.example> AUTH=jean+40asso.org", Mailbox{"a", "b.example"}},
        MailFromCase{"FROM:<a@b.example> BODY=BINARYMIME", Mailbox{"a", "b.example"}}));

TEST(ParseMailFromTest, SizeAndUtf8) {
  const ReplyOr<MailFromArguments> big =
      ParseMailFrom("FROM:<a@b.example> SIZE=99999999999999999999");
  ASSERT_EQ(RefusalOf(big), nullptr);
  EXPECT_EQ(std::get<MailFromArguments>(big).size, std::numeric_limits<uint64_t>::max());
  const ReplyOr<MailFromArguments> utf8 = ParseMailFrom("FROM:<a@b.example> smtputf8");
  ASSERT_EQ(RefusalOf(utf8), nullptr);
  EXPECT_TRUE(std::get<MailFromArguments>(utf8).smtputf8);
  EXPECT_FALSE(std::get<MailFromArguments>(utf8).size.has_value());
}

TEST(ParseRcptToTest, AcceptsParameters) {
  const ReplyOr<RcptToArguments> result =
      ParseRcptTo("To: <marie@asso.org> notify=success,delay ORCPT=rfc822;marie+40asso.org",
                  false);
  ASSERT_EQ(RefusalOf(result), nullptr) << RefusalOf(result)->text;
  const RcptToArguments& args = std::get<RcptToArguments>(result);
  EXPECT_EQ(args.recipient, (Mailbox{"marie", "asso.org"}));
  EXPECT_EQ(args.notify, "SUCCESS,DELAY");
  EXPECT_EQ(args.orcpt, "rfc822;marie+40asso.org");
}

struct RcptCase {
  std::string argument;
  bool smtputf8;
  Mailbox recipient;
};

void PrintTo(const RcptCase& c, std::ostream* os) { *os << ::testing::PrintToString(c.argument); }

class RcptToAcceptTest : public ::testing::TestWithParam<RcptCase> {};

TEST_P(RcptToAcceptTest, Accepts) {
  const ReplyOr<RcptToArguments> result = ParseRcptTo(GetParam().argument, GetParam().smtputf8);
  ASSERT_EQ(RefusalOf(result), nullptr) << GetParam().argument << " -> "
                                        << RefusalOf(result)->Format();
  EXPECT_EQ(std::get<RcptToArguments>(result).recipient, GetParam().recipient);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, RcptToAcceptTest,
    ::testing::Values(
        RcptCase{"TO:<Postmaster>", false, Mailbox{"Postmaster", ""}},
        RcptCase{"to:<POSTMASTER>", false, Mailbox{"POSTMASTER", ""}},
        RcptCase{"TO:<postmaster@asso.org>", false, Mailbox{"postmaster", "asso.org"}},
        RcptCase{"TO:<@hub.example:marie@asso.org>", false, Mailbox{"marie", "asso.org"}},
        RcptCase{"TO:<marie@asso.org> NOTIFY=NEVER", false, Mailbox{"marie", "asso.org"}},
        RcptCase{"TO:<jos\xC3\xA9@\xC3\xA9t\xC3\xA9.fr>", true,
                 Mailbox{"jos\xC3\xA9", "\xC3\xA9t\xC3\xA9.fr"}},
        RcptCase{"TO:<\"a b\"@[IPv6:2001:db8::2]>", false, Mailbox{"a b", "[IPv6:2001:db8::2]"}}));

TEST(DsnParameterTest, XtextAndOrcptAreDecodedForTheDsn) {
  EXPECT_EQ(DecodeXtext("campaign+2B42+3Dx"), "campaign+42=x");
  EXPECT_EQ(DecodeXtext("plain"), "plain");
  EXPECT_EQ(DecodeXtext("bad+2"), "bad+2");  // a broken escape stays as it is
  EXPECT_EQ(DecodeOrcpt("rfc822;list+2Bbounce@example.org"), "rfc822;list+bounce@example.org");
  // RFC 6533 §3: a utf-8 type's \x{HEX} is the character ("+" is \x{2B} there).
  EXPECT_EQ(DecodeOrcpt("utf-8;\\x{E9}lodie\\x{2B}x@exemple.fr"), "utf-8;\xC3\xA9lodie+x@exemple.fr");
  EXPECT_EQ(DecodeOrcpt("rfc822;\\x{E9}@x"), "rfc822;\\x{E9}@x");  // only for utf-8
  EXPECT_EQ(DecodeOrcpt("utf-8;\\x{D800}@x"), "utf-8;\\x{D800}@x");  // no surrogates
  EXPECT_EQ(DecodeOrcpt("no-semicolon"), "no-semicolon");
}

}  // namespace
}  // namespace facteur::mail
