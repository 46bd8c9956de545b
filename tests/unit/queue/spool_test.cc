// Spool: group commit under concurrent producers, durability across reopen, recovery of broken
// entries, a full disk (real fault injection) and self-healing, back-pressure.
#include "queue/spool.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rocksdb/iterator.h"
#include "tests/support/full_disk_file_system.h"
#include "tests/unit/queue/queue_test_util.h"

namespace facteur::queue {
namespace {

using test::BodyFor;
using test::EnqueueAndWait;
using test::Opened;
using test::OpenOrDie;
using test::SampleEnvelope;

TEST(SpoolTest, ConcurrentEnqueuesAreGroupCommittedAndSurviveReopen) {
  constexpr int kThreads = 8;
  constexpr int kPerThread = 500;
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  RealClock clock;
  std::vector<Envelope> envelopes;
  for (int i = 0; i < kThreads * kPerThread; ++i) {
    Envelope envelope = SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now());
    envelope.attempts = i;
    envelope.next_attempt = envelope.received_at + absl::Seconds(i % 97);
    envelopes.push_back(std::move(envelope));
  }
  {
    Opened opened = OpenOrDie(path, clock);
    ASSERT_NE(opened.spool, nullptr);
    std::atomic<size_t> largest_batch{0};
    std::atomic<size_t> committed{0};
    opened.spool->SetCommitObserver([&](size_t batch_size, absl::Duration) {
      committed += batch_size;
      size_t seen = largest_batch.load();
      while (batch_size > seen && !largest_batch.compare_exchange_weak(seen, batch_size)) {
      }
    });
    absl::BlockingCounter outstanding(kThreads * kPerThread);
    std::atomic<int> failures{0};
    std::vector<std::thread> producers;
    for (int t = 0; t < kThreads; ++t) {
      producers.emplace_back([&, t] {
        for (int i = t * kPerThread; i < (t + 1) * kPerThread; ++i) {
          opened.spool->Enqueue(envelopes[i], BodyFor(envelopes[i].id), [&](absl::Status status) {
            if (!status.ok()) ++failures;
            outstanding.DecrementCount();
          });
        }
      });
    }
    for (std::thread& producer : producers) producer.join();
    outstanding.Wait();
    EXPECT_EQ(failures.load(), 0);
    EXPECT_EQ(committed.load(), envelopes.size());
    EXPECT_GT(largest_batch.load(), 1u) << "every commit held one message: no group commit";
    EXPECT_EQ(opened.spool->size(), envelopes.size());
  }

  Opened reopened = OpenOrDie(path, clock);
  ASSERT_NE(reopened.spool, nullptr);
  EXPECT_EQ(reopened.spool->size(), envelopes.size());
  EXPECT_EQ(CountMessages(*reopened.store).value_or(0), envelopes.size());
  for (const Envelope& envelope : envelopes) {
    absl::StatusOr<std::optional<Envelope>> read = ReadEnvelope(*reopened.store, envelope.id);
    ASSERT_TRUE(read.ok() && read->has_value()) << envelope.id.ToString();
    ASSERT_EQ(**read, envelope);
    absl::StatusOr<std::optional<std::string>> body = ReadBody(*reopened.store, envelope.id);
    ASSERT_TRUE(body.ok() && body->has_value()) << envelope.id.ToString();
    ASSERT_EQ(**body, BodyFor(envelope.id));
  }

