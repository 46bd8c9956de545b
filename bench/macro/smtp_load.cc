// File: bench/macro/smtp_load.cc
// smtp_load: the submission load generator of issue #2 point 10. One thread, one io_uring ring,
// --sessions connections sharing a budget of --messages messages. Each transaction sends
// MAIL FROM/RCPT TO/DATA in one write (RFC 2920 pipelining), reads the three replies, sends the
// dot-stuffed message (RFC 5321 §4.5.2) and times the final reply: time-to-250 runs from the
// moment the send SQE holding the final ".\r\n" is prepared until that reply has been parsed.
// --rcpt_domains spreads the recipients over K domains (bench/deliver, issue #3 point 10).
// Loopback only (127.0.0.0/8): this tool must never load a machine it does not own.
// Thread contract: single-threaded; the LoadGenerator and its Sessions are confined to main().
#include <arpa/inet.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

ABSL_FLAG(std::string, server, "127.0.0.1:2525", "SMTP server, IPv4 loopback host:port");
ABSL_FLAG(int32_t, sessions, 10, "concurrent SMTP sessions (connections)");
ABSL_FLAG(int64_t, messages, 1000, "messages to send in total, shared by all sessions");
ABSL_FLAG(int64_t, size, 2048, "message size in bytes (headers + body, before dot-stuffing)");
ABSL_FLAG(bool, pipelining, true, "send MAIL/RCPT/DATA in one write (RFC 2920) if offered");
ABSL_FLAG(bool, json, false, "print one JSON line of results instead of text");
ABSL_FLAG(std::string, mail_from, "load@[127.0.0.1]", "envelope sender");
ABSL_FLAG(std::string, rcpt_to, "sink@[127.0.0.1]", "envelope recipient");
ABSL_FLAG(int32_t, rcpt_domains, 0,
          "K > 0: message i goes to LOCAL@d<i % K>.DOMAIN, LOCAL@DOMAIN being --rcpt_to "
          "(spreads the load over K destination domains); 0: every message to --rcpt_to");
ABSL_FLAG(std::string, helo, "smtp-load.localhost", "name sent with EHLO");
ABSL_FLAG(double, connect_timeout_s, 5.0, "connect timeout per attempt, seconds");
ABSL_FLAG(double, rate, 0,
          "messages per second over all sessions (message n starts no sooner than n/rate "
          "after the start); 0: as fast as the server answers");
ABSL_FLAG(double, deadline_s, 120.0, "overall deadline, seconds: the run stops there");
ABSL_FLAG(int32_t, reconnects, 100, "reconnects allowed in total after a session broke");

namespace facteur::bench {
namespace {

constexpr int kMaxSessions = 10000;
constexpr size_t kRecvBufferSize = 16 * 1024;
// A reply line longer than this is a broken server, not a slow one (RFC 5321 §4.5.3.1.5: 512).
constexpr size_t kMaxReplyBytes = 64 * 1024;
constexpr int kFailuresShown = 5;
constexpr int kMaxLineLength = 76;  // body lines, under the 78 of RFC 5322 §2.1.1

int64_t MonotonicNanos() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

__kernel_timespec ToKernelTimespec(int64_t nanos) {
  __kernel_timespec ts;
  ts.tv_sec = nanos / 1'000'000'000;
  ts.tv_nsec = nanos % 1'000'000'000;
  return ts;
}

// One SMTP reply: the code and every line as received (without CRLF).
struct Reply {
  int code = 0;
  std::vector<std::string> lines;

  std::string Text() const {
    std::string text;
    for (const std::string& line : lines) {
      if (!text.empty()) text += " | ";
      text += line;
    }
    return text;
  }
};

// Splits received bytes into replies; "250-..." lines continue a reply, "250 ..." (or a bare
// code) ends it (RFC 5321 §4.2.1).
class ReplyParser {
 public:
  void Append(const char* data, size_t size) { buffer_.append(data, size); }
  bool HasBufferedBytes() const { return start_ < buffer_.size() || !partial_.lines.empty(); }
  void Clear() {
    buffer_.clear();
    start_ = 0;
    partial_ = Reply();
  }

