#include "engine/mail/dsn.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "engine/base/status.h"
#include "engine/mail/text.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace facteur::mail {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

const absl::Time kDate =
    absl::FromCivil(absl::CivilSecond(2026, 11, 23, 15, 53, 0), absl::UTCTimeZone());

constexpr std::string_view kOriginal =
    "From: App <app@example.org>\r\n"
    "To: bob@example.net\r\n"
    "Subject: Invoice 42\r\n"
    "Message-ID: <inv42@example.org>\r\n"
    "\r\n"
    "Your invoice is attached.\r\n";

DsnReport FailedReport() {
  DsnReport report;
  report.reporting_mta = "relay.example.org";
  report.from = "MAILER-DAEMON@relay.example.org";
  report.to = "app@example.org";
  report.message_id = "<dsn.01J@relay.example.org>";
  report.date = kDate;
  report.original_queue_id = "01JQUEUEID";
  report.arrival_date = kDate - absl::Hours(2);
  DsnRecipient r;
  r.final_recipient = "bob@example.net";
  r.action = DsnAction::kFailed;
  r.status = "5.1.1";
  r.remote_mta = "mx1.example.net[192.0.2.1]";
  r.diagnostic = "550 5.1.1 <bob@example.net>: No such user";
  r.last_attempt = kDate - absl::Minutes(1);
  report.recipients.push_back(r);
  return report;
}

// Every line ends with CRLF (no bare CR or LF) and has at most 998 octets before it.
void ExpectWellFormedLines(std::string_view message) {
  size_t start = 0;
  size_t line_number = 1;
  while (start < message.size()) {
    const size_t lf = message.find('\n', start);
    ASSERT_NE(lf, std::string_view::npos) << "the message does not end with CRLF";
    ASSERT_GT(lf, start) << "bare LF on line " << line_number;
    ASSERT_EQ(message[lf - 1], '\r') << "bare LF on line " << line_number;
    const std::string_view line = message.substr(start, lf - 1 - start);
    EXPECT_EQ(line.find('\r'), std::string_view::npos) << "bare CR on line " << line_number;
    EXPECT_LE(line.size(), 998u) << "line " << line_number;
    start = lf + 1;
    ++line_number;
  }
}

std::string BoundaryOf(const std::string& dsn) {
  const size_t at = dsn.find("boundary=\"");
  if (at == std::string::npos) return "";
  const size_t begin = at + 10;
  return dsn.substr(begin, dsn.find('"', begin) - begin);
}

struct Part {
  std::string headers;  // each field CRLF-ended
  std::string body;
};

// The parts of the top-level multipart (RFC 2046 §5.1.1: a delimiter is CRLF "--" boundary).
std::vector<Part> PartsOf(const std::string& dsn) {
  const std::string boundary = BoundaryOf(dsn);
  std::vector<Part> parts;
  const std::string delimiter = "\r\n--" + boundary;
  size_t at = dsn.find(delimiter);
  while (at != std::string::npos) {
    const size_t start = at + delimiter.size();
    if (dsn.compare(start, 2, "--") == 0) break;  // the close delimiter
    const size_t content = start + 2;              // past the delimiter line's CRLF
    const size_t next = dsn.find(delimiter, content);
    const std::string whole = dsn.substr(content, next - content);
    const size_t blank = whole.find("\r\n\r\n");
    parts.push_back({whole.substr(0, blank + 2), whole.substr(blank + 4)});
    at = next;
  }
  return parts;
}

// The value of `name` in a block of fields, unfolded (RFC 5322 §2.2.3), or "" when absent.
std::string FieldValue(std::string_view block, std::string_view name) {
  const std::string unfolded = absl::StrReplaceAll(ToAbsl(block), {{"\r\n ", " "}, {"\r\n\t", "\t"}});
  for (absl::string_view line : absl::StrSplit(unfolded, "\r\n")) {
    const std::string_view l(line.data(), line.size());
    if (l.size() > name.size() && EqualsIgnoreCase(l.substr(0, name.size()), name) &&
        l[name.size()] == ':') {
      std::string_view value = l.substr(name.size() + 1);
      while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
      return std::string(value);
    }
  }
  return "";
}

// The DSN's lines, CRLF removed.
std::vector<std::string> LinesOf(std::string_view s) {
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(absl::string_view(s.data(), s.size()), "\r\n")) {
    lines.emplace_back(line);
  }
  return lines;
}

