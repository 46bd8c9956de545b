// Tests of the queue manager on a real spool (RocksDB on disk) and a simulated clock: jobs per
// domain, settling of mixed outcomes, retry schedule, expiry, DSNs (and none for the null
// sender or NOTIFY=NEVER), suspended domains, and the queue operations.
#include "engine/delivery/queue_manager.h"

#include <algorithm>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "engine/base/clock.h"
#include "engine/metrics/metrics.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "queue/spool.h"
#include "queue/store.h"
#include "tests/unit/queue/faulty_store.h"
#include "tests/unit/queue/queue_test_util.h"

namespace facteur::delivery {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Pair;
using ::testing::SizeIs;

class CollectingDispatcher final : public JobDispatcher {
 public:
  void Dispatch(DeliveryJob job) override { jobs.push_back(std::move(job)); }
  std::vector<DeliveryJob> Take() { return std::exchange(jobs, {}); }
  std::vector<DeliveryJob> jobs;
};

queue::RecipientRecord R(std::string address, std::string notify = "") {
  queue::RecipientRecord recipient;
  recipient.address = std::move(address);
  recipient.notify = std::move(notify);
  return recipient;
}

mail::DeliveryOutcome Outcome(int code, std::string enhanced, std::string text) {
  mail::DeliveryOutcome outcome;
  outcome.reply = mail::Reply{code, std::move(enhanced), std::move(text)};
  outcome.remote = "mx.example.test[127.0.0.1]:25";
  return outcome;
}

JobResult ResultFor(const DeliveryJob& job, std::vector<mail::DeliveryOutcome> outcomes) {
  JobResult result;
  result.id = job.id;
  result.domain = job.domain;
  result.recipient_indexes = job.recipient_indexes;
  result.outcomes = std::move(outcomes);
  result.destination = "mx:" + job.domain;
  return result;
}

class QueueManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto events = events::EventLog::Open(dir_.Sub("events.log"));
    ASSERT_TRUE(events.ok()) << events.status();
    events_ = *std::move(events);
    Open();
  }

  // (Re)opens the store, its spool and the manager on the same directory.
  void Open(queue::SpoolOptions spool_options = {}, queue::StoreOptions store_options = {}) {
    manager_.reset();
    spool_.reset();
    store_.reset();
    auto store = queue::Store::Open(dir_.Sub("spool"), store_options);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    auto spool = queue::Spool::Open(*store_, spool_options, clock_);
    ASSERT_TRUE(spool.ok()) << spool.status();
    spool_ = *std::move(spool);
    spool_->SetCommitObserver([this](size_t batch, absl::Duration, bool) {
      absl::MutexLock lock(&mutex_);
      committed_ += batch;
    });
    manager_ = std::make_unique<QueueManager>(
        *store_, *spool_, retry_, clock_, events_.get(),
        QueueManagerOptions{.hostname = "relay.example.org", .max_messages_in_flight = 100,
                            .max_recipients_per_transaction = 2,
                            .greylist = throttle::GreylistOptions{},
                            .metrics = nullptr});
    manager_->SetUserUnknownHandler(
        [this](const std::string& address, const mail::DeliveryOutcome&) {
          unknown_users_.push_back(address);
        });
    manager_->SetDispatcher(&dispatcher_);
  }

  void TearDown() override {
    manager_.reset();
    spool_.reset();
    store_.reset();
  }

  // Waits until `items` more spool items (messages, updates, removals) have committed.
  void WaitForCommits(uint64_t items) {
    absl::MutexLock lock(&mutex_);
    const uint64_t target = expected_ += items;
    auto reached = [this, target]() ABSL_SHARED_LOCKS_REQUIRED(mutex_) { return committed_ >= target; };
    ASSERT_TRUE(mutex_.AwaitWithTimeout(absl::Condition(&reached), absl::Seconds(10)))
        << "committed " << committed_ << " of " << target;
  }

  MessageId Enqueue(std::string sender, std::vector<queue::RecipientRecord> recipients,
                    std::string dsn_ret = "", std::string dsn_envid = "") {
    queue::Envelope envelope;
    envelope.id = MessageId::Generate(clock_.Now());
    envelope.sender = std::move(sender);
    envelope.dsn_ret = std::move(dsn_ret);
    envelope.dsn_envid = std::move(dsn_envid);
    envelope.recipients = std::move(recipients);
    envelope.received_at = clock_.Now();
    envelope.next_attempt = clock_.Now();
    const MessageId id = envelope.id;
    spool_->Enqueue(std::move(envelope),
                    "From: <alice@example.org>\r\nSubject: greetings\r\n\r\nHello\r\n",
                    [](absl::Status status) { EXPECT_TRUE(status.ok()) << status; });
    WaitForCommits(1);
    return id;
  }

  queue::Envelope Read(const MessageId& id) {
    auto envelope = queue::ReadEnvelope(*store_, id);
    EXPECT_TRUE(envelope.ok() && envelope->has_value());
    return envelope.ok() && envelope->has_value() ? **envelope : queue::Envelope();
  }

  // Whether the message is still in the queue (an envelope under its id).
  bool Queued(const MessageId& id) {
    auto envelope = queue::ReadEnvelope(*store_, id);
    EXPECT_TRUE(envelope.ok()) << envelope.status();
    return envelope.ok() && envelope->has_value();
  }

  // The DSNs in the queue: messages from the null sender.
  std::vector<queue::Envelope> Dsns() {
    std::vector<queue::Envelope> found;
    auto all = queue::ListEnvelopes(*store_, 1000);
    EXPECT_TRUE(all.ok());
    for (const queue::Envelope& e : *all) {
      if (e.sender.empty()) found.push_back(e);
    }
    return found;
  }

  queue::test::TempDir dir_;
  SimulatedClock clock_;
  throttle::RetryPolicy retry_{throttle::RetryOptions{.first_retry = absl::Minutes(5),
                                                      .backoff = 2.0,
                                                      .max_retry_interval = absl::Hours(4),
                                                      .jitter = 0.0,
                                                      .queue_lifetime = absl::Hours(24 * 5)}};
  std::unique_ptr<queue::Store> store_;
  std::unique_ptr<queue::Spool> spool_;
  std::unique_ptr<events::EventLog> events_;

  // The events log's lines so far.
  std::vector<std::string> EventLines() {
    events_->Flush();
    std::ifstream in(dir_.Sub("events.log"));
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
  }
  CollectingDispatcher dispatcher_;
  std::unique_ptr<QueueManager> manager_;
  std::vector<std::string> unknown_users_;  // manager thread = the test thread (RunOnce)
  absl::Mutex mutex_;
  uint64_t committed_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t expected_ ABSL_GUARDED_BY(mutex_) = 0;
};

