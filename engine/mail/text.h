// File: engine/mail/text.h
// Octet-level helpers shared by the mail parsers: ASCII classes of RFC 5234 and RFC 5322 §3.2.3,
// UTF-8 well-formedness of RFC 3629 §4, and case-insensitive ASCII comparison (SMTP verbs,
// keywords and header field names are case-insensitive, RFC 5321 §2.4, RFC 5322 §1.2.2).
// Thread contract: pure functions. No I/O.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace facteur::mail {

inline bool IsAsciiAlpha(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
inline bool IsAsciiDigit(unsigned char c) { return c >= '0' && c <= '9'; }
inline bool IsWsp(unsigned char c) { return c == ' ' || c == '\t'; }
inline char ToUpperAscii(char c) { return (c >= 'a' && c <= 'z') ? static_cast<char>(c - 32) : c; }
inline char ToLowerAscii(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }

// RFC 5322 §3.2.3 atext (the same set as RFC 5321 §4.1.2 uses for Atom).
bool IsAtext(unsigned char c);

// RFC 3629 §4: the length (2-4) of the well-formed UTF8-non-ascii sequence that starts at
// `s[i]`, or 0 when the octets there are not one (overlong forms, surrogates, truncation).
size_t Utf8NonAsciiLength(std::string_view s, size_t i);
// Where to cut `s` at or before `at` without splitting a UTF-8 sequence: `at` moved back over
// continuation octets (10xxxxxx), never below `floor`.
inline size_t Utf8CutAtOrBefore(std::string_view s, size_t at, size_t floor = 0) {
  while (at > floor && at < s.size() && (static_cast<unsigned char>(s[at]) & 0xC0) == 0x80) --at;
  return at;
}

bool HasNonAscii(std::string_view s);
bool EqualsIgnoreCase(std::string_view a, std::string_view b);
bool StartsWithIgnoreCase(std::string_view s, std::string_view prefix);
std::string UpperAscii(std::string_view s);
std::string LowerAscii(std::string_view s);
// The domain of `address` (what follows its last '@'), ASCII-lowercased; "" without an '@'.
std::string LowerDomainOf(std::string_view address);

}  // namespace facteur::mail