  enum class Result { kReply, kNeedMore, kMalformed };
  Result Next(Reply* reply) {
    while (true) {
      size_t newline = buffer_.find('\n', start_);
      if (newline == std::string::npos) {
        if (buffer_.size() - start_ > kMaxReplyBytes) return Result::kMalformed;
        Compact();
        return Result::kNeedMore;
      }
      std::string_view line(buffer_.data() + start_, newline - start_);
      start_ = newline + 1;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.size() < 3 || !absl::ascii_isdigit(line[0]) || !absl::ascii_isdigit(line[1]) ||
          !absl::ascii_isdigit(line[2])) {
        return Result::kMalformed;
      }
      int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
      if (!partial_.lines.empty() && code != partial_.code) return Result::kMalformed;
      partial_.code = code;
      partial_.lines.emplace_back(line);
      if (partial_.lines.size() * 4 > kMaxReplyBytes) return Result::kMalformed;
      if (line.size() > 3 && line[3] == '-') continue;
      if (line.size() > 3 && line[3] != ' ') return Result::kMalformed;
      *reply = std::move(partial_);
      partial_ = Reply();
      return Result::kReply;
    }
  }

 private:
  void Compact() {
    buffer_.erase(0, start_);
    start_ = 0;
  }

  std::string buffer_;
  size_t start_ = 0;
  Reply partial_;
};

class LoadGenerator;
struct Session;

enum class OpKind : uint8_t { kConnect, kSend, kRecv };

// The user_data of an SQE: which session, which operation. Owned by its Session.
struct Op {
  Session* session = nullptr;
  OpKind kind = OpKind::kConnect;
};

enum class State : uint8_t {
  kConnecting,
  kGreeting,
  kEhlo,
  kEnvelope,  // MAIL/RCPT/DATA sent, waiting for their replies
  kBody,      // message sent (or being sent), waiting for the final reply
  kRset,
  kQuit,
  kDone,
};

struct Session {
  int index = 0;
  int fd = -1;
  State state = State::kConnecting;
  Op connect_op;
  Op send_op;
  Op recv_op;

  std::string out;  // bytes being sent
  size_t out_offset = 0;
  bool out_is_body = false;  // the final ".\r\n" is in `out`: time each send SQE
  int expect_after_send = 0;
  int awaiting = 0;  // replies still expected
  std::vector<Reply> replies;
  ReplyParser parser;
  std::unique_ptr<char[]> in = std::make_unique<char[]>(kRecvBufferSize);

  bool use_pipelining = false;
  bool has_message = false;  // a transaction counted in the budget is under way
  bool envelope_rejected = false;
  int64_t message_number = 0;
  int64_t final_sent_ns = 0;
};

struct Options {
  sockaddr_in server{};
  std::string server_text;
  int sessions = 0;
  int64_t messages = 0;
  int64_t size = 0;
  bool pipelining = true;
  std::string mail_from;
  std::string rcpt_to;
  int rcpt_domains = 0;
  std::string rcpt_local;   // with rcpt_domains: --rcpt_to's local part, "@" included
  std::string rcpt_domain;  // with rcpt_domains: --rcpt_to's domain, "." prepended
  std::string helo;
  int64_t connect_timeout_ns = 0;
  int64_t deadline_ns = 0;
  double rate = 0;  // messages per second; 0: unpaced
  int reconnects = 0;
};

class LoadGenerator {
 public:
  explicit LoadGenerator(Options options) : options_(std::move(options)) {}
  ~LoadGenerator() {
    for (Session& session : sessions_) {
      if (session.fd >= 0) close(session.fd);
    }
    if (ring_ready_) io_uring_queue_exit(&ring_);
  }

  bool Init();
  void Run();
  int Report(bool json) const;