TEST(DsnTest, Structure) {
  const std::string dsn = BuildDsn(FailedReport(), kOriginal);
  ExpectWellFormedLines(dsn);
  const size_t header_end = dsn.find("\r\n\r\n");
  ASSERT_NE(header_end, std::string::npos);
  const std::string headers = dsn.substr(0, header_end + 2);
  EXPECT_EQ(FieldValue(headers, "From"), "Mail Delivery System <MAILER-DAEMON@relay.example.org>");
  EXPECT_EQ(FieldValue(headers, "To"), "<app@example.org>");
  EXPECT_EQ(FieldValue(headers, "Subject"), "Undelivered Mail Returned to Sender");
  EXPECT_EQ(FieldValue(headers, "Date"), "Mon, 23 Nov 2026 15:53:00 +0000");
  EXPECT_EQ(FieldValue(headers, "Message-ID"), "<dsn.01J@relay.example.org>");
  EXPECT_EQ(FieldValue(headers, "In-Reply-To"), "<inv42@example.org>");
  EXPECT_EQ(FieldValue(headers, "References"), "<inv42@example.org>");
  EXPECT_EQ(FieldValue(headers, "Auto-Submitted"), "auto-replied");
  EXPECT_EQ(FieldValue(headers, "MIME-Version"), "1.0");
  const std::string boundary = BoundaryOf(dsn);
  ASSERT_FALSE(boundary.empty());
  EXPECT_LE(boundary.size(), 70u);  // RFC 2046 §5.1.1
  EXPECT_EQ(FieldValue(headers, "Content-Type"),
            "multipart/report; report-type=delivery-status; boundary=\"" + boundary + "\"");
  EXPECT_EQ(FieldValue(headers, "Content-Transfer-Encoding"), "");  // all 7-bit

  const std::vector<Part> parts = PartsOf(dsn);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(FieldValue(parts[0].headers, "Content-Type"), "text/plain; charset=us-ascii");
  EXPECT_EQ(FieldValue(parts[1].headers, "Content-Type"), "message/delivery-status");
  EXPECT_EQ(FieldValue(parts[2].headers, "Content-Type"), "text/rfc822-headers");
  EXPECT_EQ(FieldValue(parts[2].headers, "Content-Description"), "Undelivered Message Headers");
  EXPECT_TRUE(dsn.ends_with("\r\n--" + boundary + "--\r\n"));

  // The human part: who, why, and the queue id.
  // (Wrapped at 76 columns: compared with the line breaks of the wrapping taken out.)
  const std::string text = absl::StrReplaceAll(parts[0].body, {{"\r\n    ", " "}});
  for (const std::string& line : LinesOf(parts[0].body)) EXPECT_LE(line.size(), 76u) << line;
  EXPECT_THAT(text, HasSubstr("relay.example.org"));
  EXPECT_THAT(text, HasSubstr("could not be delivered"));
  EXPECT_THAT(text, HasSubstr("<bob@example.net>"));
  EXPECT_THAT(text, HasSubstr("mx1.example.net[192.0.2.1]"));
  EXPECT_THAT(text, HasSubstr("550 5.1.1 <bob@example.net>: No such user"));
  EXPECT_THAT(text, HasSubstr("the mailbox does not exist (status 5.1.1)"));
  EXPECT_THAT(text, HasSubstr("01JQUEUEID"));

  // The machine part, exactly (RFC 3464 §2.2 and §2.3 field order).
  EXPECT_EQ(parts[1].body,
            "Reporting-MTA: dns; relay.example.org\r\n"
            "Arrival-Date: Mon, 23 Nov 2026 13:53:00 +0000\r\n"
            "X-Facteur-Queue-ID: 01JQUEUEID\r\n"
            "\r\n"
            "Final-Recipient: rfc822; bob@example.net\r\n"
            "Action: failed\r\n"
            "Status: 5.1.1\r\n"
            "Remote-MTA: dns; mx1.example.net\r\n"
            "Diagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: No such user\r\n"
            "Last-Attempt-Date: Mon, 23 Nov 2026 15:52:00 +0000\r\n");

  // The header section only, not the body (RET=HDRS is the default).
  EXPECT_EQ(parts[2].body,
            "From: App <app@example.org>\r\nTo: bob@example.net\r\nSubject: Invoice 42\r\n"
            "Message-ID: <inv42@example.org>\r\n");
  EXPECT_THAT(dsn, Not(HasSubstr("Your invoice is attached.")));
}

TEST(DsnTest, EnvelopeIdAndOriginalRecipient) {
  DsnReport report = FailedReport();
  report.original_envelope_id = "QQ314159";
  report.recipients[0].original_recipient = "rfc822;Bob.Alias@Example.net";
  report.arrival_date = absl::InfinitePast();
  report.recipients[0].last_attempt = absl::InfinitePast();
  const std::vector<Part> parts = PartsOf(BuildDsn(report, kOriginal));
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[1].body,
            "Original-Envelope-Id: QQ314159\r\n"
            "Reporting-MTA: dns; relay.example.org\r\n"
            "X-Facteur-Queue-ID: 01JQUEUEID\r\n"
            "\r\n"
            "Original-Recipient: rfc822; Bob.Alias@Example.net\r\n"
            "Final-Recipient: rfc822; bob@example.net\r\n"
            "Action: failed\r\n"
            "Status: 5.1.1\r\n"
            "Remote-MTA: dns; mx1.example.net\r\n"
            "Diagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: No such user\r\n");
  EXPECT_THAT(parts[0].body, HasSubstr("originally addressed to Bob.Alias@Example.net"));
}