  // ListEnvelopes pages in id order.
  std::vector<MessageId> sorted_ids;
  for (const Envelope& envelope : envelopes) sorted_ids.push_back(envelope.id);
  std::sort(sorted_ids.begin(), sorted_ids.end());
  absl::StatusOr<std::vector<Envelope>> page = ListEnvelopes(*reopened.store, 3);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->size(), 3u);
  EXPECT_EQ((*page)[0].id, sorted_ids[0]);
  EXPECT_EQ((*page)[2].id, sorted_ids[2]);
  page = ListEnvelopes(*reopened.store, 2, sorted_ids[2]);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->size(), 2u);
  EXPECT_EQ((*page)[0].id, sorted_ids[3]);

  // The schedule family is one entry per message, in due-time order.
  std::unique_ptr<rocksdb::Iterator> it(reopened.store->db().NewIterator(
      rocksdb::ReadOptions(), reopened.store->family(Family::kSchedule)));
  size_t entries = 0;
  absl::Time previous = absl::InfinitePast();
  for (it->SeekToFirst(); it->Valid(); it->Next(), ++entries) {
    absl::StatusOr<ScheduleEntry> entry =
        ParseScheduleKey(std::string_view(it->key().data(), it->key().size()));
    ASSERT_TRUE(entry.ok()) << entry.status();
    EXPECT_LE(previous, entry->due);
    previous = entry->due;
  }
  EXPECT_EQ(entries, envelopes.size());
}

TEST(SpoolTest, RecoveryRemovesOrphansAndUndecodableEnvelopes) {
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  SimulatedClock clock;
  const Envelope good = SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now());
  const MessageId orphan_body = MessageId::Generate(clock.Now());
  const MessageId corrupt = MessageId::Generate(clock.Now());
  const MessageId orphan_schedule = MessageId::Generate(clock.Now());
  {
    Opened opened = OpenOrDie(path, clock);
    ASSERT_NE(opened.spool, nullptr);
    ASSERT_TRUE(EnqueueAndWait(*opened.spool, good, "good body").ok());
    rocksdb::DB& db = opened.store->db();
    auto slice = [](std::string_view s) { return rocksdb::Slice(s.data(), s.size()); };
    rocksdb::WriteOptions sync;
    sync.sync = true;
    ASSERT_TRUE(db.Put(sync, opened.store->family(Family::kBody), slice(orphan_body.Bytes()),
                       "lonely body").ok());
    ASSERT_TRUE(db.Put(sync, opened.store->family(Family::kEnvelope), slice(corrupt.Bytes()),
                       "\x01garbage").ok());
    ASSERT_TRUE(db.Put(sync, opened.store->family(Family::kBody), slice(corrupt.Bytes()),
                       "body of a corrupt envelope").ok());
    ASSERT_TRUE(db.Put(sync, opened.store->family(Family::kSchedule),
                       slice(ScheduleKey(clock.Now(), orphan_schedule)), "").ok());
  }
  Opened reopened = OpenOrDie(path, clock);
  ASSERT_NE(reopened.spool, nullptr);
  EXPECT_EQ(reopened.spool->size(), 1u);
  EXPECT_EQ(CountMessages(*reopened.store).value_or(0), 1u);
  EXPECT_EQ(ReadBody(*reopened.store, orphan_body)->has_value(), false);
  EXPECT_EQ(ReadBody(*reopened.store, corrupt)->has_value(), false);
  EXPECT_EQ(ReadEnvelope(*reopened.store, corrupt)->has_value(), false);
  EXPECT_EQ(ReadEnvelope(*reopened.store, good.id)->value_or(Envelope()), good);
  EXPECT_EQ(ReadBody(*reopened.store, good.id)->value_or(""), "good body");
  std::unique_ptr<rocksdb::Iterator> it(reopened.store->db().NewIterator(
      rocksdb::ReadOptions(), reopened.store->family(Family::kSchedule)));
  std::vector<MessageId> scheduled;
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    scheduled.push_back(
        ParseScheduleKey(std::string_view(it->key().data(), it->key().size()))->id);
  }
  EXPECT_THAT(scheduled, ::testing::ElementsAre(good.id));
}

