// File: engine/mail/mime.h
// MIME transfer encodings (RFC 2045 §6) where a message must be re-encoded: quoted-printable
// text for DSNs, and fitting a message whose lines are too long for SMTP into lines that are
// not, without changing what its reader sees.
// Thread contract: pure functions. No I/O.
#pragma once

#include <string>
#include <string_view>

namespace facteur::mail {

// RFC 5322 §2.1.1: at most 998 octets in a line, CRLF excluded (RFC 5321 §4.5.3.1.6: 1000 with
// it).
inline constexpr size_t kMaxLineOctets = 998;

// RFC 2045 §6.7 quoted-printable of CRLF-ended text: line ends stay hard breaks, lines are cut
// with soft breaks at 76 columns, white space before a line end is encoded.
std::string QuotedPrintable(std::string_view text);

// The octets of the longest line of `text` (CRLF line ends), its CRLF excluded.
size_t LongestLine(std::string_view text);

// The 1-based number of the first line of `text` (CRLF line ends) longer than kMaxLineOctets,
// 0 when there is none.
size_t FirstLongLine(std::string_view text);

// Makes every line of `message` (CRLF line ends) fit kMaxLineOctets, as the `sendmail` command
// must before it submits over SMTP what an application wrote (PHP's mail() with an HTML body on
// one line, a To: field naming a hundred addresses). Header lines that are too long are folded
// at their white space (RFC 5322 §2.2.3), into lines of 78 octets where they allow, in the
// message's header and in each part's. Each body with a long line is re-encoded, its decoded
// octets unchanged:
// text in 7bit, 8bit or no encoding becomes quoted-printable (RFC 2045 §6.7), other types and
// binary become base64 (§6.8), base64 is cut again at 76 columns, quoted-printable gets soft
// line breaks. The parts of a multipart entity (RFC 2046 §5.1) are each handled so, and
// `MIME-Version: 1.0` is added when missing. Left as they are, for the server to refuse: header
// lines with more than 998 octets without white space, preambles and epilogues, message/*
// entities, unknown encodings, and the parts of multipart/signed and multipart/encrypted
// (RFC 1847: the signature covers the part as written). Returns whether it changed `message`.
bool FitLongLines(std::string& message);

}  // namespace facteur::mail
