// File: engine/mail/dsn.h
// Delivery status notifications (RFC 3464, RFC 6522 multipart/report): the bounce a sender
// gets for recipients that failed or expired, and the delay warning. BuildDsn writes the whole
// message, ready to be queued with the null reverse-path (RFC 5321 §4.5.5, so that a DSN never
// causes another): a human-readable part, the message/delivery-status part (per-message fields,
// then one block per recipient: Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code,
// Last-Attempt-Date) and the original message (RET=FULL, up to a size cap) or its header
// section (the default).
//
// What comes out, and why:
// - CRLF line ends, no line over 998 octets (RFC 5322 §2.1.1): long fields of the status part
//   are folded at white space (RFC 3464 §2.1.2 allows RFC 5322 folding), and a word too long
//   for a line is cut; the human text is wrapped at 76 columns.
// - The human text and the status part are 7-bit whatever the input: the text part is
//   quoted-printable UTF-8 when it holds non-ASCII (an address, a server's reply); in the status
//   part a non-ASCII address is typed "utf-8" and written as RFC 6533 §3 utf-8-addr-xtext, and
//   non-ASCII octets of a diagnostic become '?' (RFC 3464 §2.3.6: the text is US-ASCII).
// - The returned original keeps its bytes (only bare CR/LF become CRLF). Its header section is
//   text/rfc822-headers; when that section holds 8-bit octets (RFC 6532 UTF-8 fields) it is
//   message/global-headers instead (RFC 6533 §6.3), since text/rfc822-headers and
//   message/rfc822 headers must be ASCII. The whole message is message/rfc822 (RFC 2046 §5.2.1)
//   or, with 8-bit header fields, message/global (RFC 6532 §3.7); 8-bit content is declared
//   "Content-Transfer-Encoding: 8bit" on the part and on the multipart/report (RFC 2045 §6.4).
//   A whole message that cannot be carried as 7bit/8bit (a NUL, a line over 998 octets) or is
//   over the cap is returned as its header section. So a DSN is 8-bit only when it returns 8-bit
//   original content; the caller sends it with BODY=8BITMIME then (HasNonAscii() tells).
// - The boundary is checked against everything it encloses.
// Thread contract: pure functions, no I/O.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"

namespace facteur::mail {

// RFC 3464 §2.3.3. kRelayed: passed to a server that does not offer DSN, which will send no
// notice of its own (RFC 3461 §5.2.2); the last this sender hears of it.
enum class DsnAction { kFailed, kDelayed, kDelivered, kRelayed };

struct DsnRecipient {
  std::string final_recipient;     // "local@domain": the Final-Recipient, type rfc822 (utf-8 when non-ASCII)
  // RFC 3461 ORCPT, decoded from xtext as the SMTP server stores it ("rfc822;x@y"), "" when
  // absent. Written as Original-Recipient only when present (RFC 3464 §2.3.1).
  std::string original_recipient;
  DsnAction action = DsnAction::kFailed;
  std::string status;              // "5.1.1"; empty or malformed: X.0.0 from the reply code or the action
  // The server that answered: "mx1.example.net" or "mx1.example.net[192.0.2.1]" (the Remote-MTA
  // field keeps the name; the human text shows it all); "" when no server answered.
  std::string remote_mta;
  // The reply that decided: "550 5.1.1 No such user", a multi-line reply's lines joined by CRLF
  // or a space. Typed "smtp" when a server answered, "X-Facteur" when we made the reply up
  // (no remote_mta: DNS failure, timeout, expiry). "" when none.
  std::string diagnostic;
  absl::Time last_attempt = absl::InfinitePast();      // omitted when InfinitePast
  absl::Time will_retry_until = absl::InfinitePast();  // kDelayed only; omitted when InfinitePast
};

struct DsnReport {
  std::string reporting_mta;        // our host name (Reporting-MTA: dns; ...)
  std::string from;                 // "MAILER-DAEMON@host" — the DSN's From: (shown as "Mail Delivery System <...>")
  std::string to;                   // the original envelope sender — the DSN's To: (never the null sender)
  std::string message_id;           // the DSN's Message-ID, "<...@host>"
  absl::Time date;                  // the DSN's Date:
  std::string original_queue_id;    // our queue id of the original: in the text and X-Facteur-Queue-ID
  std::string original_envelope_id; // RFC 3461 ENVID, decoded from xtext, "" when absent
  absl::Time arrival_date = absl::InfinitePast();
  std::vector<DsnRecipient> recipients;
  // RET=FULL: the whole original message (when under `max_returned_bytes`); otherwise, and by
  // default, its header section only (text/rfc822-headers), itself cut at `max_returned_bytes`
  // on a field boundary.
  bool return_full = false;
  size_t max_returned_bytes = 1 << 20;
};

// The DSN as a complete RFC 5322 message with CRLF line ends. `original_message` is the message
// as queued (header section, blank line, body). Subject: "Undelivered Mail Returned to Sender"
// when any recipient failed, else "Delayed Mail (still being retried)" when any is delayed, else
// "Successful Mail Delivery Report". The caller must not build one for a message whose
// reverse-path was null (RFC 3461 §6.2): that is what stops bounce loops.
std::string BuildDsn(const DsnReport& report, std::string_view original_message);

}  // namespace facteur::mail