TEST(DsnTest, DelayedAndMixedRecipients) {
  DsnReport report = FailedReport();
  report.recipients[0].action = DsnAction::kDelayed;
  report.recipients[0].status = "4.2.2";
  report.recipients[0].diagnostic = "452 4.2.2 Mailbox full";
  report.recipients[0].will_retry_until = kDate + absl::Hours(96);
  std::string dsn = BuildDsn(report, kOriginal);
  EXPECT_EQ(FieldValue(dsn.substr(0, dsn.find("\r\n\r\n") + 2), "Subject"),
            "Delayed Mail (still being retried)");
  std::vector<Part> parts = PartsOf(dsn);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(FieldValue(parts[1].body.substr(parts[1].body.find("\r\n\r\n")), "Action"), "delayed");
  EXPECT_EQ(FieldValue(parts[1].body, "Will-Retry-Until"), "Fri, 27 Nov 2026 15:53:00 +0000");
  EXPECT_THAT(parts[0].body, HasSubstr("not been delivered yet"));
  EXPECT_THAT(parts[0].body, HasSubstr("the mailbox is full (status 4.2.2)"));
  EXPECT_THAT(parts[0].body, HasSubstr("Still trying until Fri, 27 Nov 2026 15:53:00 +0000"));

  // A failed recipient beside it: the failure decides the subject; Will-Retry-Until only on
  // the delayed block.
  DsnRecipient failed;
  failed.final_recipient = "carol@example.com";
  failed.action = DsnAction::kFailed;
  failed.status = "5.4.7";
  failed.will_retry_until = kDate;  // ignored: not delayed
  report.recipients.push_back(failed);
  dsn = BuildDsn(report, kOriginal);
  EXPECT_EQ(FieldValue(dsn.substr(0, dsn.find("\r\n\r\n") + 2), "Subject"),
            "Undelivered Mail Returned to Sender");
  parts = PartsOf(dsn);
  ASSERT_EQ(parts.size(), 3u);
  const std::vector<std::string> blocks = absl::StrSplit(parts[1].body, "\r\n\r\n");
  ASSERT_EQ(blocks.size(), 3u);
  EXPECT_EQ(FieldValue(blocks[1], "Will-Retry-Until"), "Fri, 27 Nov 2026 15:53:00 +0000");
  EXPECT_EQ(FieldValue(blocks[2], "Final-Recipient"), "rfc822; carol@example.com");
  EXPECT_EQ(FieldValue(blocks[2], "Will-Retry-Until"), "");
  EXPECT_EQ(FieldValue(blocks[2], "Remote-MTA"), "");
  EXPECT_EQ(FieldValue(blocks[2], "Diagnostic-Code"), "");
  EXPECT_THAT(parts[0].body, HasSubstr("the message could not be delivered in time (status 5.4.7)"));

  // All delivered (NOTIFY=SUCCESS).
  report.recipients.resize(1);
  report.recipients[0].action = DsnAction::kDelivered;
  report.recipients[0].status = "2.0.0";
  dsn = BuildDsn(report, kOriginal);
  EXPECT_EQ(FieldValue(dsn.substr(0, dsn.find("\r\n\r\n") + 2), "Subject"),
            "Successful Mail Delivery Report");
  parts = PartsOf(dsn);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(FieldValue(parts[2].headers, "Content-Description"), "Message Headers");
  EXPECT_EQ(FieldValue(parts[1].body.substr(parts[1].body.find("\r\n\r\n")), "Action"), "delivered");

  // Passed to a server without DSN (RFC 3461 §5.2.2): "relayed", and said to be the last word.
  report.recipients[0].action = DsnAction::kRelayed;
  report.recipients[0].status = "";
  report.recipients[0].remote_mta = "mx.example.com";
  report.recipients[0].diagnostic = "250 2.0.0 Ok: queued";
  dsn = BuildDsn(report, kOriginal);
  EXPECT_EQ(FieldValue(dsn.substr(0, dsn.find("\r\n\r\n") + 2), "Subject"),
            "Successful Mail Delivery Report");
  parts = PartsOf(dsn);
  ASSERT_EQ(parts.size(), 3u);
  const std::string block = parts[1].body.substr(parts[1].body.find("\r\n\r\n"));
  EXPECT_EQ(FieldValue(block, "Action"), "relayed");
  EXPECT_EQ(FieldValue(block, "Status"), "2.0.0");
  EXPECT_THAT(parts[0].body, HasSubstr("do not send delivery notifications"));
  EXPECT_THAT(parts[0].body, HasSubstr("Passed on to the server mx.example.com."));
}

TEST(DsnTest, StatusWhenMissingOrMalformed) {
  struct Case {
    DsnAction action;
    std::string status;
    std::string diagnostic;
    std::string want;
  };
  const Case cases[] = {
      {DsnAction::kFailed, "", "550 no", "5.0.0"},
      {DsnAction::kFailed, "5.1", "", "5.0.0"},
      {DsnAction::kFailed, "9.1.1", "", "5.0.0"},
      {DsnAction::kFailed, "5.1.1\r\nX-Injected: 1", "", "5.0.0"},
      {DsnAction::kFailed, "5.1234.1", "", "5.0.0"},
      {DsnAction::kFailed, "", "451 4.4.3 DNS timeout", "4.0.0"},
      {DsnAction::kDelayed, "", "", "4.0.0"},
      {DsnAction::kDelivered, "", "", "2.0.0"},
      {DsnAction::kFailed, " 5.1.10 ", "", "5.1.10"},
      {DsnAction::kFailed, "5.7.650", "", "5.7.650"},
  };
  for (const Case& c : cases) {
    DsnReport report = FailedReport();
    report.recipients[0].action = c.action;
    report.recipients[0].status = c.status;
    report.recipients[0].diagnostic = c.diagnostic;
    const std::vector<Part> parts = PartsOf(BuildDsn(report, kOriginal));
    ASSERT_EQ(parts.size(), 3u);
    EXPECT_EQ(FieldValue(parts[1].body, "Status"), c.want) << c.status << " / " << c.diagnostic;
    EXPECT_THAT(parts[1].body, Not(HasSubstr("\r\nX-Injected")));
  }
}