 private:
  io_uring_sqe* GetSqe();
  void Connect(Session& s);
  void PostRecv(Session& s);
  void PostSend(Session& s);
  void Send(Session& s, std::string bytes, int expect_replies, bool is_body);
  void OnCompletion(const io_uring_cqe& cqe);
  void OnConnect(Session& s, int res);
  void OnSend(Session& s, int res);
  void OnRecv(Session& s, int res);
  void OnReplies(Session& s);
  void StartTransaction(Session& s);
  void SendEnvelopeCommand(Session& s, size_t step);
  void SendBody(Session& s);
  void RecordFailure(Session& s, const std::string& why);
  void Broken(Session& s, const std::string& why);
  void Finish(Session& s);
  void BuildBody();
  std::string EnvelopeCommand(size_t step, int64_t message_number) const;
  // With --rate: when the next message from the budget may start.
  int64_t NextStartNs() const;

  Options options_;
  io_uring ring_{};
  bool ring_ready_ = false;
  __kernel_timespec connect_timeout_{};
  std::vector<Session> sessions_;
  int active_ = 0;
  int reconnects_left_ = 0;
  std::string body_;  // dot-stuffed body, shared by every message, ending in CRLF
  int64_t run_id_ = 0;

  int64_t started_ = 0;  // messages taken from the budget
  std::vector<Session*> paced_;  // sessions waiting for their next message's start time
  int64_t ok_ = 0;
  int64_t failed_ = 0;
  int64_t session_errors_ = 0;
  int failures_shown_ = 0;
  std::vector<int64_t> latencies_ns_;
  int64_t start_ns_ = 0;
  int64_t last_final_ns_ = 0;
  int64_t end_ns_ = 0;
  bool deadline_hit_ = false;
  bool pipelining_warned_ = false;
};

bool LoadGenerator::Init() {
  io_uring_params params{};
  params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
  // Each session has at most two SQEs in flight (connect + its linked timeout).
  unsigned entries = 64;
  while (entries < static_cast<unsigned>(options_.sessions) * 2 + 16) entries *= 2;
  int res = io_uring_queue_init_params(entries, &ring_, &params);
  if (res < 0) {
    params = io_uring_params{};
    res = io_uring_queue_init_params(entries, &ring_, &params);
  }
  if (res < 0) {
    absl::FPrintF(stderr, "smtp_load: io_uring_queue_init: %s\n", strerror(-res));
    return false;
  }
  ring_ready_ = true;
  sessions_.resize(options_.sessions);
  for (int i = 0; i < options_.sessions; ++i) {
    Session& s = sessions_[i];
    s.index = i;
    s.connect_op = {&s, OpKind::kConnect};
    s.send_op = {&s, OpKind::kSend};
    s.recv_op = {&s, OpKind::kRecv};
  }
  reconnects_left_ = options_.reconnects;
  connect_timeout_ = ToKernelTimespec(options_.connect_timeout_ns);
  run_id_ = absl::ToUnixMicros(absl::Now());
  latencies_ns_.reserve(options_.messages);
  BuildBody();
  return true;
}

std::string MessageHeaders(const Options& options, int64_t run_id, int64_t number) {
  // Fixed-width fields keep every message the same size (RFC 5322 §3.3 date, zero-padded day).
  std::string date =
      absl::FormatTime("%a, %d %b %Y %H:%M:%S +0000", absl::Now(), absl::UTCTimeZone());
  return absl::StrFormat(
      "From: smtp_load <%s>\r\nTo: <%s>\r\nSubject: smtp_load message %010d\r\n"
      "Message-ID: <%d.%010d@smtp-load.localhost>\r\nDate: %s\r\n\r\n",
      options.mail_from, options.rcpt_to, number, run_id, number, date);
}

// Printable lines of 20..76 characters; every 37th starts with '.' so that dot-stuffing is
// exercised. The body before stuffing is --size minus the headers (at least one line).
void LoadGenerator::BuildBody() {
  static constexpr std::string_view kAlphabet =
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,;:!?-()";
  int64_t header_size = static_cast<int64_t>(MessageHeaders(options_, run_id_, 0).size());
  int64_t remaining = std::max<int64_t>(options_.size - header_size, 3);
  uint64_t seed = 0x9e3779b97f4a7c15ULL;
  auto next = [&seed]() {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    return seed >> 33;
  };
  body_.reserve(remaining + remaining / 30 + 8);
  for (int line_number = 0; remaining > 0; ++line_number) {
    int64_t length = std::min<int64_t>(20 + next() % (kMaxLineLength - 19), remaining - 2);
    int64_t left = remaining - length - 2;
    if (left == 1 || left == 2) length -= 3;  // never leave a remainder too short for a line
    std::string line;
    for (int64_t i = 0; i < length; ++i) line += kAlphabet[next() % kAlphabet.size()];
    if (line_number % 37 == 36) line[0] = '.';
    if (line[0] == '.') body_ += '.';  // RFC 5321 §4.5.2 transparency
    body_ += line;
    body_ += "\r\n";
    remaining -= length + 2;
  }
}

io_uring_sqe* LoadGenerator::GetSqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) {
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;  // non-null: the ring holds two SQEs per session
}