TEST_F(QueueManagerTest, SplitsByDomainAndTransactionSizeAndLeasesOnce) {
  const MessageId id = Enqueue("alice@example.org", {R("a@x.test"), R("b@Y.test"), R("c@x.test"),
                                                      R("d@x.test")});
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  // x.test has three recipients and transactions carry two: two jobs; y.test one.
  ASSERT_THAT(jobs, SizeIs(3));
  EXPECT_EQ(jobs[0].domain, "x.test");
  EXPECT_THAT(jobs[0].recipient_indexes, ElementsAre(0, 2));
  EXPECT_EQ(jobs[1].domain, "x.test");
  EXPECT_THAT(jobs[1].recipient_indexes, ElementsAre(3));
  EXPECT_EQ(jobs[2].domain, "y.test");
  EXPECT_EQ(jobs[0].message.body, jobs[2].message.body);  // read once, shared
  EXPECT_EQ(jobs[0].attempt, 1u);
  EXPECT_EQ(jobs[0].id, id);
  manager_->RunOnce();
  EXPECT_THAT(dispatcher_.Take(), IsEmpty());  // leased: not handed out twice
  EXPECT_EQ(manager_->in_flight(), 1u);
}

// Bodies out for delivery stay in memory: past max_bytes_in_flight no more message is leased
// (the one that crosses it goes out), and each settled message makes room for the next.
TEST_F(QueueManagerTest, BytesInFlightBoundTheMessagesLeased) {
  manager_ = std::make_unique<QueueManager>(
      *store_, *spool_, retry_, clock_, events_.get(),
      QueueManagerOptions{.hostname = "relay.example.org", .max_messages_in_flight = 100,
                          .max_bytes_in_flight = 100,  // the test bodies are 56 bytes
                          .max_recipients_per_transaction = 2,
                          .greylist = throttle::GreylistOptions{},
                          .metrics = nullptr});
  manager_->SetDispatcher(&dispatcher_);
  std::vector<MessageId> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(Enqueue("alice@example.org", {R("a@x.test")}));
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(2));  // 56 bytes, then 112 >= 100: full
  ASSERT_EQ(jobs[0].message.body->size(), 56u);
  EXPECT_EQ(manager_->in_flight(), 2u);
  EXPECT_EQ(spool_->leased(), 2u);  // the others were released, not kept leased
  size_t delivered = 0;
  while (!jobs.empty()) {
    manager_->OnJobDone(ResultFor(jobs.front(), {Outcome(250, "2.0.0", "ok")}));
    jobs.erase(jobs.begin());
    ++delivered;
    manager_->RunOnce();
    std::vector<DeliveryJob> more = dispatcher_.Take();
    EXPECT_LE(more.size(), 1u);  // one settled, room for one
    for (DeliveryJob& job : more) jobs.push_back(std::move(job));
    EXPECT_LE(manager_->in_flight(), 2u);
    ASSERT_LE(delivered, ids.size());
  }
  EXPECT_EQ(delivered, ids.size());  // every message went out in the end
  WaitForCommits(ids.size());
  EXPECT_EQ(manager_->in_flight(), 0u);
}

// One message bigger than the whole budget still goes out (alone).
TEST_F(QueueManagerTest, MessageBiggerThanTheByteBudgetStillGoesOut) {
  manager_ = std::make_unique<QueueManager>(
      *store_, *spool_, retry_, clock_, events_.get(),
      QueueManagerOptions{.hostname = "relay.example.org", .max_messages_in_flight = 100,
                          .max_bytes_in_flight = 10,
                          .max_recipients_per_transaction = 2,
                          .greylist = throttle::GreylistOptions{},
                          .metrics = nullptr});
  manager_->SetDispatcher(&dispatcher_);
  Enqueue("alice@example.org", {R("a@x.test")});
  Enqueue("alice@example.org", {R("b@x.test")});
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(1));
  manager_->OnJobDone(ResultFor(jobs[0], {Outcome(250, "2.0.0", "ok")}));
  manager_->RunOnce();
  EXPECT_THAT(dispatcher_.Take(), SizeIs(1));
}

JobResult WithVerdicts(JobResult result, std::vector<RecipientVerdict> verdicts,
                       std::string source) {
  result.verdicts = std::move(verdicts);
  result.source = std::move(source);
  return result;
}

// A greylisted recipient comes back after the announced delay, pinned to the source that was
// greylisted, and its job carries the pin; an ordinary 4xx follows the retry schedule.
TEST_F(QueueManagerTest, GreylistedRecipientIsPinnedAndRetriedAfterTheAnnouncedDelay) {
  const MessageId id = Enqueue("alice@example.org", {R("grey@x.test"), R("ok@x.test")});
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(1));
  EXPECT_EQ(jobs[0].pinned_source, "");
  manager_->OnJobDone(WithVerdicts(
      ResultFor(jobs[0], {Outcome(450, "4.2.0", "Greylisted for 120 seconds"),
                          Outcome(250, "2.0.0", "ok")}),
      {RecipientVerdict{throttle::ResponseClass::kGreylist, absl::Seconds(120)},
       RecipientVerdict{throttle::ResponseClass::kSuccess, std::nullopt}},
      "out2"));
  manager_->RunOnce();
  WaitForCommits(1);
  queue::Envelope envelope = Read(id);
  EXPECT_EQ(envelope.recipients[0].state, queue::RecipientState::kPending);
  EXPECT_EQ(envelope.recipients[0].pinned_source, "out2");
  EXPECT_EQ(envelope.recipients[0].greylisted, 1u);
  // The announced delay wins over the 5-minute default (within [1 min, max_delay]).
  EXPECT_EQ(envelope.next_attempt, clock_.Now() + absl::Seconds(120 + 12));  // + a tenth

  clock_.Advance(absl::Seconds(131));
  manager_->RunOnce();
  EXPECT_THAT(dispatcher_.Take(), IsEmpty());  // not a second early
  clock_.Advance(absl::Seconds(1));
  manager_->RunOnce();
  jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(1));
  EXPECT_EQ(jobs[0].pinned_source, "out2");
  EXPECT_THAT(jobs[0].recipient_indexes, ElementsAre(0));
  manager_->OnJobDone(WithVerdicts(ResultFor(jobs[0], {Outcome(250, "2.0.0", "ok")}),
                                   {RecipientVerdict{throttle::ResponseClass::kSuccess, {}}},
                                   "out2"));
  manager_->RunOnce();
  WaitForCommits(1);
  EXPECT_FALSE(Queued(id));
}

// A job split into transactions whose parts went from different sources: each greylisted
// recipient goes back from the source it was greylisted from, not from the last part's.
TEST_F(QueueManagerTest, SplitPartsPinTheirGreylistedRecipientsToTheirOwnSource) {
  const MessageId id = Enqueue("alice@example.org", {R("a@x.test"), R("b@x.test")});
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(1));
  JobResult result = WithVerdicts(
      ResultFor(jobs[0], {Outcome(450, "4.2.0", "Greylisted for 120 seconds"),
                          Outcome(450, "4.2.0", "Greylisted for 120 seconds")}),
      {RecipientVerdict{throttle::ResponseClass::kGreylist, absl::Seconds(120)},
       RecipientVerdict{throttle::ResponseClass::kGreylist, absl::Seconds(120)}},
      "out2");
  result.recipient_sources = {"out1", "out2"};
  manager_->OnJobDone(std::move(result));
  manager_->RunOnce();
  WaitForCommits(1);
  const queue::Envelope envelope = Read(id);
  EXPECT_EQ(envelope.recipients[0].pinned_source, "out1");
  EXPECT_EQ(envelope.recipients[1].pinned_source, "out2");
}

