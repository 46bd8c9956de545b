// The delivery side of the spool: Update() and Remove() on disk, the due index (LeaseDue(),
// leases, NextDue()) live and rebuilt at Open(), one fsync for a batch mixing the three kinds of
// change, the schedule observer, and ListSchedule().
#include <algorithm>
#include <atomic>
#include <random>
#include <vector>

#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "queue/spool.h"
#include "tests/unit/queue/faulty_store.h"
#include "tests/unit/queue/queue_test_util.h"

namespace facteur::queue {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using test::BodyFor;
using test::EnqueueAndWait;
using test::Opened;
using test::OpenOrDie;
using test::RemoveAndWait;
using test::SampleEnvelope;
using test::UpdateAndWait;

MATCHER_P2(Entry, due, id, "") { return arg.due == due && arg.id == id; }

rocksdb::Slice ToSlice(std::string_view s) { return {s.data(), s.size()}; }

// A message of `clock`'s time, due `delay` later (whole seconds: stored to the microsecond).
Envelope Due(Clock& clock, absl::Duration delay) {
  Envelope envelope = SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now());
  envelope.next_attempt = envelope.received_at + delay;
  return envelope;
}

// Enqueues each of `envelopes` and waits; false (with a test failure) if one fails.
bool EnqueueAll(Spool& spool, const std::vector<Envelope>& envelopes) {
  for (const Envelope& envelope : envelopes) {
    absl::Status status = EnqueueAndWait(spool, envelope, BodyFor(envelope.id));
    EXPECT_TRUE(status.ok()) << status;
    if (!status.ok()) return false;
  }
  return true;
}

// The whole schedule family, in key order.
std::vector<ScheduleEntry> Schedule(Store& store) {
  absl::StatusOr<std::vector<ScheduleEntry>> entries = ListSchedule(store, SIZE_MAX);
  EXPECT_TRUE(entries.ok()) << entries.status();
  return entries.value_or(std::vector<ScheduleEntry>());
}

// Parks the writer inside the commit observer of the next commit, so that what is queued
// meanwhile forms the following batch; counts the commits and records their sizes.
class ParkedWriter {
 public:
  explicit ParkedWriter(Spool& spool) {
    spool.SetCommitObserver([this](size_t batch_size, absl::Duration, bool) {
      sizes_.push_back(batch_size);  // the writer thread only; read after it is quiet
      if (!parked_.HasBeenNotified()) {
        parked_.Notify();
        release_.WaitForNotification();
      }
    });
  }
  bool WaitParked() { return parked_.WaitForNotificationWithTimeout(absl::Seconds(60)); }
  void Release() { release_.Notify(); }
  const std::vector<size_t>& sizes() const { return sizes_; }

 private:
  absl::Notification parked_;
  absl::Notification release_;
  std::vector<size_t> sizes_;
};

TEST(SpoolDeliveryTest, UpdateRewritesTheEnvelopeAndMovesTheScheduleKeyOnDisk) {
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  SimulatedClock clock;
  const Envelope original = Due(clock, absl::ZeroDuration());
  const Envelope other = Due(clock, absl::Minutes(1));
  Envelope updated = original;
  updated.attempts = 1;
  updated.recipients[0].state = RecipientState::kDelivered;
  updated.next_attempt = original.received_at + absl::Minutes(5);
  {
    Opened opened = OpenOrDie(path, clock);
    ASSERT_NE(opened.spool, nullptr);
    ASSERT_TRUE(EnqueueAll(*opened.spool, {original, other}));
    ASSERT_TRUE(UpdateAndWait(*opened.spool, updated, original.next_attempt).ok());
    EXPECT_EQ(opened.spool->size(), 2u);
  }
  // The store alone, without Spool::Open(): recovery would mend a stale entry and hide it.
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_THAT(Schedule(**store), ElementsAre(Entry(other.next_attempt, other.id),
                                             Entry(updated.next_attempt, updated.id)));
  EXPECT_EQ(ReadEnvelope(**store, original.id)->value_or(Envelope()), updated);
  EXPECT_EQ(ReadBody(**store, original.id)->value_or(""), BodyFor(original.id));
}

