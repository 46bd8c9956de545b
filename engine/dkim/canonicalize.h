// File: engine/dkim/canonicalize.h
// DKIM canonicalisation (RFC 6376 §3.4): the "simple" and "relaxed" forms of a header field and
// of a message body, as the signer hashes them. Pure functions over bytes: no allocation beyond
// the output, no I/O. The body form is produced in pieces through a sink so that a 35 MiB body
// goes into the hash without a second copy.
// Input is what the SMTP server queues: lines end in CRLF. A lone CR or LF is ordinary content
// here (RFC 6376 §3.4.4 works on CRLF-terminated lines); the session refuses such messages
// before they get this far.
// Thread contract: pure functions, callable from any thread.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/functional/function_ref.h"

namespace facteur::dkim {

enum class Canonicalization { kSimple, kRelaxed };

// Appends the canonical form of one header field to `*out`. `field` is the whole field as it
// appears in the message: name, colon, value with its folding; a final CRLF may be present or
// not. The result always ends with CRLF when `with_crlf`; the DKIM-Signature field itself is
// hashed without it (RFC 6376 §3.7).
//   simple  (§3.4.1): the field unchanged.
//   relaxed (§3.4.2): name lower-cased; value unfolded (CRLFs removed), runs of SP/HTAB turned
//                     into one SP, white space at the ends of the value and around the colon
//                     removed.
void AppendCanonicalHeader(Canonicalization mode, std::string_view field, bool with_crlf,
                           std::string* out);
std::string CanonicalHeader(Canonicalization mode, std::string_view field, bool with_crlf = true);

// Canonicalises `body` (everything after the empty line that ends the header section) and feeds
// the result to `sink` in pieces, in order; their concatenation is the canonical body.
//   simple  (§3.4.3): trailing empty lines removed; an empty body becomes one CRLF.
//   relaxed (§3.4.4): white space at the end of each line removed, other runs of SP/HTAB turned
//                     into one SP, trailing empty lines removed; an empty body stays empty.
// Both: a last line without its CRLF gets one (§3.4.3, §3.4.4 and erratum 3192).
void CanonicalizeBody(Canonicalization mode, std::string_view body,
                      absl::FunctionRef<void(std::string_view)> sink);
std::string CanonicalBody(Canonicalization mode, std::string_view body);

}  // namespace facteur::dkim
