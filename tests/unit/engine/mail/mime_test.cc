#include "engine/mail/mime.h"

#include <string>
#include <string_view>

#include "absl/strings/escaping.h"
#include "engine/mail/header.h"
#include "gtest/gtest.h"

namespace facteur::mail {
namespace {

// RFC 2045 §6.7 decoding, strict enough for these tests: "=XX" escapes and "=" CRLF soft breaks.
std::string DecodeQp(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '=') {
      out.push_back(text[i]);
    } else if (text.substr(i + 1, 2) == "\r\n") {
      i += 2;
    } else {
      out.push_back(static_cast<char>(std::stoi(std::string(text.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    }
  }
  return out;
}

std::string Body(std::string_view message) {
  return std::string(message.substr(ParseHeaderSection(message).body_offset));
}

// The octets a base64 body decodes to (line breaks ignored, RFC 2045 §6.8); "(bad)" if none.
std::string DecodeBase64Body(std::string_view message) {
  std::string joined;
  for (char c : Body(message)) {
    if (c != '\r' && c != '\n') joined.push_back(c);
  }
  std::string decoded;
  return absl::Base64Unescape(joined, &decoded) ? decoded : "(bad)";
}

std::string Field(std::string_view message, std::string_view name) {
  const HeaderSection section = ParseHeaderSection(message);
  const auto field = FindField(section, name);
  return field.has_value() ? UnfoldedValue(*field) : "(none)";
}

size_t Count(std::string_view text, std::string_view what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string_view::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(MimeTest, LongestLineCountsOctetsWithoutTheCrlf) {
  EXPECT_EQ(LongestLine(std::string(998, 'x') + "\r\n" + std::string(99, 'y')), 998u);
  EXPECT_EQ(LongestLine("a\r\n" + std::string(999, 'x') + "\r\n"), 999u);
  EXPECT_EQ(LongestLine("a\r\n" + std::string(999, 'x')), 999u);  // the last line, unended
}

TEST(MimeTest, QuotedPrintableEscapesAndCutsAt76) {
  EXPECT_EQ(QuotedPrintable("a=b \r\nc\t"), "a=3Db=20\r\nc=09");
  const std::string text = std::string(200, 'x') + "\r\n\xC3\xA9t\xC3\xA9 \r\n";
  const std::string encoded = QuotedPrintable(text);
  EXPECT_LE(LongestLine(encoded), 76u);
  EXPECT_EQ(DecodeQp(encoded), text);
}

TEST(MimeTest, AMessageWithoutLongLinesIsLeftAlone) {
  std::string message = "From: a@x.example\r\nSubject: s\r\n\r\n" + std::string(998, 'x') + "\r\n";
  const std::string before = message;
  EXPECT_FALSE(FitLongLines(message));
  EXPECT_EQ(message, before);
}

TEST(MimeTest, APlainBodyBecomesQuotedPrintableWithTheSameText) {
  const std::string body = "<p>" + std::string(3000, 'x') + " caf\xC3\xA9 = 1</p>\r\nshort\r\n";
  std::string message = "From: a@x.example\r\nContent-Transfer-Encoding: 8bit\r\n"
                        "Content-Type: text/html; charset=utf-8\r\n\r\n" + body;
  ASSERT_TRUE(FitLongLines(message));
  EXPECT_EQ(Field(message, "Content-Transfer-Encoding"), "quoted-printable");
  EXPECT_EQ(Count(message, "Content-Transfer-Encoding:"), 1u);  // the 8bit one is gone
  EXPECT_EQ(Field(message, "MIME-Version"), "1.0");
  EXPECT_EQ(Field(message, "Content-Type"), "text/html; charset=utf-8");
  EXPECT_LE(LongestLine(message), 76u);
  EXPECT_EQ(DecodeQp(Body(message)), body);
}

TEST(MimeTest, AHeaderSectionWithoutItsEmptyLineKeepsTheBodyABody) {
  std::string message = "Subject: s\r\n";
  message += std::string(1200, 'y');  // not a field: the header section ends before it
  ASSERT_TRUE(FitLongLines(message));
  EXPECT_EQ(Field(message, "Subject"), "s");
  EXPECT_EQ(DecodeQp(Body(message)), std::string(1200, 'y'));
}

TEST(MimeTest, Base64IsCutAgainAndQuotedPrintableGetsSoftBreaks) {
  const std::string encoded64(2000, 'Q');
  std::string message = "MIME-Version: 1.0\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
                        encoded64 + "\r\n";
  ASSERT_TRUE(FitLongLines(message));
  EXPECT_EQ(Field(message, "Content-Transfer-Encoding"), "base64");
  EXPECT_EQ(LongestLine(message), 76u);
  std::string joined;
  for (char c : Body(message)) {
    if (c != '\r' && c != '\n') joined.push_back(c);
  }
  EXPECT_EQ(joined, encoded64);

  // Escapes fall at every column in turn: none is split by a soft break.
  std::string qp;
  for (int i = 0; i < 700; ++i) qp += (i % 3 == 0) ? "=3D" : "ab";
  message = "Content-Transfer-Encoding: quoted-printable\r\n\r\n" + qp + "\r\n";
  ASSERT_TRUE(FitLongLines(message));
  EXPECT_LE(LongestLine(message), 76u);
  EXPECT_EQ(DecodeQp(Body(message)), DecodeQp(qp + "\r\n"));
}

TEST(MimeTest, OnlyThePartsWithLongLinesOfAMultipartAreReencoded) {
  const std::string html = "<html>" + std::string(1500, 'h') + "</html>\r\n";
  const std::string text_part = "Content-Type: text/plain\r\n\r\nshort text\r\n";
  const std::string inner = "--in\r\n" + text_part + "--in\r\nContent-Type: text/html\r\n\r\n" +
                            html + "--in--\r\n";
  std::string message = "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"out\"\r\n"
                        "\r\npreamble\r\n--out\r\nContent-Type: multipart/alternative; "
                        "boundary=in\r\n\r\n" + inner + "--out\r\nContent-Type: text/plain\r\n\r\n"
                        "attached\r\n--out--\r\nepilogue\r\n";
  ASSERT_TRUE(FitLongLines(message));
  EXPECT_LE(LongestLine(message), 76u);
  EXPECT_NE(message.find("preamble\r\n--out\r\n"), std::string::npos);
  EXPECT_NE(message.find("--in\r\n" + text_part + "--in\r\n"), std::string::npos);  // untouched
  EXPECT_NE(message.find("--out\r\nContent-Type: text/plain\r\n\r\nattached\r\n--out--\r\n"
                         "epilogue\r\n"), std::string::npos);
  const size_t html_at = message.find("Content-Type: text/html\r\n");
  ASSERT_NE(html_at, std::string::npos);
  const size_t html_end = message.find("--in--", html_at);
  const std::string part = message.substr(html_at, html_end - html_at);
  EXPECT_EQ(Field(part, "Content-Transfer-Encoding"), "quoted-printable");
  EXPECT_EQ(DecodeQp(Body(part)), html);
  EXPECT_EQ(Count(message, "MIME-Version"), 1u);
}

TEST(MimeTest, TheLimitIs998OctetsALine) {
  std::string message = "Subject: s\r\n\r\n" + std::string(998, 'x') + "\r\n";
  EXPECT_FALSE(FitLongLines(message));
  message = "Subject: s\r\n\r\n" + std::string(999, 'x') + "\r\n";
  EXPECT_TRUE(FitLongLines(message));
}

TEST(MimeTest, BoundariesKeepTheirCaseAndDelimitersMayBePadded) {
  // JavaMail's and Outlook's boundaries have capitals; transport padding follows a delimiter.
  const std::string boundary = "----=_Part_0_123.456ABC";
  const std::string html = std::string(1500, 'h') + "\r\n";
  std::string message = "MIME-Version: 1.0\r\nContent-Type: Multipart/Alternative;\r\n"
                        " boundary=\"" + boundary + "\"\r\n\r\n--" + boundary + " \t\r\n"
                        "Content-Type: text/html\r\n\r\n" + html + "--" + boundary +
                        "--\r\n";
  ASSERT_TRUE(FitLongLines(message));
  EXPECT_LE(LongestLine(message), 76u);
  EXPECT_NE(message.find("--" + boundary + " \t\r\nContent-Type: text/html\r\n"),
            std::string::npos);
  EXPECT_EQ(Field(message.substr(message.find("Content-Type: text/html")),
                  "Content-Transfer-Encoding"), "quoted-printable");
}

TEST(MimeTest, BinaryAndNonTextBecomeBase64WithTheirOctets) {
  // CR LF inside binary data are octets, not line ends: quoted-printable could lose them.
  std::string data = std::string(1200, 'b') + "\r\n\x00\xff\r\n";
  for (std::string header : {"Content-Type: application/octet-stream\r\n",
                             "Content-Type: text/plain\r\nContent-Transfer-Encoding: binary\r\n"}) {
    std::string message = header + "\r\n" + data;
    ASSERT_TRUE(FitLongLines(message)) << header;
    EXPECT_EQ(Field(message, "Content-Transfer-Encoding"), "base64");
    EXPECT_LE(LongestLine(message), 76u);
    EXPECT_EQ(DecodeBase64Body(message), data);
  }
}

TEST(MimeTest, ABase64PartKeepsItsOctetsWithoutTheDelimitersCrlf) {
  const std::string json = "{\"list\": \"" + std::string(1500, 'j') + "\"}";
  std::string message = "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=m\r\n\r\n"
                        "--m\r\nContent-Type: application/json\r\n"
                        "Content-Transfer-Encoding: (as written) 8bit\r\n\r\n" + json +
                        "\r\n--m--\r\n";
  ASSERT_TRUE(FitLongLines(message));
  const size_t part_at = message.find("Content-Type: application/json");
  const std::string part = message.substr(part_at, message.find("--m--") - part_at);
  EXPECT_EQ(Field(part, "Content-Transfer-Encoding"), "base64");
  EXPECT_EQ(DecodeBase64Body(part), json);
  EXPECT_TRUE(message.ends_with("\r\n--m--\r\n"));
}

TEST(MimeTest, SignedMultipartsAndDigestMessagesAreLeftAsWritten) {
  const std::string long_line = std::string(1200, 's') + "\r\n";
  const std::string signed_message =
      "Content-Type: multipart/signed; boundary=sig; protocol=\"application/pgp-signature\"\r\n"
      "\r\n--sig\r\nContent-Type: text/plain\r\n\r\n" + long_line +
      "--sig\r\nContent-Type: application/pgp-signature\r\n\r\nsignature\r\n--sig--\r\n";
  // In a digest a part without Content-Type is a message/rfc822 (RFC 2046 §5.1.5).
  const std::string digest = "Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\n"
                             "Subject: inner\r\n\r\n" + long_line + "--d--\r\n";
  for (const std::string& original : {signed_message, digest}) {
    std::string message = original;
    EXPECT_FALSE(FitLongLines(message));
    EXPECT_EQ(message, original);
  }
}

TEST(MimeTest, WhatCannotBeReencodedIsLeftToTheServer) {
  // A boundary parameter missing, one with a CR (no boundary has one), an attached message,
  // an unknown encoding.
  for (std::string header : {"Content-Type: multipart/mixed\r\n",
                             "Content-Type: multipart/mixed; boundary=\"x\r\"\r\n\r\n--x\r\n",
                             "Content-Type: message/rfc822\r\n",
                             "Content-Transfer-Encoding: x-uuencode\r\n"}) {
    std::string message = header + "\r\n" + std::string(1200, 'z') + "\r\n";
    const std::string before = message;
    EXPECT_FALSE(FitLongLines(message)) << header;
    EXPECT_EQ(message, before);
  }
}

// RFC 5322 §2.2.3 unfolding: each CRLF followed by white space removed.
std::string Unfolded(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text.substr(i, 2) == "\r\n" && i + 2 < text.size() && (text[i + 2] == ' ' || text[i + 2] == '\t')) {
      ++i;
      continue;
    }
    out.push_back(text[i]);
  }
  return out;
}

std::string Header(std::string_view message) {
  return std::string(message.substr(0, ParseHeaderSection(message).body_offset));
}

TEST(MimeTest, LongHeaderLinesAreFoldedAtWhiteSpaceAfterCommasWhenTheyCan) {
  std::string to = "To:";
  for (int i = 0; i < 60; ++i) to += " Member " + std::to_string(i) + " <member" + std::to_string(i) + "@alumni.example>,";
  to += " last@alumni.example";
  ASSERT_GT(to.size(), kMaxLineOctets);
  const std::string header = "From: a@alumni.example\r\n" + to + "\r\nSubject: hi\r\n";
  const std::string body = "Short body.\r\n";
  std::string message = header + "\r\n" + body;
  EXPECT_TRUE(FitLongLines(message));
  EXPECT_LE(LongestLine(message), 78u);
  EXPECT_EQ(Unfolded(Header(message)), header + "\r\n");  // unfolding gives the field back
  EXPECT_EQ(Body(message), body);
  EXPECT_EQ(message.find("MIME-Version"), std::string::npos);  // nothing was re-encoded
  // Each fold comes after an address's comma: no display name is cut.
  size_t folds = 0;
  for (size_t at = message.find("\r\n "); at != std::string::npos; at = message.find("\r\n ", at + 1)) {
    EXPECT_EQ(message[at - 1], ',') << message.substr(at - 20, 40);
    ++folds;
  }
  EXPECT_GT(folds, 12u);
  EXPECT_EQ(FirstLongLine(message), 0u);
}

TEST(MimeTest, AWordLongerThanALineEndsItsLineAndContinuationLinesFoldToo) {
  const std::string word(300, 'w');
  std::string subject = "Subject:";
  for (int i = 0; i < 4; ++i) subject += " " + word;
  // A continuation line too long, after a short first line.
  std::string keywords = "Keywords: a,\r\n";
  for (int i = 0; i < 200; ++i) keywords += " k" + std::to_string(i);
  const std::string header = subject + "\r\n" + keywords + "\r\n";
  std::string message = header + "\r\nbody\r\n";
  EXPECT_TRUE(FitLongLines(message));
  EXPECT_EQ(Unfolded(Header(message)), Unfolded(header) + "\r\n");
  EXPECT_EQ(FirstLongLine(message), 0u);
  EXPECT_TRUE(message.starts_with("Subject: " + word + "\r\n " + word + "\r\n"));
  EXPECT_NE(message.find("Keywords: a,\r\n k0 k1 "), std::string::npos);
}

TEST(MimeTest, AHeaderLineWithoutWhiteSpaceToFoldAtStaysAndIsFound) {
  const std::string long_line = "X-Token: " + std::string(1200, 't');
  // White space only before the colon or in a run that would leave a line of white space.
  const std::string padded = "X-Pad: a" + std::string(1100, ' ') + "b";
  for (const std::string& field : {long_line, padded}) {
    std::string message = "From: a@x\r\n" + field + "\r\n\r\nbody\r\n";
    const std::string before = message;
    FitLongLines(message);
    EXPECT_EQ(Unfolded(message), before);
    EXPECT_EQ(FirstLongLine(message), message.starts_with("From: a@x\r\nX-Pad:") ? 3u : 2u)
        << field.substr(0, 10);
    std::string header = Header(message);
    header.resize(header.size() - 2);  // the empty line that ends it
    for (size_t at = header.find("\r\n"); at + 2 < header.size(); at = header.find("\r\n", at + 2)) {
      const size_t next = header.find("\r\n", at + 2);
      const std::string_view line = std::string_view(header).substr(at + 2, next - at - 2);
      EXPECT_NE(line.find_first_not_of(" \t"), std::string_view::npos) << "a line of white space";
    }
  }
}

TEST(MimeTest, TheHeadersOfSignedMessagesAndOfPartsAreFoldedTheirBodiesKept) {
  std::string subject = "Subject:";
  for (int i = 0; i < 150; ++i) subject += " word" + std::to_string(i);
  const std::string signed_body =
      "--sig\r\nContent-Type: text/plain\r\n\r\n" + std::string(1200, 's') +
      "\r\n--sig\r\nContent-Type: application/pgp-signature\r\n\r\nsig\r\n--sig--\r\n";
  const std::string signed_header =
      subject + "\r\nContent-Type: multipart/signed; boundary=sig\r\n";
  std::string message = signed_header + "\r\n" + signed_body;
  EXPECT_TRUE(FitLongLines(message));
  EXPECT_EQ(Body(message), signed_body);  // the signature still holds
  EXPECT_EQ(Unfolded(Header(message)), signed_header + "\r\n");
  // Its header's lines, then "--sig", the part's field, the part's empty line, the long line.
  EXPECT_EQ(FirstLongLine(message), Count(Header(message), "\r\n") + 4);

  // A part's header: an attachment's long file name.
  std::string disposition = "Content-Disposition: attachment; filename=\"";
  for (int i = 0; i < 120; ++i) disposition += "report part " + std::to_string(i) + " ";
  disposition += "final.pdf\"";
  const std::string part = "Content-Type: application/pdf\r\n" + disposition +
                           "\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n";
  std::string mixed = "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n" +
                      part + "--b--\r\n";
  const std::string before = mixed;
  EXPECT_TRUE(FitLongLines(mixed));
  EXPECT_EQ(Unfolded(mixed), before);
  EXPECT_EQ(FirstLongLine(mixed), 0u);
  EXPECT_EQ(Count(mixed, "base64"), 1u);  // only folded: the part's data stays as it was
}

}  // namespace
}  // namespace facteur::mail
