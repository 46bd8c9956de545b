// Fuzz target: a message through the DKIM canonicalisers (RFC 6376 §3.4). The input is split
// into a header section (mail::ParseHeaderSection) and a body, as the signer does. Invariants:
// no crash; the relaxed body has CRLF line ends only after its lines, no SP/HTAB run, no white
// space before a CRLF, no empty line at the end, and is a fixed point (canonicalising it again
// changes nothing); the simple body ends in CRLF without an empty last line (unless it is just
// CRLF); each relaxed header field is "name:value" on one line, name lower case, no white space
// around the colon or at the end, and canonicalising it again changes nothing.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "engine/dkim/canonicalize.h"
#include "engine/mail/header.h"

namespace {

using facteur::dkim::Canonicalization;

void Check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
  }
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

void CheckRelaxedBody(const std::string& out) {
  Check(out.empty() || EndsWith(out, "\r\n"), "relaxed body ends in CRLF");
  Check(!EndsWith(out, "\r\n\r\n") && out != "\r\n", "relaxed body has no empty last line");
  Check(out.find("  ") == std::string::npos, "relaxed body has no double space");
  Check(out.find('\t') == std::string::npos, "relaxed body has no tab");
  Check(out.find(" \r\n") == std::string::npos, "relaxed body has no space before CRLF");
  Check(facteur::dkim::CanonicalBody(Canonicalization::kRelaxed, out) == out,
        "relaxed body is a fixed point");
}

void CheckSimpleBody(const std::string& out) {
  Check(EndsWith(out, "\r\n"), "simple body ends in CRLF");
  Check(out == "\r\n" || !EndsWith(out, "\r\n\r\n"), "simple body has no empty last line");
  Check(facteur::dkim::CanonicalBody(Canonicalization::kSimple, out) == out,
        "simple body is a fixed point");
}

void CheckRelaxedHeader(std::string_view raw, const std::string& out) {
  Check(EndsWith(out, "\r\n"), "relaxed header ends in CRLF");
  std::string_view line(out.data(), out.size() - 2);
  Check(line.find("\r\n") == std::string_view::npos, "relaxed header is one line");
  Check(line.find("  ") == std::string_view::npos, "relaxed header has no double space");
  Check(line.find('\t') == std::string_view::npos, "relaxed header has no tab");
  Check(line.empty() || line.back() != ' ', "relaxed header has no trailing space");
  size_t colon = line.find(':');
  if (colon != std::string_view::npos) {
    for (char c : line.substr(0, colon)) Check(!(c >= 'A' && c <= 'Z'), "name is lower case");
    Check(colon == 0 || line[colon - 1] != ' ', "no space before the colon");
    Check(colon + 1 >= line.size() || line[colon + 1] != ' ', "no space after the colon");
  }
  Check(facteur::dkim::CanonicalHeader(Canonicalization::kRelaxed, out) == out,
        "relaxed header is a fixed point");
  Check(facteur::dkim::CanonicalHeader(Canonicalization::kSimple, raw, false).size() <=
            raw.size(),
        "simple header is the field");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view message(reinterpret_cast<const char*>(data), size);
  const facteur::mail::HeaderSection section = facteur::mail::ParseHeaderSection(message);
  for (const facteur::mail::HeaderField& field : section.fields) {
    CheckRelaxedHeader(field.raw,
                       facteur::dkim::CanonicalHeader(Canonicalization::kRelaxed, field.raw));
  }
  const std::string_view body = message.substr(section.body_offset);
  CheckRelaxedBody(facteur::dkim::CanonicalBody(Canonicalization::kRelaxed, body));
  CheckSimpleBody(facteur::dkim::CanonicalBody(Canonicalization::kSimple, body));
  // The whole input as a body too: bytes the header parser would have taken.
  CheckRelaxedBody(facteur::dkim::CanonicalBody(Canonicalization::kRelaxed, message));
  return 0;
}
