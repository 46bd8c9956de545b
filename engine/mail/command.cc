#include "engine/mail/command.h"

#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/mail/text.h"

namespace facteur::mail {
namespace {

struct VerbName {
  std::string_view name;
  Verb verb;
};

constexpr VerbName kVerbs[] = {
    {"EHLO", Verb::kEhlo}, {"HELO", Verb::kHelo}, {"MAIL", Verb::kMail},
    {"RCPT", Verb::kRcpt}, {"DATA", Verb::kData}, {"BDAT", Verb::kBdat},
    {"RSET", Verb::kRset}, {"NOOP", Verb::kNoop}, {"QUIT", Verb::kQuit},
    {"VRFY", Verb::kVrfy}, {"EXPN", Verb::kExpn}, {"HELP", Verb::kHelp},
    {"STARTTLS", Verb::kStartTls}, {"AUTH", Verb::kAuth},
};

Reply MakeReply(int code, std::string_view enhanced, std::string text) {
  return Reply{code, std::string(enhanced), std::move(text)};
}

Reply SyntaxError(std::string text) { return MakeReply(501, "5.5.4", std::move(text)); }

// Client text echoed in a reply: printable ASCII only and short, so that a stray LF or control
// octet can never split or corrupt the reply line (RFC 5321 §4.2: textstring is %d9/32-126).
std::string Echo(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, 64)) {
    out += (c >= 32 && c <= 126) ? c : '?';
  }
  return out;
}

// "FROM:<path> params" after the keyword: the path inside its brackets and the parameters.
struct PathAndParameters {
  std::string_view path_with_brackets;
  std::string_view path;
  std::string_view parameters;
};

// RFC 5321 §4.1.1.2: "MAIL FROM:" Reverse-path [SP Mail-parameters]. Spaces between the colon
// and '<' are tolerated (clients send them; Postfix accepts them). nullopt: no bracketed path.
std::optional<PathAndParameters> SplitPath(std::string_view rest) {
  while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
  if (rest.empty() || rest.front() != '<') return std::nullopt;
  // The closing '>' is the first one outside a quoted local part, which may hold '>' and ' '.
  bool in_quotes = false;
  size_t close = std::string_view::npos;
  for (size_t i = 1; i < rest.size(); ++i) {
    const char c = rest[i];
    if (in_quotes && c == '\\') {
      ++i;
    } else if (c == '"') {
      in_quotes = !in_quotes;
    } else if (!in_quotes && c == '>') {
      close = i;
      break;
    }
  }
  if (close == std::string_view::npos) return std::nullopt;
  std::string_view parameters = rest.substr(close + 1);
  if (!parameters.empty() && parameters.front() != ' ') return std::nullopt;
  while (!parameters.empty() && parameters.front() == ' ') parameters.remove_prefix(1);
  while (!parameters.empty() && IsWsp(parameters.back())) parameters.remove_suffix(1);
  return PathAndParameters{rest.substr(0, close + 1), rest.substr(1, close - 1), parameters};
}

struct Parameter {
  std::string keyword;  // upper case
  std::string_view keyword_text;
  std::optional<std::string_view> value;
};

// RFC 5321 §4.1.2: esmtp-param = esmtp-keyword ["=" esmtp-value], esmtp-keyword =
// (ALPHA / DIGIT) *(ALPHA / DIGIT / "-"), esmtp-value = 1*(%d33-60 / %d62-126), with
// UTF8-non-ascii admitted by RFC 6531 §3.3. Parameters are separated by one or more spaces.
ReplyOr<std::vector<Parameter>> ParseParameters(std::string_view text) {
  std::vector<Parameter> parameters;
  while (!text.empty()) {
    const size_t space = text.find(' ');
    const std::string_view item = text.substr(0, space);
    text = space == std::string_view::npos ? std::string_view() : text.substr(space + 1);
    if (item.empty()) continue;
    const size_t equals = item.find('=');
    Parameter parameter;
    parameter.keyword_text = item.substr(0, equals);
    const std::string_view keyword = parameter.keyword_text;
    bool keyword_ok = !keyword.empty() && (IsAsciiAlpha(keyword[0]) || IsAsciiDigit(keyword[0]));
    for (char c : keyword) keyword_ok &= IsAsciiAlpha(c) || IsAsciiDigit(c) || c == '-';
    if (!keyword_ok) return SyntaxError("Malformed parameter " + Echo(item));
    parameter.keyword = UpperAscii(keyword);
    if (equals != std::string_view::npos) {
      const std::string_view value = item.substr(equals + 1);
      bool value_ok = !value.empty();
      for (char c : value) {
        const unsigned char u = c;
        value_ok &= (u >= 33 && u <= 126 && u != '=') || u >= 0x80;
      }
      if (!value_ok) return SyntaxError("Malformed value for parameter " + std::string(keyword));
      parameter.value = value;
    }
    for (const Parameter& seen : parameters) {
      if (seen.keyword == parameter.keyword) {
        return SyntaxError("Duplicate parameter " + std::string(keyword));
      }
    }
    parameters.push_back(std::move(parameter));
  }
  return parameters;
}

