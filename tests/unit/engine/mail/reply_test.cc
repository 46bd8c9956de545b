#include "engine/mail/reply.h"

#include <ostream>
#include <string>

#include "gtest/gtest.h"

namespace facteur::mail {
namespace {

struct FormatCase {
  const char* name;
  Reply reply;
  bool with_enhanced;
  std::string want;
};

void PrintTo(const FormatCase& c, std::ostream* os) { *os << ::testing::PrintToString(c.name); }

class ReplyFormatTest : public ::testing::TestWithParam<FormatCase> {};

TEST_P(ReplyFormatTest, Formats) {
  const FormatCase& c = GetParam();
  EXPECT_EQ(c.reply.Format(c.with_enhanced), c.want);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ReplyFormatTest,
    ::testing::Values(
        FormatCase{"single_enhanced", {250, "2.1.0", "Sender OK"}, true, "250 2.1.0 Sender OK\r\n"},
        FormatCase{"single_without_enhanced_flag", {250, "2.1.0", "Sender OK"}, false,
                   "250 Sender OK\r\n"},
        FormatCase{"single_no_enhanced_code", {220, "", "mx.example ESMTP"}, true,
                   "220 mx.example ESMTP\r\n"},
        FormatCase{"multiline_enhanced", {250, "2.0.0", "mx.example\nPIPELINING\nSIZE 10240000"},
                   true,
                   "250-2.0.0 mx.example\r\n250-2.0.0 PIPELINING\r\n250 2.0.0 SIZE 10240000\r\n"},
        FormatCase{"multiline_plain", {250, "", "mx.example\nPIPELINING\nSTARTTLS"}, true,
                   "250-mx.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n"},
        FormatCase{"multiline_enhanced_suppressed", {550, "5.7.1", "Refused\nSee policy"}, false,
                   "550-Refused\r\n550 See policy\r\n"},
        FormatCase{"empty_text", {354, "", ""}, true, "354\r\n"},
        FormatCase{"empty_text_enhanced", {250, "2.0.0", ""}, true, "250 2.0.0\r\n"},
        FormatCase{"crlf_in_text", {451, "4.3.0", "a\r\nb"}, true,
                   "451-4.3.0 a\r\n451 4.3.0 b\r\n"}),
    [](const ::testing::TestParamInfo<FormatCase>& info) { return info.param.name; });

TEST(ReplyTest, Classes) {
  EXPECT_TRUE((Reply{250, "", ""}).IsPositive());
  EXPECT_TRUE((Reply{354, "", ""}).IsPositive());
  EXPECT_TRUE((Reply{451, "", ""}).IsTransient());
  EXPECT_TRUE((Reply{550, "", ""}).IsPermanent());
  EXPECT_FALSE((Reply{550, "", ""}).IsTransient());
}

}  // namespace
}  // namespace facteur::mail