TEST(SpoolDeliveryTest, UpdateAtTheSameDueTimeKeepsItsEntry) {
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  SimulatedClock clock;
  Envelope envelope = Due(clock, absl::Minutes(1));
  {
    Opened opened = OpenOrDie(path, clock);
    ASSERT_NE(opened.spool, nullptr);
    ASSERT_TRUE(EnqueueAll(*opened.spool, {envelope}));
    envelope.attempts = 7;
    ASSERT_TRUE(UpdateAndWait(*opened.spool, envelope, envelope.next_attempt).ok());
  }
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_THAT(Schedule(**store), ElementsAre(Entry(envelope.next_attempt, envelope.id)));
  EXPECT_EQ(ReadEnvelope(**store, envelope.id)->value_or(Envelope()).attempts, 7u);
}

TEST(SpoolDeliveryTest, UpdateWithAStalePreviousDueStillLeavesOneEntry) {
  // The index, not the caller, names the entry to delete: a queue operation may have moved the
  // message since the caller leased it.
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  SimulatedClock clock;
  Envelope envelope = Due(clock, absl::Minutes(1));
  const absl::Time leased_at_due = envelope.next_attempt;
  {
    Opened opened = OpenOrDie(path, clock);
    ASSERT_NE(opened.spool, nullptr);
    ASSERT_TRUE(EnqueueAll(*opened.spool, {envelope}));
    envelope.next_attempt = leased_at_due + absl::Minutes(10);  // moved by "queue flush"…
    ASSERT_TRUE(UpdateAndWait(*opened.spool, envelope, leased_at_due).ok());
    envelope.next_attempt = leased_at_due + absl::Minutes(20);  // …then the delivery's update
    ASSERT_TRUE(UpdateAndWait(*opened.spool, envelope, leased_at_due).ok());
  }
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_THAT(Schedule(**store), ElementsAre(Entry(envelope.next_attempt, envelope.id)));
}

TEST(SpoolDeliveryTest, RemoveDeletesBodyEnvelopeAndScheduleEntry) {
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  SimulatedClock clock;
  const Envelope gone = Due(clock, absl::ZeroDuration());
  const Envelope kept = Due(clock, absl::Minutes(1));
  {
    Opened opened = OpenOrDie(path, clock);
    ASSERT_NE(opened.spool, nullptr);
    ASSERT_TRUE(EnqueueAll(*opened.spool, {gone, kept}));
    ASSERT_TRUE(RemoveAndWait(*opened.spool, gone.id, gone.next_attempt).ok());
    EXPECT_EQ(opened.spool->size(), 1u);
    // Idempotent: the second removal, and one of an id never queued, are OK and count nothing.
    EXPECT_TRUE(RemoveAndWait(*opened.spool, gone.id, gone.next_attempt).ok());
    EXPECT_TRUE(RemoveAndWait(*opened.spool, MessageId::Generate(clock.Now()), clock.Now()).ok());
    EXPECT_EQ(opened.spool->size(), 1u);
    EXPECT_EQ(opened.spool->NextDue(), kept.next_attempt);
  }
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_FALSE(ReadEnvelope(**store, gone.id)->has_value());
  EXPECT_FALSE(ReadBody(**store, gone.id)->has_value());
  EXPECT_THAT(Schedule(**store), ElementsAre(Entry(kept.next_attempt, kept.id)));
  EXPECT_EQ(CountMessages(**store).value_or(0), 1u);
}

TEST(SpoolDeliveryTest, UpdateOfARemovedMessageIsNotFoundAndWritesNothing) {
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  SimulatedClock clock;
  Envelope envelope = Due(clock, absl::ZeroDuration());
  {
    Opened opened = OpenOrDie(path, clock);
    ASSERT_NE(opened.spool, nullptr);
    ASSERT_TRUE(EnqueueAll(*opened.spool, {envelope}));
    ASSERT_TRUE(RemoveAndWait(*opened.spool, envelope.id, envelope.next_attempt).ok());
    const absl::Time previous_due = envelope.next_attempt;
    envelope.next_attempt += absl::Minutes(5);
    EXPECT_EQ(UpdateAndWait(*opened.spool, envelope, previous_due).code(),
              absl::StatusCode::kNotFound);
    const Envelope stranger = Due(clock, absl::ZeroDuration());
    EXPECT_EQ(UpdateAndWait(*opened.spool, stranger, stranger.next_attempt).code(),
              absl::StatusCode::kNotFound);
    EXPECT_EQ(opened.spool->size(), 0u);
    EXPECT_EQ(opened.spool->NextDue(), absl::InfiniteFuture());
    EXPECT_EQ(UpdateAndWait(*opened.spool, Envelope(), clock.Now()).code(),
              absl::StatusCode::kInvalidArgument);
  }
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_FALSE(ReadEnvelope(**store, envelope.id)->has_value());
  EXPECT_THAT(Schedule(**store), IsEmpty());
}