void LoadGenerator::Connect(Session& s) {
  s.state = State::kConnecting;
  s.parser.Clear();
  s.replies.clear();
  s.awaiting = 0;
  s.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s.fd < 0) {
    Broken(s, absl::StrCat("socket: ", strerror(errno)));
    return;
  }
  int one = 1;
  setsockopt(s.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  io_uring_sqe* sqe = GetSqe();
  io_uring_prep_connect(sqe, s.fd, reinterpret_cast<const sockaddr*>(&options_.server),
                        sizeof(options_.server));
  io_uring_sqe_set_data(sqe, &s.connect_op);
  sqe->flags |= IOSQE_IO_LINK;
  // The kernel reads the timespec at submission, after this frame: it lives in the generator.
  io_uring_sqe* timeout_sqe = GetSqe();
  io_uring_prep_link_timeout(timeout_sqe, &connect_timeout_, 0);
  io_uring_sqe_set_data(timeout_sqe, nullptr);
}

void LoadGenerator::PostRecv(Session& s) {
  io_uring_sqe* sqe = GetSqe();
  io_uring_prep_recv(sqe, s.fd, s.in.get(), kRecvBufferSize, 0);
  io_uring_sqe_set_data(sqe, &s.recv_op);
}

void LoadGenerator::PostSend(Session& s) {
  io_uring_sqe* sqe = GetSqe();
  io_uring_prep_send(sqe, s.fd, s.out.data() + s.out_offset, s.out.size() - s.out_offset,
                     MSG_NOSIGNAL);
  io_uring_sqe_set_data(sqe, &s.send_op);
  // Every send of a body carries its tail, so the last one prepared holds the final ".\r\n".
  if (s.out_is_body) s.final_sent_ns = MonotonicNanos();
}

void LoadGenerator::Send(Session& s, std::string bytes, int expect_replies, bool is_body) {
  if (s.parser.HasBufferedBytes()) {
    Broken(s, "unexpected bytes from the server before our command");
    return;
  }
  s.out = std::move(bytes);
  s.out_offset = 0;
  s.out_is_body = is_body;
  s.expect_after_send = expect_replies;
  PostSend(s);
}

void LoadGenerator::OnCompletion(const io_uring_cqe& cqe) {
  auto* op = static_cast<Op*>(io_uring_cqe_get_data(&cqe));
  if (op == nullptr) return;  // a linked connect timeout: its connect reports the outcome
  Session& s = *op->session;
  switch (op->kind) {
    case OpKind::kConnect:
      OnConnect(s, cqe.res);
      break;
    case OpKind::kSend:
      OnSend(s, cqe.res);
      break;
    case OpKind::kRecv:
      OnRecv(s, cqe.res);
      break;
  }
}

void LoadGenerator::OnConnect(Session& s, int res) {
  if (res < 0) {
    Broken(s, res == -ECANCELED ? std::string("connect: timed out")
                                : absl::StrCat("connect: ", strerror(-res)));
    return;
  }
  s.state = State::kGreeting;
  s.awaiting = 1;
  PostRecv(s);
}

void LoadGenerator::OnSend(Session& s, int res) {
  if (res < 0) {
    Broken(s, absl::StrCat("send: ", strerror(-res)));
    return;
  }
  s.out_offset += res;
  if (s.out_offset < s.out.size()) {
    PostSend(s);  // partial send: the rest, in a new SQE
    return;
  }
  s.awaiting = s.expect_after_send;
  if (s.awaiting > 0) PostRecv(s);
}

