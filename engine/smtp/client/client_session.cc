// File: engine/smtp/client/client_session.cc
// The client side of RFC 5321 as a state machine driven by stream callbacks (see the header),
// and the reply parser it reads with. The rule that keeps the owner simple: an Owner callback
// runs only from a stream callback (OnData, OnClosed), never from Send() or Quit(); what those
// two decide is written to the stream and reported when the server, or the stream, answers —
// the same rule engine/io/connection.cc keeps for its handlers.
// Thread contract: shard-confined.
#include "engine/smtp/client/client_session.h"

#include <algorithm>
#include <cstdlib>
#include <deque>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/base/log.h"
#include "engine/base/status.h"
#include "engine/mail/text.h"

namespace facteur::smtp {
namespace {

// RFC 5321 §4.5.3.1.5 allows 512 octets per reply line; servers write longer ones, so the cap
// is generous but bounded.
constexpr size_t kMaxReplyLine = 4096;
// A multiline reply (an EHLO answer, a long refusal) is never near this.
constexpr size_t kMaxReplyOctets = 64 * 1024;

// RFC 3463 §2: class "." subject "." detail, subject and detail of 1-3 digits, the class being
// the reply code's first digit (2, 4 or 5). The length of such a code at the start of `text`
// when a space or the end of the line follows it, else 0.
size_t EnhancedCodeLength(std::string_view text, int reply_class) {
  if (reply_class != 2 && reply_class != 4 && reply_class != 5) return 0;
  if (text.size() < 5 || text[0] != '0' + reply_class || text[1] != '.') return 0;
  size_t i = 2;
  for (int part = 0; part < 2; ++part) {
    size_t digits = 0;
    while (i < text.size() && mail::IsAsciiDigit(static_cast<unsigned char>(text[i])) &&
           digits <= 3) {
      ++i;
      ++digits;
    }
    if (digits == 0 || digits > 3) return 0;
    if (part == 0) {
      if (i >= text.size() || text[i] != '.') return 0;
      ++i;
    }
  }
  if (i < text.size() && text[i] != ' ') return 0;
  return i;
}

// A reply on one line, for the text of an outcome we make from it.
std::string OneLine(const mail::Reply& reply) {
  std::string out = absl::StrCat(reply.code);
  if (!reply.enhanced.empty()) absl::StrAppend(&out, " ", reply.enhanced);
  if (!reply.text.empty()) {
    out += ' ';
    for (char c : reply.text) out += c == '\n' ? ' ' : c;
  }
  return out;
}

// Can go between the angle brackets of MAIL FROM / RCPT TO: no control octet could end the
// command early or smuggle another one (the queue validated it; this is the last line).
bool WritableAddress(std::string_view address) {
  for (char c : address) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f || c == '<' || c == '>') return false;
  }
  return true;
}

// An ESMTP parameter value (RFC 5321 §4.1.2 esmtp-value, RFC 3461 xtext): printable ASCII
// without '=' or space.
bool WritableParameter(std::string_view value) {
  if (value.empty()) return false;
  for (char c : value) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f || c == '=') return false;
  }
  return true;
}