// ENVID and ORCPT are kept as received (xtext), to be passed on so; the DSN shows what they
// stand for (RFC 3464 §2.2.1, §2.3.1): a bounce processor matches "list+bounce@x", not
// "list+2Bbounce@x".
TEST_F(QueueManagerTest, TheDsnShowsEnvidAndOrcptDecodedFromXtext) {
  queue::RecipientRecord recipient = R("gone@y.test");
  recipient.orcpt = "rfc822;list+2Bgone@y.test";
  Enqueue("alice@example.org", {recipient}, "HDRS", "campaign+2B42");
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(1));
  EXPECT_EQ(jobs[0].message.recipients[0].orcpt, "rfc822;list+2Bgone@y.test");  // passed on as is
  EXPECT_EQ(jobs[0].message.dsn_envid, "campaign+2B42");
  manager_->OnJobDone(ResultFor(jobs[0], {Outcome(550, "5.1.1", "no such user")}));
  manager_->RunOnce();
  WaitForCommits(2);
  std::vector<queue::Envelope> dsns = Dsns();
  ASSERT_THAT(dsns, SizeIs(1));
  auto body = queue::ReadBody(*store_, dsns[0].id);
  ASSERT_TRUE(body.ok() && body->has_value());
  EXPECT_THAT(**body, HasSubstr("Original-Envelope-Id: campaign+42\r\n"));
  EXPECT_THAT(**body, HasSubstr("Original-Recipient: rfc822; list+gone@y.test\r\n"));
  EXPECT_THAT(**body, ::testing::Not(HasSubstr("+2B")));
}

// Two recipients of one message waiting for different things: the one told to slow down goes
// again as soon as its site allows, and the greylisted one only after its delay, not with it
// (which would be greylisted again from the same address, for nothing).
TEST_F(QueueManagerTest, EachRecipientWaitsForItsOwnRetryTime) {
  const MessageId id = Enqueue("alice@example.org", {R("grey@x.test"), R("busy@y.test")});
  // When a recipient goes again: the message's next attempt, or its own time when later.
  auto due = [](const queue::Envelope& envelope, size_t index) {
    return std::max(envelope.next_attempt, envelope.recipients[index].retry_at);
  };
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(2));
  for (const DeliveryJob& job : jobs) {
    if (job.domain == "x.test") {
      manager_->OnJobDone(WithVerdicts(
          ResultFor(job, {Outcome(450, "4.2.0", "Greylisted for 300 seconds")}),
          {RecipientVerdict{throttle::ResponseClass::kGreylist, absl::Seconds(300)}}, "out1"));
    } else {
      manager_->OnJobDone(WithVerdicts(
          ResultFor(job, {Outcome(421, "4.7.28", "unusual rate of mail, slow down")}),
          {RecipientVerdict{throttle::ResponseClass::kRateLimit, {}}}, "out1"));
    }
  }
  manager_->RunOnce();
  WaitForCommits(1);
  queue::Envelope envelope = Read(id);
  const absl::Time greylist_over = clock_.Now() + absl::Seconds(300 + 15);  // + the margin
  EXPECT_EQ(envelope.next_attempt, clock_.Now());  // the rate-limited one: its site paces it
  EXPECT_EQ(due(envelope, 0), greylist_over);
  EXPECT_EQ(due(envelope, 1), clock_.Now());

  // Tried again at once: busy@ alone.
  clock_.Advance(absl::Seconds(1));
  manager_->RunOnce();
  jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(1));
  EXPECT_EQ(jobs[0].domain, "y.test");
  manager_->OnJobDone(WithVerdicts(
      ResultFor(jobs[0], {Outcome(451, "4.3.0", "temporary failure")}),
      {RecipientVerdict{throttle::ResponseClass::kOtherTransient, {}}}, "out1"));
  manager_->RunOnce();
  WaitForCommits(1);
  envelope = Read(id);
  // busy@ now follows the retry schedule (minutes); grey@ keeps its own time.
  EXPECT_EQ(due(envelope, 0), greylist_over);
  EXPECT_GT(due(envelope, 1), clock_.Now());
  EXPECT_NE(due(envelope, 1), greylist_over);
  EXPECT_EQ(envelope.next_attempt, std::min(due(envelope, 0), due(envelope, 1)));

  // Whichever comes first brings the message back with that recipient only.
  const size_t first = due(envelope, 0) < due(envelope, 1) ? 0 : 1;
  clock_.Advance(due(envelope, first) - clock_.Now());
  manager_->RunOnce();
  jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(1));
  EXPECT_THAT(jobs[0].recipient_indexes, ElementsAre(first));
  EXPECT_EQ(jobs[0].pinned_source, first == 0 ? "out1" : "");
}

// A job its site held back was never attempted: no attempt is counted and the message comes
// back when the site can take it.
TEST_F(QueueManagerTest, ThrottledJobCostsNoAttemptAndReturnsWhenTheSiteAllows) {
  const MessageId id = Enqueue("alice@example.org", {R("a@x.test")});
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(1));
  JobResult held;
  held.id = jobs[0].id;
  held.domain = jobs[0].domain;
  held.recipient_indexes = jobs[0].recipient_indexes;
  held.throttled_until = clock_.Now() + absl::Minutes(37);
  manager_->OnJobDone(std::move(held));
  manager_->RunOnce();
  WaitForCommits(1);
  queue::Envelope envelope = Read(id);
  EXPECT_EQ(envelope.attempts, 0u);
  EXPECT_EQ(envelope.recipients[0].state, queue::RecipientState::kPending);
  EXPECT_EQ(envelope.next_attempt, clock_.Now() + absl::Minutes(37));
}

// "550 5.2.1 ... receiving mail too quickly" and "550 5.7.1 ... blocked using ..." are about
// our IP, not the recipient: kept and retried. A 550 5.1.1 user-unknown bounces and reaches
// the suppression list.
TEST_F(QueueManagerTest, RateLimitAndBlocklistFiveHundredsKeepTheRecipientUserUnknownSuppresses) {
  const MessageId id =
      Enqueue("alice@example.org", {R("fast@x.test"), R("blocked@x.test")});
  const MessageId gone = Enqueue("alice@example.org", {R("gone@y.test")});
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(2));
  for (const DeliveryJob& job : jobs) {
    if (job.id == id) {
      manager_->OnJobDone(WithVerdicts(
          ResultFor(job, {Outcome(550, "5.2.1", "receiving mail at a rate that prevents delivery"),
                          Outcome(550, "5.7.1", "blocked using zen.spamhaus.org")}),
          {RecipientVerdict{throttle::ResponseClass::kRateLimit, {}},
           RecipientVerdict{throttle::ResponseClass::kBlocklist, {}}},
          "out1"));
    } else {
      manager_->OnJobDone(WithVerdicts(
          ResultFor(job, {Outcome(550, "5.1.1", "no such user")}),
          {RecipientVerdict{throttle::ResponseClass::kUserUnknown, {}}}, "out1"));
    }
  }
  manager_->RunOnce();
  WaitForCommits(3);  // both envelopes, and the DSN of the unknown user
  queue::Envelope envelope = Read(id);
  EXPECT_EQ(envelope.recipients[0].state, queue::RecipientState::kPending);
  EXPECT_EQ(envelope.recipients[1].state, queue::RecipientState::kPending);
  EXPECT_EQ(envelope.recipients[0].pinned_source, "");
  EXPECT_EQ(envelope.next_attempt, clock_.Now());  // the site's throttle paces it, not the schedule
  // Their events name no time: the site's sources may all be paused (only the shard knows).
  for (const std::string& line : EventLines()) {
    if (line.find("\"transient_failure\"") == std::string::npos) continue;
    EXPECT_EQ(line.find("next_attempt"), std::string::npos) << line;
  }
  EXPECT_THAT(unknown_users_, ElementsAre("gone@y.test"));
  EXPECT_THAT(Dsns(), SizeIs(1));
  EXPECT_FALSE(Queued(gone));
}

