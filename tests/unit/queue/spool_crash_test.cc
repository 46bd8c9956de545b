// kill -9 in the middle of a stream of enqueues: every message acknowledged to the client
// (`done` said OK) must be there, whole, after restart, and no message may be half-written.
// Then kill -9 in the middle of deliveries (updates and removals in flight, mixed with
// enqueues): every acknowledged change holds, and each message has exactly one schedule entry,
// at its envelope's next attempt, both on disk as the crash left it and in the rebuilt index.
// The child is this binary run again (fork + exec) with FACTEUR_CRASH_CHILD_SPOOL set.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <semaphore>
#include <set>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "queue/spool.h"
#include "rocksdb/iterator.h"
#include "tests/unit/queue/queue_test_util.h"

namespace facteur::queue {
namespace {

constexpr int kProducers = 4;
// Messages a producer keeps in flight: enough for the writer to form real batches.
constexpr int kInFlightPerProducer = 64;

// The child: enqueue from kProducers threads until killed; report each acknowledged id (16
// bytes, one atomic pipe write) on the fd named by FACTEUR_CRASH_CHILD_FD.
TEST(SpoolCrashChild, EnqueueUntilKilled) {
  const char* path = getenv("FACTEUR_CRASH_CHILD_SPOOL");
  if (path == nullptr) GTEST_SKIP() << "helper process of SpoolCrashTest";
  const int ack_fd = atoi(getenv("FACTEUR_CRASH_CHILD_FD"));
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  RealClock& clock = RealClock::Get();
  absl::StatusOr<std::unique_ptr<Spool>> spool = Spool::Open(**store, SpoolOptions(), clock);
  ASSERT_TRUE(spool.ok()) << spool.status();
  std::vector<std::thread> producers;
  for (int t = 0; t < kProducers; ++t) {
    producers.emplace_back([&] {
      std::counting_semaphore<kInFlightPerProducer> slots(kInFlightPerProducer);
      for (;;) {
        slots.acquire();
        const MessageId id = MessageId::Generate(clock.Now());
        (*spool)->Enqueue(test::SampleEnvelope(id, clock.Now()), test::BodyFor(id),
                          [&slots, id, ack_fd](absl::Status status) {
                            if (status.ok()) {
                              // Only now may the client be told 250: report it.
                              if (write(ack_fd, id.Bytes().data(), MessageId::kBytes) < 0) {
                                _exit(3);
                              }
                            }
                            slots.release();
                          });
      }
    });
  }
  for (std::thread& producer : producers) producer.join();  // never: SIGKILL ends us
}

// One poll (up to `timeout_ms`, -1: no limit) and one read of `record_size`-byte records from
// `fd` into `records`. False on EOF: the child is gone and every record it wrote has been read.
bool ReadSome(int fd, size_t record_size, std::string& partial, std::vector<std::string>& records,
              int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, timeout_ms) <= 0) return true;
  char buffer[4096];
  const ssize_t n = read(fd, buffer, sizeof buffer);
  if (n <= 0) return false;
  partial.append(buffer, n);
  size_t used = 0;
  for (; partial.size() - used >= record_size; used += record_size) {
    records.push_back(partial.substr(used, record_size));
  }
  partial.erase(0, used);
  return true;
}

int MillisUntil(std::chrono::steady_clock::time_point t) {
  return static_cast<int>(std::max<int64_t>(
      0, std::chrono::duration_cast<std::chrono::milliseconds>(t - std::chrono::steady_clock::now())
             .count()));
}

