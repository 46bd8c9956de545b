#include "engine/mail/dsn.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "engine/base/status.h"
#include "engine/mail/header.h"
#include "engine/mail/mime.h"
#include "engine/mail/text.h"

namespace facteur::mail {
namespace {

constexpr size_t kFoldColumn = 78;      // RFC 5322 §2.1.1: lines SHOULD stay under 78
constexpr size_t kTextColumn = 76;      // the human-readable part
constexpr size_t kMaxMessageIdOctets = 250;

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (IsWsp(s.front()) || s.front() == '\r' || s.front() == '\n')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (IsWsp(s.back()) || s.back() == '\r' || s.back() == '\n')) {
    s.remove_suffix(1);
  }
  return s;
}

// The code point of the well-formed UTF-8 sequence of `length` octets at `s[i]`.
uint32_t DecodeUtf8(std::string_view s, size_t i, size_t length) {
  const auto octet = [&](size_t k) { return static_cast<uint32_t>(static_cast<unsigned char>(s[i + k])); };
  switch (length) {
    case 2: return ((octet(0) & 0x1F) << 6) | (octet(1) & 0x3F);
    case 3: return ((octet(0) & 0x0F) << 12) | ((octet(1) & 0x3F) << 6) | (octet(2) & 0x3F);
    default:
      return ((octet(0) & 0x07) << 18) | ((octet(1) & 0x3F) << 12) | ((octet(2) & 0x3F) << 6) |
             (octet(3) & 0x3F);
  }
}

// One line of text from something a remote server or a client wrote: the line ends of a
// multi-line reply and tabs become one space (so that nothing from outside can start a field
// or a part of its own), other control characters '?'. Non-ASCII characters stay when
// `keep_utf8` (the human part, which is encoded); otherwise, and for malformed UTF-8, each
// becomes one '?' (the status part is US-ASCII, RFC 3464 §2.3.6).
std::string OneLine(std::string_view s, bool keep_utf8) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = s[i];
    if (c == '\r' || c == '\n' || c == '\t') {
      if (!out.empty() && out.back() != ' ') out += ' ';
      ++i;
    } else if (c < 0x20 || c == 0x7F) {
      out += '?';
      ++i;
    } else if (c < 0x80) {
      out += static_cast<char>(c);
      ++i;
    } else {
      const size_t length = Utf8NonAsciiLength(s, i);
      if (length != 0 && keep_utf8) {
        out.append(s.substr(i, length));
      } else {
        out += '?';
      }
      i += length == 0 ? 1 : length;
    }
  }
  return std::string(Trim(out));
}

// "utf-8; " and the address with each character outside QCHAR as \x{HEX}: RFC 6533 §3
// utf-8-addr-xtext, the 7-bit form that fits message/delivery-status.
std::string Utf8TypedAddress(std::string_view address) {
  std::string out = "utf-8; ";
  for (size_t i = 0; i < address.size();) {
    const unsigned char c = address[i];
    uint32_t code_point = c;
    size_t length = 1;
    if (c >= 0x80) {
      length = Utf8NonAsciiLength(address, i);
      code_point = length == 0 ? 0xFFFD : DecodeUtf8(address, i, length);
      if (length == 0) length = 1;
    }
    // QCHAR = %x21-2a / %x2c-3c / %x3e-5b / %x5d-7e: printable ASCII but "+", "=" and "\".
    if (code_point >= 0x21 && code_point <= 0x7E && code_point != '+' && code_point != '=' &&
        code_point != '\\') {
      out += static_cast<char>(code_point);
    } else {
      absl::StrAppendFormat(&out, "\\x{%02X}", code_point);
    }
    i += length;
  }
  return out;
}

// An address as the status part types it (RFC 3464 §2.3.2, address-type ";" generic-address):
// "rfc822; a@b" when it is ASCII, utf-8 typed otherwise.
std::string TypedAddress(std::string_view address) {
  address = Trim(address);
  if (!HasNonAscii(address)) return absl::StrCat("rfc822; ", OneLine(address, false));
  return Utf8TypedAddress(address);
}

