#include "engine/mail/address.h"

#include <arpa/inet.h>  // inet_pton: parses an address literal, no I/O
#include <idn2.h>

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status.h"
#include "engine/mail/text.h"

namespace facteur::mail {
namespace {

absl::Status Invalid(std::string_view reason) {
  return absl::InvalidArgumentError(ToAbsl(reason));
}

// RFC 5321 §4.1.2 Dot-string = Atom *("." Atom); RFC 6531 §3.3 adds UTF8-non-ascii to atext.
absl::Status CheckDotString(std::string_view s, bool allow_utf8) {
  if (s.empty()) return Invalid("empty local part");
  bool at_atom_start = true;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = s[i];
    if (c == '.') {
      if (at_atom_start) {
        return Invalid(i == 0 ? "local part starts with a dot" : "two dots in a row in local part");
      }
      at_atom_start = true;
      ++i;
      continue;
    }
    if (c >= 0x80) {
      if (!allow_utf8) return Invalid("non-ASCII local part");
      const size_t length = Utf8NonAsciiLength(s, i);
      if (length == 0) return Invalid("malformed UTF-8 in local part");
      i += length;
    } else if (IsAtext(c)) {
      ++i;
    } else {
      return Invalid("invalid character in local part");
    }
    at_atom_start = false;
  }
  if (at_atom_start) return Invalid("local part ends with a dot");
  return absl::OkStatus();
}

// RFC 5321 §4.1.2 Quoted-string = DQUOTE *QcontentSMTP DQUOTE, QcontentSMTP = qtextSMTP /
// quoted-pairSMTP ("\" %d32-126); RFC 6531 §3.3 adds UTF8-non-ascii to qtextSMTP. `text` starts
// with the opening quote; sets `end` just past the closing one and `unquoted` to the content.
absl::Status ParseQuotedLocalPart(std::string_view text, bool allow_utf8, size_t& end,
                                  std::string& unquoted) {
  for (size_t i = 1; i < text.size();) {
    const unsigned char c = text[i];
    if (c == '"') {
      end = i + 1;
      return absl::OkStatus();
    }
    if (c == '\\') {
      if (i + 1 >= text.size()) break;
      const unsigned char escaped = text[i + 1];
      if (escaped < 32 || escaped > 126) return Invalid("invalid quoted pair in local part");
      unquoted.push_back(static_cast<char>(escaped));
      i += 2;
    } else if (c >= 0x80) {
      if (!allow_utf8) return Invalid("non-ASCII local part");
      const size_t length = Utf8NonAsciiLength(text, i);
      if (length == 0) return Invalid("malformed UTF-8 in local part");
      unquoted.append(text.substr(i, length));
      i += length;
    } else if (c >= 32 && c <= 126) {
      unquoted.push_back(static_cast<char>(c));
      ++i;
    } else {
      return Invalid("invalid character in quoted local part");
    }
  }
  return Invalid("unterminated quoted local part");
}

bool IsIpv4Literal(std::string_view s) {
  if (s.empty() || s.size() > 15) return false;
  for (char c : s) {
    if (!IsAsciiDigit(c) && c != '.') return false;
  }
  const std::string copy(s);  // inet_pton wants a NUL-terminated string
  in_addr address;
  return inet_pton(AF_INET, copy.c_str(), &address) == 1;
}

bool IsIpv6Literal(std::string_view s) {
  if (s.empty() || s.size() > 45) return false;
  for (char c : s) {
    const bool hex = IsAsciiDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
    if (!hex && c != ':' && c != '.') return false;
  }
  const std::string copy(s);
  in6_addr address;
  return inet_pton(AF_INET6, copy.c_str(), &address) == 1;
}

// RFC 5321 §4.1.3: IPv4-address-literal, IPv6-address-literal ("IPv6:" prefix, an ABNF string
// and so case-insensitive), and General-address-literal, of which only the IPv6 tag is known.
absl::Status CheckAddressLiteral(std::string_view literal) {
  if (literal.size() < 2 || literal.back() != ']') return Invalid("unterminated address literal");
  const std::string_view inner = literal.substr(1, literal.size() - 2);
  const size_t colon = inner.find(':');
  if (colon == std::string_view::npos) {
    if (!IsIpv4Literal(inner)) return Invalid("invalid IPv4 address literal");
    return absl::OkStatus();
  }
  if (!EqualsIgnoreCase(inner.substr(0, colon), "IPv6")) {
    return Invalid("unsupported address literal");
  }
  if (!IsIpv6Literal(inner.substr(colon + 1))) return Invalid("invalid IPv6 address literal");
  return absl::OkStatus();
}

// RFC 5321 §4.1.2 Domain = sub-domain *("." sub-domain), sub-domain = Let-dig [Ldh-str];
// RFC 1035 §2.3.4 limits a label to 63 octets; RFC 6531 §3.3 admits U-labels.
absl::Status CheckDomain(std::string_view domain, bool allow_utf8) {
  if (domain.empty()) return Invalid("empty domain");
  if (domain.size() > kMaxDomainOctets) return Invalid("domain longer than 255 octets");
  if (domain.front() == '[') return CheckAddressLiteral(domain);
  size_t label_start = 0;
  for (size_t i = 0;;) {
    if (i == domain.size() || domain[i] == '.') {
      const std::string_view label = domain.substr(label_start, i - label_start);
      if (label.empty()) return Invalid("empty label in domain");
      if (label.size() > 63) return Invalid("domain label longer than 63 octets");
      if (label.front() == '-' || label.back() == '-') {
        return Invalid("domain label starts or ends with a hyphen");
      }
      if (i == domain.size()) break;
      label_start = ++i;
      continue;
    }
    const unsigned char c = domain[i];
    if (c >= 0x80) {
      if (!allow_utf8) return Invalid("non-ASCII domain");
      // A '.' octet never occurs inside a well-formed UTF-8 sequence, so labels split cleanly.
      const size_t length = Utf8NonAsciiLength(domain, i);
      if (length == 0) return Invalid("malformed UTF-8 in domain");
      i += length;
    } else if (IsAsciiAlpha(c) || IsAsciiDigit(c) || c == '-') {
      ++i;
    } else {
      return Invalid("invalid character in domain");
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// RFC 5322 §3.4 address lists. The value is first cut into tokens with comments and folding
// white space dropped (CFWS may appear between any two tokens, RFC 5322 §3.2.2 and the obs-
// forms of §4.4), then the tokens are read by a small recursive-descent parser.

enum class TokenKind { kAtom, kQuotedString, kDomainLiteral, kSpecial };

struct Token {
  TokenKind kind;
  std::string text;  // atom as written, quoted-string unquoted, literal with its brackets
  char special = 0;  // for kSpecial: one of < > @ , : ; .
};

// The length of the fold (CRLF followed by WSP, RFC 5322 §3.2.2) at `v[i]`, or of a final
// CRLF that ends the value; 0 when the CR or LF there is bare.
size_t FoldLength(std::string_view v, size_t i) {
  if (v[i] != '\r' || i + 1 >= v.size() || v[i + 1] != '\n') return 0;
  if (i + 2 == v.size() || IsWsp(v[i + 2])) return 2;
  return 0;
}

// RFC 5322 §3.2.2: comments nest and hold quoted-pairs. `i` is at the '('.
absl::Status SkipComment(std::string_view v, size_t& i) {
  int depth = 0;
  do {
    const char c = v[i];
    if (c == '(') {
      ++depth;
      ++i;
    } else if (c == ')') {
      --depth;
      ++i;
    } else if (c == '\\') {
      if (i + 1 >= v.size()) break;
      i += 2;
    } else if (c == '\r' || c == '\n') {
      const size_t fold = FoldLength(v, i);
      if (fold == 0) return Invalid("bare CR or LF in comment");
      i += fold;
    } else {
      ++i;
    }
  } while (depth > 0 && i < v.size());
  if (depth > 0) return Invalid("unterminated comment");
  return absl::OkStatus();
}

// RFC 5322 §3.2.4 quoted-string, RFC 6532 §3.2 UTF-8 in qtext. `i` is at the opening quote.
absl::Status ReadQuotedString(std::string_view v, size_t& i, std::string& out) {
  for (++i; i < v.size();) {
    const unsigned char c = v[i];
    if (c == '"') {
      ++i;
      return absl::OkStatus();
    }
    if (c == '\\') {
      // quoted-pair = "\" (VCHAR / WSP), obs-qp admits any other ASCII octet.
      if (i + 1 >= v.size()) break;
      const unsigned char escaped = v[i + 1];
      if (escaped >= 0x80) {
        const size_t length = Utf8NonAsciiLength(v, i + 1);
        if (length == 0) return Invalid("malformed UTF-8 in quoted string");
        out.append(v.substr(i + 1, length));
        i += 1 + length;
        continue;
      }
      if (escaped == '\r' || escaped == '\n' || escaped == 0) {
        return Invalid("invalid quoted pair in quoted string");
      }
      out.push_back(static_cast<char>(escaped));
      i += 2;
    } else if (c == '\r' || c == '\n') {
      const size_t fold = FoldLength(v, i);
      if (fold == 0) return Invalid("bare CR or LF in quoted string");
      i += fold;  // unfolding drops the CRLF and keeps the WSP (RFC 5322 §3.2.4)
    } else if (c >= 0x80) {
      const size_t length = Utf8NonAsciiLength(v, i);
      if (length == 0) return Invalid("malformed UTF-8 in quoted string");
      out.append(v.substr(i, length));
      i += length;
    } else if (c == 0) {
      return Invalid("NUL in quoted string");
    } else {
      out.push_back(static_cast<char>(c));
      ++i;
    }
  }
  return Invalid("unterminated quoted string");
}

// RFC 5322 §3.4.1 domain-literal = "[" *([FWS] dtext) [FWS] "]", FWS removed.
absl::Status ReadDomainLiteral(std::string_view v, size_t& i, std::string& out) {
  out = "[";
  for (++i; i < v.size();) {
    const unsigned char c = v[i];
    if (c == ']') {
      out += ']';
      ++i;
      return absl::OkStatus();
    }
    if (IsWsp(c)) {
      ++i;
    } else if (c == '\r' || c == '\n') {
      const size_t fold = FoldLength(v, i);
      if (fold == 0) return Invalid("bare CR or LF in domain literal");
      i += fold;
    } else if (c >= 33 && c <= 126 && c != '[' && c != '\\') {
      out.push_back(static_cast<char>(c));
      ++i;
    } else {
      return Invalid("invalid character in domain literal");
    }
  }
  return Invalid("unterminated domain literal");
}

absl::StatusOr<std::vector<Token>> Tokenize(std::string_view v) {
  std::vector<Token> tokens;
  for (size_t i = 0; i < v.size();) {
    const unsigned char c = v[i];
    if (IsWsp(c)) {
      ++i;
    } else if (c == '\r' || c == '\n') {
      const size_t fold = FoldLength(v, i);
      if (fold == 0) return Invalid("bare CR or LF in address list");
      i += fold;
    } else if (c == '(') {
      FACTEUR_RETURN_IF_ERROR(SkipComment(v, i));
    } else if (c == '"') {
      Token token{TokenKind::kQuotedString, {}};
      FACTEUR_RETURN_IF_ERROR(ReadQuotedString(v, i, token.text));
      tokens.push_back(std::move(token));
    } else if (c == '[') {
      Token token{TokenKind::kDomainLiteral, {}};
      FACTEUR_RETURN_IF_ERROR(ReadDomainLiteral(v, i, token.text));
      tokens.push_back(std::move(token));
    } else if (c == '<' || c == '>' || c == '@' || c == ',' || c == ':' || c == ';' || c == '.') {
      tokens.push_back(Token{TokenKind::kSpecial, std::string(1, static_cast<char>(c)),
                             static_cast<char>(c)});
      ++i;
    } else if (IsAtext(c) || c >= 0x80) {
      const size_t start = i;
      while (i < v.size()) {
        const unsigned char a = v[i];
        if (IsAtext(a)) {
          ++i;
        } else if (a >= 0x80) {
          const size_t length = Utf8NonAsciiLength(v, i);
          if (length == 0) return Invalid("malformed UTF-8 in address list");
          i += length;
        } else {
          break;
        }
      }
      tokens.push_back(Token{TokenKind::kAtom, std::string(v.substr(start, i - start))});
    } else {
      return Invalid("unexpected character in address list");
    }
  }
  return tokens;
}

class AddressListParser {
 public:
  explicit AddressListParser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  // address-list, with the empty elements of obs-addr-list (RFC 5322 §4.4).
  absl::Status ParseList(std::vector<Mailbox>& out) {
    while (true) {
      while (AtSpecial(',')) ++pos_;
      if (AtEnd()) return absl::OkStatus();
      FACTEUR_RETURN_IF_ERROR(ParseAddress(out, /*in_group=*/false));
      if (AtEnd()) return absl::OkStatus();
      if (!AtSpecial(',')) return Invalid("expected a comma between addresses");
    }
  }

 private:
  bool AtEnd() const { return pos_ >= tokens_.size(); }
  bool AtSpecial(char c) const {
    return !AtEnd() && tokens_[pos_].kind == TokenKind::kSpecial && tokens_[pos_].special == c;
  }
  bool AtWord() const {
    return !AtEnd() && (tokens_[pos_].kind == TokenKind::kAtom ||
                        tokens_[pos_].kind == TokenKind::kQuotedString);
  }

  // address = mailbox / group; mailbox = name-addr / addr-spec (RFC 5322 §3.4).
  absl::Status ParseAddress(std::vector<Mailbox>& out, bool in_group) {
    const size_t phrase_start = pos_;
    // A phrase (obs-phrase admits "."), or the local part of a bare addr-spec.
    while (AtWord() || AtSpecial('.')) ++pos_;
    const size_t phrase_end = pos_;
    const bool has_phrase = phrase_end > phrase_start;
    const bool phrase_ok = has_phrase && tokens_[phrase_start].kind != TokenKind::kSpecial;
    if (AtSpecial('<')) {
      if (has_phrase && !phrase_ok) return Invalid("display name starts with a dot");
      ++pos_;
      return ParseAngleAddr(out);
    }
    if (AtSpecial(':')) {
      if (in_group) return Invalid("group inside a group");
      if (!phrase_ok) return Invalid("group without a display name");
      ++pos_;
      return ParseGroupList(out);
    }
    if (AtSpecial('@')) {
      Mailbox mailbox;
      FACTEUR_RETURN_IF_ERROR(LocalPartFrom(phrase_start, phrase_end, mailbox.local_part));
      ++pos_;
      FACTEUR_RETURN_IF_ERROR(ParseDomain(mailbox.domain));
      out.push_back(std::move(mailbox));
      return absl::OkStatus();
    }
    return Invalid("expected an address");
  }

  // group-list after "display-name :", up to and including ";" (RFC 5322 §3.4, obs-group-list).
  absl::Status ParseGroupList(std::vector<Mailbox>& out) {
    while (true) {
      while (AtSpecial(',')) ++pos_;
      if (AtSpecial(';')) {
        ++pos_;
        return absl::OkStatus();
      }
      if (AtEnd()) return Invalid("group not closed by ';'");
      FACTEUR_RETURN_IF_ERROR(ParseAddress(out, /*in_group=*/true));
      if (!AtSpecial(',') && !AtSpecial(';')) return Invalid("expected ',' or ';' in group");
    }
  }

  // angle-addr after "<": [obs-route] addr-spec ">" (RFC 5322 §3.4, §4.4).
  absl::Status ParseAngleAddr(std::vector<Mailbox>& out) {
    if (AtSpecial('@')) {
      // obs-route = obs-domain-list ":"; the route is dropped.
      while (!AtEnd() && !AtSpecial(':')) {
        if (AtSpecial('<') || AtSpecial('>') || AtSpecial(';')) return Invalid("malformed route");
        ++pos_;
      }
      if (AtEnd()) return Invalid("malformed route");
      ++pos_;
    }
    const size_t local_start = pos_;
    while (AtWord() || AtSpecial('.')) ++pos_;
    if (!AtSpecial('@')) return Invalid("expected '@' in angle address");
    Mailbox mailbox;
    FACTEUR_RETURN_IF_ERROR(LocalPartFrom(local_start, pos_, mailbox.local_part));
    ++pos_;
    FACTEUR_RETURN_IF_ERROR(ParseDomain(mailbox.domain));
    if (!AtSpecial('>')) return Invalid("expected '>' after address");
    ++pos_;
    out.push_back(std::move(mailbox));
    return absl::OkStatus();
  }

  // local-part = dot-atom / quoted-string / obs-local-part (word *("." word)), RFC 5322 §3.4.1
  // and §4.4; the semantic value joins the words with dots.
  absl::Status LocalPartFrom(size_t begin, size_t end, std::string& local_part) {
    if (begin == end) return Invalid("empty local part");
    for (size_t i = begin; i < end; ++i) {
      const bool want_word = (i - begin) % 2 == 0;
      const bool is_word = tokens_[i].kind != TokenKind::kSpecial;
      if (want_word != is_word) return Invalid("malformed local part");
      local_part += want_word ? tokens_[i].text : ".";
    }
    if ((end - begin) % 2 == 0) return Invalid("local part ends with a dot");
    return absl::OkStatus();
  }

  // domain = dot-atom / domain-literal / obs-domain (atom *("." atom)).
  absl::Status ParseDomain(std::string& domain) {
    if (!AtEnd() && tokens_[pos_].kind == TokenKind::kDomainLiteral) {
      domain = tokens_[pos_++].text;
      return absl::OkStatus();
    }
    while (true) {
      if (AtEnd() || tokens_[pos_].kind != TokenKind::kAtom) return Invalid("malformed domain");
      domain += tokens_[pos_++].text;
      if (!AtSpecial('.')) return absl::OkStatus();
      domain += '.';
      ++pos_;
    }
  }

  std::vector<Token> tokens_;
  size_t pos_ = 0;
};

}  // namespace

std::string Mailbox::ToString() const {
  std::string out;
  if (CheckDotString(local_part, /*allow_utf8=*/true).ok()) {
    out = local_part;
  } else {
    // RFC 5321 §4.1.2: a local part that is not a Dot-string goes as a Quoted-string, with
    // '"' and '\' as quoted-pairs.
    out.reserve(local_part.size() + 2);
    out += '"';
    for (char c : local_part) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  // Only <Postmaster> (RFC 5321 §4.5.1) has no domain.
  if (!domain.empty()) {
    out += '@';
    out += domain;
  }
  return out;
}

bool Mailbox::NeedsSmtpUtf8() const { return HasNonAscii(local_part) || HasNonAscii(domain); }

std::string Mailbox::Canonical() const {
  std::string out = LowerAscii(local_part);
  if (!domain.empty()) {
    out += '@';
    out += LowerAscii(domain);
  }
  return out;
}

absl::StatusOr<Mailbox> ParseMailbox(std::string_view text, bool allow_utf8) {
  // RFC 5321 §4.5.3.1.3: the path, with its angle brackets, is at most 256 octets.
  if (text.size() + 2 > kMaxPathOctets) return Invalid("address longer than 254 octets");
  Mailbox mailbox;
  size_t at = 0;
  if (!text.empty() && text.front() == '"') {
    FACTEUR_RETURN_IF_ERROR(ParseQuotedLocalPart(text, allow_utf8, at, mailbox.local_part));
    if (at == text.size()) return Invalid("missing '@' and domain");
    if (text[at] != '@') return Invalid("unexpected text after quoted local part");
  } else {
    at = text.find('@');
    if (at == std::string_view::npos) return Invalid("missing '@' and domain");
    FACTEUR_RETURN_IF_ERROR(CheckDotString(text.substr(0, at), allow_utf8));
    mailbox.local_part = std::string(text.substr(0, at));
  }
  // RFC 5321 §4.5.3.1.1: the local part, as written, is at most 64 octets.
  if (at > kMaxLocalPartOctets) return Invalid("local part longer than 64 octets");
  const std::string_view domain = text.substr(at + 1);
  FACTEUR_RETURN_IF_ERROR(CheckDomain(domain, allow_utf8));
  mailbox.domain = std::string(domain);
  return mailbox;
}

absl::StatusOr<std::string> AsciiDomain(std::string_view domain) {
  if (!HasNonAscii(domain)) return LowerAscii(domain);
  const std::string input(domain);  // libidn2 wants it NUL-terminated
  char* output = nullptr;
  // Nontransitional: "ß" and "ς" stay themselves, as IDNA2008 and every registry now have them.
  const int rc = idn2_to_ascii_8z(input.c_str(), &output, IDN2_NFC_INPUT | IDN2_NONTRANSITIONAL);
  if (rc != IDN2_OK) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a valid internationalised domain name \"", ToAbsl(domain), "\": ",
                     idn2_strerror(rc)));
  }
  std::string ascii = LowerAscii(output);
  idn2_free(output);
  // UTS #46 maps some characters to ASCII no host name holds ("℀" to "a/c", a full-width dot
  // to a trailing or doubled one): what comes out must be an RFC 5321 Domain.
  if (!IsValidDomain(ascii, /*allow_utf8=*/false) || ascii.front() == '[') {
    return absl::InvalidArgumentError(
        absl::StrCat("not a valid internationalised domain name \"", ToAbsl(domain), "\""));
  }
  return ascii;
}

std::string DomainKey(std::string_view domain) {
  absl::StatusOr<std::string> ascii = AsciiDomain(domain);
  return ascii.ok() ? *std::move(ascii) : LowerAscii(domain);
}

bool IsValidDomain(std::string_view domain, bool allow_utf8) {
  return CheckDomain(domain, allow_utf8).ok();
}

absl::StatusOr<std::vector<Mailbox>> ParseAddressList(std::string_view header_value) {
  FACTEUR_ASSIGN_OR_RETURN(std::vector<Token> tokens, Tokenize(header_value));
  AddressListParser parser(std::move(tokens));
  std::vector<Mailbox> mailboxes;
  FACTEUR_RETURN_IF_ERROR(parser.ParseList(mailboxes));
  if (mailboxes.empty()) return Invalid("no mailbox in address list");
  return mailboxes;
}

bool NamesNoMailbox(std::string_view header_value) {
  absl::StatusOr<std::vector<Token>> tokens = Tokenize(header_value);
  if (!tokens.ok()) return false;
  AddressListParser parser(*std::move(tokens));
  std::vector<Mailbox> mailboxes;
  return parser.ParseList(mailboxes).ok() && mailboxes.empty();
}

}  // namespace facteur::mail
