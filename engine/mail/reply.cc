#include "engine/mail/reply.h"

#include <string>
#include <string_view>

namespace facteur::mail {

std::string Reply::Format(bool with_enhanced) const {
  // RFC 2034 §3: when enhanced codes are announced, every line of the reply carries one.
  const bool enhanced_prefix = with_enhanced && !enhanced.empty();
  const std::string code_text = std::to_string(code);
  std::string out;
  std::string_view rest = text;
  while (true) {
    const size_t newline = rest.find('\n');
    std::string_view line = rest.substr(0, newline);
    // A "\r\n" in the text must not end the line early on the wire: drop the CR.
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    const bool last = newline == std::string_view::npos;
    // RFC 5321 §4.2.1: "250-" on every line but the last, "250 " on the last.
    out += code_text;
    std::string body;
    if (enhanced_prefix) body = enhanced;
    if (!line.empty()) {
      if (!body.empty()) body += ' ';
      body.append(line);
    }
    if (!last) {
      out += '-';
      out += body;
    } else if (!body.empty()) {
      out += ' ';
      out += body;
    }
    out += "\r\n";
    if (last) break;
    rest.remove_prefix(newline + 1);
  }
  return out;
}

}  // namespace facteur::mail