// Appends "name: value" CRLF, folded (RFC 5322 §2.2.3: a CRLF inserted before white space)
// to stay under kFoldColumn where the value has white space, and never over kMaxLineOctets: a
// word too long for a line is cut and continued on the next line after one space. Folding never
// splits a UTF-8 sequence.
void AppendField(std::string* out, std::string_view name, std::string_view value) {
  const std::string v = absl::StrCat(" ", ToAbsl(Trim(value)));
  out->append(name);
  out->push_back(':');
  const size_t first_line_start = name.size() + 1;
  size_t line = first_line_start;
  size_t i = 0;
  while (i < v.size()) {
    // One segment: a run of white space, then a word. Every segment starts with white space,
    // so a line may begin with any of them.
    size_t j = i;
    while (j < v.size() && IsWsp(v[j])) ++j;
    while (j < v.size() && !IsWsp(v[j])) ++j;
    std::string_view segment(v.data() + i, j - i);
    if (line + segment.size() > kFoldColumn && line > first_line_start) {
      out->append("\r\n");
      line = 0;
    }
    while (line + segment.size() > kMaxLineOctets) {
      const size_t take = Utf8CutAtOrBefore(segment, kMaxLineOctets - line, 1);
      out->append(segment.substr(0, take));
      out->append("\r\n ");
      line = 1;
      segment.remove_prefix(take);
    }
    out->append(segment);
    line += segment.size();
    i = j;
  }
  out->append("\r\n");
}

// Appends `text` as lines of at most kTextColumn columns where it has spaces, each starting
// with `indent` spaces and ending with CRLF. A word longer than a line has a line of its own,
// cut only past kMaxLineOctets.
void AppendWrapped(std::string* out, std::string_view text, size_t indent) {
  const std::string prefix(indent, ' ');
  std::string line = prefix;
  const auto flush = [&] {
    out->append(line);
    out->append("\r\n");
    line = prefix;
  };
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && text[i] == ' ') ++i;
    size_t j = i;
    while (j < text.size() && text[j] != ' ') ++j;
    if (i == j) break;
    std::string_view word = text.substr(i, j - i);
    if (line.size() > indent && line.size() + 1 + word.size() > kTextColumn) flush();
    if (line.size() > indent) line += ' ';
    while (line.size() + word.size() > kMaxLineOctets) {
      const size_t take = Utf8CutAtOrBefore(word, kMaxLineOctets - line.size(), 1);
      line.append(word.substr(0, take));
      word.remove_prefix(take);
      flush();
    }
    line.append(word);
    i = j;
  }
  if (line.size() > indent) flush();
}