TEST_F(QueueManagerTest, AFullMailboxRefusedWithAFiveHundredIsRetriedOnTheSchedule) {
  // Orange answers a full mailbox "552 ... Boite du destinataire pleine": kept, retried on the
  // schedule (not paced by the site), no DSN and no suppression until the queue lifetime ends.
  const MessageId id = Enqueue("alice@example.org", {R("full@orange.test")});
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(1));
  manager_->OnJobDone(WithVerdicts(
      ResultFor(jobs[0], {Outcome(552, "5.1.1", "Boite du destinataire pleine. OFR_417")}),
      {RecipientVerdict{throttle::ResponseClass::kMailboxFull, {}}}, "out1"));
  manager_->RunOnce();
  WaitForCommits(1);
  queue::Envelope envelope = Read(id);
  EXPECT_EQ(envelope.recipients[0].state, queue::RecipientState::kPending);
  EXPECT_EQ(envelope.next_attempt, clock_.Now() + absl::Minutes(5));
  EXPECT_THAT(envelope.recipients[0].last_reply, HasSubstr("552 5.1.1"));
  std::vector<std::string> events = EventLines();
  ASSERT_THAT(events, SizeIs(1));
  EXPECT_THAT(events[0], HasSubstr("\"transient_failure\""));
  EXPECT_THAT(events[0], HasSubstr("\"next_attempt\""));  // the schedule's time
  EXPECT_THAT(Dsns(), IsEmpty());
  EXPECT_THAT(unknown_users_, IsEmpty());
}

TEST_F(QueueManagerTest, OnlyARcptRefusalPutsTheRecipientOnTheSuppressionList) {
  // "User unknown" answering MAIL FROM is about the sender (a sender address check), and at the
  // end of data about no one recipient: the recipients bounce but are not suppressed.
  const MessageId id = Enqueue("alice@example.org", {R("a@y.test"), R("b@y.test")});
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(1));
  mail::DeliveryOutcome sender_check =
      Outcome(550, "5.1.0", "<alice@example.org>: Sender address rejected: User unknown");
  sender_check.scope = mail::OutcomeScope::kMessage;
  manager_->OnJobDone(WithVerdicts(
      ResultFor(jobs[0], {sender_check, sender_check}),
      {RecipientVerdict{throttle::ResponseClass::kUserUnknown, {}},
       RecipientVerdict{throttle::ResponseClass::kUserUnknown, {}}},
      "out1"));
  manager_->RunOnce();
  WaitForCommits(2);  // the envelope, and the DSN
  EXPECT_FALSE(Queued(id));
  EXPECT_THAT(Dsns(), SizeIs(1));
  EXPECT_THAT(unknown_users_, IsEmpty());
}

// A recipient a server refused is logged as a bounce with where the attempt went (site, source
// IP, MX), as its deliveries and deferrals are.
TEST_F(QueueManagerTest, BounceEventsNameTheSiteAndSourceOfTheAttempt) {
  Enqueue("alice@example.org", {R("gone@y.test")});
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(1));
  JobResult result = ResultFor(jobs[0], {Outcome(550, "5.1.1", "no such user")});
  result.site = "orange";
  result.source_ip = "192.0.2.7";
  manager_->OnJobDone(std::move(result));
  manager_->RunOnce();
  WaitForCommits(2);  // the DSN and the envelope update
  events_->Flush();
  std::ifstream file(dir_.Sub("events.log"));
  std::string line, bounce;
  while (std::getline(file, line)) {
    if (line.find("\"type\":\"bounce\"") != std::string::npos) bounce = line;
  }
  EXPECT_THAT(bounce, HasSubstr("\"site\":\"orange\""));
  EXPECT_THAT(bounce, HasSubstr("\"source_ip\":\"192.0.2.7\""));
}

TEST_F(QueueManagerTest, SettlesMixedOutcomesRetriesAndBounces) {
  const MessageId id = Enqueue("alice@example.org", {R("ok@x.test"), R("later@x.test"), R("gone@y.test")});
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(2));
  manager_->OnJobDone(ResultFor(jobs[0], {Outcome(250, "2.0.0", "ok"), Outcome(451, "4.3.0", "try later")}));
  manager_->OnJobDone(ResultFor(jobs[1], {Outcome(550, "5.1.1", "no such user")}));
  manager_->RunOnce();
  WaitForCommits(2);  // the DSN and the envelope update

  queue::Envelope envelope = Read(id);
  EXPECT_EQ(envelope.attempts, 1u);
  EXPECT_EQ(envelope.recipients[0].state, queue::RecipientState::kDelivered);
  EXPECT_EQ(envelope.recipients[1].state, queue::RecipientState::kPending);
  EXPECT_EQ(envelope.recipients[2].state, queue::RecipientState::kBounced);
  EXPECT_EQ(envelope.next_attempt, clock_.Now() + absl::Minutes(5));

  std::vector<queue::Envelope> dsns = Dsns();
  ASSERT_THAT(dsns, SizeIs(1));
  EXPECT_EQ(dsns[0].recipients[0].address, "alice@example.org");
  auto body = queue::ReadBody(*store_, dsns[0].id);
  ASSERT_TRUE(body.ok() && body->has_value());
  EXPECT_THAT(**body, HasSubstr("gone@y.test"));
  EXPECT_THAT(**body, HasSubstr("5.1.1"));
  EXPECT_THAT(**body, ::testing::Not(HasSubstr("later@x.test")));

  // Not due before the retry time; then only the open recipient goes, as attempt 2.
  clock_.Advance(absl::Minutes(4));
  manager_->RunOnce();
  for (const DeliveryJob& job : dispatcher_.Take()) EXPECT_NE(job.id, id);  // the DSN may go
  clock_.Advance(absl::Minutes(1));
  manager_->RunOnce();
  std::vector<DeliveryJob> retry;
  for (DeliveryJob& job : dispatcher_.Take()) {
    if (job.id == id) retry.push_back(std::move(job));
  }
  ASSERT_THAT(retry, SizeIs(1));
  EXPECT_THAT(retry[0].recipient_indexes, ElementsAre(1));
  EXPECT_EQ(retry[0].attempt, 2u);

  // Delivered at last: the message leaves the queue.
  manager_->OnJobDone(ResultFor(retry[0], {Outcome(250, "2.0.0", "ok")}));
  manager_->RunOnce();
  WaitForCommits(1);
  EXPECT_FALSE(Queued(id));
}

