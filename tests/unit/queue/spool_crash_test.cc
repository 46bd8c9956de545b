// kill -9 in the middle of a stream of enqueues: every message acknowledged to the client
// (`done` said OK) must be there, whole, after restart, and no message may be half-written.
// The child is this binary run again (fork + exec) with FACTEUR_CRASH_CHILD_SPOOL set.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <semaphore>
#include <set>
#include <thread>
#include <vector>

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

// One poll (up to `timeout_ms`, -1: no limit) and one read of 16-byte ids from `fd` into `ids`.
// False on EOF: the child is gone and every id it wrote has been read.
bool ReadSome(int fd, std::string& partial, std::vector<MessageId>& ids, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, timeout_ms) <= 0) return true;
  char buffer[4096];
  const ssize_t n = read(fd, buffer, sizeof buffer);
  if (n <= 0) return false;
  partial.append(buffer, n);
  size_t used = 0;
  for (; partial.size() - used >= MessageId::kBytes; used += MessageId::kBytes) {
    ids.push_back(*MessageId::FromBytes(std::string_view(partial).substr(used, MessageId::kBytes)));
  }
  partial.erase(0, used);
  return true;
}

int MillisUntil(std::chrono::steady_clock::time_point t) {
  return static_cast<int>(std::max<int64_t>(
      0, std::chrono::duration_cast<std::chrono::milliseconds>(t - std::chrono::steady_clock::now())
             .count()));
}

TEST(SpoolCrashTest, AcknowledgedMessagesSurviveKillNine) {
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  std::vector<MessageId> acknowledged;
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(::testing::Message() << "round " << round);
    int acks[2];
    ASSERT_EQ(pipe2(acks, O_CLOEXEC), 0);
    fcntl(acks[1], F_SETFD, 0);  // inherited by the child only
    const pid_t child = test::SpawnSelf(
        "SpoolCrashChild.EnqueueUntilKilled",
        {"FACTEUR_CRASH_CHILD_SPOOL=" + path, "FACTEUR_CRASH_CHILD_FD=" + std::to_string(acks[1])});
    close(acks[1]);
    ASSERT_GT(child, 0);

    // Wait for the first acknowledgement (the child is up), then let it run 300–800 ms more,
    // a different moment in each round, and kill it mid-stream.
    std::string partial;
    const size_t before = acknowledged.size();
    const auto up_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (acknowledged.size() == before && MillisUntil(up_deadline) > 0 &&
           ReadSome(acks[0], partial, acknowledged, MillisUntil(up_deadline))) {
    }
    const auto kill_at = std::chrono::steady_clock::now() + std::chrono::milliseconds(300 + 250 * round);
    while (MillisUntil(kill_at) > 0 &&
           ReadSome(acks[0], partial, acknowledged, MillisUntil(kill_at))) {
    }
    ASSERT_EQ(kill(child, SIGKILL), 0);
    int wait_status = 0;
    ASSERT_EQ(waitpid(child, &wait_status, 0), child);
    ASSERT_TRUE(WIFSIGNALED(wait_status) && WTERMSIG(wait_status) == SIGKILL)
        << "the child ended by itself: " << wait_status;
    // Acknowledgements written before the kill still count: drain to EOF.
    while (ReadSome(acks[0], partial, acknowledged, -1)) {
    }
    close(acks[0]);
    ASSERT_GT(acknowledged.size(), before) << "the child acknowledged nothing";

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

}  // namespace
}  // namespace facteur::queue