TEST(DsnTest, LocalDiagnosticIsNotTypedSmtp) {
  DsnReport report = FailedReport();
  report.recipients[0].remote_mta = "";
  report.recipients[0].status = "5.4.4";
  report.recipients[0].diagnostic = "550 5.4.4 No mail server for example.net";
  const std::vector<Part> parts = PartsOf(BuildDsn(report, kOriginal));
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(FieldValue(parts[1].body, "Remote-MTA"), "");
  EXPECT_EQ(FieldValue(parts[1].body, "Diagnostic-Code"),
            "X-Facteur; 550 5.4.4 No mail server for example.net");
  EXPECT_THAT(parts[0].body, HasSubstr("Reason: 550 5.4.4 No mail server for example.net"));
}

TEST(DsnTest, FoldsLongDiagnosticAtSpaces) {
  DsnReport report = FailedReport();
  std::string diagnostic = "550 5.7.1";
  for (int i = 0; i < 80; ++i) absl::StrAppend(&diagnostic, " word", i);
  report.recipients[0].diagnostic = diagnostic;
  const std::string dsn = BuildDsn(report, kOriginal);
  ExpectWellFormedLines(dsn);
  const std::vector<Part> parts = PartsOf(dsn);
  ASSERT_EQ(parts.size(), 3u);
  // Folded: several lines, each under 78 columns, continuation lines starting with a space.
  const std::vector<std::string> lines = LinesOf(parts[1].body);
  size_t diagnostic_lines = 0;
  bool in_field = false;
  for (const std::string& line : lines) {
    if (line.starts_with("Diagnostic-Code:")) {
      in_field = true;
    } else if (!(in_field && line.starts_with(" "))) {
      in_field = false;
      continue;
    }
    ++diagnostic_lines;
    EXPECT_LE(line.size(), 78u) << line;
    EXPECT_NE(line, " ");
  }
  EXPECT_GT(diagnostic_lines, 5u);
  // Unfolding gives the reply back, exactly.
  EXPECT_EQ(FieldValue(parts[1].body, "Diagnostic-Code"), "smtp; " + diagnostic);
  // The human part wraps it too, keeping it whole.
  for (const std::string& line : LinesOf(parts[0].body)) EXPECT_LE(line.size(), 76u) << line;
}

TEST(DsnTest, CutsAWordLongerThanALine) {
  DsnReport report = FailedReport();
  const std::string word(3000, 'x');
  report.recipients[0].diagnostic = "550 " + word;
  report.recipients[0].remote_mta = std::string(1200, 'm') + ".example.net";
  const std::string dsn = BuildDsn(report, kOriginal);
  ExpectWellFormedLines(dsn);
  const std::vector<Part> parts = PartsOf(dsn);
  ASSERT_EQ(parts.size(), 3u);
  // Nothing is lost: the cut inserts only folding white space.
  std::string value = FieldValue(parts[1].body, "Diagnostic-Code");
  value.erase(std::remove(value.begin(), value.end(), ' '), value.end());
  EXPECT_EQ(value, "smtp;550" + word);
  std::string text = absl::StrReplaceAll(parts[0].body, {{"\r\n", ""}, {" ", ""}});
  EXPECT_THAT(text, HasSubstr(word));
}

TEST(DsnTest, ReplyTextCannotInjectFieldsOrParts) {
  DsnReport report = FailedReport();
  const std::string boundary = BoundaryOf(BuildDsn(report, kOriginal));
  report.recipients[0].diagnostic =
      "550-5.1.1 first line\r\n550 5.1.1 second\r\nX-Evil: yes\r\n\r\n--" + boundary +
      "\r\nContent-Type: text/html\r\n\r\n<b>\x01\x7f";
  report.recipients[0].remote_mta = "mx1.example.net\r\nX-Evil: host";
  report.to = "app@example.org\r\nBcc: victim@example.com";
  const std::string dsn = BuildDsn(report, kOriginal);
  ExpectWellFormedLines(dsn);
  for (const std::string& line : LinesOf(dsn)) {
    EXPECT_THAT(line, Not(StartsWith("X-Evil"))) << line;
    EXPECT_THAT(line, Not(StartsWith("Bcc"))) << line;
    EXPECT_THAT(line, Not(StartsWith("Content-Type: text/html"))) << line;
  }
  const std::vector<Part> parts = PartsOf(dsn);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_NE(BoundaryOf(dsn), boundary);  // the reply holds the first choice: another is taken
  // The lines of a multi-line reply are joined with a space; control characters become '?'.
  EXPECT_THAT(FieldValue(parts[1].body, "Diagnostic-Code"),
              StartsWith("smtp; 550-5.1.1 first line 550 5.1.1 second X-Evil: yes --"));
  EXPECT_THAT(FieldValue(parts[1].body, "Diagnostic-Code"), HasSubstr("<b>??"));
}