TEST(SpoolDeliveryTest, EnqueueOfAQueuedIdReplacesItsEntry) {
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  SimulatedClock clock;
  Envelope envelope = Due(clock, absl::ZeroDuration());
  {
    Opened opened = OpenOrDie(path, clock);
    ASSERT_NE(opened.spool, nullptr);
    ASSERT_TRUE(EnqueueAll(*opened.spool, {envelope}));
    envelope.next_attempt += absl::Minutes(3);
    ASSERT_TRUE(EnqueueAll(*opened.spool, {envelope}));
    EXPECT_EQ(opened.spool->size(), 1u);
  }
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_THAT(Schedule(**store), ElementsAre(Entry(envelope.next_attempt, envelope.id)));
}

TEST(SpoolDeliveryTest, LeaseDueHandsOutDueMessagesEarliestFirstAndNeverTwice) {
  test::TempDir dir;
  SimulatedClock clock;
  Opened opened = OpenOrDie(dir.Sub("spool"), clock);
  ASSERT_NE(opened.spool, nullptr);
  Spool& spool = *opened.spool;
  EXPECT_EQ(spool.NextDue(), absl::InfiniteFuture());
  EXPECT_THAT(spool.LeaseDue(absl::InfiniteFuture(), 10), IsEmpty());
  const absl::Time t = absl::FromUnixMicros(absl::ToUnixMicros(clock.Now()));
  // Enqueued out of order; `d` and `e` share a due time (then id order: `d` is older).
  std::vector<Envelope> m;
  for (int minutes : {3, 1, 5, 2, 2}) m.push_back(Due(clock, absl::Minutes(minutes)));
  ASSERT_TRUE(EnqueueAll(spool, m));
  EXPECT_EQ(spool.NextDue(), t + absl::Minutes(1));

  EXPECT_THAT(spool.LeaseDue(t + absl::Minutes(2), 2),
              ElementsAre(Entry(t + absl::Minutes(1), m[1].id),
                          Entry(t + absl::Minutes(2), m[3].id)));
  EXPECT_THAT(spool.LeaseDue(t + absl::Minutes(2), 10),
              ElementsAre(Entry(t + absl::Minutes(2), m[4].id)));
  EXPECT_THAT(spool.LeaseDue(t + absl::Minutes(2), 10), IsEmpty()) << "leased messages again";
  EXPECT_EQ(spool.leased(), 3u);
  EXPECT_EQ(spool.NextDue(), t + absl::Minutes(3));
  EXPECT_THAT(spool.LeaseDue(t + absl::Minutes(3), 0), IsEmpty());
  EXPECT_THAT(spool.LeaseDue(absl::InfiniteFuture(), 10),
              ElementsAre(Entry(t + absl::Minutes(3), m[0].id),
                          Entry(t + absl::Minutes(5), m[2].id)));
  EXPECT_EQ(spool.leased(), 5u);
  EXPECT_EQ(spool.NextDue(), absl::InfiniteFuture());
  EXPECT_EQ(spool.size(), 5u);  // leased messages are still queued
}

MATCHER_P3(Counts, ready, scheduled, leased, "") {
  *result_listener << "ready " << arg.ready << ", scheduled " << arg.scheduled << ", leased "
                   << arg.leased;
  return arg.ready == ready && arg.scheduled == scheduled && arg.leased == leased;
}

