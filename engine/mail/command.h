// File: engine/mail/command.h
// The SMTP command codec of the server side: a command line split into verb and argument
// (RFC 5321 §4.1.1), and the arguments of MAIL and RCPT with their ESMTP parameters
// (SIZE RFC 1870, BODY RFC 6152/3030, SMTPUTF8 RFC 6531, RET/ENVID/NOTIFY/ORCPT RFC 3461,
// AUTH RFC 4954 §5). Refusals come back as the Reply to send.
// Thread contract: pure functions, value types. No I/O.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "engine/mail/address.h"
#include "engine/mail/reply.h"

namespace facteur::mail {

// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with its CRLF. Extensions lengthen
// MAIL and RCPT (RFC 1869 §4.1.2: 512 plus the longest value of each parameter offered): SIZE
// (RFC 1870), RET/ENVID and NOTIFY/ORCPT (RFC 3461: an ORCPT alone may take 500), AUTH= (RFC
// 4954 §5: 500); 2048 is Postfix's line_length_limit. The AUTH command keeps 512 (RFC 4954 §4:
// a client whose initial response would not fit sends it after the 334 instead); the lines
// of the exchange after a 334 may take 12288 octets (RFC 4954 §4), what Postfix allows.
inline constexpr size_t kMaxCommandLine = 512;
inline constexpr size_t kMaxMailRcptLine = 2048;
inline constexpr size_t kMaxAuthLine = 12288;
// RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets with its CRLF.
inline constexpr size_t kMaxTextLine = 1000;

enum class Verb {
  kEhlo, kHelo, kMail, kRcpt, kData, kBdat, kRset, kNoop, kQuit, kVrfy, kExpn, kHelp,
  kStartTls, kAuth, kUnknown,
};

struct Command {
  Verb verb = Verb::kUnknown;
  std::string_view verb_text;  // as the client wrote it
  std::string_view argument;   // everything after the verb and one or more spaces; may be empty
};

// Splits a command line (without its CRLF). Verbs are case-insensitive. "MAIL FROM:" and
// "RCPT TO:" keep "FROM:..."/"TO:..." in the argument. Never fails: unknown verbs are kUnknown.
// The views point into `line`.
Command ParseCommand(std::string_view line);

enum class BodyType { k7Bit, k8BitMime, kBinaryMime };

struct MailFromArguments {
  std::optional<Mailbox> sender;  // nullopt: the null reverse-path <>
  std::optional<uint64_t> size;   // SIZE=
  BodyType body = BodyType::k7Bit;
  bool smtputf8 = false;
  std::string ret;     // DSN RET=FULL|HDRS, upper case; empty when absent
  std::string envid;   // DSN ENVID= xtext as received
};

struct RcptToArguments {
  Mailbox recipient;
  std::string notify;  // DSN NOTIFY= as received, upper case; empty when absent
  std::string orcpt;   // DSN ORCPT= as received
};

// `argument` is what follows "MAIL" ("FROM:<a@b> SIZE=10"). Refusals:
//   501 5.5.4 when "FROM:" or the angle brackets are missing, or a parameter is malformed;
//   501 5.1.7 when the sender address is malformed;
//   555 5.5.4 for an unknown parameter (RFC 5321 §4.1.1.11);
//   553 5.6.7 for a UTF-8 address without SMTPUTF8 (RFC 6531 §3.5).
// Source routes (<@a,@b:x@y>) are accepted and dropped (RFC 5321 §4.1.2, Appendix C).
ReplyOr<MailFromArguments> ParseMailFrom(std::string_view argument);

// `argument` is what follows "RCPT" ("TO:<a@b> NOTIFY=NEVER"). `smtputf8` is true when the
// transaction's MAIL carried SMTPUTF8. Refusals as for ParseMailFrom, with 501 5.1.3 for a
// malformed recipient address. <Postmaster> without a domain is accepted with an empty domain.
ReplyOr<RcptToArguments> ParseRcptTo(std::string_view argument, bool smtputf8);

// DSN parameters are stored as received, xtext and all, to be passed on as they came; a DSN
// shows what they stand for (RFC 3464 §2.2.1, §2.3.1).
// ENVID: each "+HH" becomes its octet (RFC 3461 §4: xtext).
std::string DecodeXtext(std::string_view xtext);
// ORCPT ("rfc822;bob+2Bx@example.org"): its type, ";", then the address decoded; a utf-8
// type's "\x{HEX}" (RFC 6533 §3 utf-8-addr-xtext) becomes that character in UTF-8. Without a
// ";" as given.
std::string DecodeOrcpt(std::string_view orcpt);

}  // namespace facteur::mail