TEST(DsnTest, StatusPartStaysAsciiWithUtf8AddressesAndReplies) {
  DsnReport report = FailedReport();
  report.recipients[0].final_recipient = "j\xC3\xA9r\xC3\xB4me+x@exampl\xC3\xA9.fr";
  report.recipients[0].original_recipient = "utf-8;j\xC3\xA9r\xC3\xB4me+x@exampl\xC3\xA9.fr";
  report.recipients[0].diagnostic = "550 5.1.1 Bo\xC3\xAEte inconnue \xFF";
  const std::string dsn = BuildDsn(report, kOriginal);
  ExpectWellFormedLines(dsn);
  const std::vector<Part> parts = PartsOf(dsn);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_FALSE(HasNonAscii(parts[1].body));
  // RFC 6533 §3 utf-8-addr-xtext: non-ASCII characters and "+" as \x{HEX}.
  EXPECT_EQ(FieldValue(parts[1].body, "Final-Recipient"),
            "utf-8; j\\x{E9}r\\x{F4}me\\x{2B}x@exampl\\x{E9}.fr");
  EXPECT_EQ(FieldValue(parts[1].body, "Original-Recipient"),
            "utf-8; j\\x{E9}r\\x{F4}me\\x{2B}x@exampl\\x{E9}.fr");
  EXPECT_EQ(FieldValue(parts[1].body, "Diagnostic-Code"), "smtp; 550 5.1.1 Bo?te inconnue ?");
  // An ASCII ORCPT the sender typed utf-8 stays utf-8 typed, so escaped too ("+": \x{2B}).
  report.recipients[0].original_recipient = "utf-8;bob+x@example.org";
  EXPECT_EQ(FieldValue(PartsOf(BuildDsn(report, kOriginal))[1].body, "Original-Recipient"),
            "utf-8; bob\\x{2B}x@example.org");
  // The human part keeps the characters, quoted-printable: the DSN is 7-bit.
  EXPECT_EQ(FieldValue(parts[0].headers, "Content-Type"), "text/plain; charset=utf-8");
  EXPECT_EQ(FieldValue(parts[0].headers, "Content-Transfer-Encoding"), "quoted-printable");
  EXPECT_THAT(parts[0].body, HasSubstr("j=C3=A9r=C3=B4me+x@exampl=C3=A9.fr"));
  EXPECT_FALSE(HasNonAscii(dsn));
  for (const std::string& line : LinesOf(parts[0].body)) EXPECT_LE(line.size(), 76u) << line;
}

TEST(DsnTest, ReturnsTheWholeMessageWhenAskedAndSmallEnough) {
  DsnReport report = FailedReport();
  report.return_full = true;
  std::string dsn = BuildDsn(report, kOriginal);
  ExpectWellFormedLines(dsn);
  std::vector<Part> parts = PartsOf(dsn);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(FieldValue(parts[2].headers, "Content-Type"), "message/rfc822");
  EXPECT_EQ(FieldValue(parts[2].headers, "Content-Description"), "Undelivered Message");
  EXPECT_EQ(parts[2].body, kOriginal);
  EXPECT_THAT(parts[0].body, HasSubstr("your message are attached"));

  // Over the cap: the header section only.
  report.max_returned_bytes = kOriginal.size() - 1;
  parts = PartsOf(BuildDsn(report, kOriginal));
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(FieldValue(parts[2].headers, "Content-Type"), "text/rfc822-headers");
  EXPECT_THAT(parts[2].body, Not(HasSubstr("invoice is attached")));
  EXPECT_THAT(parts[2].body, HasSubstr("Subject: Invoice 42\r\n"));

  // A line over 998 octets cannot travel as 7bit or 8bit: the header section only.
  report.max_returned_bytes = 1 << 20;
  const std::string long_line = absl::StrCat("From: a@b\r\n\r\n", std::string(1200, 'y'), "\r\n");
  dsn = BuildDsn(report, long_line);
  ExpectWellFormedLines(dsn);
  parts = PartsOf(dsn);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(FieldValue(parts[2].headers, "Content-Type"), "text/rfc822-headers");
  EXPECT_EQ(parts[2].body, "From: a@b\r\n");

  // Bare LF line ends become CRLF.
  parts = PartsOf(BuildDsn(report, "From: a@b\nSubject: s\n\nbody\nmore"));
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[2].body, "From: a@b\r\nSubject: s\r\n\r\nbody\r\nmore\r\n");
}

TEST(DsnTest, HeaderSectionCutAtTheCapOnAFieldBoundary) {
  DsnReport report = FailedReport();
  report.max_returned_bytes = 50;  // From: 29 octets, To: 21
  std::vector<Part> parts = PartsOf(BuildDsn(report, kOriginal));
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[2].body, "From: App <app@example.org>\r\nTo: bob@example.net\r\n");
  report.max_returned_bytes = 49;
  parts = PartsOf(BuildDsn(report, kOriginal));
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[2].body, "From: App <app@example.org>\r\n");
}

TEST(DsnTest, LongOriginalHeaderLineIsCut) {
  DsnReport report = FailedReport();
  const std::string original = absl::StrCat("From: a@b\r\nX-Long: ", std::string(2500, 'z'), "\r\n\r\nbody\r\n");
  const std::string dsn = BuildDsn(report, original);
  ExpectWellFormedLines(dsn);
  const std::vector<Part> parts = PartsOf(dsn);
  ASSERT_EQ(parts.size(), 3u);
  std::string value = FieldValue(parts[2].body, "X-Long");
  value.erase(std::remove(value.begin(), value.end(), ' '), value.end());
  EXPECT_EQ(value, std::string(2500, 'z'));
}

