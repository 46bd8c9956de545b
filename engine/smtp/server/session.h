// File: engine/smtp/server/session.h
// One inbound SMTP session (RFC 5321, RFC 6409 submission): reads commands and message data
// from an io::Stream, answers them, and hands each accepted message to its SessionHost for
// durable queueing. It owns the protocol rules — command sequence, ESMTP extensions (PIPELINING,
// SIZE, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, CHUNKING, STARTTLS, AUTH PLAIN/LOGIN), line and
// size limits, DATA framing with dot-unstuffing and the refusal of bare CR/LF (the SMTP
// smuggling class, CVE-2023-51764), relay permission and sender alignment — and nothing else:
// it never touches a socket, a thread, the disk or a password hash.
// Thread contract: shard-confined. Every call, and every SessionHost callback, runs on the
// EventLoop thread that owns the stream.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/base/clock.h"
#include "engine/base/message_id.h"
#include "engine/config/config.h"
#include "engine/io/stream.h"
#include "engine/mail/address.h"
#include "engine/mail/command.h"
#include "engine/mail/header.h"
#include "engine/mail/reply.h"
#include "engine/metrics/account_class.h"
#include "queue/spool.h"

namespace facteur::smtp {

// What every session of one listener shares. Immutable once the listener starts.
struct ListenerPolicy {
  std::string listener_name;
  std::string hostname;  // ours: greeting, EHLO reply, Received:, Message-ID:
  config::ListenerRole role = config::ListenerRole::kRelay;
  config::TlsMode tls_mode = config::TlsMode::kNone;
  bool is_unix = false;
  std::vector<config::Cidr> trusted_networks;
  config::SmtpOptions limits;
};

struct AuthenticatedAccount {
  std::string name;
  std::vector<std::string> grants;  // "local@domain" or "@domain", canonical lower case
  // policy::AccountStore::ChangeCount() when the credentials were checked (read before them).
  uint64_t change_count = 0;
};

// What a session asks of the rest of the server. Implementations run the work elsewhere
// (a worker pool, the spool writer) and invoke `done` back on the session's loop thread.
class SessionHost {
 public:
  virtual ~SessionHost() = default;
  // Checks the credentials. Unauthenticated: wrong name or password; FailedPrecondition: the
  // account is suspended; Unavailable: no capacity now (the client may retry);
  // ResourceExhausted: this client address failed too often and is locked out for a while.
  virtual void Authenticate(std::string account, std::string password,
                            absl::AnyInvocable<void(absl::StatusOr<AuthenticatedAccount>) &&> done) = 0;
  // Queues the message durably. OK only once it is synced to disk.
  virtual void Enqueue(queue::Envelope envelope, std::string message,
                       absl::AnyInvocable<void(absl::Status) &&> done) = 0;
  virtual Clock& clock() = 0;
  // RCPT-time check of a recipient's domain (RFC 7505 §4.2, RFC 5321 §5.1): `done` gets nullopt
  // to accept, or the refusal — 550 5.1.2 for a domain that does not exist, 556 5.1.10 for a
  // null MX, 451 4.4.3 when DNS cannot tell. May answer synchronously. Default: accept.
  virtual void CheckRecipientDomain(std::string /*domain*/,
                                    absl::AnyInvocable<void(std::optional<mail::Reply>) &&> done) {
    std::move(done)(std::nullopt);
  }

