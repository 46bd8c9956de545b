#include "engine/smtp/server/session.h"

#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/fake_stream.h"

namespace facteur::smtp {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::StartsWith;

struct Queued {
  queue::Envelope envelope;
  std::string message;
};

// Answers at once unless `defer` is set; then the test completes the work by hand.
class FakeHost final : public SessionHost {
 public:
  void Authenticate(std::string account, std::string password,
                    absl::AnyInvocable<void(absl::StatusOr<AuthenticatedAccount>) &&> done)
      override {
    auto it = passwords.find(account);
    absl::StatusOr<AuthenticatedAccount> result =
        !auth_refusal.ok() ? absl::StatusOr<AuthenticatedAccount>(auth_refusal)
        : (it != passwords.end() && it->second == password)
            ? absl::StatusOr<AuthenticatedAccount>(
                  AuthenticatedAccount{account, grants[account], change_counts[account]})
            : absl::UnauthenticatedError("bad credentials");
    if (defer) {
      pending_auth.push_back([done = std::move(done), result]() mutable {
        std::move(done)(result);
      });
    } else {
      std::move(done)(result);
    }
  }
  void Enqueue(queue::Envelope envelope, std::string message,
               absl::AnyInvocable<void(absl::Status) &&> done) override {
    if (enqueue_status.ok()) queued.push_back({std::move(envelope), std::move(message)});
    if (defer) {
      pending_enqueue.push_back(
          [done = std::move(done), s = enqueue_status]() mutable { std::move(done)(s); });
    } else {
      std::move(done)(enqueue_status);
    }
  }
  Clock& clock() override { return clock_; }
  bool AccountChanged(const AuthenticatedAccount& account) override {
    return change_counts[account.name] != account.change_count;
  }
  std::optional<mail::Reply> CheckAccountMessage(std::string_view account) override {
    checked_accounts.emplace_back(account);
    return account_refusal;
  }
  std::optional<mail::Reply> CheckAccountRecipients(std::string_view /*account*/,
                                                    size_t recipients) override {
    if (max_account_recipients == 0 || recipients <= max_account_recipients) return std::nullopt;
    return mail::Reply{452, "4.5.3", "Too many recipients for this account"};
  }
  std::optional<mail::Reply> CheckRecipient(std::string_view canonical) override {
    if (!suppressed.count(std::string(canonical))) return std::nullopt;
    return mail::Reply{550, "5.1.1", absl::StrCat("<", ToAbsl(canonical), ">: suppressed")};
  }
  std::optional<mail::Reply> AdmitAccountMessage(std::string_view account,
                                                 absl::Time /*now*/) override {
    admitted.emplace_back(account);
    return admit_refusal;
  }
  void OnMessageReceived(metrics::AccountClass account_class) override {
    received.push_back(account_class);
  }
  void OnSessionEnded(absl::Duration lifetime) override { session_lifetimes.push_back(lifetime); }

  std::map<std::string, std::string> passwords;
  // Submission policy (quotas, suppression list).
  std::optional<mail::Reply> account_refusal;
  std::optional<mail::Reply> admit_refusal;
  size_t max_account_recipients = 0;
  std::set<std::string> suppressed;
  std::vector<std::string> checked_accounts;
  std::vector<std::string> admitted;
  std::map<std::string, std::vector<std::string>> grants;
  std::map<std::string, uint64_t> change_counts;  // policy::AccountStore::ChangeCount()
  absl::Status enqueue_status;
  absl::Status auth_refusal;  // when set, every AUTH gets it
  bool defer = false;
  std::vector<absl::AnyInvocable<void() &&>> pending_auth;
  std::vector<absl::AnyInvocable<void() &&>> pending_enqueue;
  std::vector<Queued> queued;
  std::vector<metrics::AccountClass> received;
  std::vector<absl::Duration> session_lifetimes;
  SimulatedClock clock_;
};

class SessionTest : public ::testing::Test {
 protected:
  SessionTest() {
    policy_.listener_name = "test";
    policy_.hostname = "relay.example.org";
    policy_.role = config::ListenerRole::kRelay;
    policy_.trusted_networks = {*config::Cidr::Parse("127.0.0.0/8")};
    stream_.peer_info = facteur::testing::Ipv4Peer(127, 0, 0, 1);
    host_.passwords["alice"] = "correct horse";
    host_.grants["alice"] = {"alice@asso.org", "@alumni.asso.org"};
  }

  void Start(bool implicit_tls = false) {
    session_ = std::make_unique<Session>(stream_, policy_, host_);
    io::TlsInfo tls{"TLSv1.3", "TLS_AES_256_GCM_SHA384", 256};
    session_->OnStart(implicit_tls ? &tls : nullptr);
  }

  // Feeds `bytes` and returns everything the session wrote in answer.
  std::string Send(std::string_view bytes) {
    session_->OnData(bytes);
    std::string replies = stream_.TakeOutput();
    // RFC 5321 §4.2: reply text is printable US-ASCII; other servers copy it into DSNs.
    EXPECT_TRUE(std::all_of(replies.begin(), replies.end(),
                            [](char c) { return c == '\r' || c == '\n' || (c >= 32 && c < 127); }))
        << replies;
    return replies;
  }

  // Starts a session and says EHLO; returns nothing, asserts the greeting.
  void StartWithEhlo(bool implicit_tls = false) {
    Start(implicit_tls);
    ASSERT_THAT(stream_.TakeOutput(), StartsWith("220 relay.example.org ESMTP"));
    ASSERT_THAT(Send("EHLO client.example\r\n"), StartsWith("250-relay.example.org"));
  }

  std::string AuthPlain(std::string_view user, std::string_view password) {
    // RFC 4616 §2: [authzid] NUL authcid NUL passwd
    std::string raw = std::string(1, '\0') + std::string(user) + std::string(1, '\0') +
                      std::string(password);
    return absl::StrCat("AUTH PLAIN ", absl::Base64Escape(raw), "\r\n");
  }