void LoadGenerator::OnRecv(Session& s, int res) {
  if (res <= 0) {
    Broken(s, res == 0 ? std::string("connection closed by the server")
                       : absl::StrCat("recv: ", strerror(-res)));
    return;
  }
  int64_t now = MonotonicNanos();
  s.parser.Append(s.in.get(), res);
  while (s.awaiting > 0) {
    Reply reply;
    ReplyParser::Result result = s.parser.Next(&reply);
    if (result == ReplyParser::Result::kNeedMore) break;
    if (result == ReplyParser::Result::kMalformed) {
      Broken(s, "malformed reply");
      return;
    }
    s.replies.push_back(std::move(reply));
    --s.awaiting;
  }
  if (s.awaiting > 0) {
    PostRecv(s);
    return;
  }
  if (s.state == State::kBody) {
    // The final reply: time-to-250 stops at the recv that completed it.
    const Reply& reply = s.replies.back();
    last_final_ns_ = now;
    s.has_message = false;
    if (reply.code / 100 == 2 && !s.envelope_rejected) {
      ++ok_;
      latencies_ns_.push_back(now - s.final_sent_ns);
    } else {
      ++failed_;
      RecordFailure(s, absl::StrCat("final reply: ", reply.Text()));
    }
    s.replies.clear();
    StartTransaction(s);
    return;
  }
  OnReplies(s);
}

void LoadGenerator::OnReplies(Session& s) {
  std::vector<Reply> replies = std::move(s.replies);
  s.replies.clear();
  switch (s.state) {
    case State::kGreeting:
      if (replies[0].code != 220) {
        Broken(s, absl::StrCat("greeting: ", replies[0].Text()));
        return;
      }
      s.state = State::kEhlo;
      Send(s, absl::StrCat("EHLO ", options_.helo, "\r\n"), 1, false);
      return;
    case State::kEhlo: {
      if (replies[0].code != 250) {
        Broken(s, absl::StrCat("EHLO: ", replies[0].Text()));
        return;
      }
      bool offered = false;
      for (size_t i = 1; i < replies[0].lines.size(); ++i) {
        const std::string& line = replies[0].lines[i];
        if (line.size() < 5) continue;
        std::string_view keyword = std::string_view(line).substr(4);
        keyword = keyword.substr(0, keyword.find(' '));
        // Debian's absl::string_view is its own type, not std::string_view.
        if (absl::EqualsIgnoreCase(absl::string_view(keyword.data(), keyword.size()),
                                   "PIPELINING")) {
          offered = true;
        }
      }
      if (options_.pipelining && !offered && !pipelining_warned_) {
        absl::FPrintF(stderr, "smtp_load: the server does not offer PIPELINING; one command "
                              "per write\n");
        pipelining_warned_ = true;
      }
      s.use_pipelining = options_.pipelining && offered;
      StartTransaction(s);
      return;
    }
    case State::kEnvelope: {
      // Without pipelining, replies arrive one per command: carry on while they are positive.
      s.replies = std::move(replies);
      const Reply& last = s.replies.back();
      size_t step = s.replies.size();
      if (!s.use_pipelining && step < 3 && last.code / 100 == 2) {
        SendEnvelopeCommand(s, step);
        return;
      }
      if (step == 3 && s.replies[2].code == 354) {
        // A server that accepts DATA after rejecting MAIL or RCPT breaks RFC 2920 §3.1; the
        // message is sent (the server waits for it) and counted as failed.
        s.envelope_rejected = s.replies[0].code / 100 != 2 || s.replies[1].code / 100 != 2;
        SendBody(s);
        return;
      }
      const Reply* rejection = &last;
      for (const Reply& reply : s.replies) {
        if (reply.code / 100 != 2 && reply.code != 354) {
          rejection = &reply;
          break;
        }
      }
      ++failed_;
      RecordFailure(s, absl::StrCat("envelope: ", rejection->Text()));
      s.has_message = false;
      s.replies.clear();
      s.state = State::kRset;
      Send(s, "RSET\r\n", 1, false);
      return;
    }
    case State::kRset:
      if (replies[0].code / 100 != 2) {
        Broken(s, absl::StrCat("RSET: ", replies[0].Text()));
        return;
      }
      StartTransaction(s);
      return;
    case State::kQuit:
      Finish(s);
      return;
    case State::kConnecting:
    case State::kBody:
    case State::kDone:
      Broken(s, "internal: reply in an unexpected state");
      return;
  }
}

