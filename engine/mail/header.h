// File: engine/mail/header.h
// The header section of an RFC 5322 message, read without copying: where it ends, which fields
// it has, a field's unfolded value; and the Date: format of RFC 5322 §3.3.
// Thread contract: pure functions. No I/O.
#pragma once

#include <cstddef>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"

namespace facteur::mail {

struct HeaderField {
  std::string_view name;   // as written, without the colon
  std::string_view raw;    // the whole field, name to the CRLF that ends its last line, included
};

struct HeaderSection {
  std::vector<HeaderField> fields;
  size_t body_offset = 0;  // offset of the body (after the empty line), or the message's size
};

// Reads the header section of `message` (CRLF line endings). Lines before the first empty line
// that are neither a field nor a continuation end the header section there, as RFC 5322 readers
// do. Views point into `message`.
HeaderSection ParseHeaderSection(std::string_view message);

// The first field named `name` (case-insensitive), if any.
std::optional<HeaderField> FindField(const HeaderSection& section, std::string_view name);

// Where fields added to `message` go: after its last header field. `needs_separator` when the
// message has no empty line after its header fields, so that what follows stays the body.
size_t HeaderInsertPosition(std::string_view message, const HeaderSection& section,
                            bool* needs_separator);

// Removes from `message` every field of `section` (read from `message`) whose name is one of
// `names` (case-insensitive). Returns whether any was removed: `section` then points at
// moved bytes and must be read again.
bool RemoveFields(std::string& message, const HeaderSection& section,
                  std::initializer_list<std::string_view> names);

// The value of `field` after the colon with folding removed (RFC 5322 §2.2.3): CRLFs before
// white space are dropped; leading and trailing white space trimmed.
std::string UnfoldedValue(const HeaderField& field);

// "Mon, 23 Nov 2026 15:53:00 +0000" (RFC 5322 §3.3) for `t` in `zone`.
std::string FormatRfc5322Date(absl::Time t, absl::TimeZone zone = absl::UTCTimeZone());

}  // namespace facteur::mail
