// Fuzz target: a header value through ParseAddressList, and the same bytes through ParseMailbox
// with and without UTF-8. Invariants: no crash; a successful list is never empty; a mailbox that
// ParseMailbox accepts re-serialises into text that parses to an equal mailbox.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "engine/mail/address.h"

namespace {

void Check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
  }
}

void CheckMailbox(std::string_view text, bool allow_utf8) {
  const auto mailbox = facteur::mail::ParseMailbox(text, allow_utf8);
  if (!mailbox.ok()) return;
  Check(allow_utf8 || !mailbox->NeedsSmtpUtf8(), "UTF-8 mailbox without allow_utf8");
  Check(facteur::mail::IsValidDomain(mailbox->domain, allow_utf8), "domain is valid");
  const auto again = facteur::mail::ParseMailbox(mailbox->ToString(), allow_utf8);
  Check(again.ok(), "re-serialised mailbox parses");
  Check(*again == *mailbox, "re-serialised mailbox is equal");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto list = facteur::mail::ParseAddressList(text);
  if (list.ok()) Check(!list->empty(), "a parsed address list holds a mailbox");
  CheckMailbox(text, false);
  CheckMailbox(text, true);
  return 0;
}
