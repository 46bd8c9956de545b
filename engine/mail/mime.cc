// File: engine/mail/mime.cc
#include "engine/mail/mime.h"

#include <algorithm>
#include <optional>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "engine/mail/header.h"
#include "engine/mail/text.h"

namespace facteur::mail {
namespace {

constexpr size_t kQpColumn = 76;      // RFC 2045 §6.7 rule 5, the soft break's "=" included
constexpr size_t kBase64Column = 76;  // RFC 2045 §6.8
constexpr char kHexDigits[] = "0123456789ABCDEF";

// The lines of `text`, each with its CRLF when it has one (the last may not).
std::vector<std::string_view> Lines(std::string_view text) {
  std::vector<std::string_view> lines;
  size_t start = 0;
  while (start < text.size()) {
    const size_t end = text.find("\r\n", start);
    const size_t next = end == std::string_view::npos ? text.size() : end + 2;
    lines.push_back(text.substr(start, next - start));
    start = next;
  }
  return lines;
}

std::string_view WithoutCrlf(std::string_view line) {
  if (line.size() >= 2 && line.substr(line.size() - 2) == "\r\n") line.remove_suffix(2);
  return line;
}

// The value of parameter `name` in a Content-Type value (RFC 2045 §5.1), unquoted; nullopt
// when absent. Comments are not looked into: no mail program puts one before a boundary.
std::optional<std::string> Parameter(std::string_view value, std::string_view name) {
  size_t i = value.find(';');
  while (i != std::string_view::npos && i < value.size()) {
    ++i;
    while (i < value.size() && IsWsp(value[i])) ++i;
    const size_t equals = value.find('=', i);
    if (equals == std::string_view::npos) return std::nullopt;
    std::string_view key = value.substr(i, equals - i);
    while (!key.empty() && IsWsp(key.back())) key.remove_suffix(1);
    size_t j = equals + 1;
    while (j < value.size() && IsWsp(value[j])) ++j;
    std::string parameter;
    if (j < value.size() && value[j] == '"') {
      for (++j; j < value.size() && value[j] != '"'; ++j) {
        if (value[j] == '\\' && j + 1 < value.size()) ++j;
        parameter.push_back(value[j]);
      }
      ++j;
    } else {
      while (j < value.size() && value[j] != ';' && !IsWsp(value[j])) parameter.push_back(value[j++]);
    }
    if (EqualsIgnoreCase(key, name)) return parameter;
    i = value.find(';', j);
  }
  return std::nullopt;
}

// `body` in base64 cut again at kBase64Column: decoders ignore line breaks (RFC 2045 §6.8).
std::string Rewrapped64(std::string_view body) {
  std::string out;
  size_t column = 0;
  for (char c : body) {
    if (c == '\r' || c == '\n' || IsWsp(static_cast<unsigned char>(c))) continue;
    if (column == kBase64Column) {
      out.append("\r\n");
      column = 0;
    }
    out.push_back(c);
    ++column;
  }
  if (!out.empty()) out.append("\r\n");
  return out;
}

// `body` in quoted-printable with soft line breaks in its long lines, never inside an "=XX".
std::string SoftBroken(std::string_view body) {
  std::string out;
  for (std::string_view line : Lines(body)) {
    const std::string_view text = WithoutCrlf(line);
    size_t start = 0;
    while (text.size() - start > kQpColumn - 1) {
      size_t cut = start + kQpColumn - 1;
      for (size_t k = cut - 2; k < cut; ++k) {
        if (text[k] == '=') cut = k;  // an escape would straddle the break: break before it
      }
      out.append(text.substr(start, cut - start));
      out.append("=\r\n");
      start = cut;
    }
    out.append(line.substr(start));
  }
  return out;
}

// RFC 2046 §5.1.1: a boundary is 1 to 70 bchars, the last not a space.
bool IsBoundary(std::string_view boundary) {
  static constexpr std::string_view kBchars =
      "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ";
  return !boundary.empty() && boundary.size() <= 70 && boundary.back() != ' ' &&
         boundary.find_first_not_of(kBchars) == std::string_view::npos;
}

// The first word of a field value, lowercased: "8bit (comment)" is 8bit, "text/html;
// charset=utf-8" is text/html.
std::string FirstWordLower(std::string_view value) {
  for (;;) {  // comments before it (RFC 5322 §3.2.2), not nested here
    while (!value.empty() && IsWsp(value.front())) value.remove_prefix(1);
    if (!value.starts_with("(")) break;
    const size_t close = value.find(')');
    value.remove_prefix(close == std::string_view::npos ? value.size() : close + 1);
  }
  const size_t end = value.find_first_of(" \t;(");
  return LowerAscii(value.substr(0, end));
}

// `body` in base64 (RFC 2045 §6.8), 76 columns.
std::string Base64Lines(std::string_view body) {
  return Rewrapped64(absl::Base64Escape(absl::string_view(body.data(), body.size())));
}

// RFC 5322 §2.1.1: header lines SHOULD be at most 78 octets.
constexpr size_t kFoldColumn = 78;

// `line` (no CRLF) folded (RFC 5322 §2.2.3: a CRLF inserted before white space, which
// unfolding removes again) into lines of at most kFoldColumn octets where its white space
// allows, breaking after a comma (between addresses) when one is in the second half of a
// line. Never before the first word of a field's value, never so that a line holds only white
// space. A stretch of more than kMaxLineOctets octets without white space stays as it is.
std::string FoldedLine(std::string_view line) {
  const size_t colon = IsWsp(line.front()) ? 0 : line.find(':');
  const size_t first =
      colon == std::string_view::npos ? colon : line.find_first_not_of(" \t", colon + 1);
  const size_t last = line.find_last_not_of(" \t");
  if (first == std::string_view::npos || last == std::string_view::npos) return std::string(line);
  const auto may_fold_at = [&](size_t p) {
    return p > first && p < last && IsWsp(line[p]) && !IsWsp(line[p - 1]);
  };
  std::string out;
  size_t start = 0;
  while (line.size() - start > kFoldColumn) {
    size_t fold = std::string_view::npos;
    bool after_comma = false;
    for (size_t p = start + 1; p <= start + kFoldColumn; ++p) {
      if (!may_fold_at(p)) continue;
      const bool comma = line[p - 1] == ',' && p - start > kFoldColumn / 2;
      if (comma || !after_comma) {
        fold = p;
        after_comma = comma;
      }
    }
    // A word longer than the column: the line ends after it.
    for (size_t p = start + kFoldColumn + 1;
         fold == std::string_view::npos && p < line.size() && p - start <= kMaxLineOctets; ++p) {
      if (may_fold_at(p)) fold = p;
    }
    if (fold == std::string_view::npos) break;
    out.append(line.substr(start, fold - start)).append("\r\n");
    start = fold;
  }
  out.append(line.substr(start));
  return out;
}

// The header section `header` with each line over kMaxLineOctets folded (FoldedLine); nullopt
// when none is.
std::optional<std::string> FoldedLongLines(std::string_view header) {
  if (LongestLine(header) <= kMaxLineOctets) return std::nullopt;
  std::string out;
  for (std::string_view line : Lines(header)) {
    const std::string_view text = WithoutCrlf(line);
    if (text.size() <= kMaxLineOctets) {
      out.append(line);
      continue;
    }
    out.append(FoldedLine(text)).append(line.substr(text.size()));
  }
  return out;
}

// Nested multiparts deeper than this are left to the server (each level reads its body again).
constexpr int kMaxDepth = 20;

// The entity (header section and body) `entity` with every long line fitted: header lines
// folded, body lines re-encoded; `top` for the message itself, `default_type` its type when it
// has no Content-Type (RFC 2046 §5.1.5: message/rfc822 in a multipart/digest). A body that
// cannot be changed without changing what its reader or a signature sees stays as written.
// Returns nullopt when nothing changed.
std::optional<std::string> FitEntity(std::string_view entity, bool top,
                                     std::string_view default_type, int depth) {
  const HeaderSection section = ParseHeaderSection(entity);
  const std::string_view body = entity.substr(section.body_offset);
  const std::optional<std::string> folded_header =
      FoldedLongLines(entity.substr(0, section.body_offset));
  const auto body_as_written = [&]() -> std::optional<std::string> {
    if (!folded_header.has_value()) return std::nullopt;
    return std::string(*folded_header).append(body);
  };
  if (LongestLine(body) <= kMaxLineOctets) return body_as_written();
  // Parameter values are case-sensitive (RFC 2045 §5.1): only the type is lowercased.
  const std::optional<HeaderField> type_field = FindField(section, "Content-Type");
  const std::string content_type = type_field.has_value() ? UnfoldedValue(*type_field) : "";
  std::string type = FirstWordLower(content_type);
  if (type.empty()) type = std::string(default_type);
  const std::optional<HeaderField> encoding_field =
      FindField(section, "Content-Transfer-Encoding");
  const std::string encoding =
      encoding_field.has_value() ? FirstWordLower(UnfoldedValue(*encoding_field)) : "";
  std::string fitted_body;
  std::string new_encoding;  // the Content-Transfer-Encoding the body now has, when changed
  if (type.starts_with("multipart/")) {
    // RFC 1847: a signature covers its first part as written.
    if (type == "multipart/signed" || type == "multipart/encrypted" || depth == kMaxDepth) {
      return body_as_written();
    }
    const std::optional<std::string> boundary = Parameter(content_type, "boundary");
    if (!boundary.has_value() || !IsBoundary(*boundary)) return body_as_written();
    const std::string_view part_type =
        type == "multipart/digest" ? "message/rfc822" : "text/plain";
    // RFC 2046 §5.1.1: a delimiter line is "--" boundary, "--" more for the last, then
    // optional white space. The CRLF before it belongs to it, and stays with the part here,
    // which keeps the part's octets as they were.
    const std::string dashes = absl::StrCat("--", *boundary);
    bool changed = false;
    bool in_part = false;
    bool closed = false;
    size_t part_start = 0;
    size_t offset = 0;
    for (std::string_view line : Lines(body)) {
      const size_t line_start = offset;
      offset += line.size();
      std::string_view rest = WithoutCrlf(line);
      if (closed || !rest.starts_with(dashes)) continue;  // case counts
      rest.remove_prefix(dashes.size());
      const bool close = rest.starts_with("--");
      if (close) rest.remove_prefix(2);
      while (!rest.empty() && IsWsp(rest.front())) rest.remove_prefix(1);
      if (!rest.empty()) continue;
      const std::string_view part = body.substr(part_start, line_start - part_start);
      std::optional<std::string> fitted =
          in_part ? FitEntity(part, false, part_type, depth + 1) : std::nullopt;
      if (fitted.has_value()) changed = true;
      fitted_body.append(fitted.has_value() ? std::string_view(*fitted) : part);
      fitted_body.append(line);
      part_start = offset;
      in_part = !close;
      closed = close;
    }
    fitted_body.append(body.substr(part_start));
    if (!changed) return body_as_written();
  } else if (type.starts_with("message/")) {
    return body_as_written();  // RFC 2046 §5.2.1: 7bit, 8bit or binary only; left to the server
  } else if (encoding == "base64") {
    fitted_body = Rewrapped64(body);
  } else if (encoding == "quoted-printable") {
    fitted_body = SoftBroken(body);
  } else if (type.starts_with("text/") &&
             (encoding.empty() || encoding == "7bit" || encoding == "8bit")) {
    fitted_body = QuotedPrintable(body);
    new_encoding = "quoted-printable";
  } else if (encoding.empty() || encoding == "7bit" || encoding == "8bit" ||
             encoding == "binary") {
    // Not text, or binary: its CRLFs are octets, which quoted-printable would turn into line
    // breaks a reader may store as its own (RFC 2045 §6.7 rule 4). In a multipart the CRLF
    // that ends the part belongs to the next delimiter (RFC 2046 §5.1.1), not to the data;
    // Base64Lines ends with one again.
    std::string_view data = body;
    if (!top && data.ends_with("\r\n")) data.remove_suffix(2);
    fitted_body = Base64Lines(data);
    new_encoding = "base64";
  } else {
    return body_as_written();  // an encoding of which nothing is known
  }
  std::string header = folded_header.has_value()
                           ? *folded_header
                           : std::string(entity.substr(0, section.body_offset));
  std::string added;
  if (!new_encoding.empty()) {
    RemoveFields(header, ParseHeaderSection(header), {"Content-Transfer-Encoding"});
    absl::StrAppend(&added, "Content-Transfer-Encoding: ", new_encoding, "\r\n");
  }
  const HeaderSection header_section = ParseHeaderSection(header);
  if (top && !FindField(header_section, "MIME-Version").has_value()) {
    added.insert(0, "MIME-Version: 1.0\r\n");
  }
  bool needs_separator = false;
  const size_t at = HeaderInsertPosition(header, header_section, &needs_separator);
  if (needs_separator) added.append("\r\n");
  header.insert(at, added);
  return absl::StrCat(header, fitted_body);
}

}  // namespace

std::string QuotedPrintable(std::string_view text) {
  std::string out;
  out.reserve(text.size() + text.size() / 8);
  size_t column = 0;
  const auto emit = [&](const char* piece, size_t size) {
    if (column + size > kQpColumn - 1) {
      out.append("=\r\n");
      column = 0;
    }
    out.append(piece, size);
    column += size;
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = text[i];
    if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') {
      out.append("\r\n");
      column = 0;
      ++i;
      continue;
    }
    const bool before_line_end =
        i + 1 == text.size() || (text[i + 1] == '\r' && i + 2 < text.size() && text[i + 2] == '\n');
    if ((c >= 33 && c <= 126 && c != '=') || ((c == ' ' || c == '\t') && !before_line_end)) {
      const char literal = static_cast<char>(c);
      emit(&literal, 1);
    } else {
      const char escape[3] = {'=', kHexDigits[c >> 4], kHexDigits[c & 15]};
      emit(escape, 3);
    }
  }
  return out;
}

size_t LongestLine(std::string_view text) {
  size_t longest = 0;
  for (std::string_view line : Lines(text)) longest = std::max(longest, WithoutCrlf(line).size());
  return longest;
}

size_t FirstLongLine(std::string_view text) {
  size_t number = 0;
  for (std::string_view line : Lines(text)) {
    ++number;
    if (WithoutCrlf(line).size() > kMaxLineOctets) return number;
  }
  return 0;
}

bool FitLongLines(std::string& message) {
  std::optional<std::string> fitted = FitEntity(message, /*top=*/true, "text/plain", 0);
  if (!fitted.has_value()) return false;
  message = std::move(*fitted);
  return true;
}

}  // namespace facteur::mail
