// Fuzz target: a message through ParseHeaderSection. Invariants: no crash; body_offset <= size;
// every field's raw view lies inside the input, in order, and starts with its name; the fields
// and the body offset never overlap; UnfoldedValue and FindField work on every field.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "engine/mail/header.h"

namespace {

void Check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view message(reinterpret_cast<const char*>(data), size);
  const facteur::mail::HeaderSection section = facteur::mail::ParseHeaderSection(message);
  Check(section.body_offset <= message.size(), "body_offset <= size");
  size_t previous_end = 0;
  for (const facteur::mail::HeaderField& field : section.fields) {
    Check(!field.name.empty(), "field name is not empty");
    Check(field.raw.data() >= message.data() &&
              field.raw.data() + field.raw.size() <= message.data() + message.size(),
          "raw lies inside the input");
    const size_t start = static_cast<size_t>(field.raw.data() - message.data());
    Check(start == previous_end, "fields are contiguous from the start");
    previous_end = start + field.raw.size();
    Check(field.name.data() == field.raw.data() &&
              field.raw.substr(0, field.name.size()) == field.name,
          "raw starts with the name");
    const std::string value = facteur::mail::UnfoldedValue(field);
    Check(value.size() <= field.raw.size(), "unfolded value is no longer than the field");
    Check(facteur::mail::FindField(section, field.name).has_value(), "field is found by name");
  }
  Check(previous_end <= section.body_offset, "fields end before the body");
  return 0;
}
