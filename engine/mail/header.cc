#include "engine/mail/header.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/time/time.h"
#include "engine/base/status.h"
#include "engine/mail/text.h"

namespace facteur::mail {
namespace {

// RFC 5322 §3.6.8: field-name = 1*ftext, ftext = %d33-57 / %d59-126. The obsolete form lets
// white space sit between the name and the colon (RFC 5322 §4.5.8, obs-optional). Returns the
// name's length, or 0 when `line` does not start a field.
size_t FieldNameLength(std::string_view line) {
  size_t i = 0;
  while (i < line.size()) {
    const unsigned char c = line[i];
    if (c < 33 || c > 126 || c == ':') break;
    ++i;
  }
  const size_t name_length = i;
  if (name_length == 0) return 0;
  while (i < line.size() && IsWsp(line[i])) ++i;
  return i < line.size() && line[i] == ':' ? name_length : 0;
}

}  // namespace

HeaderSection ParseHeaderSection(std::string_view message) {
  HeaderSection section;
  size_t pos = 0;
  while (pos < message.size()) {
    const size_t crlf = message.find("\r\n", pos);
    const size_t line_end = crlf == std::string_view::npos ? message.size() : crlf + 2;
    const std::string_view line = message.substr(pos, line_end - pos);
    if (crlf == pos) {
      // The empty line that separates the header section from the body (RFC 5322 §2.1).
      section.body_offset = line_end;
      return section;
    }
    if (IsWsp(line.front())) {
      // RFC 5322 §2.2.3: a line that starts with WSP continues the field above it.
      if (section.fields.empty()) break;
      HeaderField& field = section.fields.back();
      field.raw = std::string_view(field.raw.data(), field.raw.size() + line.size());
    } else {
      const size_t name_length = FieldNameLength(line);
      if (name_length == 0) break;
      section.fields.push_back(HeaderField{line.substr(0, name_length), line});
    }
    pos = line_end;
  }
  section.body_offset = pos;
  return section;
}

std::optional<HeaderField> FindField(const HeaderSection& section, std::string_view name) {
  for (const HeaderField& field : section.fields) {
    if (EqualsIgnoreCase(field.name, name)) return field;
  }
  return std::nullopt;
}

size_t HeaderInsertPosition(std::string_view message, const HeaderSection& section,
                            bool* needs_separator) {
  if (section.fields.empty()) {
    *needs_separator = message.substr(0, 2) != "\r\n";
    return 0;
  }
  const HeaderField& last = section.fields.back();
  size_t end = static_cast<size_t>(last.raw.data() + last.raw.size() - message.data());
  *needs_separator = message.substr(end, 2) != "\r\n";
  return end;
}

bool RemoveFields(std::string& message, const HeaderSection& section,
                  std::initializer_list<std::string_view> names) {
  bool removed = false;
  // From the last field back, so that the offsets of those before stay right.
  for (auto field = section.fields.rbegin(); field != section.fields.rend(); ++field) {
    const bool named = std::any_of(names.begin(), names.end(), [&](std::string_view name) {
      return EqualsIgnoreCase(field->name, name);
    });
    if (!named) continue;
    message.erase(static_cast<size_t>(field->raw.data() - message.data()), field->raw.size());
    removed = true;
  }
  return removed;
}

std::string UnfoldedValue(const HeaderField& field) {
  std::string_view value = field.raw;
  const size_t colon = value.find(':');
  value = colon == std::string_view::npos ? std::string_view() : value.substr(colon + 1);
  std::string out;
  out.reserve(value.size());
  for (size_t i = 0; i < value.size(); ++i) {
    // RFC 5322 §2.2.3: unfolding removes each CRLF that is followed by WSP.
    if (value[i] == '\r' && i + 2 < value.size() && value[i + 1] == '\n' && IsWsp(value[i + 2])) {
      ++i;
      continue;
    }
    out += value[i];
  }
  const auto is_space = [](char c) { return IsWsp(c) || c == '\r' || c == '\n'; };
  size_t begin = 0;
  while (begin < out.size() && is_space(out[begin])) ++begin;
  size_t end = out.size();
  while (end > begin && is_space(out[end - 1])) --end;
  return out.substr(begin, end - begin);
}

std::string FormatRfc5322Date(absl::Time t, absl::TimeZone zone) {
  // Every message gets a Received: field, and those of one second share its text: the last
  // second formatted on this thread is kept (the relay's I/O threads format a date per message,
  // and absl's formatting through cctz was 1-2% of such a thread).
  struct LastFormatted {
    int64_t unix_seconds = 0;
    absl::TimeZone zone;
    std::string text;  // empty: nothing kept yet
  };
  thread_local LastFormatted last;
  const int64_t unix_seconds = absl::ToUnixSeconds(t);  // rounds down, as %S does
  const bool finite = t != absl::InfiniteFuture() && t != absl::InfinitePast();
  if (finite && !last.text.empty() && last.unix_seconds == unix_seconds && last.zone == zone) {
    return last.text;
  }
  // RFC 5322 §3.3: day-name "," day month year hour ":" minute ":" second zone. absl (cctz)
  // formats %a and %b in English whatever the process locale.
  std::string text = absl::FormatTime("%a, %d %b %Y %H:%M:%S %z", t, zone);
  if (finite) last = LastFormatted{unix_seconds, zone, text};
  return text;
}

}  // namespace facteur::mail