TEST(SpoolTest, FullDiskFailsWithResourceExhaustedThenResumes) {
  test::TempDir dir;
  auto fs = std::make_shared<test_support::FullDiskFileSystem>();
  StoreOptions store_options;
  store_options.env = test_support::NewEnvWithFileSystem(fs);
  SimulatedClock clock;
  Opened opened = OpenOrDie(dir.Sub("spool"), clock, SpoolOptions(), store_options);
  ASSERT_NE(opened.spool, nullptr);
  const Envelope before = SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now());
  ASSERT_TRUE(EnqueueAndWait(*opened.spool, before, "before").ok());

  fs->Arm();
  const Envelope lost = SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now());
  absl::Status status = EnqueueAndWait(*opened.spool, lost, "lost");
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_GT(fs->refusals(), 0u);
  EXPECT_FALSE(ReadEnvelope(*opened.store, lost.id)->has_value());
  EXPECT_FALSE(ReadBody(*opened.store, lost.id)->has_value());
  // Still full: a second message fails too rather than hanging.
  const Envelope also_lost = SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now());
  status = EnqueueAndWait(*opened.spool, also_lost, "also lost");
  EXPECT_FALSE(status.ok());
  // A resume attempt while the disk is still full fails, and must not wedge the database.
  clock.Advance(absl::Seconds(2));
  status = EnqueueAndWait(*opened.spool, also_lost, "also lost");
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;

  fs->Disarm();
  clock.Advance(absl::Seconds(2));  // past the resume interval
  const Envelope after = SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now());
  status = EnqueueAndWait(*opened.spool, after, "after");
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(ReadBody(*opened.store, after.id)->value_or(""), "after");
  EXPECT_EQ(ReadBody(*opened.store, before.id)->value_or(""), "before");
  EXPECT_FALSE(ReadEnvelope(*opened.store, lost.id)->has_value());
  EXPECT_EQ(opened.spool->size(), 2u);
}

TEST(SpoolTest, PastMaxPendingEnqueueIsRefusedAtOnce) {
  test::TempDir dir;
  SimulatedClock clock;
  SpoolOptions options;
  options.max_pending = 4;
  Opened opened = OpenOrDie(dir.Sub("spool"), clock, options);
  ASSERT_NE(opened.spool, nullptr);
  // Park the writer inside the observer of its first commit so the pending deque fills up.
  absl::Notification parked, release;
  std::atomic<bool> first{true};
  opened.spool->SetCommitObserver([&](size_t, absl::Duration) {
    if (first.exchange(false)) {
      parked.Notify();
      release.WaitForNotification();
    }
  });
  absl::BlockingCounter outstanding(1 + 4);
  std::atomic<int> ok{0};
  auto count = [&](absl::Status status) {
    if (status.ok()) ++ok;
    outstanding.DecrementCount();
  };
  opened.spool->Enqueue(SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now()), "x",
                        count);
  ASSERT_TRUE(parked.WaitForNotificationWithTimeout(absl::Seconds(60)));
  for (int i = 0; i < 4; ++i) {
    opened.spool->Enqueue(SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now()), "x",
                          count);
  }
  absl::Status refused;
  bool called = false;
  opened.spool->Enqueue(SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now()), "x",
                        [&](absl::Status status) {
                          refused = status;
                          called = true;
                        });
  EXPECT_TRUE(called) << "a refusal must be immediate";
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable) << refused;
  release.Notify();
  outstanding.Wait();
  EXPECT_EQ(ok.load(), 5);
  EXPECT_EQ(opened.spool->size(), 5u);
}

