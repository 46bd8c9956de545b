// Fuzz target: an SMTP command line through ParseCommand, then its argument through
// ParseMailFrom and ParseRcptTo. Invariants: no crash; the views lie inside the line; a mailbox
// that parses re-serialises (ToString) into a path that parses to an equal mailbox.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "engine/mail/command.h"

namespace {

using facteur::mail::Mailbox;

void Check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
  }
}

bool Inside(std::string_view part, std::string_view whole) {
  return part.empty() ||
         (part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size());
}

void CheckMailFrom(std::string_view argument) {
  const auto result = facteur::mail::ParseMailFrom(argument);
  if (const auto* refusal = facteur::mail::RefusalOf(result)) {
    Check(refusal->IsPermanent(), "MAIL refusal is a 5xx");
    return;
  }
  const auto& args = std::get<facteur::mail::MailFromArguments>(result);
  if (!args.sender) return;
  Check(args.smtputf8 || !args.sender->NeedsSmtpUtf8(), "UTF-8 sender without SMTPUTF8");
  const std::string again = "FROM:<" + args.sender->ToString() + ">" +
                            (args.smtputf8 ? " SMTPUTF8" : "");
  const auto reparsed = facteur::mail::ParseMailFrom(again);
  Check(facteur::mail::RefusalOf(reparsed) == nullptr, "re-serialised sender parses");
  Check(std::get<facteur::mail::MailFromArguments>(reparsed).sender == args.sender,
        "re-serialised sender is equal");
}

void CheckRcptTo(std::string_view argument, bool smtputf8) {
  const auto result = facteur::mail::ParseRcptTo(argument, smtputf8);
  if (const auto* refusal = facteur::mail::RefusalOf(result)) {
    Check(refusal->IsPermanent(), "RCPT refusal is a 5xx");
    return;
  }
  const Mailbox& recipient = std::get<facteur::mail::RcptToArguments>(result).recipient;
  Check(smtputf8 || !recipient.NeedsSmtpUtf8(), "UTF-8 recipient without SMTPUTF8");
  const auto reparsed = facteur::mail::ParseRcptTo("TO:<" + recipient.ToString() + ">", smtputf8);
  Check(facteur::mail::RefusalOf(reparsed) == nullptr, "re-serialised recipient parses");
  Check(std::get<facteur::mail::RcptToArguments>(reparsed).recipient == recipient,
        "re-serialised recipient is equal");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view line(reinterpret_cast<const char*>(data), size);
  const facteur::mail::Command command = facteur::mail::ParseCommand(line);
  Check(Inside(command.verb_text, line) && Inside(command.argument, line), "views inside line");
  // Whatever the verb, the argument after the first space goes to both parsers.
  const size_t space = line.find(' ');
  const std::string_view argument =
      space == std::string_view::npos ? line : line.substr(space + 1);
  CheckMailFrom(argument);
  CheckRcptTo(argument, false);
  CheckRcptTo(argument, true);
  // The Reply text of any refusal must format without a bare line break.
  const auto result = facteur::mail::ParseMailFrom(argument);
  if (const auto* refusal = facteur::mail::RefusalOf(result)) {
    const std::string wire = refusal->Format();
    Check(wire.size() >= 5 && wire.compare(wire.size() - 2, 2, "\r\n") == 0, "reply ends in CRLF");
  }
  return 0;
}