// RFC 3463 §2: class "." subject "." detail, class 2, 4 or 5, subject and detail 1 to 3 digits.
bool IsEnhancedStatus(std::string_view s) {
  if (s.size() < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.') return false;
  size_t i = 2;
  for (int part = 0; part < 2; ++part) {
    size_t digits = 0;
    while (i < s.size() && IsAsciiDigit(s[i])) ++i, ++digits;
    if (digits == 0 || digits > 3) return false;
    if (part == 0) {
      if (i >= s.size() || s[i] != '.') return false;
      ++i;
    }
  }
  return i == s.size();
}

std::string StatusOf(const DsnRecipient& recipient) {
  const std::string_view status = Trim(recipient.status);
  if (IsEnhancedStatus(status)) return std::string(status);
  // The class of the reply code when there is one (RFC 3463 §3.1: X.0.0 "other undefined").
  const std::string_view diagnostic = Trim(recipient.diagnostic);
  if (diagnostic.size() >= 3 && (diagnostic[0] == '2' || diagnostic[0] == '4' || diagnostic[0] == '5') &&
      IsAsciiDigit(diagnostic[1]) && IsAsciiDigit(diagnostic[2])) {
    return absl::StrCat(ToAbsl(diagnostic.substr(0, 1)), ".0.0");
  }
  switch (recipient.action) {
    case DsnAction::kFailed: return "5.0.0";
    case DsnAction::kDelayed: return "4.0.0";
    case DsnAction::kDelivered:
    case DsnAction::kRelayed: return "2.0.0";
  }
  return "5.0.0";
}

const char* ActionName(DsnAction action) {
  switch (action) {
    case DsnAction::kFailed: return "failed";
    case DsnAction::kDelayed: return "delayed";
    case DsnAction::kDelivered: return "delivered";
    case DsnAction::kRelayed: return "relayed";
  }
  return "failed";
}

// What an enhanced status code means, in words (RFC 3463 §3, RFC 7505 §4.3 for X.1.10).
std::string StatusMeaning(std::string_view status) {
  const size_t dot = status.find('.');
  const std::string_view subject_detail = status.substr(dot + 1);
  struct Meaning {
    std::string_view code;
    std::string_view words;
  };
  static constexpr Meaning kDetails[] = {
      {"1.1", "the mailbox does not exist"},
      {"1.2", "the recipient's domain does not exist"},
      {"1.3", "the recipient's address is not valid"},
      {"1.10", "the recipient's domain does not accept mail"},
      {"2.1", "the mailbox is disabled"},
      {"2.2", "the mailbox is full"},
      {"2.3", "the message is larger than the mailbox accepts"},
      {"3.4", "the message is larger than the receiving system accepts"},
      {"4.1", "the recipient's mail server did not answer"},
      {"4.2", "the connection to the recipient's mail server was lost"},
      {"4.3", "the recipient's domain could not be looked up in the DNS"},
      {"4.4", "no mail server could be found for the recipient's domain"},
      {"4.7", "the message could not be delivered in time"},
      {"7.1", "the recipient's system refused the message by policy"},
  };
  for (const Meaning& m : kDetails) {
    if (subject_detail == m.code) return std::string(m.words);
  }
  static constexpr std::string_view kSubjects[] = {
      "an unspecified problem",        "a problem with the address",
      "a problem with the mailbox",    "a problem with the receiving mail system",
      "a network or routing problem",  "a mail protocol problem",
      "a problem with the message's content", "a security or policy problem"};
  const size_t subject = subject_detail.empty() ? 0 : static_cast<size_t>(subject_detail[0] - '0');
  if (subject_detail.size() >= 2 && subject_detail[1] == '.' && subject < 8) {
    return std::string(kSubjects[subject]);
  }
  return std::string(kSubjects[0]);
}

// The host name from "mx1.example.net[192.0.2.1]" (RFC 3464 §2.3.5: Remote-MTA is type dns).
std::string_view RemoteHostName(std::string_view remote) {
  remote = Trim(remote);
  const size_t bracket = remote.find('[');
  if (bracket != std::string_view::npos && bracket > 0 && remote.back() == ']') {
    return remote.substr(0, bracket);
  }
  return remote;
}

// The original message, read for returning.
struct Original {
  std::string header;   // its header section, CRLF-ended fields, no line over kMaxLineOctets
  std::string whole;    // the whole message, only when `returned_whole`
  bool returned_whole = false;
  bool header_8bit = false;
  bool whole_8bit = false;
  std::string message_id;  // its Message-ID when usable in In-Reply-To/References
};

// Bare CR and bare LF become CRLF: a message has no other line end (RFC 5322 §2.3).
std::string CanonicalLineEnds(std::string_view s) {
  std::string out;
  out.reserve(s.size() + s.size() / 64);
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\r') {
      out.append("\r\n");
      if (i + 1 < s.size() && s[i + 1] == '\n') ++i;
    } else if (s[i] == '\n') {
      out.append("\r\n");
    } else {
      out += s[i];
    }
  }
  return out;
}