// RFC 3461 §4: xtext = *( xchar / hexchar ), xchar = %d33-42 / %d44-60 / %d62-126,
// hexchar = "+" 2(%x30-39 / %x41-46).
bool IsXtext(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = s[i];
    if (c == '+') {
      if (s.size() - i < 3) return false;
      for (size_t k = 1; k <= 2; ++k) {
        const char h = s[i + k];
        if (!IsAsciiDigit(h) && !(h >= 'A' && h <= 'F')) return false;
      }
      i += 3;
    } else if (c >= 33 && c <= 126 && c != '=') {
      ++i;
    } else {
      return false;
    }
  }
  return true;
}

Reply UnsupportedParameter(const Parameter& parameter) {
  // RFC 5321 §4.1.1.11: an unrecognised parameter is 555.
  return MakeReply(555, "5.5.4", "Unsupported parameter " + std::string(parameter.keyword_text));
}

Reply ValueRequired(const Parameter& parameter) {
  return SyntaxError("Parameter " + parameter.keyword + " requires a value");
}

// RFC 5321 §4.1.2 At-domain list "@a,@b:" before the mailbox (obsolete source route, accepted
// and ignored per Appendix C). nullopt when the route is malformed.
std::optional<std::string_view> DropSourceRoute(std::string_view path, bool allow_utf8) {
  if (path.empty() || path.front() != '@') return path;
  const size_t colon = path.find(':');
  if (colon == std::string_view::npos) return std::nullopt;
  std::string_view route = path.substr(0, colon);
  while (true) {
    const size_t comma = route.find(',');
    const std::string_view hop = route.substr(0, comma);
    if (hop.size() < 2 || hop.front() != '@' || hop[1] == '[' ||
        !IsValidDomain(hop.substr(1), allow_utf8)) {
      return std::nullopt;
    }
    if (comma == std::string_view::npos) break;
    route.remove_prefix(comma + 1);
  }
  return path.substr(colon + 1);
}

enum class PathRole { kSender, kRecipient };

// Validates the mailbox of a path (source route dropped). `utf8` is whether SMTPUTF8 applies.
ReplyOr<Mailbox> ParsePathMailbox(const PathAndParameters& split, bool utf8, PathRole role) {
  const bool sender = role == PathRole::kSender;
  const std::string_view enhanced = sender ? "5.1.7" : "5.1.3";
  const std::string who = sender ? "Sender" : "Recipient";
  // RFC 5321 §4.5.3.1.3: a path is at most 256 octets with its punctuation.
  if (split.path_with_brackets.size() > kMaxPathOctets) {
    return MakeReply(501, enhanced, who + " address is too long");
  }
  const std::optional<std::string_view> mailbox_text = DropSourceRoute(split.path, utf8);
  if (!mailbox_text) return MakeReply(501, enhanced, who + " address has a malformed source route");
  // RFC 5321 §4.5.1: <Postmaster> without a domain must be accepted as a recipient.
  if (!sender && EqualsIgnoreCase(*mailbox_text, "Postmaster")) {
    return Mailbox{std::string(*mailbox_text), ""};
  }
  // RFC 6531 §3.5: a UTF-8 address without SMTPUTF8 is refused with 553 5.6.7.
  if (!utf8 && HasNonAscii(*mailbox_text)) {
    return MakeReply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
  }
  absl::StatusOr<Mailbox> mailbox = ParseMailbox(*mailbox_text, utf8);
  if (!mailbox.ok()) {
    std::string reason(mailbox.status().message());
    return MakeReply(501, enhanced, who + " address is malformed: " + reason);
  }
  return *std::move(mailbox);
}

}  // namespace

Command ParseCommand(std::string_view line) {
  Command command;
  const size_t space = line.find(' ');
  command.verb_text = line.substr(0, space);
  if (space != std::string_view::npos) {
    std::string_view argument = line.substr(space);
    while (!argument.empty() && argument.front() == ' ') argument.remove_prefix(1);
    while (!argument.empty() && IsWsp(argument.back())) argument.remove_suffix(1);
    command.argument = argument;
  }
  for (const VerbName& verb : kVerbs) {
    if (EqualsIgnoreCase(command.verb_text, verb.name)) {
      command.verb = verb.verb;
      break;
    }
  }
  return command;
}

