// File: engine/mail/reply.h
// An SMTP reply: code, enhanced status code (RFC 3463, RFC 2034) and text, and its wire form.
// Thread contract: value types.
#pragma once

#include <string>
#include <string_view>
#include <variant>

namespace facteur::mail {

struct Reply {
  int code = 0;           // 250, 354, 452, ...
  std::string enhanced;   // "2.1.0"; empty when the reply carries none (220 greeting, 354)
  std::string text;       // human text; '\n' separates the lines of a multiline reply

  // "250-first\r\n250 2.1.0 last\r\n": every line carries the code; with `enhanced` set and
  // `with_enhanced` true (the client said EHLO and we announce ENHANCEDSTATUSCODES), every line
  // carries the enhanced code too (RFC 2034 §3).
  std::string Format(bool with_enhanced = true) const;

  bool IsPositive() const { return code >= 200 && code < 400; }
  bool IsTransient() const { return code >= 400 && code < 500; }
  bool IsPermanent() const { return code >= 500; }
};

// A parser's result: the value, or the reply that refuses the input.
template <typename T>
using ReplyOr = std::variant<T, Reply>;

template <typename T>
const Reply* RefusalOf(const ReplyOr<T>& r) { return std::get_if<Reply>(&r); }

}  // namespace facteur::mail