// Cuts lines over kMaxLineOctets into continuation lines (CRLF SP): a header field line that
// long cannot be sent as it is; this keeps what it says.
std::string CutLongLines(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t start = 0;
  while (start < s.size()) {
    size_t end = s.find("\r\n", start);
    const bool has_crlf = end != std::string_view::npos;
    if (!has_crlf) end = s.size();
    std::string_view line = s.substr(start, end - start);
    size_t budget = kMaxLineOctets;
    while (line.size() > budget) {
      const size_t take = Utf8CutAtOrBefore(line, budget, 1);
      out.append(line.substr(0, take));
      out.append("\r\n ");
      line.remove_prefix(take);
      budget = kMaxLineOctets - 1;
    }
    out.append(line);
    out.append("\r\n");
    start = has_crlf ? end + 2 : s.size();
  }
  return out;
}

Original ReadOriginal(std::string_view message, const DsnReport& report) {
  Original original;
  const std::string canonical = CanonicalLineEnds(message);
  const HeaderSection section = ParseHeaderSection(canonical);

  // The header section, cut on a field boundary at the cap.
  size_t header_end = 0;
  for (const HeaderField& field : section.fields) {
    const size_t end = static_cast<size_t>(field.raw.data() - canonical.data()) + field.raw.size();
    if (end > report.max_returned_bytes) break;
    header_end = end;
  }
  original.header = CutLongLines(std::string_view(canonical).substr(0, header_end));
  // RFC 5322 §2.2 and RFC 2045 §2.7-2.8 have no NUL in a header section, 7bit or 8bit: it is
  // shown as '?' rather than dropping the field that holds it.
  std::replace(original.header.begin(), original.header.end(), '\0', '?');
  original.header_8bit = HasNonAscii(original.header);

  if (const auto id = FindField(section, "Message-ID")) {
    const std::string value = UnfoldedValue(*id);
    bool usable = value.size() >= 3 && value.size() <= kMaxMessageIdOctets && value.front() == '<' &&
                  value.back() == '>';
    for (char c : value) usable = usable && c > 0x20 && c < 0x7F;
    if (usable) original.message_id = value;
  }

  // RFC 2046 §5.2.1: message/rfc822 is 7bit or 8bit here (binary needs BINARYMIME end to end),
  // and RFC 2045 §2.7-2.8 forbid NUL and lines over 998 octets in both.
  if (report.return_full && canonical.size() <= report.max_returned_bytes &&
      canonical.find('\0') == std::string::npos && LongestLine(canonical) <= kMaxLineOctets) {
    original.returned_whole = true;
    original.whole = canonical;
    if (!original.whole.empty() &&
        (original.whole.size() < 2 || original.whole.compare(original.whole.size() - 2, 2, "\r\n") != 0)) {
      original.whole.append("\r\n");
    }
    original.whole_8bit = HasNonAscii(original.whole);
  }
  return original;
}