std::string LoadGenerator::EnvelopeCommand(size_t step, int64_t message_number) const {
  switch (step) {
    case 0:
      return absl::StrCat("MAIL FROM:<", options_.mail_from, ">\r\n");
    case 1:
      if (options_.rcpt_domains > 0) {
        return absl::StrCat("RCPT TO:<", options_.rcpt_local, "d",
                            message_number % options_.rcpt_domains, options_.rcpt_domain,
                            ">\r\n");
      }
      return absl::StrCat("RCPT TO:<", options_.rcpt_to, ">\r\n");
    default:
      return "DATA\r\n";
  }
}

void LoadGenerator::SendEnvelopeCommand(Session& s, size_t step) {
  // Keeps s.replies: the earlier steps' replies.
  Send(s, EnvelopeCommand(step, s.message_number), 1, false);
}

void LoadGenerator::StartTransaction(Session& s) {
  if (started_ >= options_.messages || deadline_hit_) {
    s.state = State::kQuit;
    Send(s, "QUIT\r\n", 1, false);
    return;
  }
  if (options_.rate > 0 && MonotonicNanos() < NextStartNs()) {
    paced_.push_back(&s);  // Run() starts it when its time comes
    return;
  }
  s.message_number = started_++;
  s.has_message = true;
  s.envelope_rejected = false;
  s.replies.clear();
  s.state = State::kEnvelope;
  if (s.use_pipelining) {
    // RFC 2920 §3.1: DATA may end a group; the three replies come back in order.
    Send(s,
         absl::StrCat(EnvelopeCommand(0, s.message_number), EnvelopeCommand(1, s.message_number),
                      EnvelopeCommand(2, s.message_number)),
         3, false);
  } else {
    SendEnvelopeCommand(s, 0);
  }
}

void LoadGenerator::SendBody(Session& s) {
  std::string message = MessageHeaders(options_, run_id_, s.message_number);
  message.reserve(message.size() + body_.size() + 3);
  message += body_;
  message += ".\r\n";
  s.replies.clear();
  s.state = State::kBody;
  Send(s, std::move(message), 1, true);
}

void LoadGenerator::RecordFailure(Session& s, const std::string& why) {
  if (failures_shown_ >= kFailuresShown) return;
  ++failures_shown_;
  absl::FPrintF(stderr, "smtp_load: session %d message %d failed: %s\n", s.index,
                s.message_number, why);
}

// The connection is unusable: its message (if any) failed; reconnect while budget remains.
void LoadGenerator::Broken(Session& s, const std::string& why) {
  ++session_errors_;
  if (s.has_message) {
    s.has_message = false;
    ++failed_;
    RecordFailure(s, why);
  } else if (failures_shown_ < kFailuresShown) {
    ++failures_shown_;
    absl::FPrintF(stderr, "smtp_load: session %d: %s\n", s.index, why);
  }
  if (s.fd >= 0) {
    close(s.fd);
    s.fd = -1;
  }
  if (reconnects_left_ > 0 && started_ < options_.messages && !deadline_hit_ &&
      s.state != State::kQuit) {
    --reconnects_left_;
    Connect(s);
    return;
  }
  s.state = State::kDone;
  --active_;
}

void LoadGenerator::Finish(Session& s) {
  if (s.fd >= 0) {
    close(s.fd);
    s.fd = -1;
  }
  s.state = State::kDone;
  --active_;
}

int64_t LoadGenerator::NextStartNs() const {
  return start_ns_ + static_cast<int64_t>(static_cast<double>(started_) * 1e9 / options_.rate);
}