// RFC 5321 §4.1.1.1: the EHLO reply's first line is the server's name and greeting; each
// following line is a keyword and its parameters (RFC 1869 §4.3).
ServerCapabilities ParseCapabilities(const mail::Reply& reply) {
  ServerCapabilities caps;
  caps.esmtp = true;
  std::string_view rest = reply.text;
  bool first = true;
  while (true) {
    const size_t newline = rest.find('\n');
    std::string_view line = rest.substr(0, newline);
    if (!first) {
      const size_t space = line.find(' ');
      const std::string keyword = mail::UpperAscii(line.substr(0, space));
      std::string_view parameters =
          space == std::string_view::npos ? std::string_view() : line.substr(space + 1);
      if (keyword == "PIPELINING") caps.pipelining = true;
      else if (keyword == "STARTTLS") caps.starttls = true;
      else if (keyword == "8BITMIME") caps.eight_bit_mime = true;
      else if (keyword == "SMTPUTF8") caps.smtputf8 = true;
      else if (keyword == "DSN") caps.dsn = true;
      else if (keyword == "CHUNKING") caps.chunking = true;
      else if (keyword == "SIZE") {
        caps.size = true;
        uint64_t limit = 0;
        // RFC 1870 §4: "SIZE 0" or a bare SIZE announces no fixed limit.
        while (!parameters.empty() && parameters.front() == ' ') parameters.remove_prefix(1);
        if (absl::SimpleAtoi(ToAbsl(parameters), &limit)) caps.size_limit = limit;
      }
    }
    first = false;
    if (newline == std::string_view::npos) break;
    rest.remove_prefix(newline + 1);
  }
  return caps;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// ReplyParser

void ReplyParser::Feed(std::string_view bytes, std::vector<mail::Reply>& out) {
  if (error_) return;
  buffer_.append(bytes);
  size_t start = 0;
  while (!error_) {
    const size_t newline = buffer_.find('\n', start);
    if (newline == std::string::npos) {
      // No end yet: a line that can no longer fit the cap (its CR still to come) is refused
      // now rather than buffered without bound.
      if (buffer_.size() - start > kMaxReplyLine + 1) error_ = true;
      break;
    }
    std::string_view line(buffer_.data() + start, newline - start);
    start = newline + 1;
    // RFC 5321 §2.3.8 wants CRLF; a bare LF is read as a line end too, as Postfix does.
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    ParseLine(line, out);
  }
  if (error_) {
    buffer_.clear();
    lines_.clear();
    return;
  }
  buffer_.erase(0, start);
}

void ReplyParser::ParseLine(std::string_view line, std::vector<mail::Reply>& out) {
  // RFC 5321 §4.2: Reply-line = *( Reply-code "-" [ textstring ] CRLF )
  //                             Reply-code [ SP textstring ] CRLF
  // with the first digit 2-5 (§4.2.1; 1yz is not used by SMTP).
  if (line.size() > kMaxReplyLine || line.size() < 3 || line[0] < '2' || line[0] > '5' ||
      !mail::IsAsciiDigit(static_cast<unsigned char>(line[1])) ||
      !mail::IsAsciiDigit(static_cast<unsigned char>(line[2]))) {
    error_ = true;
    return;
  }
  const int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
  bool last = true;
  if (line.size() > 3) {
    if (line[3] == '-') {
      last = false;
    } else if (line[3] != ' ') {
      error_ = true;
      return;
    }
  }
  // §4.2.1: every line of a multiline reply carries the same code.
  if (!lines_.empty() && code != code_) {
    error_ = true;
    return;
  }
  code_ = code;
  const std::string_view text = line.size() > 4 ? line.substr(4) : std::string_view();
  octets_ += text.size() + 1;
  if (octets_ > kMaxReplyOctets) {
    error_ = true;
    return;
  }
  std::string clean(text);
  for (char& c : clean) {
    const auto u = static_cast<unsigned char>(c);
    if ((u < 0x20 && c != '\t') || u == 0x7f) c = '?';
  }
  lines_.push_back(std::move(clean));
  if (!last) return;

  mail::Reply reply;
  reply.code = code_;
  // RFC 2034 §3 puts the enhanced code on every line; servers that put it on one line put it
  // on the last (read there by Postfix) or the first.
  size_t length = EnhancedCodeLength(lines_.back(), code_ / 100);
  if (length > 0) {
    reply.enhanced = lines_.back().substr(0, length);
  } else if ((length = EnhancedCodeLength(lines_.front(), code_ / 100)) > 0) {
    reply.enhanced = lines_.front().substr(0, length);
  }
  for (size_t i = 0; i < lines_.size(); ++i) {
    std::string_view text_line = lines_[i];
    if (!reply.enhanced.empty() && absl::StartsWith(ToAbsl(text_line), reply.enhanced) &&
        (text_line.size() == length || text_line[length] == ' ')) {
      text_line.remove_prefix(std::min(text_line.size(), length + 1));
    }
    if (i > 0) reply.text += '\n';
    reply.text.append(text_line);
  }
  out.push_back(std::move(reply));
  lines_.clear();
  octets_ = 0;
}

// ---------------------------------------------------------------------------------------------
// ClientSession::State

class ClientSession::State {
 public:
  explicit State(ClientSession& session) : s_(session) {}

  bool ready() const { return phase_ == Phase::kReady; }

  // RFC 2920 §3.1: message content may open a group, so once the body of the one transaction
  // in progress is written and only the reply to its "." is awaited, the next transaction's
  // commands can follow it in the same write.
  bool accepts_next() const {
    return phase_ == Phase::kTransaction && s_.capabilities_.pipelining &&
           transactions_.size() == 1 && unsent_.empty() && awaiting_.size() == 1 &&
           awaiting_.front().step == Step::kDot;
  }

  void OnStart(const io::TlsInfo* implicit_tls) {
    s_.tls_active_ = implicit_tls != nullptr;
    phase_ = Phase::kGreeting;
    // RFC 5321 §4.5.3.2.5: a send of the body (or of anything) that makes no progress for this
    // long ends the session; the wait for a reply starts once what it answers is sent.
    s_.stream_.SetSendTimeout(timeouts().data_block);
    s_.stream_.SetIdleTimeout(timeouts().greeting);  // RFC 5321 §4.5.3.2.1
  }

  void OnData(std::string_view bytes) {
    if (!ReadsReplies()) return;
    std::vector<mail::Reply> replies;
    parser_.Feed(bytes, replies);
    for (const mail::Reply& reply : replies) {
      // After the 220 to STARTTLS, what followed in the same read is dropped unread: it came
      // before the handshake, so a man in the middle may have put it there (RFC 3207 §4.2,
      // the client side of CVE-2011-0411). Once closing, nothing more matters.
      if (!ReadsReplies()) return;
      HandleReply(reply);
    }
    if (parser_.error() && ReadsReplies()) {
      End(Local(451, "4.5.0", absl::StrCat("malformed reply from ", s_.remote_name_,
                                           " while ", Stage())),
          /*send_quit=*/false);
    }
  }

  void OnTlsStarted() {
    if (phase_ != Phase::kTlsHandshake) return;
    // RFC 3207 §4.2: forget what the server said before TLS and ask again.
    s_.tls_active_ = true;
    s_.capabilities_ = ServerCapabilities();
    parser_ = ReplyParser();
    WriteLine(absl::StrCat("EHLO ", s_.options_.ehlo_name));
    phase_ = Phase::kEhlo;
    s_.stream_.SetIdleTimeout(timeouts().command);
  }

  void OnTlsFailed(std::string_view reason) {
    if (phase_ == Phase::kClosing || phase_ == Phase::kClosed) return;
    NoteEndingPhase();
    // The stream is closing by itself (OnClosed follows); whatever the policy, this connection
    // is spent. TlsPolicy says why the opportunistic case ends here too.
    mail::DeliveryOutcome why = Local(
        451, "4.7.5",
        absl::StrCat("TLS handshake with ", s_.remote_name_, " failed: ", ToAbsl(reason)));
    FailOpenRecipients(why);
    end_ = std::move(why);
    phase_ = Phase::kClosing;
    awaiting_.clear();
    unsent_.clear();
  }

  void OnIdleTimeout() {
    if (phase_ == Phase::kClosing || phase_ == Phase::kClosed) return;
    End(Local(451, "4.4.2",
              absl::StrCat("timeout talking to ", s_.remote_name_, " while ", Stage())),
        /*send_quit=*/false);
  }

  void OnClosed() {
    mail::DeliveryOutcome why;
    if (end_.has_value()) {
      why = *end_;
    } else {
      if (phase_ == Phase::kQuit) {
        // Some servers close without answering QUIT: nothing was lost.
        why = Local(221, "2.0.0",
                    absl::StrCat(s_.remote_name_, " closed the connection after QUIT"));
      } else {
        NoteEndingPhase();
        why = Local(451, "4.4.2",
                    absl::StrCat("lost connection with ", s_.remote_name_, " while ", Stage()));
      }
      FailOpenRecipients(why);
    }
    phase_ = Phase::kClosed;
    awaiting_.clear();
    unsent_.clear();
    // A loop: an owner that calls Send() from the last OnTransactionDone here (none is left
    // in progress then) gets that message reported too.
    while (!transactions_.empty()) {
      FailOpenRecipients(why);
      s_.owner_.OnTransactionDone(s_, TakeResult());
    }
    s_.owner_.OnSessionEnded(s_, why);
  }

  void Send(const OutboundMessage& message) {
    const bool between = transactions_.empty() &&
                         (phase_ == Phase::kReady || phase_ == Phase::kQuit ||
                          phase_ == Phase::kClosing || phase_ == Phase::kClosed);
    if (!between && !accepts_next()) {
      Log(LogLevel::kError, "smtp client %s: Send() while the session is not ready",
          s_.remote_name_);
      std::abort();  // an owner bug: a transaction not yet at its end of data, or before OnReady
    }
    ++s_.transactions_;
    Transaction& t = transactions_.emplace_back();
    t.number = s_.transactions_;
    t.body = message.body;
    const size_t count = message.recipients.size();
    t.outcomes.resize(count);
    t.rcpt_accepted.assign(count, false);
    if (phase_ != Phase::kReady && phase_ != Phase::kTransaction) {
      // Closing: the message goes nowhere; OnClosed reports it.
      SetAll(t, Local(451, "4.3.0", absl::StrCat("the session with ", s_.remote_name_,
                                                 " was closing"), mail::OutcomeScope::kSession));
      return;
    }

    const ServerCapabilities& caps = s_.capabilities_;
    if (!WritableAddress(message.sender)) {
      SetAll(t, Local(501, "5.1.7", "the sender address cannot be written in MAIL FROM",
                      mail::OutcomeScope::kMessage));
    } else if (message.smtputf8 && !caps.smtputf8) {
      // RFC 6531 §3.2: a message that needs SMTPUTF8 is not sent to a server without it.
      SetAll(t, Local(550, "5.6.7",
                      absl::StrCat("SMTPUTF8 is required, but was not offered by host ",
                                   s_.remote_name_),
                      mail::OutcomeScope::kMessage));
    } else {
      for (size_t i = 0; i < count; ++i) {
        if (!WritableAddress(message.recipients[i].address)) {
          t.outcomes[i] = Local(501, "5.1.3", "the recipient address cannot be written in RCPT TO",
                                mail::OutcomeScope::kRecipient);
        }
      }
    }
    bool any_open = false;
    for (const auto& outcome : t.outcomes) any_open = any_open || !outcome.has_value();

    std::deque<Command> commands;
    // After a transaction that ended before its data, RSET (RFC 5321 §4.1.1.5). When nothing
    // is left to ask, RSET is the round trip that reports the local outcomes from OnData.
    if (rset_needed_ || !any_open) commands.push_back({Step::kRset, 0, "RSET"});
    if (any_open) {
      const size_t size = t.body ? t.body->size() : 0;
      std::string mail = absl::StrCat("MAIL FROM:<", message.sender, ">");
      if (caps.size) absl::StrAppend(&mail, " SIZE=", size);  // RFC 1870 §6
      if (message.eight_bit && caps.eight_bit_mime) mail += " BODY=8BITMIME";  // RFC 6152
      if (message.smtputf8) mail += " SMTPUTF8";  // RFC 6531 §3.4
      if (caps.dsn) {  // RFC 3461 §4.3, §4.4
        if (WritableParameter(message.dsn_ret)) absl::StrAppend(&mail, " RET=", message.dsn_ret);
        if (WritableParameter(message.dsn_envid)) {
          absl::StrAppend(&mail, " ENVID=", message.dsn_envid);
        }
      }
      commands.push_back({Step::kMail, 0, std::move(mail)});
      for (size_t i = 0; i < count; ++i) {
        if (t.outcomes[i].has_value()) continue;
        const OutboundRecipient& r = message.recipients[i];
        std::string rcpt = absl::StrCat("RCPT TO:<", r.address, ">");
        if (caps.dsn) {  // RFC 3461 §4.1, §4.2
          if (WritableParameter(r.notify)) absl::StrAppend(&rcpt, " NOTIFY=", r.notify);
          if (WritableParameter(r.orcpt)) absl::StrAppend(&rcpt, " ORCPT=", r.orcpt);
        }
        commands.push_back({Step::kRcpt, i, std::move(rcpt)});
      }
      commands.push_back({Step::kData, 0, "DATA"});
    }

    phase_ = Phase::kTransaction;
    for (Command& command : commands) command.transaction = t.number;
    if (caps.pipelining) {
      // RFC 2920 §3.1: RSET, MAIL, every RCPT and DATA in one group, one write (after the
      // previous message's end of data, when it is still out); the body waits for the 354.
      Write(commands);
    } else {
      unsent_ = std::move(commands);
      Continue();
    }
  }

  void Quit() {
    switch (phase_) {
      case Phase::kReady:
        WriteLine("QUIT");
        phase_ = Phase::kQuit;
        s_.stream_.SetIdleTimeout(timeouts().command);
        break;
      case Phase::kGreeting:
      case Phase::kEhlo:
      case Phase::kHelo:
      case Phase::kStartTls:
      case Phase::kTlsHandshake:
        End(Local(221, "2.0.0", "closed by us before the session was ready"),
            /*send_quit=*/false);
        break;
      case Phase::kTransaction:
        // What the server has answered nothing of (a message pipelined behind an end of data
        // whose reply just came, say) never got its data, which follows a 354.
        for (Transaction& t : transactions_) t.unanswered = t.unanswered || !t.answered;
        End(Local(451, "4.3.0",
                  absl::StrCat("delivery interrupted: the session with ", s_.remote_name_,
                               " was closed while ", Stage())),
            /*send_quit=*/false);
        break;
      case Phase::kQuit:
      case Phase::kClosing:
      case Phase::kClosed:
        break;
    }
  }

 private:
  enum class Phase {
    kGreeting,      // waiting for the 220
    kEhlo,          // EHLO sent (first, or again after TLS)
    kHelo,          // EHLO was refused with 5xx: HELO sent
    kStartTls,      // STARTTLS sent
    kTlsHandshake,  // the stream runs the handshake
    kReady,         // between transactions
    kTransaction,   // a message's commands are out
    kQuit,          // QUIT sent
    kClosing,       // Close() called, or the stream closing by itself: OnClosed() follows
    kClosed,
  };
  enum class Step { kRset, kMail, kRcpt, kData, kDot, kLoneDot };
  struct Command {
    Step step;
    size_t recipient = 0;  // kRcpt: index in the message
    std::string line;      // without CRLF; emptied once written
    uint32_t transaction = 0;  // Transaction::number of the one it belongs to
  };
  struct Transaction {
    uint32_t number = 0;  // the session's count of Send() calls when it was made
    std::shared_ptr<const std::string> body;
    std::vector<std::optional<mail::DeliveryOutcome>> outcomes;  // set once decided
    std::vector<bool> rcpt_accepted;
    size_t accepted = 0;
    bool mail_refused = false;
    bool answered = false;    // a reply to one of its commands (not an RSET before it) came
    bool unanswered = false;  // TransactionResult::unanswered
  };

  const ClientTimeouts& timeouts() const { return s_.options_.timeouts; }

  bool ReadsReplies() const {
    return phase_ != Phase::kTlsHandshake && phase_ != Phase::kClosing &&
           phase_ != Phase::kClosed;
  }

  mail::DeliveryOutcome Local(int code, std::string_view enhanced, std::string text,
                              mail::OutcomeScope scope = mail::OutcomeScope::kSession) const {
    mail::DeliveryOutcome outcome;
    outcome.scope = scope;
    outcome.reply.code = code;
    outcome.reply.enhanced = std::string(enhanced);
    outcome.reply.text = std::move(text);
    outcome.local = true;
    outcome.remote = s_.remote_name_;
    return outcome;
  }

  mail::DeliveryOutcome Remote(const mail::Reply& reply,
                               mail::OutcomeScope scope = mail::OutcomeScope::kSession) const {
    mail::DeliveryOutcome outcome;
    outcome.scope = scope;
    outcome.reply = reply;
    outcome.remote = s_.remote_name_;
    outcome.remote_offers_dsn = s_.capabilities_.dsn;
    return outcome;
  }

  // What the session was waiting for, for the text of a local outcome (Postfix's wording).
  std::string Stage() const {
    switch (phase_) {
      case Phase::kGreeting: return "receiving the initial server greeting";
      case Phase::kEhlo: return "performing the EHLO handshake";
      case Phase::kHelo: return "performing the HELO handshake";
      case Phase::kStartTls: return "sending STARTTLS";
      case Phase::kTlsHandshake: return "performing the TLS handshake";
      case Phase::kReady: return "idle between messages";
      case Phase::kQuit: return "sending QUIT";
      case Phase::kClosing:
      case Phase::kClosed: return "closing";
      case Phase::kTransaction: break;
    }
    if (awaiting_.empty()) return "sending a message";
    switch (awaiting_.front().step) {
      case Step::kRset: return "sending RSET";
      case Step::kMail: return "sending MAIL FROM";
      case Step::kRcpt: return "sending RCPT TO";
      case Step::kData: return "sending DATA";
      case Step::kDot: return "sending end of data -- message may be sent more than once";
      case Step::kLoneDot: return "sending end of data";
    }
    return "sending a message";
  }

  absl::Duration TimeoutFor(Step step) const {
    switch (step) {
      case Step::kRset:
      case Step::kMail:
      case Step::kRcpt: return timeouts().command;          // §4.5.3.2.2, §4.5.3.2.3
      case Step::kData: return timeouts().data_initiation;  // §4.5.3.2.4
      case Step::kDot:
      case Step::kLoneDot: return timeouts().data_termination;  // §4.5.3.2.6, once it is sent
    }
    return timeouts().command;
  }

  void WriteLine(std::string_view line) {
    s_.stream_.Write(absl::StrCat(ToAbsl(line), "\r\n"));
  }

  // Writes `commands` in one Write and waits for their replies in order.
  void Write(std::deque<Command>& commands) {
    std::string out;
    for (Command& command : commands) {
      absl::StrAppend(&out, command.line, "\r\n");
      command.line.clear();
      awaiting_.push_back(std::move(command));
    }
    commands.clear();
    s_.stream_.Write(out);
    s_.stream_.SetIdleTimeout(TimeoutFor(awaiting_.front().step));
  }

  void HandleReply(const mail::Reply& reply) {
    // RFC 5321 §3.8: 421 may come at any time; the server closes after it.
    if (reply.code == 421 && phase_ != Phase::kQuit) {
      End(Remote(reply), /*send_quit=*/false);
      return;
    }
    const int kind = reply.code / 100;
    switch (phase_) {
      case Phase::kGreeting:
        if (kind == 2) {
          WriteLine(absl::StrCat("EHLO ", s_.options_.ehlo_name));
          phase_ = Phase::kEhlo;
          s_.stream_.SetIdleTimeout(timeouts().command);
        } else if (kind == 4 || kind == 5) {
          // RFC 5321 §3.1: after a 554 greeting the client sends QUIT; so for a 4xx.
          End(Remote(reply), /*send_quit=*/true);
        } else {
          Unexpected(reply);
        }
        break;
      case Phase::kEhlo:
        if (kind == 2) {
          s_.capabilities_ = ParseCapabilities(reply);
          AfterHello();
        } else if (kind == 5) {
          // RFC 5321 §4.1.4: a server that does not know EHLO gets HELO.
          WriteLine(absl::StrCat("HELO ", s_.options_.ehlo_name));
          phase_ = Phase::kHelo;
          s_.stream_.SetIdleTimeout(timeouts().command);
        } else if (kind == 4) {
          End(Remote(reply), /*send_quit=*/true);
        } else {
          Unexpected(reply);
        }
        break;
      case Phase::kHelo:
        if (kind == 2) {
          s_.capabilities_ = ServerCapabilities();
          AfterHello();
        } else if (kind == 4 || kind == 5) {
          End(Remote(reply), /*send_quit=*/true);
        } else {
          Unexpected(reply);
        }
        break;
      case Phase::kStartTls:
        if (reply.code == 220) {
          parser_ = ReplyParser();  // RFC 3207 §4.2: nothing read before TLS is kept
          phase_ = Phase::kTlsHandshake;
          s_.stream_.SetIdleTimeout(timeouts().command);
          s_.stream_.StartTls();
        } else if (s_.options_.tls == TlsPolicy::kRequired) {
          End(Local(451, "4.7.5",
                    absl::StrCat("TLS is required, but ", s_.remote_name_,
                                 " refused STARTTLS: ", OneLine(reply))),
              /*send_quit=*/true);
        } else if (kind == 4 || kind == 5) {
          BecomeReady();  // RFC 3207 §4: 454 "TLS not available": carry on in clear
        } else {
          Unexpected(reply);
        }
        break;
      case Phase::kTransaction:
        TransactionReply(reply);
        break;
      case Phase::kQuit:
        End(Remote(reply), /*send_quit=*/false);
        break;
      case Phase::kReady:
        Unexpected(reply);
        break;
      case Phase::kTlsHandshake:
      case Phase::kClosing:
      case Phase::kClosed:
        break;
    }
  }

  void AfterHello() {
    if (!s_.tls_active_ && s_.options_.tls != TlsPolicy::kNone) {
      if (s_.capabilities_.starttls) {
        WriteLine("STARTTLS");
        phase_ = Phase::kStartTls;
        s_.stream_.SetIdleTimeout(timeouts().command);
        return;
      }
      if (s_.options_.tls == TlsPolicy::kRequired) {
        End(Local(451, "4.7.5",
                  absl::StrCat("TLS is required, but ", s_.remote_name_,
                               " does not offer STARTTLS")),
            /*send_quit=*/true);
        return;
      }
    }
    BecomeReady();
  }

  void BecomeReady() {
    phase_ = Phase::kReady;
    // Between messages the owner's pool decides how long an idle connection lives.
    s_.stream_.SetIdleTimeout(absl::ZeroDuration());
    s_.owner_.OnReady(s_);
  }

  void TransactionReply(const mail::Reply& reply) {
    if (awaiting_.empty()) {
      Unexpected(reply);
      return;
    }
    const Command command = std::move(awaiting_.front());
    awaiting_.pop_front();
    // Replies come in order and a transaction's commands follow the previous one's: the
    // command answered belongs to the oldest transaction in progress.
    Transaction& t = transactions_.front();
    if (command.step != Step::kRset) t.answered = true;
    bool body_written = false;
    const int kind = reply.code / 100;
    const bool final_reply = kind == 2 || kind == 4 || kind == 5;
    switch (command.step) {
      case Step::kRset:
        if (kind != 2) {
          // The server's state is unknown: a pipelined MAIL may already be out. Give up the
          // connection; the open recipients wait for another one.
          End(Local(451, "4.3.0",
                    absl::StrCat(s_.remote_name_, " refused RSET: ", OneLine(reply))),
              /*send_quit=*/awaiting_.empty());
          return;
        }
        rset_needed_ = false;
        break;
      case Step::kMail:
        if (!final_reply) return Unexpected(reply);
        if (kind != 2) {
          // The MAIL reply speaks for the message; replies to the pipelined RCPTs and DATA
          // (503 "need MAIL") are read and ignored.
          t.mail_refused = true;
          rset_needed_ = true;
          unsent_.clear();
          for (auto& outcome : t.outcomes) {
            if (!outcome.has_value()) outcome = Remote(reply, mail::OutcomeScope::kMessage);
          }
        }
        break;
      case Step::kRcpt:
        if (!final_reply) return Unexpected(reply);
        if (t.mail_refused) break;
        if (kind == 2) {
          t.rcpt_accepted[command.recipient] = true;
          ++t.accepted;
        } else {
          t.outcomes[command.recipient] = Remote(reply, mail::OutcomeScope::kRecipient);
        }
        break;
      case Step::kData:
        if (reply.code == 354) {
          if (!t.mail_refused && t.accepted > 0) {
            WriteBody(t.body ? std::string_view(*t.body) : std::string_view());
            awaiting_.push_back({Step::kDot, 0, {}, t.number});
            body_written = true;
          } else {
            // RFC 2920 §3.1: a pipelined DATA accepted with no valid recipient gets an empty
            // message, whose reply is ignored.
            WriteLine(".");
            awaiting_.push_back({Step::kLoneDot, 0, {}, t.number});
          }
        } else if (kind == 4 || kind == 5) {
          rset_needed_ = true;
          if (!t.mail_refused) SetAccepted(t, Remote(reply, mail::OutcomeScope::kMessage));
        } else {
          return Unexpected(reply);
        }
        break;
      case Step::kDot:
        if (!final_reply) return Unexpected(reply);
        // RFC 5321 §4.1.1.4: the reply to "." ends the transaction, whatever it says.
        SetAccepted(t, Remote(reply, mail::OutcomeScope::kMessage));
        break;
      case Step::kLoneDot:
        rset_needed_ = true;
        break;
    }
    Continue();
    if (body_written && accepts_next()) s_.owner_.OnReadyForNext(s_);
  }

  // Writes the next command when not pipelining, or finishes the oldest transaction when no
  // reply of its is awaited and none of its commands is left.
  void Continue() {
    if (phase_ != Phase::kTransaction) return;
    const Transaction& t = transactions_.front();
    if (!awaiting_.empty() && awaiting_.front().transaction == t.number) {
      s_.stream_.SetIdleTimeout(TimeoutFor(awaiting_.front().step));
      return;
    }
    while (!unsent_.empty()) {
      if (unsent_.front().step == Step::kData && (t.mail_refused || t.accepted == 0)) {
        // No recipient accepted: no DATA, and RSET before the next message.
        unsent_.pop_front();
        rset_needed_ = true;
        continue;
      }
      std::deque<Command> one;
      one.push_back(std::move(unsent_.front()));
      unsent_.pop_front();
      Write(one);
      return;
    }
    Finish();
  }

  void Finish() {
    TransactionResult result = TakeResult();
    if (transactions_.empty()) {
      phase_ = Phase::kReady;
      s_.stream_.SetIdleTimeout(absl::ZeroDuration());
    } else {
      s_.stream_.SetIdleTimeout(TimeoutFor(awaiting_.front().step));  // the next one's
    }
    s_.owner_.OnTransactionDone(s_, std::move(result));
  }

  // The oldest transaction's result; it is gone from the session.
  TransactionResult TakeResult() {
    TransactionResult result;
    Transaction& t = transactions_.front();
    result.unanswered = t.unanswered;
    result.recipients.reserve(t.outcomes.size());
    for (auto& outcome : t.outcomes) {
      // Every path decides every recipient; this is the belt to those braces.
      result.recipients.push_back(
          outcome.has_value() ? std::move(*outcome)
                              : Local(451, "4.3.0", "no reply for this recipient",
                                      mail::OutcomeScope::kRecipient));
    }
    transactions_.pop_front();
    return result;
  }

  static void SetAll(Transaction& t, const mail::DeliveryOutcome& outcome) {
    for (auto& o : t.outcomes) o = outcome;
  }

  // The outcome of every recipient accepted at RCPT and not yet decided.
  static void SetAccepted(Transaction& t, const mail::DeliveryOutcome& outcome) {
    for (size_t i = 0; i < t.outcomes.size(); ++i) {
      if (t.rcpt_accepted[i] && !t.outcomes[i].has_value()) t.outcomes[i] = outcome;
    }
  }

  // The session ends while recipients are undecided: they get `why`, a session-scope outcome
  // (never a success: a session that ends cleanly has no open recipient). A transaction sent
  // behind another's end of data had no reply of its own yet (the replies come in order, and
  // the one before it is still open): it is unanswered, and its recipients get a local outcome
  // of the same code, so that the site's reply is judged once (the owner's throttle and
  // reputation skip local outcomes).
  void FailOpenRecipients(const mail::DeliveryOutcome& why) {
    if (transactions_.empty()) return;
    mail::DeliveryOutcome open = why;
    open.scope = mail::OutcomeScope::kSession;
    if (!open.transient()) {
      open = Local(451, "4.3.0",
                   absl::StrCat("the session with ", s_.remote_name_, " ended: ",
                                OneLine(why.reply)));
    }
    const mail::DeliveryOutcome behind =
        Local(open.reply.code, open.reply.enhanced,
              absl::StrCat("the session with ", s_.remote_name_,
                           " ended before the server answered this message, sent behind "
                           "another (that one: ",
                           OneLine(open.reply), ")"));
    for (Transaction& t : transactions_) {
      const bool is_behind = &t != &transactions_.front();
      t.unanswered = t.unanswered || is_behind;
      const mail::DeliveryOutcome& fail = is_behind ? behind : open;
      for (auto& outcome : t.outcomes) {
        if (!outcome.has_value()) outcome = fail;
      }
    }
  }

  // RFC 5321 §4.5.2: a line that starts with "." gets another; the body (CRLF lines, as
  // stored) must end with CRLF before the terminating ".". Written in pieces straight from
  // the shared body, without a stuffed copy.
  void WriteBody(std::string_view body) {
    io::Stream& out = s_.stream_;
    size_t start = 0;
    if (!body.empty() && body.front() == '.') out.Write(".");
    // After every LF, not only CRLF: a server that ends lines at a bare LF must not read a
    // "\n.\r\n" in the body as the end of the data.
    for (size_t lf = body.find("\n."); lf != std::string_view::npos;
         lf = body.find("\n.", lf + 1)) {
      out.Write(body.substr(start, lf + 1 - start));
      out.Write(".");
      start = lf + 1;
    }
    out.Write(body.substr(start));
    if (!absl::EndsWith(ToAbsl(body), "\r\n")) {
      if (absl::EndsWith(ToAbsl(body), "\r")) {
        out.Write("\n");
      } else if (!body.empty()) {
        out.Write("\r\n");
      }
    }
    out.Write(".\r\n");
  }

  void Unexpected(const mail::Reply& reply) {
    End(Local(451, "4.5.0",
              absl::StrCat("unexpected reply from ", s_.remote_name_, " while ", Stage(), ": ",
                           OneLine(reply))),
        /*send_quit=*/false);
  }

  // Called once, as the session begins to end, in the phase it ends in. A server that answered
  // the EHLO after the handshake (even with a refusal) has working TLS.
  void NoteEndingPhase(bool server_answered = false) {
    s_.tls_broke_ = phase_ == Phase::kTlsHandshake ||
                    (phase_ == Phase::kEhlo && s_.tls_active_ && !server_answered);
  }

  // Ends the session with `why`: the open recipients get it, the stream closes (after a QUIT
  // when the server is in a state to read one), and OnClosed() reports to the owner.
  void End(mail::DeliveryOutcome why, bool send_quit) {
    if (phase_ == Phase::kClosing || phase_ == Phase::kClosed) return;
    NoteEndingPhase(/*server_answered=*/!why.local);
    Log(LogLevel::kDebug, "smtp client %s: session ends: %d %s %s", s_.remote_name_,
        why.reply.code, why.reply.enhanced, why.reply.text);
    FailOpenRecipients(why);
    end_ = std::move(why);
    phase_ = Phase::kClosing;
    awaiting_.clear();
    unsent_.clear();
    if (send_quit) WriteLine("QUIT");
    // Bounds the flush of what is still queued when the peer does not read it.
    s_.stream_.SetIdleTimeout(timeouts().command);
    s_.stream_.Close();
  }

  ClientSession& s_;
  Phase phase_ = Phase::kGreeting;
  ReplyParser parser_;
  // The last transaction ended before its data (MAIL or every RCPT refused, DATA refused):
  // the next one starts with RSET.
  bool rset_needed_ = false;
  // In progress, oldest first: at most two, the second sent after the first's end of data.
  std::deque<Transaction> transactions_;
  std::deque<Command> unsent_;    // without PIPELINING: written one at a time
  std::deque<Command> awaiting_;  // written, reply not read yet, in order
  std::optional<mail::DeliveryOutcome> end_;  // set when the session began to end
};

// ---------------------------------------------------------------------------------------------
// ClientSession

ClientSession::ClientSession(io::Stream& stream, const ClientOptions& options, Owner& owner,
                             std::string remote_name)
    : stream_(stream),
      options_(options),
      owner_(owner),
      remote_name_(std::move(remote_name)),
      state_(std::make_unique<State>(*this)) {}

ClientSession::~ClientSession() = default;

void ClientSession::Send(const OutboundMessage& message) { state_->Send(message); }
void ClientSession::Quit() { state_->Quit(); }
bool ClientSession::ready() const { return state_->ready(); }
bool ClientSession::accepts_next() const { return state_->accepts_next(); }

void ClientSession::OnStart(const io::TlsInfo* implicit_tls) { state_->OnStart(implicit_tls); }
void ClientSession::OnData(std::string_view bytes) { state_->OnData(bytes); }
void ClientSession::OnTlsStarted(const io::TlsInfo& /*tls*/) { state_->OnTlsStarted(); }
void ClientSession::OnTlsFailed(std::string_view reason) { state_->OnTlsFailed(reason); }
void ClientSession::OnIdleTimeout() { state_->OnIdleTimeout(); }
void ClientSession::OnClosed() { state_->OnClosed(); }

}  // namespace facteur::smtp
