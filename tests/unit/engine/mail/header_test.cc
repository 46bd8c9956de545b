#include "engine/mail/header.h"

#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace facteur::mail {
namespace {

struct SectionCase {
  const char* name;
  std::string message;
  std::vector<std::string> raws;  // each field's raw view
  size_t body_offset;
};

void PrintTo(const SectionCase& c, std::ostream* os) { *os << ::testing::PrintToString(c.name); }

class ParseHeaderSectionTest : public ::testing::TestWithParam<SectionCase> {};

TEST_P(ParseHeaderSectionTest, Splits) {
  const SectionCase& c = GetParam();
  const std::string_view message = c.message;
  const HeaderSection section = ParseHeaderSection(message);
  std::vector<std::string> raws;
  for (const HeaderField& field : section.fields) {
    raws.emplace_back(field.raw);
    // Views point into the message, and each raw starts with its name.
    EXPECT_GE(field.raw.data(), message.data());
    EXPECT_LE(field.raw.data() + field.raw.size(), message.data() + message.size());
    EXPECT_EQ(field.raw.substr(0, field.name.size()), field.name);
    EXPECT_EQ(field.name.data(), field.raw.data());
  }
  EXPECT_EQ(raws, c.raws);
  EXPECT_EQ(section.body_offset, c.body_offset);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ParseHeaderSectionTest,
    ::testing::Values(
        SectionCase{"simple", "From: a@b\r\nTo: c@d\r\n\r\nHello\r\n",
                    {"From: a@b\r\n", "To: c@d\r\n"}, 22},
        SectionCase{"folded",
                    "Subject: a long\r\n subject\r\n\tline\r\nTo: c@d\r\n\r\nbody",
                    {"Subject: a long\r\n subject\r\n\tline\r\n", "To: c@d\r\n"}, 45},
        SectionCase{"body_line_looks_like_header",
                    "From: a@b\r\n\r\nX-Not-A-Header: no\r\n", {"From: a@b\r\n"}, 13},
        SectionCase{"no_blank_line", "From: a@b\r\nTo: c@d\r\n", {"From: a@b\r\n", "To: c@d\r\n"},
                    20},
        SectionCase{"no_final_crlf", "From: a@b\r\nSubject: x", {"From: a@b\r\n", "Subject: x"},
                    21},
        SectionCase{"non_field_line_ends_section",
                    "From: a@b\r\nthis is not a header\r\nTo: c@d\r\n\r\n", {"From: a@b\r\n"},
                    11},
        SectionCase{"leading_continuation", " folded\r\nFrom: a@b\r\n\r\n", {}, 0},
        SectionCase{"empty_message", "", {}, 0},
        SectionCase{"only_blank_line", "\r\nbody", {}, 2},
        SectionCase{"empty_value_and_obs_space", "X-Empty:\r\nSubject : hi\r\n\r\n",
                    {"X-Empty:\r\n", "Subject : hi\r\n"}, 26},
        SectionCase{"colon_first", ": no name\r\n\r\n", {}, 0},
        SectionCase{"whitespace_only_continuation", "Subject: a\r\n \r\n b\r\n\r\nx",
                    {"Subject: a\r\n \r\n b\r\n"}, 21}),
    [](const ::testing::TestParamInfo<SectionCase>& info) { return info.param.name; });

TEST(HeaderTest, NamesWithoutWhitespace) {
  const HeaderSection section = ParseHeaderSection("Subject : hi\r\n\r\n");
  ASSERT_EQ(section.fields.size(), 1u);
  EXPECT_EQ(section.fields[0].name, "Subject");
}

TEST(HeaderTest, FindFieldIsCaseInsensitiveAndFirst) {
  const std::string message =
      "Received: one\r\nfrom: Jean <j@asso.org>\r\nFROM: other@x\r\n\r\n";
  const HeaderSection section = ParseHeaderSection(message);
  const std::optional<HeaderField> from = FindField(section, "From");
  ASSERT_TRUE(from.has_value());
  EXPECT_EQ(from->raw, "from: Jean <j@asso.org>\r\n");
  EXPECT_FALSE(FindField(section, "To").has_value());
  EXPECT_FALSE(FindField(section, "Receive").has_value());
}

TEST(HeaderTest, RemoveFieldsTakesEveryFieldOfTheNamesAndOnlyThose) {
  std::string message =
      "Bcc: a@x,\r\n b@x\r\nTo: t@x\r\nbcc: c@x\r\nX-Bcc: keep\r\n\r\nBcc: body\r\n";
  EXPECT_TRUE(RemoveFields(message, ParseHeaderSection(message), {"Bcc", "Resent-Bcc"}));
  EXPECT_EQ(message, "To: t@x\r\nX-Bcc: keep\r\n\r\nBcc: body\r\n");
  EXPECT_FALSE(RemoveFields(message, ParseHeaderSection(message), {"Bcc"}));
  EXPECT_EQ(message, "To: t@x\r\nX-Bcc: keep\r\n\r\nBcc: body\r\n");
}

struct UnfoldCase {
  std::string raw;
  std::string want;
};

void PrintTo(const UnfoldCase& c, std::ostream* os) { *os << ::testing::PrintToString(c.raw); }

class UnfoldedValueTest : public ::testing::TestWithParam<UnfoldCase> {};

TEST_P(UnfoldedValueTest, Unfolds) {
  const HeaderSection section = ParseHeaderSection(GetParam().raw);
  ASSERT_EQ(section.fields.size(), 1u);
  EXPECT_EQ(UnfoldedValue(section.fields[0]), GetParam().want);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, UnfoldedValueTest,
    ::testing::Values(UnfoldCase{"Subject: hello\r\n", "hello"},
                      UnfoldCase{"Subject:hello", "hello"},
                      UnfoldCase{"Subject:   spaced  \r\n", "spaced"},
                      UnfoldCase{"Subject: a\r\n b\r\n\tc\r\n", "a b\tc"},
                      UnfoldCase{"To: Jean\r\n <j@asso.org>,\r\n  m@asso.org\r\n",
                                 "Jean <j@asso.org>,  m@asso.org"},
                      UnfoldCase{"X-Empty:\r\n", ""},
                      UnfoldCase{"X-Time: 12:30\r\n", "12:30"}));

TEST(HeaderTest, FormatRfc5322Date) {
  const absl::Time t = absl::FromCivil(absl::CivilSecond(2026, 11, 23, 15, 53, 0),
                                       absl::UTCTimeZone());
  EXPECT_EQ(FormatRfc5322Date(t), "Mon, 23 Nov 2026 15:53:00 +0000");
  EXPECT_EQ(FormatRfc5322Date(t, absl::FixedTimeZone(2 * 3600)),
            "Mon, 23 Nov 2026 17:53:00 +0200");
  EXPECT_EQ(FormatRfc5322Date(t, absl::FixedTimeZone(-(4 * 3600 + 30 * 60))),
            "Mon, 23 Nov 2026 11:23:00 -0430");
  const absl::Time early = absl::FromCivil(absl::CivilSecond(2027, 1, 3, 4, 5, 6),
                                           absl::UTCTimeZone());
  EXPECT_EQ(FormatRfc5322Date(early), "Sun, 03 Jan 2027 04:05:06 +0000");
}

// The text of the last second formatted is reused: it must still follow the time, the zone and
// the second's boundaries.
TEST(HeaderTest, FormatRfc5322DateOfNeighbouringTimes) {
  const absl::Time t = absl::FromCivil(absl::CivilSecond(2026, 11, 23, 15, 53, 0),
                                       absl::UTCTimeZone());
  EXPECT_EQ(FormatRfc5322Date(t), "Mon, 23 Nov 2026 15:53:00 +0000");
  EXPECT_EQ(FormatRfc5322Date(t + absl::Milliseconds(999)), "Mon, 23 Nov 2026 15:53:00 +0000");
  EXPECT_EQ(FormatRfc5322Date(t + absl::Seconds(1)), "Mon, 23 Nov 2026 15:53:01 +0000");
  EXPECT_EQ(FormatRfc5322Date(t + absl::Seconds(1), absl::FixedTimeZone(3600)),
            "Mon, 23 Nov 2026 16:53:01 +0100");
  EXPECT_EQ(FormatRfc5322Date(t + absl::Seconds(1)), "Mon, 23 Nov 2026 15:53:01 +0000");
  EXPECT_EQ(FormatRfc5322Date(t - absl::Milliseconds(1)), "Mon, 23 Nov 2026 15:52:59 +0000");
  // Before 1970: the second still rounds down.
  const absl::Time old = absl::FromCivil(absl::CivilSecond(1969, 12, 31, 23, 59, 59),
                                         absl::UTCTimeZone());
  EXPECT_EQ(FormatRfc5322Date(old + absl::Milliseconds(500)), "Wed, 31 Dec 1969 23:59:59 +0000");
  EXPECT_EQ(FormatRfc5322Date(old + absl::Milliseconds(1500)), "Thu, 01 Jan 1970 00:00:00 +0000");
  EXPECT_EQ(FormatRfc5322Date(old), "Wed, 31 Dec 1969 23:59:59 +0000");
}

}  // namespace
}  // namespace facteur::mail