TEST(SpoolDeliveryTest, CountsSplitsTheQueueIntoReadyScheduledAndLeased) {
  test::TempDir dir;
  SimulatedClock clock;
  Opened opened = OpenOrDie(dir.Sub("spool"), clock);
  ASSERT_NE(opened.spool, nullptr);
  Spool& spool = *opened.spool;
  const absl::Time t = absl::FromUnixMicros(absl::ToUnixMicros(clock.Now()));
  EXPECT_THAT(spool.Counts(t), Counts(0u, 0u, 0u));
  std::vector<Envelope> m;
  for (int minutes : {0, 1, 2, 3, 4, 5, 6}) m.push_back(Due(clock, absl::Minutes(minutes)));
  ASSERT_TRUE(EnqueueAll(spool, m));
  // Every cut: the walk from both ends stops on either side.
  for (int minutes = 0; minutes <= 7; ++minutes) {
    EXPECT_THAT(spool.Counts(t + absl::Minutes(minutes)),
                Counts(static_cast<uint64_t>(std::min(minutes + 1, 7)),
                       static_cast<uint64_t>(std::max(6 - minutes, 0)), 0u))
        << minutes;
  }
  EXPECT_THAT(spool.Counts(t - absl::Seconds(1)), Counts(0u, 7u, 0u));
  ASSERT_EQ(spool.LeaseDue(t + absl::Minutes(1), 10).size(), 2u);
  EXPECT_THAT(spool.Counts(t + absl::Minutes(3)), Counts(2u, 3u, 2u));
  EXPECT_THAT(spool.Counts(absl::InfiniteFuture()), Counts(5u, 0u, 2u));
}

// Counts() keeps a running count behind a cursor time: it must stay exact while messages are
// enqueued, moved, removed, leased and released on both sides of the cursor, and when the time
// asked goes back. Checked against a count from scratch after every step.
TEST(SpoolDeliveryTest, CountsStayExactAsMessagesMoveAroundTheCursor) {
  test::TempDir dir;
  SimulatedClock clock;
  Opened opened = OpenOrDie(dir.Sub("spool"), clock);
  ASSERT_NE(opened.spool, nullptr);
  Spool& spool = *opened.spool;
  const absl::Time t = absl::FromUnixMicros(absl::ToUnixMicros(clock.Now()));
  struct Known {
    Envelope envelope;
    bool leased = false;
  };
  std::vector<Known> known;
  std::mt19937 random(7);
  auto minutes = [&](int low, int high) {
    return absl::Minutes(std::uniform_int_distribution<int>(low, high)(random));
  };
  absl::Time now = t;
  for (int step = 0; step < 300; ++step) {
    const int action = std::uniform_int_distribution<int>(0, 9)(random);
    if (action <= 3 || known.empty()) {  // a new message, due before or after `now`
      Envelope envelope = Due(clock, now - t + minutes(-20, 20));
      ASSERT_TRUE(EnqueueAll(spool, {envelope}));
      known.push_back({envelope, false});
    } else if (action == 4) {  // leases what is due (a few)
      for (const ScheduleEntry& entry : spool.LeaseDue(now, 3)) {
        for (Known& k : known) {
          if (k.envelope.id == entry.id) k.leased = true;
        }
      }
    } else {
      Known& k = known[std::uniform_int_distribution<size_t>(0, known.size() - 1)(random)];
      if (action == 5 && k.leased) {
        spool.ReleaseLease(k.envelope.id);
        k.leased = false;
      } else if (action <= 7) {  // moved to the other side, or not
        const absl::Time previous = k.envelope.next_attempt;
        k.envelope.next_attempt = now + minutes(-20, 20);
        ASSERT_TRUE(UpdateAndWait(spool, k.envelope, previous).ok());
        k.leased = false;
      } else if (action == 8) {
        ASSERT_TRUE(RemoveAndWait(spool, k.envelope.id, k.envelope.next_attempt).ok());
        k = known.back();
        known.pop_back();
      }
    }
    // Mostly forward in time, sometimes back.
    now += std::uniform_int_distribution<int>(0, 9)(random) == 0 ? -minutes(1, 15)
                                                                  : minutes(0, 3);
    uint64_t ready = 0, scheduled = 0, leased = 0;
    for (const Known& k : known) {
      if (k.leased) {
        ++leased;
      } else if (k.envelope.next_attempt <= now) {
        ++ready;
      } else {
        ++scheduled;
      }
    }
    ASSERT_THAT(spool.Counts(now), Counts(ready, scheduled, leased)) << "step " << step;
  }
}