// A DSN is written with the bounce it reports, so a power cut undoes both or neither: the
// recipient is then tried again and bounced again with one DSN in all, not one per attempt.
// (One change per commit here, so that a DSN written apart from its bounce would be committed,
// and synced, before the bounce.)
TEST_F(QueueManagerTest, APowerCutUndoesABounceAndItsDsnTogether) {
  queue::test::FaultyStore faulty;
  auto& fs = faulty.fs;
  queue::SpoolOptions one_change_per_commit;
  one_change_per_commit.max_batch = 1;
  one_change_per_commit.max_unsynced = absl::Hours(1);  // no sync of the writer's own
  Open(one_change_per_commit, faulty.store_options);
  const MessageId id = Enqueue("alice@example.org", {R("gone@y.test")});
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(1));
  manager_->OnJobDone(ResultFor(jobs[0], {Outcome(550, "5.1.1", "no such user")}));
  manager_->RunOnce();
  WaitForCommits(2);  // the removal and the DSN, written but not synced
  EXPECT_FALSE(Queued(id));
  EXPECT_THAT(Dsns(), SizeIs(1));
  dispatcher_.Take();  // the DSN's own delivery, if it started: lost with the power

  fs->CutPower();
  manager_.reset();
  spool_.reset();
  store_.reset();
  fs->LoseUnsyncedLogTails();  // closed: the logs keep what a sync covered
  Open();
  ASSERT_TRUE(Queued(id)) << "the bounce was undone";
  EXPECT_THAT(Dsns(), IsEmpty()) << "its DSN was undone with it";

  manager_->RunOnce();
  jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(1));
  EXPECT_EQ(jobs[0].id, id);
  manager_->OnJobDone(ResultFor(jobs[0], {Outcome(550, "5.1.1", "no such user")}));
  manager_->RunOnce();
  WaitForCommits(2);
  EXPECT_FALSE(Queued(id));
  EXPECT_THAT(Dsns(), SizeIs(1));
}

TEST_F(QueueManagerTest, ExpiredMessagesBounceUntriedWithDelayStatus) {
  const MessageId id = Enqueue("alice@example.org", {R("slow@x.test")});
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(1));
  manager_->OnJobDone(
      ResultFor(jobs[0], {Outcome(451, "4.4.1", "connection refused\nby the firewall")}));
  manager_->RunOnce();
  WaitForCommits(1);
  // What kept it is kept with it, one line, for `queue show` and for the DSN.
  EXPECT_EQ(Read(id).recipients[0].last_reply,
            "mx.example.test[127.0.0.1]:25 said: 451 4.4.1 connection refused by the firewall");
  // Five days later (a server stopped all that time) it is due and expired: it bounces untried.
  clock_.Advance(absl::Hours(24 * 5 + 1));
  manager_->RunOnce();
  WaitForCommits(2);  // the DSN and the removal
  for (const DeliveryJob& job : dispatcher_.Take()) EXPECT_NE(job.id, id);
  EXPECT_FALSE(Queued(id));
  std::vector<queue::Envelope> dsns = Dsns();
  ASSERT_THAT(dsns, SizeIs(1));
  auto body = queue::ReadBody(*store_, dsns[0].id);
  ASSERT_TRUE(body.ok() && body->has_value());
  EXPECT_THAT(**body, HasSubstr("5.4.7"));
  // The sender learns why, not only that time ran out.
  const std::string unfolded = absl::StrReplaceAll(**body, {{"\r\n ", " "}, {"\r\n\t", " "}});
  EXPECT_THAT(unfolded, HasSubstr("last attempt: mx.example.test[127.0.0.1]:25 said: 451 4.4.1 "
                                  "connection refused by the firewall"));
}

TEST_F(QueueManagerTest, TheLastReplyFollowsEachAttemptAndGoesOnceDelivered) {
  const MessageId id = Enqueue("alice@example.org", {R("a@x.test"), R("b@y.test")});
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(2));  // one per domain
  for (const DeliveryJob& job : jobs) {
    manager_->OnJobDone(ResultFor(job, {Outcome(421, "4.7.0", "too fast")}));
  }
  manager_->RunOnce();
  WaitForCommits(1);  // both results, one update
  for (const queue::RecipientRecord& r : Read(id).recipients) {
    EXPECT_EQ(r.last_reply, "mx.example.test[127.0.0.1]:25 said: 421 4.7.0 too fast");
  }
  clock_.Advance(absl::Hours(1));
  manager_->RunOnce();
  jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(2));
  for (const DeliveryJob& job : jobs) {
    mail::DeliveryOutcome outcome = job.domain == "x.test"
                                        ? Outcome(250, "2.0.0", "ok")
                                        : Outcome(450, "4.2.0", "greylisted, come back");
    manager_->OnJobDone(ResultFor(job, {outcome}));
  }
  manager_->RunOnce();
  WaitForCommits(1);  // both results, one update
  const queue::Envelope envelope = Read(id);
  ASSERT_THAT(envelope.recipients, SizeIs(2));
  EXPECT_EQ(envelope.recipients[0].state, queue::RecipientState::kDelivered);
  EXPECT_EQ(envelope.recipients[0].last_reply, "");
  EXPECT_EQ(envelope.recipients[1].last_reply,
            "mx.example.test[127.0.0.1]:25 said: 450 4.2.0 greylisted, come back");
}

// A long reply is kept to 256 bytes, marked as cut, and cut between two UTF-8 characters.
TEST_F(QueueManagerTest, ALongLastReplyIsMarkedAsCutBetweenCharacters) {
  const MessageId id = Enqueue("alice@example.org", {R("a@x.test")});
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(1));
  std::string text = "a";
  for (int i = 0; i < 150; ++i) text += "\xc3\xa9";  // "é", 2 bytes each
  manager_->OnJobDone(ResultFor(jobs[0], {Outcome(451, "4.3.0", text)}));
  manager_->RunOnce();
  WaitForCommits(1);
  const std::string reply = Read(id).recipients[0].last_reply;
  EXPECT_LE(reply.size(), 256u);
  EXPECT_THAT(reply, ::testing::EndsWith(" [cut]"));
  const std::string kept = reply.substr(0, reply.size() - 6);
  // "mx.example.test[127.0.0.1]:25 said: 451 4.3.0 a" is 47 bytes: an odd number of bytes is
  // left for the "é"s, so a plain cut at the bound would split one.
  EXPECT_THAT(kept, ::testing::EndsWith("\xc3\xa9"));
  EXPECT_THAT(kept, HasSubstr("said: 451 4.3.0 a\xc3\xa9"));
}