TEST(DsnTest, EightBitOriginals) {
  DsnReport report = FailedReport();
  const std::string body_8bit = absl::StrCat(
      "From: app@example.org\r\nSubject: plain\r\nContent-Type: text/plain; charset=utf-8\r\n"
      "Content-Transfer-Encoding: 8bit\r\n\r\nD\xC3\xA9j\xC3\xA0 vu\r\n");
  // Headers only: the ASCII header section is text/rfc822-headers and the DSN stays 7-bit.
  std::string dsn = BuildDsn(report, body_8bit);
  EXPECT_FALSE(HasNonAscii(dsn));
  // RET=FULL: message/rfc822 declared 8bit, and the multipart too (RFC 2045 §6.4).
  report.return_full = true;
  dsn = BuildDsn(report, body_8bit);
  ExpectWellFormedLines(dsn);
  std::vector<Part> parts = PartsOf(dsn);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(FieldValue(dsn.substr(0, dsn.find("\r\n\r\n") + 2), "Content-Transfer-Encoding"), "8bit");
  EXPECT_EQ(FieldValue(parts[2].headers, "Content-Type"), "message/rfc822");
  EXPECT_EQ(FieldValue(parts[2].headers, "Content-Transfer-Encoding"), "8bit");
  EXPECT_EQ(parts[2].body, body_8bit);

  // UTF-8 header fields (RFC 6532): message/global-headers (RFC 6533 §6.3), or message/global.
  const std::string header_8bit =
      "From: J\xC3\xA9r\xC3\xB4me <jerome@example.org>\r\nSubject: caf\xC3\xA9\r\n\r\nbody\r\n";
  report.return_full = false;
  parts = PartsOf(BuildDsn(report, header_8bit));
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(FieldValue(parts[2].headers, "Content-Type"), "message/global-headers");
  EXPECT_EQ(FieldValue(parts[2].headers, "Content-Transfer-Encoding"), "8bit");
  EXPECT_EQ(parts[2].body, "From: J\xC3\xA9r\xC3\xB4me <jerome@example.org>\r\nSubject: caf\xC3\xA9\r\n");
  report.return_full = true;
  parts = PartsOf(BuildDsn(report, header_8bit));
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(FieldValue(parts[2].headers, "Content-Type"), "message/global");
  EXPECT_EQ(parts[2].body, header_8bit);

  // A NUL cannot travel as 8bit: the header section only.
  parts = PartsOf(BuildDsn(report, std::string("From: a@b\r\n\r\nx\0y\r\n", 19)));
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(FieldValue(parts[2].headers, "Content-Type"), "text/rfc822-headers");
}

TEST(DsnTest, BoundaryAvoidsTheReturnedContent) {
  DsnReport report = FailedReport();
  report.return_full = true;
  const std::string first = BoundaryOf(BuildDsn(report, kOriginal));
  // An original that holds the boundary that would have been chosen, and its next candidate.
  std::string original = absl::StrCat(ToAbsl(kOriginal), "--", first, "\r\n");
  const std::string second = BoundaryOf(BuildDsn(report, original));
  EXPECT_NE(second, first);
  absl::StrAppend(&original, "--", second, "--\r\n");
  const std::string dsn = BuildDsn(report, original);
  const std::string third = BoundaryOf(dsn);
  EXPECT_NE(third, first);
  EXPECT_NE(third, second);
  const std::vector<Part> parts = PartsOf(dsn);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[2].body, original);
}

TEST(DsnTest, MessageIdOfTheOriginalOnlyWhenWellFormed) {
  const DsnReport report = FailedReport();
  for (const char* original : {"Message-ID: no-brackets@x\r\n\r\n", "Subject: none\r\n\r\n",
                               "Message-ID: <a b@x>\r\n\r\n"}) {
    const std::string dsn = BuildDsn(report, original);
    EXPECT_EQ(FieldValue(dsn.substr(0, dsn.find("\r\n\r\n") + 2), "In-Reply-To"), "") << original;
  }
}