// Runs the child test `child_test` on the spool at `path`, waits for its first record (it is
// up), lets it run 300–800 ms more (a different moment in each `round`), kills it with SIGKILL
// mid-stream and appends every record it wrote to `records`. A fatal test failure when the
// child wrote nothing or ended by itself.
void RunChildAndKill(const std::string& child_test, const std::string& path, int round,
                     size_t record_size, std::vector<std::string>& records) {
  int acks[2];
  ASSERT_EQ(pipe2(acks, O_CLOEXEC), 0);
  fcntl(acks[1], F_SETFD, 0);  // inherited by the child only
  const pid_t child = test::SpawnSelf(
      child_test,
      {"FACTEUR_CRASH_CHILD_SPOOL=" + path, "FACTEUR_CRASH_CHILD_FD=" + std::to_string(acks[1])});
  close(acks[1]);
  ASSERT_GT(child, 0);
  std::string partial;
  const size_t before = records.size();
  const auto up_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (records.size() == before && MillisUntil(up_deadline) > 0 &&
         ReadSome(acks[0], record_size, partial, records, MillisUntil(up_deadline))) {
  }
  const auto kill_at =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(300 + 250 * round);
  while (MillisUntil(kill_at) > 0 &&
         ReadSome(acks[0], record_size, partial, records, MillisUntil(kill_at))) {
  }
  ASSERT_EQ(kill(child, SIGKILL), 0);
  int wait_status = 0;
  ASSERT_EQ(waitpid(child, &wait_status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(wait_status) && WTERMSIG(wait_status) == SIGKILL)
      << "the child ended by itself: " << wait_status;
  // Records written before the kill still count: drain to EOF.
  while (ReadSome(acks[0], record_size, partial, records, -1)) {
  }
  close(acks[0]);
  ASSERT_GT(records.size(), before) << "the child acknowledged nothing";
}

TEST(SpoolCrashTest, AcknowledgedMessagesSurviveKillNine) {
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  std::vector<MessageId> acknowledged;
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(::testing::Message() << "round " << round);
    const size_t before = acknowledged.size();
    std::vector<std::string> records;
    RunChildAndKill("SpoolCrashChild.EnqueueUntilKilled", path, round, MessageId::kBytes,
                    records);
    if (HasFatalFailure()) return;
    for (const std::string& record : records) {
      acknowledged.push_back(*MessageId::FromBytes(record));
    }

    absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    // Before recovery: the database as the crash left it holds no half-written message.
    {
      std::unique_ptr<rocksdb::Iterator> envelopes(
          (*store)->db().NewIterator(rocksdb::ReadOptions(), (*store)->family(Family::kEnvelope)));
      std::unique_ptr<rocksdb::Iterator> bodies(
          (*store)->db().NewIterator(rocksdb::ReadOptions(), (*store)->family(Family::kBody)));
      size_t pairs = 0;
      for (envelopes->SeekToFirst(), bodies->SeekToFirst(); envelopes->Valid() || bodies->Valid();
           envelopes->Next(), bodies->Next(), ++pairs) {
        ASSERT_TRUE(envelopes->Valid() && bodies->Valid()) << "unmatched entry after " << pairs;
        ASSERT_EQ(envelopes->key().ToString(), bodies->key().ToString());
      }
    }
    absl::StatusOr<std::unique_ptr<Spool>> spool =
        Spool::Open(**store, SpoolOptions(), RealClock::Get());
    ASSERT_TRUE(spool.ok()) << spool.status();
    const absl::StatusOr<uint64_t> count = CountMessages(**store);
    ASSERT_TRUE(count.ok()) << count.status();
    EXPECT_EQ((*spool)->size(), *count) << "recovery removed something";
    EXPECT_GE(*count, acknowledged.size());
    size_t missing = 0;
    for (const MessageId& id : acknowledged) {
      absl::StatusOr<std::optional<Envelope>> envelope = ReadEnvelope(**store, id);
      absl::StatusOr<std::optional<std::string>> body = ReadBody(**store, id);
      ASSERT_TRUE(envelope.ok() && body.ok()) << id.ToString();
      if (!envelope->has_value() || !body->has_value()) {
        ++missing;
        continue;
      }
      EXPECT_EQ((*envelope)->id, id);
      EXPECT_EQ(**body, test::BodyFor(id)) << id.ToString();
    }
    EXPECT_EQ(missing, 0u) << "acknowledged messages lost, of " << acknowledged.size();
    std::printf("round %d: %zu acknowledged this round, %zu in total, %llu in the spool\n", round,
                acknowledged.size() - before, acknowledged.size(),
                static_cast<unsigned long long>(*count));
  }
}