TEST(SpoolDeliveryTest, LeaseEndsWhenItsUpdateOrRemovalCommitsOrOnRelease) {
  test::TempDir dir;
  SimulatedClock clock;
  Opened opened = OpenOrDie(dir.Sub("spool"), clock);
  ASSERT_NE(opened.spool, nullptr);
  Spool& spool = *opened.spool;
  Envelope updated = Due(clock, absl::ZeroDuration());
  const Envelope removed = Due(clock, absl::ZeroDuration());
  const Envelope released = Due(clock, absl::ZeroDuration());
  ASSERT_TRUE(EnqueueAll(spool, {updated, removed, released}));
  const absl::Time now = clock.Now();
  ASSERT_EQ(spool.LeaseDue(now, 10).size(), 3u);
  EXPECT_EQ(spool.leased(), 3u);

  const absl::Time previous_due = updated.next_attempt;
  updated.attempts = 1;
  updated.next_attempt = now + absl::Minutes(5);
  ASSERT_TRUE(UpdateAndWait(spool, updated, previous_due).ok());
  EXPECT_EQ(spool.leased(), 2u);
  EXPECT_EQ(spool.NextDue(), updated.next_attempt);
  EXPECT_THAT(spool.LeaseDue(now, 10), IsEmpty()) << "due later now";

  ASSERT_TRUE(RemoveAndWait(spool, removed.id, removed.next_attempt).ok());
  EXPECT_EQ(spool.leased(), 1u);

  spool.ReleaseLease(released.id);
  spool.ReleaseLease(released.id);  // not leased any more: nothing happens
  spool.ReleaseLease(removed.id);   // gone: nothing happens
  EXPECT_EQ(spool.leased(), 0u);
  EXPECT_EQ(spool.NextDue(), released.next_attempt);
  EXPECT_THAT(spool.LeaseDue(now, 10), ElementsAre(Entry(released.next_attempt, released.id)));
  EXPECT_THAT(spool.LeaseDue(now + absl::Minutes(5), 10),
              ElementsAre(Entry(updated.next_attempt, updated.id)));
  EXPECT_EQ(spool.size(), 2u);
}

