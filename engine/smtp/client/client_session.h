// File: engine/smtp/client/client_session.h
// One outbound SMTP session (RFC 5321 client side): greeting, EHLO (HELO when EHLO is refused),
// capability parsing, STARTTLS by TLS policy (RFC 3207), then any number of transactions, one
// message each, carrying all its recipients for this destination; PIPELINING (RFC 2920: MAIL,
// every RCPT and DATA in one write, then the body after 354; the next message's MAIL, RCPT and
// DATA may follow the end of data in the same write, §3.1), SIZE, 8BITMIME, SMTPUTF8 and DSN
// parameters (RFC 3461) passed on when the server offers them; RSET between transactions that
// failed; QUIT when told. Every wait for the server is bounded by the RFC 5321 §4.5.3.2
// timeout of its stage. It owns the protocol and nothing else: no socket, no DNS, no queue.
// Outcomes are data (engine/mail/outcome.h): a refused greeting or a lost connection is a
// session-scope outcome, MAIL FROM and the end of DATA speak for the message, RCPT for one
// recipient.
// Thread contract: shard-confined: every call and every Owner callback on the stream's loop.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "engine/io/stream.h"
#include "engine/mail/outcome.h"
#include "engine/mail/reply.h"

namespace facteur::smtp {

enum class TlsPolicy {
  kNone,           // never STARTTLS
  kOpportunistic,  // STARTTLS when offered, no verification; plain text when not offered or
                   // refused (454, RFC 3207 §4). A handshake that fails has already cost the
                   // connection (no way back to plain text on it): the session ends
                   // with a transient session-scope outcome (local 4.7.5); the owner may
                   // reconnect with kNone, as Postfix does after a failed opportunistic handshake.
  kRequired,       // STARTTLS must be offered and the certificate must verify against the MX
                   // name (the connector was set up to verify); otherwise the session fails
                   // with a transient session-scope outcome (4.7.5), and the mail waits
};

// RFC 5321 §4.5.3.2 minimums are the defaults.
struct ClientTimeouts {
  absl::Duration greeting = absl::Minutes(5);     // §4.5.3.2.1 initial 220
  absl::Duration command = absl::Minutes(5);      // EHLO, STARTTLS, MAIL §4.5.3.2.2, RCPT §4.5.3.2.3, RSET, QUIT
  absl::Duration data_initiation = absl::Minutes(2);   // §4.5.3.2.4 354
  absl::Duration data_block = absl::Minutes(3);        // §4.5.3.2.5: each send of the body
  absl::Duration data_termination = absl::Minutes(10); // §4.5.3.2.6: reply to ".", once sent
};

struct ClientOptions {
  std::string ehlo_name;  // our name in EHLO: the source's name
  TlsPolicy tls = TlsPolicy::kOpportunistic;
  ClientTimeouts timeouts;
};

struct OutboundRecipient {
  std::string address;  // "local@domain"
  std::string notify;   // RFC 3461 NOTIFY value, "" when absent
  std::string orcpt;    // RFC 3461 ORCPT value ("rfc822;x@y"), "" when absent
};

// One message for one destination. The body is shared by the transactions of every domain the
// message goes to (the queue manager read it once); it is the message as stored: CRLF lines,
// not dot-stuffed (the session stuffs it, RFC 5321 §4.5.2).
struct OutboundMessage {
  std::string sender;  // reverse-path, "" for the null sender
  std::vector<OutboundRecipient> recipients;
  std::shared_ptr<const std::string> body;  // shared with the other domains' transactions
  bool eight_bit = false;  // BODY=8BITMIME when the server offers 8BITMIME
  bool smtputf8 = false;   // SMTPUTF8 (RFC 6531); a server without it fails the message 5.6.7
  std::string dsn_ret;     // RFC 3461 RET=, "" when absent
  std::string dsn_envid;   // RFC 3461 ENVID=, "" when absent
};

// What one transaction did: one outcome per recipient of the message, in its order.
struct TransactionResult {
  std::vector<mail::DeliveryOutcome> recipients;
  // The server answered nothing of this transaction and never got its data (which follows a
  // 354), so the message was not delivered and the failure was not its own: it was sent behind
  // another's end of data (Owner::OnReadyForNext) and the session ended before that end of
  // data was answered, or the owner called Quit() before any reply to it. The outcomes are
  // local (the session's end, by its code); the owner may send the message again at once, as
  // if never tried.
  bool unanswered = false;
};

// What the server said it supports (EHLO keywords), for logs and tests.
struct ServerCapabilities {
  bool esmtp = false;  // EHLO worked
  bool pipelining = false;
  bool starttls = false;
  bool eight_bit_mime = false;
  bool smtputf8 = false;
  bool dsn = false;
  bool chunking = false;
  bool size = false;        // SIZE offered (RFC 1870): MAIL carries SIZE=, limit or not
  uint64_t size_limit = 0;  // SIZE, 0 when none announced
};

class ClientSession final : public io::StreamHandler {
 public:
  // Who drives the session (the delivery pool). Callbacks never run inside a ClientSession
  // method called by the owner; the owner may call Send() or Quit() from inside a callback.
  class Owner {
   public:
    virtual ~Owner() = default;
    // Greeting, EHLO and (by policy) STARTTLS and the second EHLO are done: Send() may be called.
    virtual void OnReady(ClientSession& session) = 0;
    // The body of the one transaction in progress is written and only the reply to its end of
    // data is awaited, and the server offers PIPELINING: Send() may start the next transaction
    // until that reply comes (accepts_next()). Called from here, its commands go out in the
    // same write as the end of data (RFC 2920 §3.1: message content may open a group), which
    // saves a round trip per message.
    virtual void OnReadyForNext(ClientSession& /*session*/) {}
    // A transaction given to Send() has ended (the oldest, when two are in progress); the
    // session is ready again when no other one is in progress (unless it closed, in which
    // case OnSessionEnded follows).
    virtual void OnTransactionDone(ClientSession& session, TransactionResult result) = 0;
    // The session ended: after QUIT, or on a failure (refused greeting, TLS policy not met,
    // timeout, lost connection, a 421 at any time). `why` is the session-scope outcome (a 2xx
    // after a clean QUIT). Transactions in progress each got their OnTransactionDone first, in
    // order, with every recipient still open given this outcome. The session is destroyed
    // after this returns (with its stream).
    virtual void OnSessionEnded(ClientSession& session, const mail::DeliveryOutcome& why) = 0;
  };