  // Submission policy (issue #5): an authenticated account's quotas and suspension, and the
  // suppression list. Each answers at once from memory (never blocking the loop): nullopt
  // accepts, otherwise the reply that refuses. Defaults: accept.
  // At MAIL FROM and at DATA, for an authenticated account.
  virtual std::optional<mail::Reply> CheckAccountMessage(std::string_view /*account*/) {
    return std::nullopt;
  }
  // At RCPT TO, for an authenticated account: `recipients` is the count the message would have
  // with this recipient.
  virtual std::optional<mail::Reply> CheckAccountRecipients(std::string_view /*account*/,
                                                            size_t /*recipients*/) {
    return std::nullopt;
  }
  // At RCPT TO, for every client: `canonical` is mail::Mailbox::Canonical().
  virtual std::optional<mail::Reply> CheckRecipient(std::string_view /*canonical*/) {
    return std::nullopt;
  }
  // At MAIL FROM, DATA and the end of the data, for an authenticated account: true when the
  // account was changed since `account` was authenticated (suspended, deleted, a new password,
  // its addresses), so that the session no longer acts for it. From memory, at once.
  virtual bool AccountChanged(const AuthenticatedAccount& /*account*/) { return false; }
  // At the end of the data, before queueing: counts the message against the account's quotas
  // (`now` is the envelope's received_at), or refuses it. When Enqueue() then fails, the host
  // gives the count back (it knows from the envelope's account and received_at).
  virtual std::optional<mail::Reply> AdmitAccountMessage(std::string_view /*account*/,
                                                         absl::Time /*now*/) {
    return std::nullopt;
  }

  // Observation hooks for metrics; default no-ops.
  virtual void OnReplySent(int /*code*/) {}
  virtual void OnMessageAccepted(size_t /*bytes*/, absl::Duration /*time_to_reply*/) {}
  // Right after OnMessageAccepted: how the client was let in (authenticated beats local beats
  // trusted).
  virtual void OnMessageReceived(metrics::AccountClass /*account_class*/) {}
  // From the session's destructor: its lifetime, from construction (accept) to the end.
  virtual void OnSessionEnded(absl::Duration /*lifetime*/) {}
  virtual void OnAuthFailure() {}
  // A message whose data was read was refused (size, line length, bare LF, alignment, queue).
  virtual void OnMessageRefused() {}
};

class Session final : public io::StreamHandler {
 public:
  // `policy` and `host` outlive the session; `stream` outlives it too (the stream destroys its
  // handler right after OnClosed()).
  Session(io::Stream& stream, const ListenerPolicy& policy, SessionHost& host);
  ~Session() override;

  // io::StreamHandler
  void OnStart(const io::TlsInfo* implicit_tls) override;
  void OnData(std::string_view bytes) override;
  void OnTlsStarted(const io::TlsInfo& tls) override;
  void OnTlsFailed(std::string_view reason) override;
  void OnIdleTimeout() override;
  void OnClosed() override;

  // A reply sent with a session that must end at once (e.g. too many sessions): greeting-time
  // refusal, then close.
  void RefuseAndClose(const mail::Reply& reply);

 private:
  enum class Input {
    kCommand,      // reading command lines
    kAuthPlain,    // waiting for the PLAIN response line (RFC 4954 §4)
    kAuthLoginUser,
    kAuthLoginPassword,
    kData,         // inside DATA, until <CRLF>.<CRLF>
    kBdat,         // reading a BDAT chunk's octets
  };
  // Why the current message will be refused at its end, once its data has been read.
  enum class DataFault { kNone, kLineTooLong, kTooBig };

  void Process();
  void HostWorkDone();  // host work answered: input is processed again
  bool ProcessCommandLine(std::string_view line);  // false: stop processing (async or closed)
  void HandleEhlo(const mail::Command& command, bool extended);
  void HandleMail(const mail::Command& command);
  void HandleRcpt(const mail::Command& command);
  void HandleData(const mail::Command& command);
  void HandleBdat(const mail::Command& command);
  void HandleStartTls(const mail::Command& command);
  void HandleAuth(const mail::Command& command);
  void HandleAuthResponse(std::string_view line);
  void StartAuthentication(std::string authzid, std::string account, std::string password);
  // The server log's line for a failed AUTH: listener, the account name tried (never the
  // password) and the client's address; `why` adds to it.
  void LogAuthFailure(std::string_view account, std::string_view why) const;
  // The client's bare IP address ("192.0.2.1"), or the Unix peer's description.
  std::string ClientAddress() const;