void LoadGenerator::Run() {
  start_ns_ = MonotonicNanos();
  int64_t deadline = start_ns_ + options_.deadline_ns;
  active_ = options_.sessions;
  for (Session& s : sessions_) Connect(s);
  // Bounded: every wait ends by the deadline, and past it the loop stops.
  while (active_ > 0) {
    int64_t now = MonotonicNanos();
    if (now >= deadline) {
      deadline_hit_ = true;
      break;
    }
    if (!paced_.empty() && now >= NextStartNs()) {
      Session* paced = paced_.front();
      paced_.erase(paced_.begin());
      StartTransaction(*paced);
      continue;
    }
    int64_t wake = std::min<int64_t>(deadline - now, 1'000'000'000);
    if (!paced_.empty()) wake = std::min<int64_t>(wake, std::max<int64_t>(NextStartNs() - now, 0));
    __kernel_timespec wait = ToKernelTimespec(wake);
    io_uring_cqe* cqe = nullptr;
    int res = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &wait, nullptr);
    if (res < 0 && res != -ETIME && res != -EINTR) {
      absl::FPrintF(stderr, "smtp_load: io_uring_submit_and_wait_timeout: %s\n", strerror(-res));
      break;
    }
    unsigned head;
    unsigned count = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      OnCompletion(*cqe);
      ++count;
    }
    io_uring_cq_advance(&ring_, count);
  }
  end_ns_ = MonotonicNanos();
  if (deadline_hit_) {
    absl::FPrintF(stderr, "smtp_load: deadline of %.0f s reached, %d sessions still open\n",
                  options_.deadline_ns / 1e9, active_);
  }
}

double PercentileMs(const std::vector<int64_t>& sorted, double percentile) {
  if (sorted.empty()) return 0;
  size_t rank = static_cast<size_t>(std::ceil(percentile / 100.0 * sorted.size()));
  rank = std::clamp<size_t>(rank, 1, sorted.size());
  return sorted[rank - 1] / 1e6;
}

int LoadGenerator::Report(bool json) const {
  std::vector<int64_t> sorted = latencies_ns_;
  std::sort(sorted.begin(), sorted.end());
  int64_t stop = ok_ + failed_ > 0 ? last_final_ns_ : end_ns_;
  double elapsed_s = std::max<int64_t>(stop - start_ns_, 1) / 1e9;
  double rate = ok_ / elapsed_s;
  int64_t not_sent = options_.messages - ok_ - failed_;
  double p50 = PercentileMs(sorted, 50);
  double p90 = PercentileMs(sorted, 90);
  double p99 = PercentileMs(sorted, 99);
  double max = sorted.empty() ? 0 : sorted.back() / 1e6;
  if (json) {
    absl::PrintF(
        "{\"server\":\"%s\",\"sessions\":%d,\"messages\":%d,\"size\":%d,\"pipelining\":%s,"
        "\"ok\":%d,\"failed\":%d,\"not_sent\":%d,\"session_errors\":%d,\"deadline_hit\":%s,"
        "\"elapsed_s\":%.3f,\"msgs_per_s\":%.1f,\"p50_ms\":%.3f,\"p90_ms\":%.3f,"
        "\"p99_ms\":%.3f,\"max_ms\":%.3f}\n",
        options_.server_text, options_.sessions, options_.messages, options_.size,
        options_.pipelining ? "true" : "false", ok_, failed_, not_sent, session_errors_,
        deadline_hit_ ? "true" : "false", elapsed_s, rate, p50, p90, p99, max);
  } else {
    absl::PrintF("server %s, %d sessions, %d messages of %d bytes, pipelining %s\n",
                 options_.server_text, options_.sessions, options_.messages, options_.size,
                 options_.pipelining ? "on" : "off");
    absl::PrintF("ok %d  failed %d  not sent %d  session errors %d%s\n", ok_, failed_,
                 not_sent, session_errors_, deadline_hit_ ? "  (deadline reached)" : "");
    absl::PrintF("elapsed %.3f s  %.1f msgs/s\n", elapsed_s, rate);
    absl::PrintF("time-to-250 ms: p50 %.3f  p90 %.3f  p99 %.3f  max %.3f\n", p50, p90, p99,
                 max);
  }
  return (failed_ == 0 && not_sent == 0) ? 0 : 1;
}