// The text/plain part: who could not be reached and why, in words.
std::string HumanText(const DsnReport& report, bool returned_whole) {
  std::string out;
  AppendWrapped(&out,
                absl::StrCat("This is the mail delivery system at ",
                             OneLine(report.reporting_mta, true), "."),
                0);

  const auto describe = [&](const DsnRecipient& r) {
    out.append("\r\n");
    AppendWrapped(&out, absl::StrCat("<", OneLine(r.final_recipient, true), ">"), 2);
    const std::string orcpt = OneLine(r.original_recipient, true);
    const size_t semicolon = orcpt.find(';');
    const std::string_view orcpt_address =
        Trim(semicolon == std::string::npos ? std::string_view(orcpt)
                                            : std::string_view(orcpt).substr(semicolon + 1));
    if (!orcpt_address.empty() && !EqualsIgnoreCase(orcpt_address, Trim(r.final_recipient))) {
      AppendWrapped(&out, absl::StrCat("(originally addressed to ", ToAbsl(orcpt_address), ")"), 4);
    }
    const std::string remote = OneLine(r.remote_mta, true);
    const std::string diagnostic = OneLine(r.diagnostic, true);
    const std::string status = StatusOf(r);
    if (r.action == DsnAction::kDelivered || r.action == DsnAction::kRelayed) {
      const std::string_view done =
          r.action == DsnAction::kDelivered ? "Delivered" : "Passed on";
      AppendWrapped(&out,
                    remote.empty() ? absl::StrCat(ToAbsl(done), ".")
                                   : absl::StrCat(ToAbsl(done), " to the server ", remote, "."),
                    4);
      return;
    }
    if (!remote.empty() && !diagnostic.empty()) {
      AppendWrapped(&out, absl::StrCat("The server ", remote, " answered: ", diagnostic), 4);
    } else if (!remote.empty()) {
      AppendWrapped(&out, absl::StrCat("The server ", remote, " did not accept it."), 4);
    } else if (!diagnostic.empty()) {
      AppendWrapped(&out, absl::StrCat("Reason: ", diagnostic), 4);
    }
    AppendWrapped(&out, absl::StrCat("In short: ", StatusMeaning(status), " (status ", status, ")."),
                  4);
    if (r.action == DsnAction::kDelayed && r.will_retry_until != absl::InfinitePast()) {
      AppendWrapped(&out,
                    absl::StrCat("Still trying until ", FormatRfc5322Date(r.will_retry_until), "."),
                    4);
    }
  };

  struct Group {
    DsnAction action;
    std::string_view intro;
  };
  static constexpr Group kGroups[] = {
      {DsnAction::kFailed,
       "Your message could not be delivered to the recipients below. This is a permanent "
       "failure: the mail system has given up on them and will not try again."},
      {DsnAction::kDelayed,
       "Your message has not been delivered yet to the recipients below. The mail system is "
       "still trying; you do not need to send it again. You will get another notice if it "
       "gives up."},
      {DsnAction::kDelivered, "Your message was delivered to the recipients below."},
      {DsnAction::kRelayed,
       "Your message was passed on to the mail servers of the recipients below. Those servers "
       "do not send delivery notifications: this is the last notice you will get about it."},
  };
  for (const Group& group : kGroups) {
    bool any = false;
    for (const DsnRecipient& r : report.recipients) any = any || r.action == group.action;
    if (!any) continue;
    out.append("\r\n");
    AppendWrapped(&out, group.intro, 0);
    for (const DsnRecipient& r : report.recipients) {
      if (r.action == group.action) describe(r);
    }
  }

  out.append("\r\n");
  const std::string queue_id = OneLine(report.original_queue_id, false);
  if (!queue_id.empty()) {
    AppendWrapped(&out,
                  absl::StrCat("Your message's queue id on this system is ", queue_id,
                               "; please quote it if you contact the postmaster about it."),
                  0);
  }
  AppendWrapped(&out,
                absl::StrCat("A machine-readable report (RFC 3464) and ",
                             returned_whole ? "your message" : "the header section of your message",
                             " are attached."),
                0);
  return out;
}

