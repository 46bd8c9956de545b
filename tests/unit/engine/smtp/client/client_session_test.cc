// Unit tests of engine/smtp/client: the reply parser, and ClientSession driven through a
// FakeStream — the test plays the server by feeding replies with OnData() and reads what the
// session wrote.
#include "engine/smtp/client/client_session.h"

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/fake_stream.h"

namespace facteur::smtp {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr char kRemote[] = "mx1.example.net[192.0.2.1]";

// ---------------------------------------------------------------------------------------------
// ReplyParser

std::vector<mail::Reply> ParseAll(std::string_view bytes, bool* error = nullptr) {
  ReplyParser parser;
  std::vector<mail::Reply> out;
  parser.Feed(bytes, out);
  if (error != nullptr) *error = parser.error();
  return out;
}

TEST(ReplyParserTest, SingleLineWithEnhancedCode) {
  bool error = true;
  auto replies = ParseAll("250 2.1.0 Ok\r\n", &error);
  EXPECT_FALSE(error);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].code, 250);
  EXPECT_EQ(replies[0].enhanced, "2.1.0");
  EXPECT_EQ(replies[0].text, "Ok");
}

TEST(ReplyParserTest, MultilineJoinedAndEnhancedCodeStrippedFromEveryLine) {
  auto replies = ParseAll(
      "550-5.1.1 The email account that you tried to reach does not exist.\r\n"
      "550-5.1.1 Please try double-checking\r\n"
      "550 5.1.1 https://support.example/?p=NoSuchUser\r\n");
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].code, 550);
  EXPECT_EQ(replies[0].enhanced, "5.1.1");
  EXPECT_EQ(replies[0].text,
            "The email account that you tried to reach does not exist.\n"
            "Please try double-checking\nhttps://support.example/?p=NoSuchUser");
}

TEST(ReplyParserTest, EnhancedCodeOnTheLastLineOnly) {
  auto replies = ParseAll("451-Greylisted\r\n451 4.7.1 try again later\r\n");
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].enhanced, "4.7.1");
  EXPECT_EQ(replies[0].text, "Greylisted\ntry again later");
}

TEST(ReplyParserTest, EnhancedCodeOfAnotherClassIsLeftInTheText) {
  auto replies = ParseAll("550 4.1.1 odd\r\n250 2.0.0\r\n354 go ahead\r\n220 1.2.3 x\r\n");
  ASSERT_EQ(replies.size(), 4u);
  EXPECT_EQ(replies[0].enhanced, "");
  EXPECT_EQ(replies[0].text, "4.1.1 odd");
  EXPECT_EQ(replies[1].enhanced, "2.0.0");
  EXPECT_EQ(replies[1].text, "");
  EXPECT_EQ(replies[2].enhanced, "");
  EXPECT_EQ(replies[3].text, "1.2.3 x");
}

TEST(ReplyParserTest, NotAnEnhancedCode) {
  auto replies = ParseAll("250 2.1.1234 x\r\n250 2.1.0x\r\n250 2..0 y\r\n");
  ASSERT_EQ(replies.size(), 3u);
  for (const auto& reply : replies) EXPECT_EQ(reply.enhanced, "");
  EXPECT_EQ(replies[0].text, "2.1.1234 x");
}

TEST(ReplyParserTest, BareCodeBareLfAndSplitFeeds) {
  ReplyParser parser;
  std::vector<mail::Reply> out;
  const std::string input = "250-mx.example\r\n250-PIPELINING\n250\r\n221 2.0.0 Bye\r\n";
  for (char c : input) parser.Feed(std::string_view(&c, 1), out);
  EXPECT_FALSE(parser.error());
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].code, 250);
  EXPECT_EQ(out[0].text, "mx.example\nPIPELINING\n");
  EXPECT_EQ(out[1].code, 221);
  EXPECT_EQ(out[1].text, "Bye");
}

TEST(ReplyParserTest, IncompleteReplyWaits) {
  ReplyParser parser;
  std::vector<mail::Reply> out;
  parser.Feed("250-first\r\n250 sec", out);
  EXPECT_THAT(out, IsEmpty());
  parser.Feed("ond\r\n", out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].text, "first\nsecond");
}

TEST(ReplyParserTest, ControlCharactersBecomeQuestionMarks) {
  auto replies = ParseAll(std::string("550 bad\x01\rtext\x7f\ttab\r\n", 20));
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].text, "bad??text?\ttab");
}

TEST(ReplyParserTest, MalformedLinesAreErrors) {
  for (std::string_view bad : {"25x hi\r\n", "2\r\n", "150 info\r\n", "650 x\r\n",
                               "250_x\r\n", "hello\r\n", "250-a\r\n251 b\r\n", "\r\n"}) {
    bool error = false;
    ParseAll(bad, &error);
    EXPECT_TRUE(error) << bad;
  }
}

TEST(ReplyParserTest, ErrorIsSticky) {
  ReplyParser parser;
  std::vector<mail::Reply> out;
  parser.Feed("xyz\r\n", out);
  ASSERT_TRUE(parser.error());
  parser.Feed("250 ok\r\n", out);
  EXPECT_THAT(out, IsEmpty());
}

TEST(ReplyParserTest, LineCap) {
  bool error = true;
  ParseAll("250 " + std::string(4092, 'a') + "\r\n", &error);  // exactly 4096 octets
  EXPECT_FALSE(error);
  ParseAll("250 " + std::string(4093, 'a') + "\r\n", &error);
  EXPECT_TRUE(error);
  // Refused before its end arrives: no unbounded buffering.
  ReplyParser parser;
  std::vector<mail::Reply> out;
  parser.Feed("250 " + std::string(5000, 'a'), out);
  EXPECT_TRUE(parser.error());
}

TEST(ReplyParserTest, ReplySizeCap) {
  std::string many;
  for (int i = 0; i < 40; ++i) many += "250-" + std::string(2000, 'k') + "\r\n";
  bool error = false;
  ParseAll(many + "250 end\r\n", &error);
  EXPECT_TRUE(error);
}

// ---------------------------------------------------------------------------------------------
// ClientSession

struct Event {
  std::string what;  // "ready", "next", "done", "ended"
  TransactionResult result;
  mail::DeliveryOutcome why;
};

class FakeOwner final : public ClientSession::Owner {
 public:
  void OnReady(ClientSession& /*session*/) override {
    EXPECT_FALSE(in_call) << "callback inside an owner call";
    events.push_back({"ready", {}, {}});
    if (on_ready) on_ready();
  }
  void OnReadyForNext(ClientSession& session) override {
    EXPECT_FALSE(in_call) << "callback inside an owner call";
    EXPECT_TRUE(session.accepts_next());
    events.push_back({"next", {}, {}});
    if (on_next) on_next();
  }
  void OnTransactionDone(ClientSession& /*session*/, TransactionResult result) override {
    EXPECT_FALSE(in_call) << "callback inside an owner call";
    events.push_back({"done", std::move(result), {}});
    if (on_done) on_done();
  }
  void OnSessionEnded(ClientSession& /*session*/, const mail::DeliveryOutcome& why) override {
    EXPECT_FALSE(in_call) << "callback inside an owner call";
    EXPECT_FALSE(ended) << "OnSessionEnded twice";
    ended = true;
    events.push_back({"ended", {}, why});
  }

  std::vector<std::string> Names() const {
    std::vector<std::string> names;
    for (const auto& e : events) names.push_back(e.what);
    return names;
  }
  const Event* Last(std::string_view what) const {
    for (auto it = events.rbegin(); it != events.rend(); ++it) {
      if (it->what == what) return &*it;
    }
    return nullptr;
  }