// Whatever the input octets, the output keeps its shape: CRLF lines of at most 998 octets,
// three parts, a 7-bit status part, and 8-bit octets only in a part declared 8bit.
TEST(DsnTest, ArbitraryInputKeepsTheShape) {
  std::mt19937 random(20261123);  // fixed: a failure reproduces
  const auto junk = [&random](size_t max_length) {
    static constexpr std::string_view kPieces[] = {"\r\n", "\r", "\n", " ", "\t", "--", "=_", ":",
                                                   ";", "\xC3\xA9", "\xFF", std::string_view("\0", 1),
                                                   "From: x@y", "\r\n\r\n", "a", "5.1.1"};
    std::string out;
    const size_t length = random() % (max_length + 1);
    while (out.size() < length) {
      if (random() % 3 == 0) {
        out += kPieces[random() % std::size(kPieces)];
      } else {
        out.append(random() % 50 == 0 ? 1500 : 1 + random() % 20, static_cast<char>(random() % 256));
      }
    }
    return out;
  };
  for (int round = 0; round < 300; ++round) {
    DsnReport report = FailedReport();
    report.return_full = random() % 2 == 0;
    report.max_returned_bytes = random() % 2 == 0 ? 1 << 20 : random() % 200;
    report.to = junk(40);
    report.original_envelope_id = junk(30);
    report.original_queue_id = junk(20);
    report.recipients.clear();
    for (int n = 1 + random() % 3; n > 0; --n) {
      DsnRecipient r;
      r.final_recipient = junk(60);
      r.original_recipient = junk(60);
      r.action = static_cast<DsnAction>(random() % 3);
      r.status = junk(8);
      r.remote_mta = junk(40);
      r.diagnostic = junk(3000);
      report.recipients.push_back(r);
    }
    const std::string original = junk(4000);
    const std::string dsn = BuildDsn(report, original);
    SCOPED_TRACE(::testing::Message() << "round " << round);
    ExpectWellFormedLines(dsn);
    const std::vector<Part> parts = PartsOf(dsn);
    ASSERT_EQ(parts.size(), 3u);
    EXPECT_FALSE(HasNonAscii(parts[0].body));
    EXPECT_FALSE(HasNonAscii(parts[1].body));
    EXPECT_EQ(parts[1].body.find('\0'), std::string::npos);
    const bool declared_8bit = FieldValue(parts[2].headers, "Content-Transfer-Encoding") == "8bit";
    EXPECT_EQ(HasNonAscii(parts[2].body), declared_8bit);
    EXPECT_EQ(parts[2].body.find('\0'), std::string::npos);
    const std::string top = dsn.substr(0, dsn.find("\r\n\r\n") + 2);
    EXPECT_EQ(FieldValue(top, "Content-Transfer-Encoding") == "8bit", declared_8bit);
    // Each recipient block starts with its fields, none injected.
    const std::vector<std::string> blocks = absl::StrSplit(parts[1].body, "\r\n\r\n");
    ASSERT_EQ(blocks.size(), report.recipients.size() + 1);
  }
}

// --- The DSN read by Python's email package --------------------------------------------------

std::string SourceDir() {
  if (const char* root = std::getenv("FACTEUR_SOURCE_DIR")) return root;
  // Run by hand: __FILE__ is the absolute path of this file (CMake passes absolute sources).
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path().parent_path().parent_path();
}

// Runs dsn_parse.py on `dsn` and returns what it printed, parsed.
nlohmann::json ParseWithPython(const std::string& dsn) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/dsn_", ::getpid(), ".eml");
  {
    std::ofstream file(path, std::ios::binary);
    file << dsn;
  }
  const std::string script = SourceDir() + "/tests/unit/engine/mail/dsn_parse.py";
  const std::string command = absl::StrCat("/usr/bin/python3 '", script, "' '", path, "'");
  FILE* pipe = ::popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr);
  if (pipe == nullptr) return {};
  std::string output;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) output.append(buffer, n);
  const int status = ::pclose(pipe);
  std::remove(path.c_str());
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "dsn_parse.py failed: " << output;
  nlohmann::json json = nlohmann::json::parse(output, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(json.is_discarded()) << output;
  return json;
}

// The value of `name` in a list of [name, value] pairs, "" when absent.
std::string Get(const nlohmann::json& items, std::string_view name) {
  for (const auto& item : items) {
    if (EqualsIgnoreCase(item[0].get<std::string>(), name)) return item[1].get<std::string>();
  }
  return "";
}