ReplyOr<MailFromArguments> ParseMailFrom(std::string_view argument) {
  if (!StartsWithIgnoreCase(argument, "FROM:")) return SyntaxError("Syntax: MAIL FROM:<address>");
  const std::optional<PathAndParameters> split = SplitPath(argument.substr(5));
  if (!split) return SyntaxError("Syntax: MAIL FROM:<address>");

  // Parameters first: SMTPUTF8 decides whether the address may hold UTF-8 (RFC 6531 §3.4).
  ReplyOr<std::vector<Parameter>> parameters = ParseParameters(split->parameters);
  if (const Reply* refusal = RefusalOf(parameters)) return *refusal;
  MailFromArguments args;
  for (const Parameter& parameter : std::get<std::vector<Parameter>>(parameters)) {
    const std::string& keyword = parameter.keyword;
    const std::string_view value = parameter.value.value_or(std::string_view());
    if (keyword == "SIZE") {
      // RFC 1870 §6: size-value = 1*20DIGIT. A value beyond 2^64-1 saturates: it is refused by
      // the size check that follows, as it should be.
      if (!parameter.value) return ValueRequired(parameter);
      bool digits = value.size() <= 20;
      for (char c : value) digits &= IsAsciiDigit(c);
      if (!digits) return SyntaxError("SIZE must be a number of 1 to 20 digits");
      uint64_t size = 0;
      for (char c : value) {
        const uint64_t digit = static_cast<uint64_t>(c - '0');
        if (size > (std::numeric_limits<uint64_t>::max() - digit) / 10) {
          size = std::numeric_limits<uint64_t>::max();
          break;
        }
        size = size * 10 + digit;
      }
      args.size = size;
    } else if (keyword == "BODY") {
      // RFC 6152 §2 (8BITMIME), RFC 3030 §3 (BINARYMIME).
      if (!parameter.value) return ValueRequired(parameter);
      if (EqualsIgnoreCase(value, "7BIT")) {
        args.body = BodyType::k7Bit;
      } else if (EqualsIgnoreCase(value, "8BITMIME")) {
        args.body = BodyType::k8BitMime;
      } else if (EqualsIgnoreCase(value, "BINARYMIME")) {
        args.body = BodyType::kBinaryMime;
      } else {
        return SyntaxError("BODY must be 7BIT, 8BITMIME or BINARYMIME");
      }
    } else if (keyword == "SMTPUTF8") {
      // RFC 6531 §3.4: SMTPUTF8 takes no value.
      if (parameter.value) return SyntaxError("SMTPUTF8 takes no value");
      args.smtputf8 = true;
    } else if (keyword == "RET") {
      // RFC 3461 §4.3.
      if (!parameter.value) return ValueRequired(parameter);
      if (!EqualsIgnoreCase(value, "FULL") && !EqualsIgnoreCase(value, "HDRS")) {
        return SyntaxError("RET must be FULL or HDRS");
      }
      args.ret = UpperAscii(value);
    } else if (keyword == "ENVID") {
      // RFC 3461 §4.4: xtext of at most 100 characters.
      if (!parameter.value) return ValueRequired(parameter);
      if (value.size() > 100 || !IsXtext(value)) {
        return SyntaxError("ENVID must be xtext of at most 100 characters");
      }
      args.envid = std::string(value);
    } else if (keyword == "AUTH") {
      // RFC 4954 §5: AUTH=<> or AUTH=xtext; accepted and ignored, as we do not relay trust.
      if (!parameter.value) return ValueRequired(parameter);
      if (value != "<>" && !IsXtext(value)) return SyntaxError("AUTH must be <> or xtext");
    } else {
      return UnsupportedParameter(parameter);
    }
  }

  if (split->path.empty()) return args;  // the null reverse-path <> (RFC 5321 §4.5.5)
  ReplyOr<Mailbox> sender = ParsePathMailbox(*split, args.smtputf8, PathRole::kSender);
  if (const Reply* refusal = RefusalOf(sender)) return *refusal;
  args.sender = std::get<Mailbox>(std::move(sender));
  return args;
}