// The message/delivery-status part (RFC 3464 §2.1): the per-message fields, then one block
// of per-recipient fields for each recipient, blocks separated by a blank line.
std::string DeliveryStatus(const DsnReport& report) {
  std::string out;
  // RFC 3464 §2.2: Original-Envelope-Id, Reporting-MTA, Arrival-Date, then extension fields.
  const std::string envelope_id = OneLine(report.original_envelope_id, false);
  if (!envelope_id.empty()) AppendField(&out, "Original-Envelope-Id", envelope_id);
  AppendField(&out, "Reporting-MTA", absl::StrCat("dns; ", OneLine(report.reporting_mta, false)));
  if (report.arrival_date != absl::InfinitePast()) {
    AppendField(&out, "Arrival-Date", FormatRfc5322Date(report.arrival_date));
  }
  const std::string queue_id = OneLine(report.original_queue_id, false);
  if (!queue_id.empty()) AppendField(&out, "X-Facteur-Queue-ID", queue_id);

  // RFC 3464 §2.3, in its order: Original-Recipient, Final-Recipient, Action, Status,
  // Remote-MTA, Diagnostic-Code, Last-Attempt-Date, Will-Retry-Until.
  for (const DsnRecipient& r : report.recipients) {
    out.append("\r\n");
    const std::string_view orcpt = Trim(r.original_recipient);
    const size_t semicolon = orcpt.find(';');
    if (semicolon != std::string_view::npos && semicolon > 0) {
      const std::string type = OneLine(orcpt.substr(0, semicolon), false);
      const std::string_view address = Trim(orcpt.substr(semicolon + 1));
      // A non-ASCII ORCPT can only be utf-8 typed (RFC 6533 §3), and a utf-8 typed one is
      // written escaped ("+" as \x{2B}) whatever its characters; keep the sender's type
      // otherwise, as the field must (RFC 3461 §6.3 d).
      AppendField(&out, "Original-Recipient",
                  HasNonAscii(address) || EqualsIgnoreCase(type, "utf-8")
                      ? Utf8TypedAddress(address)
                      : absl::StrCat(type, "; ", OneLine(address, false)));
    }
    AppendField(&out, "Final-Recipient", TypedAddress(r.final_recipient));
    AppendField(&out, "Action", ActionName(r.action));
    AppendField(&out, "Status", StatusOf(r));
    const std::string remote = OneLine(RemoteHostName(r.remote_mta), false);
    if (!remote.empty()) AppendField(&out, "Remote-MTA", absl::StrCat("dns; ", remote));
    const std::string diagnostic = OneLine(r.diagnostic, false);
    if (!diagnostic.empty()) {
      // "smtp" is for replies a server sent (RFC 3464 §2.3.6); a reply we made up ourselves
      // (no server answered) gets our own X- type, as Postfix's "X-Postfix".
      AppendField(&out, "Diagnostic-Code",
                  absl::StrCat(remote.empty() ? "X-Facteur" : "smtp", "; ", diagnostic));
    }
    if (r.last_attempt != absl::InfinitePast()) {
      AppendField(&out, "Last-Attempt-Date", FormatRfc5322Date(r.last_attempt));
    }
    if (r.action == DsnAction::kDelayed && r.will_retry_until != absl::InfinitePast()) {
      AppendField(&out, "Will-Retry-Until", FormatRfc5322Date(r.will_retry_until));
    }
  }
  return out;
}

uint64_t Fnv1a(std::string_view s, uint64_t hash = 14695981039346656037ull) {
  for (char c : s) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 1099511628211ull;
  }
  return hash;
}

// A boundary (RFC 2046 §5.1.1: up to 70 characters) that occurs in none of the parts. "=_" can
// occur in no quoted-printable text; the parts are checked anyway, since the returned message
// and the status part's text come from outside.
std::string Boundary(const DsnReport& report, const std::vector<std::string_view>& parts) {
  const uint64_t seed = Fnv1a(report.original_queue_id, Fnv1a(report.message_id));
  for (uint64_t attempt = 0;; ++attempt) {
    const std::string candidate =
        absl::StrFormat("=_facteur_dsn_%016x_%d", Fnv1a(absl::StrCat(attempt), seed), attempt);
    bool clash = false;
    for (std::string_view part : parts) clash = clash || part.find(candidate) != std::string_view::npos;
    if (!clash) return candidate;
  }
}

}  // namespace