bool ParseServer(const std::string& text, sockaddr_in* address) {
  size_t colon = text.rfind(':');
  if (colon == std::string::npos) return false;
  std::string host = text.substr(0, colon);
  uint32_t port = 0;
  if (!absl::SimpleAtoi(text.substr(colon + 1), &port) || port == 0 || port > 65535) {
    return false;
  }
  *address = sockaddr_in{};
  address->sin_family = AF_INET;
  address->sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &address->sin_addr) != 1) return false;
  return (ntohl(address->sin_addr.s_addr) >> 24) == 127;
}

void RaiseFileLimit() {
  rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "SMTP load generator (io_uring): smtp_load --server=127.0.0.1:2525 --sessions=10 "
      "--messages=1000 --size=2048 [--json]");
  absl::ParseCommandLine(argc, argv);
  Options options;
  options.server_text = absl::GetFlag(FLAGS_server);
  if (!ParseServer(options.server_text, &options.server)) {
    absl::FPrintF(stderr, "smtp_load: --server must be an IPv4 loopback host:port, got '%s'\n",
                  options.server_text);
    return 2;
  }
  options.sessions = absl::GetFlag(FLAGS_sessions);
  options.messages = absl::GetFlag(FLAGS_messages);
  options.size = absl::GetFlag(FLAGS_size);
  options.pipelining = absl::GetFlag(FLAGS_pipelining);
  options.mail_from = absl::GetFlag(FLAGS_mail_from);
  options.rcpt_to = absl::GetFlag(FLAGS_rcpt_to);
  options.rcpt_domains = absl::GetFlag(FLAGS_rcpt_domains);
  if (options.rcpt_domains != 0) {
    // A domain literal ("[127.0.0.1]") has no subdomains to spread over.
    size_t at = options.rcpt_to.rfind('@');
    if (options.rcpt_domains < 0 || at == std::string::npos || at == 0 ||
        at + 1 >= options.rcpt_to.size() || options.rcpt_to[at + 1] == '[') {
      absl::FPrintF(stderr, "smtp_load: --rcpt_domains needs K >= 0 and --rcpt_to=LOCAL@DOMAIN "
                            "with a domain name, got %d and '%s'\n",
                    options.rcpt_domains, options.rcpt_to);
      return 2;
    }
    options.rcpt_local = options.rcpt_to.substr(0, at + 1);
    options.rcpt_domain = absl::StrCat(".", options.rcpt_to.substr(at + 1));
  }
  options.helo = absl::GetFlag(FLAGS_helo);
  options.rate = absl::GetFlag(FLAGS_rate);
  options.connect_timeout_ns =
      static_cast<int64_t>(absl::GetFlag(FLAGS_connect_timeout_s) * 1e9);
  options.deadline_ns = static_cast<int64_t>(absl::GetFlag(FLAGS_deadline_s) * 1e9);
  options.reconnects = absl::GetFlag(FLAGS_reconnects);
  if (options.sessions < 1 || options.sessions > kMaxSessions) {
    absl::FPrintF(stderr, "smtp_load: --sessions must be in [1, %d]\n", kMaxSessions);
    return 2;
  }
  if (options.messages < 0 || options.size < 1 || options.size > (1LL << 30) ||
      options.connect_timeout_ns <= 0 || options.deadline_ns <= 0 || options.reconnects < 0 ||
      !(options.rate >= 0)) {
    absl::FPrintF(stderr, "smtp_load: bad --messages, --size, --reconnects, --rate or timeout\n");
    return 2;
  }
  RaiseFileLimit();
  bool json = absl::GetFlag(FLAGS_json);
  LoadGenerator generator(std::move(options));
  if (!generator.Init()) return 3;
  generator.Run();
  return generator.Report(json);
}

}  // namespace
}  // namespace facteur::bench

int main(int argc, char** argv) { return facteur::bench::Main(argc, argv); }