// NOTIFY=SUCCESS (RFC 3461 §5.2.2): a server that offers DSN was given NOTIFY and reports
// success itself; one that does not gets the message, and the sender a "relayed" DSN from us.
TEST_F(QueueManagerTest, SuccessIsReportedAsRelayedWhereTheNextServerHasNoDsn) {
  const MessageId told = Enqueue("alice@example.org", {R("a@x.test", "SUCCESS,FAILURE")});
  // RET=FULL is about failures (RFC 3461 §4.3): the notice of success has the header only.
  const MessageId untold = Enqueue("alice@example.org", {R("b@x.test", "SUCCESS")}, "FULL");
  const MessageId quiet = Enqueue("alice@example.org", {R("c@x.test", "FAILURE")});
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(3));
  for (const DeliveryJob& job : jobs) {
    mail::DeliveryOutcome delivered = Outcome(250, "2.0.0", "Ok: queued");
    delivered.remote_offers_dsn = job.id == told;
    manager_->OnJobDone(ResultFor(job, {delivered}));
  }
  manager_->RunOnce();
  WaitForCommits(4);  // three removals and one DSN
  for (const MessageId& id : {told, untold, quiet}) EXPECT_FALSE(Queued(id));
  std::vector<queue::Envelope> dsns = Dsns();
  ASSERT_THAT(dsns, SizeIs(1));
  EXPECT_EQ(dsns[0].recipients[0].address, "alice@example.org");
  auto body = queue::ReadBody(*store_, dsns[0].id);
  ASSERT_TRUE(body.ok() && body->has_value());
  EXPECT_THAT(**body, HasSubstr("Action: relayed"));
  EXPECT_THAT(**body, HasSubstr("Final-Recipient: rfc822; b@x.test"));
  EXPECT_THAT(**body, HasSubstr("Content-Type: text/rfc822-headers"));
  EXPECT_THAT(**body, Not(HasSubstr("Hello")));  // the original's body
  EXPECT_THAT(**body, Not(HasSubstr("a@x.test")));
  EXPECT_THAT(**body, Not(HasSubstr("c@x.test")));
}

TEST_F(QueueManagerTest, NoDsnForTheNullSenderOrNotifyNever) {
  const MessageId bounce = Enqueue("", {R("postmaster@x.test")});
  const MessageId quiet = Enqueue("alice@example.org", {R("q@x.test", "NEVER")});
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(2));
  for (const DeliveryJob& job : jobs) {
    manager_->OnJobDone(ResultFor(job, {Outcome(550, "5.1.1", "no such user")}));
  }
  manager_->RunOnce();
  WaitForCommits(2);  // two removals, no DSN
  for (const MessageId& id : {bounce, quiet}) {
    EXPECT_FALSE(Queued(id));
  }
  auto all = queue::ListEnvelopes(*store_, 10);
  ASSERT_TRUE(all.ok());
  EXPECT_THAT(*all, IsEmpty());
}

// Runs an operation on another thread (operations block until the manager thread ran them),
// while this thread plays the manager thread.
template <typename F>
auto RunOperation(QueueManager& manager, F operation) {
  decltype(operation()) result = absl::InternalError("not run");
  absl::Notification done;
  std::thread caller([&] {
    result = operation();
    done.Notify();
  });
  while (!done.WaitForNotificationWithTimeout(absl::Milliseconds(1))) manager.RunOnce();
  caller.join();
  return result;
}

// `queue retry` sends every recipient now, those waiting for a time of their own included.
TEST_F(QueueManagerTest, RetryTakesRecipientsWaitingForTheirOwnTime) {
  const MessageId id = Enqueue("alice@example.org", {R("grey@x.test"), R("later@y.test")});
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(2));
  for (const DeliveryJob& job : jobs) {
    const bool grey = job.domain == "x.test";
    manager_->OnJobDone(WithVerdicts(
        ResultFor(job, {grey ? Outcome(450, "4.2.0", "Greylisted for 3600 seconds")
                             : Outcome(451, "4.3.0", "try later")}),
        {RecipientVerdict{grey ? throttle::ResponseClass::kGreylist
                               : throttle::ResponseClass::kOtherTransient,
                          grey ? std::optional<absl::Duration>(absl::Seconds(3600))
                               : std::nullopt}},
        "out1"));
  }
  manager_->RunOnce();
  WaitForCommits(1);
  const queue::Envelope before = Read(id);
  ASSERT_GT(before.next_attempt, clock_.Now());
  ASSERT_GT(before.recipients[0].retry_at, before.next_attempt);  // greylisted for longer
  auto retried = RunOperation(*manager_, [&] { return manager_->Retry(id); });
  ASSERT_TRUE(retried.ok()) << retried.status();
  EXPECT_EQ(retried->messages, 1u);
  WaitForCommits(1);
  EXPECT_EQ(Read(id).recipients[0].retry_at, absl::InfinitePast());
  manager_->RunOnce();
  EXPECT_THAT(dispatcher_.Take(), SizeIs(2));
}

TEST_F(QueueManagerTest, SuspendedDomainsWaitAndResumeFlushesThem) {
  auto suspended = RunOperation(*manager_, [&] { return manager_->Suspend("X.test"); });
  ASSERT_TRUE(suspended.ok()) << suspended.status();
  EXPECT_THAT(manager_->SuspendedDomains(), ElementsAre("x.test"));
  const MessageId id = Enqueue("alice@example.org", {R("a@x.test"), R("b@y.test")});
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(1));
  EXPECT_EQ(jobs[0].domain, "y.test");
  manager_->OnJobDone(ResultFor(jobs[0], {Outcome(250, "2.0.0", "ok")}));
  manager_->RunOnce();
  WaitForCommits(1);
  EXPECT_EQ(Read(id).recipients[0].state, queue::RecipientState::kPending);

  auto resumed = RunOperation(*manager_, [&] { return manager_->Resume("x.test"); });
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->messages, 1u);
  WaitForCommits(1);
  manager_->RunOnce();
  jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(1));
  EXPECT_EQ(jobs[0].domain, "x.test");
}

// A hold is on disk when Suspend answers: a manager opened again on the same spool (a restart)
// restores it and keeps the domain's mail queued; Resume lifts it for good, restart or not.
TEST_F(QueueManagerTest, SuspendedDomainsOutliveARestartUntilResumed) {
  auto suspended = RunOperation(*manager_, [&] { return manager_->Suspend("X.test"); });
  ASSERT_TRUE(suspended.ok()) << suspended.status();
  const MessageId id = Enqueue("alice@example.org", {R("a@x.test")});

  Open();  // a restart
  absl::StatusOr<std::vector<std::string>> restored = manager_->RestoreSuspendedDomains();
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_THAT(*restored, ElementsAre("x.test"));
  EXPECT_THAT(manager_->SuspendedDomains(), ElementsAre("x.test"));
  manager_->RunOnce();
  EXPECT_THAT(dispatcher_.Take(), IsEmpty());
  EXPECT_EQ(Read(id).recipients[0].state, queue::RecipientState::kPending);

  auto resumed = RunOperation(*manager_, [&] { return manager_->Resume("x.test"); });
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->messages, 1u);
  WaitForCommits(2);  // the message put back for later, then made due by the resume
  Open();
  restored = manager_->RestoreSuspendedDomains();
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_THAT(*restored, IsEmpty());
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(1));
  EXPECT_EQ(jobs[0].domain, "x.test");
}