TEST(SpoolTest, DestructorCommitsWhatIsPending) {
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  SimulatedClock clock;
  std::vector<MessageId> ids;
  std::atomic<int> ok{0};
  {
    Opened opened = OpenOrDie(path, clock);
    ASSERT_NE(opened.spool, nullptr);
    for (int i = 0; i < 200; ++i) {
      ids.push_back(MessageId::Generate(clock.Now()));
      opened.spool->Enqueue(SampleEnvelope(ids.back(), clock.Now()), BodyFor(ids.back()),
                            [&](absl::Status status) { ok += status.ok(); });
    }
    opened.spool.reset();
  }
  EXPECT_EQ(ok.load(), 200);
  absl::StatusOr<std::unique_ptr<Store>> reader = Store::OpenReadOnly(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(CountMessages(**reader).value_or(0), 200u);
}

TEST(SpoolTest, ZeroIdIsInvalidArgument) {
  test::TempDir dir;
  SimulatedClock clock;
  Opened opened = OpenOrDie(dir.Sub("spool"), clock);
  ASSERT_NE(opened.spool, nullptr);
  Envelope envelope = SampleEnvelope(MessageId(), clock.Now());
  EXPECT_EQ(EnqueueAndWait(*opened.spool, envelope, "x").code(),
            absl::StatusCode::kInvalidArgument);
}

// A promised enqueue (a message being signed) holds the commit open: the message already there
// and the promised one share one fsync.
TEST(SpoolTest, PromisedEnqueueJoinsTheHeldCommit) {
  test::TempDir dir;
  SimulatedClock clock;
  SpoolOptions options;
  options.expected_wait = absl::Seconds(30);  // far longer than the test: only arrival ends it
  Opened opened = OpenOrDie(dir.Sub("spool"), clock, options);
  ASSERT_NE(opened.spool, nullptr);
  absl::Mutex mutex;
  std::vector<size_t> batches;
  opened.spool->SetCommitObserver([&](size_t batch_size, absl::Duration) {
    absl::MutexLock lock(&mutex);
    batches.push_back(batch_size);
  });
  Spool::ExpectedEnqueue promise = opened.spool->ExpectEnqueue();
  absl::BlockingCounter outstanding(2);
  auto count = [&](absl::Status status) {
    EXPECT_TRUE(status.ok()) << status;
    outstanding.DecrementCount();
  };
  opened.spool->Enqueue(SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now()), "first",
                        count);
  absl::SleepFor(absl::Milliseconds(200));  // the writer has the first one and waits
  {
    absl::MutexLock lock(&mutex);
    EXPECT_TRUE(batches.empty()) << "committed without waiting for the promised message";
  }
  opened.spool->Enqueue(SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now()), "second",
                        count, std::move(promise));
  outstanding.Wait();
  absl::MutexLock lock(&mutex);
  EXPECT_THAT(batches, ::testing::ElementsAre(2u));
}

// A promise given up (signing failed) releases the held commit at once; an unkept one is
// bounded by expected_wait.
TEST(SpoolTest, WithdrawnOrLatePromiseDoesNotHoldTheCommit) {
  test::TempDir dir;
  SimulatedClock clock;
  {
    SpoolOptions options;
    options.expected_wait = absl::Seconds(30);
    Opened opened = OpenOrDie(dir.Sub("withdrawn"), clock, options);
    ASSERT_NE(opened.spool, nullptr);
    Spool::ExpectedEnqueue promise = opened.spool->ExpectEnqueue();
    absl::Notification done;
    opened.spool->Enqueue(SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now()), "x",
                          [&](absl::Status status) {
                            EXPECT_TRUE(status.ok()) << status;
                            done.Notify();
                          });
    EXPECT_FALSE(done.WaitForNotificationWithTimeout(absl::Milliseconds(200)));
    promise.Withdraw();
    EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)))
        << "a withdrawn promise still holds the commit";
  }
  {
    SpoolOptions options;
    options.expected_wait = absl::Milliseconds(20);
    Opened opened = OpenOrDie(dir.Sub("late"), clock, options);
    ASSERT_NE(opened.spool, nullptr);
    Spool::ExpectedEnqueue never_kept = opened.spool->ExpectEnqueue();
    EXPECT_TRUE(EnqueueAndWait(*opened.spool,
                               SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now()), "x")
                    .ok());
    // A promise of another spool, or a default one, is not counted by this one.
    Spool::ExpectedEnqueue none;
    absl::Notification kept;
    opened.spool->Enqueue(SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now()), "y",
                          [&](absl::Status status) {
                            EXPECT_TRUE(status.ok()) << status;
                            kept.Notify();
                          },
                          std::move(none));
    EXPECT_TRUE(kept.WaitForNotificationWithTimeout(absl::Seconds(10)));
  }
}

}  // namespace
}  // namespace facteur::queue
