// Spool: group commit under concurrent producers, durability across reopen, recovery of broken
// entries, a full disk and a power cut (real fault injection) and self-healing, back-pressure.
#include "queue/spool.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <thread>
#include <vector>

#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "queue/prezeroed_wal.h"
#include "rocksdb/iterator.h"
#include "tests/support/fault_file_system.h"
#include "tests/unit/queue/faulty_store.h"
#include "tests/unit/queue/queue_test_util.h"

namespace facteur::queue {
namespace {

using test::BodyFor;
using test::EnqueueAndWait;
using test::FaultySpoolDir;
using test::Opened;
using test::OpenOrDie;
using test::RemoveAndWait;
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
    opened.spool->SetCommitObserver([&](size_t batch_size, absl::Duration, bool) {
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

// After a rollback, an envelope of a newer version is not damage: the spool does not open,
// saying why, and the message stays for the newer version.
TEST(SpoolTest, RecoveryStopsAtAnEnvelopeOfANewerVersion) {
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  SimulatedClock clock;
  const Envelope newer = SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now());
  {
    Opened opened = OpenOrDie(path, clock);
    ASSERT_NE(opened.spool, nullptr);
    ASSERT_TRUE(EnqueueAndWait(*opened.spool, newer, "a body").ok());
    std::string bytes = EncodeEnvelope(newer);
    bytes[0] = 99;
    auto slice = [](std::string_view s) { return rocksdb::Slice(s.data(), s.size()); };
    rocksdb::WriteOptions sync;
    sync.sync = true;
    ASSERT_TRUE(opened.store->db()
                    .Put(sync, opened.store->family(Family::kEnvelope), slice(newer.id.Bytes()),
                         slice(bytes))
                    .ok());
  }
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  absl::StatusOr<std::unique_ptr<Spool>> spool = Spool::Open(**store, SpoolOptions(), clock);
  ASSERT_FALSE(spool.ok());
  EXPECT_EQ(spool.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(spool.status().message()), ::testing::HasSubstr("newer facteur"));
  EXPECT_EQ(ReadBody(**store, newer.id)->value_or(""), "a body");
}

// The size of the largest write-ahead log in `dir`.
uint64_t LargestLogSize(const std::string& dir) {
  uint64_t largest = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() == ".log") {
      largest = std::max<uint64_t>(largest, entry.file_size());
    }
  }
  return largest;
}

TEST(SpoolTest, FullDiskFailsWithResourceExhaustedThenResumes) {
  FaultySpoolDir faulty;
  auto& fs = faulty.fs;
  SimulatedClock clock;
  Opened opened = OpenOrDie(faulty.path, clock, SpoolOptions(), faulty.store_options);
  ASSERT_NE(opened.spool, nullptr);
  const Envelope before = SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now());
  ASSERT_TRUE(EnqueueAndWait(*opened.spool, before, "before").ok());

  fs->ArmFullDisk();
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

  fs->DisarmFullDisk();
  clock.Advance(absl::Seconds(2));  // past the resume interval
  const Envelope after = SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now());
  status = EnqueueAndWait(*opened.spool, after, "after");
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(ReadBody(*opened.store, after.id)->value_or(""), "after");
  EXPECT_EQ(ReadBody(*opened.store, before.id)->value_or(""), "before");
  EXPECT_FALSE(ReadEnvelope(*opened.store, lost.id)->has_value());
  EXPECT_EQ(opened.spool->size(), 2u);
}

// A write refused by a full disk while settled changes wait unsynced in the log: the writer
// must not sync that log (RocksDB asserts on a sync after a failed write: the process aborted,
// at the next max_unsynced or at stop), and once the disk has room it resumes and the settled
// changes become durable: with the next synced write, or at a clean stop with none after.
TEST(SpoolTest, FailedWriteAfterUnsyncedChangesNeitherAbortsNorLosesThem) {
  for (const bool write_after : {true, false}) {
    SCOPED_TRACE(write_after ? "a synced write after" : "a stop");
    FaultySpoolDir faulty;
    auto& fs = faulty.fs;
    SimulatedClock clock;
    SpoolOptions options;
    options.max_unsynced = absl::Milliseconds(20);
    const Envelope settled = SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now());
    const Envelope refused = SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now());
    const Envelope after = SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now());
    {
      Opened opened = OpenOrDie(faulty.path, clock, options, faulty.store_options);
      ASSERT_NE(opened.spool, nullptr);
      ASSERT_TRUE(EnqueueAndWait(*opened.spool, settled, BodyFor(settled.id)).ok());
      ASSERT_TRUE(RemoveAndWait(*opened.spool, settled.id, settled.next_attempt,
                                Durability::kRidesNextSync)
                      .ok());
      fs->ArmFullDisk();
      EXPECT_EQ(EnqueueAndWait(*opened.spool, refused, BodyFor(refused.id)).code(),
                absl::StatusCode::kResourceExhausted);
      absl::SleepFor(absl::Milliseconds(100));  // past max_unsynced: the writer's sync is due
      fs->DisarmFullDisk();
      if (write_after) {
        clock.Advance(absl::Seconds(2));  // past the resume interval
        ASSERT_TRUE(EnqueueAndWait(*opened.spool, after, BodyFor(after.id)).ok());
      }
    }  // a clean stop resumes if it must, and syncs what is left
    fs->CutPower();  // nothing written after the stop; the logs keep what the syncs covered
    fs->LoseUnsyncedLogTails();
    Opened reopened = OpenOrDie(faulty.path, clock);
    ASSERT_NE(reopened.spool, nullptr);
    EXPECT_FALSE(ReadEnvelope(*reopened.store, settled.id)->has_value()) << "its removal undone";
    EXPECT_FALSE(ReadEnvelope(*reopened.store, refused.id)->has_value());
    EXPECT_EQ(ReadBody(*reopened.store, after.id)->has_value(), write_after);
    EXPECT_EQ(reopened.spool->size(), write_after ? 1u : 0u);
  }
}

