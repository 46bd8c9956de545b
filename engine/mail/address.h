// File: engine/mail/address.h
// Mail addresses: the envelope forms of RFC 5321 §4.1.2 (Path, Reverse-path, Mailbox with
// Dot-string or Quoted-string local parts, Domain or address-literal) with the UTF-8 extension
// of RFC 6531 §3.3, and the header form of RFC 5322 §3.4 (mailbox-list with display names,
// comments, groups) used to read the From: field.
// Thread contract: pure functions, value types. No I/O.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace facteur::mail {

struct Mailbox {
  std::string local_part;  // unquoted form: `"john doe"` is stored as `john doe`
  std::string domain;      // as written: a Domain or an address literal "[192.0.2.1]"

  // local@domain, quoting the local part when it is not a Dot-string (RFC 5321 §4.1.2).
  std::string ToString() const;
  // True when any octet is non-ASCII: such a mailbox needs SMTPUTF8 (RFC 6531 §3.2).
  bool NeedsSmtpUtf8() const;
  // ASCII-lowercased "local@domain", the form used to compare grants and addresses.
  std::string Canonical() const;

  friend bool operator==(const Mailbox&, const Mailbox&) = default;
};

// Limits of RFC 5321 §4.5.3.1.1-3.
inline constexpr size_t kMaxLocalPartOctets = 64;
inline constexpr size_t kMaxDomainOctets = 255;
inline constexpr size_t kMaxPathOctets = 256;

// Parses a Mailbox `local@domain` (no angle brackets). `allow_utf8` admits RFC 6531 UTF-8 in
// the local part and U-labels in the domain. InvalidArgument with a short reason otherwise.
absl::StatusOr<Mailbox> ParseMailbox(std::string_view text, bool allow_utf8);

// True for an RFC 5321 Domain (sub-domains of letters, digits and hyphens, no leading or trailing
// hyphen, labels of 1-63 octets) or an address literal ([IPv4] or [IPv6:...]). With `allow_utf8`,
// labels may hold UTF-8 (U-labels, RFC 6531 §3.3).
bool IsValidDomain(std::string_view domain, bool allow_utf8);

// The form of `domain` that DNS and routing use (RFC 5890 §2.3.2.1): lowercase ASCII, each
// U-label (RFC 6531 §3.3) as its A-label ("bücher.example" → "xn--bcher-kva.example"), by
// IDNA2008 with the UTS #46 mapping (libidn2). InvalidArgument when a label is no valid IDN.
absl::StatusOr<std::string> AsciiDomain(std::string_view domain);
// The key routing and queue operations match a domain by: AsciiDomain, or for a name that is
// no IDN its lowercased text (its lookup then fails as a bad domain name).
std::string DomainKey(std::string_view domain);

// Parses the value of an address header (From:, Sender:, Reply-To:) as an RFC 5322 §3.4
// address-list and returns every mailbox in it (group members included). Display names,
// comments and folding white space are skipped; UTF-8 is accepted (RFC 6532). InvalidArgument
// when the value is not an address list or holds no mailbox.
absl::StatusOr<std::vector<Mailbox>> ParseAddressList(std::string_view header_value);

// True when `header_value` reads as an address list that names no mailbox: empty, or groups
// without members ("undisclosed-recipients:;"), comments and white space aside.
bool NamesNoMailbox(std::string_view header_value);

}  // namespace facteur::mail