  // DATA: consumes complete lines from input_; true when the terminating "." was read.
  // Sets closed_ when the data holds a bare CR or LF (refused at once, connection closed).
  bool ConsumeDataLines();
  // BDAT: consumes up to the chunk's remaining octets; true when the chunk is complete.
  bool ConsumeBdatOctets();
  void AppendMessageBytes(std::string_view bytes);
  // Checks and queues the message read by DATA or BDAT LAST.
  void FinishMessage();
  std::optional<mail::Reply> CheckMessage(const mail::HeaderSection& section) const;
  std::string ReceivedHeader(const MessageId& id) const;

  void Reply(const mail::Reply& reply);
  void Reply(int code, std::string_view enhanced, std::string_view text);
  // A refusal caused by the client: counts toward max_errors, and past it ends the session.
  void Refuse(int code, std::string_view enhanced, std::string_view text);
  void RefuseWith(const mail::Reply& reply);
  void ResetTransaction();
  void Close();
  // When the authenticated account changed since AUTH: says so with a 421, closes, and returns
  // true (the client reconnects and authenticates again, or is refused). At MAIL, DATA, a first
  // BDAT chunk and the end of the data.
  bool CloseIfAccountChanged();
  bool ClientMayRelay() const;
  metrics::AccountClass ClientClass() const;
  bool AuthAvailable() const;
  bool StartTlsAvailable() const;
  const char* Protocol() const;  // RFC 3848 / RFC 6531 §3.7.3 "with" keyword

  io::Stream& stream_;
  const ListenerPolicy& policy_;
  SessionHost& host_;
  // Shared with the callbacks of pending host work, which check it before touching the
  // session: the session may be gone (client disconnected) when the work completes.
  std::shared_ptr<bool> alive_;
  const absl::Time opened_;  // host_.clock() at construction: the session's lifetime metric

  // Received, not yet consumed: input_ from input_read_ on. Consuming moves the offset; the
  // consumed front is dropped once per Process(), so that a burst of pipelined commands costs
  // one move of the buffer, not one per command.
  std::string_view Unread() const { return std::string_view(input_).substr(input_read_); }
  void ConsumeInput(size_t octets);
  void DropInput();
  std::string input_;
  size_t input_read_ = 0;
  Input input_state_ = Input::kCommand;
  bool discarding_long_line_ = false;  // dropping an over-long line up to its LF
  // DATA: the line being read was too long and its start was dropped: what comes up to its LF
  // is the rest of it, never the terminating "." (RFC 5321 §4.1.1.4: only <CRLF>.<CRLF> ends
  // the data).
  bool data_line_continues_ = false;
  // What input waits for: nothing, host work (a DNS check, authentication, queueing: the
  // client waits for us, so the idle timeout does not apply), or the STARTTLS handshake.
  enum class Waiting { kNo, kHost, kTlsHandshake };
  Waiting waiting_ = Waiting::kNo;
  bool idle_during_host_work_ = false;  // the idle timeout fired while waiting_ was kHost
  bool processing_ = false;    // inside Process(): a nested call returns at once
  bool closed_ = false;
  uint32_t errors_ = 0;

  // Session state (reset by STARTTLS, RFC 3207 §4.2).
  std::string helo_;
  // The client said HELO, not EHLO: plain SMTP, replies without enhanced status codes
  // (RFC 2034 §3). Before any greeting command they carry them, as Postfix's do.
  bool plain_helo_ = false;
  bool tls_active_ = false;
  std::optional<AuthenticatedAccount> account_;
  std::string auth_login_user_;

  // Transaction state (reset by RSET, EHLO, end of message).
  bool in_transaction_ = false;
  mail::MailFromArguments mail_from_;
  std::vector<mail::RcptToArguments> recipients_;
  std::string message_;
  DataFault data_fault_ = DataFault::kNone;
  bool bdat_used_ = false;
  bool bdat_last_ = false;
  uint64_t bdat_remaining_ = 0;
  bool bdat_discard_ = false;  // the chunk is read only to keep the framing
  std::optional<mail::Reply> bdat_refusal_;
};

}  // namespace facteur::smtp