// A power cut loses what the write-ahead log holds past its last sync. Acknowledged enqueues
// (synced) survive. A settled change (Durability::kRidesNextSync) that a synced commit followed
// survives with it; one that no sync followed is undone, so that message is delivered again
// rather than lost (at-least-once, DESIGN.md §3).
TEST(SpoolTest, PowerCutUndoesOnlySettledChangesNoSyncFollowed) {
  FaultySpoolDir faulty;
  auto& fs = faulty.fs;
  SimulatedClock clock;
  SpoolOptions options;
  options.max_unsynced = absl::Hours(1);  // no sync of the writer's own in this test
  const Envelope kept = SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now());
  const Envelope ridden = SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now());
  const Envelope undone = SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now());
  const Envelope late = SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now());
  {
    Opened opened = OpenOrDie(faulty.path, clock, options, faulty.store_options);
    ASSERT_NE(opened.spool, nullptr);
    for (const Envelope* envelope : {&kept, &ridden, &undone}) {
      ASSERT_TRUE(EnqueueAndWait(*opened.spool, *envelope, BodyFor(envelope->id)).ok());
    }
    const uint64_t syncs = fs->log_syncs();
    std::atomic<int> unsynced_commits{0};  // as the observer (the metrics) sees them
    opened.spool->SetCommitObserver([&](size_t, absl::Duration, bool synced) {
      if (!synced) ++unsynced_commits;
    });
    ASSERT_TRUE(RemoveAndWait(*opened.spool, ridden.id, ridden.next_attempt,
                              Durability::kRidesNextSync)
                    .ok());
    EXPECT_EQ(fs->log_syncs(), syncs) << "a settled change paid its own fsync";
    EXPECT_EQ(unsynced_commits.load(), 1);
    opened.spool->SetCommitObserver(nullptr);
    ASSERT_TRUE(EnqueueAndWait(*opened.spool, late, BodyFor(late.id)).ok());
    ASSERT_TRUE(RemoveAndWait(*opened.spool, undone.id, undone.next_attempt,
                              Durability::kRidesNextSync)
                    .ok());
    EXPECT_FALSE(ReadEnvelope(*opened.store, undone.id)->has_value());  // written, not synced
    EXPECT_EQ(opened.spool->size(), 2u);
    fs->CutPower();
  }  // closing fails to sync and to flush, as on a dead machine
  EXPECT_GT(fs->LoseUnsyncedLogTails(), 0u);
  // As a real power cut leaves it: the unsynced records are gone, the zeros they were written
  // over are not (where the spool writes zeros ahead).
  if (PrezeroedWalFileSystem::PaysAt(faulty.path)) {
    EXPECT_GE(LargestLogSize(faulty.path), PrezeroedWalFileSystem::kZeroChunk);
  }

  Opened reopened = OpenOrDie(faulty.path, clock);
  ASSERT_NE(reopened.spool, nullptr);
  for (const Envelope* envelope : {&kept, &late, &undone}) {
    EXPECT_EQ(ReadBody(*reopened.store, envelope->id)->value_or(""), BodyFor(envelope->id));
    EXPECT_TRUE(ReadEnvelope(*reopened.store, envelope->id)->has_value());
  }
  EXPECT_FALSE(ReadEnvelope(*reopened.store, ridden.id)->has_value());
  EXPECT_FALSE(ReadBody(*reopened.store, ridden.id)->has_value());
  EXPECT_EQ(reopened.spool->size(), 3u);  // `undone` is due again
}

// With no synced commit after it, a settled change is synced by the writer itself within
// max_unsynced, and at a clean stop: a power cut after either loses nothing.
TEST(SpoolTest, WriterSyncsSettledChangesWithinMaxUnsyncedAndAtStop) {
  for (const bool stop_first : {false, true}) {
    SCOPED_TRACE(stop_first ? "clean stop" : "max_unsynced");
    FaultySpoolDir faulty;
    auto& fs = faulty.fs;
    SimulatedClock clock;
    SpoolOptions options;
    options.max_unsynced = stop_first ? absl::Hours(1) : absl::Milliseconds(50);
    const Envelope settled = SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now());
    {
      Opened opened = OpenOrDie(faulty.path, clock, options, faulty.store_options);
      ASSERT_NE(opened.spool, nullptr);
      ASSERT_TRUE(EnqueueAndWait(*opened.spool, settled, BodyFor(settled.id)).ok());
      const uint64_t syncs = fs->log_syncs();
      ASSERT_TRUE(RemoveAndWait(*opened.spool, settled.id, settled.next_attempt,
                                Durability::kRidesNextSync)
                      .ok());
      if (stop_first) {
        opened.spool.reset();
      } else {
        // The writer keeps real time (like expected_wait); bounded wait for its sync.
        for (int i = 0; i < 1000 && fs->log_syncs() == syncs; ++i) {
          absl::SleepFor(absl::Milliseconds(10));
        }
      }
      EXPECT_GT(fs->log_syncs(), syncs);
      fs->CutPower();
    }
    EXPECT_EQ(fs->LoseUnsyncedLogTails(), 0u);
    Opened reopened = OpenOrDie(faulty.path, clock);
    ASSERT_NE(reopened.spool, nullptr);
    EXPECT_FALSE(ReadEnvelope(*reopened.store, settled.id)->has_value());
    EXPECT_EQ(reopened.spool->size(), 0u);
  }
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
  opened.spool->SetCommitObserver([&](size_t, absl::Duration, bool) {
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
  opened.spool->SetCommitObserver([&](size_t batch_size, absl::Duration, bool) {
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
