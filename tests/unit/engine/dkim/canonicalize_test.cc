// File: tests/unit/engine/dkim/canonicalize_test.cc
// RFC 6376 §3.4 canonicalisation: the worked example of §3.4.5 and the edge cases around it.
#include "engine/dkim/canonicalize.h"

#include <string>

#include "gtest/gtest.h"

namespace facteur::dkim {
namespace {

// RFC 6376 §3.4.5.
constexpr char kHeaderA[] = "A: X\r\n";
constexpr char kHeaderB[] = "B : Y\t\r\n\tZ  \r\n";
constexpr char kBody[] = " C \r\nD \t E\r\n\r\n\r\n";

TEST(CanonicalizeTest, Rfc6376Section345Relaxed) {
  EXPECT_EQ(CanonicalHeader(Canonicalization::kRelaxed, kHeaderA), "a:X\r\n");
  EXPECT_EQ(CanonicalHeader(Canonicalization::kRelaxed, kHeaderB), "b:Y Z\r\n");
  EXPECT_EQ(CanonicalBody(Canonicalization::kRelaxed, kBody), " C\r\nD E\r\n");
}

TEST(CanonicalizeTest, Rfc6376Section345Simple) {
  EXPECT_EQ(CanonicalHeader(Canonicalization::kSimple, kHeaderA), "A: X\r\n");
  EXPECT_EQ(CanonicalHeader(Canonicalization::kSimple, kHeaderB), "B : Y\t\r\n\tZ  \r\n");
  EXPECT_EQ(CanonicalBody(Canonicalization::kSimple, kBody), " C \r\nD \t E\r\n");
}

TEST(CanonicalizeTest, EmptyBodies) {
  // §3.4.3: simple turns an empty body into one CRLF; §3.4.4: relaxed leaves it empty.
  EXPECT_EQ(CanonicalBody(Canonicalization::kSimple, ""), "\r\n");
  EXPECT_EQ(CanonicalBody(Canonicalization::kRelaxed, ""), "");
  EXPECT_EQ(CanonicalBody(Canonicalization::kSimple, "\r\n\r\n"), "\r\n");
  EXPECT_EQ(CanonicalBody(Canonicalization::kRelaxed, "\r\n \t\r\n\r\n"), "");
}

TEST(CanonicalizeTest, LastLineWithoutCrlfGetsOne) {
  EXPECT_EQ(CanonicalBody(Canonicalization::kRelaxed, "a\r\nb  "), "a\r\nb\r\n");
  EXPECT_EQ(CanonicalBody(Canonicalization::kSimple, "a\r\nb"), "a\r\nb\r\n");
  // A last line of white space only is an empty line, and trailing empty lines go.
  EXPECT_EQ(CanonicalBody(Canonicalization::kRelaxed, "a\r\n \t"), "a\r\n");
}

TEST(CanonicalizeTest, EmptyLinesInsideTheBodyStay) {
  EXPECT_EQ(CanonicalBody(Canonicalization::kRelaxed, "a\r\n\r\n  \r\nb\r\n\r\n"),
            "a\r\n\r\n\r\nb\r\n");
  EXPECT_EQ(CanonicalBody(Canonicalization::kSimple, "a\r\n\r\n  \r\nb\r\n\r\n"),
            "a\r\n\r\n  \r\nb\r\n");
}

TEST(CanonicalizeTest, RelaxedHeaderDetails) {
  EXPECT_EQ(CanonicalHeader(Canonicalization::kRelaxed, "SUBJECT:   spaced  out  \r\n"),
            "subject:spaced out\r\n");
  EXPECT_EQ(CanonicalHeader(Canonicalization::kRelaxed, "Subject:\r\n"), "subject:\r\n");
  EXPECT_EQ(CanonicalHeader(Canonicalization::kRelaxed, "To: a,\r\n\tb,\r\n c", false),
            "to:a, b, c");
  // 8-bit octets are copied as they are; only ASCII letters of the name change case.
  EXPECT_EQ(CanonicalHeader(Canonicalization::kRelaxed, "Subject: \xc3\xa9t\xc3\xa9\r\n"),
            "subject:\xc3\xa9t\xc3\xa9\r\n");
}

TEST(CanonicalizeTest, LargeBodyComesInPiecesThatJoinUp) {
  std::string body;
  std::string expected;
  for (int i = 0; i < 5000; ++i) {
    body += "word\t\t word   word \r\n";
    expected += "word word word\r\n";
  }
  body += "\r\n\r\n";
  size_t pieces = 0;
  std::string joined;
  CanonicalizeBody(Canonicalization::kRelaxed, body, [&](std::string_view piece) {
    ++pieces;
    joined.append(piece);
  });
  EXPECT_EQ(joined, expected);
  EXPECT_GT(pieces, 1u);                // streamed, not built in one string
  EXPECT_LT(pieces, body.size() / 1000);  // but in large pieces
}

}  // namespace
}  // namespace facteur::dkim
