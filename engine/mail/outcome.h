// File: engine/mail/outcome.h
// What one delivery attempt did to a recipient: the reply that decided it (the remote server's,
// or one we made up for a failure of our own side of the conversation: a timeout, a lost
// connection, a DNS failure) and how far that reply reaches. A remote 4xx/5xx is data, not an
// error (STYLE.md rule 2); a Status means *we* failed. The scopes follow Postfix's
// smtp_trouble.c: a greeting refusal speaks for the whole session, a MAIL FROM or final DATA
// reply for the message, a RCPT reply for one recipient.
// Thread contract: value types.
#pragma once

#include <string>

#include "engine/mail/reply.h"

namespace facteur::mail {

enum class OutcomeScope {
  kSession,    // the connection failed or was refused: the next MX host may do better
  kMessage,    // MAIL FROM or the end of DATA: every recipient of the transaction
  kRecipient,  // RCPT TO: this recipient only
};

struct DeliveryOutcome {
  OutcomeScope scope = OutcomeScope::kRecipient;
  Reply reply;
  // The reply was made here (timeout, lost connection, DNS), not received from a server.
  bool local = false;
  // The server that answered ("mx1.example.net[192.0.2.1]"), empty when none did.
  std::string remote;
  // That server offered DSN (RFC 3461), so it was given NOTIFY= and ORCPT=: a notice of success
  // asked for is its to send from then on (RFC 3461 §5.2.2), not ours.
  bool remote_offers_dsn = false;

  bool delivered() const { return reply.code >= 200 && reply.code < 300; }
  bool transient() const { return reply.code >= 400 && reply.code < 500; }
  bool permanent() const { return reply.code >= 500; }
};

}  // namespace facteur::mail