// --- Deliveries in flight ---

// What the delivery child reports, one kRecordBytes record per acknowledged change (one atomic
// pipe write): the 16 id bytes, the envelope's attempts (4 bytes, native order), the change.
enum class Change : uint8_t { kEnqueued = 0, kUpdated = 1, kRemoved = 2 };
constexpr size_t kRecordBytes = MessageId::kBytes + 8;
// Messages the delivery child keeps queued; it removes a message after this many attempts and
// enqueues a fresh one, so that batches mix the three kinds of change.
constexpr int kPopulation = 200;
constexpr uint32_t kRemoveAfter = 6;
constexpr int kDeliveriesInFlight = 64;

std::string Record(const MessageId& id, uint32_t attempts, Change change) {
  std::string record(kRecordBytes, '\0');
  std::memcpy(record.data(), id.Bytes().data(), MessageId::kBytes);
  std::memcpy(record.data() + MessageId::kBytes, &attempts, sizeof attempts);
  record[MessageId::kBytes + sizeof attempts] = static_cast<char>(change);
  return record;
}

// The child: as the delivery side does, lease a due message, read its envelope, and either
// reschedule it (attempts + 1, a new due time) or, after kRemoveAfter attempts, remove it and
// enqueue a fresh one; kDeliveriesInFlight at once, until killed. It exits on its own (with a
// code naming the check) if the index and the disk ever disagree.
TEST(SpoolCrashChild, DeliverUntilKilled) {
  const char* path = getenv("FACTEUR_CRASH_CHILD_SPOOL");
  if (path == nullptr) GTEST_SKIP() << "helper process of SpoolCrashTest";
  const int ack_fd = atoi(getenv("FACTEUR_CRASH_CHILD_FD"));
  absl::StatusOr<std::unique_ptr<Store>> opened_store = Store::Open(path);
  ASSERT_TRUE(opened_store.ok()) << opened_store.status();
  Store& store = **opened_store;
  RealClock& clock = RealClock::Get();
  absl::StatusOr<std::unique_ptr<Spool>> opened_spool = Spool::Open(store, SpoolOptions(), clock);
  ASSERT_TRUE(opened_spool.ok()) << opened_spool.status();
  Spool& spool = **opened_spool;

  auto report = [ack_fd](const MessageId& id, uint32_t attempts, Change change) {
    const std::string record = Record(id, attempts, change);
    if (write(ack_fd, record.data(), record.size()) != static_cast<ssize_t>(record.size())) {
      _exit(3);
    }
  };
  std::counting_semaphore<kDeliveriesInFlight> slots(kDeliveriesInFlight);
  std::atomic<int> to_enqueue{std::max(0, kPopulation - static_cast<int>(spool.size()))};
  // Attempts of each message as this process last wrote them. Recorded before the write is
  // handed to the spool: the lease of the message cannot come back before that write commits
  // (it may before its `done` runs).
  absl::Mutex mutex;
  absl::flat_hash_map<MessageId, uint32_t> written ABSL_GUARDED_BY(mutex);
  uint64_t wakes ABSL_GUARDED_BY(mutex) = 0;
  auto wake = [&] {
    absl::MutexLock lock(&mutex);
    ++wakes;
  };
  spool.SetScheduleObserver(wake);
  for (;;) {
    slots.acquire();
    if (to_enqueue.load() > 0) {
      --to_enqueue;
      const MessageId id = MessageId::Generate(clock.Now());
      {
        absl::MutexLock lock(&mutex);
        written[id] = 0;
      }
      spool.Enqueue(test::SampleEnvelope(id, clock.Now()), test::BodyFor(id),
                    [&, id](absl::Status status) {
                      if (!status.ok()) _exit(4);
                      report(id, 0, Change::kEnqueued);
                      slots.release();
                    });
      continue;
    }
    uint64_t seen;
    {
      absl::MutexLock lock(&mutex);
      seen = wakes;
    }
    const std::vector<ScheduleEntry> leased = spool.LeaseDue(absl::InfiniteFuture(), 1);
    if (leased.empty()) {  // all in flight: wait for a commit
      slots.release();
      const auto woken = [&wakes, seen] { return wakes != seen; };
      absl::MutexLock lock(&mutex);
      mutex.AwaitWithTimeout(absl::Condition(&woken), absl::Seconds(1));
      continue;
    }
    const ScheduleEntry entry = leased[0];
    absl::StatusOr<std::optional<Envelope>> read = ReadEnvelope(store, entry.id);
    if (!read.ok() || !read->has_value()) _exit(5);
    Envelope envelope = **read;
    // The index hands out the entry that is on disk, and the lease the last committed state.
    if (ScheduleKey(envelope.next_attempt, entry.id) != ScheduleKey(entry.due, entry.id)) _exit(6);
    const MessageId id = entry.id;
    const bool remove = envelope.attempts >= kRemoveAfter;
    const uint32_t attempts = remove ? envelope.attempts : envelope.attempts + 1;
    {
      absl::MutexLock lock(&mutex);
      auto it = written.find(id);
      if (it != written.end() && it->second != envelope.attempts) _exit(7);
      if (remove) {
        written.erase(id);
      } else {
        written[id] = attempts;
      }
    }
    if (remove) {
      spool.Remove(id, entry.due, [&, id](absl::Status status) {
        if (!status.ok()) _exit(8);
        wake();
        report(id, kRemoveAfter, Change::kRemoved);
        ++to_enqueue;
        slots.release();
      });
      continue;
    }
    envelope.attempts = attempts;
    envelope.recipients[attempts % envelope.recipients.size()].state = RecipientState::kDelivered;
    envelope.next_attempt = clock.Now() + absl::Minutes(attempts);
    spool.Update(std::move(envelope), entry.due, [&, id, attempts](absl::Status status) {
      if (!status.ok()) _exit(9);
      report(id, attempts, Change::kUpdated);
      slots.release();
    });
  }
}