// A site an operator paused hands its jobs back; the manager remembers which site holds each
// message (queue summary by site) and FlushSite makes them due again, by a site's name also for
// its domain overrides, and no other site's.
TEST_F(QueueManagerTest, HeldBackMessagesCountBySiteAndFlushSiteMakesThemDue) {
  const MessageId held_id = Enqueue("alice@example.org", {R("a@x.test")});
  const MessageId other_id = Enqueue("alice@example.org", {R("b@y.test")});
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(2));
  for (const DeliveryJob& job : jobs) {
    JobResult held;
    held.id = job.id;
    held.domain = job.domain;
    held.recipient_indexes = job.recipient_indexes;
    held.site = job.domain == "x.test" ? "google/x.test" : "orange";
    held.throttled_until = clock_.Now() + absl::Hours(1);
    manager_->OnJobDone(std::move(held));
  }
  manager_->RunOnce();
  WaitForCommits(2);
  EXPECT_THAT(manager_->ScheduledBySite(),
              ElementsAre(Pair("google/x.test", 1u), Pair("orange", 1u)));
  // Both wait in the spool, held back: a live count, not one since the start.
  EXPECT_THAT(manager_->HeldBackBySite(),
              ElementsAre(Pair("google/x.test", 1u), Pair("orange", 1u)));

  auto flushed = RunOperation(*manager_, [&] { return manager_->FlushSite("google"); });
  ASSERT_TRUE(flushed.ok()) << flushed.status();
  EXPECT_EQ(flushed->messages, 1u);
  WaitForCommits(1);
  EXPECT_EQ(Read(held_id).next_attempt, clock_.Now());
  EXPECT_EQ(Read(other_id).next_attempt, clock_.Now() + absl::Hours(1));
  manager_->RunOnce();  // leased again: no longer counted as scheduled
  jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(1));
  EXPECT_EQ(jobs[0].domain, "x.test");
  EXPECT_THAT(manager_->ScheduledBySite(), ElementsAre(Pair("orange", 1u)));
  EXPECT_THAT(manager_->HeldBackBySite(), ElementsAre(Pair("orange", 1u)));
}

// FlushSite sends the site's recipients now; another recipient of the same message, greylisted
// for longer elsewhere, keeps its own time.
TEST_F(QueueManagerTest, FlushSiteLeavesOtherRecipientsTheirOwnTime) {
  const MessageId id = Enqueue("alice@example.org", {R("a@x.test"), R("grey@y.test")});
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(2));
  for (const DeliveryJob& job : jobs) {
    if (job.domain == "x.test") {
      JobResult held;
      held.id = job.id;
      held.domain = job.domain;
      held.recipient_indexes = job.recipient_indexes;
      held.site = "google/x.test";
      held.throttled_until = clock_.Now() + absl::Minutes(30);
      manager_->OnJobDone(std::move(held));
    } else {
      manager_->OnJobDone(WithVerdicts(
          ResultFor(job, {Outcome(450, "4.2.0", "Greylisted for 3600 seconds")}),
          {RecipientVerdict{throttle::ResponseClass::kGreylist, absl::Seconds(3600)}}, "out1"));
    }
  }
  manager_->RunOnce();
  WaitForCommits(1);
  const absl::Time greylist_over = Read(id).recipients[1].retry_at;
  ASSERT_GT(greylist_over, clock_.Now() + absl::Minutes(30));
  // Held back at one site only: the greylisted recipient waits after a real reply.
  EXPECT_THAT(manager_->HeldBackBySite(), ElementsAre(Pair("google/x.test", 1u)));

  auto flushed = RunOperation(*manager_, [&] { return manager_->FlushSite("google"); });
  ASSERT_TRUE(flushed.ok()) << flushed.status();
  EXPECT_EQ(flushed->messages, 1u);
  WaitForCommits(1);
  const queue::Envelope envelope = Read(id);
  EXPECT_EQ(envelope.next_attempt, clock_.Now());
  EXPECT_EQ(envelope.recipients[1].retry_at, greylist_over);
  manager_->RunOnce();
  jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(1));
  EXPECT_EQ(jobs[0].domain, "x.test");
}

TEST_F(QueueManagerTest, OperationsRetryBounceAndDelete) {
  const MessageId id = Enqueue("alice@example.org", {R("a@x.test"), R("b@y.test")});
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(2));
  for (const DeliveryJob& job : jobs) {
    manager_->OnJobDone(ResultFor(job, {Outcome(421, "4.7.0", "slow down")}));
  }
  manager_->RunOnce();
  WaitForCommits(1);

  // Retry makes it due now, long before its schedule.
  auto retried = RunOperation(*manager_, [&] { return manager_->Retry(id); });
  ASSERT_TRUE(retried.ok()) << retried.status();
  EXPECT_EQ(retried->messages, 1u);
  WaitForCommits(1);
  manager_->RunOnce();
  jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(2));

  // Bounce while in flight: applied when the attempt settles, with a DSN.
  auto bounced = RunOperation(*manager_, [&] { return manager_->Bounce(id); });
  ASSERT_TRUE(bounced.ok()) << bounced.status();
  manager_->OnJobDone(ResultFor(jobs[0], {Outcome(250, "2.0.0", "ok")}));
  manager_->OnJobDone(ResultFor(jobs[1], {Outcome(451, "4.3.0", "later")}));
  manager_->RunOnce();
  WaitForCommits(2);  // DSN + removal
  EXPECT_FALSE(Queued(id));
  std::vector<queue::Envelope> dsns = Dsns();
  ASSERT_THAT(dsns, SizeIs(1));
  auto body = queue::ReadBody(*store_, dsns[0].id);
  ASSERT_TRUE(body.ok() && body->has_value());
  EXPECT_THAT(**body, HasSubstr("b@y.test"));
  EXPECT_THAT(**body, HasSubstr("cancelled by the administrator"));
  EXPECT_THAT(absl::StrReplaceAll(**body, {{"\r\n ", " "}}),
              HasSubstr("last attempt: mx.example.test[127.0.0.1]:25 said: 451 4.3.0 later"));

  // Delete while the DSN is out for delivery: applied when the attempt settles, no new DSN.
  manager_->RunOnce();
  std::vector<DeliveryJob> dsn_jobs;
  for (DeliveryJob& job : dispatcher_.Take()) {
    if (job.id == dsns[0].id) dsn_jobs.push_back(std::move(job));
  }
  ASSERT_THAT(dsn_jobs, SizeIs(1));
  auto deleted = RunOperation(*manager_, [&] { return manager_->Delete(dsns[0].id); });
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(deleted->messages, 1u);
  EXPECT_THAT(Dsns(), SizeIs(1));  // still there until the attempt is back
  manager_->OnJobDone(ResultFor(dsn_jobs[0], {Outcome(451, "4.3.0", "later")}));
  manager_->RunOnce();
  WaitForCommits(1);
  EXPECT_THAT(Dsns(), IsEmpty());
  auto all = queue::ListEnvelopes(*store_, 10);
  ASSERT_TRUE(all.ok());
  EXPECT_THAT(*all, IsEmpty());

  // Unknown ids are NotFound.
  auto unknown = RunOperation(*manager_, [&] { return manager_->Retry(MessageId::Generate(clock_.Now())); });
  EXPECT_TRUE(absl::IsNotFound(unknown.status())) << unknown.status();
}

