// File: engine/dkim/canonicalize.cc
#include "engine/dkim/canonicalize.h"

#include <cstring>

namespace facteur::dkim {
namespace {

inline bool IsWsp(char c) { return c == ' ' || c == '\t'; }

// Collects small pieces into one buffer so the sink (a hash update) sees few, large calls.
class BufferedSink {
 public:
  explicit BufferedSink(absl::FunctionRef<void(std::string_view)> sink) : sink_(sink) {}
  ~BufferedSink() { Flush(); }

  void Append(std::string_view bytes) {
    if (bytes.size() > sizeof(buffer_) - used_) {
      Flush();
      if (bytes.size() >= sizeof(buffer_)) {
        sink_(bytes);
        return;
      }
    }
    std::memcpy(buffer_ + used_, bytes.data(), bytes.size());
    used_ += bytes.size();
  }
  void Append(char c) {
    if (used_ == sizeof(buffer_)) Flush();
    buffer_[used_++] = c;
  }
  void Flush() {
    if (used_ > 0) sink_(std::string_view(buffer_, used_));
    used_ = 0;
  }
  bool wrote() const { return wrote_; }
  void set_wrote() { wrote_ = true; }

 private:
  absl::FunctionRef<void(std::string_view)> sink_;
  char buffer_[16 * 1024];
  size_t used_ = 0;
  bool wrote_ = false;
};

// One relaxed body line (without its CRLF): runs of WSP become one SP, trailing WSP goes.
// Returns false when nothing is left (an empty line), writing nothing.
bool RelaxedLineIsEmpty(std::string_view line) {
  for (char c : line) {
    if (!IsWsp(c)) return false;
  }
  return true;
}

void AppendRelaxedLine(std::string_view line, BufferedSink& out) {
  // Text between WSP runs is copied in spans: a single SP between two words is already
  // canonical and stays inside the span, so a typical line is one copy.
  const char* p = line.data();
  const size_t n = line.size();
  size_t span = 0;  // start of the span being collected
  size_t i = 0;
  while (i < n && IsWsp(p[i])) ++i;  // leading WSP becomes one SP, unless the line is all WSP
  if (i > 0) {
    out.Append(' ');
    span = i;
  }
  while (i < n) {
    if (!IsWsp(p[i])) {
      ++i;
      continue;
    }
    size_t j = i + 1;
    while (j < n && IsWsp(p[j])) ++j;
    if (j == n) break;  // trailing WSP: dropped
    if (j == i + 1 && p[i] == ' ') {
      i = j;  // one SP: keep it in the span
      continue;
    }
    out.Append(std::string_view(p + span, i - span));
    out.Append(' ');
    span = i = j;
  }
  out.Append(std::string_view(p + span, i - span));
}

}  // namespace

void AppendCanonicalHeader(Canonicalization mode, std::string_view field, bool with_crlf,
                           std::string* out) {
  if (field.size() >= 2 && field.substr(field.size() - 2) == "\r\n") {
    field.remove_suffix(2);
  }
  if (mode == Canonicalization::kSimple) {
    out->append(field);
    if (with_crlf) out->append("\r\n");
    return;
  }
  // RFC 6376 §3.4.2, in its order: lower-case the name, unfold, compress WSP, drop WSP at the
  // end of the value and around the colon.
  size_t colon = field.find(':');
  std::string_view name = field.substr(0, colon);
  while (!name.empty() && IsWsp(name.back())) name.remove_suffix(1);
  for (char c : name) out->push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c);
  if (colon == std::string_view::npos) {
    if (with_crlf) out->append("\r\n");
    return;
  }
  out->push_back(':');
  std::string_view value = field.substr(colon + 1);
  bool pending_space = false;
  bool started = false;  // WSP before the first value character is dropped
  for (size_t i = 0; i < value.size(); ++i) {
    char c = value[i];
    if (c == '\r' && i + 1 < value.size() && value[i + 1] == '\n') {
      ++i;  // unfolding removes the CRLF; the WSP after it is compressed below
      continue;
    }
    if (IsWsp(c)) {
      pending_space = started;
      continue;
    }
    if (pending_space) out->push_back(' ');
    pending_space = false;
    started = true;
    out->push_back(c);
  }
  if (with_crlf) out->append("\r\n");
}

std::string CanonicalHeader(Canonicalization mode, std::string_view field, bool with_crlf) {
  std::string out;
  out.reserve(field.size() + 2);
  AppendCanonicalHeader(mode, field, with_crlf, &out);
  return out;
}

void CanonicalizeBody(Canonicalization mode, std::string_view body,
                      absl::FunctionRef<void(std::string_view)> sink) {
  BufferedSink out(sink);
  size_t blank_lines = 0;  // empty lines seen and not yet written: trailing ones never are
  size_t position = 0;
  while (position < body.size()) {
    size_t end = body.find("\r\n", position);
    std::string_view line = end == std::string_view::npos
                                ? body.substr(position)
                                : body.substr(position, end - position);
    position = end == std::string_view::npos ? body.size() : end + 2;
    const bool empty = mode == Canonicalization::kRelaxed ? RelaxedLineIsEmpty(line)
                                                          : line.empty();
    if (empty) {
      ++blank_lines;
      continue;
    }
    for (; blank_lines > 0; --blank_lines) out.Append(std::string_view("\r\n"));
    if (mode == Canonicalization::kRelaxed) {
      AppendRelaxedLine(line, out);
    } else {
      out.Append(line);
    }
    out.Append(std::string_view("\r\n"));
    out.set_wrote();
  }
  // RFC 6376 §3.4.3: the simple form of an empty body is one CRLF; the relaxed one is empty.
  if (mode == Canonicalization::kSimple && !out.wrote()) out.Append(std::string_view("\r\n"));
}

std::string CanonicalBody(Canonicalization mode, std::string_view body) {
  std::string out;
  out.reserve(body.size() + 2);
  CanonicalizeBody(mode, body, [&out](std::string_view piece) { out.append(piece); });
  return out;
}

}  // namespace facteur::dkim