TEST(SpoolCrashTest, DeliveriesInFlightSurviveKillNine) {
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  struct Acknowledged {
    uint32_t attempts = 0;
    bool removed = false;
  };
  absl::flat_hash_map<MessageId, Acknowledged> acknowledged;  // over all rounds
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(::testing::Message() << "round " << round);
    std::vector<std::string> records;
    RunChildAndKill("SpoolCrashChild.DeliverUntilKilled", path, round, kRecordBytes, records);
    if (HasFatalFailure()) return;
    size_t changes[3] = {0, 0, 0};
    for (const std::string& record : records) {
      const MessageId id = *MessageId::FromBytes(record.substr(0, MessageId::kBytes));
      uint32_t attempts;
      std::memcpy(&attempts, record.data() + MessageId::kBytes, sizeof attempts);
      const auto change = static_cast<Change>(record[MessageId::kBytes + sizeof attempts]);
      ASSERT_LE(static_cast<uint8_t>(change), 2);
      ++changes[static_cast<uint8_t>(change)];
      Acknowledged& state = acknowledged[id];
      if (change == Change::kRemoved) state.removed = true;
      state.attempts = std::max(state.attempts, attempts);
    }
    EXPECT_GT(changes[static_cast<int>(Change::kUpdated)], 0u) << "no update was in flight";

    absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    // Before recovery, the database as the crash left it: every envelope has its body and
    // exactly one schedule entry, at its next attempt; no entry lacks its envelope.
    absl::flat_hash_map<MessageId, Envelope> envelopes;
    {
      rocksdb::DB& db = (*store)->db();
      std::unique_ptr<rocksdb::Iterator> it(
          db.NewIterator(rocksdb::ReadOptions(), (*store)->family(Family::kEnvelope)));
      for (it->SeekToFirst(); it->Valid(); it->Next()) {
        absl::StatusOr<Envelope> envelope =
            DecodeEnvelope(std::string_view(it->value().data(), it->value().size()));
        ASSERT_TRUE(envelope.ok()) << envelope.status();
        envelopes.emplace(envelope->id, *envelope);
      }
      it.reset(db.NewIterator(rocksdb::ReadOptions(), (*store)->family(Family::kBody)));
      size_t bodies = 0;
      for (it->SeekToFirst(); it->Valid(); it->Next(), ++bodies) {
        ASSERT_TRUE(envelopes.contains(
            *MessageId::FromBytes(std::string_view(it->key().data(), it->key().size()))));
      }
      EXPECT_EQ(bodies, envelopes.size());
      absl::StatusOr<std::vector<ScheduleEntry>> schedule = ListSchedule(**store, SIZE_MAX);
      ASSERT_TRUE(schedule.ok()) << schedule.status();
      std::set<MessageId> scheduled;
      for (const ScheduleEntry& entry : *schedule) {
        auto envelope = envelopes.find(entry.id);
        ASSERT_NE(envelope, envelopes.end()) << "entry without envelope: " << entry.id.ToString();
        EXPECT_EQ(ScheduleKey(entry.due, entry.id),
                  ScheduleKey(envelope->second.next_attempt, entry.id))
            << "stale entry of " << entry.id.ToString();
        EXPECT_TRUE(scheduled.insert(entry.id).second) << "two entries: " << entry.id.ToString();
      }
      EXPECT_EQ(scheduled.size(), envelopes.size()) << "messages without a schedule entry";
    }
    // Every acknowledged change holds. An update or removal may also have committed without
    // its acknowledgement reaching us (killed in between): attempts one past the acknowledged,
    // or a message gone after its last attempt.
    for (const auto& [id, state] : acknowledged) {
      auto envelope = envelopes.find(id);
      if (state.removed) {
        EXPECT_EQ(envelope, envelopes.end()) << "acknowledged removal undone: " << id.ToString();
      } else if (envelope == envelopes.end()) {
        EXPECT_EQ(state.attempts, kRemoveAfter) << "acknowledged message lost: " << id.ToString();
      } else {
        EXPECT_GE(envelope->second.attempts, state.attempts) << id.ToString();
        EXPECT_LE(envelope->second.attempts, state.attempts + 1) << id.ToString();
      }
    }
    // Recovery finds nothing to mend, and the rebuilt index is the schedule on disk.
    absl::StatusOr<std::unique_ptr<Spool>> spool =
        Spool::Open(**store, SpoolOptions(), RealClock::Get());
    ASSERT_TRUE(spool.ok()) << spool.status();
    EXPECT_EQ((*spool)->size(), envelopes.size());
    const std::vector<ScheduleEntry> due = (*spool)->LeaseDue(absl::InfiniteFuture(), SIZE_MAX);
    EXPECT_EQ(due.size(), envelopes.size());
    std::set<MessageId> leased;
    for (size_t i = 0; i < due.size(); ++i) {
      auto envelope = envelopes.find(due[i].id);
      ASSERT_NE(envelope, envelopes.end());
      EXPECT_EQ(ScheduleKey(due[i].due, due[i].id),
                ScheduleKey(envelope->second.next_attempt, due[i].id));
      EXPECT_TRUE(leased.insert(due[i].id).second);
      if (i > 0) {
        EXPECT_LE(due[i - 1].due, due[i].due);
      }
    }
    std::printf("round %d: %zu enqueues, %zu updates, %zu removals acknowledged; %zu queued\n",
                round, changes[0], changes[1], changes[2], envelopes.size());
  }
}

}  // namespace
}  // namespace facteur::queue