TEST_F(QueueManagerTest, AfterStopDispatchingResultsStillSettle) {
  const MessageId first = Enqueue("alice@example.org", {R("a@x.test")});
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(1));
  manager_->StopDispatching();
  const MessageId second = Enqueue("alice@example.org", {R("b@x.test")});
  manager_->OnJobDone(ResultFor(jobs[0], {Outcome(250, "2.0.0", "ok")}));
  manager_->RunOnce();
  WaitForCommits(1);
  EXPECT_THAT(dispatcher_.Take(), IsEmpty());  // the second message is not handed out
  EXPECT_FALSE(Queued(first));  // but the first one's delivery was recorded
  EXPECT_EQ(Read(second).attempts, 0u);
}

TEST_F(QueueManagerTest, StopReleasesLeasesSoMessagesComeBack) {
  const MessageId id = Enqueue("alice@example.org", {R("a@x.test")});
  manager_->RunOnce();
  ASSERT_THAT(dispatcher_.Take(), SizeIs(1));
  EXPECT_EQ(spool_->leased(), 1u);
  manager_->Stop();
  EXPECT_EQ(spool_->leased(), 0u);
  auto again = spool_->LeaseDue(clock_.Now(), 10);
  ASSERT_THAT(again, SizeIs(1));
  EXPECT_EQ(again[0].id, id);
}

TEST_F(QueueManagerTest, OutcomesCarryTheBoundedSiteLabelAndScheduledMessagesAreCounted) {
  metrics::Metrics metrics;
  SiteLabeler labels(1);  // the first unknown MX set keeps its key, the next is "other"
  manager_ = std::make_unique<QueueManager>(
      *store_, *spool_, retry_, clock_, events_.get(),
      QueueManagerOptions{.hostname = "relay.example.org", .max_messages_in_flight = 100,
                          .max_recipients_per_transaction = 2,
                          .greylist = throttle::GreylistOptions{},
                          .metrics = &metrics.delivery(),
                          .site_labels = &labels});
  manager_->SetDispatcher(&dispatcher_);
  Enqueue("alice@example.org", {R("a@x.test")});
  Enqueue("alice@example.org", {R("b@y.test")});
  manager_->RunOnce();
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(2));
  std::sort(jobs.begin(), jobs.end(),
            [](const DeliveryJob& a, const DeliveryJob& b) { return a.domain < b.domain; });
  for (const DeliveryJob& job : jobs) {
    JobResult result = ResultFor(job, {Outcome(451, "4.3.0", "try later")});
    result.site = "mx:mx." + job.domain + "/" + job.domain;
    manager_->OnJobDone(std::move(result));
    manager_->RunOnce();  // one at a time: x.test is seen first
  }
  WaitForCommits(2);
  const std::string text = metrics.Serialize();
  EXPECT_THAT(text, HasSubstr(
      R"(facteur_messages_deferred_total{class="other_transient",site="mx:mx.x.test",source="none"} 1)"));
  EXPECT_THAT(text, HasSubstr(
      R"(facteur_messages_deferred_total{class="other_transient",site="other",source="none"} 1)"));
  EXPECT_THAT(text, ::testing::Not(HasSubstr("mx:mx.y.test")));
  EXPECT_EQ(manager_->ScheduledWithKnownSite(), 2u);
  manager_.reset();  // before `metrics` and `labels`
}

// An expired recipient is counted by the site and source of its last attempt, which a later
// round held back by the site's throttle does not erase; one never attempted (its domain
// suspended all along) is site="unattempted", source="none".
TEST_F(QueueManagerTest, ExpiredRecipientsCarryTheSiteAndSourceOfTheirLastAttempt) {
  metrics::Metrics metrics;
  SiteLabeler labels(1);
  manager_ = std::make_unique<QueueManager>(
      *store_, *spool_, retry_, clock_, events_.get(),
      QueueManagerOptions{.hostname = "relay.example.org", .max_messages_in_flight = 100,
                          .max_recipients_per_transaction = 2,
                          .greylist = throttle::GreylistOptions{},
                          .metrics = &metrics.delivery(),
                          .site_labels = &labels});
  manager_->SetDispatcher(&dispatcher_);
  auto suspended = RunOperation(*manager_, [&] { return manager_->Suspend("z.test"); });
  ASSERT_TRUE(suspended.ok()) << suspended.status();
  const MessageId tried = Enqueue("alice@example.org", {R("a@x.test")});
  const MessageId untried = Enqueue("alice@example.org", {R("b@z.test")});
  manager_->RunOnce();  // `untried` goes back to wait, `tried` goes out
  std::vector<DeliveryJob> jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(1));
  ASSERT_EQ(jobs[0].id, tried);
  JobResult deferred = ResultFor(jobs[0], {Outcome(451, "4.3.0", "try later")});
  deferred.site = "mx:mx.x.test/x.test";
  deferred.source = "ip1";
  manager_->OnJobDone(std::move(deferred));
  manager_->RunOnce();
  WaitForCommits(2);

  // Next round: the site's throttle holds `tried` back, unattempted.
  clock_.Advance(absl::Hours(1));
  manager_->RunOnce();
  jobs = dispatcher_.Take();
  ASSERT_THAT(jobs, SizeIs(1));
  JobResult held;
  held.id = jobs[0].id;
  held.domain = jobs[0].domain;
  held.recipient_indexes = jobs[0].recipient_indexes;
  held.site = "mx:mx.x.test/x.test";
  held.throttled_until = clock_.Now() + absl::Hours(1);
  manager_->OnJobDone(std::move(held));
  manager_->RunOnce();
  WaitForCommits(2);
  EXPECT_THAT(manager_->ScheduledBySite(), ElementsAre(Pair("mx:mx.x.test/x.test", 1u)));

  clock_.Advance(absl::Hours(24 * 5));
  manager_->RunOnce();
  WaitForCommits(4);  // a DSN and a removal each
  EXPECT_THAT(dispatcher_.Take(), IsEmpty());
  EXPECT_FALSE(Queued(tried));
  EXPECT_FALSE(Queued(untried));
  const std::string text = metrics.Serialize();
  EXPECT_THAT(text, HasSubstr(
      R"(facteur_messages_expired_total{site="mx:mx.x.test",source="ip1"} 1)"));
  EXPECT_THAT(text, HasSubstr(
      R"(facteur_messages_expired_total{site="unattempted",source="none"} 1)"));
  EXPECT_EQ(manager_->ScheduledWithKnownSite(), 0u);  // settled: forgotten
  manager_.reset();  // before `metrics` and `labels`
}

}  // namespace
}  // namespace facteur::delivery