  std::vector<Event> events;
  bool in_call = false;
  bool ended = false;
  std::function<void()> on_ready;
  std::function<void()> on_done;
  std::function<void()> on_next;
};

constexpr char kEhloAll[] =
    "250-mx1.example.net\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n"
    "250-SMTPUTF8\r\n250-DSN\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n";
constexpr char kEhloPlain[] = "250-mx1.example.net\r\n250 SIZE\r\n";  // no PIPELINING

OutboundMessage Message(std::vector<std::string> recipients, std::string body = "Subject: x\r\n\r\nhi\r\n") {
  OutboundMessage m;
  m.sender = "sender@origin.test";
  for (auto& r : recipients) m.recipients.push_back({std::move(r), "", ""});
  m.body = std::make_shared<const std::string>(std::move(body));
  return m;
}

class ClientSessionTest : public ::testing::Test {
 protected:
  void Make(TlsPolicy tls = TlsPolicy::kNone) {
    options_.ehlo_name = "out1.facteur.test";
    options_.tls = tls;
    options_.timeouts.greeting = absl::Seconds(301);
    options_.timeouts.command = absl::Seconds(302);
    options_.timeouts.data_initiation = absl::Seconds(121);
    options_.timeouts.data_block = absl::Seconds(181);
    options_.timeouts.data_termination = absl::Seconds(601);
    session_ = std::make_unique<ClientSession>(stream_, options_, owner_, kRemote);
    session_->OnStart(nullptr);
  }

  // Greeting and EHLO with `ehlo` as the answer; the session is then ready.
  void Handshake(std::string_view ehlo = kEhloAll, TlsPolicy tls = TlsPolicy::kNone) {
    Make(tls);
    EXPECT_EQ(stream_.idle_timeout, absl::Seconds(301));
    Server("220 mx1.example.net ESMTP\r\n");
    EXPECT_EQ(stream_.TakeOutput(), "EHLO out1.facteur.test\r\n");
    EXPECT_EQ(stream_.idle_timeout, absl::Seconds(302));
    Server(ehlo);
    ASSERT_TRUE(session_->ready());
    EXPECT_EQ(stream_.idle_timeout, absl::ZeroDuration());
    ASSERT_EQ(owner_.Names(), std::vector<std::string>{"ready"});
    owner_.events.clear();
  }

  void Server(std::string_view bytes) { session_->OnData(bytes); }
  void Send(const OutboundMessage& message) {
    owner_.in_call = true;
    session_->Send(message);
    owner_.in_call = false;
  }
  void Quit() {
    owner_.in_call = true;
    session_->Quit();
    owner_.in_call = false;
  }
  // What a real stream does after Close(): OnClosed, once.
  void Closed() { session_->OnClosed(); }

  const TransactionResult& Done() {
    const Event* e = owner_.Last("done");
    static const TransactionResult kNone;
    EXPECT_NE(e, nullptr);
    return e != nullptr ? e->result : kNone;
  }

  testing::FakeStream stream_;
  ClientOptions options_;
  FakeOwner owner_;
  std::unique_ptr<ClientSession> session_;
};

TEST_F(ClientSessionTest, CapabilitiesParsed) {
  Handshake();
  const ServerCapabilities& caps = session_->capabilities();
  EXPECT_TRUE(caps.esmtp);
  EXPECT_TRUE(caps.pipelining);
  EXPECT_TRUE(caps.size);
  EXPECT_EQ(caps.size_limit, 10240000u);
  EXPECT_TRUE(caps.eight_bit_mime);
  EXPECT_TRUE(caps.smtputf8);
  EXPECT_TRUE(caps.dsn);
  EXPECT_TRUE(caps.chunking);
  EXPECT_FALSE(caps.starttls);
  EXPECT_FALSE(session_->tls_active());
  EXPECT_EQ(session_->remote_name(), kRemote);
}