  // `stream` and `owner` outlive the session. `remote_name` ("mx1.example.net[192.0.2.1]")
  // goes into every outcome's `remote`.
  ClientSession(io::Stream& stream, const ClientOptions& options, Owner& owner,
                std::string remote_name);
  ~ClientSession() override;

  // Only when ready() (after OnReady, or after an OnTransactionDone that left no other
  // transaction in progress; before Quit) or accepts_next().
  // Copies what it needs.
  // Recipients decided here without asking the server (SMTPUTF8 not offered: 550 5.6.7; an
  // address or sender that cannot be written in a command: 501) are reported after the server
  // has answered an RSET, so that OnTransactionDone still comes from a stream callback. Called
  // while the session is closing, the message's recipients get a local transient outcome when
  // it has closed; called at any other time (a handshake under way, a transaction not at its
  // end of data, two in progress already), it aborts (an owner bug).
  void Send(const OutboundMessage& message);
  // Ready: sends QUIT, waits for the reply (the command timeout), closes; the session ends with
  // that reply. During the handshake: closes (a local 221). During a transaction: closes, and
  // the open recipients get a local 451 4.3.0 (a transaction without any reply yet is
  // unanswered). Closing already: nothing.
  void Quit();

  bool ready() const;
  // From OnReadyForNext until the reply to that end of data: Send() may start the next one.
  bool accepts_next() const;
  const ServerCapabilities& capabilities() const { return capabilities_; }
  bool tls_active() const { return tls_active_; }
  // The session ended between the 220 to STARTTLS and the server's answer to the EHLO that
  // follows the handshake, however it ended (a failed handshake, a reset, a stall, a close): what an
  // opportunistic policy takes as "this server's TLS is broken, try it again in plain text".
  bool tls_broke() const { return tls_broke_; }
  const std::string& remote_name() const { return remote_name_; }
  // The name later outcomes give the server: a connection reused for another destination whose
  // host has the same address goes by that host's name.
  void set_remote_name(std::string remote_name) { remote_name_ = std::move(remote_name); }
  uint32_t transactions() const { return transactions_; }  // Send() calls so far

  // io::StreamHandler
  void OnStart(const io::TlsInfo* implicit_tls) override;
  void OnData(std::string_view bytes) override;
  void OnTlsStarted(const io::TlsInfo& tls) override;
  void OnTlsFailed(std::string_view reason) override;
  void OnIdleTimeout() override;
  void OnClosed() override;

 private:
  class State;  // client_session.cc: the protocol state and reply parser
  io::Stream& stream_;
  ClientOptions options_;
  Owner& owner_;
  std::string remote_name_;
  ServerCapabilities capabilities_;
  bool tls_active_ = false;
  bool tls_broke_ = false;
  uint32_t transactions_ = 0;
  std::unique_ptr<State> state_;
};

// Multiline reply parser (RFC 5321 §4.2): feeds bytes, returns complete replies. Exposed for
// tests and the fuzzer. A line longer than 4096 octets (without its CRLF), a reply longer than
// 64 KiB, a code that is not [2-5]xy, a separator other than ' ' or '-', or a continuation
// line with another code makes error() true, for good: nothing more is parsed.
class ReplyParser {
 public:
  // Appends `bytes`; complete replies are moved to `out`. Lines end with CRLF or a bare LF.
  // Text lines of a multiline reply are joined with '\n'; control characters other than HT
  // become '?', so the text is safe in logs and DSNs. The enhanced code (RFC 3463) is the
  // last line's (Postfix reads it there), else the first line's, when its class matches the
  // reply code's; it is removed from every line that starts with it (RFC 2034 §3 puts it on
  // every line).
  void Feed(std::string_view bytes, std::vector<mail::Reply>& out);
  bool error() const { return error_; }

 private:
  void ParseLine(std::string_view line, std::vector<mail::Reply>& out);

  std::string buffer_;
  std::vector<std::string> lines_;
  size_t octets_ = 0;  // text octets in lines_
  int code_ = 0;
  bool error_ = false;
};

}  // namespace facteur::smtp