TEST(DsnPythonTest, BounceWithHeaderSection) {
  DsnReport report = FailedReport();
  report.original_envelope_id = "ENV-7";
  report.recipients[0].original_recipient = "rfc822;bob@example.net";
  DsnRecipient second;
  second.final_recipient = "carol@example.com";
  second.action = DsnAction::kFailed;
  second.status = "5.7.1";
  second.remote_mta = "mx.example.com";
  std::string reply = "550 5.7.1 Message rejected:";
  for (int i = 0; i < 60; ++i) absl::StrAppend(&reply, " policy", i);
  second.diagnostic = reply;
  report.recipients.push_back(second);

  const nlohmann::json got = ParseWithPython(BuildDsn(report, kOriginal));
  ASSERT_TRUE(got.is_object());
  EXPECT_EQ(got["defects"], nlohmann::json::array());
  EXPECT_EQ(got["content_type"], "multipart/report");
  EXPECT_EQ(got["report_type"], "delivery-status");
  EXPECT_EQ(got["from_addr"], "MAILER-DAEMON@relay.example.org");
  EXPECT_EQ(got["from_name"], "Mail Delivery System");
  EXPECT_EQ(got["to_addr"], "app@example.org");
  EXPECT_EQ(got["date"], "2026-11-23T15:53:00+00:00");
  EXPECT_EQ(Get(got["headers"], "Subject"), "Undelivered Mail Returned to Sender");
  EXPECT_EQ(Get(got["headers"], "Auto-Submitted"), "auto-replied");
  EXPECT_EQ(Get(got["headers"], "Message-ID"), "<dsn.01J@relay.example.org>");

  ASSERT_EQ(got["parts"].size(), 3u);
  EXPECT_EQ(got["parts"][0]["type"], "text/plain");
  EXPECT_EQ(got["parts"][1]["type"], "message/delivery-status");
  EXPECT_EQ(got["parts"][2]["type"], "text/rfc822-headers");
  EXPECT_THAT(got["text"].get<std::string>(), HasSubstr("01JQUEUEID"));
  EXPECT_THAT(got["text"].get<std::string>(), HasSubstr("<carol@example.com>"));

  EXPECT_EQ(Get(got["per_message"], "Reporting-MTA"), "dns; relay.example.org");
  EXPECT_EQ(Get(got["per_message"], "Original-Envelope-Id"), "ENV-7");
  EXPECT_EQ(Get(got["per_message"], "Arrival-Date"), "Mon, 23 Nov 2026 13:53:00 +0000");
  ASSERT_EQ(got["recipients"].size(), 2u);
  const nlohmann::json& bob = got["recipients"][0];
  EXPECT_EQ(Get(bob, "Original-Recipient"), "rfc822; bob@example.net");
  EXPECT_EQ(Get(bob, "Final-Recipient"), "rfc822; bob@example.net");
  EXPECT_EQ(Get(bob, "Action"), "failed");
  EXPECT_EQ(Get(bob, "Status"), "5.1.1");
  EXPECT_EQ(Get(bob, "Remote-MTA"), "dns; mx1.example.net");
  EXPECT_EQ(Get(bob, "Diagnostic-Code"), "smtp; 550 5.1.1 <bob@example.net>: No such user");
  EXPECT_EQ(Get(bob, "Last-Attempt-Date"), "Mon, 23 Nov 2026 15:52:00 +0000");
  const nlohmann::json& carol = got["recipients"][1];
  EXPECT_EQ(Get(carol, "Final-Recipient"), "rfc822; carol@example.com");
  EXPECT_EQ(Get(carol, "Original-Recipient"), "");
  EXPECT_EQ(Get(carol, "Status"), "5.7.1");
  EXPECT_EQ(Get(carol, "Diagnostic-Code"), "smtp; " + reply);  // folded, unfolded by Python

  EXPECT_EQ(Get(got["returned_headers"], "Subject"), "Invoice 42");
  EXPECT_EQ(Get(got["returned_headers"], "Message-ID"), "<inv42@example.org>");
  EXPECT_EQ(Get(got["returned_headers"], "To"), "bob@example.net");
  EXPECT_TRUE(got["returned_body"].is_null());
}

TEST(DsnPythonTest, DelayWithWholeEightBitMessageAndUtf8Text) {
  DsnReport report = FailedReport();
  report.return_full = true;
  report.recipients[0].action = DsnAction::kDelayed;
  report.recipients[0].status = "4.2.2";
  report.recipients[0].final_recipient = "j\xC3\xA9r\xC3\xB4me@example.net";
  report.recipients[0].diagnostic = "452 4.2.2 Bo\xC3\xAEte pleine";
  report.recipients[0].will_retry_until = kDate + absl::Hours(96);
  const std::string original =
      "From: app@example.org\r\nSubject: caf\xC3\xA9\r\nMessage-ID: <c@example.org>\r\n\r\n"
      "Un caf\xC3\xA9, s'il vous pla\xC3\xAEt.\r\n";

  const nlohmann::json got = ParseWithPython(BuildDsn(report, original));
  ASSERT_TRUE(got.is_object());
  EXPECT_EQ(got["defects"], nlohmann::json::array());
  EXPECT_EQ(got["content_type"], "multipart/report");
  EXPECT_EQ(got["report_type"], "delivery-status");
  EXPECT_EQ(Get(got["headers"], "Subject"), "Delayed Mail (still being retried)");
  EXPECT_EQ(Get(got["headers"], "Content-Transfer-Encoding"), "8bit");
  EXPECT_EQ(Get(got["headers"], "In-Reply-To"), "<c@example.org>");
  ASSERT_EQ(got["parts"].size(), 3u);
  EXPECT_EQ(got["parts"][0]["charset"], "utf-8");
  EXPECT_EQ(got["parts"][0]["cte"], "quoted-printable");
  EXPECT_EQ(got["parts"][2]["type"], "message/global");
  EXPECT_EQ(got["parts"][2]["cte"], "8bit");
  // The human text decoded: the UTF-8 address and reply are intact.
  EXPECT_THAT(got["text"].get<std::string>(), HasSubstr("<j\xC3\xA9r\xC3\xB4me@example.net>"));
  EXPECT_THAT(got["text"].get<std::string>(), HasSubstr("452 4.2.2 Bo\xC3\xAEte pleine"));
  ASSERT_EQ(got["recipients"].size(), 1u);
  const nlohmann::json& r = got["recipients"][0];
  EXPECT_EQ(Get(r, "Final-Recipient"), "utf-8; j\\x{E9}r\\x{F4}me@example.net");
  EXPECT_EQ(Get(r, "Action"), "delayed");
  EXPECT_EQ(Get(r, "Status"), "4.2.2");
  EXPECT_EQ(Get(r, "Will-Retry-Until"), "Fri, 27 Nov 2026 15:53:00 +0000");
  EXPECT_EQ(Get(got["returned_headers"], "Subject"), "caf\xC3\xA9");
  EXPECT_EQ(got["returned_body"], "Un caf\xC3\xA9, s'il vous pla\xC3\xAEt.\r\n");
}

}  // namespace
}  // namespace facteur::mail