TEST_F(ClientSessionTest, PipelinedTransactionIsOneGroupThenTheBody) {
  Handshake();
  OutboundMessage m = Message({"a@dest.test", "b@dest.test"});
  Send(m);
  EXPECT_THAT(owner_.events, IsEmpty());
  // RFC 2920: everything up to DATA before any reply.
  EXPECT_EQ(stream_.TakeOutput(),
            absl::StrCat("MAIL FROM:<sender@origin.test> SIZE=", m.body->size(), "\r\n"
                         "RCPT TO:<a@dest.test>\r\n"
                         "RCPT TO:<b@dest.test>\r\n"
                         "DATA\r\n"));
  EXPECT_EQ(stream_.idle_timeout, absl::Seconds(302));
  Server("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "");
  Server("250 2.1.5 Ok\r\n");
  EXPECT_EQ(stream_.idle_timeout, absl::Seconds(121));  // waiting for 354
  Server("354 End data with <CR><LF>.<CR><LF>\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "Subject: x\r\n\r\nhi\r\n.\r\n");
  // RFC 5321 §4.5.3.2.5-6: each send of the body may take the data-block timeout, and the
  // reply to "." the data-termination one from when it is sent (the stream counts progress).
  EXPECT_EQ(stream_.send_timeout, absl::Seconds(181));
  EXPECT_EQ(stream_.idle_timeout, absl::Seconds(601));
  // The next message could start now (PipelinedNextTest); this owner has none.
  ASSERT_EQ(owner_.Names(), std::vector<std::string>{"next"});
  owner_.events.clear();
  Server("250 2.0.0 Ok: queued as 12345\r\n");
  ASSERT_EQ(owner_.Names(), std::vector<std::string>{"done"});
  const auto& r = Done().recipients;
  ASSERT_EQ(r.size(), 2u);
  for (const auto& outcome : r) {
    EXPECT_TRUE(outcome.delivered());
    EXPECT_EQ(outcome.scope, mail::OutcomeScope::kMessage);
    EXPECT_FALSE(outcome.local);
    EXPECT_EQ(outcome.remote, kRemote);
    EXPECT_EQ(outcome.reply.text, "Ok: queued as 12345");
  }
  EXPECT_TRUE(session_->ready());
  EXPECT_EQ(stream_.idle_timeout, absl::ZeroDuration());
  EXPECT_EQ(session_->transactions(), 1u);
}

TEST_F(ClientSessionTest, WithoutPipeliningOneCommandAtATime) {
  Handshake(kEhloPlain);
  Send(Message({"a@dest.test", "b@dest.test"}));
  EXPECT_EQ(stream_.TakeOutput(), "MAIL FROM:<sender@origin.test> SIZE=18\r\n");
  Server("250 2.1.0 Ok\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "RCPT TO:<a@dest.test>\r\n");
  Server("250 2.1.5 Ok\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "RCPT TO:<b@dest.test>\r\n");
  Server("250 2.1.5 Ok\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "DATA\r\n");
  EXPECT_EQ(stream_.idle_timeout, absl::Seconds(121));
  Server("354 go\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "Subject: x\r\n\r\nhi\r\n.\r\n");
  Server("250 2.0.0 queued\r\n");
  ASSERT_EQ(owner_.Names(), std::vector<std::string>{"done"});
  EXPECT_TRUE(Done().recipients[0].delivered());
  EXPECT_TRUE(Done().recipients[1].delivered());
}

TEST_F(ClientSessionTest, MixedRecipientOutcomes) {
  Handshake();
  Send(Message({"a@dest.test", "unknown@dest.test", "full@dest.test", "c@dest.test"}));
  stream_.TakeOutput();
  Server("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no such user\r\n"
         "452 4.2.2 mailbox full\r\n250 2.1.5 Ok\r\n354 go\r\n");
  EXPECT_THAT(stream_.TakeOutput(), HasSubstr("hi\r\n.\r\n"));
  Server("250 2.0.0 queued\r\n");
  const auto& r = Done().recipients;
  ASSERT_EQ(r.size(), 4u);
  EXPECT_TRUE(r[0].delivered());
  EXPECT_EQ(r[0].scope, mail::OutcomeScope::kMessage);
  EXPECT_TRUE(r[1].permanent());
  EXPECT_EQ(r[1].scope, mail::OutcomeScope::kRecipient);
  EXPECT_EQ(r[1].reply.enhanced, "5.1.1");
  EXPECT_EQ(r[1].reply.text, "no such user");
  EXPECT_TRUE(r[2].transient());
  EXPECT_EQ(r[2].scope, mail::OutcomeScope::kRecipient);
  EXPECT_EQ(r[2].reply.code, 452);
  EXPECT_TRUE(r[3].delivered());
  // A transaction that reached its end needs no RSET.
  Send(Message({"d@dest.test"}));
  EXPECT_TRUE(absl::StartsWith(stream_.TakeOutput(), "MAIL FROM:"));
}

TEST_F(ClientSessionTest, AllRecipientsRefusedPipelinedSkipsTheBodyAndResetsBeforeTheNext) {
  Handshake();
  Send(Message({"x@dest.test", "y@dest.test"}));
  stream_.TakeOutput();
  Server("250 2.1.0 Ok\r\n550 5.1.1 no x\r\n550 5.1.1 no y\r\n554 5.5.1 Error: no valid recipients\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "");  // no body, no "."
  const auto& r = Done().recipients;
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].reply.text, "no x");
  EXPECT_EQ(r[1].reply.text, "no y");
  EXPECT_EQ(r[1].scope, mail::OutcomeScope::kRecipient);
  EXPECT_TRUE(session_->ready());
  // RFC 2920: RSET may lead the next pipelined group.
  Send(Message({"z@dest.test"}));
  EXPECT_TRUE(absl::StartsWith(stream_.TakeOutput(), "RSET\r\nMAIL FROM:<sender@origin.test>"));
  Server("250 2.0.0 Ok\r\n250 Ok\r\n250 Ok\r\n354 go\r\n");
  EXPECT_THAT(stream_.TakeOutput(), HasSubstr("hi\r\n.\r\n"));
  Server("250 2.0.0 queued\r\n");
  EXPECT_TRUE(Done().recipients[0].delivered());
  EXPECT_EQ(session_->transactions(), 2u);
}

TEST_F(ClientSessionTest, AllRecipientsRefusedWithoutPipeliningSendsNoDataAndResetsFirst) {
  Handshake(kEhloPlain);
  Send(Message({"x@dest.test"}));
  EXPECT_THAT(stream_.TakeOutput(), HasSubstr("MAIL FROM"));
  Server("250 Ok\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "RCPT TO:<x@dest.test>\r\n");
  Server("550 5.1.1 no x\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "");  // no DATA
  ASSERT_EQ(owner_.Names(), std::vector<std::string>{"done"});
  EXPECT_TRUE(Done().recipients[0].permanent());
  Send(Message({"y@dest.test"}));
  EXPECT_EQ(stream_.TakeOutput(), "RSET\r\n");
  Server("250 2.0.0 Ok\r\n");
  EXPECT_THAT(stream_.TakeOutput(), HasSubstr("MAIL FROM"));
}

TEST_F(ClientSessionTest, PipelinedDataAcceptedWithNoRecipientGetsALoneDot) {
  Handshake();
  Send(Message({"x@dest.test"}));
  stream_.TakeOutput();
  Server("250 Ok\r\n550 5.1.1 no x\r\n354 go\r\n");
  EXPECT_EQ(stream_.TakeOutput(), ".\r\n");
  EXPECT_THAT(owner_.events, IsEmpty());
  Server("250 2.0.0 queued an empty message\r\n");  // ignored
  EXPECT_TRUE(Done().recipients[0].permanent());
  Send(Message({"y@dest.test"}));
  EXPECT_TRUE(absl::StartsWith(stream_.TakeOutput(), "RSET\r\n"));
}

TEST_F(ClientSessionTest, MailRefusedSpeaksForEveryRecipient) {
  Handshake();
  Send(Message({"a@dest.test", "b@dest.test"}));
  stream_.TakeOutput();
  Server("550 5.7.1 sender blocked\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n"
         "503 5.5.1 need MAIL\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "");
  const auto& r = Done().recipients;
  ASSERT_EQ(r.size(), 2u);
  for (const auto& outcome : r) {
    EXPECT_EQ(outcome.reply.code, 550);
    EXPECT_EQ(outcome.reply.text, "sender blocked");
    EXPECT_EQ(outcome.scope, mail::OutcomeScope::kMessage);
  }
  Send(Message({"c@dest.test"}));
  EXPECT_TRUE(absl::StartsWith(stream_.TakeOutput(), "RSET\r\n"));
}

TEST_F(ClientSessionTest, MailRefusedWithoutPipeliningStopsThere) {
  Handshake(kEhloPlain);
  Send(Message({"a@dest.test"}));
  stream_.TakeOutput();
  Server("451 4.3.0 try later\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "");
  EXPECT_TRUE(Done().recipients[0].transient());
  EXPECT_EQ(Done().recipients[0].scope, mail::OutcomeScope::kMessage);
}

TEST_F(ClientSessionTest, FinalDataReplyTransientAndPermanent) {
  Handshake();
  for (std::string_view final_reply : {"451 4.3.0 queue trouble\r\n", "554 5.7.1 spam\r\n"}) {
    owner_.events.clear();
    Send(Message({"a@dest.test", "bad@dest.test"}));
    stream_.TakeOutput();
    Server("250 Ok\r\n250 Ok\r\n550 5.1.1 no\r\n354 go\r\n");
    stream_.TakeOutput();
    Server(final_reply);
    const auto& r = Done().recipients;
    EXPECT_EQ(r[0].reply.code, final_reply[0] == '4' ? 451 : 554);
    EXPECT_EQ(r[0].scope, mail::OutcomeScope::kMessage);
    EXPECT_EQ(r[1].reply.code, 550);  // refused at RCPT keeps its own reply
    EXPECT_TRUE(session_->ready());
  }
  // The transactions reached their end: no RSET.
  Send(Message({"c@dest.test"}));
  EXPECT_TRUE(absl::StartsWith(stream_.TakeOutput(), "MAIL FROM:"));
}

TEST_F(ClientSessionTest, DataRefusedBeforeTheBody) {
  Handshake();
  Send(Message({"a@dest.test"}));
  stream_.TakeOutput();
  Server("250 Ok\r\n250 Ok\r\n554 5.5.1 no data for you\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "");
  EXPECT_EQ(Done().recipients[0].reply.code, 554);
  EXPECT_EQ(Done().recipients[0].scope, mail::OutcomeScope::kMessage);
  Send(Message({"c@dest.test"}));
  EXPECT_TRUE(absl::StartsWith(stream_.TakeOutput(), "RSET\r\n"));
}

TEST_F(ClientSessionTest, Code421MidTransactionEndsTheSession) {
  Handshake();
  Send(Message({"a@dest.test", "b@dest.test", "c@dest.test"}));
  stream_.TakeOutput();
  Server("250 Ok\r\n550 5.1.1 no a\r\n250 Ok\r\n421 4.7.0 too many errors, closing\r\n");
  EXPECT_TRUE(stream_.closed);
  EXPECT_EQ(stream_.TakeOutput(), "");  // no QUIT after 421
  EXPECT_THAT(owner_.events, IsEmpty());  // reported when the stream has closed
  EXPECT_FALSE(session_->ready());
  Closed();
  ASSERT_EQ(owner_.Names(), (std::vector<std::string>{"done", "ended"}));
  const auto& r = owner_.events[0].result.recipients;
  EXPECT_EQ(r[0].reply.code, 550);
  EXPECT_EQ(r[1].reply.code, 421);  // accepted, not delivered
  EXPECT_EQ(r[1].scope, mail::OutcomeScope::kSession);
  EXPECT_TRUE(r[1].transient());
  EXPECT_EQ(r[2].reply.code, 421);
  const auto& why = owner_.events[1].why;
  EXPECT_EQ(why.reply.code, 421);
  EXPECT_FALSE(why.local);
  EXPECT_EQ(why.scope, mail::OutcomeScope::kSession);
}

TEST_F(ClientSessionTest, Code421WhileIdleEndsTheSession) {
  Handshake();
  Server("421 4.4.2 idle too long\r\n");
  EXPECT_TRUE(stream_.closed);
  Closed();
  ASSERT_EQ(owner_.Names(), std::vector<std::string>{"ended"});
  EXPECT_EQ(owner_.events[0].why.reply.code, 421);
}

TEST_F(ClientSessionTest, DotStuffing) {
  Handshake();
  Send(Message({"a@dest.test"}, ".starts\r\nmid\r\n..two\r\n.\r\nend.\r\n.x"));
  stream_.TakeOutput();
  Server("250 Ok\r\n250 Ok\r\n354 go\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "..starts\r\nmid\r\n...two\r\n..\r\nend.\r\n..x\r\n.\r\n");
}

TEST_F(ClientSessionTest, BodyEnds) {
  Handshake();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"no newline", "no newline\r\n.\r\n"},
      {"", ".\r\n"},
      {"ends in cr\r", "ends in cr\r\n.\r\n"},
      {"line\r\n", "line\r\n.\r\n"},
      {"bare lf\n.", "bare lf\n..\r\n.\r\n"},
  };
  for (const auto& [body, wire] : cases) {
    owner_.events.clear();
    Send(Message({"a@dest.test"}, body));
    stream_.TakeOutput();
    Server("250 Ok\r\n250 Ok\r\n354 go\r\n");
    EXPECT_EQ(stream_.TakeOutput(), wire) << body;
    Server("250 Ok\r\n");
    ASSERT_EQ(owner_.Names(), (std::vector<std::string>{"next", "done"}));
  }
}

TEST_F(ClientSessionTest, TimeoutWhileWaitingForRcpt) {
  Handshake(kEhloPlain);
  Send(Message({"a@dest.test", "b@dest.test"}));
  stream_.TakeOutput();
  Server("250 Ok\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "RCPT TO:<a@dest.test>\r\n");
  Server("250 Ok\r\n");
  stream_.TakeOutput();
  session_->OnIdleTimeout();
  EXPECT_TRUE(stream_.closed);
  EXPECT_EQ(stream_.TakeOutput(), "");
  Closed();
  ASSERT_EQ(owner_.Names(), (std::vector<std::string>{"done", "ended"}));
  for (const auto& outcome : owner_.events[0].result.recipients) {
    EXPECT_EQ(outcome.reply.code, 451);
    EXPECT_EQ(outcome.reply.enhanced, "4.4.2");
    EXPECT_TRUE(outcome.local);
    EXPECT_EQ(outcome.scope, mail::OutcomeScope::kSession);
    EXPECT_EQ(outcome.reply.text,
              absl::StrCat("timeout talking to ", kRemote, " while sending RCPT TO"));
  }
  EXPECT_TRUE(owner_.events[1].why.local);
  EXPECT_TRUE(owner_.events[1].why.transient());
}

TEST_F(ClientSessionTest, TimeoutAtEachHandshakeStage) {
  Make();
  session_->OnIdleTimeout();
  EXPECT_TRUE(stream_.closed);
  Closed();
  ASSERT_EQ(owner_.Names(), std::vector<std::string>{"ended"});
  EXPECT_THAT(owner_.events[0].why.reply.text, HasSubstr("receiving the initial server greeting"));
  EXPECT_EQ(owner_.events[0].why.reply.enhanced, "4.4.2");
}

TEST_F(ClientSessionTest, TimeoutWaitingForTheReplyToTheDot) {
  Handshake();
  Send(Message({"a@dest.test"}));
  Server("250 Ok\r\n250 Ok\r\n354 go\r\n");
  owner_.events.clear();  // "next"
  session_->OnIdleTimeout();
  Closed();
  EXPECT_THAT(owner_.events[0].result.recipients[0].reply.text,
              HasSubstr("while sending end of data -- message may be sent more than once"));
}

TEST_F(ClientSessionTest, LostConnectionDuringData) {
  Handshake();
  Send(Message({"a@dest.test"}));
  Server("250 Ok\r\n250 Ok\r\n354 go\r\n");
  owner_.events.clear();  // "next"
  Closed();  // the server went away: no Close() from the session
  ASSERT_EQ(owner_.Names(), (std::vector<std::string>{"done", "ended"}));
  const auto& outcome = owner_.events[0].result.recipients[0];
  EXPECT_EQ(outcome.reply.code, 451);
  EXPECT_EQ(outcome.reply.enhanced, "4.4.2");
  EXPECT_TRUE(outcome.local);
  EXPECT_TRUE(absl::StartsWith(outcome.reply.text, absl::StrCat("lost connection with ", kRemote,
                                                                " while sending end of data")));
  EXPECT_EQ(owner_.events[1].why.reply.text, outcome.reply.text);
}

TEST_F(ClientSessionTest, HeloFallback) {
  Make();
  Server("220 old.example ESMTP\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "EHLO out1.facteur.test\r\n");
  Server("502 5.5.2 Error: command not recognized\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "HELO out1.facteur.test\r\n");
  EXPECT_THAT(owner_.events, IsEmpty());
  Server("250 old.example\r\n");
  ASSERT_EQ(owner_.Names(), std::vector<std::string>{"ready"});
  EXPECT_FALSE(session_->capabilities().esmtp);
  // Plain SMTP: no parameters, no pipelining.
  Send(Message({"a@dest.test", "b@dest.test"}));
  EXPECT_EQ(stream_.TakeOutput(), "MAIL FROM:<sender@origin.test>\r\n");
}

TEST_F(ClientSessionTest, HeloRefusedEndsTheSession) {
  Make();
  Server("220 x\r\n");
  Server("500 no\r\n");
  Server("550 5.7.1 go away\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "EHLO out1.facteur.test\r\nHELO out1.facteur.test\r\nQUIT\r\n");
  EXPECT_TRUE(stream_.closed);
  Closed();
  EXPECT_EQ(owner_.events.back().why.reply.code, 550);
  EXPECT_TRUE(owner_.events.back().why.permanent());
}

TEST_F(ClientSessionTest, EhloTransientRefusal) {
  Make();
  Server("220 x\r\n451 4.3.2 busy\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "EHLO out1.facteur.test\r\nQUIT\r\n");
  Closed();
  EXPECT_EQ(owner_.events.back().why.reply.code, 451);
}

TEST_F(ClientSessionTest, GreetingRefusals) {
  Make();
  Server("554 5.7.1 no service for you\r\n");
  // RFC 5321 §3.1: QUIT after a 554 greeting.
  EXPECT_EQ(stream_.TakeOutput(), "QUIT\r\n");
  EXPECT_TRUE(stream_.closed);
  EXPECT_THAT(owner_.events, IsEmpty());
  Closed();
  ASSERT_EQ(owner_.Names(), std::vector<std::string>{"ended"});
  const auto& why = owner_.events[0].why;
  EXPECT_EQ(why.scope, mail::OutcomeScope::kSession);
  EXPECT_EQ(why.reply.code, 554);
  EXPECT_FALSE(why.local);
  EXPECT_EQ(why.remote, kRemote);
}

TEST_F(ClientSessionTest, Greeting421ClosesWithoutQuit) {
  Make();
  Server("421 4.3.2 too busy\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "");
  EXPECT_TRUE(stream_.closed);
  Closed();
  EXPECT_EQ(owner_.events[0].why.reply.code, 421);
  EXPECT_TRUE(owner_.events[0].why.transient());
}

TEST_F(ClientSessionTest, StartTlsRequiredButNotOffered) {
  Make(TlsPolicy::kRequired);
  Server("220 x\r\n");
  stream_.TakeOutput();
  Server(kEhloAll);  // no STARTTLS
  EXPECT_EQ(stream_.TakeOutput(), "QUIT\r\n");
  EXPECT_FALSE(stream_.tls_requested);
  EXPECT_TRUE(stream_.closed);
  EXPECT_THAT(owner_.events, IsEmpty());  // never ready: no mail is sent
  Closed();
  ASSERT_EQ(owner_.Names(), std::vector<std::string>{"ended"});
  const auto& why = owner_.events[0].why;
  EXPECT_EQ(why.reply.code, 451);
  EXPECT_EQ(why.reply.enhanced, "4.7.5");
  EXPECT_TRUE(why.local);
  EXPECT_TRUE(why.transient());
  EXPECT_EQ(why.scope, mail::OutcomeScope::kSession);
}

TEST_F(ClientSessionTest, StartTlsRequiredButRefused) {
  Make(TlsPolicy::kRequired);
  Server("220 x\r\n250-x\r\n250 STARTTLS\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "EHLO out1.facteur.test\r\nSTARTTLS\r\n");
  Server("454 4.7.0 TLS not available\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "QUIT\r\n");
  Closed();
  EXPECT_EQ(owner_.events.back().why.reply.enhanced, "4.7.5");
  EXPECT_THAT(owner_.events.back().why.reply.text, HasSubstr("454 4.7.0 TLS not available"));
}

TEST_F(ClientSessionTest, StartTlsThenSecondEhlo) {
  Make(TlsPolicy::kRequired);
  Server("220 x\r\n250-x\r\n250-PIPELINING\r\n250 STARTTLS\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "EHLO out1.facteur.test\r\nSTARTTLS\r\n");
  EXPECT_TRUE(session_->capabilities().pipelining);
  // A reply injected after the 220, in the same read, must be dropped (RFC 3207 §4.2).
  Server("220 2.0.0 go ahead\r\n250 injected\r\n");
  EXPECT_TRUE(stream_.tls_requested);
  EXPECT_EQ(stream_.TakeOutput(), "");
  Server("250 still before TLS\r\n");  // ignored: the stream runs the handshake
  EXPECT_THAT(owner_.events, IsEmpty());
  stream_.tls = true;
  session_->OnTlsStarted(io::TlsInfo{"TLSv1.3", "TLS_AES_256_GCM_SHA384", 256});
  EXPECT_TRUE(session_->tls_active());
  EXPECT_FALSE(session_->capabilities().pipelining);  // forgotten
  EXPECT_EQ(stream_.TakeOutput(), "EHLO out1.facteur.test\r\n");
  Server("250-x\r\n250 8BITMIME\r\n");
  ASSERT_EQ(owner_.Names(), std::vector<std::string>{"ready"});
  EXPECT_TRUE(session_->capabilities().eight_bit_mime);
  EXPECT_FALSE(session_->capabilities().starttls);
  EXPECT_EQ(stream_.TakeOutput(), "");  // no second STARTTLS
}

TEST_F(ClientSessionTest, PartialLineBeforeTlsIsForgotten) {
  Make(TlsPolicy::kOpportunistic);
  Server("220 x\r\n250-x\r\n250 STARTTLS\r\n220 go ahead\r\n250-inj");
  ASSERT_TRUE(stream_.tls_requested);
  stream_.TakeOutput();
  session_->OnTlsStarted(io::TlsInfo{});
  EXPECT_EQ(stream_.TakeOutput(), "EHLO out1.facteur.test\r\n");
  Server("250-x\r\n250 PIPELINING\r\n");
  ASSERT_EQ(owner_.Names(), std::vector<std::string>{"ready"});
  EXPECT_TRUE(session_->capabilities().pipelining);
}

TEST_F(ClientSessionTest, StartTlsHandshakeFailure) {
  for (TlsPolicy policy : {TlsPolicy::kRequired, TlsPolicy::kOpportunistic}) {
    owner_ = FakeOwner();
    stream_ = testing::FakeStream();
    Make(policy);
    Server("220 x\r\n250-x\r\n250 STARTTLS\r\n220 go ahead\r\n");
    ASSERT_TRUE(stream_.tls_requested);
    session_->OnTlsFailed("certificate verify failed");
    Closed();
    ASSERT_EQ(owner_.Names(), std::vector<std::string>{"ended"});
    const auto& why = owner_.events[0].why;
    EXPECT_EQ(why.reply.enhanced, "4.7.5");
    EXPECT_TRUE(why.transient());
    EXPECT_TRUE(why.local);
    EXPECT_THAT(why.reply.text, HasSubstr("certificate verify failed"));
  }
}

TEST_F(ClientSessionTest, OpportunisticTls) {
  // Not offered: plain.
  Handshake(kEhloAll, TlsPolicy::kOpportunistic);
  EXPECT_FALSE(session_->tls_active());
  // Offered but refused: plain too.
  owner_ = FakeOwner();
  stream_ = testing::FakeStream();
  Make(TlsPolicy::kOpportunistic);
  Server("220 x\r\n250-x\r\n250 STARTTLS\r\n454 4.7.0 not now\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "EHLO out1.facteur.test\r\nSTARTTLS\r\n");
  ASSERT_EQ(owner_.Names(), std::vector<std::string>{"ready"});
  EXPECT_FALSE(stream_.tls_requested);
  // Policy none: never asks.
  owner_ = FakeOwner();
  stream_ = testing::FakeStream();
  Make(TlsPolicy::kNone);
  Server("220 x\r\n250-x\r\n250 STARTTLS\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "EHLO out1.facteur.test\r\n");
  ASSERT_EQ(owner_.Names(), std::vector<std::string>{"ready"});
}

TEST_F(ClientSessionTest, ImplicitTlsSatisfiesRequired) {
  options_.tls = TlsPolicy::kRequired;
  options_.ehlo_name = "out1.facteur.test";
  session_ = std::make_unique<ClientSession>(stream_, options_, owner_, kRemote);
  io::TlsInfo info{"TLSv1.3", "x", 256};
  session_->OnStart(&info);
  Server("220 x\r\n250 x\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "EHLO out1.facteur.test\r\n");
  EXPECT_TRUE(session_->tls_active());
  ASSERT_EQ(owner_.Names(), std::vector<std::string>{"ready"});
}

TEST_F(ClientSessionTest, SmtpUtf8NotOfferedFailsTheMessageWithoutSendingIt) {
  Handshake(kEhloPlain);
  OutboundMessage m = Message({"a@dest.test", "b@dest.test"});
  m.smtputf8 = true;
  Send(m);
  EXPECT_THAT(owner_.events, IsEmpty());  // never inside Send()
  EXPECT_EQ(stream_.TakeOutput(), "RSET\r\n");  // the round trip that reports
  Server("250 2.0.0 Ok\r\n");
  const auto& r = Done().recipients;
  ASSERT_EQ(r.size(), 2u);
  for (const auto& outcome : r) {
    EXPECT_EQ(outcome.reply.code, 550);
    EXPECT_EQ(outcome.reply.enhanced, "5.6.7");
    EXPECT_TRUE(outcome.local);
    EXPECT_TRUE(outcome.permanent());
  }
  EXPECT_EQ(stream_.TakeOutput(), "");
  EXPECT_TRUE(session_->ready());
}

TEST_F(ClientSessionTest, SmtpUtf8Offered) {
  Handshake();
  OutboundMessage m = Message({"ü@dest.test"});
  m.smtputf8 = true;
  Send(m);
  EXPECT_THAT(stream_.TakeOutput(), HasSubstr(" SMTPUTF8\r\nRCPT TO:<ü@dest.test>\r\n"));
}

TEST_F(ClientSessionTest, ParametersOnlyWhenOffered) {
  OutboundMessage m = Message({"a@dest.test"}, "x\r\n");
  m.eight_bit = true;
  m.dsn_ret = "HDRS";
  m.dsn_envid = "QQ314159";
  m.recipients[0].notify = "SUCCESS,FAILURE";
  m.recipients[0].orcpt = "rfc822;a@dest.test";
  Handshake();
  Send(m);
  EXPECT_EQ(stream_.TakeOutput(),
            "MAIL FROM:<sender@origin.test> SIZE=3 BODY=8BITMIME RET=HDRS ENVID=QQ314159\r\n"
            "RCPT TO:<a@dest.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@dest.test\r\n"
            "DATA\r\n");

  owner_ = FakeOwner();
  stream_ = testing::FakeStream();
  Handshake("250-x\r\n250 PIPELINING\r\n");
  Send(m);
  EXPECT_EQ(stream_.TakeOutput(),
            "MAIL FROM:<sender@origin.test>\r\nRCPT TO:<a@dest.test>\r\nDATA\r\n");
}

TEST_F(ClientSessionTest, UnwritableAddressesAndParameters) {
  Handshake();
  OutboundMessage m = Message({"a@dest.test", "b@dest.test\r\nRSET"});
  m.dsn_envid = "has space";
  Send(m);
  EXPECT_EQ(stream_.TakeOutput(),
            "MAIL FROM:<sender@origin.test> SIZE=18\r\nRCPT TO:<a@dest.test>\r\nDATA\r\n");
  Server("250 Ok\r\n250 Ok\r\n354 go\r\n");
  stream_.TakeOutput();
  Server("250 Ok\r\n");
  const auto& r = Done().recipients;
  EXPECT_TRUE(r[0].delivered());
  EXPECT_EQ(r[1].reply.code, 501);
  EXPECT_TRUE(r[1].local);
  EXPECT_TRUE(r[1].permanent());
}

TEST_F(ClientSessionTest, TwoMessagesOnOneSessionThenQuit) {
  Handshake();
  for (int i = 0; i < 2; ++i) {
    owner_.events.clear();
    Send(Message({absl::StrCat("r", i, "@dest.test")}));
    EXPECT_THAT(stream_.TakeOutput(), HasSubstr(absl::StrCat("RCPT TO:<r", i, "@dest.test>")));
    Server("250 Ok\r\n250 Ok\r\n354 go\r\n");
    stream_.TakeOutput();
    Server("250 Ok\r\n");
    ASSERT_EQ(owner_.Names(), (std::vector<std::string>{"next", "done"}));
  }
  EXPECT_EQ(session_->transactions(), 2u);
  owner_.events.clear();
  Quit();
  EXPECT_EQ(stream_.TakeOutput(), "QUIT\r\n");
  EXPECT_EQ(stream_.idle_timeout, absl::Seconds(302));  // bounded wait for 221
  EXPECT_FALSE(stream_.closed);
  Server("221 2.0.0 Bye\r\n");
  EXPECT_TRUE(stream_.closed);
  EXPECT_THAT(owner_.events, IsEmpty());
  Closed();
  ASSERT_EQ(owner_.Names(), std::vector<std::string>{"ended"});
  EXPECT_TRUE(owner_.events[0].why.delivered());
  EXPECT_FALSE(owner_.events[0].why.local);
}

TEST_F(ClientSessionTest, QuitWithoutReply) {
  Handshake();
  Quit();
  session_->OnIdleTimeout();
  EXPECT_TRUE(stream_.closed);
  Closed();
  EXPECT_EQ(owner_.events.back().why.reply.enhanced, "4.4.2");
  // A server that closes instead of answering QUIT lost nothing.
  owner_ = FakeOwner();
  stream_ = testing::FakeStream();
  Handshake();
  Quit();
  Closed();
  EXPECT_TRUE(owner_.events.back().why.delivered());
}

TEST_F(ClientSessionTest, QuitDuringHandshakeClosesWithoutCallbackInside) {
  Make();
  Quit();
  EXPECT_TRUE(stream_.closed);
  EXPECT_EQ(stream_.TakeOutput(), "");
  EXPECT_THAT(owner_.events, IsEmpty());
  Closed();
  ASSERT_EQ(owner_.Names(), std::vector<std::string>{"ended"});
}

TEST_F(ClientSessionTest, QuitDuringTransaction) {
  Handshake();
  Send(Message({"a@dest.test"}));
  Server("250 Ok\r\n");
  Quit();
  EXPECT_TRUE(stream_.closed);
  EXPECT_THAT(owner_.events, IsEmpty());
  Closed();
  ASSERT_EQ(owner_.Names(), (std::vector<std::string>{"done", "ended"}));
  EXPECT_TRUE(owner_.events[0].result.recipients[0].transient());
}

TEST_F(ClientSessionTest, SendWhileClosingReportsAtClose) {
  Handshake();
  Quit();
  Send(Message({"a@dest.test"}));
  EXPECT_EQ(stream_.TakeOutput(), "QUIT\r\n");
  Server("221 Bye\r\n");
  Closed();
  ASSERT_EQ(owner_.Names(), (std::vector<std::string>{"done", "ended"}));
  EXPECT_TRUE(owner_.events[0].result.recipients[0].transient());
}

TEST_F(ClientSessionTest, OwnerSendsTheNextMessageFromTheCallback) {
  Handshake();
  int sent = 1;
  owner_.on_done = [&] {
    if (sent < 3) {
      ++sent;
      session_->Send(Message({absl::StrCat("n", sent, "@dest.test")}));
    } else {
      session_->Quit();
    }
  };
  Send(Message({"n1@dest.test"}));
  // The server answers everything in one read, as a pipelining server may once it has the
  // commands; each transaction starts from inside the previous one's callback.
  Server("250 Ok\r\n250 Ok\r\n354 go\r\n");
  Server("250 Ok\r\n250 Ok\r\n250 Ok\r\n354 go\r\n");
  Server("250 Ok\r\n250 Ok\r\n250 Ok\r\n354 go\r\n250 Ok\r\n221 Bye\r\n");
  EXPECT_TRUE(stream_.closed);
  EXPECT_EQ(session_->transactions(), 3u);
  const std::string out = stream_.TakeOutput();
  EXPECT_THAT(out, HasSubstr("RCPT TO:<n3@dest.test>"));
  EXPECT_TRUE(absl::EndsWith(out, "QUIT\r\n"));
  Closed();
  EXPECT_EQ(owner_.Names(), (std::vector<std::string>{"next", "done", "next", "done", "next",
                                                       "done", "ended"}));
  EXPECT_TRUE(owner_.events.back().why.delivered());
}

TEST_F(ClientSessionTest, MalformedReplyEndsTheSession) {
  Handshake();
  Send(Message({"a@dest.test"}));
  Server("250 Ok\r\n25x what\r\n");
  EXPECT_TRUE(stream_.closed);
  Closed();
  const auto& outcome = owner_.events[0].result.recipients[0];
  EXPECT_EQ(outcome.reply.code, 451);
  EXPECT_EQ(outcome.reply.enhanced, "4.5.0");
  EXPECT_TRUE(outcome.local);
  EXPECT_THAT(outcome.reply.text, HasSubstr("malformed reply"));
  EXPECT_THAT(outcome.reply.text, HasSubstr("sending RCPT TO"));
}

TEST_F(ClientSessionTest, HugeReplyLineEndsTheSession) {
  Make();
  Server("220 " + std::string(10000, 'x'));
  EXPECT_TRUE(stream_.closed);
  Closed();
  EXPECT_EQ(owner_.events[0].why.reply.enhanced, "4.5.0");
  EXPECT_THAT(owner_.events[0].why.reply.text, HasSubstr("initial server greeting"));
}

TEST_F(ClientSessionTest, UnexpectedReplies) {
  Handshake();
  Server("250 I am chatty\r\n");  // nothing was asked
  EXPECT_TRUE(stream_.closed);
  Closed();
  EXPECT_EQ(owner_.events[0].why.reply.enhanced, "4.5.0");
  // A 250 to DATA would otherwise read as a delivery.
  owner_ = FakeOwner();
  stream_ = testing::FakeStream();
  Handshake();
  Send(Message({"a@dest.test"}));
  Server("250 Ok\r\n250 Ok\r\n250 Ok\r\n");
  Closed();
  EXPECT_FALSE(owner_.events[0].result.recipients[0].delivered());
  EXPECT_TRUE(owner_.events[0].result.recipients[0].transient());
}

TEST_F(ClientSessionTest, RsetRefusedEndsTheSession) {
  Handshake(kEhloPlain);
  Send(Message({"x@dest.test"}));
  Server("250 Ok\r\n550 no\r\n");
  Send(Message({"y@dest.test"}));
  EXPECT_THAT(stream_.TakeOutput(), HasSubstr("RSET\r\n"));
  Server("500 what is RSET\r\n");
  EXPECT_TRUE(absl::EndsWith(stream_.TakeOutput(), "QUIT\r\n"));
  Closed();
  const auto& outcome = owner_.events.back().why;
  EXPECT_THAT(owner_.Names(), (std::vector<std::string>{"done", "done", "ended"}));
  EXPECT_TRUE(owner_.events[1].result.recipients[0].transient());
  EXPECT_THAT(outcome.reply.text, HasSubstr("refused RSET"));
}

TEST_F(ClientSessionTest, ZeroRecipients) {
  Handshake();
  Send(Message({}));
  EXPECT_EQ(stream_.TakeOutput(), "RSET\r\n");
  Server("250 Ok\r\n");
  ASSERT_EQ(owner_.Names(), std::vector<std::string>{"done"});
  EXPECT_THAT(Done().recipients, IsEmpty());
}

// RFC 2920 §3.1: message content may open a group. The owner starts the next message from
// OnReadyForNext; its commands follow the end of data in the same write.
class PipelinedNextTest : public ClientSessionTest {
 protected:
  // Sends A to a@dest.test; once its body is out, B to b@dest.test (once).
  void SendTwo() {
    Handshake();
    owner_.on_next = [this] {
      if (next_sent_) return;
      next_sent_ = true;
      session_->Send(Message({"b@dest.test"}, "Subject: b\r\n\r\nB\r\n"));
    };
    Send(Message({"a@dest.test"}, "Subject: a\r\n\r\nA\r\n"));
    EXPECT_EQ(stream_.TakeOutput(),
              "MAIL FROM:<sender@origin.test> SIZE=17\r\nRCPT TO:<a@dest.test>\r\nDATA\r\n");
    EXPECT_FALSE(session_->accepts_next());  // A's 354 is not in yet
    Server("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n");
    EXPECT_EQ(owner_.Names(), std::vector<std::string>{"next"});
    owner_.events.clear();
  }

  bool next_sent_ = false;
};

TEST_F(PipelinedNextTest, NextMessageFollowsTheEndOfDataInOneWrite) {
  SendTwo();
  // One write: A's body and end of data, then B's MAIL, RCPT and DATA.
  EXPECT_EQ(stream_.TakeOutput(),
            "Subject: a\r\n\r\nA\r\n.\r\n"
            "MAIL FROM:<sender@origin.test> SIZE=17\r\nRCPT TO:<b@dest.test>\r\nDATA\r\n");
  EXPECT_FALSE(session_->ready());
  EXPECT_FALSE(session_->accepts_next());  // two in progress: no third
  EXPECT_EQ(stream_.idle_timeout, absl::Seconds(601));  // A's end of data first
  EXPECT_EQ(session_->transactions(), 2u);

  Server("250 2.0.0 Ok: queued as A1\r\n");
  ASSERT_EQ(owner_.Names(), std::vector<std::string>{"done"});
  EXPECT_TRUE(Done().recipients[0].delivered());
  EXPECT_EQ(Done().recipients[0].reply.text, "Ok: queued as A1");
  EXPECT_FALSE(session_->ready());  // B is under way
  EXPECT_EQ(stream_.idle_timeout, absl::Seconds(302));  // B's MAIL reply next
  owner_.events.clear();

  Server("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n");
  EXPECT_EQ(stream_.TakeOutput(), "Subject: b\r\n\r\nB\r\n.\r\n");
  ASSERT_EQ(owner_.Names(), std::vector<std::string>{"next"});  // offered again, not taken
  owner_.events.clear();
  Server("250 2.0.0 Ok: queued as B1\r\n");
  ASSERT_EQ(owner_.Names(), std::vector<std::string>{"done"});
  EXPECT_EQ(Done().recipients[0].reply.text, "Ok: queued as B1");
  EXPECT_TRUE(session_->ready());
  EXPECT_EQ(stream_.idle_timeout, absl::ZeroDuration());
}

TEST_F(PipelinedNextTest, EveryReplyInOneRead) {
  SendTwo();
  stream_.TakeOutput();
  Server("250 2.0.0 A1\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n250 2.0.0 B1\r\n");
  EXPECT_EQ(owner_.Names(), (std::vector<std::string>{"done", "next", "done"}));
  EXPECT_EQ(owner_.events[0].result.recipients[0].reply.text, "A1");
  EXPECT_EQ(owner_.events[2].result.recipients[0].reply.text, "B1");
  EXPECT_EQ(stream_.TakeOutput(), "Subject: b\r\n\r\nB\r\n.\r\n");
  EXPECT_TRUE(session_->ready());
}

TEST_F(PipelinedNextTest, EndOfDataRefusedTheNextGoesOn) {
  SendTwo();
  stream_.TakeOutput();
  // RFC 5321 §4.1.1.4: the reply to "." ends A whatever it says; B needs no RSET.
  Server("554 5.7.1 rejected: spam\r\n");
  ASSERT_EQ(owner_.Names(), std::vector<std::string>{"done"});
  EXPECT_TRUE(Done().recipients[0].permanent());
  EXPECT_EQ(Done().recipients[0].scope, mail::OutcomeScope::kMessage);
  owner_.events.clear();
  Server("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n250 2.0.0 B1\r\n");
  EXPECT_EQ(owner_.Names(), (std::vector<std::string>{"next", "done"}));
  EXPECT_TRUE(Done().recipients[0].delivered());
}

TEST_F(PipelinedNextTest, NextRefusedAtMailResetsBeforeTheThird) {
  SendTwo();
  stream_.TakeOutput();
  Server("250 2.0.0 A1\r\n451 4.3.0 try later\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n");
  ASSERT_EQ(owner_.Names(), (std::vector<std::string>{"done", "done"}));
  EXPECT_TRUE(owner_.events[0].result.recipients[0].delivered());
  EXPECT_EQ(owner_.events[1].result.recipients[0].reply.code, 451);
  EXPECT_EQ(owner_.events[1].result.recipients[0].scope, mail::OutcomeScope::kMessage);
  EXPECT_TRUE(session_->ready());
  Send(Message({"c@dest.test"}));
  EXPECT_TRUE(absl::StartsWith(stream_.TakeOutput(), "RSET\r\nMAIL FROM:"));
}

TEST_F(PipelinedNextTest, LostConnectionFailsBothInOrder) {
  SendTwo();
  stream_.TakeOutput();
  Closed();
  ASSERT_EQ(owner_.Names(), (std::vector<std::string>{"done", "done", "ended"}));
  const auto& a = owner_.events[0].result.recipients[0];
  EXPECT_EQ(a.reply.code, 451);
  EXPECT_EQ(a.reply.enhanced, "4.4.2");
  EXPECT_THAT(a.reply.text, HasSubstr("message may be sent more than once"));
  const auto& b = owner_.events[1].result.recipients[0];
  EXPECT_EQ(b.reply.code, 451);
  EXPECT_EQ(b.reply.enhanced, "4.4.2");
  EXPECT_TRUE(b.local);
  EXPECT_EQ(b.scope, mail::OutcomeScope::kSession);
  EXPECT_THAT(b.reply.text, HasSubstr("ended before the server answered this message"));
  // A's end of data was out and unanswered: A may have been delivered. B's data never left
  // (it follows a 354 of B's own): B is unanswered, for the owner to send again as untried.
  EXPECT_FALSE(owner_.events[0].result.unanswered);
  EXPECT_TRUE(owner_.events[1].result.unanswered);
}

TEST_F(PipelinedNextTest, Code421AfterTheEndOfDataFailsBoth) {
  SendTwo();
  stream_.TakeOutput();
  Server("421 4.3.2 shutting down\r\n");
  EXPECT_TRUE(stream_.closed);
  EXPECT_THAT(owner_.events, IsEmpty());
  Closed();
  ASSERT_EQ(owner_.Names(), (std::vector<std::string>{"done", "done", "ended"}));
  for (int i = 0; i < 2; ++i) {
    const auto& outcome = owner_.events[i].result.recipients[0];
    EXPECT_EQ(outcome.reply.code, 421);
    EXPECT_EQ(outcome.reply.enhanced, "4.3.2");
    EXPECT_TRUE(outcome.transient());
  }
  // The server's reply answered the first message: only that one carries it as the site's
  // word (the throttle and the reputation judge it once).
  EXPECT_FALSE(owner_.events[0].result.recipients[0].local);
  EXPECT_EQ(owner_.events[0].result.recipients[0].reply.text, "shutting down");
  EXPECT_TRUE(owner_.events[1].result.recipients[0].local);
  EXPECT_THAT(owner_.events[1].result.recipients[0].reply.text,
              HasSubstr("ended before the server answered this message, sent behind another "
                        "(that one: 421 4.3.2 shutting down)"));
  EXPECT_FALSE(owner_.events[0].result.unanswered);
  EXPECT_TRUE(owner_.events[1].result.unanswered);
}

TEST_F(PipelinedNextTest, TimeoutWhileTheNextWaitsForItsMailReply) {
  SendTwo();
  stream_.TakeOutput();
  Server("250 2.0.0 A1\r\n");
  session_->OnIdleTimeout();
  EXPECT_TRUE(stream_.closed);
  Closed();
  ASSERT_EQ(owner_.Names(), (std::vector<std::string>{"done", "done", "ended"}));
  EXPECT_TRUE(owner_.events[0].result.recipients[0].delivered());
  EXPECT_THAT(owner_.events[1].result.recipients[0].reply.text,
              HasSubstr("while sending MAIL FROM"));
  // A was answered before the timeout: B was the one waiting, its own failure.
  EXPECT_FALSE(owner_.events[1].result.unanswered);
}

TEST_F(PipelinedNextTest, QuitWithTwoInProgress) {
  SendTwo();
  stream_.TakeOutput();
  Quit();
  EXPECT_TRUE(stream_.closed);
  Closed();
  ASSERT_EQ(owner_.Names(), (std::vector<std::string>{"done", "done", "ended"}));
  EXPECT_TRUE(owner_.events[0].result.recipients[0].transient());
  EXPECT_TRUE(owner_.events[1].result.recipients[0].transient());
  EXPECT_FALSE(owner_.events[0].result.unanswered);
  EXPECT_TRUE(owner_.events[1].result.unanswered);
}

TEST_F(PipelinedNextTest, QuitAtTheFirstReplyLeavesTheNextUnanswered) {
  // The owner quits when A's end of data is answered (a rate limit paused its pair), with B's
  // replies in the same read: B is not read on, never gets its body, and comes back unanswered.
  SendTwo();
  stream_.TakeOutput();
  owner_.on_done = [this] {
    if (owner_.events.size() == 1) Quit();
  };
  Server("451 4.7.28 rate limited, slow down\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n");
  EXPECT_TRUE(stream_.closed);
  EXPECT_EQ(stream_.TakeOutput(), "");  // no body for B
  Closed();
  ASSERT_EQ(owner_.Names(), (std::vector<std::string>{"done", "done", "ended"}));
  EXPECT_EQ(owner_.events[0].result.recipients[0].reply.code, 451);
  EXPECT_FALSE(owner_.events[0].result.recipients[0].local);
  EXPECT_FALSE(owner_.events[0].result.unanswered);
  EXPECT_TRUE(owner_.events[1].result.recipients[0].local);
  EXPECT_TRUE(owner_.events[1].result.unanswered);
}

TEST_F(ClientSessionTest, NoNextWithoutPipeliningNorAfterALoneDot) {
  Handshake(kEhloPlain);
  Send(Message({"a@dest.test"}));
  Server("250 Ok\r\n250 Ok\r\n354 go\r\n");
  EXPECT_FALSE(session_->accepts_next());
  Server("250 Ok\r\n");
  EXPECT_EQ(owner_.Names(), std::vector<std::string>{"done"});
  // With PIPELINING, a DATA accepted after every RCPT was refused gets a lone dot: no next.
  owner_ = FakeOwner();
  stream_ = testing::FakeStream();
  Handshake();
  Send(Message({"a@dest.test"}));
  Server("250 Ok\r\n550 5.1.1 no\r\n354 go\r\n");
  EXPECT_FALSE(session_->accepts_next());
  Server("250 Ok\r\n");
  EXPECT_EQ(owner_.Names(), std::vector<std::string>{"done"});
}

}  // namespace
}  // namespace facteur::smtp