ReplyOr<RcptToArguments> ParseRcptTo(std::string_view argument, bool smtputf8) {
  if (!StartsWithIgnoreCase(argument, "TO:")) return SyntaxError("Syntax: RCPT TO:<address>");
  const std::optional<PathAndParameters> split = SplitPath(argument.substr(3));
  if (!split) return SyntaxError("Syntax: RCPT TO:<address>");

  ReplyOr<std::vector<Parameter>> parameters = ParseParameters(split->parameters);
  if (const Reply* refusal = RefusalOf(parameters)) return *refusal;
  RcptToArguments args;
  for (const Parameter& parameter : std::get<std::vector<Parameter>>(parameters)) {
    const std::string& keyword = parameter.keyword;
    const std::string_view value = parameter.value.value_or(std::string_view());
    if (keyword == "NOTIFY") {
      // RFC 3461 §4.1: "NEVER" alone, or a comma list of SUCCESS, FAILURE, DELAY.
      if (!parameter.value) return ValueRequired(parameter);
      const std::string upper = UpperAscii(value);
      bool ok = true;
      bool never = false;
      size_t items = 0;
      std::string_view rest = upper;
      while (ok) {
        const size_t comma = rest.find(',');
        const std::string_view item = rest.substr(0, comma);
        ++items;
        if (item == "NEVER") {
          never = true;
        } else {
          ok = item == "SUCCESS" || item == "FAILURE" || item == "DELAY";
        }
        if (comma == std::string_view::npos) break;
        rest.remove_prefix(comma + 1);
      }
      if (!ok || (never && items > 1)) {
        return SyntaxError("NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY");
      }
      args.notify = upper;
    } else if (keyword == "ORCPT") {
      // RFC 3461 §4.2: addr-type ";" xtext, at most 500 characters; addr-type is an atom.
      if (!parameter.value) return ValueRequired(parameter);
      const size_t semicolon = value.find(';');
      bool ok = value.size() <= 500 && semicolon != std::string_view::npos && semicolon > 0;
      if (ok) {
        for (char c : value.substr(0, semicolon)) ok &= IsAtext(c);
        ok &= IsXtext(value.substr(semicolon + 1));
      }
      if (!ok) return SyntaxError("ORCPT must be addr-type;xtext");
      args.orcpt = std::string(value);
    } else {
      return UnsupportedParameter(parameter);
    }
  }

  // RFC 5321 §4.1.1.3: the forward-path is never null.
  if (split->path.empty()) return MakeReply(501, "5.1.3", "Recipient address is empty");
  ReplyOr<Mailbox> recipient = ParsePathMailbox(*split, smtputf8, PathRole::kRecipient);
  if (const Reply* refusal = RefusalOf(recipient)) return *refusal;
  args.recipient = std::get<Mailbox>(std::move(recipient));
  return args;
}

namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

void AppendUtf8(std::string& out, uint32_t code_point) {
  if (code_point < 0x80) {
    out += static_cast<char>(code_point);
  } else if (code_point < 0x800) {
    out += static_cast<char>(0xC0 | (code_point >> 6));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  } else if (code_point < 0x10000) {
    out += static_cast<char>(0xE0 | (code_point >> 12));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (code_point >> 18));
    out += static_cast<char>(0x80 | ((code_point >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  }
}

// Decodes "+HH" always and, with `unicode_escapes`, "\x{HEX}" (1 to 6 digits, a Unicode scalar
// value); anything else, malformed escapes included, is kept as it is.
std::string DecodeEscapes(std::string_view text, bool unicode_escapes) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    if (text[i] == '+' && i + 2 < text.size() &&
        HexValue(text[i + 1]) >= 0 && HexValue(text[i + 2]) >= 0) {
      out += static_cast<char>(HexValue(text[i + 1]) * 16 + HexValue(text[i + 2]));
      i += 3;
      continue;
    }
    if (unicode_escapes && text.substr(i, 3) == "\\x{") {
      const size_t close = text.find('}', i + 3);
      const std::string_view digits =
          close == std::string_view::npos ? std::string_view() : text.substr(i + 3, close - i - 3);
      uint32_t code_point = 0;
      bool valid = !digits.empty() && digits.size() <= 6;
      for (char c : digits) {
        valid = valid && HexValue(c) >= 0;
        if (valid) code_point = code_point * 16 + static_cast<uint32_t>(HexValue(c));
      }
      valid = valid && code_point <= 0x10FFFF && !(code_point >= 0xD800 && code_point <= 0xDFFF);
      if (valid) {
        AppendUtf8(out, code_point);
        i = close + 1;
        continue;
      }
    }
    out += text[i++];
  }
  return out;
}

}  // namespace

std::string DecodeXtext(std::string_view xtext) {
  return DecodeEscapes(xtext, /*unicode_escapes=*/false);
}

std::string DecodeOrcpt(std::string_view orcpt) {
  const size_t semicolon = orcpt.find(';');
  if (semicolon == std::string_view::npos) return std::string(orcpt);
  const std::string_view type = orcpt.substr(0, semicolon);
  const bool utf8 = EqualsIgnoreCase(type, "utf-8");
  return std::string(type) + ";" +
         DecodeEscapes(orcpt.substr(semicolon + 1), /*unicode_escapes=*/utf8);
}

}  // namespace facteur::mail