  ListenerPolicy policy_;
  facteur::testing::FakeStream stream_;
  FakeHost host_;
  std::unique_ptr<Session> session_;
};

constexpr char kMessage[] =
    "From: Alice <alice@asso.org>\r\n"
    "To: bob@example.com\r\n"
    "Subject: hello\r\n"
    "\r\n"
    "..leading dot\r\n"
    "body\r\n"
    ".\r\n";

TEST_F(SessionTest, GreetsAndListsExtensions) {
  StartWithEhlo();
  Start();
  stream_.TakeOutput();
  std::string ehlo = Send("EHLO client.example\r\n");
  for (const char* extension : {"PIPELINING", "SIZE 36700160", "8BITMIME", "SMTPUTF8",
                                "ENHANCEDSTATUSCODES", "CHUNKING", "DSN"}) {
    EXPECT_THAT(ehlo, HasSubstr(extension));
  }
  EXPECT_THAT(ehlo, Not(HasSubstr("STARTTLS")));  // tls = none
  EXPECT_THAT(ehlo, Not(HasSubstr("AUTH")));      // no TLS: no passwords in the clear
  EXPECT_EQ(stream_.idle_timeout, absl::Seconds(300));
}

TEST_F(SessionTest, TheIdleTimeoutRunsFromTheFirstByteEvenBeforeAnImplicitTlsHandshake) {
  policy_.limits.idle_timeout = absl::Seconds(7);
  Session session(stream_, policy_, host_);  // not started: the handshake is still running
  EXPECT_EQ(stream_.idle_timeout, absl::Seconds(7));
}

TEST_F(SessionTest, AcceptsAMessageFromATrustedClientAndQueuesIt) {
  StartWithEhlo();
  EXPECT_EQ(Send("MAIL FROM:<app@asso.org>\r\n"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(Send("RCPT TO:<bob@example.com>\r\n"), "250 2.1.5 Ok\r\n");
  EXPECT_THAT(Send("DATA\r\n"), StartsWith("354 "));
  std::string reply = Send(kMessage);
  ASSERT_THAT(reply, StartsWith("250 2.0.0 Ok: queued as "));
  ASSERT_EQ(host_.queued.size(), 1u);
  const Queued& q = host_.queued[0];
  EXPECT_EQ(reply, absl::StrCat("250 2.0.0 Ok: queued as ", q.envelope.id.ToString(), "\r\n"));
  EXPECT_EQ(q.envelope.sender, "app@asso.org");
  ASSERT_EQ(q.envelope.recipients.size(), 1u);
  EXPECT_EQ(q.envelope.recipients[0].address, "bob@example.com");
  EXPECT_EQ(q.envelope.listener, "test");
  EXPECT_EQ(q.envelope.client, "[127.0.0.1]:40000");
  EXPECT_THAT(q.message, StartsWith("Received: from client.example ([127.0.0.1])\r\n\tby "
                                    "relay.example.org (facteur) with ESMTP id "));
  EXPECT_THAT(q.message, HasSubstr("\r\n\tfor <bob@example.com>;"));
  EXPECT_THAT(q.message, HasSubstr("\r\nMessage-ID: <" + q.envelope.id.ToString() +
                                   "@relay.example.org>\r\n"));
  EXPECT_THAT(q.message, HasSubstr("\r\nDate: "));
  // Added fields sit in the header section, before the empty line; the dot is unstuffed.
  EXPECT_THAT(q.message, HasSubstr("Subject: hello\r\nDate: "));
  EXPECT_TRUE(absl::EndsWith(q.message, "\r\n\r\n.leading dot\r\nbody\r\n"));
}

TEST_F(SessionTest, BlindCopyFieldsAreDroppedWhateverTheClientSent) {
  StartWithEhlo();
  Send("MAIL FROM:<app@asso.org>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
       "DATA\r\n");
  // Two Bcc: fields (one folded, one in lower case) and a Resent-Bcc:; a "Bcc:" in the body
  // is text and stays.
  EXPECT_THAT(Send("From: app@asso.org\r\nBcc: b@example.com,\r\n c@example.com\r\n"
                   "To: a@example.com\r\nbcc: d@example.com\r\nResent-Bcc: e@example.com\r\n"
                   "Subject: s\r\n\r\nBcc: in the body\r\n.\r\n"),
              StartsWith("250 "));
  ASSERT_EQ(host_.queued.size(), 1u);
  const std::string& message = host_.queued[0].message;
  EXPECT_THAT(message, Not(HasSubstr("example.com,")));
  EXPECT_THAT(message, Not(HasSubstr("c@example.com")));
  EXPECT_THAT(message, Not(HasSubstr("d@example.com")));
  EXPECT_THAT(message, Not(HasSubstr("e@example.com")));
  EXPECT_THAT(message, HasSubstr("\r\nFrom: app@asso.org\r\nTo: a@example.com\r\n"
                                 "Subject: s\r\nDate: "));
  EXPECT_TRUE(absl::EndsWith(message, "\r\n\r\nBcc: in the body\r\n"));
}

TEST_F(SessionTest, PipelinedCommandsGetTheirRepliesInOrder) {
  StartWithEhlo();
  std::string replies = Send(
      "MAIL FROM:<app@asso.org>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
      "DATA\r\n");
  EXPECT_EQ(replies, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 End data with "
                     "<CR><LF>.<CR><LF>\r\n");
  replies = Send(absl::StrCat(kMessage, "MAIL FROM:<>\r\nRCPT TO:<c@example.com>\r\nQUIT\r\n"));
  EXPECT_THAT(replies, StartsWith("250 2.0.0 Ok: queued as"));
  EXPECT_THAT(replies, HasSubstr("\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n221 2.0.0 "));
  EXPECT_TRUE(stream_.closed);
  ASSERT_EQ(host_.queued.size(), 1u);
  EXPECT_EQ(host_.queued[0].envelope.recipients.size(), 2u);
  EXPECT_THAT(host_.queued[0].message, Not(HasSubstr("\r\n\tfor <")));  // several recipients
}

TEST_F(SessionTest, InputIsHeldWhileTheQueueWriteIsPending) {
  host_.defer = true;
  StartWithEhlo();
  Send("MAIL FROM:<app@asso.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n");
  // The 250 must wait for the synced write; the next command waits behind it.
  EXPECT_EQ(Send(absl::StrCat(kMessage, "NOOP\r\n")), "");
  ASSERT_EQ(host_.pending_enqueue.size(), 1u);
  std::move(host_.pending_enqueue[0])();
  EXPECT_THAT(stream_.TakeOutput(), ::testing::MatchesRegex("250 2.0.0 Ok: queued as [0-9A-Z]{26}\r\n"
                                                          "250 2.0.0 Ok\r\n"));
}

TEST_F(SessionTest, AQueueCallbackAfterTheClientLeftIsHarmless) {
  host_.defer = true;
  StartWithEhlo();
  Send(absl::StrCat("MAIL FROM:<app@asso.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n", kMessage));
  session_->OnClosed();
  session_.reset();
  ASSERT_EQ(host_.pending_enqueue.size(), 1u);
  std::move(host_.pending_enqueue[0])();  // must not touch the destroyed session
  EXPECT_EQ(host_.queued.size(), 1u);     // still queued: at-least-once
}

TEST_F(SessionTest, QueueFailuresAreTransientReplies) {
  host_.enqueue_status = absl::ResourceExhaustedError("No space left on device");
  StartWithEhlo();
  Send("MAIL FROM:<app@asso.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n");
  EXPECT_EQ(Send(kMessage), "452 4.3.1 Insufficient system storage\r\n");
  host_.enqueue_status = absl::UnavailableError("writer saturated");
  Send("MAIL FROM:<app@asso.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n");
  EXPECT_THAT(Send(kMessage), StartsWith("451 4.3.0 "));
  host_.enqueue_status = absl::OkStatus();
  Send("MAIL FROM:<app@asso.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n");
  EXPECT_THAT(Send(kMessage), StartsWith("250 2.0.0 Ok: queued as"));  // the session goes on
}

TEST_F(SessionTest, UntrustedClientsCannotRelay) {
  stream_.peer_info = facteur::testing::Ipv4Peer(192, 0, 2, 1);
  StartWithEhlo();
  EXPECT_EQ(Send("MAIL FROM:<x@example.net>\r\n"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(Send("RCPT TO:<victim@example.com>\r\n"),
            "554 5.7.1 <victim@example.com>: Relay access denied\r\n");
  EXPECT_EQ(Send("DATA\r\n"), "554 5.5.1 No valid recipients\r\n");
}

TEST_F(SessionTest, SubmissionRequiresTlsThenAuthentication) {
  policy_.role = config::ListenerRole::kSubmission;
  policy_.tls_mode = config::TlsMode::kStartTls;
  StartWithEhlo();
  EXPECT_EQ(Send("MAIL FROM:<alice@asso.org>\r\n"),
            "530 5.7.0 Must issue a STARTTLS command first\r\n");
  EXPECT_EQ(Send(AuthPlain("alice", "correct horse")),
            "538 5.7.11 Encryption required for requested authentication mechanism\r\n");
  // STARTTLS: whatever the client pipelined after it is dropped (CVE-2011-0411).
  EXPECT_EQ(Send("STARTTLS\r\nMAIL FROM:<evil@example.com>\r\n"), "220 2.0.0 Ready to start TLS\r\n");
  EXPECT_TRUE(stream_.tls_requested);
  stream_.tls = true;
  session_->OnTlsStarted(io::TlsInfo{"TLSv1.3", "x", 256});
  EXPECT_EQ(stream_.TakeOutput(), "");  // the injected MAIL was never processed
  EXPECT_EQ(Send("MAIL FROM:<alice@asso.org>\r\n"), "503 5.5.1 Send EHLO or HELO first\r\n");
  std::string ehlo = Send("EHLO client.example\r\n");
  EXPECT_THAT(ehlo, HasSubstr("AUTH PLAIN LOGIN"));
  EXPECT_THAT(ehlo, Not(HasSubstr("STARTTLS")));
  EXPECT_EQ(Send("MAIL FROM:<alice@asso.org>\r\n"), "530 5.7.0 Authentication required\r\n");
  EXPECT_EQ(Send(AuthPlain("alice", "wrong")), "535 5.7.8 Authentication credentials invalid\r\n");
  EXPECT_EQ(Send(AuthPlain("alice", "correct horse")), "235 2.7.0 Authentication successful\r\n");
  EXPECT_EQ(Send("MAIL FROM:<alice@asso.org>\r\n"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(Send("RCPT TO:<bob@example.com>\r\n"), "250 2.1.5 Ok\r\n");
  Send("DATA\r\n");
  std::string reply = Send(kMessage);
  EXPECT_THAT(reply, StartsWith("250 2.0.0 Ok: queued as"));
  ASSERT_EQ(host_.queued.size(), 1u);
  EXPECT_EQ(host_.queued[0].envelope.account, "alice");
  EXPECT_THAT(host_.queued[0].message, HasSubstr(" with ESMTPSA id "));
}

TEST_F(SessionTest, AnAccountSendsOnlyAsTheAddressesItOwns) {
  policy_.role = config::ListenerRole::kSubmission;
  StartWithEhlo(/*implicit_tls=*/true);
  ASSERT_THAT(Send(AuthPlain("alice", "correct horse")), StartsWith("235 "));
  EXPECT_THAT(Send("MAIL FROM:<bob@asso.org>\r\n"), StartsWith("553 5.7.1 "));
  EXPECT_EQ(Send("MAIL FROM:<Alice@ASSO.org>\r\n"), "250 2.1.0 Ok\r\n");  // case does not matter
  Send("RCPT TO:<x@example.com>\r\nDATA\r\n");
  EXPECT_THAT(Send("From: Bob <bob@asso.org>\r\n\r\nhi\r\n.\r\n"),
              StartsWith("553 5.7.1 From: header: "));
  Send("MAIL FROM:<alice@asso.org>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n");
  EXPECT_THAT(Send("Subject: no author\r\n\r\nhi\r\n.\r\n"), StartsWith("553 5.7.1 "));
  Send("MAIL FROM:<alice@asso.org>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n");
  EXPECT_THAT(Send("From: a@asso.org\r\nFrom: alice@asso.org\r\n\r\nhi\r\n.\r\n"),
              StartsWith("553 5.7.1 "));
  // A domain grant covers every address of that domain, not its subdomains.
  Send("MAIL FROM:<jean.dupont@alumni.asso.org>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n");
  EXPECT_THAT(Send("From: \"Dupont, Jean\" <jean.dupont@alumni.asso.org>\r\n\r\nhi\r\n.\r\n"),
              StartsWith("250 2.0.0 Ok: queued as"));
  EXPECT_THAT(Send("MAIL FROM:<x@sub.alumni.asso.org>\r\n"), StartsWith("553 5.7.1 "));
  EXPECT_EQ(host_.queued.size(), 1u);
}

// Mail readers show Sender: ("bob on behalf of alice") and the resent fields as who sent the
// message: they are the account's too. Older resent blocks (below the newest) are left alone.
TEST_F(SessionTest, SenderAndTheNewestResentFieldsAreTheAccountsToo) {
  policy_.role = config::ListenerRole::kSubmission;
  policy_.limits.max_errors = 100;
  StartWithEhlo(/*implicit_tls=*/true);
  ASSERT_THAT(Send(AuthPlain("alice", "correct horse")), StartsWith("235 "));
  const auto send = [&](const std::string& header) {
    Send("MAIL FROM:<alice@asso.org>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n");
    return Send(header + "\r\nhi\r\n.\r\n");
  };
  EXPECT_THAT(send("From: alice@asso.org\r\nSender: president@elsewhere.example\r\n"),
              StartsWith("553 5.7.1 Sender: header: "));
  EXPECT_THAT(send("From: alice@asso.org\r\nSender: alice@asso.org\r\n"
                   "Sender: alice@asso.org\r\n"),
              StartsWith("553 5.7.1 The message has more than one Sender: header"));
  EXPECT_THAT(send("From: alice@asso.org\r\nsender: <>\r\n"),
              StartsWith("553 5.7.1 The Sender: header cannot be read"));
  EXPECT_THAT(send("Resent-From: president@elsewhere.example\r\nFrom: alice@asso.org\r\n"),
              StartsWith("553 5.7.1 Resent-From: header: "));
  EXPECT_THAT(send("Resent-Sender: president@elsewhere.example\r\nFrom: alice@asso.org\r\n"),
              StartsWith("553 5.7.1 Resent-Sender: header: "));
  // The first Resent-From: is always the newest block's, whatever comes before it.
  EXPECT_THAT(send("Resent-Date: Sun, 6 Dec 2026 10:00:00 +0000\r\n"
                   "Resent-Date: Sun, 6 Dec 2026 10:00:01 +0000\r\n"
                   "Resent-From: president@elsewhere.example\r\nFrom: alice@asso.org\r\n"),
              StartsWith("553 5.7.1 Resent-From: header: "));
  EXPECT_THAT(send("Resent-From: alice@asso.org\r\nResent-Sender: mallory@elsewhere.example\r\n"
                   "Resent-Date: Sun, 6 Dec 2026 10:00:00 +0000\r\nFrom: alice@asso.org\r\n"),
              StartsWith("553 5.7.1 Resent-Sender: header: "));
  EXPECT_EQ(host_.queued.size(), 0u);
  // Alice resends her message that Bob resent before her: her block is first, his is older
  // (whether its Resent-Date: or its Resent-From: comes first). From: is hers whatever the
  // resent fields say (a Resent-From: of hers does not let her pass off someone else's From:).
  EXPECT_THAT(send("Resent-From: alice@asso.org\r\nResent-Date: Sun, 6 Dec 2026 10:00:00 +0000\r\n"
                   "Resent-From: bob@elsewhere.example\r\nResent-Sender: bob@elsewhere.example\r\n"
                   "Resent-Date: Sat, 5 Dec 2026 10:00:00 +0000\r\nFrom: alice@asso.org\r\n"),
              StartsWith("250 2.0.0 Ok: queued as"));
  EXPECT_THAT(send("Resent-From: alice@asso.org\r\nResent-Date: Sun, 6 Dec 2026 10:00:00 +0000\r\n"
                   "Resent-Date: Sat, 5 Dec 2026 10:00:00 +0000\r\nResent-Sender: bob@elsewhere.example\r\n"
                   "Resent-From: bob@elsewhere.example\r\nFrom: alice@asso.org\r\n"),
              StartsWith("250 2.0.0 Ok: queued as"));
  EXPECT_THAT(send("Resent-From: alice@asso.org\r\nFrom: carol@elsewhere.example\r\n"),
              StartsWith("553 5.7.1 From: header: "));
  EXPECT_THAT(send("From: Alice <alice@asso.org>\r\nSender: Alice <ALICE@asso.org>\r\n"),
              StartsWith("250 2.0.0 Ok: queued as"));
  EXPECT_EQ(host_.queued.size(), 3u);
}

// An account suspended, deleted or changed while its session is open stops sending at the
// next MAIL, DATA or end of data: 421, and the session closes, the message not queued.
TEST_F(SessionTest, AnAccountChangedSinceAuthEndsItsSession) {
  policy_.role = config::ListenerRole::kSubmission;
  for (const char* when : {"MAIL", "DATA", "BDAT", "end of data"}) {
    SCOPED_TRACE(when);
    stream_.closed = false;
    host_.queued.clear();
    StartWithEhlo(/*implicit_tls=*/true);
    ASSERT_THAT(Send(AuthPlain("alice", "correct horse")), StartsWith("235 "));
    ASSERT_EQ(Send("MAIL FROM:<alice@asso.org>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n"),
              "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
    ASSERT_THAT(Send(kMessage), StartsWith("250 2.0.0 Ok: queued as"));
    std::string reply;
    if (std::string_view(when) == "MAIL") {
      ++host_.change_counts["alice"];
      reply = Send("MAIL FROM:<alice@asso.org>\r\n");
    } else if (std::string_view(when) == "DATA") {
      Send("MAIL FROM:<alice@asso.org>\r\nRCPT TO:<x@example.com>\r\n");
      ++host_.change_counts["alice"];
      reply = Send("DATA\r\n");
    } else if (std::string_view(when) == "BDAT") {
      Send("MAIL FROM:<alice@asso.org>\r\nRCPT TO:<x@example.com>\r\n");
      ++host_.change_counts["alice"];
      reply = Send("BDAT 12 LAST\r\nSubject: x\r\n");
    } else {
      // An address granted since AUTH: 421 (authenticate again and it is yours), not a 553
      // from the grants of AUTH time.
      Send("MAIL FROM:<alice@asso.org>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n");
      host_.grants["alice"].push_back("alias@asso.org");
      ++host_.change_counts["alice"];
      reply = Send("From: alias@asso.org\r\n\r\nhi\r\n.\r\n");
    }
    EXPECT_THAT(reply, StartsWith("421 4.7.0 "));
    EXPECT_THAT(reply, HasSubstr("Account 'alice' changed since you authenticated"));
    EXPECT_TRUE(stream_.closed);
    EXPECT_EQ(host_.queued.size(), 1u) << "only the message sent before the change";
  }
  // Another account's change does not touch this session.
  stream_.closed = false;
  StartWithEhlo(/*implicit_tls=*/true);
  ASSERT_THAT(Send(AuthPlain("alice", "correct horse")), StartsWith("235 "));
  ++host_.change_counts["bob"];
  EXPECT_EQ(Send("MAIL FROM:<alice@asso.org>\r\n"), "250 2.1.0 Ok\r\n");
}

TEST_F(SessionTest, AccountQuotasAreAskedAtMailRcptDataAndTheEndOfData) {
  policy_.role = config::ListenerRole::kSubmission;
  policy_.limits.max_errors = 3;
  StartWithEhlo(/*implicit_tls=*/true);
  ASSERT_THAT(Send(AuthPlain("alice", "correct horse")), StartsWith("235 "));
  // A full quota is a 4xx that does not count as a client error.
  host_.account_refusal = mail::Reply{450, "4.7.1", "Hourly sending quota reached"};
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(Send("MAIL FROM:<alice@asso.org>\r\n"), "450 4.7.1 Hourly sending quota reached\r\n");
  }
  EXPECT_FALSE(stream_.closed);
  EXPECT_EQ(host_.checked_accounts.back(), "alice");
  host_.account_refusal.reset();

  // Recipients past the account's limit: 452, and the message goes to the others.
  host_.max_account_recipients = 2;
  EXPECT_EQ(Send("MAIL FROM:<alice@asso.org>\r\n"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(Send("RCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"),
            "250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n");
  EXPECT_EQ(Send("RCPT TO:<c@example.com>\r\n"),
            "452 4.5.3 Too many recipients for this account\r\n");
  EXPECT_EQ(Send("RCPT TO:<a@example.com>\r\n"), "250 2.1.5 Ok\r\n");  // a duplicate is no more
  EXPECT_THAT(Send("DATA\r\n"), StartsWith("354 "));
  EXPECT_THAT(Send(kMessage), StartsWith("250 2.0.0 Ok: queued as"));
  ASSERT_EQ(host_.queued.size(), 1u);
  EXPECT_EQ(host_.queued[0].envelope.recipients.size(), 2u);
  EXPECT_EQ(host_.admitted, std::vector<std::string>{"alice"});

  // The quota ran out between MAIL and DATA (another session): refused before the data.
  EXPECT_EQ(Send("MAIL FROM:<alice@asso.org>\r\nRCPT TO:<a@example.com>\r\n"),
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
  host_.account_refusal = mail::Reply{450, "4.7.1", "Hourly sending quota reached"};
  EXPECT_EQ(Send("DATA\r\n"), "450 4.7.1 Hourly sending quota reached\r\n");
  EXPECT_THAT(Send("RCPT TO:<a@example.com>\r\n"), StartsWith("503 "));  // transaction over
  host_.account_refusal.reset();

  // Refused at the end of the data (the message that revealed a burst): not queued.
  host_.admit_refusal = mail::Reply{550, "5.7.1", "Account alice is suspended"};
  Send("MAIL FROM:<alice@asso.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n");
  EXPECT_EQ(Send(kMessage), "550 5.7.1 Account alice is suspended\r\n");
  EXPECT_EQ(host_.queued.size(), 1u);
  EXPECT_EQ(host_.admitted.size(), 2u);
  // A suspended account's MAIL is a 5xx and counts as an error (the 503 above was the first):
  // max_errors ends the session.
  host_.account_refusal = mail::Reply{550, "5.7.1", "Account alice is suspended"};
  EXPECT_EQ(Send("MAIL FROM:<alice@asso.org>\r\n"), "550 5.7.1 Account alice is suspended\r\n");
  EXPECT_THAT(Send("MAIL FROM:<alice@asso.org>\r\n"), HasSubstr("421 4.7.0"));
  EXPECT_TRUE(stream_.closed);
}

TEST_F(SessionTest, ClientsWithoutAnAccountHaveNoQuota) {
  host_.account_refusal = mail::Reply{450, "4.7.1", "quota"};
  host_.admit_refusal = mail::Reply{450, "4.7.1", "quota"};
  StartWithEhlo();
  EXPECT_EQ(Send("MAIL FROM:<app@asso.org>\r\nRCPT TO:<a@example.com>\r\n"),
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
  EXPECT_THAT(Send("DATA\r\n"), StartsWith("354 "));
  EXPECT_THAT(Send(kMessage), StartsWith("250 2.0.0 Ok: queued as"));
  EXPECT_TRUE(host_.checked_accounts.empty());
  EXPECT_TRUE(host_.admitted.empty());
}

TEST_F(SessionTest, SuppressedRecipientsAreRefusedWithoutCountingAsErrors) {
  host_.suppressed = {"gone@example.com"};
  policy_.limits.max_errors = 3;
  StartWithEhlo();
  EXPECT_EQ(Send("MAIL FROM:<app@asso.org>\r\n"), "250 2.1.0 Ok\r\n");
  for (int i = 0; i < 5; ++i) {
    // Compared in canonical (lower-case) form.
    EXPECT_EQ(Send("RCPT TO:<Gone@Example.COM>\r\n"), "550 5.1.1 <gone@example.com>: suppressed\r\n");
  }
  EXPECT_FALSE(stream_.closed);
  EXPECT_EQ(Send("RCPT TO:<here@example.com>\r\n"), "250 2.1.5 Ok\r\n");
  EXPECT_THAT(Send("DATA\r\n"), StartsWith("354 "));
  EXPECT_THAT(Send(kMessage), StartsWith("250 2.0.0 Ok: queued as"));
  ASSERT_EQ(host_.queued.size(), 1u);
  ASSERT_EQ(host_.queued[0].envelope.recipients.size(), 1u);
  EXPECT_EQ(host_.queued[0].envelope.recipients[0].address, "here@example.com");
}

TEST_F(SessionTest, AuthLoginAndAbortedExchanges) {
  StartWithEhlo(/*implicit_tls=*/true);
  EXPECT_EQ(Send("AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
  EXPECT_EQ(Send(absl::StrCat(absl::Base64Escape("alice"), "\r\n")), "334 UGFzc3dvcmQ6\r\n");
  EXPECT_EQ(Send(absl::StrCat(absl::Base64Escape("correct horse"), "\r\n")),
            "235 2.7.0 Authentication successful\r\n");
  EXPECT_EQ(Send("AUTH PLAIN\r\n"), "503 5.5.1 Already authenticated\r\n");

  Start(/*implicit_tls=*/true);
  stream_.TakeOutput();
  Send("EHLO c\r\n");
  EXPECT_EQ(Send("AUTH PLAIN\r\n"), "334 \r\n");
  EXPECT_EQ(Send("*\r\n"), "501 5.0.0 Authentication aborted\r\n");
  EXPECT_EQ(Send("AUTH PLAIN !!!notbase64\r\n"), "501 5.5.2 Cannot decode the response as base64\r\n");
  EXPECT_EQ(Send("AUTH CRAM-MD5\r\n"), "504 5.5.4 Unrecognized authentication type\r\n");
}

TEST_F(SessionTest, AnAddressLockedOutForFailedAuthGets454) {
  host_.auth_refusal = absl::ResourceExhaustedError("locked out");
  StartWithEhlo(/*implicit_tls=*/true);
  EXPECT_EQ(Send(AuthPlain("alice", "correct horse")),
            "454 4.7.0 Too many failed authentications from your address; try later\r\n");
  host_.auth_refusal = absl::UnavailableError("pool full");
  EXPECT_EQ(Send(AuthPlain("alice", "correct horse")),
            "454 4.7.0 Temporary authentication failure, try again later\r\n");
}

TEST_F(SessionTest, PasswordsAreCheckedOffTheLoopAndTheSessionWaits) {
  host_.defer = true;
  StartWithEhlo(/*implicit_tls=*/true);
  EXPECT_EQ(Send(AuthPlain("alice", "correct horse") + "NOOP\r\n"), "");
  ASSERT_EQ(host_.pending_auth.size(), 1u);
  std::move(host_.pending_auth[0])();
  EXPECT_EQ(stream_.TakeOutput(), "235 2.7.0 Authentication successful\r\n250 2.0.0 Ok\r\n");
}

TEST_F(SessionTest, AnOverlongAuthExchangeLineIs5_5_6) {
  StartWithEhlo(/*implicit_tls=*/true);
  EXPECT_EQ(Send("AUTH PLAIN\r\n"), "334 \r\n");
  EXPECT_EQ(Send(std::string(13000, 'A') + "\r\n"),
            "500 5.5.6 Authentication Exchange line is too long\r\n");  // RFC 4954 §6
  EXPECT_EQ(Send("NOOP\r\n"), "250 2.0.0 Ok\r\n");  // the exchange is over
}

TEST_F(SessionTest, RefusesOverlongCommandLinesAndGoesOn) {
  StartWithEhlo();
  std::string line(600, 'A');
  EXPECT_EQ(Send("NOOP " + line + "\r\n"), "500 5.5.2 Line too long\r\n");
  // A line with no end in sight is dropped as it comes, then refused once it ends.
  EXPECT_EQ(Send(std::string(100000, 'B')), "");
  EXPECT_EQ(Send("B\r\nNOOP\r\n"), "500 5.5.2 Line too long\r\n250 2.0.0 Ok\r\n");
}

TEST_F(SessionTest, RefusesOverlongTextLinesAtTheEndOfData) {
  StartWithEhlo();
  Send("MAIL FROM:<a@asso.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
  std::string message = "Subject: x\r\n\r\n" + std::string(999, 'x') + "\r\n.\r\n";
  EXPECT_EQ(Send(message), "500 5.5.6 Message has a line longer than 1000 octets (RFC 5321 "
                           "section 4.5.3.1.6)\r\n");
  EXPECT_TRUE(host_.queued.empty());
  Send("MAIL FROM:<a@asso.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
  message = "Subject: x\r\n\r\n" + std::string(998, 'x') + "\r\n.\r\n";  // exactly 1000 octets
  EXPECT_THAT(Send(message), StartsWith("250 "));
}

TEST_F(SessionTest, TheEndOfADroppedLongLineNeverEndsTheData) {
  // Past 64 KiB without a line end the line is dropped as it comes, keeping its last byte. If
  // that byte is "." and the CRLF comes in the next read, ".<CRLF>" must not end the data:
  // what follows is the message's, not commands (SMTP smuggling).
  StartWithEhlo();
  Send("MAIL FROM:<a@asso.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
  EXPECT_EQ(Send("Subject: x\r\n\r\n" + std::string(70000, 'A') + "."), "");
  EXPECT_EQ(Send("\r\nMAIL FROM:<evil@asso.org>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
                 "injected\r\n"),
            "");
  EXPECT_EQ(Send(".\r\n"), "500 5.5.6 Message has a line longer than 1000 octets (RFC 5321 "
                            "section 4.5.3.1.6)\r\n");
  EXPECT_TRUE(host_.queued.empty());
  EXPECT_EQ(Send("NOOP\r\n"), "250 2.0.0 Ok\r\n");  // in step with the client
}

TEST_F(SessionTest, MailAndRcptLinesMayCarryLongExtensionParameters) {
  // RFC 3461: an ORCPT may take 500 octets on top of the 512 of RFC 5321 §4.5.3.1.4.
  StartWithEhlo();
  Send("MAIL FROM:<a@asso.org> RET=HDRS ENVID=" + std::string(100, 'e') + "\r\n");
  const std::string orcpt = "rfc822;" + std::string(480, 'o') + "@example.com";
  const std::string rcpt = "RCPT TO:<b@example.com> NOTIFY=FAILURE,DELAY ORCPT=" + orcpt + "\r\n";
  ASSERT_GT(rcpt.size(), 512u);
  EXPECT_EQ(Send(rcpt), "250 2.1.5 Ok\r\n");
  EXPECT_THAT(Send(std::string("DATA\r\n") + kMessage), StartsWith("354 "));
  ASSERT_EQ(host_.queued.size(), 1u);
  ASSERT_EQ(host_.queued[0].envelope.recipients.size(), 1u);
  EXPECT_EQ(host_.queued[0].envelope.recipients[0].orcpt, orcpt);
  // Other commands keep the 512 of RFC 5321, and MAIL or RCPT past 2048 is refused.
  EXPECT_EQ(Send("NOOP " + std::string(600, 'n') + "\r\n"), "500 5.5.2 Line too long\r\n");
  EXPECT_EQ(Send("RCPT TO:<b@example.com> ORCPT=rfc822;" + std::string(2100, 'o') + "\r\n"),
            "500 5.5.2 Line too long\r\n");
}

TEST_F(SessionTest, EnforcesTheMessageSize) {
  policy_.limits.max_message_size = 1000;
  StartWithEhlo();
  EXPECT_EQ(Send("MAIL FROM:<a@asso.org> SIZE=1001\r\n"),
            "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
  Send("MAIL FROM:<a@asso.org> SIZE=10\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
  std::string body;
  for (int i = 0; i < 30; ++i) body += std::string(60, 'y') + "\r\n";
  EXPECT_EQ(Send("Subject: big\r\n\r\n" + body + ".\r\n"),
            "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
  EXPECT_TRUE(host_.queued.empty());
}

TEST_F(SessionTest, LimitsRecipientsPerTransaction) {
  policy_.limits.max_recipients = 2;
  StartWithEhlo();
  EXPECT_EQ(Send("MAIL FROM:<a@asso.org>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\n"
                 "RCPT TO:<d@example.com>\r\n"),
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n452 4.5.3 Too many recipients\r\n");
  // One already taken is taken again, past the limit too: sent in another transaction, it
  // would get the message twice.
  EXPECT_EQ(Send("RCPT TO:<B@Example.com>\r\n"), "250 2.1.5 Ok\r\n");
}

TEST_F(SessionTest, RefusesCommandsOutOfSequenceAndUnknownOnes) {
  Start();
  stream_.TakeOutput();
  EXPECT_EQ(Send("MAIL FROM:<a@asso.org>\r\n"), "503 5.5.1 Send EHLO or HELO first\r\n");
  Send("EHLO c\r\n");
  EXPECT_EQ(Send("RCPT TO:<b@example.com>\r\n"), "503 5.5.1 Need MAIL before RCPT\r\n");
  EXPECT_EQ(Send("DATA\r\n"), "503 5.5.1 Need MAIL and RCPT before DATA\r\n");
  EXPECT_EQ(Send("FROB\r\n"), "500 5.5.1 Command unrecognized\r\n");
  EXPECT_EQ(Send("MAIL FROM:<a@asso.org>\r\n"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(Send("MAIL FROM:<a@asso.org>\r\n"), "503 5.5.1 Nested MAIL command\r\n");
  EXPECT_THAT(Send("RCPT TO:<not an address>\r\n"), StartsWith("501 5.1.3 "));
  EXPECT_EQ(Send("VRFY bob\r\n"),
            "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n");
  EXPECT_THAT(Send("HELP\r\n"), StartsWith("214-2.0.0 "));
  EXPECT_EQ(Send("RSET\r\n"), "250 2.0.0 Ok\r\n");
  EXPECT_EQ(Send("STARTTLS\r\n"), "502 5.5.1 STARTTLS not available\r\n");
}

TEST_F(SessionTest, TooManyErrorsEndTheSession) {
  policy_.limits.max_errors = 3;
  StartWithEhlo();
  EXPECT_EQ(Send("X\r\nY\r\nZ\r\nNOOP\r\n"),
            "500 5.5.1 Command unrecognized\r\n500 5.5.1 Command unrecognized\r\n"
            "500 5.5.1 Command unrecognized\r\n421 4.7.0 relay.example.org Too many errors, "
            "closing connection\r\n");
  EXPECT_TRUE(stream_.closed);
}

TEST_F(SessionTest, NoIdleTimeoutWhileTheClientWaitsForUs) {
  // A 421 while the message is being synced would have the client send it again, and the
  // message would be queued all the same: twice.
  host_.defer = true;
  StartWithEhlo();
  Send(absl::StrCat("MAIL FROM:<app@asso.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n", kMessage));
  ASSERT_EQ(host_.pending_enqueue.size(), 1u);
  session_->OnIdleTimeout();
  EXPECT_EQ(stream_.TakeOutput(), "");
  EXPECT_FALSE(stream_.closed);
  const int restarts = stream_.idle_timer_restarts;
  std::move(host_.pending_enqueue[0])();
  EXPECT_THAT(stream_.TakeOutput(), StartsWith("250 2.0.0 Ok: queued as"));
  // The client's turn starts with the reply: a whole timeout, not what the timer had left.
  EXPECT_EQ(stream_.idle_timer_restarts, restarts + 1);
  // Idle again, the client's turn: the timeout applies.
  session_->OnIdleTimeout();
  EXPECT_THAT(stream_.TakeOutput(), StartsWith("421 4.4.2 "));
  EXPECT_TRUE(stream_.closed);
}

TEST_F(SessionTest, IdleTimeoutSays421AndCloses) {
  StartWithEhlo();
  session_->OnIdleTimeout();
  EXPECT_EQ(stream_.TakeOutput(),
            "421 4.4.2 relay.example.org Idle timeout, closing connection\r\n");
  EXPECT_TRUE(stream_.closed);
}

TEST_F(SessionTest, BareLineFeedInDataIsRefusedAndNeverEndsTheData) {
  StartWithEhlo();
  Send("MAIL FROM:<a@asso.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
  // The smuggling attempt: "<LF>.<LF>" followed by a second, hidden transaction.
  std::string reply = Send("Subject: x\r\n\r\nhello\n.\nMAIL FROM:<ceo@bank.example>\r\n"
                           "RCPT TO:<victim@example.com>\r\nDATA\r\nforged\r\n.\r\n");
  EXPECT_THAT(reply, StartsWith("521 5.5.2 Bare <LF>"));
  EXPECT_TRUE(stream_.closed);
  EXPECT_TRUE(host_.queued.empty());
}

TEST_F(SessionTest, BareCarriageReturnInDataIsRefused) {
  StartWithEhlo();
  Send("MAIL FROM:<a@asso.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
  EXPECT_THAT(Send("Subject: x\r\n\r\nhello\r.\r\r\n.\r\n"), StartsWith("521 5.5.2 Bare <CR>"));
  EXPECT_TRUE(stream_.closed);
  EXPECT_TRUE(host_.queued.empty());
}

TEST_F(SessionTest, DataSplitAcrossReadsAtEveryByte) {
  StartWithEhlo();
  Send("MAIL FROM:<a@asso.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
  std::string all(kMessage);
  std::string replies;
  for (char c : all) replies += Send(std::string_view(&c, 1));
  EXPECT_THAT(replies, StartsWith("250 2.0.0 Ok: queued as"));
  ASSERT_EQ(host_.queued.size(), 1u);
  EXPECT_TRUE(absl::EndsWith(host_.queued[0].message, "\r\n\r\n.leading dot\r\nbody\r\n"));
}

TEST_F(SessionTest, ChunkingWithBdat) {
  StartWithEhlo();
  EXPECT_EQ(Send("BDAT 5\r\nhello"), "503 5.5.1 Need MAIL and RCPT before BDAT\r\n");
  Send("MAIL FROM:<a@asso.org>\r\nRCPT TO:<b@example.com>\r\n");
  std::string part1 = "From: a@asso.org\r\nSubject: chunks\r\n";
  std::string part2 = "\r\n.not stuffed\r\n";
  EXPECT_EQ(Send(absl::StrCat("BDAT ", part1.size(), "\r\n", part1)),
            "250 2.0.0 Chunk received\r\n");
  EXPECT_THAT(Send(absl::StrCat("BDAT ", part2.size(), " LAST\r\n", part2)),
              StartsWith("250 2.0.0 Ok: queued as"));
  ASSERT_EQ(host_.queued.size(), 1u);
  EXPECT_TRUE(absl::EndsWith(host_.queued[0].message, "\r\n\r\n.not stuffed\r\n"));
  Send("MAIL FROM:<a@asso.org>\r\nRCPT TO:<b@example.com>\r\n");
  EXPECT_THAT(Send("BDAT 9 LAST\r\nbare\nline"), StartsWith("550 5.6.0 "));
  EXPECT_FALSE(stream_.closed);
}

TEST_F(SessionTest, ABdatSizeThatCannotBeReadClosesTheSession) {
  // Without the size the chunk's octets cannot be told from commands: reading on would run a
  // message body as commands.
  StartWithEhlo();
  Send("MAIL FROM:<a@asso.org>\r\nRCPT TO:<b@example.com>\r\n");
  EXPECT_EQ(Send("BDAT 99999999999999999999 LAST\r\nMAIL FROM:<x@y.example>\r\n"),
            "501 5.5.4 Syntax: BDAT chunk-size [LAST]; closing connection\r\n");
  EXPECT_TRUE(stream_.closed);
  EXPECT_TRUE(host_.queued.empty());
}

TEST_F(SessionTest, ABdatWithoutASizeClosesTheSession) {
  StartWithEhlo();
  EXPECT_EQ(Send("BDAT x\r\nNOOP\r\n"),
            "501 5.5.4 Syntax: BDAT chunk-size [LAST]; closing connection\r\n");
  EXPECT_TRUE(stream_.closed);
}

TEST_F(SessionTest, HeloRepliesCarryNoEnhancedCodes) {
  Start();
  stream_.TakeOutput();
  EXPECT_EQ(Send("HELO client\r\n"), "250 relay.example.org\r\n");
  EXPECT_EQ(Send("NOOP\r\n"), "250 Ok\r\n");
  EXPECT_EQ(Send("AUTH PLAIN\r\n"), "503 Send EHLO first\r\n");
}

TEST_F(SessionTest, UnixSocketClientsRelayWithoutAuthentication) {
  policy_.role = config::ListenerRole::kSubmission;
  policy_.is_unix = true;
  stream_.peer_info = io::PeerInfo();
  stream_.peer_info.is_unix = true;
  stream_.peer_info.text = "unix";
  StartWithEhlo();
  EXPECT_EQ(Send("MAIL FROM:<cron@asso.org>\r\nRCPT TO:<admin@example.com>\r\n"),
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
  Send("DATA\r\n");
  EXPECT_THAT(Send(kMessage), StartsWith("250 2.0.0 Ok: queued as"));
  ASSERT_EQ(host_.queued.size(), 1u);
  EXPECT_THAT(host_.queued[0].message, StartsWith("Received: from client.example (local socket)"));
  EXPECT_THAT(host_.received, ElementsAre(metrics::AccountClass::kLocal));
  // With the peer's credentials known, the trace field names its user.
  stream_.peer_info.unix_uid = 33;
  Send("MAIL FROM:<www@asso.org>\r\nRCPT TO:<admin@example.com>\r\nDATA\r\n");
  EXPECT_THAT(Send(kMessage), StartsWith("250 2.0.0 Ok: queued as"));
  ASSERT_EQ(host_.queued.size(), 2u);
  EXPECT_THAT(host_.queued[1].message,
              StartsWith("Received: from client.example (local socket, uid 33)\r\n"));
}

TEST_F(SessionTest, AcceptedMessagesTellHowTheClientWasLetInAndTheSessionItsLifetime) {
  StartWithEhlo(/*implicit_tls=*/true);
  // Trusted network first, then the same session authenticated: each message as it was let in.
  EXPECT_EQ(Send("MAIL FROM:<app@asso.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"),
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
  EXPECT_THAT(Send(kMessage), StartsWith("250 2.0.0 Ok: queued as"));
  EXPECT_EQ(Send(AuthPlain("alice", "correct horse")), "235 2.7.0 Authentication successful\r\n");
  Send("MAIL FROM:<alice@asso.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n");
  EXPECT_THAT(Send(kMessage), StartsWith("250 2.0.0 Ok: queued as"));
  // A refused message is not received.
  host_.enqueue_status = absl::UnavailableError("full");
  Send("MAIL FROM:<alice@asso.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n");
  EXPECT_THAT(Send(kMessage), StartsWith("451 "));
  EXPECT_THAT(host_.received, ElementsAre(metrics::AccountClass::kTrusted,
                                          metrics::AccountClass::kAuthenticated));
  EXPECT_THAT(host_.session_lifetimes, IsEmpty());
  host_.clock_.Advance(absl::Seconds(42));
  session_.reset();
  EXPECT_THAT(host_.session_lifetimes, ElementsAre(absl::Seconds(42)));
}

}  // namespace
}  // namespace facteur::smtp