std::string BuildDsn(const DsnReport& report, std::string_view original_message) {
  const Original original = ReadOriginal(original_message, report);

  const std::string text = HumanText(report, original.returned_whole);
  const bool text_is_ascii = !HasNonAscii(text);
  const std::string text_body = text_is_ascii ? text : QuotedPrintable(text);
  const std::string status = DeliveryStatus(report);
  const std::string& returned = original.returned_whole ? original.whole : original.header;
  const bool returned_8bit = original.returned_whole ? original.whole_8bit : original.header_8bit;
  const std::string boundary = Boundary(report, {text_body, status, returned});

  bool any_failed = false, any_delayed = false;
  for (const DsnRecipient& r : report.recipients) {
    any_failed = any_failed || r.action == DsnAction::kFailed;
    any_delayed = any_delayed || r.action == DsnAction::kDelayed;
  }
  const char* subject = any_failed    ? "Undelivered Mail Returned to Sender"
                        : any_delayed ? "Delayed Mail (still being retried)"
                                      : "Successful Mail Delivery Report";

  std::string out;
  out.reserve(text_body.size() + status.size() + returned.size() + 2048);
  const std::string from = OneLine(report.from, true);
  AppendField(&out, "From",
              from.find('<') != std::string::npos
                  ? from
                  : absl::StrCat("Mail Delivery System <", from, ">"));
  AppendField(&out, "To", absl::StrCat("<", OneLine(report.to, true), ">"));
  AppendField(&out, "Subject", subject);
  AppendField(&out, "Date", FormatRfc5322Date(report.date));
  AppendField(&out, "Message-ID", OneLine(report.message_id, false));
  if (!original.message_id.empty()) {
    // So that mail readers show the bounce with the message it is about (RFC 5322 §3.6.4).
    AppendField(&out, "In-Reply-To", original.message_id);
    AppendField(&out, "References", original.message_id);
  }
  // RFC 3834 §5: a response to a message, made by a machine; no one should auto-reply to it.
  AppendField(&out, "Auto-Submitted", "auto-replied");
  AppendField(&out, "MIME-Version", "1.0");
  // RFC 6522 §3 (multipart/report), RFC 3464 §2 (report-type=delivery-status).
  absl::StrAppend(&out, "Content-Type: multipart/report; report-type=delivery-status;\r\n boundary=\"",
                  boundary, "\"\r\n");
  // RFC 2045 §6.4: a multipart declares the widest encoding among its parts.
  if (returned_8bit) out.append("Content-Transfer-Encoding: 8bit\r\n");
  out.append("\r\nThis is a MIME-encapsulated message.\r\n");

  absl::StrAppend(&out, "\r\n--", boundary, "\r\n");
  out.append("Content-Description: Notification\r\n");
  if (text_is_ascii) {
    out.append("Content-Type: text/plain; charset=us-ascii\r\n\r\n");
  } else {
    out.append("Content-Type: text/plain; charset=utf-8\r\n");
    out.append("Content-Transfer-Encoding: quoted-printable\r\n\r\n");
  }
  out.append(text_body);

  absl::StrAppend(&out, "\r\n--", boundary, "\r\n");
  out.append("Content-Description: Delivery report\r\n");
  out.append("Content-Type: message/delivery-status\r\n\r\n");
  out.append(status);

  const bool undelivered = any_failed || any_delayed;
  absl::StrAppend(&out, "\r\n--", boundary, "\r\n");
  absl::StrAppend(&out, "Content-Description: ", undelivered ? "Undelivered " : "",
                  original.returned_whole ? "Message" : "Message Headers", "\r\n");
  const char* type = original.returned_whole
                         ? (original.header_8bit ? "message/global" : "message/rfc822")
                         : (original.header_8bit ? "message/global-headers" : "text/rfc822-headers");
  absl::StrAppend(&out, "Content-Type: ", type, "\r\n");
  if (returned_8bit) out.append("Content-Transfer-Encoding: 8bit\r\n");
  out.append("\r\n");
  out.append(returned);
  absl::StrAppend(&out, "\r\n--", boundary, "--\r\n");
  return out;
}

}  // namespace facteur::mail