TEST(SpoolDeliveryTest, FailedUpdateKeepsTheLeaseAndTheOldState) {
  test::FaultySpoolDir faulty;
  auto& fs = faulty.fs;
  SimulatedClock clock;
  Opened opened = OpenOrDie(faulty.path, clock, SpoolOptions(), faulty.store_options);
  ASSERT_NE(opened.spool, nullptr);
  Envelope envelope = Due(clock, absl::ZeroDuration());
  ASSERT_TRUE(EnqueueAll(*opened.spool, {envelope}));
  ASSERT_EQ(opened.spool->LeaseDue(clock.Now(), 1).size(), 1u);

  fs->ArmFullDisk();
  const absl::Time previous_due = envelope.next_attempt;
  Envelope changed = envelope;
  changed.attempts = 1;
  changed.next_attempt += absl::Minutes(5);
  EXPECT_EQ(UpdateAndWait(*opened.spool, changed, previous_due).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(opened.spool->leased(), 1u);
  EXPECT_EQ(opened.spool->NextDue(), absl::InfiniteFuture());
  EXPECT_EQ(ReadEnvelope(*opened.store, envelope.id)->value_or(Envelope()), envelope);
  fs->DisarmFullDisk();
  opened.spool->ReleaseLease(envelope.id);
  EXPECT_EQ(opened.spool->NextDue(), previous_due);
}

TEST(SpoolDeliveryTest, BatchMixingEnqueueUpdateAndRemoveCommitsWithOneFsync) {
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  SimulatedClock clock;
  Envelope updated = Due(clock, absl::ZeroDuration());
  const Envelope removed = Due(clock, absl::ZeroDuration());
  const Envelope parker = Due(clock, absl::ZeroDuration());
  const Envelope added = Due(clock, absl::Minutes(2));
  {
    Opened opened = OpenOrDie(path, clock);
    ASSERT_NE(opened.spool, nullptr);
    Spool& spool = *opened.spool;
    ASSERT_TRUE(EnqueueAll(spool, {updated, removed}));
    ASSERT_EQ(spool.LeaseDue(clock.Now(), 10).size(), 2u);
    ParkedWriter writer(spool);
    absl::BlockingCounter outstanding(5);
    std::vector<absl::Status> results(5);
    auto record = [&](size_t i) {
      return [&, i](absl::Status status) {
        results[i] = std::move(status);
        outstanding.DecrementCount();
      };
    };
    spool.Enqueue(parker, "parker", record(0));
    ASSERT_TRUE(writer.WaitParked());
    // The next batch: an update, a removal, an enqueue, and an update of the message removed
    // just before it in the same batch.
    const absl::Time previous_due = updated.next_attempt;
    updated.attempts = 1;
    updated.next_attempt += absl::Minutes(1);
    spool.Update(updated, previous_due, record(1));
    spool.Remove(removed.id, removed.next_attempt, record(2));
    spool.Enqueue(added, "added", record(3));
    spool.Update(removed, removed.next_attempt, record(4));
    writer.Release();
    outstanding.Wait();
    EXPECT_TRUE(results[0].ok() && results[1].ok() && results[2].ok() && results[3].ok())
        << results[0] << results[1] << results[2] << results[3];
    EXPECT_EQ(results[4].code(), absl::StatusCode::kNotFound) << results[4];
    // Two commits: the parker alone, then the three changes that apply, in one synced write.
    EXPECT_THAT(writer.sizes(), ElementsAre(1u, 3u));
    EXPECT_EQ(spool.size(), 3u);
    EXPECT_EQ(spool.leased(), 0u) << "the update and the removal end their leases";
    spool.SetCommitObserver(nullptr);
  }
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_THAT(Schedule(**store), ElementsAre(Entry(parker.next_attempt, parker.id),
                                             Entry(updated.next_attempt, updated.id),
                                             Entry(added.next_attempt, added.id)));
  EXPECT_FALSE(ReadEnvelope(**store, removed.id)->has_value());
  EXPECT_EQ(ReadEnvelope(**store, updated.id)->value_or(Envelope()), updated);
}

// A DSN goes with the outcome it reports (NewMessage): in the same commit, even when the batch
// has room for one change only, and not at all when that change is refused (the message is
// gone) or fails (a full disk: the recipient is tried again, and its DSN made again).
TEST(SpoolDeliveryTest, MessagesAlongAChangeAreWrittenWithItOrNotAtAll) {
  test::FaultySpoolDir faulty;
  auto& fs = faulty.fs;
  SimulatedClock clock;
  SpoolOptions options;
  options.max_batch = 1;
  Opened opened = OpenOrDie(faulty.path, clock, options, faulty.store_options);
  ASSERT_NE(opened.spool, nullptr);
  Spool& spool = *opened.spool;
  const auto report = [&] {
    Envelope dsn = Due(clock, absl::ZeroDuration());
    dsn.sender = "";
    return NewMessage{dsn, BodyFor(dsn.id)};
  };
  const auto queued = [&](const NewMessage& m) {
    return ReadEnvelope(*opened.store, m.envelope.id)->value_or(Envelope()) == m.envelope &&
           ReadBody(*opened.store, m.envelope.id)->value_or("") == m.body;
  };
  Envelope bounced = Due(clock, absl::ZeroDuration());
  const Envelope finished = Due(clock, absl::ZeroDuration());
  const Envelope parker = Due(clock, absl::ZeroDuration());
  ASSERT_TRUE(EnqueueAll(spool, {bounced, finished}));
  ASSERT_EQ(spool.LeaseDue(clock.Now(), 10).size(), 2u);

  // One batch of one change: the update and its DSN, committed together.
  const NewMessage first = report();
  {
    ParkedWriter writer(spool);
    absl::Notification parked_done;
    spool.Enqueue(parker, "parker", [&](absl::Status) { parked_done.Notify(); });
    ASSERT_TRUE(writer.WaitParked());
    const absl::Time previous_due = bounced.next_attempt;
    bounced.recipients[0].state = RecipientState::kBounced;
    bounced.next_attempt += absl::Minutes(5);
    absl::Notification updated;
    absl::Status update_status;
    spool.Update(bounced, previous_due,
                 [&](absl::Status status) {
                   update_status = std::move(status);
                   updated.Notify();
                 },
                 Durability::kRidesNextSync, {first});
    writer.Release();
    ASSERT_TRUE(updated.WaitForNotificationWithTimeout(absl::Seconds(60)));
    ASSERT_TRUE(parked_done.WaitForNotificationWithTimeout(absl::Seconds(60)));
    EXPECT_TRUE(update_status.ok()) << update_status;
    EXPECT_THAT(writer.sizes(), ElementsAre(1u, 2u));
    spool.SetCommitObserver(nullptr);
  }
  EXPECT_EQ(ReadEnvelope(*opened.store, bounced.id)->value_or(Envelope()), bounced);
  EXPECT_TRUE(queued(first));
  EXPECT_EQ(spool.size(), 4u);  // bounced, finished, parker, the DSN
  // The DSN is in the due index too: leased like any message.
  std::vector<ScheduleEntry> due = spool.LeaseDue(clock.Now(), 10);
  EXPECT_TRUE(std::any_of(due.begin(), due.end(),
                          [&](const ScheduleEntry& e) { return e.id == first.envelope.id; }));

  // A removal carries its DSN the same way.
  const NewMessage second = report();
  ASSERT_TRUE(RemoveAndWait(spool, finished.id, finished.next_attempt,
                            Durability::kRidesNextSync, {second})
                  .ok());
  EXPECT_FALSE(ReadEnvelope(*opened.store, finished.id)->has_value());
  EXPECT_TRUE(queued(second));

  // Refused (the message is no longer queued): nothing of its DSN is written.
  const NewMessage orphan = report();
  Envelope gone = finished;
  gone.next_attempt += absl::Minutes(1);
  EXPECT_EQ(UpdateAndWait(spool, gone, finished.next_attempt, Durability::kRidesNextSync,
                          {orphan})
                .code(),
            absl::StatusCode::kNotFound);
  EXPECT_FALSE(ReadEnvelope(*opened.store, orphan.envelope.id)->has_value());

  // A DSN without an id refuses the whole change.
  NewMessage nameless = report();
  nameless.envelope.id = MessageId();
  Envelope again = bounced;
  again.attempts += 1;
  EXPECT_EQ(UpdateAndWait(spool, again, bounced.next_attempt, Durability::kRidesNextSync,
                          {nameless})
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadEnvelope(*opened.store, bounced.id)->value_or(Envelope()), bounced);

  // A failed commit writes neither.
  const NewMessage lost = report();
  fs->ArmFullDisk();
  EXPECT_EQ(UpdateAndWait(spool, again, bounced.next_attempt, Durability::kRidesNextSync, {lost})
                .code(),
            absl::StatusCode::kResourceExhausted);
  fs->DisarmFullDisk();
  EXPECT_EQ(ReadEnvelope(*opened.store, bounced.id)->value_or(Envelope()), bounced);
  EXPECT_FALSE(ReadEnvelope(*opened.store, lost.envelope.id)->has_value());
  EXPECT_FALSE(ReadBody(*opened.store, lost.envelope.id)->has_value());
  EXPECT_EQ(spool.size(), 4u);  // bounced, parker, and the two DSNs
}

TEST(SpoolDeliveryTest, ScheduleObserverRunsAfterCommitsThatAddOrMoveEntries) {
  test::TempDir dir;
  SimulatedClock clock;
  Opened opened = OpenOrDie(dir.Sub("spool"), clock);
  ASSERT_NE(opened.spool, nullptr);
  std::atomic<int> calls{0};
  opened.spool->SetScheduleObserver([&] { ++calls; });
  Envelope a = Due(clock, absl::ZeroDuration());
  const Envelope b = Due(clock, absl::ZeroDuration());
  ASSERT_TRUE(EnqueueAll(*opened.spool, {a, b}));
  EXPECT_EQ(calls.load(), 2);
  const absl::Time previous_due = a.next_attempt;
  a.next_attempt += absl::Minutes(1);
  ASSERT_TRUE(UpdateAndWait(*opened.spool, a, previous_due).ok());
  EXPECT_EQ(calls.load(), 3);
  ASSERT_TRUE(RemoveAndWait(*opened.spool, b.id, b.next_attempt).ok());
  EXPECT_EQ(calls.load(), 3) << "a removal brings no work forward";
  EXPECT_EQ(UpdateAndWait(*opened.spool, b, b.next_attempt).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(calls.load(), 3) << "nothing was committed";
}

TEST(SpoolDeliveryTest, IndexIsRebuiltAtOpenFromWhatRecoveryKeeps) {
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  SimulatedClock clock;
  const absl::Time t = absl::FromUnixMicros(absl::ToUnixMicros(clock.Now()));
  std::vector<Envelope> m;
  for (int minutes : {4, 1, 3, 2, 6, 5}) m.push_back(Due(clock, absl::Minutes(minutes)));
  {
    Opened opened = OpenOrDie(path, clock);
    ASSERT_NE(opened.spool, nullptr);
    Spool& spool = *opened.spool;
    ASSERT_TRUE(EnqueueAll(spool, m));
    ASSERT_EQ(spool.LeaseDue(t + absl::Minutes(2), 10).size(), 2u);  // leases do not persist
    const absl::Time previous_due = m[1].next_attempt;
    m[1].next_attempt = t + absl::Minutes(10);
    ASSERT_TRUE(UpdateAndWait(spool, m[1], previous_due).ok());
    ASSERT_TRUE(RemoveAndWait(spool, m[2].id, m[2].next_attempt).ok());
    // Damage only recovery can see: m[4] loses its schedule entry (it gets one back), m[5]
    // gains a second, stale one (it goes).
    rocksdb::WriteOptions sync;
    sync.sync = true;
    ASSERT_TRUE(opened.store->db()
                    .Delete(sync, opened.store->family(Family::kSchedule),
                            ToSlice(ScheduleKey(m[4].next_attempt, m[4].id)))
                    .ok());
    ASSERT_TRUE(opened.store->db()
                    .Put(sync, opened.store->family(Family::kSchedule),
                         ToSlice(ScheduleKey(t, m[5].id)), "")
                    .ok());
  }
  Opened reopened = OpenOrDie(path, clock);
  ASSERT_NE(reopened.spool, nullptr);
  Spool& spool = *reopened.spool;
  EXPECT_EQ(spool.size(), 5u);
  EXPECT_EQ(spool.leased(), 0u);
  EXPECT_EQ(spool.NextDue(), t + absl::Minutes(2));
  const auto expected = ElementsAre(
      Entry(t + absl::Minutes(2), m[3].id), Entry(t + absl::Minutes(4), m[0].id),
      Entry(t + absl::Minutes(5), m[5].id), Entry(t + absl::Minutes(6), m[4].id),
      Entry(t + absl::Minutes(10), m[1].id));
  EXPECT_THAT(Schedule(*reopened.store), expected);
  EXPECT_THAT(spool.LeaseDue(absl::InfiniteFuture(), 100), expected);
}

TEST(SpoolDeliveryTest, TimesBeforeTheEpochAreDueAtTheEpoch) {
  test::TempDir dir;
  SimulatedClock clock;
  Opened opened = OpenOrDie(dir.Sub("spool"), clock);
  ASSERT_NE(opened.spool, nullptr);
  Envelope envelope = Due(clock, absl::ZeroDuration());
  envelope.next_attempt = absl::InfinitePast();
  ASSERT_TRUE(EnqueueAll(*opened.spool, {envelope}));
  EXPECT_EQ(opened.spool->NextDue(), absl::UnixEpoch());
  const std::vector<ScheduleEntry> leased = opened.spool->LeaseDue(absl::UnixEpoch(), 1);
  ASSERT_EQ(leased.size(), 1u);
  // The entry handed out names the key on disk, so removing by it leaves nothing behind.
  ASSERT_TRUE(RemoveAndWait(*opened.spool, envelope.id, leased[0].due).ok());
  EXPECT_THAT(Schedule(*opened.store), IsEmpty());
}

TEST(ListScheduleTest, ListsEntriesInDueOrderUpToTheLimitAndRejectsMalformedKeys) {
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  SimulatedClock clock;
  std::vector<Envelope> m;
  for (int minutes : {3, 1, 2}) m.push_back(Due(clock, absl::Minutes(minutes)));
  Opened opened = OpenOrDie(path, clock);
  ASSERT_NE(opened.spool, nullptr);
  EXPECT_THAT(Schedule(*opened.store), IsEmpty());
  ASSERT_TRUE(EnqueueAll(*opened.spool, m));
  absl::StatusOr<std::vector<ScheduleEntry>> entries = ListSchedule(*opened.store, 2);
  ASSERT_TRUE(entries.ok()) << entries.status();
  EXPECT_THAT(*entries, ElementsAre(Entry(m[1].next_attempt, m[1].id),
                                    Entry(m[2].next_attempt, m[2].id)));
  EXPECT_EQ(Schedule(*opened.store).size(), 3u);
  ASSERT_TRUE(opened.store->db()
                  .Put(rocksdb::WriteOptions(), opened.store->family(Family::kSchedule),
                       "short", "")
                  .ok());
  EXPECT_EQ(ListSchedule(*opened.store, 10).status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace facteur::queue
