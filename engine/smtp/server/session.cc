#include "engine/smtp/server/session.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/base/log.h"
#include "engine/base/status.h"
#include "engine/mail/header.h"
#include "engine/mail/text.h"
#include "engine/policy/sender_policy.h"

namespace facteur::smtp {
namespace {

using mail::Command;
using mail::Verb;

// Input buffered while host work is pending (a pipelining client may send ahead). Past this the
// stream stops reading, so a hostile client cannot grow our memory.
constexpr size_t kMaxBufferedInput = 256 * 1024;
// A data line longer than this with no LF yet is dropped as it comes (it is refused anyway).
constexpr size_t kMaxPartialDataLine = 64 * 1024;

// Reply texts given in more than one place. RFC 5321 §4.2: reply text is printable US-ASCII
// (upstream MTAs copy it into their own DSNs and logs), so no "§" here.
constexpr char kBareCrText[] =
    "Bare <CR> in message data (RFC 5321 section 2.3.8); closing connection";
constexpr char kBareLfText[] =
    "Bare <LF> in message data (RFC 5321 section 2.3.8); closing connection";
constexpr char kLineTooLongText[] =
    "Message has a line longer than 1000 octets (RFC 5321 section 4.5.3.1.6)";

// Printable ASCII only, for client-supplied text copied into headers, replies and logs.
std::string Printable(std::string_view text, size_t max_length = 255) {
  std::string out;
  for (char c : text.substr(0, max_length)) {
    out.push_back(c > 32 && c < 127 ? c : '?');
  }
  return out;
}

bool PeerIsTrusted(const io::PeerInfo& peer, const std::vector<config::Cidr>& networks) {
  if (peer.is_unix) return true;
  for (const config::Cidr& network : networks) {
    if (network.Contains(peer.address, peer.address_length)) return true;
  }
  return false;
}

}  // namespace

Session::Session(io::Stream& stream, const ListenerPolicy& policy, SessionHost& host)
    : stream_(stream),
      policy_(policy),
      host_(host),
      alive_(std::make_shared<bool>(true)),
      opened_(host.clock().Now()) {
  // From the first byte: an implicit-TLS client that never finishes its handshake is timed
  // out too (RFC 5321 §4.5.3.2.7).
  stream_.SetIdleTimeout(policy_.limits.idle_timeout);
}

Session::~Session() { host_.OnSessionEnded(host_.clock().Now() - opened_); }

// ---------------------------------------------------------------------------------------------
// Stream events

void Session::OnStart(const io::TlsInfo* implicit_tls) {
  tls_active_ = implicit_tls != nullptr;
  // RFC 5321 §4.2: the greeting carries no enhanced status code.
  Reply(220, "", absl::StrCat(policy_.hostname, " ESMTP facteur"));
}

void Session::RefuseAndClose(const mail::Reply& reply) {
  Reply(reply);
  Close();
}

void Session::OnData(std::string_view bytes) {
  if (closed_) return;
  input_.append(bytes);
  Process();
}

void Session::ConsumeInput(size_t octets) {
  input_read_ += octets;
  if (input_read_ >= input_.size()) DropInput();
}

void Session::DropInput() {
  input_.clear();
  input_read_ = 0;
}

void Session::OnTlsStarted(const io::TlsInfo& /*tls*/) {
  tls_active_ = true;
  waiting_ = Waiting::kNo;
  Process();
}

void Session::OnTlsFailed(std::string_view reason) {
  Log(LogLevel::kInfo, "%s: TLS handshake with %s failed: %s", policy_.listener_name,
      stream_.peer().text, ToAbsl(reason));
  closed_ = true;
}

void Session::OnIdleTimeout() {
  if (closed_) return;
  // The client is waiting for us (its message being signed and synced, a DNS check): a 421
  // now would make it send again a message we then queue all the same, twice. The stream
  // re-arms the timer; host work always ends, with a reply.
  if (waiting_ == Waiting::kHost) {
    idle_during_host_work_ = true;
    return;
  }
  // RFC 5321 §4.5.3.2.7: the server may close an idle session, with 421.
  Reply(421, "4.4.2", absl::StrCat(policy_.hostname, " Idle timeout, closing connection"));
  Close();
}

void Session::OnClosed() { closed_ = true; }

void Session::HostWorkDone() {
  waiting_ = Waiting::kNo;
  // The stream re-armed the idle timer when it fired during the work: the client's turn starts
  // now and gets the whole timeout.
  if (idle_during_host_work_) {
    idle_during_host_work_ = false;
    stream_.SetIdleTimeout(policy_.limits.idle_timeout);
  }
}

// ---------------------------------------------------------------------------------------------
// Input

void Session::Process() {
  // A host may answer synchronously, from inside this loop: the loop then simply goes on.
  if (processing_) return;
  processing_ = true;
  while (!closed_ && waiting_ == Waiting::kNo) {
    if (input_state_ == Input::kData) {
      if (!ConsumeDataLines()) break;
      FinishMessage();
      continue;
    }
    if (input_state_ == Input::kBdat) {
      if (!ConsumeBdatOctets()) break;
      input_state_ = Input::kCommand;
      if (bdat_refusal_.has_value()) {
        mail::Reply refusal = *std::move(bdat_refusal_);
        bdat_refusal_.reset();
        RefuseWith(refusal);
      } else if (bdat_last_) {
        FinishMessage();
      } else {
        Reply(250, "2.0.0", "Chunk received");
      }
      continue;
    }
    // A command line, or a line of an AUTH exchange (RFC 4954 §4 allows those to be longer).
    const bool command = input_state_ == Input::kCommand;
    const size_t limit = command ? mail::kMaxMailRcptLine : mail::kMaxAuthLine;
    const std::string_view unread = Unread();
    const size_t lf = unread.find('\n');
    if (discarding_long_line_ || (lf != std::string_view::npos && lf + 1 > limit)) {
      if (lf == std::string_view::npos) {
        DropInput();
        break;
      }
      ConsumeInput(lf + 1);
      discarding_long_line_ = false;
      input_state_ = Input::kCommand;
      if (command) {
        Refuse(500, "5.5.2", "Line too long");
      } else {
        Refuse(500, "5.5.6", "Authentication Exchange line is too long");  // RFC 4954 §6
      }
      continue;
    }
    if (lf == std::string_view::npos) {
      if (unread.size() >= limit) {  // no end in sight: drop it as it comes
        discarding_long_line_ = true;
        DropInput();
      }
      break;
    }
    std::string line(unread.substr(0, lf));
    ConsumeInput(lf + 1);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (command && lf + 1 > mail::kMaxCommandLine) {
      // Only MAIL and RCPT carry extension parameters that may take them past 512 octets.
      const mail::Verb verb = mail::ParseCommand(line).verb;
      if (verb != mail::Verb::kMail && verb != mail::Verb::kRcpt) {
        Refuse(500, "5.5.2", "Line too long");
        continue;
      }
    }
    if (input_state_ == Input::kCommand) {
      ProcessCommandLine(line);
    } else {
      HandleAuthResponse(line);
    }
  }
  processing_ = false;
  if (input_read_ > 0) {  // the consumed front goes, once per call
    input_.erase(0, input_read_);
    input_read_ = 0;
  }
  if (!closed_) stream_.SetReading(input_.size() < kMaxBufferedInput);
}

bool Session::ProcessCommandLine(std::string_view line) {
  Command command = mail::ParseCommand(line);
  switch (command.verb) {
    case Verb::kEhlo:
      HandleEhlo(command, /*extended=*/true);
      break;
    case Verb::kHelo:
      HandleEhlo(command, /*extended=*/false);
      break;
    case Verb::kMail:
      HandleMail(command);
      break;
    case Verb::kRcpt:
      HandleRcpt(command);
      break;
    case Verb::kData:
      HandleData(command);
      break;
    case Verb::kBdat:
      HandleBdat(command);
      break;
    case Verb::kRset:
      ResetTransaction();
      Reply(250, "2.0.0", "Ok");
      break;
    case Verb::kNoop:
      Reply(250, "2.0.0", "Ok");
      break;
    case Verb::kQuit:
      Reply(221, "2.0.0", absl::StrCat(policy_.hostname, " closing connection"));
      Close();
      break;
    case Verb::kVrfy:
      // RFC 5321 §3.5.3: 252 when we will not verify but would try delivery.
      Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery");
      break;
    case Verb::kExpn:
      Refuse(502, "5.5.1", "EXPN is not supported");
      break;
    case Verb::kHelp:
      Reply(214, "2.0.0",
            "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH\n"
            "See RFC 5321");
      break;
    case Verb::kStartTls:
      HandleStartTls(command);
      break;
    case Verb::kAuth:
      HandleAuth(command);
      break;
    case Verb::kUnknown:
      Refuse(500, "5.5.1", "Command unrecognized");
      break;
  }
  return !closed_ && waiting_ == Waiting::kNo;
}

// ---------------------------------------------------------------------------------------------
// Commands

void Session::HandleEhlo(const Command& command, bool extended) {
  if (command.argument.empty()) {
    Refuse(501, "5.5.4", extended ? "Syntax: EHLO domain" : "Syntax: HELO domain");
    return;
  }
  ResetTransaction();  // RFC 5321 §4.1.4: EHLO resets the state like RSET
  helo_ = Printable(command.argument);
  plain_helo_ = !extended;
  if (!extended) {
    Reply(250, "", policy_.hostname);
    return;
  }
  std::vector<std::string> lines = {
      absl::StrCat(policy_.hostname, " Hello ", helo_),
      "PIPELINING",
      absl::StrCat("SIZE ", policy_.limits.max_message_size),
      "8BITMIME",
      "SMTPUTF8",
      "ENHANCEDSTATUSCODES",
      "CHUNKING",
      // RFC 3461: NOTIFY, ORCPT, RET and ENVID are kept and passed on to a next server that
      // offers DSN; to one that does not, NOTIFY=SUCCESS gets a "relayed" notice from here.
      "DSN",
  };
  if (StartTlsAvailable()) lines.push_back("STARTTLS");
  if (AuthAvailable() && !account_.has_value()) lines.push_back("AUTH PLAIN LOGIN");
  // RFC 2034 §3: EHLO replies carry no enhanced status codes.
  Reply(250, "", absl::StrJoin(lines, "\n"));
}

void Session::HandleMail(const Command& command) {
  if (helo_.empty()) {
    Refuse(503, "5.5.1", "Send EHLO or HELO first");
    return;
  }
  if (in_transaction_) {
    Refuse(503, "5.5.1", "Nested MAIL command");
    return;
  }
  if (CloseIfAccountChanged()) return;
  if (policy_.role == config::ListenerRole::kSubmission && !policy_.is_unix &&
      !account_.has_value()) {
    // RFC 6409 §4.3, RFC 4954 §6; RFC 3207 §4 when TLS must come first.
    Refuse(530, "5.7.0",
           StartTlsAvailable() && !tls_active_ ? "Must issue a STARTTLS command first"
                                               : "Authentication required");
    return;
  }
  mail::ReplyOr<mail::MailFromArguments> parsed = mail::ParseMailFrom(command.argument);
  if (const mail::Reply* refusal = mail::RefusalOf(parsed)) {
    RefuseWith(*refusal);
    return;
  }
  mail::MailFromArguments arguments = std::get<mail::MailFromArguments>(std::move(parsed));
  if (arguments.body == mail::BodyType::kBinaryMime) {
    Refuse(555, "5.5.4", "BODY=BINARYMIME is not supported");
    return;
  }
  if (arguments.size.has_value() && *arguments.size > policy_.limits.max_message_size) {
    // RFC 1870 §6.1
    Refuse(552, "5.3.4", "Message size exceeds fixed maximum message size");
    return;
  }
  if (account_.has_value() && arguments.sender.has_value() &&
      !policy::MaySendAs(account_->grants, *arguments.sender)) {
    Log(LogLevel::kWarning, "%s: sender <%s> refused (553) for account '%s' from %s: not granted",
        policy_.listener_name, Printable(arguments.sender->ToString()),
        Printable(account_->name), ClientAddress());
    Refuse(553, "5.7.1", policy::SenderRefusal(account_->name, *arguments.sender));
    return;
  }
  if (account_.has_value()) {
    if (std::optional<mail::Reply> refusal = host_.CheckAccountMessage(account_->name)) {
      // A suspended account (5xx) counts as a client error; a full quota (4xx) does not.
      if (refusal->IsPermanent()) {
        RefuseWith(*refusal);
      } else {
        Reply(*refusal);
      }
      return;
    }
  }
  mail_from_ = std::move(arguments);
  in_transaction_ = true;
  Reply(250, "2.1.0", "Ok");
}

void Session::HandleRcpt(const Command& command) {
  if (!in_transaction_) {
    Refuse(503, "5.5.1", "Need MAIL before RCPT");
    return;
  }
  mail::ReplyOr<mail::RcptToArguments> parsed =
      mail::ParseRcptTo(command.argument, mail_from_.smtputf8);
  if (const mail::Reply* refusal = mail::RefusalOf(parsed)) {
    RefuseWith(*refusal);
    return;
  }
  mail::RcptToArguments arguments = std::get<mail::RcptToArguments>(std::move(parsed));
  if (!ClientMayRelay()) {
    Refuse(554, "5.7.1", absl::StrCat("<", arguments.recipient.ToString(),
                                      ">: Relay access denied"));
    return;
  }
  if (arguments.recipient.domain.empty()) {
    // <Postmaster> alone names a local mailbox, and this relay delivers no local mail.
    Refuse(550, "5.1.1", "This relay has no local mailboxes; give the postmaster's full address");
    return;
  }
  std::string canonical = arguments.recipient.Canonical();
  if (std::optional<mail::Reply> refusal = host_.CheckRecipient(canonical)) {
    // The suppression list: a refused recipient is not a client error (a mailing list may hold
    // many), so it does not count toward max_errors.
    Reply(*refusal);
    return;
  }
  // A recipient already taken is taken again, limit or not: deferred with 452 to another
  // transaction, it would get the message twice.
  bool duplicate = std::any_of(recipients_.begin(), recipients_.end(),
                               [&](const mail::RcptToArguments& r) {
                                 return r.recipient.Canonical() == canonical;
                               });
  if (duplicate) {
    Reply(250, "2.1.5", "Ok");
    return;
  }
  if (recipients_.size() >= policy_.limits.max_recipients) {
    // RFC 5321 §4.5.3.1.10: the client sends the rest in another transaction. Not an error.
    Reply(452, "4.5.3", "Too many recipients");
    return;
  }
  if (account_.has_value()) {
    if (std::optional<mail::Reply> refusal =
            host_.CheckAccountRecipients(account_->name, recipients_.size() + 1)) {
      Reply(*refusal);  // 452 4.5.3, like max_recipients: not an error
      return;
    }
  }
  // Mail for a domain that can never receive it is refused now rather than bounced later.
  waiting_ = Waiting::kHost;
  std::weak_ptr<bool> alive = alive_;
  std::string domain = arguments.recipient.domain;
  host_.CheckRecipientDomain(
      std::move(domain), [this, alive, arguments = std::move(arguments)](
                             std::optional<mail::Reply> refusal) mutable {
        if (alive.expired()) return;
        HostWorkDone();
        if (!refusal.has_value()) {
          recipients_.push_back(std::move(arguments));
          Reply(250, "2.1.5", "Ok");
        } else if (refusal->IsPermanent()) {
          RefuseWith(*refusal);
        } else {
          Reply(*refusal);
        }
        Process();
      });
}

void Session::HandleData(const Command& command) {
  if (!command.argument.empty()) {
    Refuse(501, "5.5.4", "Syntax: DATA");
    return;
  }
  if (!in_transaction_) {
    Refuse(503, "5.5.1", "Need MAIL and RCPT before DATA");
    return;
  }
  if (recipients_.empty()) {
    Refuse(554, "5.5.1", "No valid recipients");  // RFC 5321 §3.3
    return;
  }
  if (bdat_used_) {
    Refuse(503, "5.5.1", "DATA cannot follow BDAT in one transaction");  // RFC 3030 §3
    return;
  }
  if (CloseIfAccountChanged()) return;
  if (account_.has_value()) {
    // Another session of the account may have used up its quota since MAIL: say so before the
    // client sends the data. The transaction is over either way.
    if (std::optional<mail::Reply> refusal = host_.CheckAccountMessage(account_->name)) {
      Reply(*refusal);
      ResetTransaction();
      return;
    }
  }
  message_.clear();
  data_fault_ = DataFault::kNone;
  data_line_continues_ = false;
  input_state_ = Input::kData;
  Reply(354, "", "End data with <CR><LF>.<CR><LF>");
}

void Session::HandleBdat(const Command& command) {
  // RFC 3030 §3: "BDAT" SP chunk-size [ SP end-marker ]
  std::vector<absl::string_view> words =
      absl::StrSplit(ToAbsl(command.argument), ' ', absl::SkipEmpty());
  uint64_t size = 0;
  bool valid = (words.size() == 1 || words.size() == 2) && words[0].size() <= 20 &&
               std::all_of(words[0].begin(), words[0].end(), absl::ascii_isdigit) &&
               absl::SimpleAtoi(words[0], &size) &&
               (words.size() == 1 || absl::EqualsIgnoreCase(words[1], "LAST"));
  if (!valid) {
    // Without a size the octets that follow cannot be skipped: the framing is lost, and what
    // follows would be read as commands. Nothing to recover (RFC 3030 has no resync): close.
    RefuseAndClose(mail::Reply{501, "5.5.4", "Syntax: BDAT chunk-size [LAST]; closing connection"});
    return;
  }
  // A first chunk, as DATA: not a whole message uploaded for a stale account.
  if (in_transaction_ && !bdat_used_ && CloseIfAccountChanged()) return;
  bdat_last_ = words.size() == 2;
  bdat_remaining_ = size;
  bdat_discard_ = false;
  bdat_refusal_.reset();
  input_state_ = Input::kBdat;
  // The chunk's octets are read whatever the verdict, to keep the framing (RFC 3030 §3).
  if (!in_transaction_ || recipients_.empty()) {
    bdat_discard_ = true;
    bdat_refusal_ = mail::Reply{503, "5.5.1", in_transaction_ ? "No valid recipients"
                                                               : "Need MAIL and RCPT before BDAT"};
    return;
  }
  if (!bdat_used_) {
    bdat_used_ = true;
    message_.clear();
    data_fault_ = DataFault::kNone;
  }
}

void Session::HandleStartTls(const Command& command) {
  if (tls_active_) {
    Refuse(503, "5.5.1", "TLS already active");
    return;
  }
  if (!StartTlsAvailable()) {
    Refuse(502, "5.5.1", "STARTTLS not available");
    return;
  }
  if (!command.argument.empty()) {
    Refuse(501, "5.5.4", "Syntax: STARTTLS");
    return;
  }
  Reply(220, "2.0.0", "Ready to start TLS");
  // RFC 3207 §4.2: forget everything learnt before TLS, and anything the client pipelined
  // after STARTTLS (CVE-2011-0411): the stream discards undelivered input too.
  DropInput();
  ResetTransaction();
  helo_.clear();
  plain_helo_ = false;
  account_.reset();
  waiting_ = Waiting::kTlsHandshake;  // until OnTlsStarted()
  stream_.StartTls();
}

void Session::HandleAuth(const Command& command) {
  if (helo_.empty() || plain_helo_) {
    Refuse(503, "5.5.1", "Send EHLO first");
    return;
  }
  if (account_.has_value()) {
    Refuse(503, "5.5.1", "Already authenticated");  // RFC 4954 §4
    return;
  }
  if (in_transaction_) {
    Refuse(503, "5.5.1", "AUTH is not allowed during a mail transaction");
    return;
  }
  if (!AuthAvailable()) {
    if (StartTlsAvailable()) {
      Refuse(538, "5.7.11", "Encryption required for requested authentication mechanism");
    } else {
      Refuse(503, "5.5.1", "AUTH not available on this listener");
    }
    return;
  }
  std::vector<absl::string_view> words =
      absl::StrSplit(ToAbsl(command.argument), ' ', absl::SkipEmpty());
  if (words.empty() || words.size() > 2) {
    Refuse(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]");
    return;
  }
  std::string mechanism = absl::AsciiStrToUpper(words[0]);
  if (mechanism == "PLAIN") {
    if (words.size() == 1) {
      input_state_ = Input::kAuthPlain;
      // RFC 4954 §4: "334" SP [base64]; an empty challenge still carries the space.
      stream_.Write("334 \r\n");
      host_.OnReplySent(334);
    } else {
      HandleAuthResponse(ToStd(words[1]));  // treated as the response to an empty challenge
    }
    return;
  }
  if (mechanism == "LOGIN") {
    if (words.size() == 1) {
      input_state_ = Input::kAuthLoginUser;
      Reply(334, "", "VXNlcm5hbWU6");  // "Username:"
    } else {
      input_state_ = Input::kAuthLoginUser;
      HandleAuthResponse(ToStd(words[1]));
    }
    return;
  }
  Refuse(504, "5.5.4", "Unrecognized authentication type");
}

void Session::HandleAuthResponse(std::string_view line) {
  const Input state = input_state_;
  input_state_ = Input::kCommand;
  if (line == "*") {  // RFC 4954 §4: the client cancels
    auth_login_user_.clear();
    Refuse(501, "5.0.0", "Authentication aborted");
    return;
  }
  std::string decoded;
  if (line != "=" && !absl::Base64Unescape(ToAbsl(line), &decoded)) {
    auth_login_user_.clear();
    Refuse(501, "5.5.2", "Cannot decode the response as base64");
    return;
  }
  switch (state) {
    case Input::kAuthLoginUser:
      auth_login_user_ = std::move(decoded);
      input_state_ = Input::kAuthLoginPassword;
      Reply(334, "", "UGFzc3dvcmQ6");  // "Password:"
      return;
    case Input::kAuthLoginPassword:
      StartAuthentication("", std::exchange(auth_login_user_, {}), std::move(decoded));
      return;
    default: {
      // RFC 4616 §2: [authzid] NUL authcid NUL passwd
      std::vector<std::string> parts = absl::StrSplit(decoded, absl::ByChar('\0'));
      if (parts.size() != 3 || parts[1].empty()) {
        Refuse(501, "5.5.2", "Malformed PLAIN response");
        return;
      }
      StartAuthentication(std::move(parts[0]), std::move(parts[1]), std::move(parts[2]));
      return;
    }
  }
}

std::string Session::ClientAddress() const {
  return stream_.peer().ip_text.empty() ? stream_.peer().text : stream_.peer().ip_text;
}

void Session::LogAuthFailure(std::string_view account, std::string_view why) const {
  // One line per failure, with the bare address, for fail2ban and the like.
  Log(LogLevel::kWarning, "%s: authentication failed for account '%s' from %s%s",
      policy_.listener_name, Printable(account), ClientAddress(), ToAbsl(why));
}

void Session::StartAuthentication(std::string authzid, std::string account,
                                  std::string password) {
  if (!authzid.empty() && authzid != account) {
    // Acting for another identity is not something accounts may do here.
    LogAuthFailure(account, " (asked to act as another identity)");
    host_.OnAuthFailure();
    Refuse(535, "5.7.8", "Authentication credentials invalid");
    return;
  }
  waiting_ = Waiting::kHost;
  std::weak_ptr<bool> alive = alive_;
  std::string tried = account;  // for the log: the name, never the password
  host_.Authenticate(
      std::move(account), std::move(password),
      [this, alive, tried = std::move(tried)](absl::StatusOr<AuthenticatedAccount> result) {
        if (alive.expired()) return;
        HostWorkDone();
        if (result.ok()) {
          account_ = *std::move(result);
          Reply(235, "2.7.0", "Authentication successful");
        } else if (absl::IsUnavailable(result.status())) {
          Reply(454, "4.7.0", "Temporary authentication failure, try again later");
        } else if (absl::IsResourceExhausted(result.status())) {
          LogAuthFailure(tried, " (address locked out after too many failures)");
          host_.OnAuthFailure();
          Refuse(454, "4.7.0", "Too many failed authentications from your address; try later");
        } else {
          LogAuthFailure(tried, "");
          host_.OnAuthFailure();
          Refuse(535, "5.7.8", "Authentication credentials invalid");  // RFC 4954 §6
        }
        Process();
      });
}

// ---------------------------------------------------------------------------------------------
// Message data

bool Session::ConsumeDataLines() {
  const std::string_view unread = Unread();
  size_t position = 0;
  bool finished = false;
  while (true) {
    size_t lf = unread.find('\n', position);
    if (lf == std::string_view::npos) {
      size_t partial = unread.size() - position;
      if (partial > kMaxPartialDataLine) {
        // An endless line: refused at the end anyway, so drop it now, keeping its last byte (a
        // CR that the next LF may complete). A CR before that is a bare CR.
        std::string_view dropped = unread.substr(position, partial - 1);
        if (dropped.find('\r') != std::string_view::npos) {
          host_.OnMessageRefused();
          Reply(521, "5.5.2", kBareCrText);
          Close();
          return false;
        }
        data_fault_ = data_fault_ == DataFault::kTooBig ? data_fault_ : DataFault::kLineTooLong;
        data_line_continues_ = true;
        position = unread.size() - 1;
      }
      break;
    }
    std::string_view line = unread.substr(position, lf - position);
    const size_t wire_length = lf - position + 1;
    position = lf + 1;
    // RFC 5321 §2.3.8: lines end with CRLF; a bare LF or CR is never a line end here, so that
    // "<LF>.<LF>" or "<CR>.<CR>" cannot end the data (SMTP smuggling, CVE-2023-51764).
    if (line.empty() || line.back() != '\r') {
      host_.OnMessageRefused();
      Reply(521, "5.5.2", kBareLfText);
      Close();
      return false;
    }
    line.remove_suffix(1);
    if (line.find('\r') != std::string_view::npos) {
      host_.OnMessageRefused();
      Reply(521, "5.5.2", kBareCrText);
      Close();
      return false;
    }
    if (data_line_continues_) {
      // The end of a line whose start was dropped: too long already, and no "." of its own.
      data_line_continues_ = false;
      continue;
    }
    if (line == ".") {
      finished = true;
      break;
    }
    if (!line.empty() && line.front() == '.') line.remove_prefix(1);  // RFC 5321 §4.5.2
    if (wire_length > mail::kMaxTextLine && data_fault_ == DataFault::kNone) {
      data_fault_ = DataFault::kLineTooLong;  // RFC 5321 §4.5.3.1.6
    }
    AppendMessageBytes(line);
    AppendMessageBytes("\r\n");
  }
  ConsumeInput(position);
  return finished;
}

bool Session::ConsumeBdatOctets() {
  const std::string_view unread = Unread();
  size_t take = static_cast<size_t>(std::min<uint64_t>(bdat_remaining_, unread.size()));
  if (!bdat_discard_) AppendMessageBytes(unread.substr(0, take));
  ConsumeInput(take);
  bdat_remaining_ -= take;
  if (bdat_remaining_ > 0) return false;
  if (!bdat_discard_ && data_fault_ == DataFault::kTooBig && !bdat_last_) {
    // Refuse now: the client need not send the rest (RFC 3030 §3: the transaction failed).
    bdat_refusal_ = mail::Reply{552, "5.3.4", "Message size exceeds fixed maximum message size"};
    ResetTransaction();
  }
  return true;
}

void Session::AppendMessageBytes(std::string_view bytes) {
  if (data_fault_ == DataFault::kTooBig) return;
  if (message_.size() + bytes.size() > policy_.limits.max_message_size) {
    data_fault_ = DataFault::kTooBig;
    std::string().swap(message_);  // release the memory now
    return;
  }
  message_.append(bytes);
}

std::optional<mail::Reply> Session::CheckMessage(const mail::HeaderSection& section) const {
  if (!account_.has_value()) return std::nullopt;
  // RFC 6409 §6.1 leaves the check to the MSA: an authenticated account may only send as the
  // addresses it owns, in the envelope (checked at MAIL) and in the header fields that mail
  // readers show as who sent it: From:, Sender: ("X on behalf of Y", RFC 5322 §3.6.2), and the
  // newest resent block's Resent-From:/Resent-Sender: (§3.6.6). Resent blocks are prepended,
  // so the first Resent-From: is the newest block's; the block ends where a second Resent-From:
  // or Resent-Date: (each block has one of each) begins an older one, which stays as other
  // senders left it. From: is checked even in a resent message.
  const mail::HeaderField* from = nullptr;
  const mail::HeaderField* sender = nullptr;
  const mail::HeaderField* resent_from = nullptr;
  const mail::HeaderField* resent_sender = nullptr;
  int from_count = 0;
  int sender_count = 0;
  int resent_from_count = 0;
  int resent_date_count = 0;
  bool newest_resent_block_ended = false;
  for (const mail::HeaderField& field : section.fields) {
    const absl::string_view name = ToAbsl(field.name);
    if (absl::EqualsIgnoreCase(name, "From")) {
      ++from_count;
      from = &field;
    } else if (absl::EqualsIgnoreCase(name, "Sender")) {
      ++sender_count;
      sender = &field;
    } else if (absl::EqualsIgnoreCase(name, "Resent-From")) {
      if (++resent_from_count == 1) resent_from = &field;
      newest_resent_block_ended |= resent_from_count > 1;
    } else if (absl::EqualsIgnoreCase(name, "Resent-Date")) {
      newest_resent_block_ended |= ++resent_date_count > 1;
    } else if (absl::EqualsIgnoreCase(name, "Resent-Sender")) {
      if (!newest_resent_block_ended && resent_sender == nullptr) resent_sender = &field;
    }
  }
  if (from_count == 0) {
    return mail::Reply{553, "5.7.1",
                       "The message has no From: header; say which of your addresses sends it"};
  }
  // RFC 5322 §3.6: at most one From: and one Sender:.
  if (from_count > 1) {
    return mail::Reply{553, "5.7.1", "The message has more than one From: header"};
  }
  if (sender_count > 1) {
    return mail::Reply{553, "5.7.1", "The message has more than one Sender: header"};
  }
  const std::pair<const mail::HeaderField*, absl::string_view> checked[] = {
      {from, "From"},
      {sender, "Sender"},
      {resent_from, "Resent-From"},
      {resent_sender, "Resent-Sender"}};
  for (const auto& [field, label] : checked) {
    if (field == nullptr) continue;
    absl::StatusOr<std::vector<mail::Mailbox>> mailboxes =
        mail::ParseAddressList(mail::UnfoldedValue(*field));
    if (!mailboxes.ok()) {
      return mail::Reply{553, "5.7.1",
                         absl::StrCat("The ", label, ": header cannot be read as an address list: ",
                                      mailboxes.status().message())};
    }
    for (const mail::Mailbox& mailbox : *mailboxes) {
      if (!policy::MaySendAs(account_->grants, mailbox)) {
        return mail::Reply{553, "5.7.1",
                           absl::StrCat(label, ": header: ",
                                        policy::SenderRefusal(account_->name, mailbox))};
      }
    }
  }
  return std::nullopt;
}

std::string Session::ReceivedHeader(const MessageId& id) const {
  // RFC 5321 §4.4 trace field. The address is the one we saw, never a name the client chose.
  const io::PeerInfo& peer = stream_.peer();
  std::string from_clause;
  if (peer.is_unix) {
    // The user is what Postfix's "(from userid N)" gives: the socket asks for no AUTH.
    from_clause = absl::StrCat(helo_.empty() ? "localhost" : helo_, " (local socket",
                               peer.unix_uid >= 0 ? absl::StrCat(", uid ", peer.unix_uid) : "",
                               ")");
  } else {
    bool v6 = peer.address_length == 16;
    from_clause = absl::StrCat(helo_.empty() ? "unknown" : helo_, " ([", v6 ? "IPv6:" : "",
                               peer.ip_text, "])");
  }
  std::string for_clause;
  if (recipients_.size() == 1) {  // more would disclose the other recipients
    for_clause = absl::StrCat("\r\n\tfor <", recipients_.front().recipient.ToString(), ">");
  }
  return absl::StrCat("Received: from ", from_clause, "\r\n\tby ", policy_.hostname,
                      " (facteur) with ", Protocol(), " id ", id.ToString(), for_clause, ";\r\n\t",
                      mail::FormatRfc5322Date(host_.clock().Now()), "\r\n");
}

void Session::FinishMessage() {
  input_state_ = Input::kCommand;
  if (data_fault_ != DataFault::kNone) host_.OnMessageRefused();
  if (data_fault_ == DataFault::kTooBig) {
    Refuse(552, "5.3.4", "Message size exceeds fixed maximum message size");  // RFC 1870 §6.2
    ResetTransaction();
    return;
  }
  if (data_fault_ == DataFault::kLineTooLong) {
    Refuse(500, "5.5.6", kLineTooLongText);
    ResetTransaction();
    return;
  }
  if (bdat_used_) {
    // Chunks carry raw octets: hold them to the same line rules as DATA so that what we relay
    // is plain RFC 5322 text.
    if (!message_.empty() && !absl::EndsWith(message_, "\r\n")) message_.append("\r\n");
    size_t start = 0;
    while (start < message_.size()) {
      size_t lf = message_.find('\n', start);
      std::string_view line(message_.data() + start, lf - start);
      if (line.empty() || line.back() != '\r' ||
          line.substr(0, line.size() - 1).find('\r') != std::string_view::npos) {
        host_.OnMessageRefused();
        Refuse(550, "5.6.0", "Message contains a bare <CR> or <LF>; use CRLF line endings");
        ResetTransaction();
        return;
      }
      if (line.size() + 1 > mail::kMaxTextLine) {
        host_.OnMessageRefused();
        Refuse(500, "5.5.6", kLineTooLongText);
        ResetTransaction();
        return;
      }
      start = lf + 1;
    }
  }
  // Read once (twice when a Bcc: goes): for the From: check and where Date:/Message-ID: go.
  mail::HeaderSection section = mail::ParseHeaderSection(message_);
  // RFC 5322 §3.6.3: no recipient may see the Bcc: recipients. Dropped whoever left it in (a
  // mail client, `sendmail -t`), as Postfix's cleanup does (message_drop_headers).
  if (mail::RemoveFields(message_, section, {"Bcc", "Resent-Bcc"})) {
    section = mail::ParseHeaderSection(message_);
  }
  // Before the From: check, which reads the grants of AUTH time.
  if (CloseIfAccountChanged()) {
    host_.OnMessageRefused();
    return;
  }
  if (std::optional<mail::Reply> refusal = CheckMessage(section)) {
    Log(LogLevel::kWarning, "%s: message refused (%d) for account '%s' from %s: %s",
        policy_.listener_name, refusal->code, Printable(account_->name), ClientAddress(),
        absl::CHexEscape(ToAbsl(refusal->text)));
    host_.OnMessageRefused();
    RefuseWith(*refusal);
    ResetTransaction();
    return;
  }

  const absl::Time now = host_.clock().Now();
  const std::string account = account_.has_value() ? account_->name : "";
  if (!account.empty()) {
    // Counted now, against every session of the account, so that concurrent sessions cannot
    // overshoot the quota; the host gives it back if the queue then fails.
    if (std::optional<mail::Reply> refusal = host_.AdmitAccountMessage(account, now)) {
      host_.OnMessageRefused();
      Reply(*refusal);
      ResetTransaction();
      return;
    }
  }
  const MessageId id = MessageId::Generate(now);
  // RFC 6409 §8.2-8.3: the MSA adds Date: and Message-ID: when the client left them out.
  std::string added;
  if (!mail::FindField(section, "Date").has_value()) {
    absl::StrAppend(&added, "Date: ", mail::FormatRfc5322Date(now), "\r\n");
  }
  if (!mail::FindField(section, "Message-ID").has_value()) {
    absl::StrAppend(&added, "Message-ID: <", id.ToString(), "@", policy_.hostname, ">\r\n");
  }
  std::string final_message = ReceivedHeader(id);
  final_message.reserve(final_message.size() + message_.size() + added.size() + 2);
  if (added.empty()) {
    final_message.append(message_);
  } else {
    bool needs_separator = false;
    size_t at = mail::HeaderInsertPosition(message_, section, &needs_separator);
    final_message.append(message_, 0, at);
    final_message.append(added);
    if (needs_separator) final_message.append("\r\n");
    final_message.append(message_, at, std::string::npos);
  }

  queue::Envelope envelope;
  envelope.id = id;
  envelope.sender = mail_from_.sender.has_value() ? mail_from_.sender->ToString() : "";
  for (const mail::RcptToArguments& r : recipients_) {
    envelope.recipients.push_back(queue::RecipientRecord{
        r.recipient.ToString(), queue::RecipientState::kPending, r.notify, r.orcpt, "", 0, ""});
  }
  envelope.listener = policy_.listener_name;
  envelope.account = account;
  envelope.client = stream_.peer().text;
  envelope.received_at = now;
  // RFC 6531 §3.2: SMTPUTF8 is asked of the next server only for mail that may need it. A
  // client may ask for it on all-ASCII mail; that mail (and its DSN) then also goes to servers
  // without SMTPUTF8, instead of bouncing with 5.6.7. Any octet outside ASCII keeps it: UTF-8
  // header fields may sit at any MIME level, and no MIME walk is made here.
  envelope.smtputf8 =
      mail_from_.smtputf8 &&
      (mail::HasNonAscii(envelope.sender) || mail::HasNonAscii(message_) ||
       std::any_of(envelope.recipients.begin(), envelope.recipients.end(),
                   [](const queue::RecipientRecord& r) { return mail::HasNonAscii(r.address); }));
  envelope.eight_bit = mail_from_.body != mail::BodyType::k7Bit;
  envelope.dsn_ret = mail_from_.ret;
  envelope.dsn_envid = mail_from_.envid;
  envelope.next_attempt = now;
  const size_t size = final_message.size();
  const metrics::AccountClass account_class = ClientClass();
  ResetTransaction();

  waiting_ = Waiting::kHost;
  std::weak_ptr<bool> alive = alive_;
  host_.Enqueue(std::move(envelope), std::move(final_message),
                [this, alive, id, size, now, account_class](absl::Status status) {
                  if (alive.expired()) return;  // queued all the same; the client left early
                  HostWorkDone();
                  if (status.ok()) {
                    Reply(250, "2.0.0", absl::StrCat("Ok: queued as ", id.ToString()));
                    host_.OnMessageAccepted(size, host_.clock().Now() - now);
                    host_.OnMessageReceived(account_class);
                  } else if (host_.OnMessageRefused(); absl::IsResourceExhausted(status)) {
                    Log(LogLevel::kError, "queueing failed: %s", status.ToString());
                    Reply(452, "4.3.1", "Insufficient system storage");  // RFC 3463
                  } else {
                    Log(LogLevel::kError, "queueing failed: %s", status.ToString());
                    Reply(451, "4.3.0", "Temporary queue failure, try again later");
                  }
                  Process();
                });
}

// ---------------------------------------------------------------------------------------------
// Replies and state

void Session::Reply(const mail::Reply& reply) {
  if (closed_) return;
  stream_.Write(reply.Format(/*with_enhanced=*/!plain_helo_));
  host_.OnReplySent(reply.code);
}

void Session::Reply(int code, std::string_view enhanced, std::string_view text) {
  Reply(mail::Reply{code, std::string(enhanced), std::string(text)});
}

void Session::Refuse(int code, std::string_view enhanced, std::string_view text) {
  RefuseWith(mail::Reply{code, std::string(enhanced), std::string(text)});
}

void Session::RefuseWith(const mail::Reply& reply) {
  Reply(reply);
  if (++errors_ >= policy_.limits.max_errors) {
    Reply(421, "4.7.0", absl::StrCat(policy_.hostname, " Too many errors, closing connection"));
    Close();
  }
}

void Session::ResetTransaction() {
  in_transaction_ = false;
  mail_from_ = mail::MailFromArguments();
  recipients_.clear();
  if (message_.capacity() > 1024 * 1024) {
    std::string().swap(message_);
  } else {
    message_.clear();
  }
  data_fault_ = DataFault::kNone;
  bdat_used_ = false;
  bdat_last_ = false;
}

bool Session::CloseIfAccountChanged() {
  if (!account_.has_value() || !host_.AccountChanged(*account_)) return false;
  // A suspended or deleted account must stop sending now, not when the client hangs up; a
  // new password or grant is taken at the next AUTH.
  ResetTransaction();
  RefuseAndClose(mail::Reply{
      421, "4.7.0",
      absl::StrCat(policy_.hostname, " Account '", account_->name,
                   "' changed since you authenticated; closing connection")});
  return true;
}

void Session::Close() {
  if (closed_) return;
  closed_ = true;
  stream_.Close();
}

bool Session::ClientMayRelay() const {
  if (account_.has_value() || policy_.is_unix) return true;
  return policy_.role == config::ListenerRole::kRelay &&
         PeerIsTrusted(stream_.peer(), policy_.trusted_networks);
}

metrics::AccountClass Session::ClientClass() const {
  if (account_.has_value()) return metrics::AccountClass::kAuthenticated;
  if (policy_.is_unix) return metrics::AccountClass::kLocal;
  // Otherwise RCPT TO was allowed by ClientMayRelay(): a relay listener's trusted network.
  return metrics::AccountClass::kTrusted;
}

bool Session::AuthAvailable() const {
  // RFC 4954 §4: no password in the clear; the Unix socket never leaves the machine.
  return tls_active_ || policy_.is_unix;
}

bool Session::StartTlsAvailable() const {
  return policy_.tls_mode == config::TlsMode::kStartTls && !tls_active_ && !policy_.is_unix;
}

const char* Session::Protocol() const {
  if (plain_helo_) return "SMTP";
  const bool utf8 = mail_from_.smtputf8;
  if (tls_active_ && account_.has_value()) return utf8 ? "UTF8SMTPSA" : "ESMTPSA";
  if (tls_active_) return utf8 ? "UTF8SMTPS" : "ESMTPS";
  if (account_.has_value()) return utf8 ? "UTF8SMTPA" : "ESMTPA";
  return utf8 ? "UTF8SMTP" : "ESMTP";
}

}  // namespace facteur::smtp
